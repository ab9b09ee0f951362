//! What a component needs of the instance pool, read from its bytes before any engine exists:
//! how many core module instances one instance of it creates, and how large its initial
//! memory image is. The pooling allocator's limit on the first is fixed when the engine is
//! made, so a node sizes it for the plugins it loads (a Rust plugin creates 1–3, a JavaScript
//! one 3, a Python one 14); the second decides whether the plugin's memory starts as a
//! copy-on-write mapping (a JavaScript or Python guest's megabytes of data) or as a copy (a
//! Rust guest's few kilobytes).

use wasmparser::{DataKind, Instance, Parser, Payload};

/// A component's demands on the engine, read from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Core module instances one instantiation creates.
    pub core_instances: u32,
    /// Bytes of initialised data of its largest core module: what every instance's linear
    /// memory starts with.
    pub image_bytes: usize,
}

impl Shape {
    /// Read the shape of the component in `bytes`.
    ///
    /// # Errors
    ///
    /// The parse error, when `bytes` is not a well-formed component.
    pub(crate) fn of(bytes: &[u8]) -> Result<Self, wasmparser::Error> {
        let mut shape = Self {
            core_instances: 0,
            image_bytes: 0,
        };
        for payload in Parser::new(0).parse_all(bytes) {
            match payload? {
                Payload::InstanceSection(section) => {
                    for instance in section {
                        if matches!(instance?, Instance::Instantiate { .. }) {
                            shape.core_instances = shape.core_instances.saturating_add(1);
                        }
                    }
                }
                // A module has one data section: its active segments are its image.
                Payload::DataSection(section) => {
                    let mut bytes = 0usize;
                    for segment in section {
                        let segment = segment?;
                        if matches!(segment.kind, DataKind::Active { .. }) {
                            bytes = bytes.saturating_add(segment.data.len());
                        }
                    }
                    shape.image_bytes = shape.image_bytes.max(bytes);
                }
                _ => {}
            }
        }
        Ok(shape)
    }
}

/// The core module instances one instantiation of the component in `bytes` creates: every
/// `instantiate` in its core instance sections, those of nested components included (each
/// nested component counted once, as the toolchains' components instantiate them).
///
/// # Errors
///
/// The parse error, when `bytes` is not a well-formed component.
pub(crate) fn core_instances(bytes: &[u8]) -> Result<u32, wasmparser::Error> {
    Shape::of(bytes).map(|shape| shape.core_instances)
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
    fn the_image_is_the_largest_modules_active_data() {
        let component = wat::parse_str(
            r#"(component
                (core module $small (memory 1) (data (i32.const 0) "abcd"))
                (core module $large
                    (memory 1)
                    (data (i32.const 0) "0123456789")
                    (data (i32.const 100) "0123456789")
                    (data "passive data is copied by the guest, not the host"))
                (core instance (instantiate $small))
                (core instance (instantiate $large))
            )"#,
        )
        .expect("valid text");
        let shape = Shape::of(&component).ok();
        assert_eq!(
            shape,
            Some(Shape {
                core_instances: 2,
                image_bytes: 20
            })
        );
    }

    #[test]
    fn a_file_that_is_not_a_component_is_an_error() {
        assert!(core_instances(b"\0asm\x0d\0\x01\0garbage").is_err());
    }
}
