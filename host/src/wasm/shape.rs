//! What a component needs of the instance pool, read from its bytes before any engine exists:
//! how many core module instances one instance of it creates. The pooling allocator's limit
//! on that number is fixed when the engine is made, so a node sizes it for the plugins it
//! loads (a Rust plugin creates 1–3, a JavaScript one 3, a Python one 14).

use wasmparser::{Instance, Parser, Payload};

/// The core module instances one instantiation of the component in `bytes` creates: every
/// `instantiate` in its core instance sections, those of nested components included (each
/// nested component counted once, as the toolchains' components instantiate them).
///
/// # Errors
///
/// The parse error, when `bytes` is not a well-formed component.
pub(crate) fn core_instances(bytes: &[u8]) -> Result<u32, wasmparser::Error> {
    let mut count = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        if let Payload::InstanceSection(section) = payload? {
            for instance in section {
                if matches!(instance?, Instance::Instantiate { .. }) {
                    count = count.saturating_add(1);
                }
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_core_instances_a_component_creates() {
        let component = wat::parse_str(
            r#"(component
                (core module $m (func (export "f")))
                (core instance $a (instantiate $m))
                (core instance $b (instantiate $m))
                (core instance $c (export "f" (func $a "f")))
                (component $inner
                    (core module $n)
                    (core instance (instantiate $n)))
                (instance (instantiate $inner))
            )"#,
        )
        .expect("valid text");
        assert_eq!(core_instances(&component).ok(), Some(3));
    }

    #[test]
    fn a_file_that_is_not_a_component_is_an_error() {
        assert!(core_instances(b"\0asm\x0d\0\x01\0garbage").is_err());
    }
}
