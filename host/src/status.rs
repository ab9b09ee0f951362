//! `shoal status`: a running server's `/status.json`, fetched from its admin listener and
//! printed as tables.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

/// Fetch and print.
pub(crate) fn print(admin: SocketAddr) -> anyhow::Result<()> {
    let status = fetch(admin)?;
    print!("{}", render(&status));
    Ok(())
}

/// `GET /status.json` over a plain HTTP/1.1 request.
fn fetch(admin: SocketAddr) -> anyhow::Result<Value> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).with_context(
        || format!("cannot reach the admin listener at {admin}; is the server running with --admin {admin}?"),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET /status.json HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the admin listener sent no HTTP response")?;
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.contains(" 200 ") {
        bail!("the admin listener answered {status_line:?}");
    }
    serde_json::from_str(body).context("the admin listener's status is not JSON")
}

/// The tables: listeners, then the latest incidents.
fn render(status: &Value) -> String {
    let mut rows = vec![
        [
            "LISTENER",
            "ADDRESS",
            "PLUGIN",
            "OPEN",
            "ASLEEP",
            "INSTANCES",
            "ACCEPTED",
            "FAULTS",
        ]
        .map(str::to_string)
        .to_vec(),
    ];
    for listener in status["listeners"].as_array().into_iter().flatten() {
        let plugin = match (listener["plugin"].as_str(), listener["version"].as_u64()) {
            (Some(plugin), Some(version)) => format!("{plugin} v{version}"),
            _ => "native".to_string(),
        };
        let tls = if listener["tls"].as_bool() == Some(true) {
            " (TLS)"
        } else {
            ""
        };
        rows.push(vec![
            text(&listener["name"]),
            format!("{}{tls}", text(&listener["address"])),
            plugin,
            text(&listener["connections_open"]),
            text(&listener["connections_asleep"]),
            text(&listener["instances_live"]),
            text(&listener["connections_accepted"]),
            text(&listener["guest_faults"]),
        ]);
    }
    let mut out = table(&rows);
    let totals = &status["totals"];
    out.push_str(&format!(
        "\n{} listener(s), {} open connection(s), {} accepted, {} fault(s); up {} s\n",
        text(&totals["listeners"]),
        text(&totals["connections_open"]),
        text(&totals["connections_accepted"]),
        text(&totals["guest_faults"]),
        text(&status["uptime_seconds"]),
    ));
    let recent = status["recent"].as_array().cloned().unwrap_or_default();
    if !recent.is_empty() {
        out.push_str("\nrecent faults and limit hits:\n");
        let mut rows = vec![
            ["LISTENER", "CONN", "PEER", "ENDING", "DETAIL"]
                .map(str::to_string)
                .to_vec(),
        ];
        for incident in &recent {
            rows.push(vec![
                text(&incident["listener"]),
                text(&incident["conn"]),
                text(&incident["peer"]),
                text(&incident["ending"]),
                text(&incident["detail"]),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

fn text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

/// Rows as columns padded to their widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_and_incidents_are_tables() {
        let status = serde_json::json!({
            "uptime_seconds": 12,
            "totals": {"listeners": 1, "connections_open": 2, "connections_accepted": 9, "guest_faults": 1},
            "listeners": [{"name": "chat", "address": "127.0.0.1:7000", "tls": true,
                "plugin": "chat", "version": 3, "connections_open": 2, "connections_asleep": 0,
                "instances_live": 2, "connections_accepted": 9, "guest_faults": 1}],
            "recent": [{"listener": "chat", "conn": 4, "peer": "127.0.0.1:5000",
                "ending": "trap", "detail": "guest trapped"}]
        });
        let text = render(&status);
        assert!(text.starts_with("LISTENER  ADDRESS"), "{text}");
        assert!(
            text.contains("chat      127.0.0.1:7000 (TLS)  chat v3  2"),
            "{text}"
        );
        assert!(
            text.contains("1 listener(s), 2 open connection(s), 9 accepted"),
            "{text}"
        );
        assert!(
            text.contains("chat      4     127.0.0.1:5000  trap    guest trapped"),
            "{text}"
        );
    }
}
