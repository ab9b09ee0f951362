//! Guest log lines — from the `log` import and from WASI stdout/stderr — on their way to the
//! host's `tracing` output, tagged with the connection id and plugin name and rate-limited.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

use crate::wasm::bindings::plugin::types::Level;

/// Longest line kept; the rest of a longer line is cut.
const MAX_LINE_BYTES: usize = 4096;

/// Where one connection's guest log lines go.
pub(crate) struct GuestLog {
    conn_id: u64,
    plugin: Arc<str>,
    limiter: RateLimiter,
}

impl GuestLog {
    pub(crate) fn new(conn_id: u64, plugin: Arc<str>, limiter: RateLimiter) -> Self {
        Self {
            conn_id,
            plugin,
            limiter,
        }
    }

    /// The plugin's name.
    pub(crate) fn plugin(&self) -> &str {
        &self.plugin
    }

    /// Emit one line, unless the connection is over its rate.
    pub(crate) fn line(&mut self, level: Level, message: &str) {
        let suppressed = match self.limiter.admit(Instant::now()) {
            Admit::Yes { suppressed } => suppressed,
            Admit::No => return,
        };
        let message = printable(truncate(message));
        let (conn, plugin) = (self.conn_id, &*self.plugin);
        if suppressed > 0 {
            tracing::warn!(target: "shoal::guest", conn, plugin, "{suppressed} guest log lines dropped (rate limit)");
        }
        match level {
            Level::Trace => tracing::trace!(target: "shoal::guest", conn, plugin, "{message}"),
            Level::Debug => tracing::debug!(target: "shoal::guest", conn, plugin, "{message}"),
            Level::Info => tracing::info!(target: "shoal::guest", conn, plugin, "{message}"),
            Level::Warn => tracing::warn!(target: "shoal::guest", conn, plugin, "{message}"),
            Level::Error => tracing::error!(target: "shoal::guest", conn, plugin, "{message}"),
        }
    }
}

/// Escape control characters, so a guest cannot forge log lines with `\n` or `\r`.
fn printable(message: &str) -> Cow<'_, str> {
    if !message.chars().any(char::is_control) {
        return Cow::Borrowed(message);
    }
    let mut escaped = String::with_capacity(message.len() + 8);
    for c in message.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

fn truncate(message: &str) -> &str {
    if message.len() <= MAX_LINE_BYTES {
        return message;
    }
    let mut end = MAX_LINE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// A token bucket: `burst` lines at once, then `per_second` lines a second.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// Whether a line may be written, and how many were dropped before it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    Yes { suppressed: u64 },
    No,
}

impl RateLimiter {
    pub(crate) fn new(per_second: u32, burst: u32, now: Instant) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: now,
            suppressed: 0,
        }
    }

    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Admit::Yes {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Admit::No
        }
    }
}

/// A guest's WASI stdout or stderr: bytes are split into lines and logged.
#[derive(Clone)]
pub(crate) struct GuestStdio {
    log: Arc<Mutex<GuestLog>>,
    level: Level,
    pending: Arc<Mutex<Vec<u8>>>,
}

impl GuestStdio {
    pub(crate) fn new(log: Arc<Mutex<GuestLog>>, level: Level) -> Self {
        Self {
            log,
            level,
            pending: Arc::default(),
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        for &byte in bytes {
            if byte == b'\n' {
                self.emit(&pending);
                pending.clear();
            } else if pending.len() < MAX_LINE_BYTES {
                pending.push(byte);
            }
        }
    }

    /// Log a last line that had no newline (called when the instance is dropped).
    pub(crate) fn flush_partial(&self) {
        if let Ok(mut pending) = self.pending.lock()
            && !pending.is_empty()
        {
            self.emit(&pending);
            pending.clear();
        }
    }

    fn emit(&self, line: &[u8]) {
        if let Ok(mut log) = self.log.lock() {
            log.line(self.level, &String::from_utf8_lossy(line));
        }
    }
}

impl IsTerminal for GuestStdio {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStdio {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for GuestStdio {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(10, 3, start);
        for _ in 0..3 {
            assert_eq!(limiter.admit(start), Admit::Yes { suppressed: 0 });
        }
        assert_eq!(limiter.admit(start), Admit::No);
        assert_eq!(limiter.admit(start), Admit::No);
        // 100 ms at 10 lines/s earns one line, which reports the two dropped before it.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.admit(later), Admit::Yes { suppressed: 2 });
        assert_eq!(limiter.admit(later), Admit::No);
    }

    #[test]
    fn tokens_never_exceed_the_burst() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(1000, 2, start);
        let much_later = start + Duration::from_secs(60);
        assert!(matches!(limiter.admit(much_later), Admit::Yes { .. }));
        assert!(matches!(limiter.admit(much_later), Admit::Yes { .. }));
        assert_eq!(limiter.admit(much_later), Admit::No);
    }

    #[test]
    fn control_characters_cannot_forge_log_lines() {
        assert_eq!(printable("plain text"), "plain text");
        assert_eq!(
            printable("ok\n2026-01-01 ERROR forged\r"),
            "ok\\n2026-01-01 ERROR forged\\r"
        );
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let line = "é".repeat(MAX_LINE_BYTES);
        let cut = truncate(&line);
        assert!(cut.len() <= MAX_LINE_BYTES);
        assert!(cut.len() >= MAX_LINE_BYTES - 1);
    }
}
