//! The `polyglot` scenario: the echo plugin of every guest language shoal ships (Rust, C,
//! JavaScript, Python), side by side in one run.
//!
//! In process: each compiled without a cache and then loaded from one; `count` lifecycles
//! (instantiate, `init`, `close`, drop: one connection's instance) on the engine that copies
//! a plugin's memory and on the one that maps it copy-on-write — what each language's
//! connection costs, and which engine the default settings pick for it. Then as a server
//! (`shoal serve`, on core 1 when pinned): the RSS and PSS 1,000 idle connections add, awake
//! and — for the echoes that export `handoff` — what one more sleeping connection adds
//! (`--hibernate-after 100ms --max-instances 50`, read once the admin listener's metrics
//! count every connection asleep), and echo round trips per second (100 connections ×
//! 512 B), every language in each round.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shoal_bench::{median, micros, percentile};
use shoal_host::{
    Compilation, MemoryInit, Plugin, Runtime, RuntimeConfig, RuntimeConfigBuilder, ServerConfig,
    Stats,
};

use crate::{
    Args, Server, admin_address, echo_load, hold_idle, idle_growth, lifecycles, metrics_page,
    release,
};

/// Idle connections held per language for the memory figures.
const IDLE_CONNS: usize = 1_000;

/// Instances a hibernating server keeps awake at most.
const AWAKE: usize = 50;

/// Sleeping connections added to the first [`IDLE_CONNS`] to read what one more costs: the
/// difference between two rooms at rest leaves out what any room costs (the awake
/// instances' pool slots) and the allocator's noise of a few MiB.
const MORE_ASLEEP: usize = 4_000;

/// One language's echo.
pub struct Row {
    pub language: &'static str,
    pub size: usize,
    /// Compiled without a cache, then loaded from the cache it was saved in.
    pub compile: Duration,
    pub from_cache: Duration,
    /// What the default settings pick for it.
    pub memory_init: MemoryInit,
    /// It exports `handoff`, so its connections can hibernate.
    pub can_hibernate: bool,
    /// Per engine: memory copied, then mapped copy-on-write.
    pub p50: [Duration; 2],
    pub p99: [Duration; 2],
    /// Per round, as a server.
    pub rss_kib: Vec<f64>,
    pub pss_kib: Vec<f64>,
    /// The same, hibernating (none for an echo without `handoff`).
    pub asleep_rss_kib: Vec<f64>,
    pub asleep_pss_kib: Vec<f64>,
    pub round_trips: Vec<f64>,
}

/// The echo plugins, by language.
const ECHOES: [(&str, &str); 4] = [
    ("Rust", "echo.wasm"),
    ("C", "echo-c.wasm"),
    ("JavaScript", "echo-js.wasm"),
    ("Python", "echo-py.wasm"),
];

/// The in-process figures of every language, then `args.rounds` rounds of the server ones.
pub fn run(args: &Args, bin_dir: &Path, pinned: bool) -> anyhow::Result<Vec<Row>> {
    let cache = std::env::current_dir()?.join("target/bench/polyglot-cache");
    if cache.exists() {
        std::fs::remove_dir_all(&cache)?;
    }
    let mut rows = Vec::new();
    for (language, file) in ECHOES {
        rows.push(in_process(
            language,
            &args.plugins.join(file),
            &cache,
            args.polyglot_lifecycles,
        )?);
    }
    for round in 1..=args.rounds {
        for (row, (_, file)) in rows.iter_mut().zip(ECHOES) {
            eprintln!(
                "polyglot round {round}/{}: {} as a server",
                args.rounds, row.language
            );
            let plugin = std::fs::canonicalize(args.plugins.join(file))?;
            as_server(row, &plugin, &cache, args, bin_dir, pinned)?;
            if row.can_hibernate {
                as_sleeping_server(row, &plugin, &cache, bin_dir, pinned)?;
            }
        }
    }
    Ok(rows)
}

/// Compile times, the default's choice of engine, and lifecycles on both engines.
fn in_process(
    language: &'static str,
    path: &Path,
    cache: &Path,
    count: usize,
) -> anyhow::Result<Row> {
    eprintln!("polyglot: {language} in process");
    let size = std::fs::metadata(path)
        .with_context(|| format!("{} (make plugins)", path.display()))?
        .len();
    let runtime = |settings: RuntimeConfigBuilder| -> anyhow::Result<Runtime> {
        let config = settings
            .max_instances(16)
            .core_instances_per_component(16)
            .cache_dir(Some(cache.to_path_buf()))
            .build()?;
        Ok(Runtime::new(config)?)
    };
    let compiled = Plugin::from_file(&runtime(RuntimeConfig::builder())?, path)?.load_report();
    let from_cache = Plugin::from_file(&runtime(RuntimeConfig::builder())?, path)?;
    let can_hibernate = from_cache.exports_handoff();
    let cached = from_cache.load_report();
    anyhow::ensure!(
        compiled.compilation == Compilation::Compiled
            && cached.compilation == Compilation::FromCache,
        "{language}: expected a compile, then a load from the cache"
    );
    let mut row = Row {
        language,
        size: usize::try_from(size)?,
        compile: compiled.took,
        from_cache: cached.took,
        memory_init: cached.memory_init,
        can_hibernate,
        p50: [Duration::ZERO; 2],
        p99: [Duration::ZERO; 2],
        rss_kib: Vec::new(),
        pss_kib: Vec::new(),
        asleep_rss_kib: Vec::new(),
        asleep_pss_kib: Vec::new(),
        round_trips: Vec::new(),
    };
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Every plugin on the copying engine, then every plugin on the copy-on-write one.
    for (i, above) in [None, Some(0)].into_iter().enumerate() {
        let runtime = runtime(RuntimeConfig::builder().copy_on_write_above(above))?;
        let plugin = Plugin::from_file(&runtime, path)?;
        let config = ServerConfig::default();
        let stats = std::sync::Arc::new(Stats::default());
        tokio.block_on(lifecycles(&plugin, &config, &stats, count / 10))?;
        let mut samples = tokio.block_on(lifecycles(&plugin, &config, &stats, count))?;
        samples.sort();
        row.p50[i] = percentile(&samples, 0.5).context("no lifecycles")?;
        row.p99[i] = percentile(&samples, 0.99).context("no lifecycles")?;
    }
    Ok(row)
}

/// `shoal serve PLUGIN` on a free port with the compile cache `cache`, at most
/// `max_connections`, and `extra` arguments.
fn serve_args(plugin: &Path, cache: &Path, max_connections: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["serve", "--listen", "127.0.0.1:0", "--max-connections"]
        .map(String::from)
        .into();
    args.push(max_connections.to_string());
    args.extend(extra.iter().map(|arg| (*arg).to_string()));
    args.extend(["--cache-dir".to_string(), cache.display().to_string()]);
    args.push(plugin.display().to_string());
    args
}

/// One round as a server: memory per idle connection, then echo round trips.
fn as_server(
    row: &mut Row,
    plugin: &Path,
    cache: &Path,
    args: &Args,
    bin_dir: &Path,
    pinned: bool,
) -> anyhow::Result<()> {
    let serve_args = serve_args(plugin, cache, IDLE_CONNS + 100, &[]);
    let shoal: PathBuf = bin_dir.join("shoal");
    let server = Server::spawn(&shoal, &serve_args, pinned, row.language)?;
    let growth = idle_growth(&server, bin_dir, IDLE_CONNS, pinned)?;
    row.rss_kib.push(growth.rss_kib);
    row.pss_kib.push(growth.pss_kib);
    let seconds = args.seconds.to_string();
    let pid = server.child.id().to_string();
    let echo = echo_load(bin_dir, pinned, &server.addr, "512", &seconds, &pid)?;
    row.round_trips.push(
        *echo
            .get("round_trips_per_sec")
            .context("loadgen printed no round_trips_per_sec")?,
    );
    Ok(())
}

/// One round as a hibernating server: what one more idle connection costs once every
/// connection sleeps (`shoal_connections_asleep` on the admin listener's metrics page says
/// so) — memory at [`IDLE_CONNS`] + [`MORE_ASLEEP`] sleepers less memory at [`IDLE_CONNS`],
/// per connection.
fn as_sleeping_server(
    row: &mut Row,
    plugin: &Path,
    cache: &Path,
    bin_dir: &Path,
    pinned: bool,
) -> anyhow::Result<()> {
    let awake = AWAKE.to_string();
    let sleepy = [
        "--max-instances",
        awake.as_str(),
        "--hibernate-after",
        "100ms",
        "--admin",
        "127.0.0.1:0",
    ];
    let serve_args = serve_args(plugin, cache, IDLE_CONNS + MORE_ASLEEP + 100, &sleepy);
    let label = format!("{} hibernating", row.language);
    let (server, mut stdout) =
        Server::spawn_reading(&bin_dir.join("shoal"), &serve_args, pinned, &label)?;
    let admin = admin_address(&mut stdout).with_context(|| label.clone())?;
    let all_asleep = |count: usize| -> anyhow::Result<(f64, f64)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let asleep = asleep_connections(&admin)?;
            if asleep >= count as f64 {
                return Ok((server.rss_kib()?, server.pss_kib()?));
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "{label}: {asleep} of {count} connections asleep after 120 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let first = hold_idle(&server, bin_dir, IDLE_CONNS, pinned)?;
    let (rss_before, pss_before) = all_asleep(IDLE_CONNS)?;
    let more = hold_idle(&server, bin_dir, MORE_ASLEEP, pinned)?;
    let (rss_after, pss_after) = all_asleep(IDLE_CONNS + MORE_ASLEEP)?;
    release(more)?;
    release(first)?;
    row.asleep_rss_kib
        .push((rss_after - rss_before) / MORE_ASLEEP as f64);
    row.asleep_pss_kib
        .push((pss_after - pss_before) / MORE_ASLEEP as f64);
    Ok(())
}

/// `shoal_connections_asleep` of the listener on the metrics page of `admin`.
fn asleep_connections(admin: &str) -> anyhow::Result<f64> {
    metrics_page(admin)?
        .lines()
        .find_map(|line| line.strip_prefix("shoal_connections_asleep{"))
        .and_then(|rest| rest.rsplit_once(' '))
        .and_then(|(_, value)| value.parse().ok())
        .with_context(|| format!("no shoal_connections_asleep on {admin}/metrics"))
}

/// The scenario's tables.
pub fn report(rows: &mut [Row]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = String::from(
        "\nPolyglot, in process: each language's echo compiled without a cache, then loaded \
         from it; lifecycles (instantiate, `init`, `close`, drop) with its memory copied and \
         mapped copy-on-write; the engine the default settings pick (copy-on-write from a \
         1 MiB image).\n\n\
         | language | size KiB | compile ms | from cache ms | default | lifecycle p50 µs \
         (copied) | p99 µs | lifecycle p50 µs (copy-on-write) | p99 µs |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows.iter() {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            row.language,
            row.size.div_ceil(1024),
            ms(row.compile),
            ms(row.from_cache),
            match row.memory_init {
                MemoryInit::Copy => "copied",
                MemoryInit::CopyOnWrite => "copy-on-write",
            },
            micros(row.p50[0]),
            micros(row.p99[0]),
            micros(row.p50[1]),
            micros(row.p99[1]),
        ));
    }
    let rust_round_trips = rows
        .first()
        .map(|rust| rust.round_trips.clone())
        .unwrap_or_default();
    out.push_str(&format!(
        "\nPolyglot, as a server (`shoal serve`, default settings; medians of {} rounds, every \
         language in each round): memory {IDLE_CONNS} idle connections add (each after one \
         echoed byte) — awake, and hibernating (`--hibernate-after 100ms --max-instances \
         {AWAKE}`: what {MORE_ASLEEP} more sleepers add to {IDLE_CONNS}, read once all sleep; \
         only for an echo that exports `handoff`) — and echo round trips/s over 100 \
         connections × 512 B.\n\n\
         | language | RSS per idle connection KiB | PSS per idle connection KiB | asleep: RSS \
         KiB | asleep: PSS KiB | round trips/s | vs Rust |\n|---|---|---|---|---|---|---|\n",
        rows.first().map_or(0, |row| row.round_trips.len()),
    ));
    for row in rows.iter_mut() {
        let mut ratios = shoal_bench::paired_ratios(&row.round_trips, &rust_round_trips);
        let asleep = |values: &mut Vec<f64>| {
            median(values).map_or_else(|| "–".to_string(), |kib| format!("{kib:.1}"))
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {} | {} | {:.0} | {:.2} |\n",
            row.language,
            median(&mut row.rss_kib).unwrap_or(f64::NAN),
            median(&mut row.pss_kib).unwrap_or(f64::NAN),
            asleep(&mut row.asleep_rss_kib),
            asleep(&mut row.asleep_pss_kib),
            median(&mut row.round_trips).unwrap_or(f64::NAN),
            median(&mut ratios).unwrap_or(f64::NAN),
        ));
    }
    out
}
