//! Units a person writes in a config file: durations (`250ms`, `5s`, `2m`, `1h`) and sizes
//! (`65536`, `64KiB`, `16MiB`, `1GiB`).

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A duration written as a number and a unit: `250ms`, `5s`, `2m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct DurationText(pub(crate) Duration);

impl TryFrom<String> for DurationText {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a duration: write a number and a unit (ms, s, m, h), such as \"250ms\" or \"5s\""
            )
        };
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let duration = match unit.trim() {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        Ok(Self(duration))
    }
}

/// Read a duration as the config file writes one: a number and a unit (`ms`, `s`, `m`, `h`),
/// such as `"250ms"` or `"30s"`; the error says what is wrong with it.
///
/// # Errors
///
/// A text that is not such a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    DurationText::try_from(text.to_string()).map(|duration| duration.0)
}

/// A size in bytes: a number, or a number and a unit (`KiB`, `MiB`, `GiB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub(crate) usize);

impl ByteSize {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{text:?} is not a size: write bytes, or a number and a unit (KiB, MiB, GiB), such as \"16MiB\""
            )
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: usize = number.parse().map_err(|_| bad())?;
        let scale: usize = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        number.checked_mul(scale).map(Self).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: bytes, or a number and a unit such as \"16MiB\"")
            }

            fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<ByteSize, E> {
                usize::try_from(value)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("{value} is not a size")))
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteSize, E> {
                ByteSize::parse(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// A count, as an error message shows it.
pub(crate) fn count<T: fmt::Display>(value: &T) -> String {
    value.to_string()
}

/// A duration as a config file writes it: `250ms`, `5s`, `2m`, `1h`, `7d` is `168h`.
pub(crate) fn duration(value: &Duration) -> String {
    let millis = value.as_millis();
    match millis {
        0 => "0s".to_string(),
        m if m % 3_600_000 == 0 => format!("{}h", m / 3_600_000),
        m if m % 60_000 == 0 => format!("{}m", m / 60_000),
        m if m % 1000 == 0 => format!("{}s", m / 1000),
        m => format!("{m}ms"),
    }
}

/// A size as a config file writes it: `64`, `1KiB`, `16MiB`, `4GiB`.
pub(crate) fn size(value: &usize) -> String {
    match *value {
        v if v >= 1 << 30 && v % (1 << 30) == 0 => format!("{}GiB", v >> 30),
        v if v >= 1 << 20 && v % (1 << 20) == 0 => format!("{}MiB", v >> 20),
        v if v >= 1 << 10 && v % (1 << 10) == 0 => format!("{}KiB", v >> 10),
        v => v.to_string(),
    }
}

/// A size in a sentence: `16MiB`, or `13705 bytes` where no unit writes it exactly.
pub(crate) fn size_in_words(value: &usize) -> String {
    match size(value) {
        text if text.ends_with('B') => text,
        _ if *value == 1 => "1 byte".to_string(),
        text => format!("{text} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        let ms = DurationText::try_from("250ms".to_string()).map(|d| d.0);
        assert_eq!(ms, Ok(Duration::from_millis(250)));
        let hours = DurationText::try_from("2h".to_string()).map(|d| d.0);
        assert_eq!(hours, Ok(Duration::from_secs(7200)));
        assert!(DurationText::try_from("5".to_string()).is_err());
        assert_eq!(ByteSize::parse("64KiB"), Ok(ByteSize(64 << 10)));
        assert_eq!(ByteSize::parse("100"), Ok(ByteSize(100)));
        assert!(ByteSize::parse("1TB").is_err());
        assert_eq!(size_in_words(&13705), "13705 bytes");
        assert_eq!(size_in_words(&1), "1 byte");
        assert_eq!(size_in_words(&(64 << 20)), "64MiB");
    }

    #[test]
    fn bounds_are_shown_as_they_are_written() {
        assert_eq!(duration(&Duration::from_millis(1)), "1ms");
        assert_eq!(duration(&Duration::from_secs(3600)), "1h");
        assert_eq!(duration(&Duration::from_secs(90)), "90s");
        assert_eq!(duration(&Duration::ZERO), "0s");
        assert_eq!(size(&(256 << 20)), "256MiB");
        assert_eq!(size(&64), "64");
        assert_eq!(size(&(4 << 30)), "4GiB");
        for text in [
            duration(&Duration::from_secs(7 * 24 * 3600)),
            size(&(1 << 10)),
        ] {
            let parses =
                DurationText::try_from(text.clone()).is_ok() || ByteSize::parse(&text).is_ok();
            assert!(parses, "{text} reads back");
        }
    }
}
