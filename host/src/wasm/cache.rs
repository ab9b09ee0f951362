//! The compile cache: a plugin compiled once is kept on disk, so that the next start with the
//! same plugin file on the same engine build skips Cranelift.
//!
//! An entry is named by the component's SHA-256 and the engine's compatibility hash (the
//! wasmtime version, target, compiler settings and memory layout), so a changed plugin or
//! engine never finds an old entry (a miss where another build's entry for the same plugin
//! exists is reported with a warning). It holds a small header — a magic tag and the SHA-256
//! of the payload — and the payload, wasmtime's serialized compiled component. Entries are
//! written to a temporary file (mode 0600) and renamed into place, so a reader sees a whole
//! entry or none. Entries are never evicted — each plugin version and each engine build adds
//! one; delete the folder at any time to empty it. Temporary files left by a process that
//! died mid-write are removed when a cache is opened an hour later or more.
//!
//! # Why loading an entry is trusted
//!
//! Deserializing a compiled component is `unsafe` in wasmtime: the payload is machine code
//! that will run as it is, so a planted or damaged file could do anything. shoal loads an
//! entry only when:
//!
//! * the folder is owned by the user shoal runs as and is writable by nobody else (shoal
//!   creates it with mode 0700), checked when the cache is opened, and so is each entry file
//!   when it is read: no other local user can plant or rewrite an entry, so every entry was
//!   written by this user's shoal. (The folders above it, ACLs and the user's own other
//!   programs are trusted, as they are for the plugin files themselves.)
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
        let cache = Self {
            dir: dir.to_path_buf(),
            // Judged by the mode, not by trying: a folder made read-only on purpose stays so
            // even for root, who could write to it anyway.
            writable: mode & 0o200 != 0,
            engine_key: digest::hex(&hasher.digest()[..8]),
        };
        if cache.writable {
            cache.remove_stale_temp_files();
        }
        Ok(cache)
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
        let entry = match read_own_file(&path) {
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
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // From here the temporary file is ours: remove it if the entry does not make it.
        let written = write_entry(&mut file, &payload).and_then(|()| fs::rename(&temp, &path));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Entries for the component `hash` compiled by other engine builds (another shoal or
    /// wasmtime version, or other memory settings): a miss that is worth a word.
    pub(crate) fn other_builds(&self, hash: &ContentHash) -> Vec<PathBuf> {
        let prefix = format!("{hash}-");
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".cwasm"))
            })
            .collect()
    }

    /// Remove temporary files that a process which died mid-write left behind (older than
    /// [`STALE_TEMP`]; a younger one may be another process's write in progress).
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let is_temp = path
                .file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with('.') && name.ends_with(".tmp"));
            let stale = entry
                .metadata()
                .and_then(|meta| meta.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP);
            if is_temp && stale {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

/// Age past which a temporary file is the leftover of a write that never finished.
const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// Read a file of the cache, refusing one that this user does not own or that others may
/// write: only this user's shoal can have written such a file.
fn read_own_file(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let meta = file.metadata()?;
    if meta.uid() != effective_uid() || meta.permissions().mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "it is not owned by this user, or others may write to it",
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Tells apart the temporary files of concurrent stores from one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn write_entry(file: &mut fs::File, payload: &[u8]) -> io::Result<()> {
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

/// Load a compiled component written by [`CompileCache::store`]. One of the crate's two
/// uses of `unsafe` (with [`effective_uid`]).
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
    fn an_entry_of_another_engine_build_is_refused_by_wasmtime() -> anyhow::Result<()> {
        let dir = scratch("other-engine");
        let ours = Engine::default();
        let mut settings = wasmtime::Config::new();
        settings.epoch_interruption(true);
        let theirs = Engine::new(&settings).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let cache = CompileCache::open(&dir, &ours)?;
        let hash = ContentHash::of(b"(component)");
        // A whole entry, checksum and all, under this engine's name: compiled by another.
        let foreign = empty_component(&theirs)?
            .serialize()
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut file = fs::File::create(cache.entry_path(&hash))?;
        write_entry(&mut file, &foreign)?;
        drop(file);
        let Lookup::Unusable { problem, .. } = cache.load(&ours, &hash) else {
            panic!("another engine's code must not load");
        };
        assert!(problem.contains("wasmtime refused it"), "{problem}");
        // Filed under its own engine's name, the same entry is a miss that is named.
        let theirs_cache = CompileCache::open(&dir, &theirs)?;
        assert_ne!(theirs_cache.entry_path(&hash), cache.entry_path(&hash));
        fs::rename(cache.entry_path(&hash), theirs_cache.entry_path(&hash))?;
        assert!(matches!(cache.load(&ours, &hash), Lookup::Miss));
        assert_eq!(
            cache.other_builds(&hash),
            vec![theirs_cache.entry_path(&hash)]
        );
        fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn an_entry_others_may_write_is_not_loaded() -> anyhow::Result<()> {
        let dir = scratch("entry-mode");
        let engine = Engine::default();
        let cache = CompileCache::open(&dir, &engine)?;
        let hash = ContentHash::of(b"(component)");
        cache.store(&hash, &empty_component(&engine)?)?;
        let path = cache.entry_path(&hash);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o666))?;
        let Lookup::Unusable { problem, .. } = cache.load(&engine, &hash) else {
            panic!("a world-writable entry must not load");
        };
        assert!(problem.contains("others may write"), "{problem}");
        fs::remove_dir_all(dir)?;
        Ok(())
    }

    #[test]
    fn stale_temporary_files_are_removed_fresh_ones_kept() -> anyhow::Result<()> {
        let dir = scratch("stale");
        let engine = Engine::default();
        drop(CompileCache::open(&dir, &engine)?);
        let stale = dir.join(".abc.1.0.tmp");
        let fresh = dir.join(".abc.2.0.tmp");
        fs::write(&stale, b"half an entry")?;
        fs::write(&fresh, b"a write in progress")?;
        let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
        fs::File::options()
            .write(true)
            .open(&stale)?
            .set_modified(two_hours_ago)?;
        drop(CompileCache::open(&dir, &engine)?);
        assert!(!stale.exists());
        assert!(fresh.exists());
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
