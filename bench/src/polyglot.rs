//! The `polyglot` scenario, in process: the echo plugin of every guest language shoal ships
//! (Rust, C, JavaScript, Python), each instantiated, `init`, `close`d and dropped many times
//! on an engine with copy-on-write memory images off (shoal's default) and on — what one
//! connection's instance costs in each language, and whether copy-on-write pays for it.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_bench::{micros, percentile};
use shoal_host::{
    CloseReason, ConnInfo, Instance, Next, Plugin, Runtime, RuntimeConfig, ServerConfig,
};

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
/// it up).
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
            tokio.block_on(lifecycles(&plugin, count / 10))?;
            let mut samples = tokio.block_on(lifecycles(&plugin, count))?;
            samples.sort();
            row.p50[i] = percentile(&samples, 0.5).context("no lifecycles")?;
            row.p99[i] = percentile(&samples, 0.99).context("no lifecycles")?;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// `count` lifecycles: a fresh instance, `init`, `close`, dropped.
async fn lifecycles(plugin: &Plugin, count: usize) -> anyhow::Result<Vec<Duration>> {
    let config = ServerConfig::default();
    let info = ConnInfo {
        id: 1,
        peer: "127.0.0.1:1".into(),
        local: "127.0.0.1:2".into(),
        listener: "bench".into(),
    };
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let mut instance = Instance::new(plugin, &config).await?;
        anyhow::ensure!(instance.init(&info).await? == Ok(Next::Continue));
        instance.close(&CloseReason::PeerClosed).await?;
        drop(instance);
        samples.push(start.elapsed());
    }
    Ok(samples)
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
