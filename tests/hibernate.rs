//! Hibernation (`hibernate_after`): a connection idle that long, whose plugin exports
//! `handoff`, keeps only its snapshot and gives its instance back; its next byte or message
//! wakes it on the listener's current version, in order and exactly once. A plugin without
//! `handoff` never sleeps. Shutdown and the idle timeout wake a sleeper for its `close`.
//! (The echo and chat of every guest language sleep and wake in tests/languages.rs.)

mod support;

use std::time::Duration;

use anyhow::ensure;
use shoal_host::{EndKind, Plugin, Runtime, RuntimeConfig, ServerConfig, Versions};
use support::{ChatClient, TestServer, captured_logs, join_chat, plugin, read_line, wait_for};
use tokio::io::{AsyncWriteExt, BufReader};

fn sleepy(name: &str, after: Duration) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig::builder()
        .name(name)
        .pool_size(4)
        .max_connections(64)
        .hibernate_after(after)
        .shutdown_timeout(Duration::from_secs(5))
        .build()?)
}

async fn serve(plugin: Plugin, config: ServerConfig) -> anyhow::Result<TestServer> {
    captured_logs();
    TestServer::start_with(Versions::new(plugin), config).await
}

async fn say(client: &mut ChatClient, line: &str) -> anyhow::Result<()> {
    client.get_mut().write_all(line.as_bytes()).await?;
    Ok(())
}

/// Connect to a greeter: the client, with its greeting read, and its connection id.
async fn greeted(server: &TestServer) -> anyhow::Result<(ChatClient, String)> {
    let mut client = BufReader::new(server.connect().await?);
    let id = support::greeted_id(&read_line(&mut client).await?)?;
    Ok((client, id))
}

/// Wait until `count` connections sleep and no instance is alive.
async fn all_asleep(server: &TestServer, count: usize) -> anyhow::Result<()> {
    let stats = &server.stats;
    wait_for("every connection to hibernate", || {
        stats.asleep() == count && stats.live_instances() == 0
    })
    .await
}

#[tokio::test]
async fn a_plugin_without_handoff_never_hibernates() -> anyhow::Result<()> {
    let config = sleepy("echo", Duration::from_millis(20))?;
    let server = serve(plugin("echo"), config).await?;
    let mut client = BufReader::new(server.connect().await?);
    client.get_mut().write_all(b"ping\n").await?;
    ensure!(read_line(&mut client).await? == "ping");
    tokio::time::sleep(Duration::from_millis(200)).await;
    ensure!(server.stats.asleep() == 0);
    ensure!(server.stats.live_instances() == 1);
    client.get_mut().write_all(b"still here\n").await?;
    ensure!(read_line(&mut client).await? == "still here");
    server.shutdown().await
}

/// The greeter says `moved <id>` in its `resume`: each wake shows on the wire.
#[tokio::test]
async fn shutdown_wakes_a_sleeper_for_its_close() -> anyhow::Result<()> {
    let config = sleepy("greeter", Duration::from_millis(50))?;
    let mut server = serve(plugin("greeter"), config).await?;
    let (mut client, id) = greeted(&server).await?;
    all_asleep(&server, 1).await?;
    server.begin_shutdown();
    ensure!(read_line(&mut client).await? == format!("moved {id}"));
    ensure!(read_line(&mut client).await? == "bye (shutdown)");
    server.shutdown().await
}

#[tokio::test]
async fn the_idle_timeout_wakes_a_sleeper_for_its_close() -> anyhow::Result<()> {
    let config = ServerConfig::builder()
        .name("greeter")
        .max_connections(8)
        .hibernate_after(Duration::from_millis(50))
        .idle_timeout(Duration::from_millis(400))
        .build()?;
    let server = serve(plugin("greeter"), config).await?;
    let mut client = BufReader::new(server.connect().await?);
    read_line(&mut client).await?;
    all_asleep(&server, 1).await?;
    let moved = read_line(&mut client).await?;
    ensure!(moved.starts_with("moved "), "{moved}");
    ensure!(read_line(&mut client).await? == "bye (idle-timeout)");
    ensure!(server.stats.limit_hits(shoal_host::Limit::Idle) == 1);
    server.shutdown().await
}

/// A client that keeps sending while its connection goes to sleep and wakes loses nothing:
/// every line comes back once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_while_falling_asleep_loses_nothing() -> anyhow::Result<()> {
    let config = sleepy("greeter", Duration::from_millis(1))?;
    let server = serve(plugin("greeter"), config).await?;
    let mut wakes = 0;
    for round in 0..5u64 {
        let (mut client, id) = greeted(&server).await?;
        let lines = 100u64;
        let writer = async {
            let mut seed = round;
            for line in 0..lines {
                client
                    .get_mut()
                    .write_all(format!("{line}\n").as_bytes())
                    .await?;
                // 0–3 ms apart: some lines meet an awake instance, some a sleeping one,
                // some one falling asleep.
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                tokio::time::sleep(Duration::from_micros((seed >> 33) % 3_000)).await;
            }
            anyhow::Ok(())
        };
        writer.await?;
        let mut next = 0;
        while next < lines {
            let line = read_line(&mut client).await?;
            if line.starts_with("moved ") {
                wakes += 1;
                continue;
            }
            ensure!(line == format!("{id}: {next}"), "round {round}: {line:?}");
            next += 1;
        }
    }
    ensure!(wakes > 0, "the connections never slept");
    ensure!(server.stats.faults() == 0);
    server.shutdown().await
}

/// With every instance of the pool taken, a waking connection waits for one (up to the call
/// timeout) rather than losing its input; past the call timeout it ends, counted.
#[tokio::test]
async fn a_waking_connection_waits_for_a_free_instance() -> anyhow::Result<()> {
    let runtime = Runtime::new(RuntimeConfig::builder().max_instances(1).build()?)?;
    let greeter = Plugin::from_file(&runtime, support::plugin_path("greeter"))?;
    let config = ServerConfig::builder()
        .name("greeter")
        .max_connections(8)
        .hibernate_after(Duration::from_millis(50))
        .call_timeout(Duration::from_millis(1500))
        .build()?;
    let server = serve(greeter, config).await?;
    let (mut sleeper, id) = greeted(&server).await?;
    all_asleep(&server, 1).await?;
    // Another connection takes the only instance and keeps it busy (it never sleeps: its
    // client keeps talking faster than hibernate_after).
    let mut busy = BufReader::new(server.connect().await?);
    read_line(&mut busy).await?;
    sleeper.get_mut().write_all(b"wake up\n").await?;
    for _ in 0..10 {
        busy.get_mut().write_all(b"busy\n").await?;
        read_line(&mut busy).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The busy one leaves: the sleeper gets its instance and its line.
    drop(busy);
    ensure!(read_line(&mut sleeper).await? == format!("moved {id}"));
    ensure!(read_line(&mut sleeper).await? == format!("{id}: wake up"));

    // Now the sleeper holds the instance past the other's call timeout.
    all_asleep(&server, 1).await?;
    let mut holder = BufReader::new(server.connect().await?);
    read_line(&mut holder).await?;
    sleeper.get_mut().write_all(b"again\n").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while server.stats.ended(EndKind::NoInstance) == 0 && tokio::time::Instant::now() < deadline {
        holder.get_mut().write_all(b"mine\n").await?;
        read_line(&mut holder).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(server.stats.ended(EndKind::NoInstance) == 1);
    server.shutdown().await
}

/// `max_instances` below `max_connections`: the listener holds more connections than it
/// has instances, each woken in turn.
#[tokio::test]
async fn a_listener_holds_more_connections_than_instances() -> anyhow::Result<()> {
    let config = ServerConfig::builder()
        .name("greeter")
        .max_connections(8)
        .max_instances(2)
        .hibernate_after(Duration::from_millis(30))
        .build()?;
    let server = serve(plugin("greeter"), config).await?;
    let mut clients = Vec::new();
    for count in 1..=6 {
        let (client, id) = greeted(&server).await?;
        all_asleep(&server, count).await?;
        clients.push((client, id));
    }
    ensure!(server.stats.live_connections() == 6);
    for (client, id) in &mut clients {
        client.get_mut().write_all(b"awake?\n").await?;
        ensure!(read_line(client).await? == format!("moved {id}"));
        ensure!(read_line(client).await? == format!("{id}: awake?"));
        ensure!(server.stats.live_instances() <= 2);
    }
    ensure!(server.stats.faults() == 0);
    server.shutdown().await
}

/// The picture: 2,000 chat members on a listener with 200 instances. They join in
/// batches (each join's notice wakes the sleeping members, 200 at a time), all fall asleep,
/// and then a member's three lines reach the 1,999 others exactly once and in order; members
/// answer `/who` with the whole room, and everyone sleeps again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_members_sleep_on_two_hundred_instances() -> anyhow::Result<()> {
    const MEMBERS: usize = 2_000;
    const BATCH: usize = 100;
    let config = ServerConfig::builder()
        .name("chat")
        .pool_size(4)
        .max_connections(MEMBERS + 10)
        .max_instances(200)
        .hibernate_after(Duration::from_millis(200))
        .idle_timeout(Duration::from_secs(600))
        .call_timeout(Duration::from_secs(20))
        .shutdown_timeout(Duration::from_secs(20))
        .build()?;
    let server = serve(plugin("chat"), config).await?;
    let mut members: Vec<(ChatClient, u64)> = Vec::with_capacity(MEMBERS);
    while members.len() < MEMBERS {
        // A batch joins at once: their notices wake the sleeping members, who take the 200
        // instances in turn with the newcomers.
        let mut joining = tokio::task::JoinSet::new();
        for _ in 0..BATCH {
            let addr = server.addr;
            joining.spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                support::join_stream(stream).await
            });
        }
        while let Some(joined) = joining.join_next().await {
            members.push(joined??);
        }
        let joined = members.len();
        let stats = &server.stats;
        wait_long("the members so far to sleep", || {
            stats.asleep() == joined && stats.live_instances() == 0
        })
        .await?;
    }
    ensure!(server.stats.live_connections() == MEMBERS);
    // Each sleeper keeps its chat snapshot: 4 bytes and its name (its id, 4 digits here).
    let kept = server.stats.asleep_bytes();
    ensure!(
        (4 * MEMBERS..=40 * MEMBERS).contains(&kept),
        "{kept} bytes kept"
    );

    let (mut speaker, speaker_id) = members.remove(0);
    for line in ["one", "two", "three"] {
        say(&mut speaker, &format!("{line}\n")).await?;
    }
    // Every other member reads past the later join notices to the three lines, in order.
    let mut readers = tokio::task::JoinSet::new();
    for (mut member, id) in members {
        readers.spawn(async move {
            let mut expected = ["one", "two", "three"].into_iter().peekable();
            while let Some(line) = expected.peek().copied() {
                let got = read_line(&mut member).await?;
                if got.starts_with("* ") {
                    continue;
                }
                ensure!(got == format!("{speaker_id}: {line}"), "{id} read {got:?}");
                expected.next();
            }
            anyhow::Ok((member, id))
        });
    }
    let mut members = Vec::with_capacity(MEMBERS);
    while let Some(member) = readers.join_next().await {
        members.push(member??);
    }
    // Nothing more arrives: no line twice.
    for (member, _) in members.iter_mut().take(50) {
        let more = tokio::time::timeout(Duration::from_millis(20), read_line(member)).await;
        ensure!(more.is_err(), "more after the three lines: {more:?}");
    }
    // A few members, woken by `/who`, list the whole room.
    for (member, id) in members.iter_mut().take(3) {
        say(member, "/who\n").await?;
        let mut listed = 0;
        let mut me = false;
        while listed < MEMBERS {
            let line = read_line(member).await?;
            ensure!(line.starts_with("* "), "{line}");
            me |= line == format!("* {id} {id} (you)");
            listed += 1;
        }
        ensure!(me, "{id} is not in its own /who");
    }
    let stats = &server.stats;
    wait_long("everyone to sleep again", || {
        stats.asleep() == MEMBERS && stats.live_instances() == 0
    })
    .await?;
    ensure!(server.stats.faults() == 0);
    drop(speaker);
    drop(members);
    server.shutdown().await
}

/// As [`wait_for`], for at most 60 s: waking 2,000 members 200 at a time takes a while.
async fn wait_long(what: &str, mut condition: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !condition() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A room of sleepers is best left quiet: with `announce = "off"` granted, the chat tells
/// nobody of joins and leaves (each notice would wake every member), and a member's line
/// still reaches the others.
#[tokio::test]
async fn a_quiet_room_wakes_nobody_on_joins() -> anyhow::Result<()> {
    let config = ServerConfig::builder()
        .name("chat")
        .max_connections(16)
        .hibernate_after(Duration::from_millis(50))
        .capabilities(shoal_host::Capabilities::default().config("announce", "off"))
        .build()?;
    let server = serve(plugin("chat"), config).await?;
    let (mut first, first_id) = join_chat(&server).await?;
    all_asleep(&server, 1).await?;
    let (mut second, _) = join_chat(&server).await?;
    // The join woke nobody: the first member still sleeps, with nothing to read.
    ensure!(server.stats.asleep() == 1);
    say(&mut first, "anyone?\n").await?;
    ensure!(read_line(&mut second).await? == format!("{first_id}: anyone?"));
    drop(second);
    all_asleep(&server, 1).await?;
    say(&mut first, "still quiet\n").await?;
    let quiet = tokio::time::timeout(Duration::from_millis(200), read_line(&mut first)).await;
    ensure!(quiet.is_err(), "a leave was announced: {quiet:?}");
    server.shutdown().await
}

/// At shutdown a sleeper is woken for its `close` only until the deadline. Here the
/// listener's only instance is held by a connection whose client reads nothing (its write
/// waits), so the sleeper's wake waits for the instance until the deadline: it is closed
/// without its `close`, and counted, as is the writer the deadline cuts short.
#[tokio::test]
async fn a_sleeper_the_shutdown_deadline_leaves_asleep_is_closed_and_counted() -> anyhow::Result<()>
{
    let config = ServerConfig::builder()
        .name("greeter")
        .max_connections(8)
        .max_instances(1)
        .hibernate_after(Duration::from_millis(50))
        .output_buffer_limit(8_000_000)
        .cpu_budget_per_call(Duration::from_secs(5))
        .write_timeout(Duration::from_secs(60))
        .call_timeout(Duration::from_secs(60))
        .shutdown_timeout(Duration::from_millis(300))
        .build()?;
    let mut server = serve(plugin("greeter"), config).await?;
    let (mut sleeper, _) = greeted(&server).await?;
    all_asleep(&server, 1).await?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(64 << 10)?;
    let mut writer = socket.connect(server.addr).await?;
    writer.write_all(b"flood\n").await?;
    let stats = std::sync::Arc::clone(&server.stats);
    wait_for("the writer to hold the instance", || {
        stats.live_instances() == 1 && stats.asleep() == 1
    })
    .await?;

    let server_address = server.addr;
    server.begin_shutdown();
    let heard = support::read_to_end(sleeper.get_mut()).await?;
    ensure!(heard.is_empty(), "the sleeper heard {heard:?}");
    server.shutdown().await?;
    ensure!(stats.ended(EndKind::ShutdownDeadline) == 2);
    ensure!(stats.ended(EndKind::Shutdown) == 0);
    ensure!(stats.asleep() == 0 && stats.asleep_bytes() == 0);
    let address = server_address.to_string();
    let said = support::log_lines_with(&[
        " 2 connections closed at the shutdown deadline without their `close(shutdown)`",
        &address,
    ]);
    ensure!(said.len() == 1, "{said:#?}");
    drop(writer);
    Ok(())
}

/// With no time at all to shut down (`shutdown_timeout = 0`), no sleeper is woken: each is
/// closed at once, without its `close`, and counted.
#[tokio::test]
async fn with_no_shutdown_time_sleepers_close_unwoken() -> anyhow::Result<()> {
    let config = ServerConfig::builder()
        .name("greeter")
        .max_connections(64)
        .hibernate_after(Duration::from_millis(20))
        .shutdown_timeout(Duration::ZERO)
        .build()?;
    let mut server = serve(plugin("greeter"), config).await?;
    let mut sleepers = Vec::new();
    for _ in 0..20 {
        sleepers.push(greeted(&server).await?.0);
    }
    all_asleep(&server, 20).await?;
    server.begin_shutdown();
    for sleeper in &mut sleepers {
        let heard = support::read_to_end(sleeper.get_mut()).await?;
        ensure!(heard.is_empty(), "a sleeper heard {heard:?}");
    }
    let stats = std::sync::Arc::clone(&server.stats);
    server.shutdown().await?;
    ensure!(stats.ended(EndKind::ShutdownDeadline) == 20);
    ensure!(stats.live_instances() == 0 && stats.asleep() == 0);
    Ok(())
}

/// A state larger than `hibernate_state_limit` keeps its connection awake (counted, and
/// said once); once the state is small again, the connection sleeps after another quiet
/// spell. Here the chat's state is a member's half-typed line.
#[tokio::test]
async fn a_state_over_the_limit_keeps_its_connection_awake() -> anyhow::Result<()> {
    let config = ServerConfig::builder()
        .name("chat")
        .max_connections(8)
        .hibernate_after(Duration::from_millis(30))
        .hibernate_state_limit(100)
        .build()?;
    let server = serve(plugin("chat"), config).await?;
    let (mut member, id) = join_chat(&server).await?;
    all_asleep(&server, 1).await?;
    let long = "x".repeat(300);
    say(&mut member, &long).await?;
    let stats = std::sync::Arc::clone(&server.stats);
    wait_for("the member to be kept awake twice", || {
        stats.kept_awake() >= 2
    })
    .await?;
    ensure!(stats.asleep() == 0 && stats.live_instances() == 1);
    let said = support::log_lines_with(&["a connection stays awake", "hibernate_state_limit"]);
    ensure!(said.len() == 1, "{said:#?}");

    // The line ends: nothing half-typed is left, and the member sleeps again.
    say(&mut member, "\n").await?;
    all_asleep(&server, 1).await?;
    ensure!(stats.asleep_bytes() <= 100);
    say(&mut member, "/who\n").await?;
    ensure!(read_line(&mut member).await? == format!("* {id} {id} (you)"));
    ensure!(stats.faults() == 0);
    server.shutdown().await
}

/// A sleeper whose listener keeps every instance it may have (`max_instances`) awake past
/// the call timeout ends on that limit, counted as one; its line is not lost silently: the
/// connection closes.
#[tokio::test]
async fn waking_past_the_call_timeout_is_a_limit_of_the_listener() -> anyhow::Result<()> {
    let config = ServerConfig::builder()
        .name("greeter")
        .max_connections(8)
        .max_instances(1)
        .hibernate_after(Duration::from_millis(50))
        .call_timeout(Duration::from_millis(300))
        .build()?;
    let server = serve(plugin("greeter"), config).await?;
    let (mut sleeper, _) = greeted(&server).await?;
    all_asleep(&server, 1).await?;
    let (mut holder, holder_id) = greeted(&server).await?;
    sleeper.get_mut().write_all(b"let me in\n").await?;
    let stats = std::sync::Arc::clone(&server.stats);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while stats.limit_hits(shoal_host::Limit::Instances) == 0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the sleeper never gave up"
        );
        holder.get_mut().write_all(b"mine\n").await?;
        ensure!(read_line(&mut holder).await? == format!("{holder_id}: mine"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(support::read_to_end(sleeper.get_mut()).await?.is_empty());
    ensure!(stats.ended(EndKind::NoInstance) == 0);
    let said = support::log_lines_with(&["its listener has max_instances (1) awake"]);
    ensure!(!said.is_empty(), "the log names the limit");
    server.shutdown().await
}
