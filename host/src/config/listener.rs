//! Settings of one listener: its name, acceptor pool and per-connection limits.

use std::sync::Arc;
use std::time::Duration;

use crate::config::units::{count, duration, size};
use crate::error::ConfigError;
use crate::tls::settings::Tls;
use crate::wasm::capabilities::Capabilities;

/// The range each setting may take, checked by [`ServerConfigBuilder::build`]: wide enough
/// for any real use, narrow enough that no value can exhaust the host (a pool of 10^11
/// acceptor tasks, a 1 GiB read buffer per read, a timeout that overflows the clock).
pub mod bounds {
    use std::ops::RangeInclusive;
    use std::time::Duration;

    /// Bytes of a listener's name (it is written into each of its log lines and handed to
    /// every guest).
    pub const NAME_BYTES: RangeInclusive<usize> = 1..=256;
    /// Acceptor tasks of one listener: more than the cores could ever use.
    pub const POOL_SIZE: RangeInclusive<usize> = 1..=1024;
    /// Connections of one listener (far past what one process can hold: ~19k sockets here).
    pub const MAX_CONNECTIONS: RangeInclusive<usize> = 1..=1 << 20;
    /// `cpu_budget_per_call`, `call_timeout` and `write_timeout`.
    pub const CALL_TIME: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(3600);
    /// `hibernate_after`: from 1 ms to a week.
    pub const HIBERNATE_AFTER: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(7 * 24 * 3600);
    /// `idle_timeout`: up to a week.
    pub const IDLE_TIMEOUT: RangeInclusive<Duration> =
        Duration::from_millis(1)..=Duration::from_secs(7 * 24 * 3600);
    /// `shutdown_timeout`: 0 drops open connections at once.
    pub const SHUTDOWN_TIMEOUT: RangeInclusive<Duration> =
        Duration::ZERO..=Duration::from_secs(3600);
    /// `hibernate_state_limit`: up to the largest linear memory (0: only empty states).
    pub const HIBERNATE_STATE_LIMIT: RangeInclusive<usize> = 0..=4 << 30;
    /// Bytes a guest may queue per call.
    pub const OUTPUT_BUFFER_LIMIT: RangeInclusive<usize> = 1 << 10..=256 << 20;
    /// Bytes read for one `handle` call (each read lends a buffer this large).
    pub const READ_BUFFER_SIZE: RangeInclusive<usize> = 64..=16 << 20;
    /// Messages one mailbox holds.
    pub const MAILBOX_MESSAGES: RangeInclusive<usize> = 1..=1 << 20;
    /// Payload bytes one mailbox holds.
    pub const MAILBOX_BYTES: RangeInclusive<usize> = 64..=256 << 20;
    /// Linear memory per instance: one Wasm page to the 32-bit address space.
    pub const MEMORY_LIMIT: RangeInclusive<usize> = 64 << 10..=4 << 30;
    /// A listener's CPU weight.
    pub const CPU_SHARE: RangeInclusive<u32> = 1..=1000;
    /// Guest log lines per second per connection (0 silences the guest).
    pub const LOG_RATE: RangeInclusive<u32> = 0..=10_000;
    /// Guest log lines in a burst.
    pub const LOG_BURST: RangeInclusive<u32> = 0..=100_000;
    /// `drain_timeout`: how long connections may stay on a replaced plugin version.
    pub const DRAIN_TIMEOUT: RangeInclusive<Duration> =
        Duration::ZERO..=Duration::from_secs(7 * 24 * 3600);
    /// The first connections of a new plugin version watched for faults.
    pub const ROLLBACK_WINDOW: RangeInclusive<usize> = 1..=100_000;
    /// The share of those that may fault before the version is rolled back.
    pub const ROLLBACK_FAULT_RATIO: RangeInclusive<f64> = 0.0..=1.0;
}

/// `value` of `field` within `range`, or the error that says the range (written by `show`).
fn check<T: PartialOrd>(
    field: &'static str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
    show: impl Fn(&T) -> String,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    let (low, high) = (show(range.start()), show(range.end()));
    Err(ConfigError::new(
        field,
        format!("must be between {low} and {high}"),
    ))
}

/// Settings of one listener, validated once by [`ServerConfigBuilder::build`].
///
/// ```
/// use std::time::Duration;
/// use shoal_host::ServerConfig;
///
/// let config = ServerConfig::builder()
///     .name("echo")
///     .pool_size(4)
///     .cpu_budget_per_call(Duration::from_millis(50))
///     .build()?;
/// assert_eq!(config.max_connections(), 16_384);
/// # Ok::<(), shoal_host::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    name: String,
    pool_size: usize,
    max_connections: usize,
    max_instances: Option<usize>,
    cpu_budget_per_call: Duration,
    call_timeout: Duration,
    idle_timeout: Duration,
    write_timeout: Duration,
    output_buffer_limit: usize,
    read_buffer_size: usize,
    mailbox_messages: usize,
    mailbox_bytes: usize,
    cpu_share: u32,
    memory_limit: usize,
    capabilities: Arc<Capabilities>,
    shutdown_timeout: Duration,
    guest_log_lines_per_second: u32,
    guest_log_burst: u32,
    rollback_window: usize,
    rollback_fault_ratio: f64,
    drain_timeout: Option<Duration>,
    handoff: HandoffPolicy,
    hibernate_after: Option<Duration>,
    hibernate_state_limit: usize,
    tls: Option<Arc<Tls>>,
}

/// When the connections of a replaced plugin version move to the new version with their
/// state, for plugins (old and new) that export `handoff` (see `wit/plugin.wit`). A
/// connection whose plugin cannot hand off, or whose new version refuses its state, stays
/// on its version until it ends or the drain deadline closes it (`close(upgrade)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum HandoffPolicy {
    /// At the listener's [`drain_timeout`](ServerConfig::drain_timeout) (`"at-drain"`, the
    /// default): connections that cannot move are closed then.
    #[default]
    AtDrain,
    /// As soon as the new version is current (`"immediate"`).
    Immediate,
    /// Never (`"never"`): at the drain deadline connections get `close(upgrade)`.
    Never,
}

impl ServerConfig {
    /// A builder with every default set.
    #[must_use]
    pub fn builder() -> ServerConfigBuilder {
        ServerConfigBuilder {
            config: Self::default(),
        }
    }

    /// The listener's name, handed to every guest in `conn-info`.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of acceptor tasks.
    #[must_use]
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// Most connections open at once on this listener.
    #[must_use]
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    /// Most of its connections awake at once, each with an instance: `max_connections`
    /// unless set lower — then the others must hibernate
    /// ([`hibernate_after`](Self::hibernate_after)), and a connection that would be one too
    /// many — waking, or new — waits its turn, up to the call timeout.
    #[must_use]
    pub fn max_instances(&self) -> usize {
        self.max_instances.unwrap_or(self.max_connections)
    }

    /// The setting [`max_instances`](Self::max_instances) comes from, for messages.
    #[must_use]
    pub fn max_instances_setting(&self) -> &'static str {
        if self.max_instances.is_some() {
            "max_instances"
        } else {
            "max_connections"
        }
    }

    /// Most time one guest call may run.
    #[must_use]
    pub fn cpu_budget_per_call(&self) -> Duration {
        self.cpu_budget_per_call
    }

    /// Most wall-clock time one guest call may take, waits included.
    #[must_use]
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// How long a client may send nothing before its connection is closed.
    #[must_use]
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// How long writing a guest's output may wait for a client that does not read.
    #[must_use]
    pub fn write_timeout(&self) -> Duration {
        self.write_timeout
    }

    /// Most bytes a guest may queue with `send` during one call.
    #[must_use]
    pub fn output_buffer_limit(&self) -> usize {
        self.output_buffer_limit
    }

    /// Most bytes read from the socket for one `handle` call.
    #[must_use]
    pub fn read_buffer_size(&self) -> usize {
        self.read_buffer_size
    }

    /// How long shutdown waits for open connections before dropping them.
    #[must_use]
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// Sustained guest log lines per second per connection.
    #[must_use]
    pub fn guest_log_lines_per_second(&self) -> u32 {
        self.guest_log_lines_per_second
    }

    /// Guest log lines a connection may write in a burst before the rate applies.
    #[must_use]
    pub fn guest_log_burst(&self) -> u32 {
        self.guest_log_burst
    }

    /// How many of a new version's first connections are watched for faults.
    #[must_use]
    pub fn rollback_window(&self) -> usize {
        self.rollback_window
    }

    /// The share of a new version's first [`rollback_window`](Self::rollback_window)
    /// connections that may fault (trap, CPU budget, call timeout, memory limit); past it the
    /// previous version is made current again.
    #[must_use]
    pub fn rollback_fault_ratio(&self) -> f64 {
        self.rollback_fault_ratio
    }

    /// How long connections may stay on a plugin version after a swap replaced it; then they
    /// move to the new version if their plugin can hand off (see [`HandoffPolicy`]), or are
    /// closed (`close(upgrade)`, their output flushed). `None`: until they end.
    #[must_use]
    pub fn drain_timeout(&self) -> Option<Duration> {
        self.drain_timeout
    }

    /// When connections of a replaced version move to the new one with their state.
    #[must_use]
    pub fn handoff(&self) -> HandoffPolicy {
        self.handoff
    }

    /// How long a connection stays idle (no byte from its client, no message, no output
    /// pending) before it hibernates: its plugin's `handoff.snapshot` is kept and its
    /// instance given back, until the next byte or message wakes it on the listener's current
    /// version (`handoff.resume`). `None` (the default): connections never hibernate, and a
    /// plugin without `handoff` never does.
    #[must_use]
    pub fn hibernate_after(&self) -> Option<Duration> {
        self.hibernate_after
    }

    /// Largest state a hibernating connection may keep, in bytes (default 64 KiB): a
    /// connection whose `snapshot` is larger stays awake (and tries again after another
    /// `hibernate_after`). What sleepers keep is counted in
    /// [`Stats::asleep_bytes`](crate::Stats::asleep_bytes); this bounds it by
    /// `max_connections` times the limit.
    #[must_use]
    pub fn hibernate_state_limit(&self) -> usize {
        self.hibernate_state_limit
    }

    /// Most messages one connection's mailbox holds.
    #[must_use]
    pub fn mailbox_messages(&self) -> usize {
        self.mailbox_messages
    }

    /// Most payload bytes one connection's mailbox holds (also the largest message).
    #[must_use]
    pub fn mailbox_bytes(&self) -> usize {
        self.mailbox_bytes
    }

    /// The listener's weight when the cores are shared between listeners whose guests want
    /// them at once (see [`RuntimeConfigBuilder::cpu_shares`](crate::RuntimeConfigBuilder::cpu_shares)).
    #[must_use]
    pub fn cpu_share(&self) -> u32 {
        self.cpu_share
    }

    /// Most linear memory one instance may have, in bytes.
    #[must_use]
    pub fn memory_limit(&self) -> usize {
        self.memory_limit
    }

    /// What the listener's guests are granted beyond their connection.
    #[must_use]
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub(crate) fn shared_capabilities(&self) -> Arc<Capabilities> {
        Arc::clone(&self.capabilities)
    }

    /// The listener's TLS settings: `None` serves plain TCP.
    #[must_use]
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_deref()
    }

    pub(crate) fn shared_tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }
}

impl Default for ServerConfig {
    /// The defaults (each setting's allowed range is in [`bounds`]):
    ///
    /// * `name`: `"default"`;
    /// * `pool_size`: 10 acceptor tasks;
    /// * `max_connections`: 16,384 (past it, new connections wait in the kernel's backlog);
    /// * `cpu_budget_per_call`: 100 ms of CPU time, counted in epoch ticks (a call running
    ///   longer traps and ends its connection; time the process or thread is not running is
    ///   not counted);
    /// * `cpu_share`: 1 — the listener's weight when listeners' guests want the cores at once
    ///   (a listener of weight 3 beside one of weight 1 gets three quarters);
    /// * `call_timeout`: 5 s of wall-clock time per call, waits included (same outcome);
    /// * `idle_timeout`: 60 s without a byte from the client (then `close(idle-timeout)`);
    /// * `write_timeout`: 30 s for a client to take a call's output (then
    ///   `close(limit("write timeout"))`);
    /// * `output_buffer_limit`: 1 MiB queued per call (past it `send` returns `buffer-full`);
    /// * `read_buffer_size`: 64 KiB per read;
    /// * `mailbox_messages`: 1,024 and `mailbox_bytes`: 1 MiB per connection (a message that
    ///   does not fit is refused with `mailbox-full` and the receiver's connection ends with
    ///   `close(limit("mailbox full"))`);
    /// * `memory_limit`: 64 MiB of linear memory per instance (a `memory.grow` past it fails;
    ///   it cannot exceed the runtime's `max_memory_bytes`);
    /// * `capabilities`: none — no environment variable, configuration value or file.
    /// * `shutdown_timeout`: 15 s;
    /// * guest log: 20 lines per second per connection after a burst of 100;
    /// * rollback: a new version whose first 20 connections fault more than half the time
    ///   (`rollback_window`, `rollback_fault_ratio` 0.5) is replaced by the previous one;
    /// * `tls`: none, plain TCP.
    fn default() -> Self {
        Self {
            name: "default".to_string(),
            pool_size: 10,
            max_connections: 16_384,
            max_instances: None,
            cpu_budget_per_call: Duration::from_millis(100),
            call_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            output_buffer_limit: 1 << 20,
            read_buffer_size: 64 << 10,
            mailbox_messages: 1024,
            mailbox_bytes: 1 << 20,
            cpu_share: 1,
            memory_limit: 64 << 20,
            capabilities: Arc::default(),
            shutdown_timeout: Duration::from_secs(15),
            guest_log_lines_per_second: 20,
            guest_log_burst: 100,
            rollback_window: 20,
            rollback_fault_ratio: 0.5,
            drain_timeout: None,
            handoff: HandoffPolicy::AtDrain,
            hibernate_after: None,
            hibernate_state_limit: 64 << 10,
            tls: None,
        }
    }
}

/// Builds a [`ServerConfig`]; see [`ServerConfig::default`] for the defaults.
#[derive(Debug, Clone)]
pub struct ServerConfigBuilder {
    config: ServerConfig,
}

impl ServerConfigBuilder {
    /// The listener's name (default `"default"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Number of acceptor tasks (default 10).
    #[must_use]
    pub fn pool_size(mut self, size: usize) -> Self {
        self.config.pool_size = size;
        self
    }

    /// Most connections open at once (default 16,384).
    #[must_use]
    pub fn max_connections(mut self, count: usize) -> Self {
        self.config.max_connections = count;
        self
    }

    /// Most connections awake at once (default: `max_connections`); see
    /// [`ServerConfig::max_instances`].
    #[must_use]
    pub fn max_instances(mut self, count: usize) -> Self {
        self.config.max_instances = Some(count);
        self
    }

    /// Most time one guest call may run (default 100 ms).
    #[must_use]
    pub fn cpu_budget_per_call(mut self, budget: Duration) -> Self {
        self.config.cpu_budget_per_call = budget;
        self
    }

    /// Most wall-clock time per guest call, waits included (default 5 s).
    #[must_use]
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.config.call_timeout = timeout;
        self
    }

    /// How long a client may stay silent (default 60 s).
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// How long writing output may wait for a client that does not read (default 30 s).
    #[must_use]
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// Most bytes a guest may queue during one call (default 1 MiB).
    #[must_use]
    pub fn output_buffer_limit(mut self, bytes: usize) -> Self {
        self.config.output_buffer_limit = bytes;
        self
    }

    /// Most bytes read for one `handle` call (default 64 KiB).
    #[must_use]
    pub fn read_buffer_size(mut self, bytes: usize) -> Self {
        self.config.read_buffer_size = bytes;
        self
    }

    /// How long shutdown waits for open connections (default 15 s).
    #[must_use]
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// Guest log rate per connection: lines per second after a burst (default 20 and 100).
    #[must_use]
    pub fn guest_log_rate(mut self, lines_per_second: u32, burst: u32) -> Self {
        self.config.guest_log_lines_per_second = lines_per_second;
        self.config.guest_log_burst = burst;
        self
    }

    /// Close connections still on a replaced plugin version this long after the swap
    /// (default: never; they run until they end).
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = Some(timeout);
        self
    }

    /// When connections of a replaced version move to the new one (default
    /// [`HandoffPolicy::AtDrain`]).
    #[must_use]
    pub fn handoff(mut self, policy: HandoffPolicy) -> Self {
        self.config.handoff = policy;
        self
    }

    /// Hibernate connections idle this long (default: never); see
    /// [`ServerConfig::hibernate_after`].
    #[must_use]
    pub fn hibernate_after(mut self, after: Duration) -> Self {
        self.config.hibernate_after = Some(after);
        self
    }

    /// Largest state a hibernating connection may keep (default 64 KiB); see
    /// [`ServerConfig::hibernate_state_limit`].
    #[must_use]
    pub fn hibernate_state_limit(mut self, bytes: usize) -> Self {
        self.config.hibernate_state_limit = bytes;
        self
    }

    /// A new version is rolled back when more than `fault_ratio` of its first `window`
    /// connections fault (defaults 20 and 0.5).
    #[must_use]
    pub fn rollback(mut self, window: usize, fault_ratio: f64) -> Self {
        self.config.rollback_window = window;
        self.config.rollback_fault_ratio = fault_ratio;
        self
    }

    /// Most messages one connection's mailbox holds (default 1,024).
    #[must_use]
    pub fn mailbox_messages(mut self, count: usize) -> Self {
        self.config.mailbox_messages = count;
        self
    }

    /// Most payload bytes one connection's mailbox holds, and so the largest message
    /// (default 1 MiB).
    #[must_use]
    pub fn mailbox_bytes(mut self, bytes: usize) -> Self {
        self.config.mailbox_bytes = bytes;
        self
    }

    /// The listener's weight when its guests and other listeners' want the cores at once
    /// (default 1, at most 1,000): while several listeners are active, each may hold at most
    /// its weighted part of the cores, and CPU-bound guests take turns by CPU used per weight.
    #[must_use]
    pub fn cpu_share(mut self, weight: u32) -> Self {
        self.config.cpu_share = weight;
        self
    }

    /// Most linear memory one instance may have (default 64 MiB): `memory.grow` past it fails,
    /// which a Rust guest turns into a trap.
    #[must_use]
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.config.memory_limit = bytes;
        self
    }

    /// Serve TLS with these certificates (see [`Tls::load`]); default: plain TCP. Every
    /// connection's handshake must finish within its `handshake_timeout` before its guest
    /// is made.
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.config.tls = Some(Arc::new(tls));
        self
    }

    /// What the listener's guests are granted (default: nothing).
    #[must_use]
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.config.capabilities = Arc::new(capabilities);
        self
    }

    /// Check the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that cannot work and what to change.
    pub fn build(self) -> Result<ServerConfig, ConfigError> {
        let c = &self.config;
        if c.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if c.name.len() > *bounds::NAME_BYTES.end() {
            let reason = format!("must be at most {} bytes", bounds::NAME_BYTES.end());
            return Err(ConfigError::new("name", reason));
        }
        if let Some(control) = c.name.chars().find(|c| c.is_control()) {
            // A newline in a name would forge lines in the log.
            let reason = format!("must not contain a control character (it has {control:?})");
            return Err(ConfigError::new("name", reason));
        }
        check("pool_size", c.pool_size, &bounds::POOL_SIZE, count)?;
        check(
            "max_connections",
            c.max_connections,
            &bounds::MAX_CONNECTIONS,
            count,
        )?;
        if let Some(instances) = c.max_instances {
            check("max_instances", instances, &bounds::MAX_CONNECTIONS, count)?;
            if instances > c.max_connections {
                return Err(ConfigError::new(
                    "max_instances",
                    format!("must be at most max_connections ({})", c.max_connections),
                ));
            }
        }
        let call = &bounds::CALL_TIME;
        check("cpu_budget_per_call", c.cpu_budget_per_call, call, duration)?;
        check("call_timeout", c.call_timeout, call, duration)?;
        check("write_timeout", c.write_timeout, call, duration)?;
        check(
            "idle_timeout",
            c.idle_timeout,
            &bounds::IDLE_TIMEOUT,
            duration,
        )?;
        let shutdown = &bounds::SHUTDOWN_TIMEOUT;
        check("shutdown_timeout", c.shutdown_timeout, shutdown, duration)?;
        let output = &bounds::OUTPUT_BUFFER_LIMIT;
        check("output_buffer_limit", c.output_buffer_limit, output, size)?;
        check(
            "read_buffer_size",
            c.read_buffer_size,
            &bounds::READ_BUFFER_SIZE,
            size,
        )?;
        let messages = &bounds::MAILBOX_MESSAGES;
        check("mailbox_messages", c.mailbox_messages, messages, count)?;
        check(
            "mailbox_bytes",
            c.mailbox_bytes,
            &bounds::MAILBOX_BYTES,
            size,
        )?;
        check("memory_limit", c.memory_limit, &bounds::MEMORY_LIMIT, size)?;
        check("cpu_share", c.cpu_share, &bounds::CPU_SHARE, count)?;
        let rate = c.guest_log_lines_per_second;
        check("guest_log_lines_per_second", rate, &bounds::LOG_RATE, count)?;
        check(
            "guest_log_burst",
            c.guest_log_burst,
            &bounds::LOG_BURST,
            count,
        )?;
        if let Some(drain) = c.drain_timeout {
            check("drain_timeout", drain, &bounds::DRAIN_TIMEOUT, duration)?;
        }
        if let Some(after) = c.hibernate_after {
            let bounds = &bounds::HIBERNATE_AFTER;
            check("hibernate_after", after, bounds, duration)?;
        }
        let state = &bounds::HIBERNATE_STATE_LIMIT;
        check(
            "hibernate_state_limit",
            c.hibernate_state_limit,
            state,
            size,
        )?;
        let window = &bounds::ROLLBACK_WINDOW;
        check("rollback_window", c.rollback_window, window, count)?;
        let ratio = &bounds::ROLLBACK_FAULT_RATIO;
        check("rollback_fault_ratio", c.rollback_fault_ratio, ratio, count)?;
        if let Some(dir) = c.capabilities.dir() {
            if !dir.guest.starts_with('/') {
                return Err(ConfigError::new(
                    "read_only_dir",
                    format!("the guest path {:?} must be absolute", dir.guest),
                ));
            }
            if !dir.host.is_dir() {
                return Err(ConfigError::new(
                    "read_only_dir",
                    format!("{} is not a directory on this host", dir.host.display()),
                ));
            }
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = ServerConfig::builder().build();
        let Ok(config) = config else {
            panic!("defaults must be valid: {config:?}");
        };
        assert_eq!(config.pool_size(), 10);
        assert_eq!(config.max_connections(), 16_384);
        assert_eq!(config.cpu_budget_per_call(), Duration::from_millis(100));
    }

    #[test]
    fn zero_pool_is_refused_naming_the_field() {
        let err = ServerConfig::builder().pool_size(0).build().err();
        assert_eq!(err.as_ref().map(ConfigError::field), Some("pool_size"));
        assert_eq!(
            err.map(|e| e.to_string()).as_deref(),
            Some("invalid `pool_size`: must be between 1 and 1024")
        );
    }

    #[test]
    fn values_that_cannot_work_are_refused_before_serving() {
        let unlimited = ServerConfig::builder()
            .max_connections(usize::MAX)
            .build()
            .err();
        assert_eq!(unlimited.map(|e| e.field()), Some("max_connections"));
        let huge_read = ServerConfig::builder()
            .read_buffer_size(usize::MAX)
            .build()
            .err();
        assert_eq!(huge_read.map(|e| e.field()), Some("read_buffer_size"));
        let no_idle = ServerConfig::builder()
            .idle_timeout(Duration::ZERO)
            .build()
            .err();
        assert_eq!(no_idle.map(|e| e.field()), Some("idle_timeout"));
        let no_mailbox = ServerConfig::builder().mailbox_messages(0).build().err();
        assert_eq!(no_mailbox.map(|e| e.field()), Some("mailbox_messages"));
    }

    #[test]
    fn every_numeric_setting_is_bounded_above() {
        let huge = Duration::from_secs(1 << 40);
        let cases = [
            (
                "pool_size",
                ServerConfig::builder().pool_size(99_999_999_999),
            ),
            (
                "cpu_budget_per_call",
                ServerConfig::builder().cpu_budget_per_call(huge),
            ),
            ("call_timeout", ServerConfig::builder().call_timeout(huge)),
            ("idle_timeout", ServerConfig::builder().idle_timeout(huge)),
            ("write_timeout", ServerConfig::builder().write_timeout(huge)),
            (
                "shutdown_timeout",
                ServerConfig::builder().shutdown_timeout(huge),
            ),
            (
                "read_buffer_size",
                ServerConfig::builder().read_buffer_size(1 << 30),
            ),
            (
                "memory_limit",
                ServerConfig::builder().memory_limit(99_999_999_999),
            ),
            (
                "guest_log_lines_per_second",
                ServerConfig::builder().guest_log_rate(u32::MAX, 100),
            ),
            (
                "guest_log_burst",
                ServerConfig::builder().guest_log_rate(20, u32::MAX),
            ),
        ];
        for (field, builder) in cases {
            let refused = builder.build().err();
            assert_eq!(
                refused.as_ref().map(ConfigError::field),
                Some(field),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn each_bound_itself_is_accepted() {
        let largest = ServerConfig::builder()
            .pool_size(1024)
            .max_connections(1 << 20)
            .cpu_budget_per_call(Duration::from_secs(3600))
            .call_timeout(Duration::from_secs(3600))
            .idle_timeout(Duration::from_secs(7 * 24 * 3600))
            .write_timeout(Duration::from_secs(3600))
            .shutdown_timeout(Duration::from_secs(3600))
            .output_buffer_limit(256 << 20)
            .read_buffer_size(16 << 20)
            .mailbox_messages(1 << 20)
            .mailbox_bytes(256 << 20)
            .memory_limit(4 << 30)
            .cpu_share(1000)
            .guest_log_rate(10_000, 100_000)
            .build();
        assert!(largest.is_ok(), "{largest:?}");
        let smallest = ServerConfig::builder()
            .pool_size(1)
            .max_connections(1)
            .cpu_budget_per_call(Duration::from_millis(1))
            .call_timeout(Duration::from_millis(1))
            .idle_timeout(Duration::from_millis(1))
            .write_timeout(Duration::from_millis(1))
            .shutdown_timeout(Duration::ZERO)
            .output_buffer_limit(1024)
            .read_buffer_size(64)
            .mailbox_messages(1)
            .mailbox_bytes(64)
            .memory_limit(64 << 10)
            .cpu_share(1)
            .guest_log_rate(0, 0)
            .build();
        assert!(smallest.is_ok(), "{smallest:?}");
    }

    #[test]
    fn zero_budget_is_refused() {
        let err = ServerConfig::builder()
            .cpu_budget_per_call(Duration::ZERO)
            .build()
            .err();
        assert_eq!(err.map(|e| e.field()), Some("cpu_budget_per_call"));
    }
    #[test]
    fn max_instances_defaults_to_max_connections_and_stays_below_it() {
        let default = ServerConfig::builder().max_connections(100).build();
        assert_eq!(default.map(|c| c.max_instances()).ok(), Some(100));
        let fewer = ServerConfig::builder()
            .max_connections(100)
            .max_instances(10)
            .build();
        assert_eq!(fewer.map(|c| c.max_instances()).ok(), Some(10));
        let more = ServerConfig::builder()
            .max_connections(100)
            .max_instances(101)
            .build()
            .err();
        assert_eq!(more.map(|e| e.field()), Some("max_instances"));
    }

    #[test]
    fn hibernate_after_is_bounded() {
        let never = ServerConfig::builder().build();
        assert_eq!(never.map(|c| c.hibernate_after()).ok(), Some(None));
        let zero = ServerConfig::builder()
            .hibernate_after(Duration::ZERO)
            .build()
            .err();
        assert_eq!(zero.map(|e| e.field()), Some("hibernate_after"));
    }
}
