//! The same tests for the echo and the chat plugin of every guest language shoal ships: Rust
//! (`plugins/echo`, `plugins/chat`), C (`plugins/c`), JavaScript (`plugins/js`) and Python
//! (`plugins/python`). A user picks a language; the
//! plugins must behave alike on the wire, byte for byte — echo: a round trip, 1 MiB, 200
//! clients at once, a client's half-close; chat: join, line, `/nick`, `/who`, leave, and a
//! hostile member (names cannot be taken twice, control characters never reach another
//! member's terminal raw, an overlong command is refused whole); and both hibernate
//! (`hibernate_after`) and wake with their state through their `handoff` export.

mod support;

use std::time::Duration;

use anyhow::ensure;
use shoal_host::{MemoryInit, ServerConfig, Versions};
use support::{
    ChatClient, TestServer, join_chat, plugin, random_bytes, read_line, read_to_end, wait_for,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The tests, once per language: `language!(module, "echo plugin", "chat plugin")`, and
/// `hibernating_echo = "plugin"` where the language's echo exports `handoff` (the Rust echo,
/// the smallest plugin, does not: tests/hibernate.rs shows it never sleeps).
macro_rules! language {
    ($language:ident, $echo:literal, $chat:literal $(, hibernating_echo = $sleepy:literal)?) => {
        mod $language {
            #[tokio::test]
            async fn echo_round_trip() -> anyhow::Result<()> {
                super::echo_round_trip($echo).await
            }

            #[tokio::test]
            async fn echo_of_one_mebibyte() -> anyhow::Result<()> {
                super::echo_of_one_mebibyte($echo).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn echo_to_200_clients_at_once() -> anyhow::Result<()> {
                super::echo_to_200_clients_at_once($echo).await
            }

            #[tokio::test]
            async fn echo_ends_when_the_client_half_closes() -> anyhow::Result<()> {
                super::echo_ends_when_the_client_half_closes($echo).await
            }

            #[tokio::test]
            async fn chat_join_line_nick_who_leave() -> anyhow::Result<()> {
                super::chat_join_line_nick_who_leave($chat).await
            }

            #[tokio::test]
            async fn a_name_in_use_cannot_be_taken() -> anyhow::Result<()> {
                super::a_name_in_use_cannot_be_taken($chat).await
            }

            #[tokio::test]
            async fn control_characters_never_reach_a_terminal_raw() -> anyhow::Result<()> {
                super::control_characters_never_reach_a_terminal_raw($chat).await
            }

            #[tokio::test]
            async fn an_overlong_command_is_refused_whole() -> anyhow::Result<()> {
                super::an_overlong_command_is_refused_whole($chat).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn chat_members_sleep_and_wake_with_their_names() -> anyhow::Result<()> {
                super::chat_members_sleep_and_wake_with_their_names($chat).await
            }

            $(
                #[tokio::test]
                async fn an_idle_echo_sleeps_and_wakes_to_echo() -> anyhow::Result<()> {
                    super::an_idle_echo_sleeps_and_wakes_to_echo($sleepy).await
                }
            )?
        }
    };
}

language!(rust, "echo", "chat");
language!(c, "echo-c", "chat-c", hibernating_echo = "echo-c");
language!(js, "echo-js", "chat-js", hibernating_echo = "echo-js");
language!(python, "echo-py", "chat-py", hibernating_echo = "echo-py");

type Client = ChatClient;

async fn say(client: &mut Client, bytes: &[u8]) -> anyhow::Result<()> {
    client.get_mut().write_all(bytes).await?;
    Ok(())
}

/// Nothing more arrives within a short while.
async fn silent(client: &mut Client) -> anyhow::Result<()> {
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(300), client.read(&mut byte)).await;
    anyhow::ensure!(read.is_err(), "unexpected output: {read:?} {byte:?}");
    Ok(())
}

/// Send `bytes` on `client` while reading as many back (a large echo must be read while it is
/// written: neither side's buffers hold a mebibyte).
async fn echo(client: &mut tokio::net::TcpStream, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (mut reader, mut writer) = client.split();
    let mut back = vec![0u8; bytes.len()];
    let (written, read) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(writer.write_all(bytes), reader.read_exact(&mut back))
    })
    .await?;
    written?;
    read?;
    Ok(back)
}

async fn echo_round_trip(plugin: &str) -> anyhow::Result<()> {
    let server = TestServer::start(plugin).await?;
    let mut client = server.connect().await?;
    ensure!(echo(&mut client, b"hello, shoal\n").await? == b"hello, shoal\n");
    ensure!(echo(&mut client, b"again").await? == b"again");
    drop(client);
    server.shutdown().await
}

async fn echo_of_one_mebibyte(plugin: &str) -> anyhow::Result<()> {
    let server = TestServer::start(plugin).await?;
    let mut client = server.connect().await?;
    let bytes = random_bytes(1 << 20, 7);
    ensure!(
        echo(&mut client, &bytes).await? == bytes,
        "1 MiB came back changed"
    );
    drop(client);
    server.shutdown().await
}

async fn echo_to_200_clients_at_once(plugin: &str) -> anyhow::Result<()> {
    let server = TestServer::start(plugin).await?;
    let mut clients = Vec::new();
    for i in 0..200u64 {
        let mut client = server.connect().await?;
        clients.push(tokio::spawn(async move {
            let bytes = random_bytes(4096, i + 1);
            let back = echo(&mut client, &bytes).await?;
            anyhow::ensure!(back == bytes, "client {i}: echo differs");
            anyhow::Ok(())
        }));
    }
    for client in clients {
        client.await??;
    }
    server.shutdown().await
}

async fn echo_ends_when_the_client_half_closes(plugin: &str) -> anyhow::Result<()> {
    let server = TestServer::start(plugin).await?;
    let mut client = server.connect().await?;
    client.write_all(b"last words").await?;
    client.shutdown().await?;
    ensure!(read_to_end(&mut client).await? == b"last words");
    server.shutdown().await
}

async fn chat_join_line_nick_who_leave(chat: &str) -> anyhow::Result<()> {
    let server = TestServer::start(chat).await?;
    let (mut alice, alice_id) = join_chat(&server).await?;
    let (mut bob, bob_id) = join_chat(&server).await?;
    ensure!(read_line(&mut alice).await? == format!("* {bob_id} joined"));
    say(&mut alice, b"hello\r\n").await?;
    ensure!(read_line(&mut bob).await? == format!("{alice_id}: hello"));
    say(&mut bob, b"/nick bob\n").await?;
    ensure!(read_line(&mut bob).await? == "* you are now bob");
    ensure!(read_line(&mut alice).await? == format!("* {bob_id} is now bob"));
    say(&mut bob, b"two lines\nin one chunk\n").await?;
    ensure!(read_line(&mut alice).await? == "bob: two lines");
    ensure!(read_line(&mut alice).await? == "bob: in one chunk");
    say(&mut bob, b"/nick not a name!\n").await?;
    ensure!(read_line(&mut bob).await? == "* a name is 1 to 32 letters, digits, _ or -");
    say(&mut alice, b"/who\n").await?;
    let mut who = vec![read_line(&mut alice).await?, read_line(&mut alice).await?];
    who.sort();
    let mut expected = vec![
        format!("* {alice_id} {alice_id} (you)"),
        format!("* {bob_id} bob"),
    ];
    expected.sort();
    ensure!(who == expected, "{who:?}");
    drop(bob);
    ensure!(read_line(&mut alice).await? == "* bob left");
    silent(&mut alice).await?;
    server.shutdown().await
}

async fn a_name_in_use_cannot_be_taken(chat: &str) -> anyhow::Result<()> {
    let server = TestServer::start(chat).await?;
    let (mut bob, bob_id) = join_chat(&server).await?;
    let (mut mallory, mallory_id) = join_chat(&server).await?;
    assert_eq!(read_line(&mut bob).await?, format!("* {mallory_id} joined"));
    say(&mut bob, b"/nick bob\n").await?;
    assert_eq!(read_line(&mut bob).await?, "* you are now bob");
    assert_eq!(
        read_line(&mut mallory).await?,
        format!("* {bob_id} is now bob")
    );
    for (attempt, taken) in [("bob", "bob"), ("BOB", "BOB"), (&*bob_id.to_string(), "")] {
        say(&mut mallory, format!("/nick {attempt}\n").as_bytes()).await?;
        let refusal = read_line(&mut mallory).await?;
        assert!(
            refusal.starts_with("* the name") && refusal.contains("is taken"),
            "{attempt}: {refusal} {taken}"
        );
    }
    silent(&mut bob).await?;
    drop((bob, mallory));
    server.shutdown().await
}

async fn control_characters_never_reach_a_terminal_raw(chat: &str) -> anyhow::Result<()> {
    let server = TestServer::start(chat).await?;
    let (mut reader, _) = join_chat(&server).await?;
    let (mut writer, writer_id) = join_chat(&server).await?;
    read_line(&mut reader).await?; // the writer's join
    say(&mut writer, b"hi \x1b]0;pwned\x07 there\n").await?;
    let line = read_line(&mut reader).await?;
    assert!(
        !line.bytes().any(|b| b.is_ascii_control()),
        "raw control bytes relayed: {line:?}"
    );
    assert_eq!(
        line,
        format!("{writer_id}: hi \\u{{1b}}]0;pwned\\u{{7}} there")
    );
    // A tab is shown as `\t`, a C1 control escaped too, and bytes that are not UTF-8 become
    // U+FFFD (one for each broken sequence), in every language alike.
    say(&mut writer, b"a\tb \xc2\x9b c \xff\xe2\x82 d\n").await?;
    let line = read_line(&mut reader).await?;
    assert_eq!(
        line,
        format!("{writer_id}: a\\tb \\u{{9b}} c \u{fffd}\u{fffd} d")
    );
    server.shutdown().await
}

async fn an_overlong_command_is_refused_whole(chat: &str) -> anyhow::Result<()> {
    let server = TestServer::start(chat).await?;
    let (mut reader, _) = join_chat(&server).await?;
    let (mut writer, writer_id) = join_chat(&server).await?;
    read_line(&mut reader).await?; // the writer's join
    let mut command = b"/nick ".to_vec();
    command.extend(std::iter::repeat_n(b'a', 1 << 20));
    command.push(b'\n');
    say(&mut writer, &command).await?;
    let refusal = read_line(&mut writer).await?;
    assert!(
        refusal.contains("command") && refusal.contains("too long"),
        "{refusal}"
    );
    // None of it reached the room as chat text; the writer still chats.
    say(&mut writer, b"after\n").await?;
    assert_eq!(read_line(&mut reader).await?, format!("{writer_id}: after"));
    server.shutdown().await
}

/// Serve `plugin_name` with connections that hibernate after 100 ms of quiet.
async fn serve_sleepy(plugin_name: &str) -> anyhow::Result<TestServer> {
    let config = ServerConfig::builder()
        .name(plugin_name)
        .pool_size(4)
        .max_connections(64)
        .hibernate_after(Duration::from_millis(100))
        .shutdown_timeout(Duration::from_secs(5))
        .build()?;
    TestServer::start_with(Versions::new(plugin(plugin_name)), config).await
}

/// Wait until `count` connections sleep and no instance is alive.
async fn all_asleep(server: &TestServer, count: usize) -> anyhow::Result<()> {
    let stats = &server.stats;
    wait_for("every connection to hibernate", || {
        stats.asleep() == count && stats.live_instances() == 0
    })
    .await
}

async fn an_idle_echo_sleeps_and_wakes_to_echo(plugin: &str) -> anyhow::Result<()> {
    let server = serve_sleepy(plugin).await?;
    let mut client = server.connect().await?;
    ensure!(echo(&mut client, b"before a sleep").await? == b"before a sleep");
    all_asleep(&server, 1).await?;
    ensure!(echo(&mut client, b"after a sleep").await? == b"after a sleep");
    all_asleep(&server, 1).await?;
    client.shutdown().await?;
    ensure!(read_to_end(&mut client).await?.is_empty());
    ensure!(server.stats.faults() == 0);
    server.shutdown().await
}

async fn chat_members_sleep_and_wake_with_their_names(chat: &str) -> anyhow::Result<()> {
    let server = serve_sleepy(chat).await?;
    let (mut alice, alice_id) = join_chat(&server).await?;
    let (mut bob, bob_id) = join_chat(&server).await?;
    ensure!(read_line(&mut alice).await? == format!("* {bob_id} joined"));
    say(&mut bob, b"/nick bob\n").await?;
    ensure!(read_line(&mut bob).await? == "* you are now bob");
    ensure!(read_line(&mut alice).await? == format!("* {bob_id} is now bob"));
    all_asleep(&server, 2).await?;

    // A line wakes its sender; the broadcast wakes the receiver.
    say(&mut alice, b"hello while you slept\n").await?;
    ensure!(read_line(&mut bob).await? == format!("{alice_id}: hello while you slept"));
    all_asleep(&server, 2).await?;

    // Bob wakes with his name: `/who` is answered by an instance that resumed his state.
    say(&mut bob, b"/who\n").await?;
    let mut who = vec![read_line(&mut bob).await?, read_line(&mut bob).await?];
    who.sort();
    let mut expected = vec![
        format!("* {alice_id} {alice_id}"),
        format!("* {bob_id} bob (you)"),
    ];
    expected.sort();
    ensure!(who == expected, "{who:?}");
    // A line begun before a sleep and ended after it arrives whole, under the name.
    say(&mut bob, b"half a ").await?;
    all_asleep(&server, 2).await?;
    say(&mut bob, b"line\n").await?;
    ensure!(read_line(&mut alice).await? == "bob: half a line");
    ensure!(server.stats.faults() == 0);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thrown_javascript_exception_ends_only_its_connection_and_is_logged() -> anyhow::Result<()>
{
    support::captured_logs();
    let server = TestServer::start("thrower-js").await?;
    let mut bystander = server.connect().await?;
    let mut thrower = server.connect().await?;
    ensure!(echo(&mut bystander, b"before").await? == b"before");
    thrower.write_all(b"throw this\n").await?;
    // Closed without output: the instance trapped, so `close` is not called.
    ensure!(read_to_end(&mut thrower).await?.is_empty());
    ensure!(echo(&mut bystander, b"after").await? == b"after");
    support::wait_for("the exception's message in the log", || {
        !support::log_lines_with(&["thrown on request: throw this"]).is_empty()
    })
    .await?;
    ensure!(server.stats.faults() == 1);
    drop(bystander);
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_python_exception_ends_only_its_connection_and_is_logged() -> anyhow::Result<()> {
    support::captured_logs();
    let server = TestServer::start("raiser-py").await?;
    let mut bystander = server.connect().await?;
    let mut raiser = server.connect().await?;
    ensure!(echo(&mut bystander, b"before").await? == b"before");
    raiser.write_all(b"raise this\n").await?;
    // Closed without output: the instance trapped, so `close` is not called.
    ensure!(read_to_end(&mut raiser).await?.is_empty());
    ensure!(echo(&mut bystander, b"after").await? == b"after");
    support::wait_for("the exception's message in the log", || {
        !support::log_lines_with(&["raised on request: raise this"]).is_empty()
    })
    .await?;
    ensure!(server.stats.faults() == 1);
    drop(bystander);
    server.shutdown().await
}

/// A JavaScript or Python guest's memory starts with megabytes of data, mapped copy-on-write
/// from the compiled image on the runtime's second engine; a Rust or C guest's few kilobytes
/// are copied on the first (an image mapping per connection would cost it kernel memory maps
/// for no gain: BENCHMARKS.md, issue 14).
#[test]
fn each_language_runs_on_the_engine_its_memory_image_picks() {
    for (plugin, expected) in [
        ("echo", MemoryInit::Copy),
        ("chat-c", MemoryInit::Copy),
        ("echo-js", MemoryInit::CopyOnWrite),
        ("echo-py", MemoryInit::CopyOnWrite),
    ] {
        let load = support::plugin(plugin).load_report();
        assert_eq!(load.memory_init, expected, "{plugin}");
        let large = load.image_bytes >= 1 << 20;
        assert_eq!(
            large,
            expected == MemoryInit::CopyOnWrite,
            "{plugin}: {} bytes of data",
            load.image_bytes
        );
    }
}
