//! `shoal-bench` (run by `make bench`): every scenario against shoal's Wasm echo, shoal's native
//! echo (the same acceptor pool and connection task without the sandbox) and a raw tokio echo,
//! in alternating rounds, with medians. Servers run pinned to core 1 and the load generator
//! (a separate process) to core 0 when `taskset` is available. Prints a markdown table and
//! writes it to `target/bench/report.md`.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use shoal_bench::{median, micros, paired_ratios, percentile};
use shoal_host::{
    CloseReason, Compilation, ConnInfo, ConnectionHandler, CpuGroup, Event, HandlerFactory,
    Instance, MailboxLimits, Mailboxes, NewConnection, Next, Plugin, Runtime, RuntimeConfig,
    ServerConfig, Stats,
};

#[derive(Parser)]
struct Args {
    /// Rounds of every scenario (servers alternate within a round).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Measured seconds per load scenario (after a one-second warm-up).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Idle connections held for the memory scenario.
    #[arg(long, default_value_t = 10_000)]
    idle_conns: usize,
    /// Lifecycles per round in the in-process lifecycle benchmark.
    #[arg(long, default_value_t = 5_000)]
    lifecycles: usize,
    /// Lifecycles per engine and language in the polyglot scenario.
    #[arg(long, default_value_t = 500)]
    polyglot_lifecycles: usize,
    /// Instance pool size of the in-process lifecycle runtime (small values let the
    /// benchmark run under valgrind, whose address space cannot hold a large pool).
    #[arg(long, default_value_t = 1_000)]
    lifecycle_pool: u32,
    /// Folder holding the built plugins.
    #[arg(long, default_value = "target/plugins")]
    plugins: PathBuf,
    /// Which scenarios to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "compile,lifecycle,load,paced,memory,broadcast,noisy,swap,polyglot,hibernate,operator"
    )]
    scenarios: Vec<Scenario>,
    /// Another build's `shoal` binary (an earlier commit, say) to run the load scenarios
    /// against too, in the same rounds: its Wasm echo gets a column and a "this build /
    /// baseline" ratio of its own.
    #[arg(long, value_name = "SHOAL")]
    baseline: Option<PathBuf>,
    /// The plugins the `--baseline` build serves, built from its own commit (a plugin of
    /// today may import what an older host does not have). Default: `--plugins`.
    #[arg(long, value_name = "DIR")]
    baseline_plugins: Option<PathBuf>,
    /// Round trips per second the `paced` scenario offers every server.
    #[arg(long, default_value_t = 30_000.0)]
    paced_rate: f64,
    /// New connections per second the `paced` scenario offers every server.
    #[arg(long, default_value_t = 5_000.0)]
    paced_connect_rate: f64,
    /// Where the `paced` scenario draws its latency distributions (an SVG).
    #[arg(long, default_value = "benchmarks-latency.svg")]
    latency_plot: PathBuf,
    /// Where the `profile` scenario writes its flame graphs.
    #[arg(long, default_value = "bench/profiles")]
    profile_dir: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
enum Scenario {
    /// In-process: each plugin compiled cold, and loaded from the compile cache.
    Compile,
    /// Hot swap: echo load on 1,000 connections while the plugin file is replaced every
    /// second, against the same load without swaps; then 1,000 chat members moved to a new
    /// build with their state (handoff).
    Swap,
    /// In-process lifecycle: create, `init`, `close`, drop.
    Lifecycle,
    /// Connection rate, and round trips with latency at 512 and 64 bytes.
    Load,
    /// Server CPU time per round trip and per new connection at the same offered load for
    /// every server.
    Paced,
    /// Server RSS per idle connection.
    Memory,
    /// Messages delivered per second through the chat plugin's broadcast, 100 clients.
    Broadcast,
    /// Echo latency and throughput on one listener beside 0, 1, 4 and 16 looping guests of
    /// another, with CPU shares on and off.
    Noisy,
    /// In-process: each guest language's echo — size, compile time, and one connection's
    /// instance (lifecycle) with copy-on-write memory images off and on.
    Polyglot,
    /// A chat room of `--idle-conns` members at rest, hibernating and awake: memory per
    /// connection, wake-up latency, broadcast to the room.
    Hibernate,
    /// What running it for real costs the Wasm echo: TLS against plain TCP (round trips,
    /// p99, new connections with a handshake each), and the admin listener's metrics on and
    /// scraped against off.
    Operator,
    /// `make profile`: the Wasm and native echo under the paced loads, recorded by `perf`,
    /// drawn as flame graphs and summed by area and function (not in the default list).
    Profile,
}

mod hibernate;
mod operator;
mod paced;
mod polyglot;
mod profile;

/// A server under test, started as its own process.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Wasm,
    Native,
    Raw,
    /// The Wasm echo that keeps 64 KiB of state per connection.
    Ballast,
    /// The chat plugin (its figures go in the Wasm column, under their own metric names).
    Chat,
    /// The Wasm echo served by the `--baseline` build.
    Baseline,
    /// The chat plugin served by the `--baseline` build (its figures go in the baseline
    /// column, under the chat's metric names).
    BaselineChat,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Wasm => "shoal Wasm echo",
            Kind::Native => "shoal native echo",
            Kind::Raw => "raw tokio echo",
            Kind::Ballast => "shoal Wasm echo + 64 KiB state",
            Kind::Chat => "shoal Wasm chat",
            Kind::Baseline => "baseline build's Wasm echo",
            Kind::BaselineChat => "baseline build's Wasm chat",
        }
    }
}

/// Measurements: (kind, metric) → one value per round.
type Results = BTreeMap<(Kind, &'static str), Vec<f64>>;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("binary folder")?
        .to_path_buf();
    let pinned = Command::new("taskset").arg("-V").output().is_ok()
        && std::thread::available_parallelism().map_or(1, usize::from) >= 2;
    let mut results = Results::new();
    let mut compile_rows = Vec::new();

    if args.scenarios.contains(&Scenario::Compile) {
        eprintln!("compile: every plugin, {} rounds", args.rounds);
        compile_rows = compile_times(&args)?;
    }

    if args.scenarios.contains(&Scenario::Lifecycle) {
        eprintln!(
            "lifecycle: {} rounds × {} per server",
            args.rounds, args.lifecycles
        );
        lifecycle(&args, &mut results)?;
    }

    let load_rounds = if args.scenarios.contains(&Scenario::Load) {
        args.rounds
    } else {
        0
    };
    let mut load_kinds = vec![Kind::Wasm, Kind::Native, Kind::Raw];
    if args.baseline.is_some() {
        load_kinds.push(Kind::Baseline);
    }
    for round in 1..=load_rounds {
        // Every other round in the opposite order, so that no server always follows the
        // same one (a server's start and shutdown disturb the next one's first seconds).
        let order: Vec<Kind> = if round % 2 == 0 {
            load_kinds.iter().rev().copied().collect()
        } else {
            load_kinds.clone()
        };
        for kind in order {
            eprintln!(
                "round {round}/{}: load against {}",
                args.rounds,
                kind.label()
            );
            let server = Server::start(kind, &bin_dir, &args, pinned)?;
            let seconds = args.seconds.to_string();
            let addr = server.addr.as_str();
            let pid = server.child.id().to_string();
            let rate = loadgen(
                &bin_dir,
                pinned,
                &[
                    "rate",
                    "--addr",
                    addr,
                    "--seconds",
                    &seconds,
                    "--server-pid",
                    &pid,
                ],
            )?;
            record(&mut results, kind, "connections/s", &rate, "conns_per_sec")?;
            record_busy(&mut results, kind, "connections/s", &rate)?;
            for (size, prefix) in [("512", "512 B"), ("64", "64 B")] {
                let echo = echo_load(&bin_dir, pinned, addr, size, &seconds, &pid)?;
                record(
                    &mut results,
                    kind,
                    metric(prefix, "round trips/s"),
                    &echo,
                    "round_trips_per_sec",
                )?;
                record_busy(&mut results, kind, prefix, &echo)?;
                record(
                    &mut results,
                    kind,
                    metric(prefix, "p50 µs"),
                    &echo,
                    "p50_us",
                )?;
                record(
                    &mut results,
                    kind,
                    metric(prefix, "p99 µs"),
                    &echo,
                    "p99_us",
                )?;
            }
        }
    }

    let memory_kinds = if args.scenarios.contains(&Scenario::Memory) {
        &[Kind::Wasm, Kind::Native, Kind::Raw, Kind::Ballast][..]
    } else {
        &[]
    };
    for &kind in memory_kinds {
        eprintln!(
            "memory: {} idle connections to {}",
            args.idle_conns,
            kind.label()
        );
        let per_conn = idle_memory(kind, &bin_dir, &args, pinned)?;
        results
            .entry((kind, "RSS per idle connection, KiB"))
            .or_default()
            .push(per_conn);
    }

    let broadcast_rounds = if args.scenarios.contains(&Scenario::Broadcast) {
        args.rounds
    } else {
        0
    };
    let mut chat_kinds = vec![Kind::Chat];
    if args.baseline.is_some() {
        chat_kinds.push(Kind::BaselineChat);
    }
    for round in 1..=broadcast_rounds {
        // Every other round in the opposite order, as the load rounds.
        chat_kinds.reverse();
        for &kind in &chat_kinds {
            eprintln!(
                "round {round}/{}: broadcast through {}",
                args.rounds,
                kind.label()
            );
            let column = if kind == Kind::Chat {
                Kind::Wasm
            } else {
                Kind::Baseline
            };
            // Paced (the sender at most 256 lines ahead of the slowest receiver), then a
            // flood (never waiting): the flood is what flow control is for.
            for (window, delivered, flood) in [
                ("256", BROADCAST_PACED, false),
                ("0", BROADCAST_FLOOD, true),
            ] {
                let server = Server::start(kind, &bin_dir, &args, pinned)?;
                let seconds = args.seconds.to_string();
                let line = loadgen(
                    &bin_dir,
                    pinned,
                    &[
                        "broadcast",
                        "--addr",
                        &server.addr,
                        "--conns",
                        "100",
                        "--seconds",
                        &seconds,
                        "--window",
                        window,
                    ],
                )?;
                record(&mut results, column, delivered, &line, "messages_per_sec")?;
                if flood {
                    record(&mut results, column, FLOOD_DROPPED, &line, "dropped")?;
                    let sender = "sender_dropped";
                    record(&mut results, column, FLOOD_SENDER_DROPPED, &line, sender)?;
                }
            }
        }
    }

    let mut paced_rows = Vec::new();
    if args.scenarios.contains(&Scenario::Paced) {
        paced_rows = paced::run(&args, &bin_dir, pinned)?;
    }

    let mut profile_report = String::new();
    if args.scenarios.contains(&Scenario::Profile) {
        profile_report = profile::run(&args, &bin_dir, pinned)?;
    }

    let mut polyglot_rows = Vec::new();
    if args.scenarios.contains(&Scenario::Polyglot) {
        polyglot_rows = polyglot::run(&args, &bin_dir, pinned)?;
    }

    let mut hibernate_rows = Vec::new();
    if args.scenarios.contains(&Scenario::Hibernate) {
        hibernate_rows = hibernate::run(&args, &bin_dir, pinned)?;
    }

    let mut noisy_rows = Vec::new();
    if args.scenarios.contains(&Scenario::Noisy) {
        noisy_rows = noisy_neighbour(&args, &bin_dir, pinned)?;
    }

    let mut operator_rows = Vec::new();
    if args.scenarios.contains(&Scenario::Operator) {
        operator_rows = operator::run(&args, &bin_dir, pinned)?;
    }

    let mut swap_results = Results::new();
    if args.scenarios.contains(&Scenario::Swap) {
        hot_swap(&args, &bin_dir, pinned, &mut swap_results)?;
    }

    let mut report = report(&args, pinned, &mut results);
    if !swap_results.is_empty() {
        report.push_str(&swap_report(&mut swap_results));
    }
    if !noisy_rows.is_empty() {
        report.push_str(&noisy_report(&mut noisy_rows));
    }
    if !paced_rows.is_empty() {
        report.push_str(&paced::report(&mut paced_rows, &args));
        let plot = &args.latency_plot;
        std::fs::write(plot, paced::latency_plot(&paced_rows, &args))
            .with_context(|| format!("{}", plot.display()))?;
        report.push_str(&format!(
            "\nLatency distributions (medians of the rounds at each percentile): {}\n",
            plot.display()
        ));
    }
    report.push_str(&profile_report);
    if !compile_rows.is_empty() {
        report.push_str(&compile_report(&compile_rows));
    }
    if !polyglot_rows.is_empty() {
        report.push_str(&polyglot::report(&mut polyglot_rows));
    }
    if !hibernate_rows.is_empty() {
        report.push_str(&hibernate::report(&mut hibernate_rows, args.idle_conns));
    }
    if !operator_rows.is_empty() {
        report.push_str(&operator::report(&mut operator_rows, &args));
    }
    println!("{report}");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/report.md", &report)?;
    Ok(())
}

/// Metric names are static strings; the few sized ones are spelled out here.
fn metric(prefix: &str, what: &str) -> &'static str {
    match (prefix, what) {
        ("512 B", "round trips/s") => "512 B × 100 conns: round trips/s",
        ("512 B", "p50 µs") => "512 B × 100 conns: p50 latency µs",
        ("512 B", "p99 µs") => "512 B × 100 conns: p99 latency µs",
        ("64 B", "round trips/s") => "64 B × 100 conns: round trips/s",
        ("64 B", "p50 µs") => "64 B × 100 conns: p50 latency µs",
        _ => "64 B × 100 conns: p99 latency µs",
    }
}

/// Which side a closed loop saturated: how busy the server and the load generator were
/// (share of one core) while `what` was measured.
fn record_busy(
    results: &mut Results,
    kind: Kind,
    what: &str,
    line: &BTreeMap<String, f64>,
) -> anyhow::Result<()> {
    let (server, client) = match what {
        "connections/s" => (
            "connections/s: server busy (cores)",
            "connections/s: client busy (cores)",
        ),
        "512 B" => (
            "512 B × 100 conns: server busy (cores)",
            "512 B × 100 conns: client busy (cores)",
        ),
        _ => (
            "64 B × 100 conns: server busy (cores)",
            "64 B × 100 conns: client busy (cores)",
        ),
    };
    record(results, kind, server, line, "server_busy")?;
    record(results, kind, client, line, "client_busy")
}

fn record(
    results: &mut Results,
    kind: Kind,
    metric: &'static str,
    line: &BTreeMap<String, f64>,
    key: &str,
) -> anyhow::Result<()> {
    let value = *line
        .get(key)
        .with_context(|| format!("loadgen printed no {key}"))?;
    results.entry((kind, metric)).or_default().push(value);
    Ok(())
}

/// In-process: create a handler, `init`, `close`, drop — for the Wasm echo, the Wasm echo
/// with 64 KiB of state and the native echo, alternating rounds; and the cost of one
/// `handle` call with 512 bytes on a live handler.
fn lifecycle(args: &Args, results: &mut Results) -> anyhow::Result<()> {
    let runtime = Runtime::new(
        RuntimeConfig::builder()
            .max_instances(args.lifecycle_pool)
            .build()?,
    )?;
    let echo = Plugin::from_file(&runtime, args.plugins.join("echo.wasm"))?;
    let ballast = Plugin::from_file(&runtime, args.plugins.join("ballast.wasm"))?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = ServerConfig::default();
    let stats = std::sync::Arc::new(Stats::default());
    let native = shoal_host::native::Echo;
    let calls = args.lifecycles * 4;
    tokio.block_on(async {
        for _ in 0..args.rounds {
            let wasm = lifecycles(&echo, &config, &stats, args.lifecycles).await?;
            record_samples(results, Kind::Wasm, LIFECYCLE, wasm)?;
            let wasm = handle_calls(&echo, &config, &stats, calls, 1).await?;
            record_samples(results, Kind::Wasm, HANDLE_HOT, wasm)?;
            let wasm = handle_calls(&echo, &config, &stats, calls, 100).await?;
            record_samples(results, Kind::Wasm, HANDLE_SPREAD, wasm)?;
            let native_lifecycles = lifecycles(&native, &config, &stats, args.lifecycles).await?;
            record_samples(results, Kind::Native, LIFECYCLE, native_lifecycles)?;
            let native_calls = handle_calls(&native, &config, &stats, calls, 1).await?;
            record_samples(results, Kind::Native, HANDLE_HOT, native_calls)?;
            let native_calls = handle_calls(&native, &config, &stats, calls, 100).await?;
            record_samples(results, Kind::Native, HANDLE_SPREAD, native_calls)?;
            let ballast = lifecycles(&ballast, &config, &stats, args.lifecycles).await?;
            record_samples(results, Kind::Ballast, LIFECYCLE, ballast)?;
        }
        anyhow::Ok(())
    })
}

/// One plugin's load times: cold (Cranelift), and from the compile cache.
struct CompileRow {
    plugin: String,
    size: usize,
    cold: Vec<Duration>,
    cached: Vec<Duration>,
}

/// In-process, for every plugin in the plugins folder, each round: load it on a runtime
/// without a cache (compiled), then on a fresh runtime over a cache folder that a first load
/// filled (loaded from the cache, as a second start of the server would).
fn compile_times(args: &Args) -> anyhow::Result<Vec<CompileRow>> {
    let mut plugins: Vec<PathBuf> = std::fs::read_dir(&args.plugins)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    plugins.retain(|path| path.extension().is_some_and(|ext| ext == "wasm"));
    plugins.sort();
    // wrong-world is a test plugin shoal must refuse: nothing to time.
    plugins.retain(|path| {
        let runtime = RuntimeConfig::builder()
            .max_instances(1)
            .core_instances_per_component(16)
            .build();
        let loads = runtime.map_err(anyhow::Error::from).and_then(|config| {
            Plugin::from_file(&Runtime::new(config)?, path).map_err(anyhow::Error::from)
        });
        if let Err(error) = &loads {
            eprintln!("compile: skipping {}: {error}", path.display());
        }
        loads.is_ok()
    });
    let cache = std::env::current_dir()?.join("target/bench/compile-cache");
    let runtime = |cache: Option<&Path>| -> anyhow::Result<Runtime> {
        let config = RuntimeConfig::builder()
            .max_instances(16)
            // A Python component creates 14 core instances.
            .core_instances_per_component(16)
            .cache_dir(cache.map(Path::to_path_buf))
            .build()?;
        Ok(Runtime::new(config)?)
    };
    let mut rows: Vec<CompileRow> = plugins
        .iter()
        .map(|path| -> anyhow::Result<CompileRow> {
            Ok(CompileRow {
                plugin: path
                    .file_name()
                    .context("plugin file name")?
                    .to_string_lossy()
                    .into_owned(),
                size: usize::try_from(std::fs::metadata(path)?.len())?,
                cold: Vec::new(),
                cached: Vec::new(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    for _ in 0..args.rounds {
        for (path, row) in plugins.iter().zip(&mut rows) {
            let cold = Plugin::from_file(&runtime(None)?, path)?.load_report();
            if cold.compilation != Compilation::Compiled {
                bail!("{}: expected a compilation", row.plugin);
            }
            let _ = std::fs::remove_dir_all(&cache);
            Plugin::from_file(&runtime(Some(&cache))?, path)?;
            let cached = Plugin::from_file(&runtime(Some(&cache))?, path)?.load_report();
            if cached.compilation != Compilation::FromCache {
                bail!("{}: expected a load from the cache", row.plugin);
            }
            row.cold.push(cold.took);
            row.cached.push(cached.took);
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    Ok(rows)
}

fn compile_report(rows: &[CompileRow]) -> String {
    let millis = |samples: &[Duration]| {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        median(&mut ms).unwrap_or(f64::NAN)
    };
    let mut out = String::from(
        "\nPlugin load times, in process (median of the rounds): compiled by Cranelift on an \
         engine without a cache, and loaded from the compile cache by a fresh engine — \
         reading, hashing, checking and linking included in both.\n\n\
         | plugin | size KiB | compiled, ms | from the cache, ms | compiled / cached |\n\
         |---|---|---|---|---|\n",
    );
    for row in rows {
        let (cold, cached) = (millis(&row.cold), millis(&row.cached));
        out.push_str(&format!(
            "| {} | {} | {cold:.1} | {cached:.2} | {:.0}× |\n",
            row.plugin,
            row.size.div_ceil(1024),
            cold / cached
        ));
    }
    out
}

/// The table rows (median, p99) an in-process measurement fills.
type Rows = (&'static str, &'static str);
const LIFECYCLE: Rows = ("lifecycle median µs", "lifecycle p99 µs");
const HANDLE_HOT: Rows = (
    "handle(512 B), 1 live, median µs",
    "handle(512 B), 1 live, p99 µs",
);
const HANDLE_SPREAD: Rows = (
    "handle(512 B), 100 live round-robin, median µs",
    "handle(512 B), 100 live round-robin, p99 µs",
);

/// Record the median and p99 of one round's samples, in µs.
fn record_samples(
    results: &mut Results,
    kind: Kind,
    (median_row, p99_row): Rows,
    mut samples: Vec<Duration>,
) -> anyhow::Result<()> {
    samples.sort();
    let p50 = percentile(&samples, 0.5).context("no samples")?;
    let p99 = percentile(&samples, 0.99).context("no samples")?;
    results
        .entry((kind, median_row))
        .or_default()
        .push(micros(p50));
    results
        .entry((kind, p99_row))
        .or_default()
        .push(micros(p99));
    Ok(())
}

/// The connection every in-process measurement pretends to serve.
fn bench_conn_info() -> ConnInfo {
    ConnInfo {
        id: 0,
        peer: "127.0.0.1:1".into(),
        local: "127.0.0.1:2".into(),
        listener: "bench".into(),
    }
}

/// Create a handler and run its `init`, which must keep the connection.
async fn open_handler<F: HandlerFactory>(
    factory: &F,
    conn: NewConnection<'_>,
    info: &ConnInfo,
) -> anyhow::Result<F::Handler> {
    let mut handler = factory.create(conn).await?;
    if handler.init(info).await? != Ok(Next::Continue) {
        bail!("{} refused a connection", factory.name());
    }
    Ok(handler)
}

/// In-process: `count` timed calls of `handle` with 512 bytes, spread round-robin over
/// `live` handlers (one hot handler, or as many as the load scenarios keep busy).
async fn handle_calls<F: HandlerFactory>(
    factory: &F,
    config: &ServerConfig,
    stats: &std::sync::Arc<Stats>,
    count: usize,
    live: usize,
) -> anyhow::Result<Vec<Duration>> {
    let info = bench_conn_info();
    let mailboxes = Mailboxes::new(MailboxLimits::from(config));
    let cpu_group = std::sync::Arc::new(CpuGroup::new(config.cpu_share()));
    let mut handlers = Vec::with_capacity(live);
    for conn_id in 0..live as u64 {
        let conn = NewConnection {
            conn_id,
            config,
            stats,
            mailboxes: &mailboxes,
            cpu_group: &cpu_group,
            tls: None,
        };
        handlers.push(open_handler(factory, conn, &info).await?);
    }
    let event = shoal_host::Event::Data(vec![42; 512]);
    let mut samples = Vec::with_capacity(count);
    for call in 0..count {
        let handler = &mut handlers[call % live];
        let start = Instant::now();
        let next = handler.handle(&event).await?;
        handler.clear_output();
        samples.push(start.elapsed());
        if next != Next::Continue {
            bail!("{} closed during the call benchmark", factory.name());
        }
    }
    Ok(samples)
}

async fn lifecycles<F: HandlerFactory>(
    factory: &F,
    config: &ServerConfig,
    stats: &std::sync::Arc<Stats>,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let info = bench_conn_info();
    let mailboxes = Mailboxes::new(MailboxLimits::from(config));
    let cpu_group = std::sync::Arc::new(CpuGroup::new(config.cpu_share()));
    let mut samples = Vec::with_capacity(count);
    for conn_id in 0..count as u64 {
        let conn = NewConnection {
            conn_id,
            config,
            stats,
            mailboxes: &mailboxes,
            cpu_group: &cpu_group,
            tls: None,
        };
        let start = Instant::now();
        let mut handler = open_handler(factory, conn, &info).await?;
        handler.close(&CloseReason::PeerClosed).await?;
        drop(handler);
        samples.push(start.elapsed());
    }
    Ok(samples)
}

const BROADCAST_PACED: &str = "chat plugin, 1 sender → 99 receivers (paced): messages delivered/s";
const BROADCAST_FLOOD: &str = "chat plugin, 1 sender → 99 receivers (flood): messages delivered/s";
const FLOOD_DROPPED: &str = "chat plugin, 1 sender → 99 receivers (flood): receivers dropped";
const FLOOD_SENDER_DROPPED: &str =
    "chat plugin, 1 sender → 99 receivers (flood): sender dropped (of 1)";

/// A server process, stopped when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(kind: Kind, bin_dir: &Path, bench: &Args, pinned: bool) -> anyhow::Result<Self> {
        let shoal = bin_dir.join("shoal");
        // This build compiles its plugin at every start, as the baseline does: no cache
        // folder is written, and both start the same way.
        let serve = ["serve", "--no-cache", "--listen", "127.0.0.1:0"].map(String::from);
        let plugin = |name: &str| bench.plugins.join(name).display().to_string();
        let (program, args): (PathBuf, Vec<String>) = match kind {
            Kind::Wasm | Kind::Ballast | Kind::Chat => {
                let mut args = serve.to_vec();
                args.push(plugin(match kind {
                    Kind::Ballast => "ballast.wasm",
                    Kind::Chat => "chat.wasm",
                    _ => "echo.wasm",
                }));
                (shoal, args)
            }
            Kind::Native => {
                let mut args = serve.to_vec();
                args.push("--native-echo".to_string());
                (shoal, args)
            }
            Kind::Raw => (bin_dir.join("raw-echo"), vec!["127.0.0.1:0".to_string()]),
            Kind::Baseline | Kind::BaselineChat => {
                let baseline = bench.baseline.clone().context("no --baseline")?;
                let args = ["serve", "--listen", "127.0.0.1:0"].map(String::from);
                let mut args = args.to_vec();
                let plugins = bench.baseline_plugins.as_ref().unwrap_or(&bench.plugins);
                let name = if kind == Kind::Baseline {
                    "echo.wasm"
                } else {
                    "chat.wasm"
                };
                args.push(plugins.join(name).display().to_string());
                (baseline, args)
            }
        };
        Self::spawn(&program, &args, pinned, kind.label())
    }

    /// Start `program` with `args` (on core 1 when pinned) and wait for the address it
    /// prints as `listening on ADDR`.
    fn spawn(program: &Path, args: &[String], pinned: bool, label: &str) -> anyhow::Result<Self> {
        Self::spawn_reading(program, args, pinned, label).map(|(server, _)| server)
    }

    /// [`Server::spawn`], and the rest of the server's standard output (the lines it
    /// prints after its first: an admin listener's address, say).
    fn spawn_reading(
        program: &Path,
        args: &[String],
        pinned: bool,
        label: &str,
    ) -> anyhow::Result<(Self, BufReader<std::process::ChildStdout>)> {
        let mut command = pin(pinned, "1", program);
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let mut stdout = BufReader::new(child.stdout.take().context("server stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        // `listening on ADDR`, or `listening on ADDR (NAME)` for a config file's listener.
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("{label} printed {line:?}"))?
            .to_string();
        Ok((Self { child, addr }, stdout))
    }

    /// Resident memory (`VmRSS`), KiB.
    fn rss_kib(&self) -> anyhow::Result<f64> {
        self.proc_kib("status", "VmRSS:")
    }

    /// Proportional set size (`Pss`): resident memory with each shared page divided among
    /// the processes that map it, KiB.
    fn pss_kib(&self) -> anyhow::Result<f64> {
        self.proc_kib("smaps_rollup", "Pss:")
    }

    /// The KiB figure of the line starting with `key` in `/proc/PID/file`.
    fn proc_kib(&self, file: &str, key: &str) -> anyhow::Result<f64> {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))?;
        let line = text
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key} in /proc/PID/{file}"))?;
        let kib: f64 = line
            .split_whitespace()
            .nth(1)
            .with_context(|| format!("{key} value"))?
            .parse()?;
        Ok(kib)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

fn pin(pinned: bool, core: &str, program: &Path) -> Command {
    if pinned {
        let mut command = Command::new("taskset");
        command.args(["-c", core]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Run the load generator to completion and parse its `key=value` line.
fn loadgen<S: AsRef<OsStr>>(
    bin_dir: &Path,
    pinned: bool,
    args: &[S],
) -> anyhow::Result<BTreeMap<String, f64>> {
    finish_loadgen(spawn_loadgen(bin_dir, pinned, args)?).with_context(|| {
        let args: Vec<_> = args.iter().map(|a| a.as_ref().to_string_lossy()).collect();
        format!("loadgen {}", args.join(" "))
    })
}

/// Start the load generator (on core 0 when pinned), its output captured.
fn spawn_loadgen<S: AsRef<OsStr>>(
    bin_dir: &Path,
    pinned: bool,
    args: &[S],
) -> anyhow::Result<Child> {
    pin(pinned, "0", &bin_dir.join("loadgen"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start loadgen")
}

/// Wait for a load generator `spawn_loadgen` started and parse its `key=value` line.
fn finish_loadgen(loadgen: Child) -> anyhow::Result<BTreeMap<String, f64>> {
    let output = loadgen.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "loadgen failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_line(&String::from_utf8_lossy(&output.stdout))
}

/// The load scenarios' echo: 100 connections × `size`-byte round trips for `seconds`
/// against the server at `addr`.
fn echo_load(
    bin_dir: &Path,
    pinned: bool,
    addr: &str,
    size: &str,
    seconds: &str,
    server_pid: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let args = [
        "echo",
        "--addr",
        addr,
        "--conns",
        "100",
        "--size",
        size,
        "--seconds",
        seconds,
        "--server-pid",
        server_pid,
    ];
    loadgen(bin_dir, pinned, &args)
}

fn parse_line(line: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    line.split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| Ok((k.to_string(), v.parse()?)))
        .collect()
}

/// Spinning connections of the other tenant in each noisy-neighbour measurement.
const SPINNERS: [usize; 4] = [0, 1, 4, 16];

/// The echo tenant's figures beside `spinners` looping connections of the spin tenant, with
/// CPU shares on or off: one value per round.
struct NoisyRow {
    shares: bool,
    spinners: usize,
    p50: Vec<f64>,
    p99: Vec<f64>,
    rate: Vec<f64>,
}

/// One `shoal serve --config` process with two tenants, `echo` and `spin`, with CPU shares
/// on and then off (a server each, in alternating order per round): echo round trips
/// (100 connections × 512 B) while 0, 1, 4 and 16 of the spin tenant's guests loop (each
/// stopped at its 100 ms CPU budget and started again at once).
fn noisy_neighbour(args: &Args, bin_dir: &Path, pinned: bool) -> anyhow::Result<Vec<NoisyRow>> {
    let plugins = std::fs::canonicalize(&args.plugins)?;
    let folder = std::env::current_dir()?.join("target/bench");
    std::fs::create_dir_all(&folder)?;
    let mut rows: Vec<NoisyRow> = [true, false]
        .iter()
        .flat_map(|&shares| {
            SPINNERS.iter().map(move |&spinners| NoisyRow {
                shares,
                spinners,
                p50: Vec::new(),
                p99: Vec::new(),
                rate: Vec::new(),
            })
        })
        .collect();
    let seconds = args.seconds.to_string();
    for round in 1..=args.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for shares in order {
            eprintln!(
                "round {round}/{}: noisy neighbour, CPU shares {}",
                args.rounds,
                if shares { "on" } else { "off" }
            );
            let config = folder.join(format!("noisy-{shares}.toml"));
            std::fs::write(
                &config,
                format!(
                    "cpu_shares = {shares}\n\n\
                     [[listener]]\nname = \"echo\"\naddress = \"127.0.0.1:0\"\nplugin = \"{echo}\"\n\n\
                     [[listener]]\nname = \"spin\"\naddress = \"127.0.0.1:0\"\nplugin = \"{spin}\"\n",
                    echo = plugins.join("echo.wasm").display(),
                    spin = plugins.join("spin.wasm").display(),
                ),
            )?;
            let (server, spin_addr) = two_tenants(bin_dir, pinned, &config)?;
            for row in rows.iter_mut().filter(|row| row.shares == shares) {
                let spinner = (row.spinners > 0)
                    .then(|| {
                        pin(pinned, "0", &bin_dir.join("loadgen"))
                            .args(["spin", "--addr", &spin_addr, "--seconds"])
                            .arg((args.seconds + 2.0).to_string())
                            .args(["--conns", &row.spinners.to_string()])
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .spawn()
                    })
                    .transpose()?;
                if spinner.is_some() {
                    std::thread::sleep(Duration::from_millis(300));
                }
                let pid = server.child.id().to_string();
                let echo = echo_load(bin_dir, pinned, &server.addr, "512", &seconds, &pid);
                if let Some(spinner) = spinner {
                    let _ = spinner.wait_with_output();
                }
                let echo = echo?;
                let value = |key: &str| echo.get(key).copied().context("loadgen echo line");
                row.p50.push(value("p50_us")?);
                row.p99.push(value("p99_us")?);
                row.rate.push(value("round_trips_per_sec")?);
            }
        }
    }
    Ok(rows)
}

/// Start `shoal serve --config` with the two tenants of `config`: the server (its address
/// the echo tenant's) and the spin tenant's address.
const SWAP_P99: &str = "hot swap, 1,000 conns × 512 B: p99 latency µs";
const SWAP_RATE: &str = "hot swap, 1,000 conns × 512 B: round trips/s";
const SWAP_FAILED: &str = "hot swap: failed connections + mismatched echoes";
const SWAP_FIRST: &str = "hot swap: rename → first connection on it, ms (first swap: compiled)";
const SWAP_CACHED: &str = "hot swap: rename → first connection on it, ms (median, from cache)";

/// The `swap` scenario's table: each metric without swaps and with a swap every second,
/// medians over rounds.
fn swap_report(results: &mut Results) -> String {
    let mut out = String::from(
        "\nHot swap: 1,000 connections × 512 B echo for 10 s, without swaps and with the plugin \
         file replaced by a rename every second (echo ↔ echo-v2); medians of the rounds.\n\n\
         | metric | without swaps | a swap every second |\n|---|---|---|\n",
    );
    for metric in [SWAP_RATE, SWAP_P99, SWAP_FAILED, SWAP_FIRST, SWAP_CACHED] {
        let mut cell = |kind| {
            results
                .get_mut(&(kind, metric))
                .and_then(|values| median(values))
                .map_or_else(|| "–".to_string(), |v| format!("{v:.1}"))
        };
        let (without, with) = (cell(Kind::Native), cell(Kind::Wasm));
        out.push_str(&format!("| {metric} | {without} | {with} |\n"));
    }
    out.push_str(
        "\nLive state handoff: 1,000 chat members with names, `chat.wasm` replaced by a rename \
         with `chat-v2.wasm` on a listener with `handoff = \"immediate\"`, members quiet while \
         they move; each move's time from the server's log; medians of the rounds.\n\n\
         | metric | value |\n|---|---|\n",
    );
    for metric in [
        HANDOFF_ONE,
        HANDOFF_MEDIAN,
        HANDOFF_P99,
        HANDOFF_FIRST,
        HANDOFF_SPAN,
        HANDOFF_MOVED,
        HANDOFF_FAILED,
    ] {
        let value = results
            .get_mut(&(Kind::Wasm, metric))
            .and_then(|values| median(values))
            .map_or_else(|| "–".to_string(), |v| format!("{v:.1}"));
        out.push_str(&format!("| {metric} | {value} |\n"));
    }
    out
}

/// The `swap` scenario: `shoal serve --config` on a copy of the echo plugin, 1,000
/// connections of 512 B echo load for 10 s, and (in turn with a run without) the file
/// replaced by a rename every second, alternating echo and echo-v2. The compile cache starts
/// empty, so the first swap compiles and the later ones load from the cache. The Wasm echo
/// column is the run with swaps; the native column, the same load without.
fn hot_swap(
    args: &Args,
    bin_dir: &Path,
    pinned: bool,
    results: &mut Results,
) -> anyhow::Result<()> {
    let plugins = std::fs::canonicalize(&args.plugins)?;
    let folder = std::env::current_dir()?.join("target/bench/swap");
    for round in 1..=args.rounds {
        let order = if round % 2 == 0 {
            ["1", "0"]
        } else {
            ["0", "1"]
        };
        for every in order {
            eprintln!("round {round}/{}: hot swap every {every} s", args.rounds);
            let (server, live) = serve_watched(
                bin_dir,
                pinned,
                &folder,
                &plugins.join("echo.wasm"),
                "",
                None,
            )?;
            let (v1, v2) = (plugins.join("echo.wasm"), plugins.join("echo-v2.wasm"));
            let measured = loadgen(
                bin_dir,
                pinned,
                &[
                    "swap",
                    "--addr",
                    &server.addr,
                    "--conns",
                    "1000",
                    "--seconds",
                    "10",
                    "--live",
                    &live.display().to_string(),
                    "--v1",
                    &v1.display().to_string(),
                    "--v2",
                    &v2.display().to_string(),
                    "--every",
                    every,
                ],
            )?;
            drop(server);
            let column = if every == "1" {
                Kind::Wasm
            } else {
                Kind::Native
            };
            record(results, column, SWAP_P99, &measured, "p99_us")?;
            record(results, column, SWAP_RATE, &measured, "round_trips_per_sec")?;
            let lost = measured.get("failed_conns").copied().unwrap_or(0.0)
                + measured.get("mismatches").copied().unwrap_or(0.0);
            results.entry((column, SWAP_FAILED)).or_default().push(lost);
            if every == "1" {
                record(results, column, SWAP_FIRST, &measured, "first_swap_ms")?;
                record(results, column, SWAP_CACHED, &measured, "swap_ms")?;
            }
        }
        eprintln!(
            "round {round}/{}: handoff of 1,000 chat members",
            args.rounds
        );
        handoff(bin_dir, pinned, &plugins, &folder, results)?;
    }
    Ok(())
}

/// `shoal serve --config` on a copy of the plugin `source` in `folder` (emptied first), as
/// the one listener of a config with `settings` added, watching the copy, with a compile
/// cache in `folder`; and the copy's path. With `log`, the server's log goes to that file,
/// with each connection's move (`versions` at debug).
fn serve_watched(
    bin_dir: &Path,
    pinned: bool,
    folder: &Path,
    source: &Path,
    settings: &str,
    log: Option<&Path>,
) -> anyhow::Result<(Server, PathBuf)> {
    let _ = std::fs::remove_dir_all(folder);
    std::fs::create_dir_all(folder)?;
    let file = source.file_name().context("plugin file name")?;
    let live = folder.join(file);
    std::fs::copy(source, &live)?;
    let name = live.file_stem().context("plugin name")?.to_string_lossy();
    let config = folder.join("shoal.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\n\
             plugin = \"{}\"\nmax_connections = 2000\n{settings}",
            live.display()
        ),
    )?;
    let mut command = pin(pinned, "1", &bin_dir.join("shoal"));
    command
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--cache-dir")
        .arg(folder.join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(log) = log {
        command
            .env("RUST_LOG", "info,shoal_host::versions=debug")
            .stderr(std::fs::File::create(log)?);
    }
    let mut child = command.spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().context("server stdout")?);
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_once(' '))
        .map(|(addr, _)| addr.to_string())
        .with_context(|| format!("shoal serve --config printed {line:?}"))?;
    Ok((Server { child, addr }, live))
}

const HANDOFF_FIRST: &str = "rename → first member on the new build, ms";
const HANDOFF_MEDIAN: &str = "one move in the server (snapshot → new instance → resume), median µs";
const HANDOFF_P99: &str = "one move in the server, p99 µs";
const HANDOFF_SPAN: &str = "first → last of the 1,000 moves, ms";
const HANDOFF_MOVED: &str = "members on the new build afterwards";
const HANDOFF_FAILED: &str = "members disconnected";
const HANDOFF_ONE: &str =
    "one move in-process (chat → chat-v2: snapshot, new instance, resume, old dropped), µs";

/// 1,000 chat members with names on `shoal serve --config` (`handoff = "immediate"`),
/// `chat.wasm` replaced by `chat-v2.wasm` with a rename: when every member is served by the
/// new build, and what the moves cost per connection.
fn handoff(
    bin_dir: &Path,
    pinned: bool,
    plugins: &Path,
    folder: &Path,
    results: &mut Results,
) -> anyhow::Result<()> {
    let log = folder.join("shoal.log");
    let (server, live) = serve_watched(
        bin_dir,
        pinned,
        folder,
        &plugins.join("chat.wasm"),
        "handoff = \"immediate\"\n",
        Some(&log),
    )?;
    let next = plugins.join("chat-v2.wasm");
    let measured = loadgen(
        bin_dir,
        pinned,
        &[
            "handoff",
            "--addr",
            &server.addr,
            "--conns",
            "1000",
            "--live",
            &live.display().to_string(),
            "--next",
            &next.display().to_string(),
            "--next-name",
            "chat-v2",
        ],
    )?;
    drop(server);
    record(
        results,
        Kind::Wasm,
        HANDOFF_FIRST,
        &measured,
        "first_moved_ms",
    )?;
    record(results, Kind::Wasm, HANDOFF_MOVED, &measured, "moved")?;
    record(
        results,
        Kind::Wasm,
        HANDOFF_FAILED,
        &measured,
        "failed_conns",
    )?;
    let (mut moves, span) = moves_logged(&std::fs::read_to_string(&log)?)?;
    moves.sort();
    let at = |share| percentile(&moves, share).map_or(f64::NAN, micros);
    for (metric, value) in [
        (HANDOFF_MEDIAN, at(0.5)),
        (HANDOFF_P99, at(0.99)),
        (HANDOFF_SPAN, span.as_secs_f64() * 1e3),
    ] {
        results.entry((Kind::Wasm, metric)).or_default().push(value);
    }
    let moves = handoff_in_process(plugins, 1000)?;
    let median_move = percentile(&moves, 0.5).context("no moves")?;
    results
        .entry((Kind::Wasm, HANDOFF_ONE))
        .or_default()
        .push(micros(median_move));
    Ok(())
}

/// The moves a server logged (`moved from version 1 to version 2 with 8 bytes of state in
/// 80.48µs`): each one's time, and the span from the first to the last (by the lines' UTC
/// timestamps).
fn moves_logged(log: &str) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let mut took = Vec::new();
    let mut stamps = Vec::new();
    for line in log
        .lines()
        .filter(|line| line.contains("moved from version"))
    {
        let time = line
            .split_once(" in ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .with_context(|| format!("no time in {line:?}"))?;
        took.push(debug_duration(time)?);
        // `2026-11-29T02:34:06.434589Z`: seconds of the day are enough for a span.
        let clock = line
            .get(11..26)
            .with_context(|| format!("no timestamp in {line:?}"))?;
        let (h, m, s) = (&clock[0..2], &clock[3..5], &clock[6..]);
        let seconds = h.parse::<f64>()? * 3600.0 + m.parse::<f64>()? * 60.0 + s.parse::<f64>()?;
        stamps.push(seconds);
    }
    anyhow::ensure!(!took.is_empty(), "the server logged no move");
    let first = stamps.iter().copied().fold(f64::INFINITY, f64::min);
    let last = stamps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok((took, Duration::from_secs_f64((last - first).max(0.0))))
}

/// A `Duration` as `{:?}` writes it: `697ns`, `80.48µs`, `637.17ms`, `1.2s`.
fn debug_duration(text: &str) -> anyhow::Result<Duration> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .with_context(|| format!("no unit in {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse()?;
    let seconds = match unit {
        "ns" => number / 1e9,
        "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        _ => bail!("unknown unit in {text:?}"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

/// What a connection's move costs the host: the old instance's `snapshot`, a new instance of
/// the new version, its `resume`, the old instance dropped — the calls a listener makes for
/// each connection it moves — `count` times, in-process.
fn handoff_in_process(plugins: &Path, count: usize) -> anyhow::Result<Vec<Duration>> {
    let runtime = Runtime::new(RuntimeConfig::builder().max_instances(16).build()?)?;
    let old = Plugin::from_file(&runtime, plugins.join("chat.wasm"))?;
    let new = Plugin::from_file(&runtime, plugins.join("chat-v2.wasm"))?;
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let config = ServerConfig::default();
    let info = bench_conn_info();
    tokio.block_on(async {
        let mut samples = Vec::with_capacity(count);
        for _ in 0..count {
            let mut member = Instance::new(&old, &config).await?;
            anyhow::ensure!(member.init(&info).await? == Ok(Next::Continue));
            let typed = Event::Data(b"/nick someone\nhalf a li".to_vec());
            member.handle(&typed).await?;
            member.clear_output();
            let start = Instant::now();
            let state = member.snapshot().await?.context("chat exports handoff")?;
            let mut moved = Instance::new(&new, &config).await?;
            anyhow::ensure!(moved.resume(&info, &state).await? == Ok(Next::Continue));
            drop(member);
            samples.push(start.elapsed());
            moved.close(&CloseReason::PeerClosed).await?;
        }
        samples.sort();
        Ok(samples)
    })
}

fn two_tenants(bin_dir: &Path, pinned: bool, config: &Path) -> anyhow::Result<(Server, String)> {
    let mut child = pin(pinned, "1", &bin_dir.join("shoal"))
        .args(["serve", "--no-cache", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdout = BufReader::new(child.stdout.take().context("server stdout")?);
    let mut addresses = BTreeMap::new();
    for _ in 0..2 {
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let (addr, name) = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_once(' '))
            .with_context(|| format!("shoal serve --config printed {line:?}"))?;
        addresses.insert(name.trim_matches(['(', ')']).to_string(), addr.to_string());
    }
    let server = Server {
        child,
        addr: addresses.get("echo").context("echo listener")?.clone(),
    };
    let spin = addresses.get("spin").context("spin listener")?.clone();
    Ok((server, spin))
}

fn noisy_report(rows: &mut [NoisyRow]) -> String {
    let mut out = String::from(
        "\nNoisy neighbour: the echo tenant (100 connections × 512 B) while N guests of the spin \
         tenant loop, in one `shoal serve --config` process, with CPU shares on and off \
         (medians of the rounds):\n\n\
         | spinning | shares on: echo p50 µs | p99 µs | round trips/s | shares off: echo p50 µs | p99 µs | round trips/s |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for spinners in SPINNERS {
        let mut cells = Vec::new();
        for shares in [true, false] {
            if let Some(row) = rows
                .iter_mut()
                .find(|row| row.shares == shares && row.spinners == spinners)
            {
                for values in [&mut row.p50, &mut row.p99, &mut row.rate] {
                    cells.push(median(values).map_or("–".to_string(), |v| format!("{v:.0}")));
                }
            }
        }
        out.push_str(&format!("| {spinners} | {} |\n", cells.join(" | ")));
    }
    out
}

/// Server RSS growth per connection while `idle_conns` connections are open and initialised.
fn idle_memory(kind: Kind, bin_dir: &Path, args: &Args, pinned: bool) -> anyhow::Result<f64> {
    let server = Server::start(kind, bin_dir, args, pinned)?;
    let growth = idle_growth(&server, bin_dir, args.idle_conns, pinned)?;
    Ok(growth.rss_kib)
}

/// What a server's memory grew by, per idle connection.
struct IdleGrowth {
    rss_kib: f64,
    pss_kib: f64,
}

/// Open `conns` connections to `server` (each after one echoed byte, so each has its
/// instance), hold them idle, and read how much the server's RSS and PSS grew per connection.
fn idle_growth(
    server: &Server,
    bin_dir: &Path,
    conns: usize,
    pinned: bool,
) -> anyhow::Result<IdleGrowth> {
    std::thread::sleep(Duration::from_millis(200));
    let (rss_before, pss_before) = (server.rss_kib()?, server.pss_kib()?);
    let client = hold_idle(server, bin_dir, conns, pinned)?;
    std::thread::sleep(Duration::from_millis(500));
    let (rss_after, pss_after) = (server.rss_kib()?, server.pss_kib()?);
    release(client)?;
    Ok(IdleGrowth {
        rss_kib: (rss_after - rss_before) / conns as f64,
        pss_kib: (pss_after - pss_before) / conns as f64,
    })
}

/// `conns` connections to `server`, opened by `loadgen idle` (each after one echoed byte)
/// and held until [`release`].
fn hold_idle(
    server: &Server,
    bin_dir: &Path,
    conns: usize,
    pinned: bool,
) -> anyhow::Result<std::process::Child> {
    let count = conns.to_string();
    let mut client = pin(pinned, "0", &bin_dir.join("loadgen"))
        .args(["idle", "--addr", &server.addr, "--conns", &count])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = client.stdout.take().context("loadgen stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("ready") {
        let _ = client.kill();
        bail!("loadgen idle did not get ready: {line:?}");
    }
    Ok(client)
}

/// The admin listener's address, from the server's next ready line (`admin listening on
/// ADDR`, which follows the listeners' lines).
fn admin_address(stdout: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    let address = line
        .trim()
        .strip_prefix("admin listening on ")
        .with_context(|| format!("no admin address: {line:?}"))?;
    Ok(address.to_string())
}

/// `GET /metrics` from the admin listener at `admin`: the whole answer, head and page.
fn metrics_page(admin: &str) -> std::io::Result<String> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(admin)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Close the connections of [`hold_idle`].
fn release(mut client: std::process::Child) -> anyhow::Result<()> {
    if let Some(mut stdin) = client.stdin.take() {
        let _ = stdin.write_all(b"done");
    }
    client.wait()?;
    Ok(())
}

fn report(args: &Args, pinned: bool, results: &mut Results) -> String {
    let mut metrics: Vec<&'static str> = Vec::new();
    for (_, metric) in results.keys() {
        if !metrics.contains(metric) {
            metrics.push(metric);
        }
    }
    let value = |results: &mut Results, kind: Kind, metric: &'static str| -> Option<f64> {
        results
            .get_mut(&(kind, metric))
            .and_then(|values| median(values))
    };
    let mut out = String::new();
    out.push_str(&format!(
        "Medians of {} rounds; Wasm / native is the median of the per-round ratios (their \
         range in brackets); load scenarios {} s each after a 1 s warm-up; {} idle connections; \
         {}.\n\n",
        args.rounds,
        args.seconds,
        args.idle_conns,
        if pinned {
            "server on core 1 and load generator on core 0 (taskset)"
        } else {
            "server and load generator unpinned"
        }
    ));
    let baseline = results.keys().any(|(kind, _)| *kind == Kind::Baseline);
    if baseline {
        out.push_str(
            "| metric | shoal Wasm echo | shoal native echo | raw tokio echo | Wasm / native | \
             Wasm echo + 64 KiB state | baseline build's Wasm echo | this build / baseline |\n",
        );
        out.push_str("|---|---|---|---|---|---|---|---|\n");
    } else {
        out.push_str(
            "| metric | shoal Wasm echo | shoal native echo | raw tokio echo | Wasm / native | \
             Wasm echo + 64 KiB state |\n",
        );
        out.push_str("|---|---|---|---|---|---|\n");
    }
    for metric in metrics {
        // Before the medians below sort the values out of round order. The native lifecycle
        // is a struct on the heap: a ratio against it would mean nothing.
        let ratio = if metric == LIFECYCLE.0 || metric == LIFECYCLE.1 {
            "–".to_string()
        } else {
            ratio_cell(results, metric, Kind::Native) + &saturated_sides(results, metric, pinned)
        };
        let against_baseline = ratio_cell(results, metric, Kind::Baseline);
        let wasm = value(results, Kind::Wasm, metric);
        let native = value(results, Kind::Native, metric);
        let raw = value(results, Kind::Raw, metric);
        let ballast = value(results, Kind::Ballast, metric);
        let old = value(results, Kind::Baseline, metric);
        let cell = |v: Option<f64>| match v {
            None => "–".to_string(),
            Some(v) if v < 10.0 => format!("{v:.2}"),
            Some(v) => format!("{v:.1}"),
        };
        let mut row = format!(
            "| {metric} | {} | {} | {} | {ratio} | {} |",
            cell(wasm),
            cell(native),
            cell(raw),
            cell(ballast)
        );
        if baseline {
            row.push_str(&format!(" {} | {against_baseline} |", cell(old)));
        }
        row.push('\n');
        out.push_str(&row);
    }
    out
}

/// For a closed-loop throughput metric: which side each of the Wasm and native runs
/// saturated (` — Wasm: server-bound, native: client-bound`), from the busy rows measured
/// with it (median share of one core ≥ 0.9, so only when each side is pinned to one core);
/// empty for other metrics. A throughput ratio is the sandbox's price only where both
/// servers were the saturated side.
fn saturated_sides(results: &Results, metric: &str, pinned: bool) -> String {
    if !pinned {
        return String::new();
    }
    let prefix = match metric.split_once(": round trips/s") {
        Some((prefix, "")) => prefix,
        _ if metric == "connections/s" => metric,
        _ => return String::new(),
    };
    let busy = |kind: Kind, side: &str| -> Option<f64> {
        let name = format!("{prefix}: {side} busy (cores)");
        results
            .iter()
            .find(|((k, m), _)| *k == kind && *m == name)
            .and_then(|(_, values)| median(&mut values.clone()))
    };
    let side = |kind: Kind| match (busy(kind, "server"), busy(kind, "client")) {
        (Some(server), Some(client)) if server >= 0.9 && client >= 0.9 => Some("both saturated"),
        (Some(server), _) if server >= 0.9 => Some("server-bound"),
        (_, Some(client)) if client >= 0.9 => Some("client-bound"),
        (Some(_), Some(_)) => Some("neither saturated"),
        _ => None,
    };
    match (side(Kind::Wasm), side(Kind::Native)) {
        (Some(wasm), Some(native)) => format!(" — Wasm: {wasm}, native: {native}"),
        _ => String::new(),
    }
}

/// Wasm / `other` for `metric`: the median of the per-round ratios (each round measures both
/// servers back to back), with their range when there are several rounds.
fn ratio_cell(results: &Results, metric: &'static str, other: Kind) -> String {
    let values = |kind: Kind| results.get(&(kind, metric)).map_or(&[][..], Vec::as_slice);
    let mut ratios = paired_ratios(values(Kind::Wasm), values(other));
    let Some(middle) = median(&mut ratios) else {
        return "–".to_string();
    };
    match (ratios.first(), ratios.last()) {
        (Some(low), Some(high)) if ratios.len() > 1 => {
            format!("{middle:.2}× ({low:.2}–{high:.2})")
        }
        _ => format!("{middle:.2}×"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_moves_are_read_from_its_log() -> anyhow::Result<()> {
        let log = "2026-11-29T02:34:06.434589Z DEBUG shoal_host::versions: moved from version 1 \
                   to version 2 with 8 bytes of state in 697.121µs conn=424\n\
                   2026-11-29T02:34:06.500000Z  INFO something else in 3s\n\
                   2026-11-29T02:34:07.235229Z DEBUG shoal_host::versions: moved from version 1 \
                   to version 2 with 8 bytes of state in 637.173557ms conn=129\n";
        let (took, span) = moves_logged(log)?;
        assert_eq!(
            took,
            [
                Duration::from_nanos(697_121),
                Duration::from_nanos(637_173_557)
            ]
        );
        assert_eq!(span.as_micros(), 800_640);
        assert_eq!(debug_duration("12ns")?, Duration::from_nanos(12));
        assert_eq!(debug_duration("1.5s")?, Duration::from_millis(1500));
        assert!(debug_duration("3 weeks").is_err());
        Ok(())
    }

    #[test]
    fn a_throughput_ratio_says_which_side_saturated() {
        let mut results = Results::new();
        let mut put = |kind, metric, value: f64| {
            results.insert((kind, metric), vec![value]);
        };
        put(Kind::Wasm, "512 B × 100 conns: server busy (cores)", 0.99);
        put(Kind::Wasm, "512 B × 100 conns: client busy (cores)", 0.5);
        put(Kind::Native, "512 B × 100 conns: server busy (cores)", 0.8);
        put(Kind::Native, "512 B × 100 conns: client busy (cores)", 0.97);
        assert_eq!(
            saturated_sides(&results, "512 B × 100 conns: round trips/s", true),
            " — Wasm: server-bound, native: client-bound"
        );
        assert_eq!(
            saturated_sides(&results, "512 B × 100 conns: round trips/s", false),
            "",
            "unpinned, a server may use more than one core"
        );
        assert_eq!(
            saturated_sides(&results, "64 B × 100 conns: round trips/s", true),
            ""
        );
        assert_eq!(
            saturated_sides(&results, "512 B × 100 conns: p50 latency µs", true),
            ""
        );
    }

    #[test]
    fn loadgen_lines_parse() -> anyhow::Result<()> {
        let line = parse_line("round_trips_per_sec=1234 p50_us=56.7 p99_us=89.0\n")?;
        assert_eq!(line.get("round_trips_per_sec"), Some(&1234.0));
        assert_eq!(line.get("p99_us"), Some(&89.0));
        Ok(())
    }
}
