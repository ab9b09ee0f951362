//! One listener: a bound socket, a handler factory (a plugin, usually) and a config, served
//! until a shutdown future resolves, then drained with a deadline.

use std::future::Future;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::listener::ServerConfig;
use crate::error::ServeError;
use crate::handler::HandlerFactory;
use crate::messages::local::Mailboxes;
use crate::messages::types::MailboxLimits;
use crate::observe::stats::{EndKind, Stats};
use crate::server::acceptor::{self, AcceptorPool};
use crate::server::connection::{self, ConnectionContext};
use crate::server::hooks::{ConnectionHandle, Hooks};
use crate::wasm::cpu::CpuGroup;
use crate::wasm::plugin::Plugin;

/// A shoal server for one listener: every accepted connection runs in its own instance of
/// the plugin.
///
/// ```no_run
/// use shoal_host::{Plugin, Runtime, RuntimeConfig, Server, ServerConfig};
///
/// # async fn run() -> anyhow::Result<()> {
/// let runtime = Runtime::new(RuntimeConfig::default())?;
/// let plugin = Plugin::from_file(&runtime, "target/plugins/echo.wasm")?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let server = Server::new(plugin, ServerConfig::builder().name("echo").build()?);
/// let stats = server.stats();
/// server.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// assert_eq!(stats.live_instances(), 0);
/// # Ok(())
/// # }
/// ```
///
/// Any [`HandlerFactory`] can serve in place of a plugin: `Server::new(shoal_host::native::Echo,
/// config)` runs the native echo baseline behind the same acceptor pool and connection task.
pub struct Server<F = Plugin> {
    config: ServerConfig,
    /// The settings connections start with: `config`, or what a reload put in its place.
    settings: Arc<ArcSwap<ServerConfig>>,
    factory: F,
    stats: Arc<Stats>,
    mailboxes: Mailboxes,
    cpu_group: Arc<CpuGroup>,
    hooks: Hooks,
    /// Whether `serve` warns when `max_connections` exceeds the instance pool; a node checks
    /// the sum over its listeners instead, once.
    check_pool: bool,
}

impl<F: HandlerFactory> Server<F> {
    /// A server that will make a handler with `factory` (a [`Plugin`], usually) for each
    /// connection, with `config`.
    #[must_use]
    pub fn new(factory: F, config: ServerConfig) -> Self {
        Self {
            mailboxes: Mailboxes::new(MailboxLimits::from(&config)),
            cpu_group: Arc::new(CpuGroup::new(config.cpu_share())),
            settings: Arc::new(ArcSwap::from_pointee(config.clone())),
            config,
            factory,
            stats: Arc::default(),
            hooks: Hooks::default(),
            check_pool: true,
        }
    }

    /// Leave the instance-pool check to the caller (a node, which checks all its listeners
    /// together).
    pub(crate) fn without_pool_check(mut self) -> Self {
        self.check_pool = false;
        self
    }

    /// Run `hook` when a connection opens: after its `init` kept it, before its first event
    /// (glisten's `with_init`). The [`ConnectionHandle`] can message the connection for as
    /// long as it lives. Replaces an earlier `on_open`.
    #[must_use]
    pub fn on_open(mut self, hook: impl Fn(&ConnectionHandle) + Send + Sync + 'static) -> Self {
        self.hooks.on_open = Some(Arc::new(hook));
        self
    }

    /// Run `hook` when a connection that opened has ended, after its `close` (glisten's
    /// `with_close`). Replaces an earlier `on_close`.
    #[must_use]
    pub fn on_close(mut self, hook: impl Fn(&ConnectionHandle) + Send + Sync + 'static) -> Self {
        self.hooks.on_close = Some(Arc::new(hook));
        self
    }

    /// The registry of this server's connections: send to one, broadcast to all, list them,
    /// from native code, while the server runs.
    #[must_use]
    pub fn mailboxes(&self) -> Mailboxes {
        self.mailboxes.clone()
    }

    /// The server's settings.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The settings new connections start with, which a reload replaces.
    pub(crate) fn settings(&self) -> Arc<ArcSwap<ServerConfig>> {
        Arc::clone(&self.settings)
    }

    /// Whether its factory can make handlers under its settings (see
    /// [`HandlerFactory::check`]).
    pub(crate) async fn check(&self) -> Result<(), String> {
        self.factory.check(&self.config).await
    }

    /// Most handlers its factory can have alive at once, if bounded (a plugin's instance pool).
    pub(crate) fn capacity(&self) -> Option<usize> {
        self.factory.capacity()
    }

    /// Live counters, readable while the server runs and after it stopped.
    #[must_use]
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Accept and serve connections on `listener` until `shutdown` resolves. Then stop
    /// accepting (the listener is closed, so new connections are refused), give every live
    /// guest `close(shutdown)`, write its last output, and return once all connections have
    /// ended or the config's `shutdown_timeout` has passed (remaining connections are dropped).
    ///
    /// # Errors
    ///
    /// [`ServeError::LocalAddr`] when the listener's address cannot be read.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let local = listener.local_addr().map_err(ServeError::LocalAddr)?;
        let shutdown_timeout = self.config.shutdown_timeout();
        let max_connections = self.config.max_connections();
        let wanted = Wanted::of(&self.config);
        if self.check_pool
            && let Some(capacity) = self.factory.capacity()
            && let Some(warning) = pool_shortfall(&[wanted], capacity)
        {
            tracing::warn!("{warning}");
        }
        let ctx = Arc::new(ConnectionContext {
            config: self.settings,
            factory: self.factory,
            stats: self.stats,
            mailboxes: self.mailboxes,
            cpu_group: self.cpu_group,
            hooks: self.hooks,
            shutdown: CancellationToken::new(),
            local: connection::fixed_local_address(Ok(local)),
            shutdown_deadline: std::sync::OnceLock::new(),
        });
        let connections = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let pool = Arc::new(AcceptorPool {
            listener: Arc::new(listener),
            permits: Arc::new(Semaphore::new(max_connections)),
            ctx: Arc::clone(&ctx),
            connections: connections.clone(),
            hard_stop: hard_stop.clone(),
        });
        let name = self.config.name();
        let instances = wanted.count;
        let hibernate_after = ctx.config.load().hibernate_after();
        tracing::info!(
            %local,
            plugin = ctx.factory.name(),
            listener = name,
            max_connections,
            instances,
            ?hibernate_after,
            "serving"
        );

        let supervisor = tokio::spawn(acceptor::supervise(Arc::clone(&pool)));
        // If this future is dropped before `shutdown` resolves, the detached acceptors and
        // connections still stop: dropping the guard cancels them as a shutdown would.
        let stop = Stop {
            shutdown: ctx.shutdown.clone(),
            mailboxes: ctx.mailboxes.clone(),
        };
        shutdown.await;
        tracing::info!(%local, live = ctx.stats.live_connections(), "shutting down");
        let deadline = tokio::time::Instant::now() + shutdown_timeout;
        let _ = ctx.shutdown_deadline.set(deadline);
        let cut_before = ctx.stats.ended(EndKind::ShutdownDeadline);
        stop.now();
        if let Err(error) = supervisor.await {
            tracing::error!("acceptor supervisor failed: {error}");
        }
        // Every acceptor has ended: dropping the pool closes the listening socket, so new
        // connections are refused from here on.
        drop(pool);

        connections.close();
        if tokio::time::timeout_at(deadline, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                live = ctx.stats.live_connections(),
                "shutdown deadline of {shutdown_timeout:?} passed; dropping the remaining connections"
            );
            hard_stop.cancel();
            connections.wait().await;
        }
        let cut = ctx.stats.ended(EndKind::ShutdownDeadline) - cut_before;
        if cut > 0 {
            tracing::warn!(
                %local,
                "{cut} connections closed at the shutdown deadline without their `close(shutdown)`"
            );
        }
        tracing::info!(%local, "stopped");
        Ok(())
    }
}

/// Stops a server's acceptors and connections: at shutdown, or when the `serve` future is
/// dropped early. Connections learn of it from their mailboxes, which close.
struct Stop {
    shutdown: CancellationToken,
    mailboxes: Mailboxes,
}

impl Stop {
    fn now(&self) {
        self.shutdown.cancel();
        self.mailboxes.close_all();
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.now();
    }
}

/// The instances one listener may have alive at once, and the setting that says so.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted<'a> {
    pub(crate) listener: &'a str,
    /// `max_instances`, or `max_connections` when that is not set.
    pub(crate) setting: &'static str,
    pub(crate) count: usize,
}

impl<'a> Wanted<'a> {
    pub(crate) fn of(config: &'a ServerConfig) -> Self {
        Self {
            listener: config.name(),
            setting: config.max_instances_setting(),
            count: config.max_instances(),
        }
    }
}

/// What to tell the operator when `listeners` may have more instances alive at once than
/// an instance pool of `capacity`, or `None` when the pool is large enough.
pub(crate) fn pool_shortfall(listeners: &[Wanted<'_>], capacity: usize) -> Option<String> {
    let wanted: usize = listeners.iter().map(|l| l.count).sum();
    if wanted <= capacity {
        return None;
    }
    let allowed = match listeners {
        [one] => format!("{} of `{}` is {}", one.setting, one.listener, one.count),
        _ => {
            let names: Vec<String> = listeners
                .iter()
                .map(|l| format!("`{}` ({} {})", l.listener, l.setting, l.count))
                .collect();
            format!("the listeners' {} add up to {wanted}", names.join(" + "))
        }
    };
    Some(format!(
        "{allowed}, but the instance pool holds {capacity}: when it is full, a new connection \
         is closed at once"
    ))
}

/// Run `plugin` on `listener` with the default [`ServerConfig`] until `shutdown` resolves.
/// See [`Server::serve`].
///
/// # Errors
///
/// See [`Server::serve`].
pub async fn serve(
    listener: TcpListener,
    plugin: Plugin,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Server::new(plugin, ServerConfig::default())
        .serve(listener, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted(listener: &str, count: usize) -> Wanted<'_> {
        Wanted {
            listener,
            setting: "max_connections",
            count,
        }
    }

    #[test]
    fn a_pool_large_enough_says_nothing() {
        let listeners = [wanted("echo", 100), wanted("chat", 50)];
        assert_eq!(pool_shortfall(&listeners, 150), None);
    }

    #[test]
    fn a_pool_too_small_for_one_listener_says_so() {
        let warning = pool_shortfall(&[wanted("default", 20_000)], 16_384);
        assert_eq!(
            warning.as_deref(),
            Some(
                "max_connections of `default` is 20000, but the instance pool holds 16384: \
                 when it is full, a new connection is closed at once"
            )
        );
    }

    #[test]
    fn a_pool_too_small_names_every_listener_and_the_sum() {
        let chat = Wanted {
            setting: "max_instances",
            ..wanted("chat", 1000)
        };
        let warning = pool_shortfall(&[wanted("echo", 16_384), chat], 16_384);
        assert_eq!(
            warning.as_deref(),
            Some(
                "the listeners' `echo` (max_connections 16384) + `chat` (max_instances 1000) \
                 add up to 17384, but the instance pool holds 16384: when it is full, a new \
                 connection is closed at once"
            )
        );
    }
}
