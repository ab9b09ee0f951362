//! `GET /status.json`: what the admin page and `shoal status` show — each listener's
//! address, plugin version, live connections, limits and counters, the recent faults and
//! limit hits, and totals.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::messages::types::MessageError;
use crate::node_handle::ListenerStatus;
use crate::observe::stats::{EndKind, Incident, Limit};

/// The whole status.
#[derive(Debug, Serialize)]
pub(crate) struct Status {
    /// Seconds since the admin listener started.
    pub(crate) uptime_seconds: u64,
    pub(crate) totals: Totals,
    pub(crate) listeners: Vec<ListenerView>,
    /// The latest faults and limit hits of every listener, newest first.
    pub(crate) recent: Vec<IncidentView>,
}

/// Sums over the listeners.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Totals {
    pub(crate) listeners: usize,
    pub(crate) connections_open: usize,
    pub(crate) connections_accepted: u64,
    pub(crate) instances_live: usize,
    pub(crate) guest_faults: u64,
    pub(crate) received_bytes: u64,
    pub(crate) sent_bytes: u64,
    pub(crate) messages_delivered: u64,
    pub(crate) messages_refused: u64,
}

/// One listener.
#[derive(Debug, Serialize)]
pub(crate) struct ListenerView {
    pub(crate) name: String,
    pub(crate) address: String,
    pub(crate) tls: bool,
    /// The current plugin version (none for native code).
    pub(crate) plugin: Option<String>,
    pub(crate) version: Option<u64>,
    pub(crate) versions: Vec<VersionView>,
    pub(crate) connections_open: usize,
    pub(crate) connections_asleep: usize,
    pub(crate) connections_accepted: u64,
    pub(crate) instances_live: usize,
    pub(crate) guest_faults: u64,
    pub(crate) guest_cpu_seconds: f64,
    pub(crate) received_bytes: u64,
    pub(crate) sent_bytes: u64,
    pub(crate) messages: Messages,
    pub(crate) limits: Limits,
    /// Connections ended, by reason (those with a count only).
    pub(crate) ended: BTreeMap<&'static str, u64>,
    /// Limit hits, by setting (those with a count only).
    pub(crate) limit_hits: BTreeMap<&'static str, u64>,
}

/// What a listener's mailboxes have done.
#[derive(Debug, Serialize)]
pub(crate) struct Messages {
    pub(crate) delivered: u64,
    /// Refused, by reason (those with a count only).
    pub(crate) refused: BTreeMap<&'static str, u64>,
    /// Mailboxes that overflowed (each ended its connection).
    pub(crate) overflowed: u64,
    /// Sends that waited for room.
    pub(crate) waited: u64,
}

/// A listener's limits, as configured.
#[derive(Debug, Serialize)]
pub(crate) struct Limits {
    pub(crate) max_connections: usize,
    pub(crate) memory_limit_bytes: usize,
    pub(crate) cpu_budget_per_call_ms: u128,
    pub(crate) call_timeout_ms: u128,
    pub(crate) idle_timeout_ms: u128,
    pub(crate) output_buffer_limit_bytes: usize,
}

/// One plugin version of a listener.
#[derive(Debug, Serialize)]
pub(crate) struct VersionView {
    pub(crate) number: u64,
    pub(crate) plugin: String,
    pub(crate) sha256: String,
    pub(crate) current: bool,
    pub(crate) live_connections: usize,
    pub(crate) loaded_unix: u64,
}

/// A fault or limit hit.
#[derive(Debug, Serialize)]
pub(crate) struct IncidentView {
    pub(crate) at_unix: f64,
    pub(crate) listener: String,
    pub(crate) conn: u64,
    pub(crate) peer: String,
    pub(crate) ending: &'static str,
    pub(crate) detail: String,
}

/// Most incidents the status lists.
const RECENT: usize = 20;

/// The status of `listeners`, for an admin listener that started at `started`.
pub(crate) fn status(listeners: &[ListenerStatus], started: Instant) -> Status {
    let mut totals = Totals {
        listeners: listeners.len(),
        ..Totals::default()
    };
    let mut recent: Vec<IncidentView> = Vec::new();
    let views = listeners
        .iter()
        .map(|listener| {
            let stats = &listener.stats;
            totals.connections_open += stats.live_connections();
            totals.connections_accepted += stats.accepted();
            totals.instances_live += stats.live_instances();
            totals.guest_faults += stats.faults();
            totals.received_bytes += stats.bytes_in();
            totals.sent_bytes += stats.bytes_out();
            let mailboxes = &listener.mailboxes;
            totals.messages_delivered += mailboxes.delivered;
            totals.messages_refused += mailboxes.refused_total();
            recent.extend(
                stats
                    .recent_incidents()
                    .into_iter()
                    .map(|incident| incident_view(&listener.name, incident)),
            );
            let current = listener.versions.iter().find(|v| v.current);
            let config = &listener.config;
            ListenerView {
                name: listener.name.clone(),
                address: listener.address.to_string(),
                tls: config.tls().is_some(),
                plugin: current.map(|v| v.plugin.clone()),
                version: current.map(|v| v.number),
                versions: listener
                    .versions
                    .iter()
                    .map(|v| VersionView {
                        number: v.number,
                        plugin: v.plugin.clone(),
                        sha256: v.hash.to_string(),
                        current: v.current,
                        live_connections: v.live_connections,
                        loaded_unix: unix_seconds(v.loaded_at) as u64,
                    })
                    .collect(),
                connections_open: stats.live_connections(),
                connections_asleep: stats.asleep(),
                connections_accepted: stats.accepted(),
                instances_live: stats.live_instances(),
                guest_faults: stats.faults(),
                guest_cpu_seconds: stats.guest_cpu().as_secs_f64(),
                received_bytes: stats.bytes_in(),
                sent_bytes: stats.bytes_out(),
                messages: Messages {
                    delivered: mailboxes.delivered,
                    refused: MessageError::ALL
                        .into_iter()
                        .map(|reason| (reason.name(), mailboxes.refused(reason)))
                        .filter(|(_, count)| *count > 0)
                        .collect(),
                    overflowed: mailboxes.overflowed,
                    waited: mailboxes.waited,
                },
                limits: Limits {
                    max_connections: config.max_connections(),
                    memory_limit_bytes: config.memory_limit(),
                    cpu_budget_per_call_ms: config.cpu_budget_per_call().as_millis(),
                    call_timeout_ms: config.call_timeout().as_millis(),
                    idle_timeout_ms: config.idle_timeout().as_millis(),
                    output_buffer_limit_bytes: config.output_buffer_limit(),
                },
                ended: EndKind::ALL
                    .into_iter()
                    .map(|kind| (kind.name(), stats.ended(kind)))
                    .filter(|(_, count)| *count > 0)
                    .collect(),
                limit_hits: Limit::ALL
                    .into_iter()
                    .map(|limit| (limit.setting(), stats.limit_hits(limit)))
                    .filter(|(_, count)| *count > 0)
                    .collect(),
            }
        })
        .collect();
    recent.sort_by(|a, b| b.at_unix.total_cmp(&a.at_unix));
    recent.truncate(RECENT);
    Status {
        uptime_seconds: started.elapsed().as_secs(),
        totals,
        listeners: views,
        recent,
    }
}

fn incident_view(listener: &str, incident: Incident) -> IncidentView {
    IncidentView {
        at_unix: unix_seconds(incident.at),
        listener: listener.to_string(),
        conn: incident.conn,
        peer: incident.peer,
        ending: incident.ending,
        detail: incident.detail,
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}
