//! `shoal-componentize CORE.wasm COMPONENT.wasm`: turn a `wasm32-wasip1` core module built
//! with wit-bindgen into a component, linking the WASI preview 1 reactor adapter that ships
//! with wasmtime. The fallback plugin build (scripts/fallback-toolchain.sh) uses it when the
//! `wasm32-wasip2` target cannot be installed.

use std::path::PathBuf;

use anyhow::{Context, bail};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::ComponentEncoder;

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: shoal-componentize CORE.wasm COMPONENT.wasm");
    };
    let module =
        std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let component = ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{} is not a core module with component type information (was it built with wit-bindgen?)", input.display()))?
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
        )?
        .validate(true)
        .encode()
        .with_context(|| format!("cannot turn {} into a component", input.display()))?;
    std::fs::write(output, component)
        .with_context(|| format!("cannot write {}", output.display()))?;
    Ok(())
}
