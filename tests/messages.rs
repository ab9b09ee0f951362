//! Messages between connections through real sockets: the chat plugin (joins, lines, leaves,
//! `/nick`, `/who`), delivery order and exactly-once, a client that never reads, errors for
//! gone receivers, a guest trapping mid-broadcast, listeners kept apart, and the embedder's
//! `on_open` / `on_close` hooks.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use shoal_host::{ConnectionHandle, MessageError, Server, ServerConfig};
use support::{
    ChatClient, TestServer, join_chat, plugin, read_line, read_to_end, rss_kib, wait_for,
};
use tokio::io::{AsyncWriteExt, BufReader};

type Client = ChatClient;

async fn say(client: &mut Client, line: &str) -> anyhow::Result<()> {
    client
        .get_mut()
        .write_all(format!("{line}\n").as_bytes())
        .await?;
    Ok(())
}

fn config(name: &str) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig::builder()
        .name(name)
        .pool_size(2)
        .shutdown_timeout(Duration::from_secs(5))
        .build()?)
}

#[tokio::test]
async fn twenty_clients_every_line_reaches_the_nineteen_others_once_in_order() -> anyhow::Result<()>
{
    const CLIENTS: usize = 20;
    const LINES: usize = 25;
    let server = TestServer::start("chat").await?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        // Reading the welcome means `init` ran, so its join notice is already queued.
        clients.push(join_chat(&server).await?);
    }
    let ids: Vec<u64> = clients.iter().map(|(_, id)| *id).collect();
    let mut tasks = Vec::new();
    for (index, (mut client, id)) in clients.into_iter().enumerate() {
        let later = ids[index + 1..].to_vec();
        tasks.push(tokio::spawn(async move {
            for joined in later {
                ensure!(read_line(&mut client).await? == format!("* {joined} joined"));
            }
            for n in 0..LINES {
                say(&mut client, &format!("line {n} from {id}")).await?;
            }
            // Every other client's lines, each sender's in the order sent.
            let mut next_from: HashMap<u64, usize> = HashMap::new();
            for _ in 0..(CLIENTS - 1) * LINES {
                let line = read_line(&mut client).await?;
                let (sender, text) = line.split_once(": ").context("a chat line")?;
                let sender: u64 = sender.parse()?;
                ensure!(sender != id, "{id} got its own line back: {line}");
                let expected = next_from.entry(sender).or_default();
                ensure!(
                    text == format!("line {expected} from {sender}"),
                    "{id} got {line:?}, expected line {expected} from {sender}"
                );
                *expected += 1;
            }
            ensure!(next_from.len() == CLIENTS - 1);
            ensure!(next_from.values().all(|count| *count == LINES));
            anyhow::Ok(client)
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await??);
    }
    // Nothing more (no duplicates) until someone leaves: the last leaves, the first hears.
    let last = clients.pop().context("clients")?;
    drop(last);
    let leaver = ids[CLIENTS - 1];
    assert_eq!(
        read_line(&mut clients[0]).await?,
        format!("* {leaver} left")
    );
    drop(clients);
    server.wait_idle().await?;
    server.shutdown().await
}

#[tokio::test]
async fn nick_renames_and_who_lists_the_room() -> anyhow::Result<()> {
    let server = TestServer::start("chat").await?;
    let (mut alice, alice_id) = join_chat(&server).await?;
    let (mut bob, bob_id) = join_chat(&server).await?;
    assert_eq!(read_line(&mut alice).await?, format!("* {bob_id} joined"));

    say(&mut bob, "/nick bob").await?;
    assert_eq!(read_line(&mut bob).await?, "* you are now bob");
    assert_eq!(
        read_line(&mut alice).await?,
        format!("* {bob_id} is now bob")
    );
    say(&mut bob, "hi all").await?;
    assert_eq!(read_line(&mut alice).await?, "bob: hi all");

    say(&mut alice, "/who").await?;
    assert_eq!(
        read_line(&mut alice).await?,
        format!("* {alice_id} {alice_id} (you)")
    );
    assert_eq!(read_line(&mut alice).await?, format!("* {bob_id} bob"));

    say(&mut bob, "/nick not a name!").await?;
    assert!(read_line(&mut bob).await?.starts_with("* a name is"));

    drop(bob);
    assert_eq!(read_line(&mut alice).await?, "* bob left");
    server.shutdown().await
}

#[tokio::test]
async fn a_client_that_never_reads_is_dropped_at_its_write_timeout() -> anyhow::Result<()> {
    let _alone = HEAVY.lock().await;
    const LINES: usize = 20_000;
    const LINE_BYTES: usize = 1000;
    const WINDOW: usize = 500;
    let config = ServerConfig::builder()
        .name("chat")
        .pool_size(2)
        .write_timeout(Duration::from_secs(2))
        .shutdown_timeout(Duration::from_secs(5))
        .build()?;
    let server = Server::new(plugin("chat"), config);
    let mailboxes = server.mailboxes();
    let server = TestServer::serve(server).await?;
    let (silent, silent_id) = join_chat(&server).await?;
    let (mut talker, _) = join_chat(&server).await?;
    let (mut listener, _) = join_chat(&server).await?;

    let rss_before = rss_kib()?;
    let line = "x".repeat(LINE_BYTES);
    // The talker chats at full speed, but like every client in a chat it stays in step with
    // the room: at most WINDOW lines ahead of what the listener has received.
    let (progress, mut seen) = tokio::sync::watch::channel(0usize);
    let send = tokio::spawn({
        let chunk = format!("{line}\n").repeat(100);
        async move {
            for sent in (100..=LINES).step_by(100) {
                seen.wait_for(|received| sent <= received + WINDOW).await?;
                talker.get_mut().write_all(chunk.as_bytes()).await?;
            }
            anyhow::Ok(talker)
        }
    });
    // 20 MB: the listener gets every line while the silent client reads nothing. Its socket
    // buffers fill, and what the talker sent piles up in its mailbox until the talker is held
    // back (flow control: the talker's client is not read while half a mailbox of its lines
    // waits anywhere); the silent client, making no progress for its write timeout, is
    // disconnected, which the others hear as it leaving, and the room goes on.
    let mut received = 0;
    let mut silent_left = false;
    while received < LINES || !silent_left {
        let got = read_line(&mut listener).await?;
        if got == format!("* {silent_id} left") {
            silent_left = true;
            continue;
        }
        let text = got.split_once(": ").map(|(_, text)| text);
        ensure!(text == Some(line.as_str()), "line {received}: {got:.60}");
        received += 1;
        progress.send_replace(received);
    }
    let _talker = send.await??;
    assert_eq!(server.stats.limit_hits(shoal_host::Limit::Write), 1);
    assert_eq!(mailboxes.overflowed(), 0, "nobody's mailbox overflowed");
    // Bounded: the mailbox holds at most 1 MiB and a call's output 1 MiB, whatever the
    // flood. (A loose bound: the other tests run in this process at the same time.)
    let rss_after = rss_kib()?;
    assert!(
        rss_after < rss_before + 64 * 1024,
        "server memory grew from {rss_before} to {rss_after} KiB"
    );
    drop(silent);
    server.shutdown().await
}

/// Connect a courier client and learn its id.
async fn courier(server: &TestServer) -> anyhow::Result<(Client, u64)> {
    let mut client = BufReader::new(server.connect().await?);
    say(&mut client, "id").await?;
    let id = read_line(&mut client).await?.parse()?;
    Ok((client, id))
}

#[tokio::test]
async fn sending_to_a_connection_that_ended_says_no_such_connection() -> anyhow::Result<()> {
    let server = TestServer::start("courier").await?;
    let (mut sender, _) = courier(&server).await?;
    let (mut receiver, receiver_id) = courier(&server).await?;
    say(&mut sender, &format!("to {receiver_id} hello")).await?;
    assert_eq!(read_line(&mut sender).await?, "ok");
    let from = read_line(&mut receiver).await?;
    assert!(from.ends_with(": hello"), "{from}");

    drop(receiver);
    let stats = Arc::clone(&server.stats);
    wait_for("the receiver to end", || stats.live_connections() == 1).await?;
    say(&mut sender, &format!("to {receiver_id} anyone there?")).await?;
    assert_eq!(read_line(&mut sender).await?, "error: no-such-connection");
    say(&mut sender, "to 999999999 hi").await?;
    assert_eq!(read_line(&mut sender).await?, "error: no-such-connection");
    server.shutdown().await
}

#[tokio::test]
async fn a_guest_trapping_mid_broadcast_keeps_what_it_delivered() -> anyhow::Result<()> {
    let server = TestServer::start("courier").await?;
    let (mut trapper, trapper_id) = courier(&server).await?;
    let (mut first, _) = courier(&server).await?;
    let (mut second, second_id) = courier(&server).await?;
    say(&mut trapper, "burst-then-trap 50").await?;
    // The trapping connection ends without output.
    assert!(read_to_end(&mut trapper).await?.is_empty());
    for receiver in [&mut first, &mut second] {
        for n in 1..=50 {
            assert_eq!(read_line(receiver).await?, format!("{trapper_id}: m{n}"));
        }
    }
    // Nothing was repeated: the next message the first receiver gets is a new one.
    say(&mut second, "all after").await?;
    assert_eq!(read_line(&mut second).await?, "sent to 1");
    assert_eq!(read_line(&mut first).await?, format!("{second_id}: after"));
    server.shutdown().await
}

#[tokio::test]
async fn messages_never_cross_listeners() -> anyhow::Result<()> {
    let red = TestServer::start_with(plugin("courier"), config("red")?).await?;
    let blue = TestServer::start_with(plugin("courier"), config("blue")?).await?;
    let (mut red_a, _) = courier(&red).await?;
    let (mut red_b, _) = courier(&red).await?;
    let (mut blue_a, blue_a_id) = courier(&blue).await?;
    say(&mut red_a, "all hello red").await?;
    assert_eq!(read_line(&mut red_a).await?, "sent to 1");
    assert!(read_line(&mut red_b).await?.ends_with(": hello red"));
    // An id from the other listener is not a connection of this one.
    say(&mut red_a, &format!("to {blue_a_id} psst")).await?;
    assert_eq!(read_line(&mut red_a).await?, "error: no-such-connection");
    say(&mut blue_a, "all anyone?").await?;
    assert_eq!(read_line(&mut blue_a).await?, "sent to 0");

    // The chat on two listeners: a line on one is not heard on the other.
    let lobby = TestServer::start_with(plugin("chat"), config("lobby")?).await?;
    let back = TestServer::start_with(plugin("chat"), config("back-room")?).await?;
    let (mut lobby_a, _) = join_chat(&lobby).await?;
    let (mut lobby_b, lobby_b_id) = join_chat(&lobby).await?;
    let (mut back_a, back_a_id) = join_chat(&back).await?;
    assert_eq!(
        read_line(&mut lobby_a).await?,
        format!("* {lobby_b_id} joined")
    );
    say(&mut lobby_b, "lobby only").await?;
    assert_eq!(
        read_line(&mut lobby_a).await?,
        format!("{lobby_b_id}: lobby only")
    );
    say(&mut back_a, "/who").await?;
    assert_eq!(
        read_line(&mut back_a).await?,
        format!("* {back_a_id} {back_a_id} (you)")
    );
    let (_back_b, back_b_id) = join_chat(&back).await?;
    assert_eq!(
        read_line(&mut back_a).await?,
        format!("* {back_b_id} joined"),
        "the back room heard nothing from the lobby"
    );
    for server in [red, blue, lobby, back] {
        server.shutdown().await?;
    }
    Ok(())
}

#[tokio::test]
async fn embedder_hooks_see_opens_and_closes_and_can_message_the_connection() -> anyhow::Result<()>
{
    let opened: Arc<Mutex<Vec<ConnectionHandle>>> = Arc::default();
    let closed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let server = Server::new(plugin("courier"), config("hooks")?)
        .on_open({
            let opened = Arc::clone(&opened);
            move |conn| {
                let _ = conn.send(&b"welcome from the host"[..]);
                opened.lock().expect("lock").push(conn.clone());
            }
        })
        .on_close({
            let closed = Arc::clone(&closed);
            move |conn| closed.lock().expect("lock").push(conn.id())
        });
    let mailboxes = server.mailboxes();
    let server = TestServer::serve(server).await?;

    let mut client = BufReader::new(server.connect().await?);
    assert_eq!(read_line(&mut client).await?, "0: welcome from the host");
    say(&mut client, "id").await?;
    let id: u64 = read_line(&mut client).await?.parse()?;
    let handle = opened.lock().expect("lock")[0].clone();
    assert_eq!(handle.id(), id);
    handle.send("ping")?;
    assert_eq!(read_line(&mut client).await?, "0: ping");
    assert_eq!(mailboxes.broadcast(0, &"to all".into()), 1);
    assert_eq!(read_line(&mut client).await?, "0: to all");
    assert_eq!(mailboxes.peers().len(), 1);

    drop(client);
    let seen = Arc::clone(&closed);
    wait_for("on_close", || seen.lock().expect("lock").contains(&id)).await?;
    assert_eq!(handle.send("late"), Err(MessageError::NoSuchConnection));
    assert!(mailboxes.is_empty());
    server.shutdown().await
}

/// The floods and the test that measures the process's memory: one at a time.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `len` bytes of printable text, different all along, without a newline.
fn flood_text(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A chat room of a sender and `readers` members, each having read every join notice.
async fn room(
    name: &str,
    readers: usize,
) -> anyhow::Result<(TestServer, Client, u64, Vec<Client>)> {
    let server = TestServer::start_with(plugin("chat"), config(name)?).await?;
    let (mut sender, sender_id) = join_chat(&server).await?;
    let mut members = Vec::new();
    for _ in 0..readers {
        members.push(join_chat(&server).await?.0);
    }
    // Everyone has seen everyone join: read the notices of those who came later.
    for (n, member) in members.iter_mut().enumerate() {
        for _ in n + 1..readers {
            read_line(member).await?;
        }
    }
    for _ in 0..readers {
        read_line(&mut sender).await?;
    }
    Ok((server, sender, sender_id, members))
}

/// One chat member sends `len` bytes without a newline into a room of `readers` members who
/// read as fast as they can: every reader must get every byte, in order (the chat relays it
/// in 4 KiB lines), and stay connected; the sender must stay connected too.
async fn flood_the_room(len: usize, readers: usize) -> anyhow::Result<()> {
    let _alone = HEAVY.lock().await;
    let (server, mut sender, sender_id, members) = room("flood", readers).await?;
    let text = Arc::new(flood_text(len));
    let prefix = format!("{sender_id}: ");
    let mut reading = Vec::new();
    for mut member in members {
        let expected = Arc::clone(&text);
        let prefix = prefix.clone();
        reading.push(tokio::spawn(async move {
            // Compared as it comes, so that twenty readers do not hold twenty copies.
            let mut offset = 0;
            while offset < expected.len() {
                let line = read_line(&mut member).await?;
                let relayed = line
                    .strip_prefix(&prefix)
                    .with_context(|| format!("not the sender's line: {line:.60}"))?
                    .as_bytes();
                let end = offset + relayed.len();
                ensure!(
                    expected.get(offset..end) == Some(relayed),
                    "the relayed bytes differ from those sent at {offset}"
                );
                offset = end;
            }
            anyhow::Ok(member)
        }));
    }
    let writing = Arc::clone(&text);
    let writer = tokio::spawn(async move {
        sender.get_mut().write_all(&writing).await?;
        sender.get_mut().write_all(b"\n").await?;
        anyhow::Ok(sender)
    });
    let mut members = Vec::new();
    for reader in reading {
        members.push(tokio::time::timeout(Duration::from_secs(120), reader).await???);
    }
    let mut sender = writer.await??;
    // Everyone is still there: a last line reaches every reader.
    say(&mut sender, "still here").await?;
    for member in &mut members {
        let mut last = read_line(member).await?;
        if last == prefix {
            // The newline after the flood ended an empty remainder line.
            last = read_line(member).await?;
        }
        assert_eq!(last, format!("{prefix}still here"));
    }
    assert_eq!(server.stats.limit_hits(shoal_host::Limit::Mailbox), 0);
    drop((sender, members));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_mebibyte_line_reaches_twenty_readers_whole() -> anyhow::Result<()> {
    flood_the_room(2 << 20, 20).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ten_mebibyte_line_reaches_twenty_readers_whole() -> anyhow::Result<()> {
    flood_the_room(10 << 20, 20).await
}

/// One chat member sends `lines` short lines at once (a read of the host holds thousands, so
/// one `handle` call broadcasts thousands of messages, past what a mailbox holds) into a
/// room of `readers` members who read as fast as they can: every reader gets every line, in
/// order, and stays connected; the sender is slowed, not dropped.
async fn flood_with_short_lines(lines: usize, readers: usize) -> anyhow::Result<()> {
    let _alone = HEAVY.lock().await;
    let (server, mut sender, sender_id, members) = room("short-lines", readers).await?;
    let mut reading = Vec::new();
    for mut member in members {
        reading.push(tokio::spawn(async move {
            for n in 0..lines {
                let line = read_line(&mut member).await?;
                ensure!(
                    line == format!("{sender_id}: {n}"),
                    "line {n}: got {line:?}"
                );
            }
            anyhow::Ok(member)
        }));
    }
    let text: String = (0..lines).map(|n| format!("{n}\n")).collect();
    sender.get_mut().write_all(text.as_bytes()).await?;
    let mut members = Vec::new();
    for reader in reading {
        members.push(tokio::time::timeout(Duration::from_secs(120), reader).await???);
    }
    say(&mut sender, "still here").await?;
    for member in &mut members {
        assert_eq!(read_line(member).await?, format!("{sender_id}: still here"));
    }
    assert_eq!(server.stats.limit_hits(shoal_host::Limit::Mailbox), 0);
    drop((sender, members));
    server.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_short_lines_reach_twenty_readers_in_order() -> anyhow::Result<()> {
    flood_with_short_lines(50_000, 20).await
}
