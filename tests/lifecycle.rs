//! The plugin lifecycle through a real server: `init` output, guest-initiated close, `close`
//! exactly once, traps isolated to their connection, graceful shutdown, and the low-level API.

mod support;

use std::time::Duration;

use anyhow::Context;
use shoal_host::MemoryInit;
use support::{
    TestServer, captured_logs, log_lines_with, plugin, random_bytes, read_line, read_to_end,
    wait_for,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Connect to a greeter server and read the greeting; returns the reader and connection id.
async fn greeted(server: &TestServer) -> anyhow::Result<(BufReader<TcpStream>, u64)> {
    let mut reader = BufReader::new(server.connect().await?);
    let greeting = read_line(&mut reader).await?;
    let id = greeting
        .strip_prefix("hello ")
        .and_then(|rest| rest.strip_suffix(" from greeter"))
        .context("greeting has the documented shape")?
        .parse()?;
    Ok((reader, id))
}

#[tokio::test]
async fn init_greets_and_quit_closes_from_the_guest() -> anyhow::Result<()> {
    let server = TestServer::start("greeter").await?;
    let (mut reader, id) = greeted(&server).await?;
    reader.get_mut().write_all(b"ping\nquit\n").await?;
    assert_eq!(read_line(&mut reader).await?, format!("{id}: ping"));
    assert_eq!(read_line(&mut reader).await?, "bye (guest-closed)");
    let rest = read_to_end(&mut reader).await?;
    assert!(rest.is_empty(), "nothing after close: {rest:?}");
    server.shutdown().await
}

#[tokio::test]
async fn close_runs_exactly_once_when_the_client_disconnects() -> anyhow::Result<()> {
    captured_logs();
    let server = TestServer::start("greeter").await?;
    let (mut reader, id) = greeted(&server).await?;
    reader.get_mut().write_all(b"hi\n").await?;
    assert_eq!(read_line(&mut reader).await?, format!("{id}: hi"));
    drop(reader);
    let needle = format!("conn={id} ");
    wait_for("the guest's close to be logged", || {
        !log_lines_with(&["close called: peer-closed", &needle]).is_empty()
    })
    .await?;
    server.wait_idle().await?;
    let closes = log_lines_with(&["close called", &needle]);
    assert_eq!(closes.len(), 1, "close ran once: {closes:#?}");
    server.shutdown().await
}

#[tokio::test]
async fn after_a_half_close_the_output_of_close_still_arrives() -> anyhow::Result<()> {
    let server = TestServer::start("greeter").await?;
    let (mut reader, id) = greeted(&server).await?;
    reader.get_mut().write_all(b"one\n").await?;
    reader.get_mut().shutdown().await?;
    assert_eq!(read_line(&mut reader).await?, format!("{id}: one"));
    assert_eq!(read_line(&mut reader).await?, "bye (peer-closed)");
    assert!(read_to_end(&mut reader).await?.is_empty());
    server.shutdown().await
}

#[tokio::test]
async fn a_trap_closes_only_its_own_connection() -> anyhow::Result<()> {
    captured_logs();
    let server = TestServer::start("trap-on").await?;
    let mut bystander = server.connect().await?;
    let mut victim = server.connect().await?;

    bystander.write_all(b"before").await?;
    let mut reply = [0u8; 6];
    bystander.read_exact(&mut reply).await?;
    assert_eq!(&reply, b"before");

    victim.write_all(b"please trap now").await?;
    let rest = read_to_end(&mut victim).await;
    assert!(
        rest.as_ref().map_or(true, Vec::is_empty),
        "the trapping connection gets nothing back: {rest:?}"
    );
    wait_for("the trap to be counted", || server.stats.faults() == 1).await?;

    bystander.write_all(b"after").await?;
    let mut reply = [0u8; 5];
    bystander.read_exact(&mut reply).await?;
    assert_eq!(&reply, b"after");

    let newcomer_payload = random_bytes(1000, 3);
    let mut newcomer = server.connect().await?;
    newcomer.write_all(&newcomer_payload).await?;
    let mut echoed = vec![0u8; newcomer_payload.len()];
    newcomer.read_exact(&mut echoed).await?;
    assert_eq!(echoed, newcomer_payload);

    let trap_logs = log_lines_with(&["`handle` failed", "guest trapped"]);
    assert_eq!(
        trap_logs.len(),
        1,
        "the trap is logged once: {trap_logs:#?}"
    );
    assert!(
        trap_logs[0].contains("conn="),
        "logged with the connection id: {}",
        trap_logs[0]
    );
    let panic_logs = log_lines_with(&["asked to trap", "plugin=\"trap-on\""]);
    assert!(
        !panic_logs.is_empty(),
        "the guest's panic message reaches the log through stderr"
    );
    assert_eq!(server.stats.faults(), 1);
    server.shutdown().await
}

#[tokio::test]
async fn shutdown_closes_guests_with_a_reason_and_refuses_newcomers() -> anyhow::Result<()> {
    let mut server = TestServer::start("greeter").await?;
    let (mut reader, _id) = greeted(&server).await?;
    let addr = server.addr;
    server.begin_shutdown();
    assert_eq!(read_line(&mut reader).await?, "bye (shutdown)");
    assert!(read_to_end(&mut reader).await?.is_empty());
    server.shutdown().await?;
    let refused = TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "a new connection after shutdown is refused"
    );
    Ok(())
}

/// A connection with a small receive buffer whose client does not read yet.
async fn slow_reader(addr: std::net::SocketAddr) -> anyhow::Result<BufReader<TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(64 << 10)?;
    Ok(BufReader::new(socket.connect(addr).await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_refuses_new_connections_while_open_ones_finish() -> anyhow::Result<()> {
    const FLOOD: usize = 8_000_000;
    let config = shoal_host::ServerConfig::builder()
        .name("greeter")
        .output_buffer_limit(FLOOD)
        // 8,000 `send` calls in one `handle` take longer than the default budget in a debug
        // build; this test is about shutdown, not the budget.
        .cpu_budget_per_call(Duration::from_secs(5))
        .shutdown_timeout(Duration::from_secs(20))
        .build()?;
    let mut server = TestServer::start_with(plugin("greeter"), config).await?;
    let addr = server.addr;
    let mut reader = slow_reader(addr).await?;
    let greeting = read_line(&mut reader).await?;
    // 8 MB of output is more than the server's send buffer (4 MiB at most here) and the
    // client's 64 KiB receive buffer hold, so once the first byte arrives the server is
    // stuck writing until the client reads: the connection is busy when shutdown begins.
    reader.get_mut().write_all(b"flood\n").await?;
    let mut first = [0u8; 1];
    reader.read_exact(&mut first).await?;
    server.begin_shutdown();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr).await {
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("new connections were still accepted 10 s after shutdown began")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // Connections accepted in the instant before shutdown end at once; the busy one stays.
    wait_for("only the busy connection to be open", || {
        server.stats.live_connections() == 1
    })
    .await?;

    // It finishes: all of its pending output, then its guest's `close(shutdown)` reply, then
    // an orderly end of stream.
    let mut flood = vec![0u8; FLOOD - 1];
    reader.read_exact(&mut flood).await?;
    assert!(first[0] == b'x' && flood.iter().all(|&b| b == b'x'));
    assert_eq!(read_line(&mut reader).await?, "bye (shutdown)");
    assert!(read_to_end(&mut reader).await?.is_empty());
    assert!(greeting.starts_with("hello "));
    server.shutdown().await
}

#[tokio::test]
async fn an_init_error_refuses_the_connection_without_output_or_close() -> anyhow::Result<()> {
    captured_logs();
    let config = shoal_host::ServerConfig::builder().name("refuse").build()?;
    let server = TestServer::start_with(plugin("greeter"), config).await?;
    let mut client = server.connect().await?;
    assert!(read_to_end(&mut client).await?.is_empty(), "no output");
    wait_for("the refusal to be logged", || {
        !log_lines_with(&["plugin refused the connection", "refused on request"]).is_empty()
    })
    .await?;
    let refusal = log_lines_with(&["plugin refused the connection", "refused on request"]);
    let id = refusal[0]
        .split(" refused on request")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .context("the refusal names the connection")?;
    server.wait_idle().await?;
    let needle = format!("conn={id} ");
    assert!(
        log_lines_with(&["close called", &needle]).is_empty(),
        "close must not run"
    );
    assert_eq!(server.stats.faults(), 0);
    server.shutdown().await
}

#[tokio::test]
async fn init_can_greet_and_close_at_once() -> anyhow::Result<()> {
    let config = shoal_host::ServerConfig::builder()
        .name("greet-and-close")
        .build()?;
    let server = TestServer::start_with(plugin("greeter"), config).await?;
    let mut reader = BufReader::new(server.connect().await?);
    assert!(
        read_line(&mut reader)
            .await?
            .ends_with(" from greet-and-close")
    );
    assert_eq!(read_line(&mut reader).await?, "bye (guest-closed)");
    assert!(read_to_end(&mut reader).await?.is_empty());
    server.shutdown().await
}

#[tokio::test]
async fn send_past_the_output_limit_is_refused_with_buffer_full() -> anyhow::Result<()> {
    captured_logs();
    let config = shoal_host::ServerConfig::builder()
        .name("greeter")
        .output_buffer_limit(10_000)
        .build()?;
    let server = TestServer::start_with(plugin("greeter"), config).await?;
    let (mut reader, _id) = greeted(&server).await?;
    reader.get_mut().write_all(b"flood\n").await?;
    let mut flood = vec![0u8; 10_000];
    reader.read_exact(&mut flood).await?;
    assert!(flood.iter().all(|&b| b == b'x'));
    // The flood filled the queue for its call; the next call has the whole limit again.
    reader.get_mut().write_all(b"status\n").await?;
    assert_eq!(
        read_line(&mut reader).await?,
        "flooded Some(10000) bytes until buffer-full"
    );
    // The refusal is logged at the default level, once per connection.
    let needle = format!("conn={_id} ");
    let refused = log_lines_with(&["INFO", "limit reached: output_buffer_limit", &needle]);
    assert_eq!(refused.len(), 1, "{refused:#?}");
    server.shutdown().await
}

#[tokio::test]
async fn a_full_instance_pool_closes_only_the_newcomer() -> anyhow::Result<()> {
    let runtime = shoal_host::Runtime::new(
        shoal_host::RuntimeConfig::builder()
            .max_instances(2)
            .build()?,
    )?;
    let greeter = shoal_host::Plugin::from_file(&runtime, support::plugin_path("greeter"))?;
    assert_eq!(greeter.load_report().memory_init, MemoryInit::Copy);
    only_the_newcomer_is_closed(greeter).await
}

/// The copy-on-write engine (a large guest's) has a pool of its own, bounded alike: here a
/// small plugin is put on it with a threshold of 0 bytes.
#[tokio::test]
async fn a_full_copy_on_write_pool_closes_only_the_newcomer() -> anyhow::Result<()> {
    let runtime = shoal_host::Runtime::new(
        shoal_host::RuntimeConfig::builder()
            .max_instances(8)
            .copy_on_write_above(Some(0))
            .copy_on_write_instances(2)
            .build()?,
    )?;
    let greeter = shoal_host::Plugin::from_file(&runtime, support::plugin_path("greeter"))?;
    assert_eq!(greeter.load_report().memory_init, MemoryInit::CopyOnWrite);
    only_the_newcomer_is_closed(greeter).await
}

/// With a pool of two greeters held, a third connection gets no instance (counted) while the
/// two keep talking; once one leaves, a newcomer is greeted.
async fn only_the_newcomer_is_closed(greeter: shoal_host::Plugin) -> anyhow::Result<()> {
    let config = shoal_host::ServerConfig::builder()
        .name("greeter")
        .build()?;
    let server = TestServer::start_with(greeter, config).await?;
    let (first, _) = greeted(&server).await?;
    let (mut second, second_id) = greeted(&server).await?;
    let mut third = server.connect().await?;
    assert!(
        read_to_end(&mut third).await?.is_empty(),
        "no instance, no greeting"
    );
    wait_for("the newcomer to be counted", || {
        server.stats.ended(shoal_host::EndKind::NoInstance) == 1
    })
    .await?;
    second.get_mut().write_all(b"still here\n").await?;
    assert_eq!(
        read_line(&mut second).await?,
        format!("{second_id}: still here")
    );
    drop(first);
    wait_for("a pool slot to come free", || {
        server.stats.live_instances() == 1
    })
    .await?;
    let (_fourth, _) = greeted(&server).await?;
    server.shutdown().await
}

#[tokio::test]
async fn the_low_level_api_listens_accepts_and_receives() -> anyhow::Result<()> {
    let listener = shoal_host::tcp::listen("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let client = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(b"raw bytes").await?;
        let mut reader = BufReader::new(stream);
        // The second accepted socket is handed to a plugin instance.
        let mut second = BufReader::new(TcpStream::connect(addr).await?);
        let greeting = read_line(&mut second).await?;
        second.get_mut().write_all(b"quit\n").await?;
        let bye = read_line(&mut second).await?;
        let _ = reader.get_mut().shutdown().await;
        anyhow::Ok((greeting, bye))
    });
    let mut socket = listener.accept().await?;
    assert_eq!(&socket.receive(9).await?[..], b"raw bytes");
    let second = listener.accept().await?;
    let config = shoal_host::ServerConfig::builder()
        .name("low-level")
        .build()?;
    second.serve_plugin(&plugin("greeter"), &config).await;
    let (greeting, bye) = client.await??;
    assert!(greeting.starts_with("hello ") && greeting.ends_with(" from low-level"));
    assert_eq!(bye, "bye (guest-closed)");
    Ok(())
}

/// On a single-threaded runtime (server and clients share one thread), a guest looping
/// forever still yields on every epoch tick: another connection keeps getting its echo, and
/// the looping call is stopped once it has used its CPU budget.
#[tokio::test(flavor = "current_thread")]
async fn a_looping_guest_neither_stalls_the_thread_nor_outlives_its_budget() -> anyhow::Result<()> {
    captured_logs();
    let budget = Duration::from_millis(1500);
    let config = shoal_host::ServerConfig::builder()
        .name("spin")
        .cpu_budget_per_call(budget)
        .build()?;
    let server = TestServer::start_with(plugin("spin"), config).await?;
    let mut bystander = server.connect().await?;
    let mut spinner = server.connect().await?;
    spinner.write_all(b"spin").await?;
    let started = tokio::time::Instant::now();

    let mut round_trips = 0;
    while server.stats.faults() == 0 && started.elapsed() < Duration::from_secs(10) {
        bystander.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        bystander.read_exact(&mut reply).await?;
        assert_eq!(&reply, b"ping");
        round_trips += 1;
    }
    assert!(
        round_trips > 10,
        "only {round_trips} round trips while the guest looped"
    );
    assert_eq!(server.stats.faults(), 1, "the loop was stopped");
    assert!(
        started.elapsed() >= budget,
        "not stopped before its budget was used"
    );
    assert!(read_to_end(&mut spinner).await?.is_empty());
    let stopped = log_lines_with(&["`handle` failed", "ran past its CPU budget"]);
    assert_eq!(stopped.len(), 1, "{stopped:#?}");
    server.shutdown().await
}

#[tokio::test]
async fn an_instance_can_be_driven_by_hand_without_a_socket() -> anyhow::Result<()> {
    use shoal_host::{CloseReason, ConnInfo, Event, GuestFault, Instance, Next, ServerConfig};

    let config = ServerConfig::builder().name("by-hand").build()?;
    let mut instance = Instance::new(&plugin("greeter"), &config).await?;
    let info = ConnInfo {
        id: instance.conn_id(),
        peer: "127.0.0.1:1".into(),
        local: "127.0.0.1:2".into(),
        listener: "by-hand".into(),
    };
    assert_eq!(instance.init(&info).await?, Ok(Next::Continue));
    let greeting = format!("hello {} from by-hand\n", instance.conn_id());
    assert_eq!(instance.output(), greeting.as_bytes());
    instance.clear_output();
    let next = instance.handle(&Event::Data(b"x\nquit\n".to_vec())).await?;
    assert_eq!(next, Next::Close);
    instance.clear_output();
    instance.close(&CloseReason::GuestClosed).await?;
    assert_eq!(instance.output(), b"bye (guest-closed)\n");

    let mut trapping = Instance::new(&plugin("trap-on"), &config).await?;
    assert_eq!(trapping.init(&info).await?, Ok(Next::Continue));
    let fault = trapping.handle(&Event::Data(b"trap".to_vec())).await;
    assert!(matches!(fault, Err(GuestFault::Trap(_))), "{fault:?}");
    Ok(())
}

/// The guest SDK's heap starts in the initial memory (guest-sdk's `heap` module): serving a
/// connection's first allocations must not grow the memory, which would cost an `mprotect`
/// and a page fault per connection. A guest that needs more still grows.
#[tokio::test]
async fn a_small_guest_serves_its_heap_from_the_initial_memory() -> anyhow::Result<()> {
    use shoal_host::{ConnInfo, Event, Instance, ServerConfig};

    let config = ServerConfig::builder().name("heap").build()?;
    let info = ConnInfo {
        id: 1,
        peer: "127.0.0.1:1".into(),
        local: "127.0.0.1:2".into(),
        listener: "heap".into(),
    };
    let mut echo = Instance::new(&plugin("echo"), &config).await?;
    let initial = echo.memory_bytes();
    assert!(initial > 0, "the limiter saw the memory made");
    assert_eq!(echo.init(&info).await?, Ok(shoal_host::Next::Continue));
    for _ in 0..100 {
        echo.handle(&Event::Data(vec![7; 4096])).await?;
        assert_eq!(echo.output().len(), 4096);
        echo.clear_output();
    }
    assert_eq!(echo.memory_bytes(), initial, "echo never grew its memory");

    // More than the initial memory's free end holds: the heap grows past it, and works.
    let big = vec![9; 256 << 10];
    echo.handle(&Event::Data(big.clone())).await?;
    assert_eq!(echo.output(), &big[..]);
    assert!(echo.memory_bytes() > initial, "a large heap still grows");
    Ok(())
}

#[tokio::test]
async fn every_connection_is_counted_once_even_past_the_shutdown_deadline() -> anyhow::Result<()> {
    use shoal_host::EndKind;
    let config = shoal_host::ServerConfig::builder()
        .name("spin")
        .shutdown_timeout(Duration::from_millis(300))
        .build()?;
    let server = TestServer::start_with(plugin("spin"), config).await?;
    // Still inside a guest call (an hour's sleep) when the deadline comes: dropped there.
    let mut sleeper = server.connect().await?;
    sleeper.write_all(b"sleep").await?;
    // Ended by the shutdown, then lingering past the deadline: its client never closes.
    let mut lingering = server.connect().await?;
    lingering.write_all(b"hi").await?;
    let mut echoed = [0u8; 2];
    lingering.read_exact(&mut echoed).await?;
    wait_for("both connections to be served", || {
        server.stats.live_instances() == 2
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = std::sync::Arc::clone(&server.stats);
    server.shutdown().await?;
    assert_eq!(stats.ended(EndKind::Shutdown), 1, "the lingering one");
    assert_eq!(
        stats.ended(EndKind::ShutdownDeadline),
        1,
        "the sleeping one"
    );
    let counted: u64 = EndKind::ALL.iter().map(|kind| stats.ended(*kind)).sum();
    assert_eq!(counted, stats.accepted(), "each connection counted once");
    drop((sleeper, lingering));
    Ok(())
}
