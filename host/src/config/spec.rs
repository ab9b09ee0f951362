//! What a [`Node`](crate::Node) is built from: its listeners, each an address, a plugin and
//! settings, and where compiled plugins are cached. A config file is read into one
//! ([`NodeSpec::load`]); `shoal serve PLUGIN.wasm` makes a one-listener one.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;

use crate::config::listener::ServerConfig;

/// Every listener of one process, and what they share: the compile cache folder and the
/// cores.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The listeners, in the order they are bound.
    pub listeners: Vec<ListenerSpec>,
    /// Where compiled plugins are kept between starts; `None` compiles every plugin at
    /// every start.
    pub cache_dir: Option<PathBuf>,
    /// Whether CPU-bound guests share the cores by their listeners' `cpu_share` (see
    /// [`RuntimeConfigBuilder::cpu_shares`](crate::RuntimeConfigBuilder::cpu_shares)).
    pub cpu_shares: bool,
    /// The largest plugin file the node loads; `None` for the runtime's default (64 MiB).
    pub max_plugin_size: Option<usize>,
    /// Core Wasm instances one plugin instance may create, at least: the node allows what the
    /// plugins it starts with need (and 4 at least); more leaves room for a plugin swapped in
    /// later that needs more (a Python plugin creates 14).
    pub core_instances_per_component: Option<u32>,
    /// Instances of large guests (JavaScript, Python: memory mapped copy-on-write) alive at
    /// once; `None` for the runtime's default (2,048), never more than the node's pool.
    pub copy_on_write_instances: Option<u32>,
    /// The admin listener (metrics, status, deploys), if any.
    pub admin: Option<AdminSpec>,
}

/// Where the admin listener listens, and the file holding the token its changing endpoints
/// require (none: they refuse every change, and the address must be loopback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSpec {
    /// Its address.
    pub address: SocketAddr,
    /// The token file (relative paths in a config file were made absolute against its
    /// folder).
    pub token_file: Option<PathBuf>,
}

impl Default for NodeSpec {
    /// No listener, no compile cache, CPU shares on, the default plugin size cap, no admin
    /// listener.
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            cache_dir: None,
            cpu_shares: true,
            max_plugin_size: None,
            core_instances_per_component: None,
            copy_on_write_instances: None,
            admin: None,
        }
    }
}

/// One listener: where it listens, what it serves, with which settings.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Where to listen (port 0 picks a free port).
    pub address: SocketAddr,
    /// The plugin component to serve.
    pub plugin: PluginSource,
    /// Its settings, validated (the name is in there).
    pub config: ServerConfig,
}

/// Where a plugin's component comes from.
#[derive(Debug, Clone)]
pub enum PluginSource {
    /// A component file (relative paths in a config file were made absolute against its
    /// folder).
    File(PathBuf),
    /// A component in memory (such as the echo plugin bundled into the `shoal` binary),
    /// with the name its logs use.
    Bytes {
        /// The plugin's name.
        name: String,
        /// The component.
        bytes: Bytes,
    },
}

impl PluginSource {
    /// How the log names it: the file name, or the name given to the bytes.
    #[must_use]
    pub fn display_name(&self) -> String {
        match self {
            PluginSource::File(path) => path.file_name().map_or_else(
                || path.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            ),
            PluginSource::Bytes { name, .. } => format!("{name} (bundled)"),
        }
    }
}
