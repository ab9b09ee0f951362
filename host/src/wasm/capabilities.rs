//! What a listener's guests may reach beyond their own connection. Nothing by default: no
//! environment variable, no configuration value, no file. Each grant gives exactly what it
//! names; sockets are never granted.

use std::path::PathBuf;

/// The grants of one listener, handed to every instance of its plugin.
///
/// ```
/// use shoal_host::Capabilities;
///
/// let grants = Capabilities::default()
///     .env("GREETING", "hello")
///     .config("room", "lobby")
///     .read_only_dir("/srv/shoal/public", "/public");
/// assert_eq!(grants.env_vars(), [("GREETING".to_string(), "hello".to_string())]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    env: Vec<(String, String)>,
    config: Vec<(String, String)>,
    read_only_dir: Option<ReadOnlyDir>,
}

/// A host directory the guest may read (never write), at a path of its own choosing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOnlyDir {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it (a WASI preopen), e.g. `/public`.
    pub guest: String,
}

impl Capabilities {
    /// Grant an environment variable (seen through WASI `environment`).
    #[must_use]
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Grant a configuration value (seen through the `shoal:plugin/config` import).
    #[must_use]
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// Grant read access to the host directory `host`, seen by the guest at `guest`.
    #[must_use]
    pub fn read_only_dir(mut self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.read_only_dir = Some(ReadOnlyDir {
            host: host.into(),
            guest: guest.into(),
        });
        self
    }

    /// The granted environment variables.
    #[must_use]
    pub fn env_vars(&self) -> &[(String, String)] {
        &self.env
    }

    /// The granted configuration values.
    #[must_use]
    pub fn config_values(&self) -> &[(String, String)] {
        &self.config
    }

    /// One configuration value.
    #[must_use]
    pub fn config_value(&self, key: &str) -> Option<&str> {
        self.config
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The granted directory, if any.
    #[must_use]
    pub fn dir(&self) -> Option<&ReadOnlyDir> {
        self.read_only_dir.as_ref()
    }
}
