//! Live state handoff: a connection of a replaced plugin version moves to the new version
//! with its state (the `handoff` export), keeping its socket, id, mailbox and name; one that
//! cannot move stays on its version until the drain deadline gives it `close(upgrade)`; and a
//! plugin built against `shoal:plugin@0.1.0` still serves, told `shutdown` instead.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use shoal_host::{EndKind, HandoffPolicy, ServerConfig, Versions};
use support::{
    ChatClient, TestServer, captured_logs, join_chat, log_lines_with, plugin, read_line,
    read_to_end, wait_for,
};
use tokio::io::{AsyncWriteExt, BufReader};

/// Settings of a test listener `name`.
fn settings(name: &str, handoff: HandoffPolicy) -> shoal_host::ServerConfigBuilder {
    ServerConfig::builder()
        .name(name)
        .pool_size(4)
        .max_connections(64)
        .handoff(handoff)
        .shutdown_timeout(Duration::from_secs(5))
}

/// Serve `plugin_name` as the first version of a listener with `config`.
async fn serve(plugin_name: &str, config: &ServerConfig) -> anyhow::Result<(TestServer, Versions)> {
    captured_logs();
    let versions = Versions::new(plugin(plugin_name));
    let server = TestServer::start_with(versions.clone(), config.clone()).await?;
    Ok((server, versions))
}

/// The listener's versions as (number, live connections).
fn live(versions: &Versions) -> Vec<(u64, usize)> {
    versions
        .list()
        .iter()
        .map(|version| (version.number, version.live_connections))
        .collect()
}

/// Read lines until one satisfies `wanted` (chat notices of others come and go meanwhile).
async fn read_until(
    client: &mut ChatClient,
    wanted: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    loop {
        let line = read_line(client).await?;
        if wanted(&line) {
            return Ok(line);
        }
    }
}

/// Ask a chat member which plugin serves it.
async fn version_of(client: &mut ChatClient) -> anyhow::Result<String> {
    client.get_mut().write_all(b"/version\n").await?;
    read_until(client, |line| line.starts_with("* chat")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_chat_members_keep_their_names_and_lines_through_a_swap() -> anyhow::Result<()> {
    let config = settings("room", HandoffPolicy::Immediate).build()?;
    let (server, versions) = serve("chat", &config).await?;
    let mut members = Vec::new();
    for i in 0..10 {
        let (mut client, id) = join_chat(&server).await?;
        client
            .get_mut()
            .write_all(format!("/nick user{i}\n").as_bytes())
            .await?;
        let me = format!("* you are now user{i}");
        read_until(&mut client, |line| line == me).await?;
        members.push((client, id));
    }
    // A partial line before the swap, its end after: the new version must know the start.
    members[1].0.get_mut().write_all(b"half a ").await?;

    // user0 talks all through the swap.
    let (mut talker, _) = members.remove(0);
    let talking = tokio::spawn(async move {
        for k in 0..300 {
            talker
                .get_mut()
                .write_all(format!("line {k}\n").as_bytes())
                .await?;
            if k % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        anyhow::Ok(talker)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let current = versions.swap(plugin("chat-v2"), &config).await?;
    ensure!(current.number == 2, "{current:?}");
    let mut talker = talking.await??;
    wait_for("every member to move to version 2", || {
        live(&versions) == vec![(2, 10)]
    })
    .await
    .with_context(|| format!("versions: {:?}", live(&versions)))?;
    members[0].0.get_mut().write_all(b"sentence\n").await?;

    for (i, (client, _)) in members.iter_mut().enumerate() {
        // Every line user0 sent, once each, in order, whichever version relayed it; and
        // user1's line, begun before the move and ended after it (user1 does not hear it).
        let mut heard = Vec::new();
        let mut sentence = i == 0;
        while heard.len() < 300 || !sentence {
            let line = read_until(client, |line| {
                line.starts_with("user0: ") || line.starts_with("user1: ")
            })
            .await?;
            if line.starts_with("user0: ") {
                heard.push(line);
            } else {
                ensure!(line == "user1: half a sentence" && !sentence, "{line:?}");
                sentence = true;
            }
        }
        let expected: Vec<String> = (0..300).map(|k| format!("user0: line {k}")).collect();
        ensure!(heard == expected, "lines lost, doubled or reordered");
    }
    for (i, (client, id)) in members.iter_mut().enumerate() {
        ensure!(version_of(client).await? == "* chat-v2", "moved to chat-v2");
        client.get_mut().write_all(b"/who\n").await?;
        let mut who = Vec::new();
        while who.len() < 10 {
            let line = read_until(client, |line| {
                line.starts_with("* ") && line.contains("user")
            })
            .await?;
            if line.contains(" is now ") || line.contains(" left") {
                continue;
            }
            who.push(line);
        }
        let me = format!("* {id} user{} (you)", i + 1);
        ensure!(who.contains(&me), "{me:?} in {who:?}");
        for n in 0..10 {
            ensure!(
                who.iter().any(|line| line.ends_with(&format!(" user{n}"))
                    || line.ends_with(&format!(" user{n} (you)"))),
                "user{n} listed in {who:?}"
            );
        }
    }
    ensure!(version_of(&mut talker).await? == "* chat-v2");
    ensure!(
        server.stats.ended(EndKind::Upgrade) == 0,
        "nobody was closed"
    );
    ensure!(server.stats.faults() == 0, "no fault");
    server.shutdown().await
}

/// The chats of every language lay their state out alike: a room swapped from Rust to
/// JavaScript to Python to C and back keeps its members, their names, and a line begun
/// before the first move and ended after the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_in_any_language_takes_over_from_any_other() -> anyhow::Result<()> {
    let config = settings("polyglot-room", HandoffPolicy::Immediate).build()?;
    let (server, versions) = serve("chat", &config).await?;
    let (mut alice, alice_id) = join_chat(&server).await?;
    let (mut bob, bob_id) = join_chat(&server).await?;
    bob.get_mut().write_all(b"/nick bob\n").await?;
    read_until(&mut bob, |line| line == "* you are now bob").await?;
    read_until(&mut alice, |line| line.ends_with(" is now bob")).await?;
    // Carol's line begins before the first move and ends after the last.
    let (mut carol, carol_id) = join_chat(&server).await?;
    carol.get_mut().write_all(b"half a ").await?;
    for (number, next) in [(2, "chat-js"), (3, "chat-py"), (4, "chat-c"), (5, "chat")] {
        versions.swap(plugin(next), &config).await?;
        wait_for(&format!("every member to move to {next}"), || {
            live(&versions) == vec![(number, 3)]
        })
        .await
        .with_context(|| format!("versions: {:?}", live(&versions)))?;
        ensure!(version_of(&mut bob).await? == format!("* {next}"));
        bob.get_mut().write_all(b"/who\n").await?;
        let mut who = Vec::new();
        while who.len() < 3 {
            who.push(read_until(&mut bob, |line| line.starts_with("* ")).await?);
        }
        who.sort();
        let mut expected = vec![
            format!("* {alice_id} {alice_id}"),
            format!("* {bob_id} bob (you)"),
            format!("* {carol_id} {carol_id}"),
        ];
        expected.sort();
        ensure!(who == expected, "on {next}: {who:?}");
    }
    carol.get_mut().write_all(b"sentence\n").await?;
    let said = format!("{carol_id}: ");
    let heard = read_until(&mut alice, |line| line.starts_with(&said)).await?;
    ensure!(heard == format!("{said}half a sentence"), "{heard:?}");
    ensure!(server.stats.faults() == 0);
    server.shutdown().await
}

/// A chat of every language refuses a state it cannot read (an echo's, which is empty)
/// with its reason, and the connection stays on its version, served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_in_any_language_refuses_a_state_it_cannot_read() -> anyhow::Result<()> {
    for (echo, chat, reason) in [
        ("echo-c", "chat", "a chat snapshot of 0 bytes is too short"),
        ("echo-c", "chat-c", "a chat snapshot is too short"),
        (
            "echo-js",
            "chat-js",
            "a chat snapshot of 0 bytes is too short",
        ),
        (
            "echo-py",
            "chat-py",
            "a chat snapshot of 0 bytes is too short",
        ),
    ] {
        let config = settings(&format!("refusal-{chat}"), HandoffPolicy::Immediate).build()?;
        let (server, versions) = serve(echo, &config).await?;
        let mut client = BufReader::new(server.connect().await?);
        client.get_mut().write_all(b"ping\n").await?;
        ensure!(read_line(&mut client).await? == "ping");
        // Counted, since another language's chat may have logged the same words before.
        let refusals = || log_lines_with(&[reason, "stays on version 1"]).len();
        let before = refusals();
        versions.swap(plugin(chat), &config).await?;
        wait_for(&format!("{chat}'s refusal in the log"), || {
            refusals() > before
        })
        .await?;
        client.get_mut().write_all(b"still echoed\n").await?;
        ensure!(read_line(&mut client).await? == "still echoed", "{chat}");
        ensure!(live(&versions) == vec![(1, 1), (2, 0)], "{chat}");
        ensure!(server.stats.faults() == 0, "{chat}: a refusal is no fault");
        drop(client);
        server.shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_drain_deadline_a_chat_member_moves_instead_of_closing() -> anyhow::Result<()> {
    let config = settings("room", HandoffPolicy::AtDrain)
        .drain_timeout(Duration::from_millis(400))
        .build()?;
    let (server, versions) = serve("chat", &config).await?;
    let (mut alice, _) = join_chat(&server).await?;
    let (mut bob, _) = join_chat(&server).await?;
    versions.swap(plugin("chat-v2"), &config).await?;
    ensure!(
        version_of(&mut alice).await? == "* chat",
        "until the deadline"
    );
    wait_for("both members to move", || live(&versions) == vec![(2, 2)]).await?;
    ensure!(version_of(&mut alice).await? == "* chat-v2");
    alice.get_mut().write_all(b"still here\n").await?;
    let heard = read_until(&mut bob, |line| line.ends_with(": still here")).await?;
    ensure!(heard.ends_with(": still here"), "{heard}");
    ensure!(server.stats.ended(EndKind::Upgrade) == 0);
    server.shutdown().await
}

/// Connect to a greeter and read its greeting.
async fn greeted(server: &TestServer) -> anyhow::Result<(ChatClient, u64)> {
    let mut client = BufReader::new(server.connect().await?);
    let greeting = read_line(&mut client).await?;
    let id = greeting
        .strip_prefix("hello ")
        .and_then(|rest| rest.split(' ').next())
        .with_context(|| format!("greeting {greeting:?}"))?
        .parse()?;
    Ok((client, id))
}

/// A greeter listener (`plugins/greeter`, whose behaviour in a handoff its listener's name
/// chooses) and one client it greeted.
struct Greeter {
    server: TestServer,
    versions: Versions,
    config: ServerConfig,
    client: ChatClient,
    id: u64,
}

impl Greeter {
    async fn start(
        listener: &str,
        handoff: HandoffPolicy,
        drain: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let mut settings = settings(listener, handoff);
        if let Some(drain) = drain {
            settings = settings.drain_timeout(drain);
        }
        let config = settings.build()?;
        let (server, versions) = serve("greeter", &config).await?;
        let (client, id) = greeted(&server).await?;
        Ok(Self {
            server,
            versions,
            config,
            client,
            id,
        })
    }

    /// A new version of the greeter (the same build) becomes current.
    async fn swap(&self) -> anyhow::Result<()> {
        self.versions.swap(plugin("greeter"), &self.config).await?;
        Ok(())
    }
}

/// Read `client` to its end, which must be `last`.
async fn ends_with(client: &mut ChatClient, last: &[u8]) -> anyhow::Result<()> {
    let rest = read_to_end(client).await?;
    ensure!(rest == last, "{:?}", String::from_utf8_lossy(&rest));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_connection_keeps_its_partial_line_and_its_output_order() -> anyhow::Result<()> {
    let mut g = Greeter::start("greeter", HandoffPolicy::Immediate, None).await?;
    g.client.get_mut().write_all(b"hel").await?;
    // Give the old version the bytes before the swap.
    tokio::time::sleep(Duration::from_millis(50)).await;
    g.swap().await?;
    ensure!(read_line(&mut g.client).await? == format!("moved {}", g.id));
    g.client.get_mut().write_all(b"lo\n").await?;
    ensure!(read_line(&mut g.client).await? == format!("{}: hello", g.id));
    ensure!(live(&g.versions) == vec![(2, 1)]);
    g.server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handoff_stays_on_its_version_until_the_drain_deadline() -> anyhow::Result<()> {
    let drain = Some(Duration::from_millis(800));
    let mut g = Greeter::start("refuse-handoff", HandoffPolicy::Immediate, drain).await?;
    g.swap().await?;
    wait_for("the refusal to be logged", || {
        !log_lines_with(&["refused its state on request", "stays on version 1"]).is_empty()
    })
    .await?;
    g.client.get_mut().write_all(b"ping\n").await?;
    let answer = read_line(&mut g.client).await?;
    ensure!(
        answer == format!("{}: ping", g.id),
        "still served: {answer}"
    );
    let versions = live(&g.versions);
    ensure!(versions == vec![(1, 1), (2, 0)], "{versions:?}");
    ends_with(&mut g.client, b"bye (upgrade)\n").await?;
    ensure!(g.server.stats.ended(EndKind::Upgrade) == 1);
    g.server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_traps_ends_only_its_connection() -> anyhow::Result<()> {
    let mut g = Greeter::start("trap-snapshot", HandoffPolicy::Immediate, None).await?;
    g.swap().await?;
    // Closed without `close` (a faulted instance is not entered again): no goodbye.
    ends_with(&mut g.client, b"").await?;
    ensure!(g.server.stats.faults() == 1);
    let (mut fresh, id) = greeted(&g.server).await?;
    fresh.get_mut().write_all(b"ok\n").await?;
    ensure!(read_line(&mut fresh).await? == format!("{id}: ok"));
    ensure!(
        !log_lines_with(&["`snapshot` failed"]).is_empty(),
        "the fault is logged with the export"
    );
    g.server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_of_the_0_1_0_world_serves_and_is_told_shutdown_when_drained() -> anyhow::Result<()>
{
    let config = settings("legacy", HandoffPolicy::AtDrain)
        .drain_timeout(Duration::from_millis(300))
        .build()?;
    let (server, versions) = serve("legacy-greeter", &config).await?;
    let mut client = BufReader::new(server.connect().await?);
    ensure!(read_line(&mut client).await? == "hello from 0.1.0");
    // Its imports (here the mailbox) are linked to the host's functions.
    client.get_mut().write_all(b"peers\n").await?;
    ensure!(read_line(&mut client).await? == "1 peers");
    versions.swap(plugin("greeter"), &config).await?;
    ends_with(&mut client, b"bye (shutdown)\n").await?;
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_handoff_never_the_drain_deadline_closes_even_a_plugin_that_could_move()
-> anyhow::Result<()> {
    let drain = Some(Duration::from_millis(300));
    let mut g = Greeter::start("greeter", HandoffPolicy::Never, drain).await?;
    g.swap().await?;
    ends_with(&mut g.client, b"bye (upgrade)\n").await?;
    ensure!(g.server.stats.ended(EndKind::Upgrade) == 1);
    g.server.shutdown().await
}
