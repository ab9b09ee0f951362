//! `GET /metrics`: every listener's counters in the Prometheus text format. Names follow
//! Prometheus conventions (`shoal_` prefix, `_total` on counters, seconds and bytes); each
//! sample carries its `listener` label. The list, with what each means, is in
//! docs/metrics.md.

use crate::admin::exposition::{Exposition, Kind};
use crate::messages::types::MessageError;
use crate::node_handle::ListenerStatus;
use crate::observe::histogram::HistogramSnapshot;
use crate::observe::stats::{Call, EndKind, Limit};

/// One metric family: its name, type, help, and its value for one listener.
struct Family {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    value: fn(&ListenerStatus) -> f64,
}

/// The families with one sample per listener.
const PER_LISTENER: &[Family] = &[
    Family {
        name: "shoal_connections_accepted_total",
        kind: Kind::Counter,
        help: "Connections accepted.",
        value: |l| l.stats.accepted() as f64,
    },
    Family {
        name: "shoal_connections_open",
        kind: Kind::Gauge,
        help: "Connections open now (awake or hibernating, TLS handshakes included).",
        value: |l| l.stats.live_connections() as f64,
    },
    Family {
        name: "shoal_connections_asleep",
        kind: Kind::Gauge,
        help: "Connections hibernating now: state kept, no instance.",
        value: |l| l.stats.asleep() as f64,
    },
    Family {
        name: "shoal_instances_live",
        kind: Kind::Gauge,
        help: "Plugin instances alive now.",
        value: |l| l.stats.live_instances() as f64,
    },
    Family {
        name: "shoal_guest_faults_total",
        kind: Kind::Counter,
        help: "Guest calls that faulted: traps, and calls stopped by a limit.",
        value: |l| l.stats.faults() as f64,
    },
    Family {
        name: "shoal_guest_cpu_seconds_total",
        kind: Kind::Counter,
        help: "CPU time the listener's guests ran, counted in epoch ticks.",
        value: |l| l.stats.guest_cpu().as_secs_f64(),
    },
    Family {
        name: "shoal_received_bytes_total",
        kind: Kind::Counter,
        help: "Bytes read from clients (after TLS decryption).",
        value: |l| l.stats.bytes_in() as f64,
    },
    Family {
        name: "shoal_sent_bytes_total",
        kind: Kind::Counter,
        help: "Bytes written to clients (before TLS encryption).",
        value: |l| l.stats.bytes_out() as f64,
    },
    Family {
        name: "shoal_mailbox_messages_delivered_total",
        kind: Kind::Counter,
        help: "Messages queued into a connection's mailbox (a broadcast counts once per receiver).",
        value: |l| l.mailboxes.delivered as f64,
    },
    Family {
        name: "shoal_mailbox_overflows_total",
        kind: Kind::Counter,
        help: "Mailboxes that overflowed: each refused a message and ended its connection.",
        value: |l| l.mailboxes.overflowed as f64,
    },
    Family {
        name: "shoal_mailbox_send_waits_total",
        kind: Kind::Counter,
        help: "Guest sends that found a mailbox full and waited for room (flow control).",
        value: |l| l.mailboxes.waited as f64,
    },
];

/// The page for `listeners`.
pub(crate) fn render(listeners: &[ListenerStatus]) -> String {
    let mut page = Exposition::default();
    for family in PER_LISTENER {
        page.family(family.name, family.kind, family.help);
        for listener in listeners {
            let value = (family.value)(listener);
            page.sample(family.name, &[("listener", &listener.name)], value);
        }
    }

    counters_by(
        &mut page,
        listeners.iter(),
        ("shoal_connections_ended_total", "reason"),
        "Connections ended, by how (each accepted connection is counted once).",
        |listener| {
            EndKind::ALL
                .iter()
                .map(|kind| (kind.name(), listener.stats.ended(*kind)))
                .collect()
        },
    );
    counters_by(
        &mut page,
        listeners.iter(),
        ("shoal_limit_hits_total", "limit"),
        "Connections a listener's limit ended, by limit.",
        |listener| {
            Limit::ALL
                .iter()
                .map(|limit| (limit.setting(), listener.stats.limit_hits(*limit)))
                .collect()
        },
    );
    counters_by(
        &mut page,
        listeners.iter(),
        ("shoal_mailbox_messages_refused_total", "reason"),
        "Messages refused to their sender, by reason (nothing was queued).",
        |listener| {
            MessageError::ALL
                .iter()
                .map(|reason| (reason.name(), listener.mailboxes.refused(*reason)))
                .collect()
        },
    );
    counters_by(
        &mut page,
        listeners.iter().filter(|l| l.config.tls().is_some()),
        ("shoal_tls_handshakes_total", "result"),
        "TLS handshakes, by result.",
        |listener| {
            let stats = &listener.stats;
            vec![
                ("ok", stats.tls_handshakes()),
                ("failed", stats.ended(EndKind::TlsHandshakeFailed)),
                ("timeout", stats.ended(EndKind::TlsHandshakeTimeout)),
            ]
        },
    );

    let name = "shoal_guest_call_duration_seconds";
    page.family(
        name,
        Kind::Histogram,
        "Wall-clock time of guest calls, by export (waits for mailbox room included).",
    );
    for listener in listeners {
        for call in Call::ALL {
            let labels = [
                ("listener", listener.name.as_str()),
                ("export", call.name()),
            ];
            histogram(&mut page, name, &labels, &listener.stats.calls(call));
        }
    }

    let name = "shoal_instantiation_duration_seconds";
    page.family(
        name,
        Kind::Histogram,
        "Time to make a connection's plugin instance.",
    );
    for listener in listeners {
        let labels = [("listener", listener.name.as_str())];
        histogram(&mut page, name, &labels, &listener.stats.instantiations());
    }

    let name = "shoal_plugin_version_info";
    page.family(
        name,
        Kind::Gauge,
        "The plugin versions a listener serves (1 each; current=\"true\" for the one new \
         connections get), with their SHA-256.",
    );
    for listener in listeners {
        for version in &listener.versions {
            let number = version.number.to_string();
            let hash = version.hash.to_string();
            let current = if version.current { "true" } else { "false" };
            let labels = [
                ("listener", listener.name.as_str()),
                ("plugin", version.plugin.as_str()),
                ("version", number.as_str()),
                ("sha256", hash.as_str()),
                ("current", current),
            ];
            page.sample(name, &labels, 1.0);
        }
    }
    page.finish()
}

/// A counter family with a second label: `(name, label)`, and for each listener the
/// counts by that label's values.
fn counters_by<'a>(
    page: &mut Exposition,
    listeners: impl Iterator<Item = &'a ListenerStatus>,
    (name, label): (&str, &str),
    help: &str,
    counts: impl Fn(&ListenerStatus) -> Vec<(&'static str, u64)>,
) {
    page.family(name, Kind::Counter, help);
    for listener in listeners {
        for (value, count) in counts(listener) {
            page.sample(
                name,
                &[("listener", listener.name.as_str()), (label, value)],
                count as f64,
            );
        }
    }
}

fn histogram(page: &mut Exposition, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
    page.histogram(name, labels, &h.buckets, h.overflow, h.sum);
}
