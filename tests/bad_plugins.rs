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
        message.contains("shoal:plugin/handler@0.2.0"),
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

/// A file of this test process's own in cargo's temporary folder.
fn scratch(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bad-plugins-{}-{name}", std::process::id()))
}

#[test]
fn a_header_of_another_version_is_not_called_a_core_module() {
    let err = Plugin::from_bytes(&runtime(), "future", b"\0asm\x02\0\0\0rest").err();
    let Some(err @ PluginError::UnknownVersion { .. }) = err else {
        panic!("expected UnknownVersion, got {err:?}");
    };
    let message = err.to_string();
    assert!(!message.contains("core"), "{message}");
    assert!(message.contains("version"), "{message}");
}

#[test]
fn errors_name_the_file_as_given_and_the_os_error_once() {
    let path = scratch("notes.txt");
    std::fs::write(&path, "not wasm").expect("scratch file");
    let err = Plugin::from_file(&runtime(), &path).err();
    let message = err
        .map(|e| format!("{:#}", anyhow::Error::new(e)))
        .unwrap_or_default();
    assert!(message.contains(&path.display().to_string()), "{message}");
    std::fs::remove_file(&path).expect("scratch file");
    let missing = Plugin::from_file(&runtime(), "/nonexistent/plugin.wasm").err();
    let message = missing
        .map(|e| format!("{:#}", anyhow::Error::new(e)))
        .unwrap_or_default();
    assert_eq!(message.matches("os error 2").count(), 1, "{message}");
    assert!(message.contains("/nonexistent/plugin.wasm"), "{message}");
}

#[test]
fn a_fifo_is_refused_without_being_opened() -> anyhow::Result<()> {
    let path = scratch("fifo.wasm");
    let _ = std::fs::remove_file(&path);
    let made = std::process::Command::new("mkfifo").arg(&path).status()?;
    anyhow::ensure!(made.success(), "mkfifo");
    // Opening a FIFO for reading blocks until a writer comes: the check must come first.
    let (done, result) = std::sync::mpsc::channel();
    let fifo = path.clone();
    std::thread::spawn(move || {
        let _ = done.send(Plugin::from_file(&runtime(), &fifo).err());
    });
    let err = result.recv_timeout(std::time::Duration::from_secs(10));
    std::fs::remove_file(&path)?;
    let Ok(Some(err @ PluginError::NotAFile { .. })) = err else {
        panic!("expected NotAFile in time, got {err:?}");
    };
    assert!(err.to_string().contains("not a regular file"), "{err}");
    Ok(())
}

#[test]
fn a_huge_file_is_refused_before_it_is_read() -> anyhow::Result<()> {
    let path = scratch("huge.wasm");
    // A component header, then a sparse gibibyte: nothing to read but the size.
    std::fs::write(&path, b"\0asm\x0d\0\x01\0")?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(1 << 30)?;
    let err = Plugin::from_file(&runtime(), &path).err();
    std::fs::remove_file(&path)?;
    let Some(err @ PluginError::TooLarge { .. }) = err else {
        panic!("expected TooLarge, got {err:?}");
    };
    let message = err.to_string();
    assert!(message.contains("max_plugin_size"), "{message}");
    assert!(message.contains("1GiB"), "{message}");
    Ok(())
}

#[test]
fn a_plugin_creating_more_core_instances_than_the_pool_allows_names_the_setting() {
    // The default engine allows 4 core instances per component; a Python plugin creates 14.
    let engine = shoal_host::Runtime::new(
        shoal_host::RuntimeConfig::builder()
            .max_instances(1)
            .build()
            .expect("valid config"),
    )
    .expect("engine starts");
    let err = Plugin::from_file(&engine, plugin_path("echo-py")).err();
    let Some(
        err @ PluginError::TooManyCoreInstances {
            needed: 14,
            allowed: 4,
            ..
        },
    ) = err
    else {
        panic!("expected TooManyCoreInstances, got {err:?}");
    };
    assert!(
        err.to_string()
            .contains("set core_instances_per_component = 14 or more"),
        "{err}"
    );
}

#[test]
fn a_node_sizes_its_pool_for_the_plugins_it_starts_with() {
    let spec = shoal_host::NodeSpec {
        listeners: vec![shoal_host::ListenerSpec {
            address: "127.0.0.1:0".parse().expect("address"),
            plugin: shoal_host::PluginSource::File(plugin_path("echo-py")),
            config: shoal_host::ServerConfig::default(),
        }],
        ..shoal_host::NodeSpec::default()
    };
    assert_eq!(spec.core_instances_needed(), 14);
    let more = shoal_host::NodeSpec {
        core_instances_per_component: Some(20),
        ..spec
    };
    assert_eq!(more.core_instances_needed(), 20);
    assert_eq!(shoal_host::NodeSpec::default().core_instances_needed(), 4);
}

/// A component that exports shoal's handler interface by name, with functions of another type:
/// each `init`, `handle` and `close` takes nothing and returns nothing.
const HANDLER_OF_WRONG_TYPES: &str = r#"
(component
  (core module $m (func (export "f")))
  (core instance $i (instantiate $m))
  (type $nothing (func))
  (func $f (type $nothing) (canon lift (core func $i "f")))
  (instance $handler
    (export "init" (func $f))
    (export "handle" (func $f))
    (export "close" (func $f)))
  (export "shoal:plugin/handler@0.2.0" (instance $handler))
)
"#;

#[tokio::test]
async fn a_handler_of_other_types_fails_every_instance_not_only_the_first() {
    // The types are checked once per plugin, when an instance first passes the check: one
    // that fails must not count as checked.
    let bytes = wat::parse_str(HANDLER_OF_WRONG_TYPES).expect("valid text");
    let plugin =
        Plugin::from_bytes(&runtime(), "wrong-types", &bytes).expect("the names match: it loads");
    for attempt in 1..=2 {
        let err = shoal_host::Instance::probe(&plugin, &shoal_host::ServerConfig::default())
            .await
            .err()
            .unwrap_or_else(|| panic!("attempt {attempt}: an instance of wrong types started"));
        assert!(
            err.to_string().contains("type mismatch"),
            "attempt {attempt}: {err}"
        );
    }
}
