//! The `hibernate` scenario: a chat room of `--idle-conns` members at rest, served twice per
//! round — with `hibernate_after = "100ms"` and `max_instances = 200` (the members sleep: no
//! instance each) and without (each keeps its instance) — both with `announce = "off"`, so that joining wakes nobody.
//! Per server: what the members add to its RSS and PSS, per connection; the wake-up latency
//! of a member asking `/version` (first byte in → first byte out); and the messages per
//! second of a broadcast (10 lines from one member to every other).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use shoal_bench::median;

use crate::{Args, Server, parse_line, pin};

/// One server kind's figures, one value per round.
pub struct Row {
    pub label: &'static str,
    pub rss_kib: Vec<f64>,
    pub pss_kib: Vec<f64>,
    pub wake_p50_us: Vec<f64>,
    pub wake_p99_us: Vec<f64>,
    pub delivered: Vec<f64>,
}

impl Row {
    fn new(label: &'static str) -> Self {
        Self {
            label,
            rss_kib: Vec::new(),
            pss_kib: Vec::new(),
            wake_p50_us: Vec::new(),
            wake_p99_us: Vec::new(),
            delivered: Vec::new(),
        }
    }
}

/// Instances of the sleeping room: what it may have awake at once (the pool is sized by it).
const AWAKE: usize = 200;

/// The chat listener's config. Asleep: members idle 100 ms hibernate, and at most
/// [`AWAKE`] are awake at once — the instance pool's slots keep what their instances
/// dirtied resident for the next one (`keep_resident_bytes`), so it is the pool's size, not
/// the number of connections, that bounds that memory.
fn config(plugin: &Path, conns: usize, asleep: bool) -> String {
    let hibernate = if asleep {
        format!("hibernate_after = \"100ms\"\nmax_instances = {AWAKE}\n")
    } else {
        String::new()
    };
    format!(
        "[[listener]]\nname = \"chat\"\naddress = \"127.0.0.1:0\"\nplugin = \"{}\"\n\
         max_connections = {}\nidle_timeout = \"1h\"\n{hibernate}\
         [listener.capabilities]\nconfig = {{ announce = \"off\" }}\n",
        plugin.display(),
        conns + 100,
    )
}

pub fn run(args: &Args, bin_dir: &Path, pinned: bool) -> anyhow::Result<Vec<Row>> {
    let folder = std::env::current_dir()?.join("target/bench/hibernate");
    std::fs::create_dir_all(&folder)?;
    let plugin = std::fs::canonicalize(args.plugins.join("chat.wasm"))?;
    let cache = folder.join("cache");
    let mut rows = [Row::new("asleep"), Row::new("awake")];
    for round in 1..=args.rounds {
        // Every other round in the opposite order.
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for index in order {
            let row = &mut rows[index];
            eprintln!(
                "hibernate round {round}/{}: {} chat members {}",
                args.rounds, args.idle_conns, row.label
            );
            let file = folder.join(format!("{}.toml", row.label));
            std::fs::write(&file, config(&plugin, args.idle_conns, index == 0))?;
            let serve = [
                "serve".to_string(),
                "--cache-dir".into(),
                cache.display().to_string(),
                "--config".into(),
                file.display().to_string(),
            ];
            let server = Server::spawn(&bin_dir.join("shoal"), &serve, pinned, row.label)?;
            measure(&server, row, args.idle_conns, bin_dir, pinned)?;
        }
    }
    Ok(rows.into())
}

/// One server: the room joins and settles, memory is read, then wake-ups and a broadcast.
fn measure(
    server: &Server,
    row: &mut Row,
    conns: usize,
    bin_dir: &Path,
    pinned: bool,
) -> anyhow::Result<()> {
    std::thread::sleep(Duration::from_millis(200));
    let (rss_before, pss_before) = (server.rss_kib()?, server.pss_kib()?);
    let mut client = pin(pinned, "0", &bin_dir.join("loadgen"))
        .args([
            "hibernate",
            "--addr",
            &server.addr,
            "--samples",
            "200",
            "--conns",
        ])
        .arg(conns.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut stdout = BufReader::new(client.stdout.take().context("loadgen stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    if !line.starts_with("ready") {
        let _ = client.kill();
        bail!("loadgen hibernate did not get ready: {line:?}");
    }
    let (rss_after, pss_after) = (server.rss_kib()?, server.pss_kib()?);
    row.rss_kib.push((rss_after - rss_before) / conns as f64);
    row.pss_kib.push((pss_after - pss_before) / conns as f64);
    client
        .stdin
        .take()
        .context("loadgen stdin")?
        .write_all(b"go\n")?;
    line.clear();
    stdout.read_line(&mut line)?;
    if !client.wait()?.success() {
        bail!("loadgen hibernate failed");
    }
    let result = parse_line(&line)?;
    let value = |key: &str| {
        result
            .get(key)
            .copied()
            .with_context(|| format!("loadgen printed no {key}: {line:?}"))
    };
    row.wake_p50_us.push(value("wake_p50_us")?);
    row.wake_p99_us.push(value("wake_p99_us")?);
    row.delivered.push(value("delivered_per_sec")?);
    Ok(())
}

/// The scenario's table.
pub fn report(rows: &mut [Row], conns: usize) -> String {
    let rounds = rows.first().map_or(0, |row| row.rss_kib.len());
    let mut out = format!(
        "\nHibernation: a chat room of {conns} members at rest (`announce = \"off\"`), served \
         with `hibernate_after = \"100ms\"` and `max_instances = {AWAKE}` (asleep) and without \
         (awake); medians of {rounds} \
         rounds. Memory the members add to the server, per connection; 200 members' `/version` \
         round trips, one at a time (a wake-up when they sleep); 10 lines from one member to all the others.\n\n\
         | room | RSS per connection KiB | PSS per connection KiB | `/version` p50 µs | p99 µs \
         | broadcast messages/s |\n|---|---|---|---|---|---|\n"
    );
    for row in rows.iter_mut() {
        out.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} |\n",
            row.label,
            median(&mut row.rss_kib).unwrap_or(f64::NAN),
            median(&mut row.pss_kib).unwrap_or(f64::NAN),
            median(&mut row.wake_p50_us).unwrap_or(f64::NAN),
            median(&mut row.wake_p99_us).unwrap_or(f64::NAN),
            median(&mut row.delivered).unwrap_or(f64::NAN),
        ));
    }
    out
}
