//! The Wasm engines every plugin of a process shares: compilation settings, the pooling
//! instance allocators, the epoch ticker that keeps guests from holding a thread, the linker
//! every plugin is linked with, and the compile cache.
//!
//! There are two engines, because copy-on-write memory images pay for some guests and not
//! for others (BENCHMARKS.md, issue 14): a guest whose memory starts with megabytes of data
//! (JavaScript, Python) is mapped copy-on-write from its image, a small guest (Rust, C) has
//! its few kilobytes copied — an image mapping per instance would cost it kernel memory maps
//! (`vm.max_map_count`) for no gain. Wasmtime sets copy-on-write per engine, so each plugin
//! is compiled for the engine its image size picks; the second engine starts with the first
//! plugin that needs it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ProfilingStrategy,
};

use crate::error::{ConfigError, RuntimeError};
use crate::wasm::cache::CompileCache;
use crate::wasm::cpu::CpuScheduler;
use crate::wasm::imports;
use crate::wasm::store::ConnState;
use crate::wasm::tick_clock::TickClock;

/// Settings of a [`Runtime`], shared by every listener and plugin of a process.
///
/// Built with [`RuntimeConfig::builder`]; every field has a documented default.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    max_instances: u32,
    max_memory_bytes: usize,
    core_instances_per_component: u32,
    epoch_tick: Duration,
    copy_on_write_above: Option<usize>,
    copy_on_write_instances: u32,
    copy_on_write_keep_resident_bytes: usize,
    keep_resident_bytes: usize,
    cache_dir: Option<PathBuf>,
    cpu_shares: bool,
    cpu_slots: usize,
    max_plugin_bytes: usize,
    compile_progress_every: Duration,
}

impl RuntimeConfig {
    /// The default size of the instance pool, and the most a [`Node`](crate::Node) sizes it
    /// to: each slot costs kernel memory mappings (a fiber stack with its guard page, memory
    /// and table slots), and `vm.max_map_count` (65,530 by default on Linux) bounds them per
    /// process — a pool of 32,768 failed at start here.
    pub const DEFAULT_MAX_INSTANCES: u32 = 16_384;

    /// A builder with every default set.
    #[must_use]
    pub fn builder() -> RuntimeConfigBuilder {
        RuntimeConfigBuilder {
            config: Self::default(),
        }
    }

    /// Most plugin instances (so connections) alive at once, across every listener.
    #[must_use]
    pub fn max_instances(&self) -> u32 {
        self.max_instances
    }

    /// Core Wasm instances one component may create.
    #[must_use]
    pub fn core_instances_per_component(&self) -> u32 {
        self.core_instances_per_component
    }

    /// Largest linear memory one instance may grow to, in bytes.
    #[must_use]
    pub fn max_memory_bytes(&self) -> usize {
        self.max_memory_bytes
    }

    /// How often guests are interrupted to yield and have their CPU time checked.
    #[must_use]
    pub fn epoch_tick(&self) -> Duration {
        self.epoch_tick
    }

    /// Plugins whose initial memory image is at least this many bytes run on the
    /// copy-on-write engine; `None`: none does.
    #[must_use]
    pub fn copy_on_write_above(&self) -> Option<usize> {
        self.copy_on_write_above
    }

    /// How a plugin whose largest core module starts its memory with `image_bytes` bytes of
    /// data has it initialised.
    #[must_use]
    pub fn memory_init_for(&self, image_bytes: usize) -> MemoryInit {
        match self.copy_on_write_above {
            Some(threshold) if image_bytes >= threshold => MemoryInit::CopyOnWrite,
            _ => MemoryInit::Copy,
        }
    }

    /// The size of the copy-on-write engine's instance pool: its share of `max_instances`.
    #[must_use]
    pub fn copy_on_write_instances(&self) -> u32 {
        self.copy_on_write_instances.min(self.max_instances)
    }

    /// How many bytes of an ended instance's linear memory are zeroed in place (and stay
    /// resident for the next instance in that slot) instead of being given back to the kernel.
    #[must_use]
    pub fn keep_resident_bytes(&self) -> usize {
        self.keep_resident_bytes
    }

    /// The compile cache folder asked for, if any.
    #[must_use]
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref()
    }

    /// Whether CPU-bound guests share the cores between listeners by their `cpu_share`.
    #[must_use]
    pub fn cpu_shares(&self) -> bool {
        self.cpu_shares
    }

    /// How many guests may run past their first tick at once: the executor's worker threads.
    #[must_use]
    pub fn cpu_slots(&self) -> usize {
        self.cpu_slots
    }

    /// The largest plugin file (or bytes) a plugin may be loaded from.
    #[must_use]
    pub fn max_plugin_bytes(&self) -> usize {
        self.max_plugin_bytes
    }

    /// How often a compile still running says so in the log.
    #[must_use]
    pub fn compile_progress_every(&self) -> Duration {
        self.compile_progress_every
    }
}

impl Default for RuntimeConfig {
    /// The defaults:
    ///
    /// * `max_instances`: 16,384 live instances (so connections) across all listeners;
    /// * `max_memory_bytes`: 64 MiB of linear memory per instance;
    /// * `core_instances_per_component`: 4 (a Rust `wasm32-wasip2` guest has 3);
    /// * `epoch_tick`: 1 ms;
    /// * `copy_on_write_above`: 1 MiB — a plugin whose memory starts with at least 1 MiB of
    ///   data (JavaScript: ~2.6 MB, Python: ~11 MB) is mapped copy-on-write from its image on
    ///   a second engine; smaller ones (Rust, C: kilobytes) have their data copied;
    /// * `copy_on_write_instances`: 2,048 — the second engine's pool (each slot of a pool
    ///   costs kernel memory maps up front, and large guests cost hundreds of KiB each);
    /// * `copy_on_write_keep_resident_bytes`: 1 MiB — a large guest dirties hundreds of KiB
    ///   per connection, reset in place for the next one rather than faulted in again;
    /// * `keep_resident_bytes`: 64 KiB (the pages a small guest touches are zeroed in place
    ///   when its connection ends, so the next instance in the slot takes no page faults);
    /// * `cache_dir`: none — every plugin is compiled when it is loaded (the `shoal` command
    ///   uses [`default_cache_dir`](crate::default_cache_dir));
    /// * `cpu_shares`: on — CPU-bound guests share the cores between listeners by weight;
    /// * `cpu_slots`: the machine's available parallelism (tokio's default worker count);
    /// * `max_plugin_bytes`: 64 MiB (a JavaScript or Python component is ~12–20 MB);
    /// * `compile_progress_every`: 5 s — a compile still running says so in the log this
    ///   often (Cranelift takes seconds to tens of seconds on a JavaScript or Python
    ///   component, and a start that prints nothing looks hung).
    fn default() -> Self {
        Self {
            max_instances: Self::DEFAULT_MAX_INSTANCES,
            max_memory_bytes: 64 << 20,
            core_instances_per_component: 4,
            epoch_tick: Duration::from_millis(1),
            copy_on_write_above: Some(1 << 20),
            copy_on_write_instances: 2_048,
            copy_on_write_keep_resident_bytes: 1 << 20,
            keep_resident_bytes: 64 << 10,
            cache_dir: None,
            cpu_shares: true,
            cpu_slots: thread::available_parallelism().map_or(1, usize::from),
            max_plugin_bytes: 64 << 20,
            compile_progress_every: Duration::from_secs(5),
        }
    }
}

/// Builds a [`RuntimeConfig`]; [`RuntimeConfigBuilder::build`] validates it.
#[derive(Debug, Clone)]
pub struct RuntimeConfigBuilder {
    config: RuntimeConfig,
}

impl RuntimeConfigBuilder {
    /// Most plugin instances alive at once across every listener (default 16,384).
    #[must_use]
    pub fn max_instances(mut self, count: u32) -> Self {
        self.config.max_instances = count;
        self
    }

    /// Largest linear memory of one instance in bytes (default 64 MiB).
    #[must_use]
    pub fn max_memory_bytes(mut self, bytes: usize) -> Self {
        self.config.max_memory_bytes = bytes;
        self
    }

    /// Core Wasm instances one component may create (default 4). Components built by other
    /// toolchains may need more: a Python guest has 14.
    #[must_use]
    pub fn core_instances_per_component(mut self, count: u32) -> Self {
        self.config.core_instances_per_component = count;
        self
    }

    /// How often running guests are interrupted (default 1 ms). Each interruption lets other
    /// tasks run and checks the call's CPU budget, so this is also the budget's precision.
    #[must_use]
    pub fn epoch_tick(mut self, tick: Duration) -> Self {
        self.config.epoch_tick = tick;
        self
    }

    /// Plugins whose largest core module starts its memory with at least `bytes` of data run
    /// on the copy-on-write engine (default 1 MiB); `Some(0)` puts every plugin there, `None`
    /// none.
    #[must_use]
    pub fn copy_on_write_above(mut self, bytes: Option<usize>) -> Self {
        self.config.copy_on_write_above = bytes;
        self
    }

    /// Instance pool of the copy-on-write engine (default 2,048, at most `max_instances`).
    #[must_use]
    pub fn copy_on_write_instances(mut self, count: u32) -> Self {
        self.config.copy_on_write_instances = count;
        self
    }

    /// [`keep_resident_bytes`](Self::keep_resident_bytes) of the copy-on-write engine
    /// (default 1 MiB).
    #[must_use]
    pub fn copy_on_write_keep_resident_bytes(mut self, bytes: usize) -> Self {
        self.config.copy_on_write_keep_resident_bytes = bytes;
        self
    }

    /// Bytes of linear memory per instance slot reset in place rather than returned to the
    /// kernel when an instance ends (default 64 KiB; 0 gives every page back).
    ///
    /// On Linux 6.7 and later only the pages the guest wrote are zeroed (found with the
    /// `PAGEMAP_SCAN` ioctl); the rest is released with `madvise`. The price is resident
    /// memory held by idle slots: at most this much per slot that has ever been used.
    #[must_use]
    pub fn keep_resident_bytes(mut self, bytes: usize) -> Self {
        self.config.keep_resident_bytes = bytes;
        self
    }

    /// Keep compiled plugins in `dir` (created with mode 0700 if missing), so that loading
    /// the same plugin file again skips compilation; `None` (the default) compiles every time.
    /// A folder that cannot be used is reported with a warning and the runtime runs without
    /// a cache.
    #[must_use]
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.config.cache_dir = dir;
        self
    }

    /// Share the cores between listeners by their `cpu_share` (default on): a guest that runs
    /// past its first epoch tick then runs only while it holds one of `cpu_slots` core slots,
    /// handed out by weight. Off, such guests only yield to the executor at every tick.
    #[must_use]
    pub fn cpu_shares(mut self, enabled: bool) -> Self {
        self.config.cpu_shares = enabled;
        self
    }

    /// Core slots for CPU-bound guests (default: the machine's available parallelism). Set it
    /// to the number of worker threads of the tokio runtime that serves the connections.
    #[must_use]
    pub fn cpu_slots(mut self, slots: usize) -> Self {
        self.config.cpu_slots = slots;
        self
    }

    /// The largest plugin that may be loaded, in bytes (default 64 MiB, at most 4 GiB): a file
    /// past it is refused before it is read.
    #[must_use]
    pub fn max_plugin_bytes(mut self, bytes: usize) -> Self {
        self.config.max_plugin_bytes = bytes;
        self
    }

    /// How often a compile still running logs how long it has taken (default 5 s, at least
    /// 1 ms).
    #[must_use]
    pub fn compile_progress_every(mut self, every: Duration) -> Self {
        self.config.compile_progress_every = every;
        self
    }

    /// Check the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first field that cannot work.
    pub fn build(self) -> Result<RuntimeConfig, ConfigError> {
        let c = &self.config;
        if !(1..=1 << 20).contains(&c.max_instances) {
            return Err(ConfigError::new(
                "max_instances",
                "must be between 1 and 1048576",
            ));
        }
        if !(64 << 10..=4 << 30).contains(&c.max_memory_bytes) {
            return Err(ConfigError::new(
                "max_memory_bytes",
                "must be between 65536 (one Wasm page) and 4GiB",
            ));
        }
        if !(1..=64).contains(&c.core_instances_per_component) {
            return Err(ConfigError::new(
                "core_instances_per_component",
                "must be between 1 and 64",
            ));
        }
        if !(Duration::from_micros(100)..=Duration::from_secs(1)).contains(&c.epoch_tick) {
            return Err(ConfigError::new(
                "epoch_tick",
                "must be between 100µs and 1s",
            ));
        }
        if c.compile_progress_every < Duration::from_millis(1) {
            return Err(ConfigError::new(
                "compile_progress_every",
                "must be at least 1ms",
            ));
        }
        if !(1..=4 << 30).contains(&c.max_plugin_bytes) {
            return Err(ConfigError::new(
                "max_plugin_size",
                "must be between 1 byte and 4GiB",
            ));
        }
        if c.keep_resident_bytes > c.max_memory_bytes {
            return Err(ConfigError::new(
                "keep_resident_bytes",
                "must be at most max_memory_bytes",
            ));
        }
        if c.copy_on_write_keep_resident_bytes > c.max_memory_bytes {
            return Err(ConfigError::new(
                "copy_on_write_keep_resident_bytes",
                "must be at most max_memory_bytes",
            ));
        }
        if c.copy_on_write_instances == 0 {
            return Err(ConfigError::new(
                "copy_on_write_instances",
                "must be at least 1",
            ));
        }
        if !(1..=4096).contains(&c.cpu_slots) {
            return Err(ConfigError::new("cpu_slots", "must be between 1 and 4096"));
        }
        Ok(self.config)
    }
}

/// How a plugin's linear memory is initialised for each instance, and so which of the
/// runtime's engines it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryInit {
    /// Its data segments are copied into the instance's memory (small guests).
    Copy,
    /// Its memory is mapped copy-on-write from the compiled image (large guests).
    CopyOnWrite,
}

/// The compiler and instance allocators that plugins run on. Cheap to clone; the epoch ticker
/// thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    /// Plugins whose memory is copied.
    copying: Arc<PluginEngine>,
    /// Plugins whose memory is mapped copy-on-write: started by the first such plugin.
    mapping: Arc<OnceLock<Arc<PluginEngine>>>,
    /// Held while the copy-on-write engine starts, so that it starts once.
    starting: Mutex<()>,
    scheduler: Arc<CpuScheduler>,
    config: RuntimeConfig,
}

/// One engine, with every plugin import linked for it and its compile cache.
pub(crate) struct PluginEngine {
    engine: Engine,
    /// Every plugin's imports, linked once for the engine.
    linker: Linker<ConnState>,
    cache: Option<CompileCache>,
    memory_init: MemoryInit,
}

impl PluginEngine {
    fn start(config: &RuntimeConfig, memory_init: MemoryInit) -> Result<Self, RuntimeError> {
        let engine = Engine::new(&engine_config(config, memory_init))
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let linker =
            imports::linker(&engine).map_err(|e| RuntimeError::Linker(format!("{e:#}")))?;
        let cache = config
            .cache_dir
            .as_deref()
            .and_then(|dir| open_cache(dir, &engine));
        Ok(Self {
            engine,
            linker,
            cache,
            memory_init,
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn linker(&self) -> &Linker<ConnState> {
        &self.linker
    }

    pub(crate) fn cache(&self) -> Option<&CompileCache> {
        self.cache.as_ref()
    }

    pub(crate) fn memory_init(&self) -> MemoryInit {
        self.memory_init
    }
}

impl Runtime {
    /// Create the engine, link the host's imports, open the compile cache and start the
    /// epoch ticker.
    ///
    /// # Errors
    ///
    /// A [`RuntimeError`] when wasmtime rejects the configuration or the ticker thread cannot
    /// start.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        let copying = Arc::new(PluginEngine::start(&config, MemoryInit::Copy)?);
        let mapping: Arc<OnceLock<Arc<PluginEngine>>> = Arc::new(OnceLock::new());
        let clock = Arc::new(TickClock::new(config.epoch_tick));
        let scheduler = Arc::new(CpuScheduler::new(
            Arc::clone(&clock),
            config.cpu_slots,
            config.cpu_shares,
        ));
        let ticking = copying.engine.clone();
        let ticking_mapped = Arc::clone(&mapping);
        let ticker_clock = Arc::clone(&clock);
        thread::Builder::new()
            .name("shoal-epoch".into())
            .spawn(move || {
                ticker_clock.run_ticker(|| {
                    ticking.increment_epoch();
                    if let Some(mapped) = ticking_mapped.get() {
                        mapped.engine.increment_epoch();
                    }
                });
            })
            .map_err(RuntimeError::Ticker)?;
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                copying,
                mapping,
                starting: Mutex::new(()),
                scheduler,
                config,
            }),
        })
    }

    /// The wasmtime engine of plugins whose memory is copied (every plugin with a memory
    /// image under [`RuntimeConfig::copy_on_write_above`]).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.inner.copying.engine
    }

    /// The engine for plugins whose memory starts as `memory_init` says, started now if it
    /// is the copy-on-write engine's first plugin.
    ///
    /// # Errors
    ///
    /// A [`RuntimeError`] when that engine cannot start.
    pub(crate) fn plugin_engine(
        &self,
        memory_init: MemoryInit,
    ) -> Result<Arc<PluginEngine>, RuntimeError> {
        if memory_init == MemoryInit::Copy {
            return Ok(Arc::clone(&self.inner.copying));
        }
        if let Some(mapped) = self.inner.mapping.get() {
            return Ok(Arc::clone(mapped));
        }
        let _starting = self
            .inner
            .starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(mapped) = self.inner.mapping.get() {
            return Ok(Arc::clone(mapped));
        }
        let mapped = Arc::new(PluginEngine::start(
            &self.inner.config,
            MemoryInit::CopyOnWrite,
        )?);
        tracing::debug!(
            "copy-on-write engine started: {} instances",
            self.inner.config.copy_on_write_instances()
        );
        Ok(Arc::clone(self.inner.mapping.get_or_init(|| mapped)))
    }

    /// The settings this runtime was made with.
    #[must_use]
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The compile cache folder in use: `None` without a cache, or when the folder asked for
    /// could not be used.
    #[must_use]
    pub fn cache_dir(&self) -> Option<&Path> {
        self.inner.copying.cache.as_ref().map(CompileCache::dir)
    }

    pub(crate) fn scheduler(&self) -> &Arc<CpuScheduler> {
        &self.inner.scheduler
    }
}

/// The compile cache in `dir`, or `None` (with a warning saying why) when it cannot be used.
fn open_cache(dir: &Path, engine: &Engine) -> Option<CompileCache> {
    let shown = dir.display();
    match CompileCache::open(dir, engine) {
        Ok(cache) if cache.is_writable() => Some(cache),
        Ok(cache) => {
            tracing::warn!(
                "compile cache {shown} is read-only: plugins compiled before are loaded from \
                 it, others are compiled at every start"
            );
            Some(cache)
        }
        Err(problem) => {
            tracing::warn!(
                "compile cache {shown} cannot be used ({problem}): plugins are compiled at \
                 every start"
            );
            None
        }
    }
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.scheduler.clock().stop();
    }
}

/// Tables of small guests fit in a page or two: reset them with a `memset`, never `madvise`.
const TABLE_KEEP_RESIDENT_BYTES: usize = 16 << 10;

fn engine_config(config: &RuntimeConfig, memory_init: MemoryInit) -> Config {
    let (instances, keep_resident, copy_on_write) = match memory_init {
        MemoryInit::Copy => (config.max_instances, config.keep_resident_bytes, false),
        MemoryInit::CopyOnWrite => (
            config.copy_on_write_instances(),
            config.copy_on_write_keep_resident_bytes,
            true,
        ),
    };
    let core_instances = instances.saturating_mul(config.core_instances_per_component);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(core_instances)
        .max_core_instances_per_component(config.core_instances_per_component)
        // Rust guests have one memory, guests built through the wasip1 adapter two.
        .total_memories(instances.saturating_mul(2))
        .total_tables(core_instances)
        .total_stacks(instances)
        .max_memory_size(config.max_memory_bytes)
        // An ended instance's dirty pages are zeroed in place rather than released with
        // `madvise` and faulted in again by the next instance: per connection that saves three
        // `madvise` calls and ~5 page faults (BENCHMARKS.md). `PAGEMAP_SCAN` finds the dirty
        // pages so that only those are zeroed.
        .pagemap_scan(Enabled::Auto)
        .linear_memory_keep_resident(keep_resident)
        .table_keep_resident(TABLE_KEEP_RESIDENT_BYTES);

    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        // The component-model-async machinery doubles the cost of every call; shoal's world
        // has no async functions, so it is switched off.
        .concurrency_support(false)
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .memory_init_cow(copy_on_write)
        // Reserve exactly the memory limit per slot (plus a small guard) so that thousands of
        // pool slots fit in the address space. The price: Cranelift emits an explicit bounds
        // check on memory accesses instead of relying on a 4 GiB guard region.
        .memory_reservation(config.max_memory_bytes as u64)
        .memory_guard_size(64 << 10)
        .memory_reservation_for_growth(0);
    // With SHOAL_PERF_MAP=1, `perf` reports name guest functions: wasmtime then writes
    // /tmp/perf-PID.map as it compiles. Off by default: the map grows with every plugin, and
    // writing it costs every instantiation (so `make profile` leaves it off too).
    if std::env::var_os(PERF_MAP_VAR).is_some_and(|value| value == "1") {
        wasm.profiler(ProfilingStrategy::PerfMap);
    }
    wasm
}

/// The environment variable that makes the engines write a `perf` map of compiled guest code.
pub const PERF_MAP_VAR: &str = "SHOAL_PERF_MAP";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = RuntimeConfig::builder().build();
        assert!(config.is_ok());
    }

    #[test]
    fn zero_instances_is_refused_with_the_field_named() {
        let err = RuntimeConfig::builder().max_instances(0).build().err();
        assert_eq!(err.map(|e| e.field()), Some("max_instances"));
    }

    #[test]
    fn engine_settings_are_bounded() {
        let cases = [
            (
                "max_instances",
                RuntimeConfig::builder().max_instances(u32::MAX),
            ),
            (
                "max_memory_bytes",
                RuntimeConfig::builder().max_memory_bytes(99_999_999_999),
            ),
            (
                "core_instances_per_component",
                RuntimeConfig::builder().core_instances_per_component(10_000),
            ),
            (
                "epoch_tick",
                RuntimeConfig::builder().epoch_tick(Duration::from_nanos(1)),
            ),
            (
                "epoch_tick",
                RuntimeConfig::builder().epoch_tick(Duration::from_secs(60)),
            ),
            ("cpu_slots", RuntimeConfig::builder().cpu_slots(0)),
        ];
        for (field, builder) in cases {
            let refused = builder.build().err();
            assert_eq!(refused.map(|e| e.field()), Some(field));
        }
    }

    #[test]
    fn plugins_with_an_image_past_the_threshold_are_mapped_copy_on_write() -> anyhow::Result<()> {
        let default = RuntimeConfig::builder().build()?;
        assert_eq!(default.memory_init_for(20 << 10), MemoryInit::Copy);
        assert_eq!(default.memory_init_for(1 << 20), MemoryInit::CopyOnWrite);
        let never = RuntimeConfig::builder().copy_on_write_above(None).build()?;
        assert_eq!(never.memory_init_for(usize::MAX), MemoryInit::Copy);
        let always = RuntimeConfig::builder()
            .copy_on_write_above(Some(0))
            .build()?;
        assert_eq!(always.memory_init_for(0), MemoryInit::CopyOnWrite);
        Ok(())
    }

    #[test]
    fn the_copy_on_write_pool_is_a_share_of_the_instances() -> anyhow::Result<()> {
        let small = RuntimeConfig::builder().max_instances(100).build()?;
        assert_eq!(small.copy_on_write_instances(), 100);
        let large = RuntimeConfig::builder().build()?;
        assert_eq!(large.copy_on_write_instances(), 2_048);
        let refused = RuntimeConfig::builder()
            .copy_on_write_instances(0)
            .build()
            .err();
        assert_eq!(refused.map(|e| e.field()), Some("copy_on_write_instances"));
        Ok(())
    }

    #[test]
    fn sub_page_memory_is_refused() {
        let err = RuntimeConfig::builder()
            .max_memory_bytes(1024)
            .build()
            .err();
        assert_eq!(err.map(|e| e.field()), Some("max_memory_bytes"));
    }
}
