//! Units as the gateway's files write them: durations (`250ms`, `10s`, `5m`,
//! `1h`, `7d`) and byte sizes (`16384`, `512KiB`, `10MiB`).
//!
//! Pure (no I/O, nothing from the rest of `config`), so the policy file reads
//! its durations with the same parser: [`parse_duration`] is the one
//! duration grammar, and [`DurationSyntax`] names the two ways the files
//! differ, so neither keeps a copy with rules of its own.

use std::time::Duration;

/// What a file's durations may do beyond `<whole number><unit>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSyntax {
    /// A number without a unit means seconds; otherwise it is an error.
    pub bare_number_is_seconds: bool,
    /// Blanks around the duration and between number and unit are ignored.
    pub blanks_allowed: bool,
}

impl DurationSyntax {
    /// `gateway.yaml` (its header comment): "a bare integer means seconds",
    /// so `drain_timeout: 30` is 30s, and environment overrides such as
    /// `PORTCULLIS_REDIS__TIMEOUT=" 2s"` are read as written.
    pub const CONFIG: DurationSyntax = DurationSyntax {
        bare_number_is_seconds: true,
        blanks_allowed: true,
    };

    /// The policy file (contract section 5): a duration always carries its
    /// unit (`per: 1m`); `per: 10` is refused rather than guessed.
    pub const POLICY: DurationSyntax = DurationSyntax {
        bare_number_is_seconds: false,
        blanks_allowed: false,
    };
}

/// Why text is not a duration; each file words its own message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurationError {
    /// No whole number first, or a unit other than ms, s, m, h and d.
    Malformed,
    /// A number alone where the syntax needs a unit.
    MissingUnit,
    /// More milliseconds than a `u64` holds.
    TooLarge,
}

/// The one duration parser: a whole number and one of `ms`, `s`, `m`, `h`,
/// `d`. Zero is a duration here; whether it is allowed is the caller's rule.
pub fn parse_duration(text: &str, syntax: DurationSyntax) -> Result<Duration, DurationError> {
    let text = if syntax.blanks_allowed {
        text.trim()
    } else {
        text
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit = if syntax.blanks_allowed {
        unit.trim_start()
    } else {
        unit
    };
    if digits.is_empty() {
        return Err(DurationError::Malformed);
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "" if syntax.bare_number_is_seconds => 1_000,
        "" => return Err(DurationError::MissingUnit),
        _ => return Err(DurationError::Malformed),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or(DurationError::TooLarge)
}

/// Durations in `gateway.yaml`: `250ms`, `10s`, `5m`, `1h`, `7d`, or a plain
/// integer of seconds ([`DurationSyntax::CONFIG`]).
pub mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};

    use super::{parse_duration, DurationError, DurationSyntax};

    const EXPECTED: &str = "an integer followed by ms, s, m, h or d (e.g. 250ms, 10s, 5m, 1h, 7d)";

    pub fn parse(text: &str) -> Result<Duration, String> {
        parse_duration(text, DurationSyntax::CONFIG).map_err(|error| match error {
            // MissingUnit cannot happen with this syntax; it reads as malformed anyway.
            DurationError::Malformed | DurationError::MissingUnit => {
                format!("invalid duration {text:?}: expected {EXPECTED}")
            }
            DurationError::TooLarge => format!("invalid duration {text:?}: too large"),
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration: ")?;
            f.write_str(EXPECTED)
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }

        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("invalid duration {secs}: must not be negative")))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<Duration, E> {
            Err(E::custom(format!(
                "invalid duration {value}: expected {EXPECTED}"
            )))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).map_err(E::custom)
        }
    }
}

/// Sizes in bytes: a plain integer, or an integer with `B`, `KiB`, `MiB`,
/// `GiB` or `TiB`. Decimal units (`MB`) are rejected rather than guessed.
pub mod size {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};

    const EXPECTED: &str = "an integer of bytes, optionally followed by B, KiB, MiB, GiB or TiB (e.g. 16384, 512KiB, 10MiB)";

    pub fn parse(text: &str) -> Result<u64, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let multiplier: u64 = match unit.trim_start() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(format!("invalid size {text:?}: expected {EXPECTED}")),
        };
        if digits.is_empty() {
            return Err(format!("invalid size {text:?}: expected {EXPECTED}"));
        }
        digits
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(multiplier))
            .ok_or_else(|| format!("invalid size {text:?}: too large"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }

    pub fn deserialize_usize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<usize, D::Error> {
        let bytes = deserialize(deserializer)?;
        usize::try_from(bytes)
            .map_err(|_| de::Error::custom(format!("invalid size {bytes}: too large")))
    }

    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size: ")?;
            f.write_str(EXPECTED)
        }

        fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<u64, E> {
            Ok(bytes)
        }

        fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<u64, E> {
            u64::try_from(bytes)
                .map_err(|_| E::custom(format!("invalid size {bytes}: must not be negative")))
        }

        fn visit_f64<E: de::Error>(self, value: f64) -> Result<u64, E> {
            Err(E::custom(format!(
                "invalid size {value}: expected {EXPECTED}"
            )))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            parse(text).map_err(E::custom)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::*;
    use super::*;

    #[test]
    fn duration_and_size_formats() {
        assert_eq!(duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration::parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(duration::parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(duration::parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(duration::parse("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(duration::parse("30"), Ok(Duration::from_secs(30)));
        for bad in ["", "s", "10x", "1.5s", "-1s", "99999999999999999999d"] {
            assert!(duration::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(size::parse("16384"), Ok(16384));
        assert_eq!(size::parse("512KiB"), Ok(512 * 1024));
        assert_eq!(size::parse("10MiB"), Ok(10 << 20));
        assert_eq!(size::parse("1GiB"), Ok(1 << 30));
        for bad in ["", "ten", "10MB", "1.5MiB", "99999999999TiB"] {
            assert!(size::parse(bad).is_err(), "{bad:?}");
        }
        let config = parse("server:\n  max_header_bytes: 32KiB\n  drain_timeout: 45\n").unwrap();
        assert_eq!(config.server.max_header_bytes, 32 * 1024);
        assert_eq!(config.server.drain_timeout, Duration::from_secs(45));
    }

    #[test]
    fn one_duration_parser_two_syntaxes() {
        use DurationError::*;
        let (config, policy) = (DurationSyntax::CONFIG, DurationSyntax::POLICY);
        for syntax in [config, policy] {
            assert_eq!(
                parse_duration("250ms", syntax),
                Ok(Duration::from_millis(250))
            );
            assert_eq!(
                parse_duration("7d", syntax),
                Ok(Duration::from_secs(604_800))
            );
            assert_eq!(parse_duration("0s", syntax), Ok(Duration::ZERO));
            for bad in ["", "s", "10x", "1.5s", "-1s", "5 parsecs"] {
                assert_eq!(parse_duration(bad, syntax), Err(Malformed), "{bad:?}");
            }
            assert_eq!(
                parse_duration("99999999999999999999d", syntax),
                Err(TooLarge)
            );
        }
        // Where the files differ.
        assert_eq!(parse_duration("30", config), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30", policy), Err(MissingUnit));
        assert_eq!(
            parse_duration(" 10 s ", config),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(parse_duration(" 10s", policy), Err(Malformed));
        assert_eq!(parse_duration("10 s", policy), Err(Malformed));
    }
}
