//! The `profile` scenario (`make profile`): where the Wasm echo and the native echo spend
//! their time under the paced loads, by time (`perf record -e cpu-clock`: this machine kind
//! has no hardware counters), with DWARF call stacks (release builds keep no frame
//! pointers). For each server and load: a flame graph SVG in `--profile-dir`, and a table of
//! the time by area and by function, in microseconds of server CPU per operation (the
//! share of samples times the CPU per operation `loadgen paced` measured over the same
//! window; `perf` itself adds a little to that figure).

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use shoal_bench::flame::{self, Area, Summary};

use crate::{Args, Kind, Server, finish_loadgen, paced, spawn_loadgen};

/// The two loads of the paced scenario.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    RoundTrips,
    Connections,
}

impl Load {
    fn slug(self) -> &'static str {
        match self {
            Load::RoundTrips => "round-trips",
            Load::Connections => "connections",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Load::RoundTrips => "per round trip",
            Load::Connections => "per connection",
        }
    }
}

/// One profile: which server under which load, what it cost per operation, and its samples.
struct Profile {
    kind: Kind,
    load: Load,
    cpu_us_per_op: f64,
    summary: Summary,
}

/// Profile each server under each load; returns the report's section.
pub fn run(args: &Args, bin_dir: &Path, pinned: bool) -> anyhow::Result<String> {
    let dir = &args.profile_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let mut profiles = Vec::new();
    for load in [Load::RoundTrips, Load::Connections] {
        for kind in [Kind::Wasm, Kind::Native] {
            let name = format!("{}-{}", slug(kind), load.slug());
            eprintln!("profile: {} {}", kind.label(), load.label());
            let server = Server::start(kind, bin_dir, args, pinned)?;
            let pid = server.child.id().to_string();
            // The load generator's window: a 1 s warm-up, then `seconds`; perf records the
            // middle of it.
            let window = args.seconds.max(2.0);
            let connect = load == Load::Connections;
            let loadgen_args = paced::loadgen_args(args, connect, &server.addr, &pid, window);
            let loadgen = spawn_loadgen(bin_dir, pinned, &loadgen_args)?;
            std::thread::sleep(Duration::from_millis(1500));
            let data = dir.join(format!("{name}.data"));
            let recorded = record(&pid, &data, window - 1.0);
            let line = finish_loadgen(loadgen)?;
            drop(server);
            recorded?;
            let cpu_us_per_op = line
                .get("server_cpu_us_per_op")
                .copied()
                .context("loadgen printed no server_cpu_us_per_op")?;
            let title = format!(
                "{} {}: {cpu_us_per_op:.1} µs of server CPU per operation",
                kind.label(),
                load.label()
            );
            let summary = flame::render(&data, &dir.join(format!("{name}.svg")), &title)?;
            // The SVG is the result; the recording is large and machine-specific.
            let _ = std::fs::remove_file(&data);
            profiles.push(Profile {
                kind,
                load,
                cpu_us_per_op,
                summary,
            });
        }
    }
    Ok(report(&profiles, dir))
}

fn slug(kind: Kind) -> &'static str {
    match kind {
        Kind::Native => "native",
        _ => "wasm",
    }
}

/// `perf record` of process `pid` for `seconds`, into `data`.
fn record(pid: &str, data: &Path, seconds: f64) -> anyhow::Result<()> {
    let status = Command::new("perf")
        .args(["record", "-e", "cpu-clock", "-F", "999", "--call-graph"])
        .arg("dwarf,16384")
        .args(["-p", pid, "-o"])
        .arg(data)
        .args(["--", "sleep", &format!("{seconds:.1}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run perf record (is perf installed? scripts/install-deps.sh --perf)")?;
    if !status.success() {
        bail!(
            "perf record failed ({status}): is /proc/sys/kernel/perf_event_paranoid above 1 \
             for a user without CAP_PERFMON?"
        );
    }
    Ok(())
}

/// The section: per load, time by area side by side, then each server's top functions.
fn report(profiles: &[Profile], dir: &Path) -> String {
    let mut out = format!(
        "\nProfiles by time (perf record -e cpu-clock, DWARF stacks) under the paced loads; \
         flame graphs in {}. µs = share of samples × server CPU per operation.\n",
        dir.display()
    );
    for load in [Load::RoundTrips, Load::Connections] {
        let of_load: Vec<&Profile> = profiles.iter().filter(|p| p.load == load).collect();
        let _ = write!(out, "\n**{}** — µs of server CPU by area", load.label());
        let _ = writeln!(out, "\n\n| area |{}", columns(&of_load, |p| p.kind.label()));
        let _ = writeln!(out, "|---|{}", columns(&of_load, |_| "---"));
        for area in Area::ALL {
            let cells: Vec<String> = of_load
                .iter()
                .map(|p| {
                    let count = p.summary.by_area.get(&area).copied().unwrap_or(0);
                    us(p, count)
                })
                .collect();
            let _ = writeln!(out, "| {} | {} |", area.label(), cells.join(" | "));
        }
        let totals: Vec<String> = of_load
            .iter()
            .map(|p| format!("**{:.2}**", p.cpu_us_per_op))
            .collect();
        let _ = writeln!(out, "| total | {} |", totals.join(" | "));
        for profile in &of_load {
            let _ = writeln!(
                out,
                "\n{} {}, top functions (self time):\n\n| function | share | µs |\n|---|---|---|",
                profile.kind.label(),
                load.label()
            );
            for (name, count) in profile.summary.top_functions(15) {
                let shown: String = name.chars().take(110).collect();
                let _ = writeln!(
                    out,
                    "| `{}` | {:.1} % | {} |",
                    shown.replace('|', "\\|"),
                    100.0 * profile.summary.share(count),
                    us(profile, count)
                );
            }
        }
    }
    out
}

fn columns(profiles: &[&Profile], cell: impl Fn(&Profile) -> &str) -> String {
    profiles.iter().map(|p| format!(" {} |", cell(p))).collect()
}

fn us(profile: &Profile, count: u64) -> String {
    format!(
        "{:.2}",
        profile.summary.share(count) * profile.cpu_us_per_op
    )
}
