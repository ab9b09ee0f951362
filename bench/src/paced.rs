//! The `paced` scenario: every server under the same offered load — `--paced-rate` round
//! trips per second (100 connections × 512 B) and `--paced-connect-rate` new connections
//! per second (connect, 64 B echo, close) — and what each operation costs the *server* in
//! CPU time (`/proc/PID/task/*/schedstat`), beside how busy the server and the load
//! generator were. A closed loop at saturation measures whichever side saturates first (the
//! single-threaded load generator caps the native echo); at a fixed load below every
//! server's capacity, CPU per operation is the sandbox's price. Before the loads, each
//! server's CPU while it sits idle: what it costs to keep running with nobody connected.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use shoal_bench::latency_plot::{self, Panel, STEPS};
use shoal_bench::{median, paired_ratios, process_cpu};

use crate::{Args, Kind, Server, loadgen};

/// How long a server is left idle after its start before its idle CPU is read, and how
/// long it is read for.
const IDLE_SETTLE: Duration = Duration::from_millis(500);
const IDLE_WINDOW: Duration = Duration::from_secs(2);

/// The servers compared, in the order of odd rounds.
const KINDS: [Kind; 3] = [Kind::Wasm, Kind::Native, Kind::Raw];

/// What one server measured under one load, one value per round.
#[derive(Default)]
pub struct Figures {
    server_cpu_us: Vec<f64>,
    server_busy: Vec<f64>,
    client_busy: Vec<f64>,
    done_per_sec: Vec<f64>,
    p50_us: Vec<f64>,
    p99_us: Vec<f64>,
    /// Each round's latency distribution: µs at `latency_plot::quantile(0..=STEPS)`.
    hdr_us: Vec<Vec<f64>>,
}

/// Which of a row's two loads.
type Load = fn(&Row) -> &Figures;

/// One server's figures under both loads.
pub struct Row {
    kind: Kind,
    /// Server CPU while no client is connected, ms per second, one value per round.
    idle_cpu_ms: Vec<f64>,
    round_trips: Figures,
    connections: Figures,
}

pub fn run(args: &Args, bin_dir: &Path, pinned: bool) -> anyhow::Result<Vec<Row>> {
    let mut kinds = KINDS.to_vec();
    if args.baseline.is_some() {
        kinds.push(Kind::Baseline);
    }
    let mut rows: Vec<Row> = kinds
        .iter()
        .map(|&kind| Row {
            kind,
            idle_cpu_ms: Vec::new(),
            round_trips: Figures::default(),
            connections: Figures::default(),
        })
        .collect();
    for round in 1..=args.rounds {
        let mut order: Vec<usize> = (0..rows.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for index in order {
            let row = &mut rows[index];
            eprintln!(
                "paced round {round}/{}: {} round trips/s and {} connections/s against {}",
                args.rounds,
                args.paced_rate,
                args.paced_connect_rate,
                row.kind.label()
            );
            let server = Server::start(row.kind, bin_dir, args, pinned)?;
            row.idle_cpu_ms.push(idle_cpu_ms(server.child.id())?);
            let pid = server.child.id().to_string();
            for (connect, figures) in [(false, &mut row.round_trips), (true, &mut row.connections)]
            {
                let load = loadgen_args(args, connect, &server.addr, &pid, args.seconds);
                figures.add(&loadgen(bin_dir, pinned, &load)?)?;
            }
        }
    }
    Ok(rows)
}

/// The CPU process `pid` uses while idle, in ms per second: read over `IDLE_WINDOW`, after
/// `IDLE_SETTLE`.
fn idle_cpu_ms(pid: u32) -> anyhow::Result<f64> {
    std::thread::sleep(IDLE_SETTLE);
    let before = process_cpu(pid)?;
    std::thread::sleep(IDLE_WINDOW);
    let used = process_cpu(pid)?.saturating_sub(before);
    Ok(used.as_secs_f64() * 1e3 / IDLE_WINDOW.as_secs_f64())
}

/// `loadgen paced`'s arguments for one of the scenario's loads against the server at `addr`
/// (process `pid`), measured for `seconds`: `--paced-rate` round trips per second over 100
/// connections × 512 B, or with `connect` `--paced-connect-rate` new connections per second.
pub fn loadgen_args(
    args: &Args,
    connect: bool,
    addr: &str,
    pid: &str,
    seconds: f64,
) -> Vec<String> {
    let mut out: Vec<String> = ["paced", "--addr", addr].map(String::from).to_vec();
    if connect {
        out.extend([
            "--rate".into(),
            args.paced_connect_rate.to_string(),
            "--connect".into(),
        ]);
    } else {
        out.extend(["--rate".into(), args.paced_rate.to_string()]);
        out.extend(["--conns", "100", "--size", "512"].map(String::from));
    }
    out.extend([
        "--seconds".into(),
        seconds.to_string(),
        "--server-pid".into(),
        pid.into(),
    ]);
    out
}

impl Figures {
    /// Take one run's line from `loadgen paced`.
    fn add(&mut self, line: &std::collections::BTreeMap<String, f64>) -> anyhow::Result<()> {
        let value = |key: &str| {
            line.get(key)
                .copied()
                .with_context(|| format!("loadgen paced printed no {key}"))
        };
        self.server_cpu_us.push(value("server_cpu_us_per_op")?);
        self.server_busy.push(value("server_busy")?);
        self.client_busy.push(value("client_busy")?);
        self.done_per_sec.push(value("ops_per_sec")?);
        self.p50_us.push(value("p50_us")?);
        self.p99_us.push(value("p99_us")?);
        let distribution = (0..=STEPS)
            .map(|k| value(&format!("hdr_{k}")))
            .collect::<anyhow::Result<Vec<f64>>>()?;
        self.hdr_us.push(distribution);
        Ok(())
    }

    /// The distribution across rounds: at each quantile, the median of the rounds' values.
    fn median_distribution(&self) -> Vec<f64> {
        (0..=STEPS)
            .map(|k| {
                let mut at_k: Vec<f64> = self
                    .hdr_us
                    .iter()
                    .filter_map(|d| d.get(k))
                    .copied()
                    .collect();
                median(&mut at_k).unwrap_or(f64::NAN)
            })
            .collect()
    }
}

/// The scenario's table: per load, one line per server, with the ratio of its server CPU
/// per operation to the native echo's, round by round.
pub fn report(rows: &mut [Row], args: &Args) -> String {
    let rounds = rows
        .first()
        .map_or(0, |row| row.round_trips.server_cpu_us.len());
    let mut out = format!(
        "\nServer CPU per operation at a fixed offered load ({} round trips/s over 100 \
         connections × 512 B; {} new connections/s, each a 64 B echo), medians of {rounds} \
         rounds; the ratio to the native echo is the median of per-round ratios (range in \
         brackets). Busy: share of one core the server and the load generator used.\n\n\
         | load | server | server CPU µs per op | vs native | server busy | client busy | done/s | p50 µs | p99 µs |\n\
         |---|---|---|---|---|---|---|---|---|\n",
        args.paced_rate, args.paced_connect_rate
    );
    let native = |rows: &[Row], pick: Load| {
        rows.iter()
            .find(|row| row.kind == Kind::Native)
            .map(|row| pick(row).server_cpu_us.clone())
            .unwrap_or_default()
    };
    let loads: [(&str, Load); 2] = [
        ("round trips", |row| &row.round_trips),
        ("connections", |row| &row.connections),
    ];
    for (load, pick) in loads {
        let baseline = native(rows, pick);
        for row in rows.iter() {
            let figures = pick(row);
            let mut ratios = paired_ratios(&figures.server_cpu_us, &baseline);
            let ratio = match median(&mut ratios) {
                Some(mid) => format!(
                    "{mid:.2}× ({:.2}–{:.2})",
                    ratios.first().copied().unwrap_or(mid),
                    ratios.last().copied().unwrap_or(mid)
                ),
                None => "–".to_string(),
            };
            let mid = |values: &[f64]| median(&mut values.to_vec()).unwrap_or(f64::NAN);
            out.push_str(&format!(
                "| {load} | {} | {:.2} | {ratio} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |\n",
                row.kind.label(),
                mid(&figures.server_cpu_us),
                mid(&figures.server_busy),
                mid(&figures.client_busy),
                mid(&figures.done_per_sec),
                mid(&figures.p50_us),
                mid(&figures.p99_us),
            ));
        }
    }
    out.push_str(&format!(
        "\nServer CPU while idle (no client connected, {:.0} s after a {:.1} s settle), \
         medians of {rounds} rounds:\n\n| server | idle CPU ms per second |\n|---|---|\n",
        IDLE_WINDOW.as_secs_f64(),
        IDLE_SETTLE.as_secs_f64()
    ));
    for row in rows.iter() {
        let idle = median(&mut row.idle_cpu_ms.clone()).unwrap_or(f64::NAN);
        out.push_str(&format!("| {} | {idle:.2} |\n", row.kind.label()));
    }
    out
}

/// The latency distributions of every server under both loads, as an SVG plot.
pub fn latency_plot(rows: &[Row], args: &Args) -> String {
    let panel = |title: String, pick: Load| Panel {
        title,
        series: rows
            .iter()
            .map(|row| {
                (
                    row.kind.label().to_string(),
                    pick(row).median_distribution(),
                )
            })
            .collect(),
    };
    latency_plot::render(&[
        panel(
            format!(
                "round trips: {:.0}/s over 100 connections × 512 B",
                args.paced_rate
            ),
            |row| &row.round_trips,
        ),
        panel(
            format!(
                "new connections: {:.0}/s, each a 64 B echo",
                args.paced_connect_rate
            ),
            |row| &row.connections,
        ),
    ])
}
