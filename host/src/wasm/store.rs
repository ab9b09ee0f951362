//! What each connection's `Store` carries: the WASI context built from the listener's
//! grants, the output queue, the listener's mailboxes, the guest's log, the memory cap and
//! the CPU budget of the call in progress. The host side of each import is in
//! `wasm::imports`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::buffers;
use crate::config::listener::ServerConfig;
use crate::messages::local::Mailboxes;
use crate::messages::waits::MailboxWaits;
use crate::observe::stats::{ConnectionCpu, Live, LiveKind, Stats};
use crate::wasm::bindings::plugin::types::{Level, TlsInfo};
use crate::wasm::capabilities::Capabilities;
use crate::wasm::cpu::{ConnCpu, CpuGroup, CpuScheduler};
use crate::wasm::guest_log::{GuestLog, GuestStdio, RateLimiter};
use crate::wasm::limits::{CallBudget, MemoryCap};

/// The state of one connection's store.
pub(crate) struct ConnState {
    pub(super) conn_id: u64,
    pub(super) mailboxes: Mailboxes,
    pub(super) capabilities: Arc<Capabilities>,
    pub(super) memory: MemoryCap,
    /// Made on the first WASI call (see `WasiView::ctx`); boxed, so that the stores of
    /// guests that never make one do not carry its 272 bytes.
    wasi: Option<Box<WasiCtx>>,
    table: ResourceTable,
    pub(super) output: Vec<u8>,
    pub(super) output_limit: usize,
    /// Whether a send was refused for the output limit yet (logged once).
    pub(super) output_refused: bool,
    pub(super) writable: bool,
    pub(super) log: Arc<Mutex<GuestLog>>,
    stdio: [GuestStdio; 2],
    pub(super) budget: CallBudget,
    /// The guest's CPU: ticks, core slot, the listener's share.
    pub(super) cpu: Arc<ConnCpu>,
    /// Its CPU time, for itself and its listener's stats.
    pub(super) cpu_total: ConnectionCpu,
    /// Time its calls waited for room in other connections' mailboxes (not counted by the
    /// call timeout).
    pub(super) mailbox_waits: Arc<MailboxWaits>,
    /// The connection's TLS session, for `connection.tls`.
    pub(super) tls: Option<TlsInfo>,
    _live: Live,
}

/// The largest output buffer given back to the thread's pool once written.
const KEPT_OUTPUT_CAPACITY: usize = 64 << 10;

/// Most WASI resources (streams, pollables, …) one instance may hold: far more than a
/// connection handler needs, far fewer than would let a guest grow host memory without bound.
const MAX_RESOURCES: usize = 1024;

/// What a new [`ConnState`] needs to know.
pub(crate) struct ConnSettings {
    pub(crate) conn_id: u64,
    pub(crate) mailboxes: Mailboxes,
    pub(crate) capabilities: Arc<Capabilities>,
    pub(crate) memory_limit: usize,
    /// The plugin's name, for the guest's log lines.
    pub(crate) plugin: Arc<str>,
    pub(crate) output_limit: usize,
    pub(crate) cpu_budget: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) log_lines_per_second: u32,
    pub(crate) log_burst: u32,
    pub(crate) stats: Arc<Stats>,
    pub(crate) scheduler: Arc<CpuScheduler>,
    pub(crate) cpu_group: Arc<CpuGroup>,
    /// The connection's TLS session, if it has one (set after [`ConnSettings::new`]).
    pub(crate) tls: Option<TlsInfo>,
}

impl ConnSettings {
    /// The settings of connection `conn_id` of a listener with `config`, served by the plugin
    /// named `plugin` on a runtime with `scheduler`, charged to the listener's `cpu_group`.
    pub(crate) fn new(
        config: &ServerConfig,
        conn_id: u64,
        mailboxes: Mailboxes,
        plugin: Arc<str>,
        stats: Arc<Stats>,
        scheduler: Arc<CpuScheduler>,
        cpu_group: Arc<CpuGroup>,
    ) -> Self {
        Self {
            conn_id,
            mailboxes,
            capabilities: config.shared_capabilities(),
            memory_limit: config.memory_limit(),
            plugin,
            output_limit: config.output_buffer_limit(),
            cpu_budget: config.cpu_budget_per_call(),
            call_timeout: config.call_timeout(),
            log_lines_per_second: config.guest_log_lines_per_second(),
            log_burst: config.guest_log_burst(),
            stats,
            scheduler,
            cpu_group,
            tls: None,
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
            output_refused: false,
            writable: true,
            log,
            stdio,
            budget: CallBudget::new(settings.cpu_budget, settings.scheduler.clock().period()),
            cpu: Arc::new(ConnCpu::new(
                Arc::clone(&settings.scheduler),
                Arc::clone(&settings.cpu_group),
            )),
            cpu_total: ConnectionCpu::new(Arc::clone(&settings.stats), settings.conn_id),
            mailbox_waits: Arc::default(),
            tls: settings.tls.clone(),
            _live: Live::new(Arc::clone(&settings.stats), LiveKind::Instance),
        }
    }

    /// Bytes the guest queued since the last [`ConnState::clear_output`].
    pub(crate) fn output(&self) -> &[u8] {
        &self.output
    }

    /// Empty the output buffer once written: it goes back to the thread's pool (or, grown
    /// past [`KEPT_OUTPUT_CAPACITY`] by a burst, is freed).
    pub(crate) fn clear_output(&mut self) {
        let output = std::mem::take(&mut self.output);
        if output.capacity() <= KEPT_OUTPUT_CAPACITY {
            buffers::give_back(output);
        }
    }

    /// The output buffer, with room for `len` more bytes: lent from the thread's pool when
    /// the connection holds none.
    pub(super) fn output_for(&mut self, len: usize) -> &mut Vec<u8> {
        if self.output.capacity() == 0 {
            self.output = buffers::take(len);
        }
        &mut self.output
    }

    /// Take the queued output away (to queue it in the instance that takes the connection
    /// over).
    pub(crate) fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Queue `earlier` ahead of what is queued: output an older instance of the connection
    /// sent first.
    pub(crate) fn queue_output_first(&mut self, mut earlier: Vec<u8>) {
        if earlier.is_empty() {
            return;
        }
        earlier.extend_from_slice(&self.output);
        self.output = earlier;
    }

    /// The socket cannot be written any more: later `send`s fail with `closed`.
    pub(crate) fn mark_unwritable(&mut self) {
        self.writable = false;
        self.output.clear();
    }

    /// The cap on the instance's memory, as wasmtime's resource limiter.
    pub(crate) fn memory_cap(&mut self) -> &mut MemoryCap {
        &mut self.memory
    }

    /// The plugin's name, for log lines about this connection.
    pub(crate) fn plugin_name(&self) -> String {
        self.log
            .lock()
            .map(|log| log.plugin().to_string())
            .unwrap_or_default()
    }

    /// The guest's CPU state, shared with its call's poll wrapper and resume futures.
    pub(crate) fn cpu(&self) -> &Arc<ConnCpu> {
        &self.cpu
    }

    pub(crate) fn mailbox_waits(&self) -> &Arc<MailboxWaits> {
        &self.mailbox_waits
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        // A call dropped in the middle (its timeout, the shutdown deadline) may hold a slot.
        self.cpu.release_slot();
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::messages::types::MailboxLimits;

    /// Settings for a store made by hand in unit tests.
    pub(crate) fn settings(output_limit: usize) -> ConnSettings {
        ConnSettings {
            conn_id: 1,
            capabilities: Arc::default(),
            memory_limit: 1 << 20,
            mailboxes: Mailboxes::new(MailboxLimits {
                messages: 1,
                bytes: 1,
            }),
            plugin: Arc::from("test"),
            output_limit,
            cpu_budget: Duration::from_millis(10),
            call_timeout: Duration::from_secs(1),
            log_lines_per_second: 1,
            log_burst: 1,
            stats: Arc::default(),
            scheduler: Arc::new(CpuScheduler::new(
                Arc::new(crate::wasm::tick_clock::TickClock::new(
                    Duration::from_millis(1),
                )),
                2,
                true,
            )),
            cpu_group: Arc::new(CpuGroup::new(1)),
            tls: None,
        }
    }

    #[test]
    fn a_store_counts_as_a_live_instance_while_it_lives() {
        let settings = settings(8);
        let state = ConnState::new(&settings);
        assert_eq!(settings.stats.live_instances(), 1);
        drop(state);
        assert_eq!(settings.stats.live_instances(), 0);
    }

    #[test]
    fn a_written_output_buffer_goes_back_to_the_pool_unless_a_burst_grew_it() {
        let mut state = ConnState::new(&settings(1 << 20));
        state.output_for(512).extend_from_slice(&[7; 512]);
        let lent = state.output.as_ptr();
        state.clear_output();
        assert!(state.output().is_empty());
        assert_eq!(
            state.output.capacity(),
            0,
            "an idle connection holds no buffer"
        );
        assert_eq!(state.output_for(16).as_ptr(), lent, "lent again");
        state.output.resize(KEPT_OUTPUT_CAPACITY + 1, 7);
        state.clear_output();
        assert_eq!(state.output.capacity(), 0);
        // Pooled, it would be lent again: no fresh buffer has that much room.
        assert!(
            state.output_for(16).capacity() <= KEPT_OUTPUT_CAPACITY,
            "freed, not pooled"
        );
    }
}
