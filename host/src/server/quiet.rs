//! How long a connection has been quiet, and what is due when it has been quiet too long:
//! its idle timeout (no byte from the client) or its hibernation (no byte and no message).
//! One timer serves both: a connection's task holds one `Sleep` (112 bytes in every
//! connection, idle or not) instead of two, moved only when it fires.

use std::time::Duration;

use tokio::time::Instant;

/// A connection's quiet clocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quiet {
    idle_timeout: Duration,
    /// `None` when the connection does not hibernate (off for its listener, or its plugin
    /// cannot hand its state off).
    hibernate_after: Option<Duration>,
    /// The client's last byte (or the moment its reads resumed after flow control).
    last_input: Instant,
    /// The last byte or message.
    last_activity: Instant,
}

/// What a fired timer finds due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// The client sent nothing for the idle timeout.
    Idle,
    /// Awake and quiet for `hibernate_after`: it may sleep.
    Hibernate,
    /// Nothing yet: the client or a message spoke since the timer was set.
    Nothing,
}

impl Quiet {
    pub(crate) fn new(
        now: Instant,
        idle_timeout: Duration,
        hibernate_after: Option<Duration>,
    ) -> Self {
        Self {
            idle_timeout,
            hibernate_after,
            last_input: now,
            last_activity: now,
        }
    }

    /// The client sent bytes.
    pub(crate) fn input(&mut self, now: Instant) {
        self.last_input = now;
        self.last_activity = now;
    }

    /// A message arrived.
    pub(crate) fn message(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// The connection reads its client again (or was not reading it): its idle time starts
    /// over, as not reading is the server's doing, not the client's silence.
    pub(crate) fn reading_resumed(&mut self, now: Instant) {
        self.last_input = now;
    }

    /// The timer fired at `now`: what is due for a connection that is `asleep` or not, and
    /// whose reads are paused by flow control (`reading_paused`) or not — not reading its
    /// client is the server's doing, not the client's silence, so its idle time starts over.
    pub(crate) fn fired(&mut self, now: Instant, reading_paused: bool, asleep: bool) -> Due {
        if reading_paused {
            self.reading_resumed(now);
        }
        self.due(now, asleep)
    }

    /// It was due to hibernate but stays awake (its state is too large): it may try again
    /// after another `hibernate_after`.
    pub(crate) fn kept_awake(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// It will never hibernate: its plugin cannot hand its state off.
    pub(crate) fn never_hibernate(&mut self) {
        self.hibernate_after = None;
    }

    /// What is due at `now` for a connection that is `asleep` or not. The idle timeout
    /// first: a connection idle that long ends, asleep or not.
    pub(crate) fn due(&self, now: Instant, asleep: bool) -> Due {
        if now >= self.last_input + self.idle_timeout {
            return Due::Idle;
        }
        match self.hibernate_after {
            Some(after) if !asleep && now >= self.last_activity + after => Due::Hibernate,
            _ => Due::Nothing,
        }
    }

    /// When the timer should next fire: the idle deadline, or the hibernation deadline if
    /// it comes first and the connection is awake.
    pub(crate) fn next_deadline(&self, asleep: bool) -> Instant {
        let idle = self.last_input + self.idle_timeout;
        match self.hibernate_after {
            Some(after) if !asleep => idle.min(self.last_activity + after),
            _ => idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);
    const NAP: Duration = Duration::from_secs(1);

    #[test]
    fn without_hibernation_only_the_idle_timeout_is_due() {
        let start = Instant::now();
        let quiet = Quiet::new(start, IDLE, None);
        assert_eq!(quiet.next_deadline(false), start + IDLE);
        assert_eq!(quiet.due(start + NAP * 2, false), Due::Nothing);
        assert_eq!(quiet.due(start + IDLE, false), Due::Idle);
    }

    #[test]
    fn an_awake_connection_is_due_to_hibernate_first() {
        let start = Instant::now();
        let quiet = Quiet::new(start, IDLE, Some(NAP));
        assert_eq!(quiet.next_deadline(false), start + NAP);
        assert_eq!(quiet.due(start + NAP / 2, false), Due::Nothing);
        assert_eq!(quiet.due(start + NAP, false), Due::Hibernate);
        // Asleep, only the idle timeout is left.
        assert_eq!(quiet.next_deadline(true), start + IDLE);
        assert_eq!(quiet.due(start + NAP, true), Due::Nothing);
        assert_eq!(quiet.due(start + IDLE, true), Due::Idle);
    }

    #[test]
    fn a_message_delays_hibernation_but_not_the_idle_timeout() {
        let start = Instant::now();
        let mut quiet = Quiet::new(start, IDLE, Some(NAP));
        quiet.message(start + NAP / 2);
        assert_eq!(quiet.due(start + NAP, false), Due::Nothing);
        assert_eq!(quiet.next_deadline(false), start + NAP / 2 + NAP);
        assert_eq!(quiet.due(start + IDLE, false), Due::Idle);
    }

    #[test]
    fn client_bytes_delay_both() {
        let start = Instant::now();
        let mut quiet = Quiet::new(start, IDLE, Some(NAP));
        let later = start + IDLE / 2;
        quiet.input(later);
        assert_eq!(quiet.due(later + NAP / 2, false), Due::Nothing);
        assert_eq!(quiet.due(start + IDLE, true), Due::Nothing);
        assert_eq!(quiet.next_deadline(true), later + IDLE);
        assert_eq!(quiet.next_deadline(false), later + NAP);
    }

    #[test]
    fn resumed_reads_restart_the_idle_time_only() {
        let start = Instant::now();
        let mut quiet = Quiet::new(start, IDLE, Some(NAP));
        quiet.reading_resumed(start + IDLE);
        assert_eq!(quiet.due(start + IDLE, true), Due::Nothing);
        assert_eq!(quiet.due(start + IDLE, false), Due::Hibernate);
    }

    #[test]
    fn a_connection_whose_reads_are_paused_is_not_idle() {
        let start = Instant::now();
        let mut quiet = Quiet::new(start, IDLE, None);
        assert_eq!(quiet.fired(start + IDLE, true, false), Due::Nothing);
        assert_eq!(quiet.next_deadline(false), start + IDLE * 2);
        assert_eq!(quiet.fired(start + IDLE * 2, false, false), Due::Idle);
    }

    #[test]
    fn a_connection_kept_awake_tries_again_after_another_spell() {
        let start = Instant::now();
        let mut quiet = Quiet::new(start, IDLE, Some(NAP));
        assert_eq!(quiet.due(start + NAP, false), Due::Hibernate);
        quiet.kept_awake(start + NAP);
        assert_eq!(quiet.due(start + NAP, false), Due::Nothing);
        assert_eq!(quiet.next_deadline(false), start + NAP * 2);
    }

    #[test]
    fn a_connection_that_cannot_hand_off_never_hibernates() {
        let start = Instant::now();
        let mut quiet = Quiet::new(start, IDLE, Some(NAP));
        quiet.never_hibernate();
        assert_eq!(quiet.due(start + NAP * 2, false), Due::Nothing);
        assert_eq!(quiet.next_deadline(false), start + IDLE);
    }
}
