//! A quick look at the two numbers the first issue asks for; `make bench` (issue 3) is the
//! rigorous version. Run in release:
//!
//! ```sh
//! cargo run --release -p shoal-host --example quick_measure -- target/plugins/echo.wasm
//! ```
//!
//! 1. Lifecycle: `Store` + instantiate + `init` + `close` + drop, in process, with
//!    copy-on-write memory images off and on (alternating rounds; medians and p99).
//! 2. Echo round trips per second: an in-process server on 127.0.0.1:0 and 50 tokio clients
//!    sending 64-byte messages for 3 s (client and server share the 2 worker threads).

use std::time::{Duration, Instant};

use anyhow::Context;
use shoal_host::{
    CloseReason, ConnInfo, Instance, Next, Plugin, Runtime, RuntimeConfig, Server, ServerConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUNDS: usize = 5;
const LIFECYCLES_PER_ROUND: usize = 4_000;
const CLIENTS: usize = 50;
const ECHO_FOR: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/plugins/echo.wasm".into());
    let config = ServerConfig::default();
    let mut plugins = Vec::new();
    for cow in [false, true] {
        let runtime = Runtime::new(
            RuntimeConfig::builder()
                .max_instances(1_000)
                .copy_on_write(cow)
                .build()?,
        )?;
        plugins.push((cow, Plugin::from_file(&runtime, &path)?));
    }

    let mut samples = vec![Vec::new(); plugins.len()];
    for _ in 0..ROUNDS {
        for (i, (_, plugin)) in plugins.iter().enumerate() {
            for _ in 0..LIFECYCLES_PER_ROUND {
                let start = Instant::now();
                lifecycle(plugin, &config).await?;
                samples[i].push(start.elapsed());
            }
        }
    }
    for ((cow, _), mut times) in plugins.iter().zip(samples) {
        times.sort();
        let median = times[times.len() / 2];
        let p99 = times[times.len() * 99 / 100];
        println!(
            "lifecycle (copy-on-write {}): median {:.1} µs, p99 {:.1} µs over {} runs",
            if *cow { "on" } else { "off" },
            median.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            times.len()
        );
    }

    let (_, plugin) = plugins.swap_remove(0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(Server::new(plugin, config).serve(listener, async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + ECHO_FOR;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let message = [42u8; 64];
            let mut reply = [0u8; 64];
            let mut round_trips = 0u64;
            while Instant::now() < deadline {
                stream.write_all(&message).await?;
                stream.read_exact(&mut reply).await?;
                round_trips += 1;
            }
            anyhow::Ok(round_trips)
        }));
    }
    let mut total = 0;
    for client in clients {
        total += client.await??;
    }
    println!(
        "echo: {:.0} round trips/s ({CLIENTS} clients × 64 B, {:?}, client in process)",
        total as f64 / ECHO_FOR.as_secs_f64(),
        ECHO_FOR
    );
    let _ = stop.send(());
    server.await?.context("server")?;
    Ok(())
}

async fn lifecycle(plugin: &Plugin, config: &ServerConfig) -> anyhow::Result<()> {
    let mut instance = Instance::new(plugin, config).await?;
    let info = ConnInfo {
        id: instance.conn_id(),
        peer: "127.0.0.1:1".into(),
        local: "127.0.0.1:2".into(),
        listener: "measure".into(),
    };
    anyhow::ensure!(instance.init(&info).await? == Ok(Next::Continue));
    instance.close(&CloseReason::PeerClosed).await?;
    Ok(())
}
