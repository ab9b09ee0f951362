//! `shoal.toml`: every listener of a process with its plugin, limits and capabilities, read
//! into a [`NodeSpec`] (the format is documented on [`NodeSpec::load`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::listener::{HandoffPolicy, ServerConfig, ServerConfigBuilder};
use crate::config::spec::{AdminSpec, ListenerSpec, NodeSpec, PluginSource};
use crate::config::units::{ByteSize, DurationText};
use crate::tls::settings::{Tls, TlsFiles};
use crate::wasm::capabilities::Capabilities;

/// Why a config file cannot be used. Each message names the file and the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (an unknown field, a wrong type, a
    /// bad duration or size); the message gives the line and the field.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser says, with the line.
        message: String,
    },
    /// A listener's value cannot work.
    #[error("{path}: listener `{listener}`: invalid `{field}`: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The listener's name.
        listener: String,
        /// The field.
        field: String,
        /// What to change.
        reason: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Where compiled plugins are kept between starts (relative to the file's folder).
    cache_dir: Option<PathBuf>,
    /// Whether CPU-bound guests share the cores by their listeners' `cpu_share`.
    cpu_shares: Option<bool>,
    /// The largest plugin file loaded.
    max_plugin_size: Option<ByteSize>,
    /// Core instances one plugin instance may create, at least.
    core_instances_per_component: Option<u32>,
    /// Instances of large guests (memory mapped copy-on-write) alive at once.
    copy_on_write_instances: Option<u32>,
    /// How the `shoal` command writes its log (read before the rest: [`LogFormat::of_config`]).
    #[allow(
        dead_code,
        reason = "read by LogFormat::of_config; here so the field is known"
    )]
    log_format: Option<LogFormat>,
    admin: Option<AdminEntry>,
    #[serde(rename = "listener", default)]
    listeners: Vec<ListenerEntry>,
}

/// `[admin]`: the admin listener (metrics).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminEntry {
    address: String,
    token_file: Option<PathBuf>,
}

/// How the `shoal` command writes its log: `text` for people (the default), `json` for
/// machines — one JSON object per line, with the same fields (`conn`, `peer`, `plugin`,
/// `version`, `listener`, …) at its top level beside `timestamp`, `level`, `message` and
/// `target`. `log_format` at the top of a config file; `--log-format` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The `log_format` a config file's text sets, if it sets a valid one. The log must be
    /// set up before the file is checked (checking it logs), so this reads that one field;
    /// [`NodeSpec::parse`] reports anything wrong with it, or with the rest.
    #[must_use]
    pub fn of_config(text: &str) -> Option<LogFormat> {
        #[derive(Deserialize)]
        struct Only {
            log_format: Option<LogFormat>,
        }
        toml::from_str::<Only>(text).ok()?.log_format
    }

    /// The format named `name` (`text` or `json`).
    #[must_use]
    pub fn named(name: &str) -> Option<LogFormat> {
        match name {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerEntry {
    name: String,
    address: String,
    plugin: PathBuf,
    pool_size: Option<usize>,
    max_connections: Option<usize>,
    max_instances: Option<usize>,
    idle_timeout: Option<DurationText>,
    cpu_budget_per_call: Option<DurationText>,
    call_timeout: Option<DurationText>,
    write_timeout: Option<DurationText>,
    shutdown_timeout: Option<DurationText>,
    memory_limit: Option<ByteSize>,
    output_buffer_limit: Option<ByteSize>,
    read_buffer_size: Option<ByteSize>,
    mailbox_messages: Option<usize>,
    mailbox_bytes: Option<ByteSize>,
    cpu_share: Option<u32>,
    rollback_window: Option<usize>,
    rollback_fault_ratio: Option<f64>,
    drain_timeout: Option<DurationText>,
    handoff: Option<HandoffPolicy>,
    hibernate_after: Option<DurationText>,
    hibernate_state_limit: Option<ByteSize>,
    #[serde(default)]
    capabilities: CapabilitiesEntry,
    tls: Option<TlsEntry>,
}

/// `[listener.tls]`: serve TLS with these files (relative paths start at the file's folder).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsEntry {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    handshake_timeout: Option<DurationText>,
    #[serde(default)]
    alpn: Vec<String>,
}

impl TlsEntry {
    fn files(self, base: &Path) -> TlsFiles {
        let mut files = TlsFiles::new(base.join(self.cert), base.join(self.key));
        files.client_ca = self.client_ca.map(|ca| base.join(ca));
        if let Some(timeout) = self.handshake_timeout {
            files.handshake_timeout = timeout.0;
        }
        files.alpn = self.alpn;
        files
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CapabilitiesEntry {
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    config: BTreeMap<String, String>,
    read_only_dir: Option<DirEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DirEntry {
    host: PathBuf,
    guest: String,
}

impl NodeSpec {
    /// Read and check a config file (`shoal serve --config shoal.toml`): one or more listeners,
    /// each with its own plugin, limits and capabilities, and where compiled plugins are kept.
    ///
    /// ```toml
    /// cache_dir = "/var/cache/shoal"        # optional; relative paths start at the file's folder
    ///
    /// [[listener]]
    /// name = "chat"
    /// address = "127.0.0.1:7000"
    /// plugin = "target/plugins/chat.wasm"   # relative paths start at the file's folder
    /// max_connections = 1000
    /// idle_timeout = "5m"
    /// cpu_budget_per_call = "50ms"
    /// memory_limit = "16MiB"
    ///
    /// [listener.capabilities]
    /// env = { GREETING = "hello" }
    /// config = { motd = "be nice" }
    /// read_only_dir = { host = "public", guest = "/public" }
    ///
    /// [listener.tls]                        # optional: serve TLS instead of plain TCP
    /// cert = "cert.pem"                     # the chain, server certificate first (PEM)
    /// key = "key.pem"                       # its private key (PEM)
    /// client_ca = "ca.pem"                  # optional: mutual TLS, clients need a cert from it
    /// handshake_timeout = "10s"             # optional
    /// alpn = ["http/1.1"]                   # optional
    /// ```
    ///
    /// Every field, with its default, is in `shoal.example.toml` at the root of the repository.
    /// Durations are a number and a unit (`ms`, `s`, `m`, `h`); sizes a number of bytes or a
    /// number and a unit (`KiB`, `MiB`, `GiB`). Unknown fields are errors, so a typo cannot
    /// silently leave a limit at its default.
    ///
    /// # Errors
    ///
    /// A [`ConfigFileError`] naming the file, the listener and the field at fault.
    pub fn load(path: impl AsRef<Path>) -> Result<NodeSpec, ConfigFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, base)
    }

    /// Check the text of a config file; relative paths in it start at `base`. `path` names the
    /// file in errors.
    ///
    /// # Errors
    ///
    /// See [`NodeSpec::load`].
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<NodeSpec, ConfigFileError> {
        let file: File = toml::from_str(text).map_err(|error| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message: error.to_string().trim_end().to_string(),
        })?;
        let invalid = |listener: &str, field: &str, reason: String| ConfigFileError::Invalid {
            path: path.to_path_buf(),
            listener: listener.to_string(),
            field: field.to_string(),
            reason,
        };
        if let Some(count) = file.core_instances_per_component
            && !(1..=64).contains(&count)
        {
            return Err(ConfigFileError::Parse {
                path: path.to_path_buf(),
                message: format!("core_instances_per_component = {count}: it is 1 to 64"),
            });
        }
        if let Some(count) = file.copy_on_write_instances
            && !(1..=16_384).contains(&count)
        {
            return Err(ConfigFileError::Parse {
                path: path.to_path_buf(),
                message: format!("copy_on_write_instances = {count}: it is 1 to 16384"),
            });
        }
        let admin = match file.admin {
            None => None,
            Some(entry) => {
                let admin_error = |message| ConfigFileError::Parse {
                    path: path.to_path_buf(),
                    message: format!("[admin] address: {message}"),
                };
                let address = admin_address(&entry.address).map_err(admin_error)?;
                admin_exposure(address, entry.token_file.is_some()).map_err(admin_error)?;
                Some(AdminSpec {
                    address,
                    token_file: entry.token_file.map(|file| base.join(file)),
                })
            }
        };
        if file.listeners.is_empty() {
            return Err(ConfigFileError::Parse {
                path: path.to_path_buf(),
                message: "no listener: add at least one [[listener]] table".to_string(),
            });
        }
        let mut specs: Vec<ListenerSpec> = Vec::new();
        for mut entry in file.listeners {
            // How errors name the listener: by its name, or by its place when it has none.
            let name = if entry.name.is_empty() {
                format!("#{}", specs.len() + 1)
            } else {
                entry.name.clone()
            };
            if specs.iter().any(|spec| spec.config.name() == name) {
                return Err(invalid(
                    &name,
                    "name",
                    "two listeners have this name".into(),
                ));
            }
            let address: SocketAddr = entry.address.parse().map_err(|_| {
                invalid(
                    &name,
                    "address",
                    format!(
                        "{:?} is not an IP address and port, such as \"127.0.0.1:7000\"",
                        entry.address
                    ),
                )
            })?;
            // Port 0 asks the OS for a free port, so two listeners may both ask.
            let taken = specs
                .iter()
                .find(|spec| spec.address == address && address.port() != 0);
            if let Some(other) = taken {
                let reason = format!(
                    "listener `{}` already listens on {address}",
                    other.config.name()
                );
                return Err(invalid(&name, "address", reason));
            }
            let plugin = base.join(&entry.plugin);
            if !plugin.is_file() {
                let reason = format!("{} is not a file", plugin.display());
                return Err(invalid(&name, "plugin", reason));
            }
            let tls = entry
                .tls
                .take()
                .map(|tls| Tls::load(tls.files(base)))
                .transpose()
                .map_err(|error| invalid(&name, error.field(), error.to_string()))?;
            let mut builder = entry.into_builder(base);
            if let Some(tls) = tls {
                builder = builder.tls(tls);
            }
            let config = builder
                .build()
                .map_err(|error| invalid(&name, error.field(), error.reason().to_string()))?;
            specs.push(ListenerSpec {
                address,
                plugin: PluginSource::File(plugin),
                config,
            });
        }
        Ok(NodeSpec {
            listeners: specs,
            cache_dir: file.cache_dir.map(|dir| base.join(dir)),
            cpu_shares: file.cpu_shares.unwrap_or(true),
            max_plugin_size: file.max_plugin_size.map(|size| size.0),
            core_instances_per_component: file.core_instances_per_component,
            copy_on_write_instances: file.copy_on_write_instances,
            admin,
        })
    }
}

/// The admin listener's address: an IP address and port.
///
/// # Errors
///
/// What is wrong with `text`, to show.
pub fn admin_address(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not an IP address and port, such as \"127.0.0.1:9090\""))
}

/// Whether the admin listener may listen on `address`: anywhere with a token, only on a
/// loopback address without one (its read-only pages answer whoever can connect).
///
/// # Errors
///
/// Why not, to show.
pub fn admin_exposure(address: SocketAddr, has_token: bool) -> Result<(), String> {
    if address.ip().is_loopback() || has_token {
        return Ok(());
    }
    Err(format!(
        "{address} is not a loopback address: an admin listener reachable from other \
         machines needs a token (token_file; --admin-token-file)"
    ))
}

impl ListenerEntry {
    fn into_builder(self, base: &Path) -> ServerConfigBuilder {
        let mut builder = ServerConfig::builder().name(self.name);
        if let Some(value) = self.pool_size {
            builder = builder.pool_size(value);
        }
        if let Some(value) = self.max_connections {
            builder = builder.max_connections(value);
        }
        if let Some(value) = self.max_instances {
            builder = builder.max_instances(value);
        }
        if let Some(value) = self.idle_timeout {
            builder = builder.idle_timeout(value.0);
        }
        if let Some(value) = self.cpu_budget_per_call {
            builder = builder.cpu_budget_per_call(value.0);
        }
        if let Some(value) = self.call_timeout {
            builder = builder.call_timeout(value.0);
        }
        if let Some(value) = self.write_timeout {
            builder = builder.write_timeout(value.0);
        }
        if let Some(value) = self.shutdown_timeout {
            builder = builder.shutdown_timeout(value.0);
        }
        if let Some(value) = self.memory_limit {
            builder = builder.memory_limit(value.0);
        }
        if let Some(value) = self.output_buffer_limit {
            builder = builder.output_buffer_limit(value.0);
        }
        if let Some(value) = self.read_buffer_size {
            builder = builder.read_buffer_size(value.0);
        }
        if let Some(value) = self.mailbox_messages {
            builder = builder.mailbox_messages(value);
        }
        if let Some(value) = self.mailbox_bytes {
            builder = builder.mailbox_bytes(value.0);
        }
        if let Some(value) = self.cpu_share {
            builder = builder.cpu_share(value);
        }
        if let Some(value) = self.drain_timeout {
            builder = builder.drain_timeout(value.0);
        }
        if let Some(value) = self.handoff {
            builder = builder.handoff(value);
        }
        if let Some(value) = self.hibernate_after {
            builder = builder.hibernate_after(value.0);
        }
        if let Some(value) = self.hibernate_state_limit {
            builder = builder.hibernate_state_limit(value.0);
        }
        if self.rollback_window.is_some() || self.rollback_fault_ratio.is_some() {
            let defaults = ServerConfig::default();
            builder = builder.rollback(
                self.rollback_window.unwrap_or(defaults.rollback_window()),
                self.rollback_fault_ratio
                    .unwrap_or(defaults.rollback_fault_ratio()),
            );
        }
        let grants = self.capabilities;
        let mut capabilities = Capabilities::default();
        for (key, value) in grants.env {
            capabilities = capabilities.env(key, value);
        }
        for (key, value) in grants.config {
            capabilities = capabilities.config(key, value);
        }
        if let Some(dir) = grants.read_only_dir {
            capabilities = capabilities.read_only_dir(base.join(dir.host), dir.guest);
        }
        builder.capabilities(capabilities)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A folder holding an empty file standing in for a plugin.
    fn base() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shoal-config-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("public")).expect("temp dir");
        std::fs::write(dir.join("echo.wasm"), b"").expect("temp file");
        dir
    }

    fn check(text: &str) -> Result<Vec<ListenerSpec>, ConfigFileError> {
        NodeSpec::parse(text, Path::new("shoal.toml"), &base()).map(|spec| spec.listeners)
    }

    fn error(text: &str) -> String {
        match check(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(error) => error.to_string(),
        }
    }

    const TWO: &str = r#"
        [[listener]]
        name = "echo"
        address = "127.0.0.1:7000"
        plugin = "echo.wasm"

        [[listener]]
        name = "chat"
        address = "127.0.0.1:7001"
        plugin = "echo.wasm"
        pool_size = 2
        max_connections = 50
        idle_timeout = "5m"
        cpu_budget_per_call = "20ms"
        memory_limit = "16MiB"
        output_buffer_limit = 65536
        mailbox_messages = 8
        mailbox_bytes = "4KiB"
        cpu_share = 3

        [listener.capabilities]
        env = { GREETING = "hello" }
        config = { room = "lobby" }
        read_only_dir = { host = "public", guest = "/public" }
    "#;

    #[test]
    fn two_listeners_with_their_own_limits_and_grants() -> Result<(), ConfigFileError> {
        let specs = check(TWO)?;
        assert_eq!(specs.len(), 2);
        let (echo, chat) = (&specs[0].config, &specs[1].config);
        assert_eq!(echo.name(), "echo");
        assert_eq!(echo.capabilities(), &Capabilities::default());
        assert_eq!(echo.memory_limit(), ServerConfig::default().memory_limit());
        assert_eq!(specs[1].address, "127.0.0.1:7001".parse().expect("address"));
        assert_eq!(chat.pool_size(), 2);
        assert_eq!(chat.max_connections(), 50);
        assert_eq!(chat.idle_timeout(), Duration::from_secs(300));
        assert_eq!(chat.cpu_budget_per_call(), Duration::from_millis(20));
        assert_eq!(chat.memory_limit(), 16 << 20);
        assert_eq!(chat.output_buffer_limit(), 65536);
        assert_eq!((chat.mailbox_messages(), chat.mailbox_bytes()), (8, 4096));
        assert_eq!((echo.cpu_share(), chat.cpu_share()), (1, 3));
        let grants = chat.capabilities();
        assert_eq!(grants.env_vars(), [("GREETING".into(), "hello".into())]);
        assert_eq!(grants.config_value("room"), Some("lobby"));
        assert_eq!(grants.dir().map(|d| d.guest.as_str()), Some("/public"));
        Ok(())
    }

    #[test]
    fn the_copy_on_write_pool_is_read_and_bounded() -> Result<(), ConfigFileError> {
        let text = format!("copy_on_write_instances = 300\n{TWO}");
        let spec = NodeSpec::parse(&text, Path::new("shoal.toml"), &base())?;
        assert_eq!(spec.copy_on_write_instances, Some(300));
        let message = error(&format!("copy_on_write_instances = 0\n{TWO}"));
        assert!(message.contains("it is 1 to 16384"), "{message}");
        Ok(())
    }

    #[test]
    fn hibernation_settings_are_read() -> Result<(), ConfigFileError> {
        let text = TWO.replace(
            "cpu_share = 3",
            "cpu_share = 3\nmax_instances = 10\nhibernate_after = \"30s\"\n\
             hibernate_state_limit = \"4KiB\"",
        );
        let specs = check(&text)?;
        let chat = &specs[1].config;
        assert_eq!(chat.max_instances(), 10);
        assert_eq!(chat.hibernate_after(), Some(Duration::from_secs(30)));
        assert_eq!(chat.hibernate_state_limit(), 4096);
        assert_eq!(specs[0].config.hibernate_after(), None);
        Ok(())
    }

    #[test]
    fn a_tls_table_is_read_with_paths_from_the_files_folder() {
        // No certificate there: the error names the listener, the setting and the file
        // found from the config file's folder.
        let text = format!(
            "{TWO}\n[listener.tls]\ncert = \"certs/server.pem\"\nkey = \"certs/key.pem\"\n"
        );
        let message = error(&text);
        assert!(
            message.contains("invalid `tls.cert`: cannot read ")
                && message.contains(&format!("{}", base().join("certs/server.pem").display())),
            "{message}"
        );
        let unknown = format!("{TWO}\n[listener.tls]\ncert = \"c\"\nkey = \"k\"\nciphers = []\n");
        assert!(error(&unknown).contains("unknown field `ciphers`"));
    }

    #[test]
    fn a_listener_with_certificates_serves_tls() -> Result<(), ConfigFileError> {
        let dir = base().join("good-certs");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pair = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&pair).expect("cert");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), pair.serialize_pem()).expect("write");
        let text = format!(
            "{TWO}\n[listener.tls]\ncert = \"good-certs/cert.pem\"\nkey = \"good-certs/key.pem\"\n\
             handshake_timeout = \"2s\"\nalpn = [\"http/1.1\"]\n"
        );
        let specs = check(&text)?;
        assert!(specs[0].config.tls().is_none());
        let tls = specs[1].config.tls().map(Tls::files);
        assert_eq!(
            tls.map(|f| f.handshake_timeout),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            tls.map(|f| f.alpn.clone()),
            Some(vec!["http/1.1".to_string()])
        );
        assert_eq!(tls.map(|f| f.cert.clone()), Some(dir.join("cert.pem")));
        Ok(())
    }

    #[test]
    fn the_log_format_is_read_first_and_checked_with_the_rest() {
        let json = format!("log_format = \"json\"\n{TWO}");
        assert_eq!(LogFormat::of_config(&json), Some(LogFormat::Json));
        assert!(check(&json).is_ok());
        assert_eq!(LogFormat::of_config(TWO), None);
        let xml = format!("log_format = \"xml\"\n{TWO}");
        assert_eq!(LogFormat::of_config(&xml), None);
        assert!(
            error(&xml).contains("unknown variant `xml`"),
            "{}",
            error(&xml)
        );
    }

    #[test]
    fn the_admin_listener_is_read_and_kept_on_loopback() -> Result<(), ConfigFileError> {
        let text = format!("[admin]\naddress = \"127.0.0.1:9090\"\n{TWO}");
        let spec = NodeSpec::parse(&text, Path::new("shoal.toml"), &base())?;
        let admin = spec.admin.expect("an admin listener");
        assert_eq!(admin.address, "127.0.0.1:9090".parse().expect("address"));
        assert_eq!(admin.token_file, None);
        let open = format!("[admin]\naddress = \"0.0.0.0:9090\"\n{TWO}");
        let message = error(&open);
        assert!(
            message.contains("[admin] address: 0.0.0.0:9090 is not a loopback"),
            "{message}"
        );
        let guarded = format!("[admin]\naddress = \"0.0.0.0:9090\"\ntoken_file = \"t\"\n{TWO}");
        let spec = NodeSpec::parse(&guarded, Path::new("shoal.toml"), &base())?;
        assert_eq!(
            spec.admin.and_then(|a| a.token_file),
            Some(base().join("t"))
        );
        Ok(())
    }

    #[test]
    fn a_misspelt_field_is_named() {
        let text = TWO.replace("idle_timeout", "idel_timeout");
        let message = error(&text);
        assert!(message.contains("idel_timeout"), "{message}");
    }

    #[test]
    fn a_bad_duration_says_how_to_write_one() {
        let message = error(&TWO.replace("\"5m\"", "\"5 parsecs\""));
        assert!(message.contains("is not a duration"), "{message}");
        assert!(message.contains("line"), "{message}");
    }

    #[test]
    fn a_bad_size_says_how_to_write_one() {
        let message = error(&TWO.replace("\"16MiB\"", "\"16 megs\""));
        assert!(message.contains("is not a size"), "{message}");
    }

    #[test]
    fn a_value_that_cannot_work_names_the_listener_and_field() {
        let message = error(&TWO.replace("pool_size = 2", "pool_size = 0"));
        assert_eq!(
            message,
            "shoal.toml: listener `chat`: invalid `pool_size`: must be between 1 and 1024"
        );
        let message = error(&TWO.replace("\"16MiB\"", "\"1KiB\""));
        assert!(message.contains("invalid `memory_limit`"), "{message}");
        let message = error(&TWO.replace("pool_size = 2", "pool_size = 99999999999"));
        assert_eq!(
            message,
            "shoal.toml: listener `chat`: invalid `pool_size`: must be between 1 and 1024"
        );
        let message = error(&TWO.replace("\"5m\"", "\"99999999h\""));
        assert!(
            message.contains("listener `chat`: invalid `idle_timeout`: must be between"),
            "{message}"
        );
        let message = error(&TWO.replace("cpu_share = 3", "cpu_share = 0"));
        assert_eq!(
            message,
            "shoal.toml: listener `chat`: invalid `cpu_share`: must be between 1 and 1000"
        );
    }

    #[test]
    fn addresses_names_and_plugins_are_checked() {
        let message = error(&TWO.replace("127.0.0.1:7001", "127.0.0.1:7000"));
        assert!(message.contains("invalid `address`"), "{message}");
        let message = error(&TWO.replace("\"chat\"", "\"echo\""));
        assert!(message.contains("invalid `name`"), "{message}");
        let message = error(&TWO.replace("\"chat\"", "\"\""));
        assert!(
            message.contains("listener `#2`: invalid `name`: must not be empty"),
            "an unnamed listener is named by its place: {message}"
        );
        let message = error(&TWO.replace("\"chat\"", "\"ch\\nat\""));
        assert!(message.contains("control character"), "{message}");
        let message = error(&TWO.replace("127.0.0.1:7001", "localhost"));
        assert!(
            message.contains("is not an IP address and port"),
            "{message}"
        );
        let message = error(&TWO.replacen("echo.wasm", "missing.wasm", 1));
        assert!(message.contains("invalid `plugin`"), "{message}");
        let message = error(&TWO.replace("host = \"public\"", "host = \"nowhere\""));
        assert!(message.contains("invalid `read_only_dir`"), "{message}");
    }

    #[test]
    fn the_example_file_is_valid_and_states_the_defaults() -> Result<(), ConfigFileError> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let spec = NodeSpec::load(root.join("shoal.example.toml"))?;
        let specs = &spec.listeners;
        let defaults = ServerConfig::default();
        let echo = &specs[0].config;
        assert_eq!(echo.pool_size(), defaults.pool_size());
        assert_eq!(echo.max_connections(), defaults.max_connections());
        assert_eq!(echo.idle_timeout(), defaults.idle_timeout());
        assert_eq!(echo.cpu_budget_per_call(), defaults.cpu_budget_per_call());
        assert_eq!(echo.call_timeout(), defaults.call_timeout());
        assert_eq!(echo.write_timeout(), defaults.write_timeout());
        assert_eq!(echo.shutdown_timeout(), defaults.shutdown_timeout());
        assert_eq!(echo.memory_limit(), defaults.memory_limit());
        assert_eq!(echo.output_buffer_limit(), defaults.output_buffer_limit());
        assert_eq!(echo.read_buffer_size(), defaults.read_buffer_size());
        assert_eq!(echo.mailbox_messages(), defaults.mailbox_messages());
        assert_eq!(echo.cpu_share(), defaults.cpu_share());
        assert!(spec.cpu_shares);
        assert_eq!(echo.mailbox_bytes(), defaults.mailbox_bytes());
        assert_eq!(echo.capabilities(), defaults.capabilities());
        Ok(())
    }

    #[test]
    fn the_cache_folder_is_relative_to_the_file() -> Result<(), ConfigFileError> {
        let text = format!("cache_dir = \"cache\"\n{TWO}");
        let spec = NodeSpec::parse(&text, Path::new("shoal.toml"), &base())?;
        assert_eq!(spec.cache_dir, Some(base().join("cache")));
        assert_eq!(check(TWO).map(|l| l.len()).ok(), Some(2));
        let spec = NodeSpec::parse(TWO, Path::new("shoal.toml"), &base())?;
        assert_eq!(spec.cache_dir, None);
        assert!(spec.cpu_shares, "on unless turned off");
        let off = format!("cpu_shares = false\n{TWO}");
        assert!(!NodeSpec::parse(&off, Path::new("shoal.toml"), &base())?.cpu_shares);
        Ok(())
    }

    #[test]
    fn a_file_without_listeners_is_refused() {
        assert!(error("").contains("no listener"));
    }
}
