//! The compile cache: a plugin compiled once is kept on disk, so that the next start with the
//! same plugin file on the same engine build skips Cranelift.
//!
//! An entry is named by the component's SHA-256 and the engine's compatibility hash (the
//! wasmtime version, target, compiler settings and memory layout), so a changed plugin or
//! engine never finds an old entry. It holds a small header — a magic tag and the SHA-256 of
//! the payload — and the payload, wasmtime's serialized compiled component. Entries are
//! written to a temporary file and renamed into place, so a reader sees a whole entry or none;
//! they are never evicted (delete the folder at any time to empty it).
//!
//! # Why loading an entry is trusted
//!
//! Deserializing a compiled component is `unsafe` in wasmtime: the payload is machine code
//! that will run as it is, so a planted or damaged file could do anything. shoal loads an
//! entry only when:
//!
//! * the folder is owned by the user shoal runs as and is writable by nobody else (shoal
//!   creates it with mode 0700): no other local user can plant an entry, so every entry was
//!   written by this user's shoal;
//! * the entry's payload matches the SHA-256 in its header: a truncated, partly written or
//!   corrupted file is recompiled (with a warning), never loaded;
//! * wasmtime accepts its header: same wasmtime version, target, settings and features as the
//!   running engine.
//!
//! A folder that fails the ownership check is not used at all (a warning says why); a folder
//! that is read-only is used for loading only.

use std::fs;
use std::hash::Hash;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::wasm::digest::{self, ContentHash, Sha256Hasher};

/// The first bytes of every entry: what it is, and the layout's version.
const MAGIC: &[u8; 8] = b"shoalcc1";
/// Magic, then the payload's SHA-256.
const HEADER_LEN: usize = MAGIC.len() + 32;

/// The compile cache folder: `$XDG_CACHE_HOME/shoal`, else `$HOME/.cache/shoal`; `None` when
/// neither variable is set.
#[must_use]
pub fn default_cache_dir() -> Option<PathBuf> {
    let from = |var: &str| std::env::var_os(var).filter(|value| !value.is_empty());
    from("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| from("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .map(|base| base.join("shoal"))
}

/// A compile cache folder that passed the trust checks, for one engine.
#[derive(Debug)]
pub(crate) struct CompileCache {
    dir: PathBuf,
    writable: bool,
    /// The engine's compatibility hash, shortened: the second half of every entry's name.
    engine_key: String,
}

/// Why a cache folder is not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CacheUnusable {
    #[error("cannot create it: {0}")]
    Create(#[source] io::Error),
    #[error("cannot read it: {0}")]
    Inspect(#[source] io::Error),
    #[error("it is not a directory")]
    NotADirectory,
    #[error("it is owned by uid {owner}, not by this user (uid {me})")]
    NotOwned { owner: u32, me: u32 },
    #[error("other users may write to it (mode {mode:o}); `chmod 700` it")]
    WritableByOthers { mode: u32 },
}

/// What a lookup found.
pub(crate) enum Lookup {
    /// A whole entry, loaded.
    Hit(Component),
    /// No entry for this component and engine.
    Miss,
    /// An entry that cannot be used: why, and where it is. It will be replaced.
    Unusable { path: PathBuf, problem: String },
}

impl CompileCache {
    /// Use `dir` (created with mode 0700 if missing) as the cache of `engine`.
    pub(crate) fn open(dir: &Path, engine: &Engine) -> Result<Self, CacheUnusable> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(CacheUnusable::Create)?;
        let meta = fs::metadata(dir).map_err(CacheUnusable::Inspect)?;
        if !meta.is_dir() {
            return Err(CacheUnusable::NotADirectory);
        }
        let me = effective_uid();
        if meta.uid() != me {
            return Err(CacheUnusable::NotOwned {
                owner: meta.uid(),
                me,
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o022 != 0 {
            return Err(CacheUnusable::WritableByOthers { mode });
        }
        let mut hasher = Sha256Hasher::default();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_path_buf(),
            // Judged by the mode, not by trying: a folder made read-only on purpose stays so
            // even for root, who could write to it anyway.
            writable: mode & 0o200 != 0,
            engine_key: digest::hex(&hasher.digest()[..8]),
        })
    }

    /// The folder.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether new entries are saved (the folder's mode lets its owner write).
    pub(crate) fn is_writable(&self) -> bool {
        self.writable
    }

    /// Where the entry for a component with hash `hash` lives.
    pub(crate) fn entry_path(&self, hash: &ContentHash) -> PathBuf {
        self.dir.join(format!("{hash}-{}.cwasm", self.engine_key))
    }

    /// Look up the compiled component for `hash`.
    pub(crate) fn load(&self, engine: &Engine, hash: &ContentHash) -> Lookup {
        let path = self.entry_path(hash);
        let unusable = |problem: String| Lookup::Unusable {
            path: path.clone(),
            problem,
        };
        let entry = match fs::read(&path) {
            Ok(entry) => entry,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Lookup::Miss,
            Err(error) => return unusable(format!("cannot read it: {error}")),
        };
        let payload = match verified_payload(&entry) {
            Ok(payload) => payload,
            Err(problem) => return unusable(problem.to_string()),
        };
        match deserialize(engine, payload) {
            Ok(component) => Lookup::Hit(component),
            Err(error) => unusable(format!("wasmtime refused it: {error:#}")),
        }
    }

    /// Save `component`, compiled from a file with hash `hash`. Does nothing in a read-only
    /// folder.
    ///
    /// # Errors
    ///
    /// When the component cannot be serialized or the entry cannot be written.
    pub(crate) fn store(&self, hash: &ContentHash, component: &Component) -> io::Result<()> {
        if !self.writable {
            return Ok(());
        }
        let payload = component
            .serialize()
            .map_err(|error| io::Error::other(format!("{error:#}")))?;
        let path = self.entry_path(hash);
        let temp = self.dir.join(format!(
            ".{hash}.{}.{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let written = write_entry(&temp, &payload).and_then(|()| fs::rename(&temp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }
}

/// Tells apart the temporary files of concurrent stores from one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_entry(path: &Path, payload: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(MAGIC)?;
    file.write_all(ContentHash::of(payload).as_bytes())?;
    file.write_all(payload)?;
    file.flush()
}

/// What is wrong with an entry's bytes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EntryProblem {
    #[error("it is truncated (shorter than its header)")]
    Truncated,
    #[error("it is not a shoal compile cache entry (or of another layout version)")]
    NotAnEntry,
    #[error("its content does not match its checksum (truncated or corrupted)")]
    ChecksumMismatch,
}

/// The payload of an entry, once its header and checksum say it is whole.
pub(crate) fn verified_payload(entry: &[u8]) -> Result<&[u8], EntryProblem> {
    if entry.len() < HEADER_LEN {
        return Err(EntryProblem::Truncated);
    }
    let (header, payload) = entry.split_at(HEADER_LEN);
    let (magic, checksum) = header.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(EntryProblem::NotAnEntry);
    }
    if ContentHash::of(payload).as_bytes().as_slice() != checksum {
        return Err(EntryProblem::ChecksumMismatch);
    }
    Ok(payload)
}

/// Load a compiled component written by [`CompileCache::store`].
#[allow(unsafe_code)]
fn deserialize(engine: &Engine, payload: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: wasmtime requires the bytes to come from `Component::serialize` of a trusted
    // engine. They do: the folder passed the ownership checks in `CompileCache::open`, so
    // only this user's shoal wrote the entry, and the payload matched the SHA-256 written
    // with it, so it is the whole of what was serialized. wasmtime checks the rest (its own
    // header: version, target, settings) and returns an error on a mismatch.
    unsafe { Component::deserialize(engine, payload) }
}

/// The effective user id of this process.
#[allow(unsafe_code)]
fn effective_uid() -> u32 {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(payload: &[u8]) -> Vec<u8> {
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(ContentHash::of(payload).as_bytes());
        entry.extend_from_slice(payload);
        entry
    }

    #[test]
    fn a_whole_entry_gives_its_payload() {
        let entry = entry(b"compiled code");
        assert_eq!(verified_payload(&entry), Ok(&b"compiled code"[..]));
    }

    #[test]
    fn a_damaged_entry_is_never_loaded() {
        let whole = entry(b"compiled code");
        let truncated = &whole[..whole.len() - 1];
        assert_eq!(
            verified_payload(truncated),
            Err(EntryProblem::ChecksumMismatch)
        );
        assert_eq!(verified_payload(&whole[..10]), Err(EntryProblem::Truncated));
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            verified_payload(&flipped),
            Err(EntryProblem::ChecksumMismatch)
        );
        let mut foreign = whole;
        foreign[0] = b'X';
        assert_eq!(verified_payload(&foreign), Err(EntryProblem::NotAnEntry));
    }

    fn empty_component(engine: &Engine) -> anyhow::Result<Component> {
        Component::new(engine, "(component)").map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    /// A fresh folder under the system's temporary folder.
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("shoal-cache-unit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_missing_folder_is_created_for_this_user_only() -> anyhow::Result<()> {
        let base = scratch("missing");
        let dir = base.join("nested/shoal");
        let cache = CompileCache::open(&dir, &Engine::default())?;
        assert!(cache.is_writable());
        assert_eq!(fs::metadata(&dir)?.permissions().mode() & 0o777, 0o700);
        fs::remove_dir_all(base)?;
        Ok(())
    }

    #[test]
    fn a_folder_others_may_write_is_not_used() -> anyhow::Result<()> {
        let dir = scratch("shared");
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        let opened = CompileCache::open(&dir, &Engine::default());
        assert!(
            matches!(opened, Err(CacheUnusable::WritableByOthers { mode: 0o777 })),
            "{opened:?}"
        );
        fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn a_read_only_folder_is_used_for_loading_only() -> anyhow::Result<()> {
        let dir = scratch("read-only");
        fs::create_dir_all(&dir)?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o500))?;
        let engine = Engine::default();
        let cache = CompileCache::open(&dir, &engine)?;
        assert!(!cache.is_writable());
        let component = empty_component(&engine)?;
        let hash = ContentHash::of(b"(component)");
        cache.store(&hash, &component)?;
        assert!(matches!(cache.load(&engine, &hash), Lookup::Miss));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
        fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn an_entry_round_trips_and_a_damaged_one_is_refused() -> anyhow::Result<()> {
        let dir = scratch("round-trip");
        let engine = Engine::default();
        let cache = CompileCache::open(&dir, &engine)?;
        let component = empty_component(&engine)?;
        let hash = ContentHash::of(b"(component)");
        assert!(matches!(cache.load(&engine, &hash), Lookup::Miss));
        cache.store(&hash, &component)?;
        assert!(matches!(cache.load(&engine, &hash), Lookup::Hit(_)));
        let path = cache.entry_path(&hash);
        let whole = fs::read(&path)?;
        fs::write(&path, &whole[..whole.len() / 2])?;
        let Lookup::Unusable { problem, .. } = cache.load(&engine, &hash) else {
            panic!("a truncated entry must not load");
        };
        assert!(problem.contains("checksum"), "{problem}");
        // Only the entry is in the folder: temporary files were renamed into place.
        assert_eq!(fs::read_dir(&dir)?.count(), 1);
        fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn the_default_folder_follows_xdg() {
        // Read-only check of the rule on this process's environment.
        let dir = default_cache_dir();
        if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            assert_eq!(dir, Some(PathBuf::from(xdg).join("shoal")));
        } else if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            assert_eq!(dir, Some(PathBuf::from(home).join(".cache/shoal")));
        }
    }
}
