//! The compile cache: a second load of a plugin skips compilation; an entry that is truncated
//! or corrupted is compiled again, with a warning, and the plugin serves; a cache folder that
//! is read-only or cannot be made costs a warning, never the server. Every test uses a cache
//! folder of its own, made empty.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shoal_host::{Compilation, Plugin, Runtime, RuntimeConfig, ServerConfig};
use support::{TestServer, captured_logs, log_lines_with, plugin_path, read_line};
use tokio::io::{AsyncWriteExt, BufReader};

/// An empty folder for one test's cache (removed first, so no earlier run shows through).
fn fresh_dir(test: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("shoal-cache-{test}-{}", std::process::id()));
    if dir.exists() {
        make_writable(&dir)?;
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(dir)
}

fn make_writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// A runtime with its own cache folder, as a new process of the server would have.
fn runtime_with_cache(dir: Option<&Path>) -> anyhow::Result<Runtime> {
    let config = RuntimeConfig::builder()
        .max_instances(16)
        .cache_dir(dir.map(Path::to_path_buf))
        .build()?;
    Ok(Runtime::new(config)?)
}

/// The one cache entry in `dir`.
fn the_entry(dir: &Path) -> anyhow::Result<PathBuf> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(entries.len() == 1, "one entry expected: {entries:?}");
    let entry = entries[0].clone();
    anyhow::ensure!(
        entry.extension().is_some_and(|ext| ext == "cwasm"),
        "{entry:?}"
    );
    Ok(entry)
}

/// Serve `plugin` and check one line comes back from it.
async fn serves_an_echo(plugin: Plugin) -> anyhow::Result<()> {
    let config = ServerConfig::builder().name("cached").build()?;
    let server = TestServer::start_with(plugin, config).await?;
    let mut client = BufReader::new(server.connect().await?);
    client.get_mut().write_all(b"still serving\n").await?;
    assert_eq!(read_line(&mut client).await?, "still serving");
    drop(client);
    server.shutdown().await
}

#[tokio::test]
async fn a_second_load_comes_from_the_cache_at_least_five_times_faster() -> anyhow::Result<()> {
    let dir = fresh_dir("second-load")?;
    let chat = plugin_path("chat");
    let cold = Plugin::from_file(&runtime_with_cache(Some(&dir))?, &chat)?.load_report();
    assert_eq!(cold.compilation, Compilation::Compiled);
    // A new runtime, as a second start of the server would make: the entry is found by the
    // file's hash and the engine's, not by anything this process remembers.
    let mut cached: Vec<Duration> = Vec::new();
    for _ in 0..3 {
        let plugin = Plugin::from_file(&runtime_with_cache(Some(&dir))?, &chat)?;
        assert_eq!(plugin.load_report().compilation, Compilation::FromCache);
        cached.push(plugin.load_report().took);
    }
    cached.sort();
    let median = cached[1];
    assert!(
        cold.took >= median * 5,
        "compiled in {:?}, loaded from the cache in {median:?}: less than 5× faster",
        cold.took
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_truncated_or_corrupted_entry_is_compiled_again_and_serves() -> anyhow::Result<()> {
    captured_logs();
    let dir = fresh_dir("damaged")?;
    let echo = plugin_path("echo");
    let first = Plugin::from_file(&runtime_with_cache(Some(&dir))?, &echo)?;
    assert_eq!(first.load_report().compilation, Compilation::Compiled);
    let entry = the_entry(&dir)?;
    let whole = std::fs::read(&entry)?;

    // Cut short, as a disk that filled up or a crash mid-write would leave it.
    std::fs::write(&entry, &whole[..whole.len() / 2])?;
    let truncated = Plugin::from_file(&runtime_with_cache(Some(&dir))?, &echo)?;
    assert_eq!(truncated.load_report().compilation, Compilation::Compiled);
    serves_an_echo(truncated).await?;

    // The same length, one byte flipped in the compiled code.
    let mut flipped = whole.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(&entry, &flipped)?;
    let corrupted = Plugin::from_file(&runtime_with_cache(Some(&dir))?, &echo)?;
    assert_eq!(corrupted.load_report().compilation, Compilation::Compiled);
    serves_an_echo(corrupted).await?;

    let shown = entry.display().to_string();
    let warnings = log_lines_with(&["WARN", &shown, "unusable", "compiling again"]);
    assert_eq!(
        warnings.len(),
        2,
        "one warning per damaged entry: {warnings:#?}"
    );
    // Compiling again rewrote the entry: the next load comes from the cache.
    let again = Plugin::from_file(&runtime_with_cache(Some(&dir))?, &echo)?;
    assert_eq!(again.load_report().compilation, Compilation::FromCache);
    assert_eq!(std::fs::read(&entry)?, whole, "the same entry, whole again");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_read_only_cache_folder_warns_and_serves() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    captured_logs();
    let dir = fresh_dir("read-only")?;
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))?;
    let runtime = runtime_with_cache(Some(&dir))?;
    let shown = dir.display().to_string();
    assert!(
        !log_lines_with(&["WARN", &shown, "is read-only"]).is_empty(),
        "the read-only folder is reported"
    );
    let plugin = Plugin::from_file(&runtime, plugin_path("echo"))?;
    assert_eq!(plugin.load_report().compilation, Compilation::Compiled);
    assert_eq!(std::fs::read_dir(&dir)?.count(), 0, "nothing written");
    serves_an_echo(plugin).await?;
    make_writable(&dir)?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test]
async fn a_cache_folder_that_cannot_be_made_warns_and_serves() -> anyhow::Result<()> {
    captured_logs();
    let blocker = fresh_dir("missing")?;
    // A file where the folder's parent should be: the folder can never be created.
    std::fs::write(&blocker, b"not a folder")?;
    let dir = blocker.join("shoal");
    let runtime = runtime_with_cache(Some(&dir))?;
    assert_eq!(runtime.cache_dir(), None, "no cache in use");
    let shown = dir.display().to_string();
    assert!(
        !log_lines_with(&["WARN", &shown, "cannot be used"]).is_empty(),
        "the unusable folder is reported"
    );
    let plugin = Plugin::from_file(&runtime, plugin_path("echo"))?;
    assert_eq!(plugin.load_report().compilation, Compilation::Compiled);
    serves_an_echo(plugin).await?;
    std::fs::remove_file(&blocker)?;
    Ok(())
}

#[tokio::test]
async fn without_a_cache_every_load_compiles() -> anyhow::Result<()> {
    let runtime = runtime_with_cache(None)?;
    for _ in 0..2 {
        let plugin = Plugin::from_file(&runtime, plugin_path("echo"))?;
        assert_eq!(plugin.load_report().compilation, Compilation::Compiled);
    }
    let hash = Plugin::from_file(&runtime, plugin_path("echo"))?
        .content_hash()
        .to_string();
    assert_eq!(hash.len(), 64);
    let bytes = std::fs::read(plugin_path("echo")).context("echo.wasm")?;
    assert_eq!(hash, shoal_host::ContentHash::of(&bytes).to_string());
    Ok(())
}

#[test]
fn a_long_compile_says_how_long_it_has_taken() -> anyhow::Result<()> {
    captured_logs();
    // Lines every millisecond: any real compile (tens of milliseconds here) prints some.
    let runtime = Runtime::new(
        RuntimeConfig::builder()
            .max_instances(1)
            .compile_progress_every(Duration::from_millis(1))
            .build()?,
    )?;
    let plugin = Plugin::from_file(&runtime, plugin_path("probe"))?;
    assert_eq!(plugin.load_report().compilation, Compilation::Compiled);
    let lines = log_lines_with(&["still compiling probe", "so far"]);
    assert!(!lines.is_empty(), "no progress line");
    // And none once it is done.
    let after = lines.len();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        log_lines_with(&["still compiling probe", "so far"]).len(),
        after
    );
    Ok(())
}
