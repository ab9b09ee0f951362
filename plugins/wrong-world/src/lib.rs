//! Test plugin: a valid component of another world (it exports `greet`, not shoal's
//! handler). Loading it must fail with an error that names the missing export.

wit_bindgen::generate!({ world: "greeter", path: "wit" });

struct Component;

impl Guest for Component {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Component);
