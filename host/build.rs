//! Embeds the echo plugin, which `shoal serve` runs when no plugin is named. The plugin is a
//! Wasm component built by `make plugins` (see the Makefile); set `SHOAL_ECHO_WASM` to use
//! another file.

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=SHOAL_ECHO_WASM");
    let path = match std::env::var_os("SHOAL_ECHO_WASM") {
        Some(path) => PathBuf::from(path),
        None => {
            let manifest = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
            PathBuf::from(manifest).join("../target/plugins/echo.wasm")
        }
    };
    println!("cargo::rerun-if-changed={}", path.display());
    if !path.is_file() {
        println!(
            "cargo::error=the bundled echo plugin {} is missing: run `make plugins` first \
             (or set SHOAL_ECHO_WASM to a built echo component)",
            path.display()
        );
        return;
    }
    println!("cargo::rustc-env=SHOAL_ECHO_WASM={}", path.display());
}
