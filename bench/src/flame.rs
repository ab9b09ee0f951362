//! A `perf record` profile read back: its stacks folded (inferno's `collapse-perf`), drawn as a
//! flame graph SVG, and summed by where the time was spent — the kernel, wasmtime, the guest's
//! compiled code, shoal, tokio, the allocator and C library — and by function.
//!
//! Folded frames are shortened before they are drawn and summed: generic arguments (`poll<...>`) are dropped, so that a
//! frame reads `<tracing::instrument::Instrumented as core::future::future::Future>::poll`
//! instead of two kilobytes of nested types, and the SVG stays small enough to commit.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use inferno::collapse::Collapse;
use inferno::collapse::perf::{Folder, Options as FoldOptions};
use inferno::flamegraph::{self, Options as FlameOptions};

/// Where a sample's time went, judged by its innermost frame.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Area {
    /// The kernel: system calls, TCP, scheduling, page faults.
    Kernel,
    /// wasmtime's runtime: calls in and out of the guest, instantiation, fibers.
    Wasmtime,
    /// The guest's compiled code (and wasmtime's trampolines, compiled with it).
    Guest,
    /// Shoal's host.
    Shoal,
    /// The async runtime and its I/O driver.
    Tokio,
    /// The allocator (mimalloc, glibc's malloc) and the C library: memset, memcpy, system
    /// call wrappers.
    Libc,
    /// Everything else (std, tracing, inlined frames without a crate name).
    Other,
}

impl Area {
    /// Every area, in table order.
    pub const ALL: [Area; 7] = [
        Area::Kernel,
        Area::Wasmtime,
        Area::Guest,
        Area::Shoal,
        Area::Tokio,
        Area::Libc,
        Area::Other,
    ];

    /// The area's name in tables.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Area::Kernel => "kernel (system calls, TCP, scheduling)",
            Area::Wasmtime => "wasmtime (calls, instantiation, fibers)",
            Area::Guest => "guest code (compiled Wasm)",
            Area::Shoal => "shoal",
            Area::Tokio => "tokio and mio",
            Area::Libc => "allocator and C library (malloc, memset, memcpy)",
            Area::Other => "other",
        }
    }

    /// The area of an innermost frame as inferno folds it (`_[k]` kernel, `_[j]` JIT).
    fn of(frame: &str) -> Self {
        if frame.ends_with("_[k]") {
            Area::Kernel
        } else if frame.ends_with("_[j]") || frame.contains("wasm[") {
            Area::Guest
        } else if frame.contains("wasmtime") || frame.contains("cranelift") {
            Area::Wasmtime
        } else if frame.contains("shoal_host") {
            Area::Shoal
        } else if frame.contains("tokio") || frame.contains("mio::") {
            Area::Tokio
        } else if is_libc(frame) {
            Area::Libc
        } else {
            Area::Other
        }
    }
}

fn is_libc(frame: &str) -> bool {
    // Innermost frames of the C library and of mimalloc (the `shoal` binary's allocator).
    const PREFIXES: [&str; 16] = [
        "malloc",
        "cfree",
        "free",
        "calloc",
        "realloc",
        "_int_",
        "unlink_chunk",
        "__mem",
        "__libc",
        "__GI_",
        "__send",
        "epoll_wait",
        "clock_",
        "pthread",
        "mi_",
        "_mi_",
    ];
    PREFIXES.iter().any(|prefix| frame.starts_with(prefix))
}

/// A profile's samples by area and by innermost function.
#[derive(Debug, Default)]
pub struct Summary {
    /// Samples in all.
    pub samples: u64,
    /// Samples by the area of their innermost frame.
    pub by_area: BTreeMap<Area, u64>,
    /// Samples by their innermost frame.
    pub by_function: BTreeMap<String, u64>,
}

impl Summary {
    /// The `n` functions with the most samples, most first.
    #[must_use]
    pub fn top_functions(&self, n: usize) -> Vec<(&str, u64)> {
        let mut all: Vec<(&str, u64)> = self
            .by_function
            .iter()
            .map(|(name, count)| (name.as_str(), *count))
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        all.truncate(n);
        all
    }

    /// The share of samples `count` is.
    #[must_use]
    pub fn share(&self, count: u64) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            count as f64 / self.samples as f64
        }
    }
}

/// Fold `perf_data` (a `perf record -g` file), write its flame graph to `svg` under `title`,
/// and sum it up.
///
/// # Errors
///
/// When `perf script` fails or the SVG cannot be written.
pub fn render(perf_data: &Path, svg: &Path, title: &str) -> anyhow::Result<Summary> {
    let script = Command::new("perf")
        .arg("script")
        .arg("-i")
        .arg(perf_data)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run perf script")?;
    if !script.status.success() {
        bail!("perf script -i {} failed", perf_data.display());
    }
    let mut options = FoldOptions::default();
    options.annotate_jit = true;
    options.annotate_kernel = true;
    let mut folded = Vec::new();
    Folder::from(options)
        .collapse(BufReader::new(&script.stdout[..]), &mut folded)
        .context("folding perf script's stacks")?;
    let folded = String::from_utf8_lossy(&folded);
    let lines: Vec<String> = folded.lines().map(shorten_stack).collect();
    let summary = summarize(&lines);

    let mut flame = FlameOptions::default();
    flame.title = title.to_string();
    flame.count_name = "samples".to_string();
    flame.min_width = 0.2;
    let file = std::fs::File::create(svg).with_context(|| format!("{}", svg.display()))?;
    flamegraph::from_lines(
        &mut flame,
        lines.iter().map(String::as_str),
        std::io::BufWriter::new(file),
    )
    .context("drawing the flame graph")?;
    Ok(summary)
}

/// Sum folded lines (`frame;frame;... count`) by innermost frame.
fn summarize(lines: &[String]) -> Summary {
    let mut summary = Summary::default();
    for line in lines {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        let leaf = stack.rsplit(';').next().unwrap_or(stack);
        summary.samples += count;
        *summary.by_area.entry(Area::of(leaf)).or_default() += count;
        *summary.by_function.entry(leaf.to_string()).or_default() += count;
    }
    summary
}

/// A folded line with every frame shortened (the count is left alone).
fn shorten_stack(line: &str) -> String {
    let Some((stack, count)) = line.rsplit_once(' ') else {
        return line.to_string();
    };
    let frames: Vec<String> = stack.split(';').map(shorten_frame).collect();
    format!("{} {count}", frames.join(";"))
}

/// A frame without generic arguments: `<` right after a name (or `}`, `>`) opens a list of
/// them, dropped with everything nested in it; a `<` anywhere else opens a qualified path
/// (`<T as Trait>::f`) and stays.
fn shorten_frame(frame: &str) -> String {
    let mut out = String::with_capacity(frame.len().min(160));
    let mut skipping = 0usize;
    let mut previous = ' ';
    for c in frame.chars() {
        if skipping > 0 {
            match c {
                '<' => skipping += 1,
                '>' if previous != '-' => skipping -= 1,
                _ => {}
            }
            previous = c;
            continue;
        }
        if c == '<' && (previous.is_alphanumeric() || matches!(previous, '_' | '}' | '>')) {
            skipping = 1;
            previous = c;
            continue;
        }
        out.push(c);
        previous = c;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_arguments_go_and_qualified_paths_stay() {
        assert_eq!(
            shorten_frame(
                "<tracing::instrument::Instrumented<T> as core::future::future::Future>::poll"
            ),
            "<tracing::instrument::Instrumented as core::future::future::Future>::poll"
        );
        assert_eq!(
            shorten_frame("poll<shoal_host::server::connection::serve::{async_fn_env#0}<V, S>>"),
            "poll"
        );
        assert_eq!(
            shorten_frame("{closure#0}<core::result::Result<(), E>>"),
            "{closure#0}"
        );
        assert_eq!(shorten_frame("tcp_sendmsg_[k]"), "tcp_sendmsg_[k]");
        assert_eq!(shorten_frame("call<fn(A) -> B>::f"), "call::f");
    }

    #[test]
    fn samples_are_summed_by_innermost_frame() {
        let lines = [
            "shoal;main;tcp_sendmsg_[k] 3".to_string(),
            "shoal;main;wasm[0]::function[17]_[j] 2".to_string(),
            "shoal;main;wasmtime::runtime::fiber::make_fiber 1".to_string(),
            "shoal;main;mi_find_page 1".to_string(),
            "shoal;main;tcp_sendmsg_[k] 4".to_string(),
        ];
        let summary = summarize(&lines);
        assert_eq!(summary.samples, 11);
        assert_eq!(summary.by_area.get(&Area::Libc), Some(&1));
        assert_eq!(summary.by_area.get(&Area::Kernel), Some(&7));
        assert_eq!(summary.by_area.get(&Area::Guest), Some(&2));
        assert_eq!(summary.by_area.get(&Area::Wasmtime), Some(&1));
        assert_eq!(summary.top_functions(1), vec![("tcp_sendmsg_[k]", 7)]);
    }
}
