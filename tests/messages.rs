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
use support::{TestServer, plugin, read_line, read_to_end, rss_kib, wait_for};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

type Client = BufReader<TcpStream>;

/// Join the chat: returns the client and its id (from the welcome line).
async fn join(server: &TestServer) -> anyhow::Result<(Client, u64)> {
    let mut client = BufReader::new(server.connect().await?);
    let welcome = read_line(&mut client).await?;
    let id = welcome
        .strip_prefix("* welcome, you are ")
        .and_then(|rest| rest.split(';').next())
        .with_context(|| format!("welcome line: {welcome:?}"))?
        .parse()?;
    Ok((client, id))
}

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
        clients.push(join(&server).await?);
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
    let (mut alice, alice_id) = join(&server).await?;
    let (mut bob, bob_id) = join(&server).await?;
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
async fn a_client_that_never_reads_does_not_stall_the_room() -> anyhow::Result<()> {
    const LINES: usize = 20_000;
    const LINE_BYTES: usize = 1000;
    const WINDOW: usize = 500;
    let server = Server::new(plugin("chat"), config("chat")?);
    let mailboxes = server.mailboxes();
    let server = TestServer::serve(server).await?;
    let (silent, silent_id) = join(&server).await?;
    let (mut talker, _) = join(&server).await?;
    let (mut listener, _) = join(&server).await?;

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
    // buffers fill, then its mailbox (1 MiB); the next message to it is refused and it is
    // disconnected, which the others hear as it leaving.
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
    assert!(mailboxes.refused() > 0, "no message was refused");
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
    let (mut lobby_a, _) = join(&lobby).await?;
    let (mut lobby_b, lobby_b_id) = join(&lobby).await?;
    let (mut back_a, back_a_id) = join(&back).await?;
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
    let (_back_b, back_b_id) = join(&back).await?;
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
