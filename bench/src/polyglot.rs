//! The `polyglot` scenario, in process: the echo plugin of every guest language shoal ships
//! (Rust, C, JavaScript, Python), each instantiated, `init`, `close`d and dropped many times
//! on an engine with copy-on-write memory images off (shoal's default) and on — what one
//! connection's instance costs in each language, and whether copy-on-write pays for it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_bench::{micros, percentile};
use shoal_host::{Plugin, Runtime, RuntimeConfig, ServerConfig, Stats};

use crate::lifecycles;

/// One language's echo.
pub struct Row {
    pub language: &'static str,
    pub size: usize,
    /// Per engine: copy-on-write off, then on.
    pub load: [Duration; 2],
    pub p50: [Duration; 2],
    pub p99: [Duration; 2],
}

/// The echo plugins, by language.
const ECHOES: [(&str, &str); 4] = [
    ("Rust", "echo.wasm"),
    ("C", "echo-c.wasm"),
    ("JavaScript", "echo-js.wasm"),
    ("Python", "echo-py.wasm"),
];

/// Each language's echo, `count` lifecycles on each engine (after a tenth as many to warm
/// it up), as the `lifecycle` scenario counts them.
pub fn run(plugins: &Path, count: usize) -> anyhow::Result<Vec<Row>> {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut rows = Vec::new();
    for (language, file) in ECHOES {
        let path = plugins.join(file);
        let size = std::fs::metadata(&path)
            .with_context(|| format!("{} (make plugins)", path.display()))?
            .len();
        let mut row = Row {
            language,
            size: usize::try_from(size)?,
            load: [Duration::ZERO; 2],
            p50: [Duration::ZERO; 2],
            p99: [Duration::ZERO; 2],
        };
        for (i, copy_on_write) in [false, true].into_iter().enumerate() {
            eprintln!("polyglot: {language}, copy-on-write {copy_on_write}");
            let runtime = Runtime::new(
                RuntimeConfig::builder()
                    .max_instances(16)
                    .core_instances_per_component(16)
                    .copy_on_write(copy_on_write)
                    .build()?,
            )?;
            let started = Instant::now();
            let plugin = Plugin::from_file(&runtime, &path)?;
            row.load[i] = started.elapsed();
            let config = ServerConfig::default();
            let stats = std::sync::Arc::new(Stats::default());
            tokio.block_on(lifecycles(&plugin, &config, &stats, count / 10))?;
            let mut samples = tokio.block_on(lifecycles(&plugin, &config, &stats, count))?;
            samples.sort();
            row.p50[i] = percentile(&samples, 0.5).context("no lifecycles")?;
            row.p99[i] = percentile(&samples, 0.99).context("no lifecycles")?;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The scenario's table.
pub fn report(rows: &[Row]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = String::from(
        "\nPolyglot: each language's echo, in process — compiled without a cache, then \
         instantiated, `init`, `close`d and dropped (one connection's instance), with \
         copy-on-write memory images off (the default) and on.\n\n\
         | language | size KiB | compile, ms | lifecycle p50 µs (CoW off) | p99 µs (off) \
         | lifecycle p50 µs (CoW on) | p99 µs (on) |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        out.push_str(&format!(
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            row.language,
            row.size.div_ceil(1024),
            ms(row.load[0]),
            micros(row.p50[0]),
            micros(row.p99[0]),
            micros(row.p50[1]),
            micros(row.p99[1]),
        ));
    }
    out
}
