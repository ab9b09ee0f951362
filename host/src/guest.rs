//! What each connection's `Store` carries, and the host side of the plugin's imports.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use bytes::Bytes;

use crate::bindings::shoal::plugin::types::{Level, MessageError, Peer, SendError};
use crate::bindings::shoal::plugin::{config, connection, log, mailbox, types};
use crate::capabilities::Capabilities;
use crate::config::ServerConfig;
use crate::guest_log::{GuestLog, GuestStdio, RateLimiter};
use crate::mailbox::{self as mailboxes, Mailboxes};
use crate::plugin::Plugin;
use crate::stats::{Live, LiveKind, Stats};

/// The state of one connection's store: an empty WASI context, the output queue, the
/// listener's mailboxes, the guest's log and the CPU budget of the call in progress.
pub(crate) struct ConnState {
    conn_id: u64,
    mailboxes: Mailboxes,
    capabilities: Arc<Capabilities>,
    memory: MemoryCap,
    /// Made on the first WASI call (see `WasiView::ctx`); boxed, so that the stores of
    /// guests that never make one do not carry its 272 bytes.
    wasi: Option<Box<WasiCtx>>,
    table: ResourceTable,
    output: Vec<u8>,
    output_limit: usize,
    writable: bool,
    log: Arc<Mutex<GuestLog>>,
    stdio: [GuestStdio; 2],
    pub(crate) budget: CallBudget,
    _live: Live,
}

/// Most WASI resources (streams, pollables, …) one instance may hold: far more than a
/// connection handler needs, far fewer than would let a guest grow host memory without bound.
const MAX_RESOURCES: usize = 1024;

/// What a new [`ConnState`] needs to know.
pub(crate) struct ConnSettings {
    pub(crate) conn_id: u64,
    pub(crate) mailboxes: Mailboxes,
    pub(crate) capabilities: Arc<Capabilities>,
    pub(crate) memory_limit: usize,
    pub(crate) plugin: Arc<str>,
    pub(crate) output_limit: usize,
    pub(crate) cpu_budget: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) log_lines_per_second: u32,
    pub(crate) log_burst: u32,
    pub(crate) stats: Arc<Stats>,
}

impl ConnSettings {
    pub(crate) fn new(
        config: &ServerConfig,
        conn_id: u64,
        mailboxes: Mailboxes,
        plugin: &Plugin,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            conn_id,
            mailboxes,
            capabilities: config.shared_capabilities(),
            memory_limit: config.memory_limit(),
            plugin: plugin.shared_name(),
            output_limit: config.output_buffer_limit(),
            cpu_budget: config.cpu_budget_per_call(),
            call_timeout: config.call_timeout(),
            log_lines_per_second: config.guest_log_lines_per_second(),
            log_burst: config.guest_log_burst(),
            stats,
        }
    }
}

impl ConnState {
    pub(crate) fn new(settings: &ConnSettings) -> Self {
        let limiter = RateLimiter::new(
            settings.log_lines_per_second,
            settings.log_burst,
            Instant::now(),
        );
        let log = Arc::new(Mutex::new(GuestLog::new(
            settings.conn_id,
            Arc::clone(&settings.plugin),
            limiter,
        )));
        let stdio = [
            GuestStdio::new(Arc::clone(&log), Level::Info),
            GuestStdio::new(Arc::clone(&log), Level::Warn),
        ];
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            conn_id: settings.conn_id,
            mailboxes: settings.mailboxes.clone(),
            capabilities: Arc::clone(&settings.capabilities),
            memory: MemoryCap::new(settings.memory_limit),
            wasi: None,
            table,
            output: Vec::new(),
            output_limit: settings.output_limit,
            writable: true,
            log,
            stdio,
            budget: CallBudget::new(settings.cpu_budget),
            _live: Live::new(Arc::clone(&settings.stats), LiveKind::Instance),
        }
    }

    /// Bytes the guest queued since the last [`ConnState::clear_output`].
    pub(crate) fn output(&self) -> &[u8] {
        &self.output
    }

    pub(crate) fn clear_output(&mut self) {
        self.output.clear();
    }

    /// The socket cannot be written any more: later `send`s fail with `closed`.
    pub(crate) fn mark_unwritable(&mut self) {
        self.writable = false;
        self.output.clear();
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        for stream in &self.stdio {
            stream.flush_partial();
        }
    }
}

/// The WASI context of an instance: no sockets, arguments or stdin, ever; stdout and stderr
/// reach the log; environment variables and a read-only directory only as granted.
fn granted_wasi(stdio: &[GuestStdio; 2], grants: &Capabilities, log: &Mutex<GuestLog>) -> WasiCtx {
    let mut builder = WasiCtx::builder();
    builder
        .stdout(stdio[0].clone())
        .stderr(stdio[1].clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .envs(grants.env_vars());
    if let Some(dir) = grants.dir()
        // Checked when the config was built; the directory may have gone since.
        && let Err(error) = builder.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)
        && let Ok(mut log) = log.lock()
    {
        let host = dir.host.display();
        log.line(
            Level::Warn,
            &format!("granted directory {host} unavailable: {error:#}"),
        );
    }
    builder.build()
}

impl WasiView for ConnState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        // Built on the first WASI call: most connections of a plugin like echo never make
        // one, and building the context (random generators, clocks, stdio) costs microseconds.
        let (stdio, grants, log) = (&self.stdio, &self.capabilities, &self.log);
        WasiCtxView {
            ctx: self
                .wasi
                .get_or_insert_with(|| Box::new(granted_wasi(stdio, grants, log))),
            table: &mut self.table,
        }
    }
}

impl types::Host for ConnState {}

impl connection::Host for ConnState {
    fn send(&mut self, data: Vec<u8>) -> Result<(), SendError> {
        if !self.writable {
            return Err(SendError::Closed);
        }
        if self.output.len() + data.len() > self.output_limit {
            return Err(SendError::BufferFull);
        }
        if self.output.is_empty() {
            self.output = data;
        } else {
            self.output.extend_from_slice(&data);
        }
        Ok(())
    }
}

impl mailbox::Host for ConnState {
    fn send(&mut self, to: u64, payload: Vec<u8>) -> Result<(), MessageError> {
        self.mailboxes
            .send(self.conn_id, to, Bytes::from(payload))
            .map_err(|error| match error {
                mailboxes::MessageError::NoSuchConnection => MessageError::NoSuchConnection,
                mailboxes::MessageError::MailboxFull => MessageError::MailboxFull,
                mailboxes::MessageError::TooLarge => MessageError::TooLarge,
            })
    }

    fn broadcast(&mut self, payload: Vec<u8>) -> u32 {
        let delivered = self
            .mailboxes
            .broadcast(self.conn_id, &Bytes::from(payload));
        u32::try_from(delivered).unwrap_or(u32::MAX)
    }

    fn peers(&mut self) -> Vec<Peer> {
        self.mailboxes
            .peers()
            .into_iter()
            .map(|peer| Peer {
                id: peer.id,
                name: peer.name,
            })
            .collect()
    }

    fn set_name(&mut self, name: String) {
        self.mailboxes.set_name(self.conn_id, &name);
    }
}

impl config::Host for ConnState {
    fn get(&mut self, key: String) -> Option<String> {
        self.capabilities.config_value(&key).map(str::to_string)
    }

    fn entries(&mut self) -> Vec<(String, String)> {
        self.capabilities.config_values().to_vec()
    }
}

impl log::Host for ConnState {
    fn log(&mut self, level: Level, message: String) {
        if let Ok(mut log) = self.log.lock() {
            log.line(level, &message);
        }
    }
}

/// The per-instance cap on linear memory (and a bound on tables), as wasmtime's resource
/// limiter. A refused growth is remembered, so a trap that follows is reported as the memory
/// limit rather than as a plain trap.
pub(crate) struct MemoryCap {
    limit: usize,
    refused: bool,
    /// The sizes of the instance's memories, added up: what instantiation and each allowed
    /// `memory.grow` made them. (wasmtime reports a growth that fails after the limiter
    /// allowed it — the OS refusing memory — without saying which growth it was, so such a
    /// growth still counts.)
    bytes: usize,
}

/// Most elements a table may grow to: far more than compiled guests use.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl MemoryCap {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            refused: false,
            bytes: 0,
        }
    }

    /// The sizes of the instance's linear memories, added up.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The cap, when a growth past it was refused.
    pub(crate) fn refused(&self) -> Option<usize> {
        self.refused.then_some(self.limit)
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = desired <= self.limit;
        self.refused |= !allowed;
        if allowed {
            self.bytes += desired.saturating_sub(current);
        }
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

impl ConnState {
    pub(crate) fn memory_cap(&mut self) -> &mut MemoryCap {
        &mut self.memory
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.memory.bytes()
    }

    pub(crate) fn memory_refused(&self) -> Option<usize> {
        self.memory.refused()
    }
}

/// The CPU time one guest call may use, checked on every epoch tick.
///
/// Time counts only while the call runs on a thread: the interval from a resume (the call's
/// start, or the end of a yield) to the next tick is charged, time spent parked in the
/// executor queue is not.
pub(crate) struct CallBudget {
    limit: Duration,
    used: Duration,
    resumed_at: Arc<Mutex<Instant>>,
}

impl CallBudget {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            used: Duration::ZERO,
            resumed_at: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// A new call starts now with the whole budget.
    pub(crate) fn start(&mut self, now: Instant) {
        self.used = Duration::ZERO;
        self.set_resumed(now);
    }

    /// Charge the time since the last resume; `true` once the budget is spent.
    pub(crate) fn charge(&mut self, now: Instant) -> bool {
        let resumed_at = self.resumed_at.lock().map(|t| *t).unwrap_or(now);
        self.used += now.saturating_duration_since(resumed_at);
        self.used > self.limit
    }

    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// A handle the yield future uses to record when the call resumes.
    pub(crate) fn resume_clock(&self) -> Arc<Mutex<Instant>> {
        Arc::clone(&self.resumed_at)
    }

    fn set_resumed(&self, now: Instant) {
        if let Ok(mut resumed_at) = self.resumed_at.lock() {
            *resumed_at = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_charges_running_time_only() {
        let start = Instant::now();
        let mut budget = CallBudget::new(Duration::from_millis(10));
        budget.start(start);
        assert!(!budget.charge(start + Duration::from_millis(6)));
        // Parked for a second, then resumed: the wait is not charged.
        let resumed = start + Duration::from_secs(1);
        *budget.resume_clock().lock().expect("not poisoned") = resumed;
        assert!(!budget.charge(resumed + Duration::from_millis(3)));
        *budget.resume_clock().lock().expect("not poisoned") = resumed + Duration::from_millis(3);
        assert!(budget.charge(resumed + Duration::from_millis(5)));
    }

    #[test]
    fn send_respects_the_output_limit() {
        let settings = ConnSettings {
            conn_id: 1,
            capabilities: Arc::default(),
            memory_limit: 1 << 20,
            mailboxes: Mailboxes::new(crate::mailbox::MailboxLimits {
                messages: 1,
                bytes: 1,
            }),
            plugin: Arc::from("test"),
            output_limit: 8,
            cpu_budget: Duration::from_millis(10),
            call_timeout: Duration::from_secs(1),
            log_lines_per_second: 1,
            log_burst: 1,
            stats: Arc::default(),
        };
        let mut state = ConnState::new(&settings);
        assert_eq!(
            connection::Host::send(&mut state, b"12345".to_vec()),
            Ok(())
        );
        assert_eq!(
            connection::Host::send(&mut state, b"6789".to_vec()),
            Err(SendError::BufferFull)
        );
        assert_eq!(connection::Host::send(&mut state, b"678".to_vec()), Ok(()));
        assert_eq!(state.output(), b"12345678");
        state.mark_unwritable();
        assert_eq!(
            connection::Host::send(&mut state, b"x".to_vec()),
            Err(SendError::Closed)
        );
        assert_eq!(settings.stats.live_instances(), 1);
        drop(state);
        assert_eq!(settings.stats.live_instances(), 0);
    }
}
