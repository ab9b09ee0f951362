//! A plugin: a component compiled once, checked against the `shoal:plugin` world and linked
//! once into an instance template that every connection instantiates.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{Component, HasSelf, Linker};

use crate::bindings::{Plugin as PluginWorld, PluginPre};
use crate::error::PluginError;
use crate::guest::ConnState;
use crate::runtime::Runtime;

/// The name under which every plugin exports its connection handler.
pub const HANDLER_EXPORT: &str = "shoal:plugin/handler@0.1.0";

/// A compiled, validated plugin, ready to be instantiated for each connection. Cheap to clone.
#[derive(Clone)]
pub struct Plugin {
    inner: Arc<PluginInner>,
}

struct PluginInner {
    name: Arc<str>,
    runtime: Runtime,
    pre: PluginPre<ConnState>,
}

impl Plugin {
    /// Load a component from a file; the plugin is named after the file's stem.
    ///
    /// # Errors
    ///
    /// See [`Plugin::from_bytes`]; also [`PluginError::Read`] when the file cannot be read.
    pub fn from_file(runtime: &Runtime, path: impl AsRef<Path>) -> Result<Self, PluginError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into(),
        );
        Self::from_bytes(runtime, &name, &bytes)
    }

    /// Compile a component and check that it implements the `shoal:plugin` world.
    ///
    /// # Errors
    ///
    /// A [`PluginError`] saying what is wrong: not Wasm, a core module rather than a component,
    /// a compile error, the handler export missing or mistyped, or an import shoal does not
    /// provide.
    pub fn from_bytes(runtime: &Runtime, name: &str, bytes: &[u8]) -> Result<Self, PluginError> {
        let name: Arc<str> = Arc::from(name);
        check_header(&name, bytes)?;
        let engine = runtime.engine();
        let component = Component::new(engine, bytes).map_err(|e| PluginError::Compile {
            name: name.to_string(),
            message: format!("{e:#}"),
        })?;
        check_handler_export(&name, runtime, &component)?;
        let linker = linker(runtime).map_err(|e| PluginError::Compile {
            name: name.to_string(),
            message: format!("cannot link host functions: {e:#}"),
        })?;
        let instance_pre =
            linker
                .instantiate_pre(&component)
                .map_err(|e| PluginError::UnsatisfiedImport {
                    name: name.to_string(),
                    message: format!("{e:#}"),
                })?;
        let pre = PluginPre::new(instance_pre).map_err(|e| PluginError::WrongExport {
            name: name.to_string(),
            message: format!("{e:#}"),
        })?;
        Ok(Self {
            inner: Arc::new(PluginInner {
                name,
                runtime: runtime.clone(),
                pre,
            }),
        })
    }

    /// The plugin's name, used in logs.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn shared_name(&self) -> Arc<str> {
        Arc::clone(&self.inner.name)
    }

    pub(crate) fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    pub(crate) fn pre(&self) -> &PluginPre<ConnState> {
        &self.inner.pre
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name())
            .finish()
    }
}

/// Tell "not Wasm" and "a core module" apart before wasmtime gives a generic parse error.
fn check_header(name: &str, bytes: &[u8]) -> Result<(), PluginError> {
    if !bytes.starts_with(b"\0asm") {
        return Err(PluginError::NotWasm { name: name.into() });
    }
    // Bytes 4..8: a 16-bit version, then a 16-bit layer that is 0 for core modules.
    if bytes.get(6..8) == Some(&[0, 0]) {
        return Err(PluginError::NotComponent { name: name.into() });
    }
    Ok(())
}

fn check_handler_export(
    name: &str,
    runtime: &Runtime,
    component: &Component,
) -> Result<(), PluginError> {
    let engine = runtime.engine();
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(export, _)| export).collect();
    if exports.contains(&HANDLER_EXPORT) {
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

fn linker(runtime: &Runtime) -> wasmtime::Result<Linker<ConnState>> {
    let mut linker = Linker::new(runtime.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    PluginWorld::add_to_linker::<ConnState, HasSelf<ConnState>>(&mut linker, |state| state)?;
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn component_header_passes() {
        let component = b"\0asm\x0d\0\x01\0";
        assert!(check_header("component", component).is_ok());
    }
}
