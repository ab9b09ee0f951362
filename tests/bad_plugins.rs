//! Files that are not shoal plugins are refused with an error that names the problem.

mod support;

use shoal_host::{Plugin, PluginError};
use support::{plugin_path, runtime};

#[test]
fn a_text_file_is_not_wasm() {
    let err = Plugin::from_bytes(&runtime(), "notes", b"just some text\n").err();
    let Some(err @ PluginError::NotWasm { .. }) = err else {
        panic!("expected NotWasm, got {err:?}");
    };
    assert!(err.to_string().contains("not a WebAssembly file"), "{err}");
}

#[test]
fn a_core_module_is_not_a_component() {
    // The smallest valid core module: magic and version 1.
    let err = Plugin::from_bytes(&runtime(), "core", b"\0asm\x01\0\0\0").err();
    let Some(err @ PluginError::NotComponent { .. }) = err else {
        panic!("expected NotComponent, got {err:?}");
    };
    assert!(err.to_string().contains("core WebAssembly module"), "{err}");
}

#[test]
fn truncated_component_bytes_fail_to_compile() {
    let echo = std::fs::read(plugin_path("echo")).expect("echo built");
    let err = Plugin::from_bytes(&runtime(), "half-echo", &echo[..echo.len() / 2]).err();
    assert!(
        matches!(err, Some(PluginError::Compile { .. })),
        "expected Compile, got {err:?}"
    );
}

#[test]
fn a_component_of_another_world_names_the_missing_export() {
    let err = Plugin::from_file(&runtime(), plugin_path("wrong-world")).err();
    let Some(err @ PluginError::MissingExport { .. }) = err else {
        panic!("expected MissingExport, got {err:?}");
    };
    let message = err.to_string();
    assert!(
        message.contains("shoal:plugin/handler@0.1.0"),
        "names what is missing: {message}"
    );
    assert!(
        message.contains("greet"),
        "says what it exports instead: {message}"
    );
}

#[test]
fn a_missing_file_is_a_read_error() {
    let err = Plugin::from_file(&runtime(), "/nonexistent/plugin.wasm").err();
    assert!(
        matches!(err, Some(PluginError::Read { .. })),
        "expected Read, got {err:?}"
    );
}

#[test]
fn every_bundled_plugin_loads() {
    for name in ["ballast", "echo", "greeter", "spin", "trap-on"] {
        let plugin = Plugin::from_file(&runtime(), plugin_path(name));
        assert!(plugin.is_ok(), "{name}: {:?}", plugin.err());
    }
}
