//! `call-shapes`: what wasmtime costs per event in each of two ways of handing a guest its
//! connection's events — the measured floor of the design proposal "a connection-long guest
//! call" (BENCHMARKS.md, issue 16).
//!
//! ```sh
//! target/release/call-shapes [--plugin target/plugins/call-shapes.wasm] [--instances 100]
//! ```
//!
//! Both shapes echo `--size` bytes per event through the same guest (`plugins/call-shapes`),
//! on the engine shoal's default [`Runtime`] makes (its pooling allocator, epochs, async
//! support and shoal's wasmtime patches), `--instances` instances served in turn as a server
//! serves its connections:
//!
//! * **a call per event** (shoal's world today): `handle(data)` called once per event: a
//!   fiber, the export's entry, `realloc` into the guest for the bytes, and `send`;
//! * **a call per event without a fiber**: the same `handle`, on instances whose imports are
//!   all synchronous, called with `TypedFunc::call` — what the fiber and its async machinery
//!   cost (shoal cannot call this way: its guests must be able to yield at epoch ticks);
//! * **one call per connection**: `run()` called once per instance; it loops on the async
//!   import `next-event`, so an event resumes the suspended fiber, which lowers the bytes
//!   (through the guest's `realloc`), runs `send`, and suspends again at the next
//!   `next-event`. Its figure includes the benchmark's hand-over of the event (a copy into
//!   the instance's inbox, three locks), printed on its own.
//!
//! In-process and single-threaded, with no socket: the figures are the wasmtime and guest
//! side of a round trip only. The shapes alternate round by round; medians of the rounds.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use clap::Parser;
use shoal_bench::median;
use shoal_host::Runtime;
use wasmtime::component::{Component, InstancePre, Linker, TypedFunc};
use wasmtime::{Engine, Result, Store, bail, ensure, format_err};

#[derive(Parser)]
struct Args {
    /// The benchmark guest, built by `make plugins`.
    #[arg(long, default_value = "target/plugins/call-shapes.wasm")]
    plugin: String,
    /// Instances served in turn (connections).
    #[arg(long, default_value_t = 100)]
    instances: usize,
    /// Bytes per event.
    #[arg(long, default_value_t = 512)]
    size: usize,
    /// Events per instance per round.
    #[arg(long, default_value_t = 200)]
    events: usize,
    /// Rounds of each shape (alternating).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
}

/// Where the driver puts an instance's next event for `next-event` to take.
type Inbox = Arc<Mutex<Option<Vec<u8>>>>;

/// An instance's `handle` export, with the store it lives in.
type HandleCall<'a> = (Store<Conn>, TypedFunc<(&'a [u8],), ()>);

/// One instance's side of the host: its next event, and the bytes its guest sent.
#[derive(Default)]
struct Conn {
    /// The event `next-event` hands over; `None` while there is none. Shared with the driver,
    /// which cannot reach the store while the connection-long call holds it.
    inbox: Inbox,
    /// Whether the connection has ended (`next-event` then returns `none`).
    ended: Arc<Mutex<bool>>,
    sent: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A linker with `send`, which counts the bytes sent, and `next-event`: the async one that
/// waits for the driver's next event (`asynchronous`), or a synchronous one that only says
/// the connection has ended — instances linked with it need no fiber, so `handle` can be
/// called without one.
fn linker(engine: &Engine, asynchronous: bool) -> Result<Linker<Conn>> {
    let mut linker = Linker::<Conn>::new(engine);
    let mut root = linker.root();
    root.func_wrap("send", |mut store, (data,): (Vec<u8>,)| {
        store.data_mut().sent += data.len();
        Ok(())
    })?;
    if !asynchronous {
        root.func_wrap("next-event", |_, (): ()| Ok((None::<Vec<u8>>,)))?;
        return Ok(linker);
    }
    root.func_wrap_async("next-event", |store, (): ()| {
        let (inbox, ended) = (
            Arc::clone(&store.data().inbox),
            Arc::clone(&store.data().ended),
        );
        Box::new(std::future::poll_fn(move |_| {
            if let Some(event) = lock(&inbox).take() {
                return Poll::Ready(Ok((Some(event),)));
            }
            if *lock(&ended) {
                return Poll::Ready(Ok((None,)));
            }
            // The driver polls the call again once it has put an event in the inbox.
            Poll::Pending
        }))
    })?;
    Ok(linker)
}

fn new_store(engine: &Engine) -> Store<Conn> {
    let mut store = Store::new(engine, Conn::default());
    // No tick may interrupt a call: the figures are the calls' own.
    store.set_epoch_deadline(u64::MAX / 2);
    store
}

/// Poll `future` once, as a worker polls the connection's task when it has an event.
fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

/// `count` instances of `pre`, each with its `handle` export.
async fn handle_calls<'a>(
    engine: &Engine,
    pre: &InstancePre<Conn>,
    count: usize,
) -> Result<Vec<HandleCall<'a>>> {
    let mut calls = Vec::with_capacity(count);
    for _ in 0..count {
        let mut store = new_store(engine);
        let instance = pre.instantiate_async(&mut store).await?;
        let handle = instance.get_typed_func::<(&[u8],), ()>(&mut store, "handle")?;
        calls.push((store, handle));
    }
    Ok(calls)
}

type RunCall = Pin<Box<dyn Future<Output = Result<Store<Conn>>> + Send>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = Runtime::new(Default::default()).map_err(|e| format_err!("{e}"))?;
    let engine = runtime.engine().clone();
    let component = Component::from_file(&engine, &args.plugin).map_err(|e| {
        format_err!(
            "cannot load {} (make plugins builds it): {e:#}",
            args.plugin
        )
    })?;
    let pre = linker(&engine, true)?.instantiate_pre(&component)?;
    let data = vec![b'x'; args.size];

    // A call per event: every instance's `handle`, kept; and the same called without a
    // fiber (what a synchronous embedding would pay).
    let mut per_event = handle_calls(&engine, &pre, args.instances).await?;
    let sync_pre = linker(&engine, false)?.instantiate_pre(&component)?;
    let mut without_fiber = handle_calls(&engine, &sync_pre, args.instances).await?;

    // One call per connection: every instance's `run` started, waiting in `next-event`.
    let mut long: Vec<(RunCall, Inbox)> = Vec::new();
    let mut ends = Vec::new();
    for _ in 0..args.instances {
        let mut store = new_store(&engine);
        let instance = pre.instantiate_async(&mut store).await?;
        let run = instance.get_typed_func::<(), ()>(&mut store, "run")?;
        let inbox = Arc::clone(&store.data().inbox);
        ends.push(Arc::clone(&store.data().ended));
        let mut call: RunCall = Box::pin(async move {
            run.call_async(&mut store, ()).await?;
            Ok(store)
        });
        ensure!(
            poll_once(call.as_mut()).is_pending(),
            "run returned at once"
        );
        long.push((call, inbox));
    }

    let events = args.instances * args.events;
    let (mut per_event_ns, mut long_ns, mut handover_ns) = (Vec::new(), Vec::new(), Vec::new());
    let mut no_fiber_ns = Vec::new();
    for _ in 0..args.rounds {
        let started = Instant::now();
        for _ in 0..args.events {
            for (store, handle) in &mut per_event {
                handle.call_async(&mut *store, (&data[..],)).await?;
            }
        }
        per_event_ns.push(started.elapsed().as_nanos() as f64 / events as f64);

        let started = Instant::now();
        for _ in 0..args.events {
            for (store, handle) in &mut without_fiber {
                handle.call(&mut *store, (&data[..],))?;
            }
        }
        no_fiber_ns.push(started.elapsed().as_nanos() as f64 / events as f64);

        let started = Instant::now();
        for _ in 0..args.events {
            for (call, inbox) in &mut long {
                *lock(inbox) = Some(data.clone());
                ensure!(poll_once(call.as_mut()).is_pending(), "run returned early");
            }
        }
        long_ns.push(started.elapsed().as_nanos() as f64 / events as f64);

        // What the connection-long shape's driver adds that `handle` does not have: a copy
        // of the event into its inbox, and the three locks `next-event` and the driver take.
        let started = Instant::now();
        for _ in 0..args.events {
            for ((_, inbox), ended) in long.iter().zip(&ends) {
                *lock(inbox) = Some(data.clone());
                std::hint::black_box(lock(inbox).take());
                std::hint::black_box(*lock(ended));
            }
        }
        handover_ns.push(started.elapsed().as_nanos() as f64 / events as f64);
    }

    // End every connection-long call and check that every event was echoed.
    for ((call, _), ended) in long.iter_mut().zip(&ends) {
        *lock(ended) = true;
        match poll_once(call.as_mut()) {
            Poll::Ready(store) => {
                let sent = store?.data().sent;
                ensure!(sent == args.rounds * args.events * args.size, "lost events");
            }
            Poll::Pending => bail!("run did not return at the end"),
        }
    }
    for (store, _) in per_event.iter().chain(&without_fiber) {
        let sent = store.data().sent;
        ensure!(sent == args.rounds * args.events * args.size, "lost events");
    }

    let mut ratios = shoal_bench::paired_ratios(&long_ns, &per_event_ns);
    let (per_event, long) = (median(&mut per_event_ns), median(&mut long_ns));
    let ratio = median(&mut ratios);
    println!(
        "{} instances in turn, {} B per event, medians of {} rounds:",
        args.instances, args.size, args.rounds
    );
    println!("| shape | ns per event |");
    println!("|---|---|");
    println!(
        "| a call per event (`handle`) | {:.0} |",
        per_event.unwrap_or(0.0)
    );
    println!(
        "| a call per event without a fiber (`handle`, synchronous) | {:.0} |",
        median(&mut no_fiber_ns).unwrap_or(0.0)
    );
    println!(
        "| one call per connection (`run` + `next-event`) | {:.0} |",
        long.unwrap_or(0.0)
    );
    println!(
        "| of which the benchmark's hand-over (a copy of the event, three locks) | {:.0} |",
        median(&mut handover_ns).unwrap_or(0.0)
    );
    println!(
        "one call per connection / a call per event: {:.2}",
        ratio.unwrap_or(0.0)
    );
    Ok(())
}
