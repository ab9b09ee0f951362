//! Mutated plugin files, as a fuzzer makes them (a fixed seed, so every run tries the same
//! ones; `SHOAL_MUTANTS=N` tries more), through everything a plugin file goes through: the
//! loader, `shoal check`, `shoal serve`, and a listener serving real clients. Each mutant is
//! refused with a typed error or served; none panics, hangs, or harms another listener.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use shoal_host::{Plugin, PluginError, ServerConfig};
use support::mutate::mutate_bytes;
use support::{TestServer, plugin_path, runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEED: u64 = 0x5ea1_0012;
const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// How many mutants of each plugin (300 by default, as the hardening issue tried).
fn mutant_count() -> u64 {
    std::env::var("SHOAL_MUTANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

struct Mutant {
    seed: u64,
    what: String,
    bytes: Vec<u8>,
    /// `None` when the loader accepted it.
    refused: Option<String>,
}

impl Mutant {
    fn describe(&self) -> String {
        format!("mutant {:#x} ({})", self.seed, self.what)
    }

    /// Written under cargo's temporary folder for tests, for the command line and to
    /// reproduce a failure.
    fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("mutant-{:x}.wasm", self.seed));
        std::fs::write(&path, &self.bytes)?;
        Ok(path)
    }
}

/// Load `bytes` on a thread of its own, so that a panic is reported as this mutant's and a
/// load that never ends fails the test instead of hanging it.
fn load(name: &str, bytes: Vec<u8>) -> anyhow::Result<Result<Plugin, PluginError>> {
    let (done, result) = mpsc::channel();
    let name = name.to_string();
    std::thread::spawn(move || {
        let _ = done.send(Plugin::from_bytes(&runtime(), &name, &bytes));
    });
    match result.recv_timeout(Duration::from_secs(120)) {
        Ok(loaded) => Ok(loaded),
        Err(mpsc::RecvTimeoutError::Timeout) => bail!("the loader took over 120 s"),
        Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the loader panicked"),
    }
}

/// Every mutant of `plugin`, loaded: refused ones with their error.
fn mutants_of(plugin: &str) -> anyhow::Result<(Vec<Mutant>, Vec<Plugin>)> {
    let original = std::fs::read(plugin_path(plugin))?;
    let mut mutants = Vec::new();
    let mut loaded = Vec::new();
    for index in 0..mutant_count() {
        let seed = SEED ^ (index << 16) ^ plugin.len() as u64;
        let (bytes, what) = mutate_bytes(&original, seed);
        let mut mutant = Mutant {
            seed,
            what,
            bytes,
            refused: None,
        };
        let name = format!("{plugin}-mutant-{seed:x}");
        match load(&name, mutant.bytes.clone()).with_context(|| mutant.describe())? {
            Ok(plugin) => loaded.push(plugin),
            Err(error) => {
                let message = format!("{:#}", anyhow::Error::new(error));
                assert!(
                    message.contains(&name) && message.len() > name.len() + 10,
                    "{}: the error names the plugin and what is wrong: {message}",
                    mutant.describe()
                );
                mutant.refused = Some(message);
            }
        }
        mutants.push(mutant);
    }
    Ok((mutants, loaded))
}

/// What a client of a served mutant saw.
#[derive(Default, Debug)]
struct Outcomes {
    /// Bytes came back.
    answered: usize,
    /// The connection was closed (by a fault, say) with nothing sent.
    closed: usize,
    /// Nothing within two seconds (a plugin may wait for more input).
    silent: usize,
}

/// Serve each plugin that loaded, one listener at a time, beside a healthy echo listener: a
/// client of the mutant gets an answer, a close or silence; once it leaves, the connection
/// ends within the listener's limits; and the healthy listener echoes after every one.
async fn serve_each(plugins: Vec<Plugin>) -> anyhow::Result<Outcomes> {
    let healthy = TestServer::start("echo").await?;
    let mut outcomes = Outcomes::default();
    for plugin in plugins {
        let name = plugin.name().to_string();
        let config = ServerConfig::builder()
            .name(&name)
            .pool_size(2)
            .cpu_budget_per_call(Duration::from_millis(50))
            .call_timeout(Duration::from_secs(1))
            .memory_limit(16 << 20)
            .shutdown_timeout(Duration::from_secs(1))
            .build()?;
        let server = TestServer::start_with(plugin, config).await?;
        let mut client = server.connect().await?;
        // The peer may already have closed: a failed write is one of the allowed outcomes.
        let _ = client.write_all(b"hello mutant\n").await;
        let mut reply = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut reply)).await;
        match read {
            _ if !reply.is_empty() => outcomes.answered += 1,
            Ok(_) => outcomes.closed += 1,
            Err(_) => outcomes.silent += 1,
        }
        drop(client);
        server.wait_idle().await.with_context(|| name.clone())?;
        server.shutdown().await.with_context(|| name.clone())?;
        let mut check = healthy.connect().await?;
        check.write_all(b"still here\n").await?;
        let mut echoed = [0u8; 11];
        tokio::time::timeout(Duration::from_secs(10), check.read_exact(&mut echoed))
            .await
            .with_context(|| format!("the healthy listener after {name}"))??;
        assert_eq!(&echoed, b"still here\n");
    }
    healthy.shutdown().await?;
    Ok(outcomes)
}

/// `shoal check FILE` and `shoal serve FILE` agree with the loader: a refused mutant exits 1
/// at once with one error naming the file (never a panic), a loaded one is `ok` and serves
/// until SIGTERM.
async fn through_the_command_line(mutant: &Mutant, dir: &Path) -> anyhow::Result<()> {
    let path = mutant.write(dir)?;
    let file = path.to_str().context("utf-8 path")?;
    let run = |args: Vec<&str>| {
        let mut command = tokio::process::Command::new(SHOAL);
        command
            .args(args)
            .env("XDG_CACHE_HOME", dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    };
    let check = tokio::time::timeout(Duration::from_secs(120), run(vec!["check", file]).output())
        .await
        .context("shoal check took over 120 s")??;
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    match &mutant.refused {
        Some(_) => {
            assert_eq!(check.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.starts_with("shoal: error: ") && stderr.contains(file),
                "{stderr}"
            );
            assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
            let serve = run(vec!["serve", "--listen", "127.0.0.1:0", file]).output();
            let serve = tokio::time::timeout(Duration::from_secs(120), serve)
                .await
                .context("a refused plugin must stop shoal serve at once")??;
            assert_eq!(serve.status.code(), Some(1), "{serve:?}");
        }
        None => {
            assert!(check.status.success(), "{stderr}");
            let mut child = run(vec!["serve", "--listen", "127.0.0.1:0", file]).spawn()?;
            let stdout = child.stdout.take().context("stdout")?;
            let mut line = String::new();
            let mut stdout = tokio::io::BufReader::new(stdout);
            tokio::time::timeout(
                Duration::from_secs(120),
                tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line),
            )
            .await
            .context("shoal serve did not start")??;
            assert!(line.starts_with("listening on "), "{line}");
            let pid = child.id().context("running")?.to_string();
            tokio::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .await?;
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
            assert!(status.success(), "{status}");
        }
    }
    std::fs::remove_file(&path)?;
    Ok(())
}

async fn mutants_are_refused_or_served(plugin: &str) -> anyhow::Result<()> {
    let (mutants, loaded) = tokio::task::spawn_blocking({
        let plugin = plugin.to_string();
        move || mutants_of(&plugin)
    })
    .await??;
    let refused = mutants.iter().filter(|m| m.refused.is_some()).count();
    let served = loaded.len();
    let outcomes = serve_each(loaded).await?;
    eprintln!(
        "{plugin}: {} mutants: {refused} refused, {served} loaded and served: {outcomes:?}",
        mutants.len()
    );
    // Not a fixed number (a new compiler may accept more or fewer), but a fuzzer that never
    // reaches the serving path tests only the parser.
    assert!(
        refused > 0 && served > 0,
        "{refused} refused, {served} served"
    );
    // The command line: every loaded mutant and one refused in twenty.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mutants-{plugin}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (index, mutant) in mutants.iter().enumerate() {
        if mutant.refused.is_none() || index % 20 == 0 {
            through_the_command_line(mutant, &dir)
                .await
                .with_context(|| mutant.describe())?;
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutants_of_echo_are_refused_or_served() -> anyhow::Result<()> {
    mutants_are_refused_or_served("echo").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutants_of_chat_are_refused_or_served() -> anyhow::Result<()> {
    mutants_are_refused_or_served("chat").await
}
