//! The commands that talk to a running server's admin listener over HTTP/1.1: `shoal
//! status` (its `/status.json`, printed as tables), `shoal deploy` and `shoal rollback`
//! (with the listener's bearer token).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::Value;

/// Which server to change, and the token it asks for.
#[derive(Args)]
pub(crate) struct Target {
    /// The server's admin listener (`--admin` or `[admin] address` where it serves).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9090")]
    admin: SocketAddr,
    /// A file holding the admin listener's token [default: $SHOAL_ADMIN_TOKEN].
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

impl Target {
    /// The token, from the file or the environment.
    fn token(&self) -> anyhow::Result<String> {
        if let Some(file) = &self.token_file {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the token file {}", file.display()))?;
            return Ok(text.trim().to_string());
        }
        std::env::var("SHOAL_ADMIN_TOKEN").context(
            "no token: give --token-file FILE, or set SHOAL_ADMIN_TOKEN, to the server's \
             [admin] token_file's content",
        )
    }
}

/// `shoal status`: fetch and print (with the token, if one is given: an admin listener
/// reachable from other machines asks for it on every page).
pub(crate) fn print_status(target: &Target) -> anyhow::Result<()> {
    let token = target.token().ok();
    let (status, body) = request(target.admin, "GET", "/status.json", token.as_deref(), &[])?;
    if status != 200 {
        bail!("the admin listener answered {status}: {}", body.trim());
    }
    let status: Value =
        serde_json::from_str(&body).context("the admin listener's status is not JSON")?;
    print!("{}", render(&status));
    Ok(())
}

/// `shoal deploy`: upload `plugin` as `listener`'s new version.
pub(crate) fn deploy(target: &Target, listener: &str, plugin: &Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(plugin).with_context(|| format!("cannot read {}", plugin.display()))?;
    let name = plugin.file_name().map_or_else(
        || "uploaded".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let path = format!(
        "/listeners/{}/deploy?name={}",
        escape(listener),
        escape(&name)
    );
    change(target, &path, &bytes, listener)
}

/// `shoal rollback`: make `listener`'s previous version current.
pub(crate) fn rollback(target: &Target, listener: &str) -> anyhow::Result<()> {
    let path = format!("/listeners/{}/rollback", escape(listener));
    change(target, &path, &[], listener)
}

/// POST a change; print the version now current, or fail with the server's reason.
fn change(target: &Target, path: &str, body: &[u8], listener: &str) -> anyhow::Result<()> {
    let token = target.token()?;
    let (status, answer) = request(target.admin, "POST", path, Some(&token), body)?;
    if status != 200 {
        bail!("refused ({status}): {}", answer.trim());
    }
    let version: Value = serde_json::from_str(&answer).context("the answer is not JSON")?;
    println!(
        "listener {listener}: version {} ({}, sha256 {}) is current",
        text(&version["version"]),
        text(&version["plugin"]),
        text(&version["sha256"]),
    );
    Ok(())
}

/// `%XX` for every byte but unreserved ones, for a path segment or a query value.
fn escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// One HTTP/1.1 request: the status code and the body of the answer.
fn request(
    admin: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5)).with_context(
        || format!("cannot reach the admin listener at {admin}; is the server running with --admin {admin}?"),
    )?;
    // A deploy waits for the plugin's compile and probe.
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the admin listener sent no HTTP response")?;
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .context("the admin listener's answer has no status")?;
    Ok((status, body.to_string()))
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
