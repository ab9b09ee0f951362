//! The `profile` scenario (`make profile`): where the Wasm echo and the native echo spend
//! their time under the paced loads, by time (`perf record -e cpu-clock`: this machine kind
//! has no hardware counters), with DWARF call stacks (release builds keep no frame
//! pointers). For each server and load: a flame graph SVG in `--profile-dir`, and a table of
//! the time by area and by function, in microseconds of server CPU per operation (the
//! share of samples times the CPU per operation `loadgen paced` measured over the same
//! window; `perf` itself adds a little to that figure). Over the same window `perf stat`
//! counts the scheduler's events per operation — the inter-processor interrupts the server
//! sent (mostly to wake the load generator's sleeping core), the wake-ups and the context
//! switches — which time samples inside the kernel do not show.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

/// One profile: which server under which load, what it cost per operation, its samples, and
/// its scheduler events per operation (none where `perf stat` cannot count them).
struct Profile {
    kind: Kind,
    load: Load,
    cpu_us_per_op: f64,
    summary: Summary,
    events: Option<[f64; SCHED_EVENTS.len()]>,
}

/// The scheduler's events counted per operation, and what the report calls them.
const SCHED_EVENTS: [(&str, &str); 3] = [
    (
        "ipi:ipi_send_cpu",
        "interrupts sent to another core (IPIs: waking a sleeping core)",
    ),
    ("sched:sched_wakeup", "tasks woken"),
    ("sched:sched_switch", "context switches"),
];

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
            let counts = dir.join(format!("{name}.counts"));
            let counting = count_events(&pid, &counts, window - 1.0);
            let recorded = record(&pid, &data, window - 1.0);
            let counted = counting.and_then(|mut child| Ok(child.wait()?));
            let line = finish_loadgen(loadgen)?;
            drop(server);
            recorded?;
            let cpu_us_per_op = line
                .get("server_cpu_us_per_op")
                .copied()
                .context("loadgen printed no server_cpu_us_per_op")?;
            let ops = line.get("ops_per_sec").copied().unwrap_or(0.0) * (window - 1.0);
            let events = match counted {
                Ok(status) if status.success() => std::fs::read_to_string(&counts)
                    .ok()
                    .and_then(|text| per_op(&text, ops)),
                _ => None,
            };
            let _ = std::fs::remove_file(&counts);
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
                events,
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

/// `perf SUBCOMMAND` of process `pid` for `seconds`, writing to `out`, its own output
/// silenced.
fn perf(subcommand: &[&str], pid: &str, out: &Path, seconds: f64) -> Command {
    let mut command = Command::new("perf");
    command
        .args(subcommand)
        .args(["-p", pid, "-o"])
        .arg(out)
        .args(["--", "sleep", &format!("{seconds:.1}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// `perf record` of process `pid` for `seconds`, into `data`.
fn record(pid: &str, data: &Path, seconds: f64) -> anyhow::Result<()> {
    let subcommand = [
        "record",
        "-e",
        "cpu-clock",
        "-F",
        "999",
        "--call-graph",
        "dwarf,16384",
    ];
    let status = perf(&subcommand, pid, data, seconds)
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

/// `perf stat` of [`SCHED_EVENTS`] in process `pid` for `seconds`, into `out` (started, not
/// waited for).
fn count_events(pid: &str, out: &Path, seconds: f64) -> anyhow::Result<Child> {
    let events: Vec<&str> = SCHED_EVENTS.iter().map(|(event, _)| *event).collect();
    perf(
        &["stat", "-x", ",", "-e", &events.join(",")],
        pid,
        out,
        seconds,
    )
    .spawn()
    .context("cannot run perf stat")
}

/// Each of [`SCHED_EVENTS`] per operation, from `perf stat -x ,`'s output; `None` if one was
/// not counted (a kernel without the tracepoint, or no right to read it).
fn per_op(text: &str, ops: f64) -> Option<[f64; SCHED_EVENTS.len()]> {
    if ops <= 0.0 {
        return None;
    }
    let mut out = [0.0; SCHED_EVENTS.len()];
    for (slot, (event, _)) in out.iter_mut().zip(SCHED_EVENTS) {
        let count: f64 = text
            .lines()
            .map(|line| line.split(',').collect::<Vec<_>>())
            .find(|fields| fields.get(2) == Some(&event))?
            .first()?
            .parse()
            .ok()?;
        *slot = count / ops;
    }
    Some(out)
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
        if of_load.iter().all(|p| p.events.is_some()) {
            let _ = write!(
                out,
                "\nScheduler events per operation (`perf stat`, the same window)"
            );
            let _ = writeln!(
                out,
                "\n\n| event |{}",
                columns(&of_load, |p| p.kind.label())
            );
            let _ = writeln!(out, "|---|{}", columns(&of_load, |_| "---"));
            for (index, (_, label)) in SCHED_EVENTS.iter().enumerate() {
                let cells: Vec<String> = of_load
                    .iter()
                    .filter_map(|p| p.events.map(|events| format!("{:.3}", events[index])))
                    .collect();
                let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_events_are_read_per_operation_from_perf_stat() {
        let counted = "# started on Mon Nov 30 07:01:58 2026\n\n\
                       300,,ipi:ipi_send_cpu,884175,100.00,,\n\
                       1500,,sched:sched_wakeup,884175,100.00,,\n\
                       600,,sched:sched_switch,884175,100.00,,\n";
        assert_eq!(per_op(counted, 6000.0), Some([0.05, 0.25, 0.1]));
        assert_eq!(per_op(counted, 0.0), None);
        let unsupported = "<not supported>,,ipi:ipi_send_cpu,0,100.00,,\n\
                           1500,,sched:sched_wakeup,884175,100.00,,\n\
                           600,,sched:sched_switch,884175,100.00,,\n";
        assert_eq!(per_op(unsupported, 6000.0), None);
    }
}
