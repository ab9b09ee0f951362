//! `shoal-wit-c WIT WORLD OUT_DIR`: write the C bindings of a WIT world — `plugin.h`,
//! `plugin.c` and `plugin_component_type.o`, the object that carries the world's type into
//! the core module so that `tools/componentize` can make it a component — as `wit-bindgen c`
//! would, through the `wit-bindgen-c` library.
//!
//! Whichever world (`plugin`, or `plugin-handoff` for a plugin that also exports `handoff`),
//! the files and the world's types are named `plugin`: adding the `handoff` export to a
//! plugin changes no name it already uses.
//!
//! `WIT` is a `.wit` file or a folder (with its `deps/`). Give shoal's `wit/plugin.wit` itself:
//! read alone, it leaves out the 0.1.0 package kept in `wit/deps`, and the names stay short
//! (`shoal_plugin_connection_send`, not `shoal_plugin_0_2_0_connection_send`).

use std::path::PathBuf;

use anyhow::{Context, bail};
use wit_bindgen_core::Files;
use wit_bindgen_core::wit_parser::Resolve;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [wit, world, out] = args.as_slice() else {
        bail!("usage: shoal-wit-c WIT WORLD OUT_DIR");
    };
    let mut resolve = Resolve::default();
    let (package, _) = resolve
        .push_path(wit)
        .with_context(|| format!("cannot read the WIT package in {wit}"))?;
    let world = resolve
        .select_world(&[package], Some(world))
        .with_context(|| format!("no world `{world}` in {wit}"))?;
    let mut files = Files::default();
    let options = wit_bindgen_c::Opts {
        rename_world: Some("plugin".to_string()),
        ..wit_bindgen_c::Opts::default()
    };
    options
        .build()
        .generate(&mut resolve, world, &mut files)
        .context("cannot generate the C bindings")?;
    let out = PathBuf::from(out);
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, contents) in files.iter() {
        let path = out.join(name);
        std::fs::write(&path, contents)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
