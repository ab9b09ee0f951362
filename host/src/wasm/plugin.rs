//! A plugin, loaded in steps: read the file → compile it (or load it from the compile
//! cache) → check it against the `shoal:plugin` world → link it with the engine's one
//! linker into an instance template that every connection instantiates.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, InstancePre};

use crate::config::units::size_in_words;
use crate::error::PluginError;
use crate::wasm::bindings::legacy;
use crate::wasm::cache::Lookup;
use crate::wasm::digest::ContentHash;
use crate::wasm::exports::{HANDLER_EXPORT, PluginExports, WorldVersion};
use crate::wasm::runtime::{MemoryInit, PluginEngine, Runtime, RuntimeConfig};
use crate::wasm::shape::Shape;
use crate::wasm::store::ConnState;

/// A compiled, validated plugin, ready to be instantiated for each connection. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    name: Arc<str>,
    runtime: Runtime,
    engine: Arc<PluginEngine>,
    pre: InstancePre<ConnState>,
    exports: PluginExports,
    hash: ContentHash,
    load: LoadReport,
}

/// How a plugin was loaded: for the log line an operator reads at start
/// (`compiled echo.wasm (24 KiB) in 38 ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadReport {
    /// Whether Cranelift compiled it or the compile cache had it.
    pub compilation: Compilation,
    /// The size of the component file in bytes.
    pub size: usize,
    /// From reading the bytes to a linked plugin.
    pub took: Duration,
    /// Bytes of data its memory starts with (of its largest core module).
    pub image_bytes: usize,
    /// Whether that memory is copied or mapped copy-on-write for each instance.
    pub memory_init: MemoryInit,
}

/// Where a plugin's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compilation {
    /// Compiled now (and saved to the compile cache, if there is one).
    Compiled,
    /// Loaded from the compile cache.
    FromCache,
}

impl LoadReport {
    /// The log line for the plugin loaded from `file`: `compiled echo.wasm (24 KiB) in 38 ms`
    /// or `loaded echo.wasm (24 KiB) from cache in 2 ms`, and for a large guest
    /// `…, memory mapped copy-on-write from a 2637 KiB image`.
    #[must_use]
    pub fn describe(&self, file: &str) -> String {
        let millis = self.took.as_secs_f64() * 1e3;
        let size = kib(self.size);
        let how = match self.compilation {
            Compilation::Compiled => format!("compiled {file} ({size}) in {millis:.0} ms"),
            Compilation::FromCache => {
                format!("loaded {file} ({size}) from cache in {millis:.0} ms")
            }
        };
        match self.memory_init {
            MemoryInit::Copy => how,
            MemoryInit::CopyOnWrite => format!(
                "{how}, memory mapped copy-on-write from a {} image",
                kib(self.image_bytes)
            ),
        }
    }
}

fn kib(bytes: usize) -> String {
    format!("{} KiB", bytes.div_ceil(1024))
}

impl Plugin {
    /// Load a component from a file; the plugin is named after the file's stem (in logs),
    /// and errors name the path as given. The file's kind, size and header are checked
    /// before it is read: a FIFO is never opened, a file past the runtime's
    /// `max_plugin_bytes` never read.
    ///
    /// # Errors
    ///
    /// See [`Plugin::from_bytes`]; also [`PluginError::Read`] when the file cannot be read,
    /// [`PluginError::NotAFile`] and [`PluginError::TooLarge`].
    pub fn from_file(runtime: &Runtime, path: impl AsRef<Path>) -> Result<Self, PluginError> {
        let started = Instant::now();
        let path = path.as_ref();
        let bytes = read_plugin_file(path, runtime.config().max_plugin_bytes())?;
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into(),
        );
        load(
            runtime,
            Arc::from(name),
            &path.display().to_string(),
            &bytes,
            started,
        )
    }

    /// Compile (or load from the runtime's compile cache) a component, check that it
    /// implements the `shoal:plugin` world, and link it.
    ///
    /// # Errors
    ///
    /// A [`PluginError`] saying what is wrong: not Wasm, a core module rather than a component,
    /// a compile error, the handler export missing or mistyped, or an import shoal does not
    /// provide.
    pub fn from_bytes(runtime: &Runtime, name: &str, bytes: &[u8]) -> Result<Self, PluginError> {
        let max = runtime.config().max_plugin_bytes();
        if bytes.len() > max {
            return Err(PluginError::TooLarge {
                path: name.into(),
                size: size_in_words(&bytes.len()),
                max: size_in_words(&max),
            });
        }
        load(runtime, Arc::from(name), name, bytes, Instant::now())
    }

    /// The plugin's name, used in logs.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The SHA-256 of the component's bytes (what `sha256sum` prints for its file).
    #[must_use]
    pub fn content_hash(&self) -> &ContentHash {
        &self.inner.hash
    }

    /// How it was loaded: compiled or from the cache, its size, how long it took.
    #[must_use]
    pub fn load_report(&self) -> LoadReport {
        self.inner.load
    }

    pub(crate) fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.inner.name)
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The engine the plugin was compiled for: every store of its instances is made on it.
    pub(crate) fn engine(&self) -> &wasmtime::Engine {
        self.inner.engine.engine()
    }

    pub(crate) fn pre(&self) -> &InstancePre<ConnState> {
        &self.inner.pre
    }

    pub(crate) fn exports(&self) -> &PluginExports {
        &self.inner.exports
    }

    /// The version of the `shoal:plugin` world the plugin was built against.
    #[must_use]
    pub fn world_version(&self) -> WorldVersion {
        self.inner.exports.world()
    }

    /// Whether the plugin exports `handoff`: its connections can move to a newer version
    /// with their state.
    #[must_use]
    pub fn exports_handoff(&self) -> bool {
        self.inner.exports.has_handoff()
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name())
            .field("hash", &self.inner.hash)
            .finish_non_exhaustive()
    }
}

/// Read a plugin file: a regular file, no larger than `max` bytes, with a WebAssembly
/// header — each checked before the rest is read.
pub(crate) fn read_plugin_file(path: &Path, max: usize) -> Result<Vec<u8>, PluginError> {
    use std::io::Read;
    let unreadable = |error| PluginError::Read {
        path: path.to_path_buf(),
        error,
    };
    // The kind first, from the path: opening a FIFO for reading would wait for a writer.
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if !meta.is_file() {
        return Err(PluginError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let too_large = |len: u64| PluginError::TooLarge {
        path: path.to_path_buf(),
        size: usize::try_from(len)
            .map_or_else(|_| format!("{len} bytes"), |len| size_in_words(&len)),
        max: size_in_words(&max),
    };
    if usize::try_from(meta.len()).map_or(true, |len| len > max) {
        return Err(too_large(meta.len()));
    }
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    let mut header = [0u8; 8];
    let got = read_up_to(&mut file, &mut header).map_err(unreadable)?;
    check_header(&path.display().to_string(), &header[..got])?;
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    bytes.extend_from_slice(&header[..got]);
    // The file may have grown since: read no more than the cap allows.
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit.saturating_sub(got as u64))
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() > max {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Read into `buffer` until it is full or the file ends; how many bytes came.
fn read_up_to(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut got = 0;
    while got < buffer.len() {
        match file.read(&mut buffer[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// The steps after reading: header, compile (or cache), world check, link. `name` is the
/// plugin's name in logs, `shown` how errors name it (the path as given, for a file).
fn load(
    runtime: &Runtime,
    name: Arc<str>,
    shown: &str,
    bytes: &[u8],
    started: Instant,
) -> Result<Plugin, PluginError> {
    check_header(shown, bytes)?;
    // A component that does not parse is left for the compiler to describe.
    let shape = Shape::of(bytes).ok();
    fits_the_pool(runtime, shown, shape)?;
    let image_bytes = shape.map_or(0, |shape| shape.image_bytes);
    let engine = runtime
        .plugin_engine(runtime.config().memory_init_for(image_bytes))
        .map_err(|error| PluginError::Engine {
            name: shown.to_string(),
            error,
        })?;
    let hash = ContentHash::of(bytes);
    let (component, compilation) = compile(runtime, &engine, &name, shown, bytes, &hash)?;
    check_world(shown, &engine, &component)?;
    let (pre, exports) = link(&engine, shown, &component)?;
    let load = LoadReport {
        compilation,
        size: bytes.len(),
        took: started.elapsed(),
        image_bytes,
        memory_init: engine.memory_init(),
    };
    Ok(Plugin {
        inner: Arc::new(PluginInner {
            name,
            runtime: runtime.clone(),
            engine,
            pre,
            exports,
            hash,
            load,
        }),
    })
}

/// While a compile runs, a log line every few seconds says how long it has taken: Cranelift
/// spends seconds to tens of seconds on a JavaScript or Python component, and a start that
/// prints nothing meanwhile looks hung. Dropping it stops the lines.
struct CompileProgress {
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CompileProgress {
    fn start(name: &str, size: usize, config: &RuntimeConfig) -> Self {
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let every = config.compile_progress_every();
        let name = name.to_string();
        let thread = std::thread::Builder::new()
            .name("compile-progress".into())
            .spawn(move || {
                let started = Instant::now();
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    finished.recv_timeout(every)
                {
                    tracing::info!(
                        plugin = %name,
                        "still compiling {name} ({}): {:.0?} so far",
                        kib(size),
                        started.elapsed(),
                    );
                }
            })
            // Without a thread there are no progress lines, and nothing else is lost.
            .ok();
        Self {
            done: Some(done),
            thread,
        }
    }
}

impl Drop for CompileProgress {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A component that creates more core instances than the engine's pool allows per component
/// is refused naming the setting, before Cranelift spends its time on it.
fn fits_the_pool(runtime: &Runtime, shown: &str, shape: Option<Shape>) -> Result<(), PluginError> {
    let allowed = runtime.config().core_instances_per_component();
    match shape {
        Some(Shape {
            core_instances: needed,
            ..
        }) if needed > allowed => Err(PluginError::TooManyCoreInstances {
            name: shown.to_string(),
            needed,
            allowed,
        }),
        _ => Ok(()),
    }
}

/// Tell "not Wasm", "a core module" and "an unknown version" apart before wasmtime gives a
/// generic parse error.
fn check_header(name: &str, bytes: &[u8]) -> Result<(), PluginError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(PluginError::NotWasm { name: name.into() });
    }
    // Bytes 4..8: a 16-bit version, then a 16-bit layer (little-endian): version 1, layer 0
    // for a core module; layer 1 for a component.
    let field = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    match (field(4), field(6)) {
        (Some(1), Some(0)) => Err(PluginError::NotComponent { name: name.into() }),
        (_, Some(1)) | (None, _) | (_, None) => Ok(()),
        (Some(version), Some(layer)) => Err(PluginError::UnknownVersion {
            name: name.into(),
            version,
            layer,
        }),
    }
}

/// The compiled component: from the cache when it has this file for this engine, otherwise
/// from Cranelift (and then saved). A cache that fails only costs a warning.
fn compile(
    runtime: &Runtime,
    on: &PluginEngine,
    name: &str,
    shown: &str,
    bytes: &[u8],
    hash: &ContentHash,
) -> Result<(Component, Compilation), PluginError> {
    let engine = on.engine();
    let cache = on.cache();
    if let Some(cache) = cache {
        match cache.load(engine, hash) {
            Lookup::Hit(component) => return Ok((component, Compilation::FromCache)),
            Lookup::Miss => {
                for other in cache.other_builds(hash) {
                    tracing::warn!(
                        plugin = name,
                        "compile cache entry {} was compiled by another engine build (another \
                         shoal or wasmtime version, or other memory settings); compiling for \
                         this one",
                        other.display()
                    );
                }
            }
            Lookup::Unusable { path, problem } => tracing::warn!(
                plugin = name,
                "compile cache entry {} is unusable ({problem}); compiling again",
                path.display()
            ),
        }
    }
    let progress = CompileProgress::start(name, bytes.len(), runtime.config());
    let compiled = Component::new(engine, bytes);
    drop(progress);
    let component = compiled.map_err(|e| PluginError::Compile {
        name: shown.to_string(),
        message: one_line(&format!("{e:#}")),
    })?;
    if let Some(cache) = cache
        && let Err(error) = cache.store(hash, &component)
    {
        tracing::warn!(
            plugin = name,
            "cannot save {name} in the compile cache {}: {error}",
            cache.dir().display()
        );
    }
    Ok((component, Compilation::Compiled))
}

/// The component must export the handler interface of the `shoal:plugin` world.
fn check_world(name: &str, on: &PluginEngine, component: &Component) -> Result<(), PluginError> {
    let engine = on.engine();
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(export, _)| export).collect();
    if exports.contains(&HANDLER_EXPORT) || exports.contains(&legacy::HANDLER_EXPORT) {
        return Ok(());
    }
    let found = if exports.is_empty() {
        "nothing".to_string()
    } else {
        exports.join(", ")
    };
    Err(PluginError::MissingExport {
        name: name.into(),
        missing: HANDLER_EXPORT.into(),
        found,
    })
}

/// Resolve every import against the engine's linker and type-check the exports.
fn link(
    on: &PluginEngine,
    name: &str,
    component: &Component,
) -> Result<(InstancePre<ConnState>, PluginExports), PluginError> {
    let instance_pre =
        on.linker()
            .instantiate_pre(component)
            .map_err(|e| PluginError::UnsatisfiedImport {
                name: name.to_string(),
                message: format!("{e:#}"),
            })?;
    let exports = PluginExports::new(&instance_pre).map_err(|e| PluginError::WrongExport {
        name: name.to_string(),
        message: format!("{e:#}"),
    })?;
    Ok((instance_pre, exports))
}

/// `message` on one line: wasmtime writes some (a bad magic number's bytes) over many, and
/// one error must stay one line of the log.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compile_error_is_one_line() {
        let message =
            "bad magic number - expected=[\n    0x0,\n    0x61,\n] actual=[\n    0x41,\n]";
        assert_eq!(
            one_line(message),
            "bad magic number - expected=[ 0x0, 0x61, ] actual=[ 0x41, ]"
        );
    }

    #[test]
    fn text_is_not_wasm() {
        let err = check_header("notes", b"hello world");
        assert!(matches!(err, Err(PluginError::NotWasm { .. })));
    }

    #[test]
    fn core_module_is_not_a_component() {
        let core = b"\0asm\x01\0\0\0";
        let err = check_header("core", core);
        assert!(matches!(err, Err(PluginError::NotComponent { .. })));
    }

    #[test]
    fn a_header_of_an_unknown_version_says_so() {
        let err = check_header("future", b"\0asm\x02\0\0\0");
        assert!(matches!(
            err,
            Err(PluginError::UnknownVersion {
                version: 2,
                layer: 0,
                ..
            })
        ));
    }

    #[test]
    fn component_header_passes() {
        let component = b"\0asm\x0d\0\x01\0";
        assert!(check_header("component", component).is_ok());
    }

    #[test]
    fn the_load_report_reads_as_a_log_line() {
        let compiled = LoadReport {
            compilation: Compilation::Compiled,
            size: 24 * 1024 - 100,
            took: Duration::from_millis(38),
            image_bytes: 2_000,
            memory_init: MemoryInit::Copy,
        };
        assert_eq!(
            compiled.describe("echo.wasm"),
            "compiled echo.wasm (24 KiB) in 38 ms"
        );
        let cached = LoadReport {
            compilation: Compilation::FromCache,
            ..compiled
        };
        assert_eq!(
            cached.describe("echo.wasm"),
            "loaded echo.wasm (24 KiB) from cache in 38 ms"
        );
        let large = LoadReport {
            image_bytes: 2 << 20,
            memory_init: MemoryInit::CopyOnWrite,
            ..cached
        };
        assert_eq!(
            large.describe("echo-js.wasm"),
            "loaded echo-js.wasm (24 KiB) from cache in 38 ms, memory mapped copy-on-write \
             from a 2048 KiB image"
        );
    }
}
