//! Hostile config files: the example config mutated as a fuzzer would (a fixed seed) through
//! the parser, the node's checks and `serve`; and a property-based test of the parser
//! against what each generated value should give: a value in its documented range is read
//! exactly, one outside is refused naming the listener and the field, one of the wrong shape
//! is refused naming the line. Every case is bounded in time.

mod support;

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use proptest::prelude::*;
use shoal_host::{ConfigFileError, Node, NodeSpec, ServerConfig, bounds};
use support::mutate::mutate_text;
use support::{plugin_path, proptest_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEED: u64 = 0x5ea1_c0f1;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example config, its listeners on port 0 so that any number of runs can bind.
fn example() -> anyhow::Result<String> {
    let text = std::fs::read_to_string(repository().join("shoal.example.toml"))?;
    Ok(text.replace(":7000\"", ":0\"").replace(":7001\"", ":0\""))
}

/// Every field a `ConfigFileError::Invalid` may name.
const FIELDS: &[&str] = &[
    "name",
    "address",
    "plugin",
    "pool_size",
    "max_connections",
    "cpu_budget_per_call",
    "call_timeout",
    "write_timeout",
    "idle_timeout",
    "shutdown_timeout",
    "output_buffer_limit",
    "read_buffer_size",
    "mailbox_messages",
    "mailbox_bytes",
    "memory_limit",
    "cpu_share",
    "rollback_window",
    "rollback_fault_ratio",
    "drain_timeout",
    "read_only_dir",
    "max_instances",
    "handoff",
    "hibernate_after",
    "hibernate_state_limit",
    "tls",
    "tls.cert",
    "tls.key",
    "tls.client_ca",
    "tls.alpn",
    "tls.handshake_timeout",
];

/// A listener the parser accepted has every setting within its documented bounds.
fn assert_within_bounds(config: &ServerConfig) {
    let name = config.name();
    assert!(bounds::POOL_SIZE.contains(&config.pool_size()), "{name}");
    assert!(
        bounds::MAX_CONNECTIONS.contains(&config.max_connections()),
        "{name}"
    );
    for call in [
        config.cpu_budget_per_call(),
        config.call_timeout(),
        config.write_timeout(),
    ] {
        assert!(bounds::CALL_TIME.contains(&call), "{name}");
    }
    assert!(
        bounds::IDLE_TIMEOUT.contains(&config.idle_timeout()),
        "{name}"
    );
    assert!(
        bounds::SHUTDOWN_TIMEOUT.contains(&config.shutdown_timeout()),
        "{name}"
    );
    let output = config.output_buffer_limit();
    assert!(bounds::OUTPUT_BUFFER_LIMIT.contains(&output), "{name}");
    assert!(
        bounds::READ_BUFFER_SIZE.contains(&config.read_buffer_size()),
        "{name}"
    );
    assert!(
        bounds::MAILBOX_MESSAGES.contains(&config.mailbox_messages()),
        "{name}"
    );
    assert!(
        bounds::MAILBOX_BYTES.contains(&config.mailbox_bytes()),
        "{name}"
    );
    assert!(
        bounds::MEMORY_LIMIT.contains(&config.memory_limit()),
        "{name}"
    );
    assert!(bounds::CPU_SHARE.contains(&config.cpu_share()), "{name}");
    assert!(
        bounds::ROLLBACK_WINDOW.contains(&config.rollback_window()),
        "{name}"
    );
    let ratio = config.rollback_fault_ratio();
    assert!(bounds::ROLLBACK_FAULT_RATIO.contains(&ratio), "{name}");
}

/// How far a mutant got.
#[derive(Debug, Default)]
struct Reached {
    refused_by_parser: usize,
    refused_by_node: usize,
    refused_at_bind: usize,
    served: usize,
}

/// Take an accepted config all the way: build the node (plugins from a shared cache), bind
/// (which checks each limit against its plugin), serve a client on every listener, stop.
async fn serve_spec(mut spec: NodeSpec, cache: &Path, reached: &mut Reached) -> anyhow::Result<()> {
    spec.cache_dir = Some(cache.to_path_buf());
    let built = tokio::task::spawn_blocking(move || Node::from_spec(spec));
    let built = tokio::time::timeout(Duration::from_secs(120), built)
        .await
        .context("building the node took over 120 s")??;
    let mut node = match built {
        Ok(node) => node,
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty() && !message.contains("panicked"));
            reached.refused_by_node += 1;
            return Ok(());
        }
    };
    let bound = tokio::time::timeout(Duration::from_secs(60), node.bind())
        .await
        .context("bind took over 60 s")?;
    if let Err(error) = bound {
        // A limit the plugin cannot work under (its memory, say): named, nothing bound.
        let message = error.to_string();
        assert!(message.contains("listener `"), "{message}");
        reached.refused_at_bind += 1;
        return Ok(());
    }
    let addresses: Vec<_> = node
        .listeners()
        .iter()
        .filter_map(|l| l.local_addr())
        .collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(node.serve(async {
        let _ = stopped.await;
    }));
    for address in addresses {
        let mut client = tokio::net::TcpStream::connect(address).await?;
        let _ = client.write_all(b"hello\n").await;
        let mut reply = [0u8; 64];
        // An answer, a close (a limit of 1 ms, say) or nothing: each may be right for the
        // config; what matters is that the server goes on and stops.
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read(&mut reply)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), serving)
        .await
        .context("the node did not stop within 30 s")???;
    reached.served += 1;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_example_configs_are_refused_naming_the_field_or_served() -> anyhow::Result<()> {
    // Built from the repository's sources, as the example's plugin paths expect.
    plugin_path("echo");
    plugin_path("chat");
    let example = example()?;
    let file = repository().join("shoal.example.toml");
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("mutated-configs-cache-{}", std::process::id()));
    let count: u64 = std::env::var("SHOAL_MUTANTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    let mut reached = Reached::default();
    for index in 0..count {
        let seed = SEED ^ (index << 16);
        let (text, what) = mutate_text(&example, seed);
        let context = || format!("mutant {seed:#x} ({what})");
        let parsed = std::panic::catch_unwind(|| NodeSpec::parse(&text, &file, &repository()));
        let Ok(parsed) = parsed else {
            bail!("the parser panicked on {}:\n{text}", context());
        };
        match parsed {
            Err(error) => {
                let message = error.to_string();
                assert!(
                    message.starts_with(&file.display().to_string()),
                    "{message}"
                );
                if let ConfigFileError::Invalid {
                    listener, field, ..
                } = &error
                {
                    assert!(FIELDS.contains(&field.as_str()), "{}: {message}", context());
                    assert!(!listener.is_empty(), "{}: {message}", context());
                }
                reached.refused_by_parser += 1;
            }
            Ok(spec) => {
                spec.listeners
                    .iter()
                    .for_each(|l| assert_within_bounds(&l.config));
                serve_spec(spec, &cache, &mut reached)
                    .await
                    .with_context(context)?;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&cache);
    eprintln!("{count} mutated configs: {reached:?}");
    assert!(
        reached.refused_by_parser > 0 && reached.served > 0,
        "{reached:?}"
    );
    Ok(())
}

/// The documented range of a numeric field, in the unit the test compares (a count, bytes,
/// or milliseconds), and the largest number its type holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Count { range: (u64, u64), max: u64 },
    Duration { range: (u64, u64) },
    Size { range: (u64, u64) },
}

struct Setting {
    key: &'static str,
    kind: Kind,
    read: fn(&ServerConfig) -> u64,
}

fn millis(range: &RangeInclusive<Duration>) -> (u64, u64) {
    let ms = |d: &Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    (ms(range.start()), ms(range.end()))
}

fn widen(range: &RangeInclusive<usize>) -> (u64, u64) {
    (*range.start() as u64, *range.end() as u64)
}

fn as_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Every numeric setting of a listener, with its bounds from `shoal_host::bounds`.
fn settings() -> Vec<Setting> {
    let count = |range: &RangeInclusive<usize>| Kind::Count {
        range: widen(range),
        max: usize::MAX as u64,
    };
    let call = Kind::Duration {
        range: millis(&bounds::CALL_TIME),
    };
    vec![
        Setting {
            key: "pool_size",
            kind: count(&bounds::POOL_SIZE),
            read: |c| c.pool_size() as u64,
        },
        Setting {
            key: "max_connections",
            kind: count(&bounds::MAX_CONNECTIONS),
            read: |c| c.max_connections() as u64,
        },
        Setting {
            key: "mailbox_messages",
            kind: count(&bounds::MAILBOX_MESSAGES),
            read: |c| c.mailbox_messages() as u64,
        },
        Setting {
            key: "cpu_share",
            kind: Kind::Count {
                range: (
                    u64::from(*bounds::CPU_SHARE.start()),
                    u64::from(*bounds::CPU_SHARE.end()),
                ),
                max: u64::from(u32::MAX),
            },
            read: |c| u64::from(c.cpu_share()),
        },
        Setting {
            key: "rollback_window",
            kind: count(&bounds::ROLLBACK_WINDOW),
            read: |c| c.rollback_window() as u64,
        },
        Setting {
            key: "cpu_budget_per_call",
            kind: call,
            read: |c| as_ms(c.cpu_budget_per_call()),
        },
        Setting {
            key: "call_timeout",
            kind: call,
            read: |c| as_ms(c.call_timeout()),
        },
        Setting {
            key: "write_timeout",
            kind: call,
            read: |c| as_ms(c.write_timeout()),
        },
        Setting {
            key: "idle_timeout",
            kind: Kind::Duration {
                range: millis(&bounds::IDLE_TIMEOUT),
            },
            read: |c| as_ms(c.idle_timeout()),
        },
        Setting {
            key: "shutdown_timeout",
            kind: Kind::Duration {
                range: millis(&bounds::SHUTDOWN_TIMEOUT),
            },
            read: |c| as_ms(c.shutdown_timeout()),
        },
        Setting {
            key: "memory_limit",
            kind: Kind::Size {
                range: widen(&bounds::MEMORY_LIMIT),
            },
            read: |c| c.memory_limit() as u64,
        },
        Setting {
            key: "output_buffer_limit",
            kind: Kind::Size {
                range: widen(&bounds::OUTPUT_BUFFER_LIMIT),
            },
            read: |c| c.output_buffer_limit() as u64,
        },
        Setting {
            key: "read_buffer_size",
            kind: Kind::Size {
                range: widen(&bounds::READ_BUFFER_SIZE),
            },
            read: |c| c.read_buffer_size() as u64,
        },
        Setting {
            key: "mailbox_bytes",
            kind: Kind::Size {
                range: widen(&bounds::MAILBOX_BYTES),
            },
            read: |c| c.mailbox_bytes() as u64,
        },
    ]
}

/// A value written for one setting, and what the parser must make of it.
#[derive(Debug, Clone)]
enum Written {
    /// In range: read back as exactly this number (count, bytes or milliseconds).
    Fits(String, u64),
    /// Well formed but outside the range: refused naming the listener and the field.
    Outside(String),
    /// Not a value of this kind at all: refused by the parser, naming the line.
    Malformed(String),
}

impl Written {
    fn text(&self) -> &str {
        match self {
            Written::Fits(text, _) | Written::Outside(text) | Written::Malformed(text) => text,
        }
    }
}

/// A number in `low..=high`, often one of the edges or a multiple of one of `scales` (the
/// units a person writes).
fn number_in(low: u64, high: u64, scales: &[u64]) -> BoxedStrategy<u64> {
    let mut choices = vec![Just(low).boxed(), Just(high).boxed(), (low..=high).boxed()];
    for &scale in scales {
        let (first, last) = (low.div_ceil(scale), high / scale);
        if first <= last {
            choices.push((first..=last).prop_map(move |n| n * scale).boxed());
        }
    }
    proptest::strategy::Union::new(choices).boxed()
}

const TIME_SCALES: [u64; 3] = [1000, 60_000, 3_600_000];
const SIZE_SCALES: [u64; 3] = [1 << 10, 1 << 20, 1 << 30];

/// A duration of `ms` milliseconds in one of the units that write it exactly.
fn duration_text(ms: u64, unit: usize) -> String {
    let units: Vec<(u64, &str)> = [(3_600_000, "h"), (60_000, "m"), (1000, "s"), (1, "ms")]
        .into_iter()
        .filter(|(scale, _)| ms.is_multiple_of(*scale))
        .collect();
    let (scale, name) = units[unit % units.len()];
    format!("\"{}{name}\"", ms / scale)
}

/// A size of `bytes` as a plain integer, a string of bytes, or a unit that writes it exactly.
fn size_text(bytes: u64, unit: usize) -> String {
    let mut forms = vec![
        bytes.to_string(),
        format!("\"{bytes}\""),
        format!("\"{bytes}B\""),
    ];
    for (scale, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if bytes.is_multiple_of(scale) {
            forms.push(format!("\"{}{name}\"", bytes / scale));
        }
    }
    forms[unit % forms.len()].clone()
}

fn written(kind: Kind) -> BoxedStrategy<Written> {
    // Never above i64::MAX: TOML has no larger integer, so those are malformed, below.
    const TOML_MAX: u64 = i64::MAX as u64;
    match kind {
        Kind::Count {
            range: (low, high),
            max,
        } => {
            let fits = number_in(low, high, &[]).prop_map(|n| Written::Fits(n.to_string(), n));
            let above = (high + 1)..=max.min(TOML_MAX);
            let mut outside = vec![above.prop_map(|n| Written::Outside(n.to_string())).boxed()];
            if low > 0 {
                let below = (0..low).prop_map(|n| Written::Outside(n.to_string()));
                outside.push(below.boxed());
            }
            let mut malformed = vec!["-1", "\"10\"", "1.5", "true", "[]", "99999999999999999999"]
                .into_iter()
                .map(str::to_string)
                .collect::<Vec<_>>();
            if max < TOML_MAX {
                // Past the type (u32 for cpu_share): no number it could hold.
                malformed.push((max + 1).to_string());
            }
            let malformed = prop::sample::select(malformed).prop_map(Written::Malformed);
            prop_oneof![
                12 => fits,
                1 => proptest::strategy::Union::new(outside),
                1 => malformed,
            ]
            .boxed()
        }
        Kind::Duration { range: (low, high) } => {
            let fits = (number_in(low, high, &TIME_SCALES), any::<usize>())
                .prop_map(|(ms, unit)| Written::Fits(duration_text(ms, unit), ms));
            let mut outside = vec![
                (high + 1..=u64::MAX / 2, any::<usize>())
                    .prop_map(|(ms, unit)| Written::Outside(duration_text(ms, unit)))
                    .boxed(),
                // Saturates to the largest duration: still just "too long".
                Just(Written::Outside("\"99999999999999999h\"".to_string())).boxed(),
            ];
            if low > 0 {
                outside.push(Just(Written::Outside("\"0ms\"".to_string())).boxed());
            }
            let malformed = prop_oneof![
                Just("\"5\""),
                Just("5"),
                Just("\"5 sec\""),
                Just("\"-5s\""),
                Just("\"1.5s\""),
                Just("\"\""),
                Just("\"ms\""),
                Just("\"99999999999999999999s\""),
            ]
            .prop_map(|text| Written::Malformed(text.to_string()));
            prop_oneof![
                12 => fits,
                1 => proptest::strategy::Union::new(outside),
                1 => malformed,
            ]
            .boxed()
        }
        Kind::Size { range: (low, high) } => {
            let fits = (number_in(low, high, &SIZE_SCALES), any::<usize>())
                .prop_map(|(bytes, unit)| Written::Fits(size_text(bytes, unit), bytes));
            let outside = prop_oneof![
                (0..low, any::<usize>()),
                (high + 1..=high.saturating_mul(4), any::<usize>()),
            ]
            .prop_map(|(bytes, unit)| Written::Outside(size_text(bytes, unit)));
            let malformed = prop_oneof![
                Just("-1"),
                Just("1.5"),
                Just("\"1.5KiB\""),
                Just("\"1TB\""),
                Just("\"\""),
                Just("\"KiB\""),
                Just("\"17179869184GiB\""),
                Just("true"),
            ]
            .prop_map(|text| Written::Malformed(text.to_string()));
            prop_oneof![12 => fits, 1 => outside, 1 => malformed].boxed()
        }
    }
}

/// A listener's name as written, and whether it may be used.
#[derive(Debug, Clone)]
enum Name {
    Fine(String),
    Empty,
    /// Longer than the 256 bytes a name may have.
    Long(String),
    /// With a control character: it would forge lines in the log.
    Control(String),
}

fn name(index: usize) -> impl Strategy<Value = Name> {
    prop_oneof![
        12 => "[a-z0-9._-]{0,16}".prop_map(move |s| Name::Fine(format!("l{index}{s}"))),
        3 => "\\PC{1,16}".prop_map(move |s| Name::Fine(format!("l{index}{s}"))),
        1 => Just(Name::Empty),
        1 => "[a-z]{257,300}".prop_map(Name::Long),
        1 => ("[a-z]{0,4}", prop::sample::select(vec!['\n', '\r', '\u{1b}', '\0', '\t']))
            .prop_map(|(s, c)| Name::Control(format!("{s}{c}x"))),
    ]
}

impl Name {
    fn text(&self) -> &str {
        match self {
            Name::Fine(text) | Name::Long(text) | Name::Control(text) => text,
            Name::Empty => "",
        }
    }
}

/// A TOML basic string of `text`.
fn toml_string(text: &str) -> String {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[derive(Debug, Clone)]
struct ListenerCase {
    name: Name,
    /// Setting index into [`settings`] and what is written, in file order.
    values: Vec<(usize, Written)>,
}

fn listener_case(index: usize) -> impl Strategy<Value = ListenerCase> {
    let kinds: Vec<Kind> = settings().iter().map(|s| s.kind).collect();
    let values = kinds
        .into_iter()
        .enumerate()
        .map(|(i, kind)| proptest::option::weighted(0.4, written(kind).prop_map(move |w| (i, w))))
        .collect::<Vec<_>>();
    (name(index), values)
        .prop_flat_map(|(name, values)| {
            let values: Vec<(usize, Written)> = values.into_iter().flatten().collect();
            (Just(name), Just(values).prop_shuffle())
        })
        .prop_map(|(name, values)| ListenerCase { name, values })
}

fn config_text(listeners: &[ListenerCase], plugin: &Path) -> String {
    let settings = settings();
    let mut text = String::new();
    for listener in listeners {
        text.push_str("[[listener]]\n");
        text.push_str(&format!("name = {}\n", toml_string(listener.name.text())));
        text.push_str("address = \"127.0.0.1:0\"\n");
        text.push_str(&format!(
            "plugin = {}\n",
            toml_string(&plugin.display().to_string())
        ));
        for (setting, value) in &listener.values {
            text.push_str(&format!("{} = {}\n", settings[*setting].key, value.text()));
        }
    }
    text
}

proptest! {
    #![proptest_config(proptest_config(512))]

    /// Each generated value gives what its kind and range say, in every listener.
    #[test]
    fn the_parser_reads_each_value_in_range_and_refuses_the_rest_by_name(
        listeners in (1usize..=3).prop_flat_map(|n| {
            (0..n).map(listener_case).collect::<Vec<_>>()
        })
    ) {
        let plugin = plugin_path("echo");
        let text = config_text(&listeners, &plugin);
        let file = Path::new("generated.toml");
        let parsed = NodeSpec::parse(&text, file, Path::new("/"));
        let settings = settings();
        let malformed: Vec<&str> = listeners
            .iter()
            .flat_map(|l| &l.values)
            .filter(|(_, w)| matches!(w, Written::Malformed(_)))
            .map(|(i, _)| settings[*i].key)
            .collect();
        if !malformed.is_empty() {
            let Err(ConfigFileError::Parse { message, .. }) = &parsed else {
                panic!("malformed {malformed:?} must be a parse error:\n{text}\n{parsed:?}");
            };
            prop_assert!(
                malformed.iter().any(|key| message.contains(key)),
                "names the line of one of {:?}: {}", malformed, message
            );
            return Ok(());
        }
        // Otherwise the first listener with a value that cannot work is named.
        for (index, listener) in listeners.iter().enumerate() {
            let outside: Vec<&str> = listener
                .values
                .iter()
                .filter(|(_, w)| matches!(w, Written::Outside(_)))
                .map(|(i, _)| settings[*i].key)
                .collect();
            let expected: Option<Vec<&str>> = match &listener.name {
                Name::Empty | Name::Long(_) | Name::Control(_) => Some(vec!["name"]),
                Name::Fine(_) if !outside.is_empty() => Some(outside),
                Name::Fine(_) => None,
            };
            let Some(fields) = expected else { continue };
            let Err(ConfigFileError::Invalid { listener: named, field, reason, .. }) = &parsed
            else {
                panic!("{fields:?} of {:?} must be refused:\n{text}\n{parsed:?}", listener.name);
            };
            // An unnamed listener is named by its place in the file.
            let label = match listener.name {
                Name::Empty => format!("#{}", index + 1),
                _ => listener.name.text().to_string(),
            };
            prop_assert_eq!(named, &label);
            prop_assert!(fields.contains(&field.as_str()), "{} not in {:?}", field, fields);
            prop_assert!(!reason.is_empty());
            return Ok(());
        }
        let spec = match parsed {
            Ok(spec) => spec,
            Err(error) => panic!("every value fits, yet: {error}\n{text}"),
        };
        let defaults = ServerConfig::default();
        prop_assert_eq!(spec.listeners.len(), listeners.len());
        for (case, parsed) in listeners.iter().zip(&spec.listeners) {
            prop_assert_eq!(parsed.config.name(), case.name.text());
            for (index, setting) in settings.iter().enumerate() {
                let written = case.values.iter().rev().find(|(i, _)| *i == index);
                let expected = match written {
                    Some((_, Written::Fits(_, value))) => *value,
                    _ => (setting.read)(&defaults),
                };
                prop_assert_eq!((setting.read)(&parsed.config), expected, "{}", setting.key);
            }
        }
    }

    /// Any text at all: an answer, never a panic, and an error names the file.
    #[test]
    fn the_parser_answers_any_text(text in "\\PC{0,200}|(\\[\\[listener\\]\\]\n)?([a-z_]{1,20} = [\\PC]{0,20}\n){0,8}") {
        let file = Path::new("any.toml");
        if let Err(error) = NodeSpec::parse(&text, file, Path::new("/")) {
            prop_assert!(error.to_string().starts_with("any.toml"), "{}", error);
        }
    }
}
