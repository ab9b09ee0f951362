//! Errors of the library API, typed so callers can match on what went wrong.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::observe::stats::Limit;

/// A setting that cannot work, with the name of the field and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct ConfigError {
    field: &'static str,
    reason: String,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }

    /// The name of the offending field.
    #[must_use]
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What is wrong with it, and what would work.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Why the Wasm engine could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// wasmtime rejected the engine configuration.
    #[error("wasmtime rejected the engine configuration: {0}")]
    Engine(String),
    /// The epoch ticker thread could not be started.
    #[error("cannot start the epoch ticker thread: {0}")]
    Ticker(#[source] io::Error),
    /// The host's imports could not be added to the linker.
    #[error("cannot link the host's imports: {0}")]
    Linker(String),
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PluginError {
    /// The file could not be read.
    #[error("cannot read plugin {path}: {error}")]
    Read {
        /// The file, as given.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The path is not a regular file (a directory, a FIFO, a device): it is not opened.
    #[error("{path} is not a regular file: a plugin is a component file")]
    NotAFile {
        /// The path, as given.
        path: PathBuf,
    },
    /// The file is larger than a plugin may be; it is not read.
    #[error("{path} is {size}, larger than the {max} a plugin may be (max_plugin_size)")]
    TooLarge {
        /// The file, as given.
        path: PathBuf,
        /// Its size, as a person writes it.
        size: String,
        /// The most a plugin may be.
        max: String,
    },
    /// The bytes are not WebAssembly at all.
    #[error(
        "{name} is not a WebAssembly file (it does not start with the `\\0asm` magic bytes); \
         build the plugin with `cargo build --target wasm32-wasip2`"
    )]
    NotWasm {
        /// The plugin's name.
        name: String,
    },
    /// The bytes start like WebAssembly, but of a version or layer shoal does not know.
    #[error(
        "{name} is WebAssembly of an unknown version {version}, layer {layer} (shoal loads \
         components: layer 1, version 0x0d)"
    )]
    UnknownVersion {
        /// The plugin's file or name.
        name: String,
        /// The 16-bit version of its header.
        version: u16,
        /// The 16-bit layer of its header.
        layer: u16,
    },
    /// The component creates more core instances than the engine's instance pool allows per
    /// component (a limit fixed when the engine starts).
    #[error(
        "{name} creates {needed} core instances per connection, more than the {allowed} this \
         engine's instance pool allows (`core_instances_per_component`, sized when the \
         server starts for the plugins it starts with): restart with this plugin in the \
         config, or set core_instances_per_component = {needed} or more"
    )]
    TooManyCoreInstances {
        /// The plugin's file or name.
        name: String,
        /// The core instances one instance of it creates.
        needed: u32,
        /// The engine's limit.
        allowed: u32,
    },
    /// The bytes are a core Wasm module, not a component.
    #[error(
        "{name} is a core WebAssembly module, not a component; build it for `wasm32-wasip2` \
         or turn it into a component with `wasm-tools component new`"
    )]
    NotComponent {
        /// The plugin's name.
        name: String,
    },
    /// wasmtime could not compile the component.
    #[error("cannot compile {name}: {message}")]
    Compile {
        /// The plugin's name.
        name: String,
        /// wasmtime's explanation.
        message: String,
    },
    /// The component does not export the handler interface of the `shoal:plugin` world.
    #[error(
        "{name} does not implement the shoal:plugin world: it does not export `{missing}` \
         (nor its 0.1.0 version) (it exports: {found})"
    )]
    MissingExport {
        /// The plugin's name.
        name: String,
        /// The export that is missing.
        missing: String,
        /// What the component does export, comma-separated (or `nothing`).
        found: String,
    },
    /// The component exports the handler interface with the wrong function types.
    #[error("{name} exports the shoal:plugin handler with the wrong types: {message}")]
    WrongExport {
        /// The plugin's name.
        name: String,
        /// wasmtime's explanation.
        message: String,
    },
    /// The component imports something shoal does not provide.
    #[error(
        "{name} imports something shoal does not provide: {message} \
         (shoal provides shoal:plugin/connection, shoal:plugin/log and wasi:* 0.2)"
    )]
    UnsatisfiedImport {
        /// The plugin's name.
        name: String,
        /// wasmtime's explanation, naming the import.
        message: String,
    },
    /// The engine the plugin needs (copy-on-write memory, for a large guest) could not start.
    #[error("cannot start the copy-on-write engine {name} needs: {error}")]
    Engine {
        /// The plugin's name.
        name: String,
        /// Why the engine did not start.
        #[source]
        error: RuntimeError,
    },
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listener's local address could not be read.
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(#[source] io::Error),
}

/// A guest call that did not return normally; the instance must not be called again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GuestFault {
    /// The guest trapped: a panic, `unreachable`, an out-of-bounds access, a failed
    /// allocation. The text is wasmtime's description, with the guest backtrace if any.
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The call ran past its CPU budget and was stopped.
    #[error("guest call ran past its CPU budget of {0:?}")]
    CpuBudget(Duration),
    /// The call took longer than the call timeout in wall-clock time (it was waiting, or
    /// starved of CPU) and was abandoned.
    #[error("guest call ran past its call timeout of {0:?}")]
    CallTimeout(Duration),
    /// The guest's linear memory would have grown past the listener's memory limit (in
    /// bytes); the growth failed and the guest trapped.
    #[error("guest reached its memory limit of {0} bytes")]
    MemoryLimit(usize),
}

impl GuestFault {
    /// The listener limit behind this fault, if a limit (not a bug in the guest) ended it.
    #[must_use]
    pub fn limit(&self) -> Option<Limit> {
        match self {
            GuestFault::Trap(_) => None,
            GuestFault::CpuBudget(_) => Some(Limit::CpuBudget),
            GuestFault::CallTimeout(_) => Some(Limit::CallTimeout),
            GuestFault::MemoryLimit(_) => Some(Limit::Memory),
        }
    }
}

/// Why a plugin instance could not be created (for example, the instance pool is full).
#[derive(Debug, thiserror::Error)]
#[error("cannot instantiate plugin {plugin}: {message}")]
pub struct InstantiateError {
    pub(crate) plugin: String,
    pub(crate) message: String,
    /// The linear memory instantiation asked for, when the memory limit refused it.
    pub(crate) memory_needed: Option<usize>,
    /// Every instance of the engine's pool was in use.
    pub(crate) pool_full: bool,
    /// Every instance of the listener's share (`max_instances`) was in use.
    pub(crate) listener_full: bool,
}

impl InstantiateError {
    /// The linear memory (in bytes) the plugin needed to start, when the listener's
    /// `memory_limit` was too small for it.
    #[must_use]
    pub fn memory_needed(&self) -> Option<usize> {
        self.memory_needed
    }

    /// Every instance the listener may have awake (its `max_instances`) is alive.
    pub(crate) fn listener_full(plugin: &str, max_instances: usize) -> Self {
        Self {
            plugin: plugin.to_string(),
            message: format!("its listener has max_instances ({max_instances}) awake"),
            memory_needed: None,
            pool_full: true,
            listener_full: true,
        }
    }

    /// Whether its listener's share of the instances (`max_instances`) was all in use for
    /// the call timeout: a limit of the listener, counted as one.
    #[must_use]
    pub fn is_listener_full(&self) -> bool {
        self.listener_full
    }

    /// Whether every instance of the engine's pool (or of the listener's share,
    /// `max_instances`) was in use: trying again once one ends may succeed.
    #[must_use]
    pub fn is_pool_full(&self) -> bool {
        self.pool_full
    }
}

/// Why a [`Node`](crate::Node) could not be built or could not serve. Each names the
/// listener at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The Wasm engine could not start.
    #[error("cannot start the Wasm engine: {0}")]
    Runtime(RuntimeError),
    /// The engine settings derived from the listeners cannot work.
    #[error("cannot configure the Wasm engine: {0}")]
    RuntimeConfig(ConfigError),
    /// The OS refused to watch a plugin file's folder.
    #[error("cannot watch the plugin files: {0}")]
    Watch(String),
    /// No listener of the node has this name.
    #[error("no listener is named `{0}`")]
    NoSuchListener(String),
    /// The listener serves native code, not a plugin that can be swapped.
    #[error("listener `{0}` does not serve a plugin that can be swapped")]
    NotSwappable(String),
    /// A plugin was refused as a listener's new version; the current version stays.
    #[error("listener `{listener}`: not swapped: {error}")]
    Swap {
        /// The listener's name.
        listener: String,
        /// Why.
        error: SwapError,
    },
    /// A listener's plugin could not be loaded.
    #[error("listener `{listener}`: {error}")]
    Plugin {
        /// The listener's name.
        listener: String,
        /// What is wrong with the plugin.
        error: PluginError,
    },
    /// A listener's settings cannot work with its plugin (checked at start, before binding).
    #[error("listener `{listener}`: {reason}")]
    Unfit {
        /// The listener's name.
        listener: String,
        /// What does not fit, naming the setting and what the plugin needs.
        reason: String,
    },
    /// Two listeners have the same name.
    #[error("two listeners are named `{0}`: names must be unique")]
    DuplicateName(String),
    /// A listener's address could not be bound; no listener of the node is left listening.
    #[error("listener `{listener}`: cannot listen on {address}: {error}")]
    Bind {
        /// The listener's name.
        listener: String,
        /// The address asked for.
        address: SocketAddr,
        /// What the OS said.
        error: io::Error,
    },
    /// A listener stopped with an error.
    #[error("listener `{listener}`: {error}")]
    Serve {
        /// The listener's name.
        listener: String,
        /// What went wrong.
        error: ServeError,
    },
}

/// Why a plugin was not made current. The current version stays.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwapError {
    /// The plugin cannot start under the listener's settings (its memory, say).
    #[error("{plugin} cannot serve under the listener's settings: {reason}")]
    Unfit {
        /// The plugin's name.
        plugin: String,
        /// What it needs, naming the setting.
        reason: String,
    },
    /// This content was rolled back after a crash loop; it is refused until the file changes.
    #[error(
        "{plugin} was rolled back after a crash loop: the same content is refused until the file changes"
    )]
    RolledBack {
        /// The plugin's name.
        plugin: String,
    },
    /// The probe connection's `init` or `close` trapped or ran past a limit.
    #[error("{plugin} failed its probe: in `{export}`, {fault}")]
    Probe {
        /// The plugin's name.
        plugin: String,
        /// The export that failed: `init` or `close`.
        export: &'static str,
        /// What stopped it.
        fault: GuestFault,
    },
    /// A rollback was asked for, but no earlier version is kept to go back to (the first
    /// version is current, or the listener was rolled back already).
    #[error("no earlier version to roll back to (version {current} is current)")]
    NothingToRollBackTo {
        /// The current version's number.
        current: u64,
    },
}
