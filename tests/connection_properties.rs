//! Property-based tests of the connection loop, with real sockets: whatever the chunking of a
//! client's bytes, its pauses, the host's read size, and how the client ends (a half-close
//! or a reset, mid-transfer or not), every byte reaches the guest once and in order, every
//! byte of the answer reaches the client before the end, and the server ends the connection
//! cleanly and goes on serving. Each case has its own server and is bounded in time.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use proptest::prelude::*;
use shoal_host::{EndKind, Plugin, ServerConfig};
use support::{TestServer, plugin, proptest_config, random_bytes, read_line};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// Every case's deadline: far above what one takes (milliseconds), far below a hang.
const CASE_DEADLINE: Duration = Duration::from_secs(30);

fn tokio() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Each plugin compiled once per test binary.
fn loaded(name: &'static str) -> Plugin {
    static ECHO: OnceLock<Plugin> = OnceLock::new();
    static CHAT: OnceLock<Plugin> = OnceLock::new();
    let cell = if name == "echo" { &ECHO } else { &CHAT };
    cell.get_or_init(|| plugin(name)).clone()
}

async fn start(name: &'static str, read_buffer_size: usize) -> anyhow::Result<TestServer> {
    let config = ServerConfig::builder()
        .name(name)
        .pool_size(2)
        .read_buffer_size(read_buffer_size)
        .shutdown_timeout(Duration::from_secs(1))
        .build()?;
    TestServer::start_with(loaded(name), config).await
}

/// What the client does between two writes.
#[derive(Debug, Clone, Copy)]
enum Pause {
    None,
    Yield,
    Sleep(u64),
}

async fn pause(pause: Pause) {
    match pause {
        Pause::None => {}
        Pause::Yield => tokio::task::yield_now().await,
        Pause::Sleep(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
}

fn pauses() -> impl Strategy<Value = Pause> {
    prop_oneof![
        4 => Just(Pause::None),
        2 => Just(Pause::Yield),
        1 => (1u64..=5).prop_map(Pause::Sleep),
    ]
}

/// How the client ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// `shutdown(SHUT_WR)`, then read to the end.
    HalfClose,
    /// A reset (`SO_LINGER` 0, then close) after this many chunks, having read the echo of
    /// none, some or all of them.
    Reset { after: usize, read: ReadBefore },
}

#[derive(Debug, Clone, Copy)]
enum ReadBefore {
    Nothing,
    Some,
    All,
}

/// A client's bytes cut into chunks, with a pause after each, and how it ends.
#[derive(Debug, Clone)]
struct Script {
    chunks: Vec<usize>,
    pauses: Vec<Pause>,
    seed: u64,
    ending: Ending,
    read_buffer_size: usize,
}

fn chunk_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => 1usize..=16,
        4 => 17usize..=8192,
        1 => 65_536usize..=300_000,
    ]
}

/// Host read sizes from the smallest allowed to the default.
fn read_buffer_size() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![64usize, 100, 1000, 4096, 65_536])
}

fn script(ending: BoxedStrategy<Ending>) -> impl Strategy<Value = Script> {
    (1usize..40)
        .prop_flat_map(move |n| {
            (
                prop::collection::vec(chunk_size(), n),
                prop::collection::vec(pauses(), n),
                any::<u64>(),
                ending.clone(),
                read_buffer_size(),
            )
        })
        .prop_map(|(chunks, pauses, seed, ending, read_buffer_size)| Script {
            chunks,
            pauses,
            seed,
            ending,
            read_buffer_size,
        })
}

fn resets() -> BoxedStrategy<Ending> {
    (
        0usize..40,
        prop_oneof![
            Just(ReadBefore::Nothing),
            Just(ReadBefore::Some),
            Just(ReadBefore::All)
        ],
    )
        .prop_map(|(after, read)| Ending::Reset { after, read })
        .boxed()
}

/// Run a script against a fresh echo server; returns what the client read (for a
/// half-close: everything until the end of stream).
async fn run_echo(script: &Script) -> anyhow::Result<()> {
    let server = start("echo", script.read_buffer_size).await?;
    let total: usize = script.chunks.iter().sum();
    let data = random_bytes(total, script.seed);
    let stream = server.connect().await?;
    match script.ending {
        Ending::HalfClose => {
            let (mut reader, mut writer) = stream.into_split();
            let reading = tokio::spawn(async move {
                let mut echoed = Vec::new();
                reader.read_to_end(&mut echoed).await.map(|_| echoed)
            });
            let mut at = 0;
            for (size, wait) in script.chunks.iter().zip(&script.pauses) {
                writer.write_all(&data[at..at + size]).await?;
                at += size;
                pause(*wait).await;
            }
            writer.shutdown().await?;
            let echoed = reading.await??;
            anyhow::ensure!(
                echoed == data,
                "echoed {} bytes of {}, first difference at {:?}",
                echoed.len(),
                data.len(),
                echoed.iter().zip(&data).position(|(a, b)| a != b)
            );
        }
        Ending::Reset { after, read } => {
            let mut stream = stream;
            stream.set_zero_linger()?;
            let after = after.min(script.chunks.len());
            let sent: usize = script.chunks[..after].iter().sum();
            let mut echoed = Vec::new();
            let mut buffer = vec![0u8; 64 << 10];
            let mut at = 0;
            for (size, wait) in script.chunks[..after].iter().zip(&script.pauses) {
                // Written while reading, so that neither side's buffers fill up.
                let mut chunk = &data[at..at + size];
                let (mut reader, mut writer) = stream.split();
                while !chunk.is_empty() {
                    tokio::select! {
                        wrote = writer.write(chunk) => chunk = &chunk[wrote?..],
                        got = reader.read(&mut buffer) => {
                            let got = got?;
                            anyhow::ensure!(got > 0, "closed by the server");
                            echoed.extend_from_slice(&buffer[..got]);
                        }
                    }
                }
                at += size;
                pause(*wait).await;
            }
            let want = match read {
                ReadBefore::Nothing => 0,
                ReadBefore::Some => sent / 2,
                ReadBefore::All => sent,
            };
            while echoed.len() < want {
                let got = stream.read(&mut buffer).await?;
                anyhow::ensure!(got > 0, "closed by the server");
                echoed.extend_from_slice(&buffer[..got]);
            }
            anyhow::ensure!(echoed[..] == data[..echoed.len()], "echo differs");
            drop(stream);
            // The server goes on: a new client is echoed.
            let mut next = server.connect().await?;
            next.write_all(b"after the reset\n").await?;
            let mut reply = [0u8; 16];
            next.read_exact(&mut reply).await?;
            anyhow::ensure!(&reply == b"after the reset\n");
        }
    }
    server.wait_idle().await?;
    let stats = &server.stats;
    anyhow::ensure!(stats.faults() == 0, "{} faults", stats.faults());
    let ended = stats.ended(EndKind::ClientClosed) + stats.ended(EndKind::IoError);
    anyhow::ensure!(
        ended == stats.accepted(),
        "{} accepted, {ended} ended by the client",
        stats.accepted()
    );
    server.shutdown().await
}

fn check(case: impl std::future::Future<Output = anyhow::Result<()>>) -> Result<(), TestCaseError> {
    let outcome = tokio().block_on(async { tokio::time::timeout(CASE_DEADLINE, case).await });
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(TestCaseError::fail(format!("{error:#}"))),
        Err(_) => Err(TestCaseError::fail(format!(
            "not done in {CASE_DEADLINE:?}"
        ))),
    }
}

/// One chat member's lines, cut into chunks at random places (inside a UTF-8 character,
/// inside a `\r\n`...).
#[derive(Debug, Clone)]
struct ChatScript {
    lines: Vec<String>,
    crlf: Vec<bool>,
    cuts: Vec<prop::sample::Index>,
    pauses: Vec<Pause>,
    read_buffer_size: usize,
}

fn chat_script() -> impl Strategy<Value = ChatScript> {
    (
        prop::collection::vec("[a-zA-Z0-9 ,.!?éü漢字🦀]{0,80}", 1..30),
        prop::collection::vec(any::<bool>(), 30),
        prop::collection::vec(any::<prop::sample::Index>(), 0..30),
        prop::collection::vec(pauses(), 31),
        read_buffer_size(),
    )
        .prop_map(|(lines, crlf, cuts, pauses, read_buffer_size)| ChatScript {
            lines,
            crlf,
            cuts,
            pauses,
            read_buffer_size,
        })
}

async fn run_chat(script: &ChatScript) -> anyhow::Result<()> {
    let server = start("chat", script.read_buffer_size).await?;
    let mut listener = BufReader::new(server.connect().await?);
    read_line(&mut listener).await?; // its welcome
    let mut speaker = server.connect().await?;
    let joined = read_line(&mut listener).await?;
    let id = joined
        .strip_prefix("* ")
        .and_then(|rest| rest.strip_suffix(" joined"))
        .with_context(|| format!("a join notice, got {joined:?}"))?
        .to_string();
    let mut text = Vec::new();
    for (line, crlf) in script.lines.iter().zip(&script.crlf) {
        text.extend_from_slice(line.as_bytes());
        text.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
    }
    let mut cuts: Vec<usize> = script.cuts.iter().map(|i| i.index(text.len())).collect();
    cuts.push(text.len());
    cuts.sort_unstable();
    let mut at = 0;
    for (cut, wait) in cuts.into_iter().zip(&script.pauses) {
        speaker.write_all(&text[at..cut]).await?;
        at = cut;
        pause(*wait).await;
    }
    speaker.shutdown().await?;
    for line in &script.lines {
        let got = read_line(&mut listener).await?;
        anyhow::ensure!(
            got == format!("{id}: {line}"),
            "expected {id}: {line:?}, got {got:?}"
        );
    }
    let left = read_line(&mut listener).await?;
    anyhow::ensure!(
        left == format!("* {id} left"),
        "expected a leave notice, got {left:?}"
    );
    drop(speaker);
    drop(listener);
    server.wait_idle().await?;
    anyhow::ensure!(
        server.stats.faults() == 0,
        "{} faults",
        server.stats.faults()
    );
    server.shutdown().await
}

proptest! {
    #![proptest_config(proptest_config(48))]

    /// A client that half-closes gets back exactly what it sent, whatever the chunking.
    #[test]
    fn an_echo_client_that_half_closes_gets_every_byte_back(
        script in script(Just(Ending::HalfClose).boxed())
    ) {
        check(run_echo(&script))?;
    }

    /// A client that resets mid-transfer costs the server nothing: the connection ends as
    /// the client's doing, nothing faults, the next client is served.
    #[test]
    fn a_client_that_resets_mid_transfer_ends_cleanly(script in script(resets())) {
        check(run_echo(&script))?;
    }

    /// A chat member's lines reach the room whole and in order however they are cut,
    /// and its leaving is announced once it half-closes.
    #[test]
    fn chat_lines_arrive_whole_however_they_are_cut(script in chat_script()) {
        check(run_chat(&script))?;
    }
}
