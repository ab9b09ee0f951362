//! Shared by the integration tests: a real shoal server on 127.0.0.1 port 0, plugins built
//! from `plugins/` by `make plugins`, captured logs and small client helpers.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod mutate;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shoal_host::{
    HandlerFactory, Plugin, Runtime, RuntimeConfig, ServeError, Server, ServerConfig, Stats,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where `make plugins` leaves the component built from `plugins/<name>`.
pub fn plugin_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make plugins` first",
        path.display()
    );
    path
}

/// One engine per test binary, as a real process has.
pub fn runtime() -> Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let config = RuntimeConfig::builder()
                .max_instances(4096)
                // A Python plugin creates 14 core instances (a Rust one up to 3).
                .core_instances_per_component(16)
                .build()
                .expect("valid runtime config");
            Runtime::new(config).expect("engine starts")
        })
        .clone()
}

/// Load a plugin built from this repository's sources, once per test binary: a JavaScript
/// component takes Cranelift tens of seconds to compile, and every test of a binary shares
/// its engine ([`runtime`]) anyway.
pub fn plugin(name: &str) -> Plugin {
    static LOADED: OnceLock<Mutex<HashMap<String, Plugin>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loaded
        .entry(name.to_string())
        .or_insert_with(|| Plugin::from_file(&runtime(), plugin_path(name)).expect("plugin loads"))
        .clone()
}

/// A server running in this process until [`TestServer::shutdown`].
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub stats: Arc<Stats>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServeError>>,
}

impl TestServer {
    /// Serve the named plugin with the default config (short shutdown timeout).
    pub async fn start(plugin_name: &str) -> anyhow::Result<Self> {
        let config = ServerConfig::builder()
            .name(plugin_name)
            .pool_size(4)
            .shutdown_timeout(Duration::from_secs(5))
            .build()?;
        Self::start_with(plugin(plugin_name), config).await
    }

    /// Serve with any handler factory: a plugin, or native code.
    pub async fn start_with(
        factory: impl HandlerFactory,
        config: ServerConfig,
    ) -> anyhow::Result<Self> {
        Self::serve(Server::new(factory, config)).await
    }

    /// Run a server built by the test (with hooks, say).
    pub async fn serve(server: Server<impl HandlerFactory>) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stats = server.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            stats,
            stop: Some(stop),
            task,
        })
    }

    pub async fn connect(&self) -> anyhow::Result<TcpStream> {
        Ok(TcpStream::connect(self.addr).await?)
    }

    /// Signal shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signal shutdown and wait for `serve` to return.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.task.await??;
        Ok(())
    }

    /// Wait (at most 10 s) until no instance or connection is alive.
    pub async fn wait_idle(&self) -> anyhow::Result<()> {
        let stats = Arc::clone(&self.stats);
        wait_for("the server to be idle", || {
            stats.live_instances() == 0 && stats.live_connections() == 0
        })
        .await
        .with_context(|| {
            format!(
                "{} instances and {} connections still alive",
                self.stats.live_instances(),
                self.stats.live_connections()
            )
        })
    }
}

/// Poll `condition` every 10 ms until it holds, for at most 10 s.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Read one `\n`-terminated line (without the newline), at most 10 s.
pub async fn read_line(reader: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .context("timed out reading a line")??;
    if !line.ends_with('\n') {
        bail!("connection ended mid-line or before a line: {line:?}");
    }
    line.pop();
    Ok(line)
}

/// Read to end of stream, at most 10 s.
pub async fn read_to_end(stream: &mut (impl AsyncReadExt + Unpin)) -> anyhow::Result<Vec<u8>> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut all))
        .await
        .context("timed out waiting for the end of the stream")??;
    Ok(all)
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Log lines written through `tracing` in this test process, captured from the first call on.
pub fn captured_logs() -> Arc<Mutex<Vec<String>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<String>>>> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LineSink(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("only subscriber");
        logs
    }))
}

/// The captured lines that contain every one of `needles`.
pub fn log_lines_with(needles: &[&str]) -> Vec<String> {
    let logs = captured_logs();
    let lines = logs.lock().expect("log lock");
    lines
        .iter()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .cloned()
        .collect()
}

struct LineSink(Arc<Mutex<Vec<String>>>);

impl std::io::Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        if let Ok(mut lines) = self.0.lock() {
            lines.extend(text.lines().map(str::to_string));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// This process's resident memory in KiB: servers under test run in it.
pub fn rss_kib() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// A `shoal serve --config FILE` process, its listeners' addresses and its log.
pub struct ShoalProcess {
    child: tokio::process::Child,
    pub addrs: std::collections::HashMap<String, std::net::SocketAddr>,
    /// The config file it serves (rewrite it, then send `HUP`).
    pub config: std::path::PathBuf,
    log: Arc<Mutex<String>>,
    /// Its standard output after the listeners' lines (kept open: the server writes more).
    stdout: BufReader<tokio::process::ChildStdout>,
}

impl ShoalProcess {
    /// Write `config` to a file of this test's and serve it; wait until every listener is
    /// bound (`listeners` of them).
    pub async fn serve_config(name: &str, config: &str, listeners: usize) -> anyhow::Result<Self> {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{name}-{}.toml", std::process::id()));
        std::fs::write(&path, config)?;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(["serve", "--no-cache", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
        let sink = Arc::clone(&log);
        tokio::spawn(async move {
            let mut line = String::new();
            while stderr.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                if let Ok(mut log) = sink.lock() {
                    log.push_str(&line);
                }
                line.clear();
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
        let mut addrs = std::collections::HashMap::new();
        for _ in 0..listeners {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(60), stdout.read_line(&mut line))
                .await
                .context("shoal serve did not print its addresses")??;
            let (addr, listener) = line
                .trim()
                .strip_prefix("listening on ")
                .and_then(|rest| rest.split_once(' '))
                .with_context(|| format!("unexpected line: {line:?}"))?;
            let listener = listener.trim_matches(['(', ')']).to_string();
            addrs.insert(listener, addr.parse()?);
        }
        Ok(Self {
            child,
            addrs,
            config: path,
            log,
            stdout,
        })
    }

    /// The admin listener's address, from the line that follows the listeners'.
    pub async fn admin_addr(&mut self) -> anyhow::Result<std::net::SocketAddr> {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.stdout.read_line(&mut line))
            .await
            .context("no admin line")??;
        Ok(line
            .trim()
            .strip_prefix("admin listening on ")
            .with_context(|| format!("unexpected line: {line:?}"))?
            .parse()?)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|log| log.clone()).unwrap_or_default()
    }

    /// Send the process a signal by name (`STOP`, `CONT`, `TERM`).
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("still running")?.to_string();
        let sent = tokio::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .await?;
        anyhow::ensure!(sent.success(), "kill -{signal} failed");
        Ok(())
    }

    /// Stop it with SIGTERM and wait for it to exit; its whole log.
    pub async fn terminate(mut self) -> anyhow::Result<String> {
        self.signal("TERM").await?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        anyhow::ensure!(status.success(), "exit status {status}");
        // The log reader ends with the process's stderr.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(self.log.lock().map(|log| log.clone()).unwrap_or_default())
    }
}

/// Property-test settings: `cases` cases from a fixed seed, so every run tries the same
/// inputs and a failure reproduces (`PROPTEST_CASES` and `PROPTEST_RNG_SEED` override both);
/// no failure files are written into the source tree.
pub fn proptest_config(cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5ea1_0012);
    }
    config.failure_persistence = None;
    config
}

/// Run `shoal ARGS` to the end (at most 2 minutes), with no admin token in its environment:
/// success, stdout, stderr.
pub async fn shoal(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
            .args(args)
            .env_remove("SHOAL_ADMIN_TOKEN")
            .stdin(Stdio::null())
            .output(),
    )
    .await??;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// A member of a chat room served by the chat plugin.
pub type ChatClient = BufReader<TcpStream>;

/// Join the chat: the client and its id (from the welcome line), with the join notices of
/// those who come later still to read.
pub async fn join_chat(server: &TestServer) -> anyhow::Result<(ChatClient, u64)> {
    join_stream(server.connect().await?).await
}

/// The connection id in a greeter's greeting (`hello <id> from <listener>`).
pub fn greeted_id(greeting: &str) -> anyhow::Result<String> {
    Ok(greeting
        .strip_prefix("hello ")
        .and_then(|rest| rest.split(' ').next())
        .with_context(|| format!("not a greeting: {greeting:?}"))?
        .to_string())
}

/// Join the chat over `stream`, connected to a chat listener: the client and its id.
pub async fn join_stream(stream: TcpStream) -> anyhow::Result<(ChatClient, u64)> {
    let mut client = BufReader::new(stream);
    let welcome = read_line(&mut client).await?;
    let id = welcome
        .strip_prefix("* welcome, you are ")
        .and_then(|rest| rest.split(';').next())
        .with_context(|| format!("welcome line: {welcome:?}"))?
        .parse()?;
    Ok((client, id))
}
