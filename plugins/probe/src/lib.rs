//! Misbehaving test plugin: probes for capabilities it should not have. One command per line,
//! one answer line each — `ok …` when the host allowed it, `denied: …` when not:
//!
//! - `read PATH` — read a file (`/etc/passwd`, or a file under a granted directory);
//! - `list PATH` — list a directory;
//! - `write PATH` — create or overwrite a file;
//! - `connect ADDR` — open a TCP connection;
//! - `env NAME` — read an environment variable; `env-count` — how many there are;
//! - `config KEY` — read a granted configuration value;
//! - `tls` — what the host says of the connection's TLS session (`ok none` over plain TCP).

use shoal_guest::{ConnInfo, Event, Handler, Next};

struct Probe {
    partial: Vec<u8>,
}

impl Handler for Probe {
    fn init(_info: ConnInfo) -> Result<(Self, Next), String> {
        Ok((
            Probe {
                partial: Vec::new(),
            },
            Next::Continue,
        ))
    }

    fn handle(&mut self, event: Event) -> Next {
        if let Event::Data(bytes) = event {
            self.partial.extend_from_slice(&bytes);
            while let Some(end) = self.partial.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.partial.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end]).trim().to_string();
                let answer = probe(&line);
                let _ = shoal_guest::send(format!("{answer}\n").as_bytes());
            }
        }
        Next::Continue
    }
}

fn probe(line: &str) -> String {
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    let outcome = match verb {
        "read" => std::fs::read_to_string(arg)
            .map(|text| format!("{} bytes: {}", text.len(), text.trim())),
        "list" => std::fs::read_dir(arg).map(|entries| format!("{} entries", entries.count())),
        "write" => std::fs::write(arg, b"scribble").map(|()| "written".to_string()),
        "connect" => std::net::TcpStream::connect(arg).map(|_| "connected".to_string()),
        "env" => {
            return match std::env::var(arg) {
                Ok(value) => format!("ok {arg}={value}"),
                Err(error) => format!("denied: {error}"),
            };
        }
        "env-count" => return format!("ok {}", std::env::vars().count()),
        "config" => {
            return match shoal_guest::config::get(arg) {
                Some(value) => format!("ok {arg}={value}"),
                None => "denied: not granted".to_string(),
            };
        }
        "tls" => {
            return match shoal_guest::tls() {
                None => "ok none".to_string(),
                Some(tls) => format!(
                    "ok version={} cipher={} sni={} alpn={} client={}",
                    tls.version,
                    tls.cipher_suite,
                    tls.server_name.as_deref().unwrap_or("-"),
                    tls.alpn.as_deref().unwrap_or("-"),
                    tls.client_subject.as_deref().unwrap_or("-"),
                ),
            };
        }
        _ => return "error: unknown probe".to_string(),
    };
    match outcome {
        Ok(what) => format!("ok {what}"),
        Err(error) => format!("denied: {error}"),
    }
}

shoal_guest::export_handler!(Probe);
