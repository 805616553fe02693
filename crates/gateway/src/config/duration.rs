//! Duration settings: a bare number in the setting's own unit (seconds, milliseconds for a
//! `*_ms` key, …) as always, or a duration with its unit such as `"15m"`, `"90s"` or
//! `"250ms"` (the `humantime` syntax).

use std::time::Duration;

use config::{Value, ValueKind};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

/// The unit a setting counts in, which a bare number is read in.
#[derive(Debug, Clone, Copy)]
struct Unit {
    name: &'static str,
    length: Duration,
}

const SECONDS: Unit = Unit { name: "seconds", length: Duration::from_secs(1) };
const MILLISECONDS: Unit = Unit { name: "milliseconds", length: Duration::from_millis(1) };
const MINUTES: Unit = Unit { name: "minutes", length: Duration::from_secs(60) };
const DAYS: Unit = Unit { name: "days", length: Duration::from_secs(86_400) };

/// A setting in seconds.
pub(super) fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_unit(deserializer, SECONDS)
}

/// A setting in milliseconds.
pub(super) fn milliseconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_unit(deserializer, MILLISECONDS)
}

/// A setting in minutes.
pub(super) fn minutes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_unit(deserializer, MINUTES)
}

/// A setting in days.
pub(super) fn days<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    in_unit(deserializer, DAYS)
}

/// A number is read exactly as the `config` crate reads any integer setting (an environment
/// value is a string, so `"300"` is a number too); any other string must be a duration that
/// is a whole number of `unit`s.
fn in_unit<'de, D: Deserializer<'de>>(deserializer: D, unit: Unit) -> Result<u64, D::Error> {
    let value = Value::deserialize(deserializer)?;
    let not_a_number = match value.clone().into_uint() {
        Ok(count) => return Ok(count),
        Err(e) => e,
    };
    let ValueKind::String(text) = value.kind else {
        return Err(D::Error::custom(not_a_number));
    };
    let invalid = |why: String| {
        D::Error::custom(format!(
            "{text:?} is neither a number of {} nor a duration such as \"15m\", \"90s\" or \
             \"250ms\": {why}",
            unit.name
        ))
    };
    let duration = humantime::parse_duration(text.trim()).map_err(|e| invalid(e.to_string()))?;
    let length = unit.length.as_nanos();
    let nanos = duration.as_nanos();
    if nanos % length != 0 {
        return Err(invalid(format!("not a whole number of {}", unit.name)));
    }
    u64::try_from(nanos / length).map_err(|_| invalid("too long".to_owned()))
}

#[cfg(test)]
mod tests {
    use serde::de::value::{Error, StrDeserializer, U64Deserializer};
    use serde::de::IntoDeserializer;

    use super::*;

    fn text(s: &str, unit: Unit) -> Result<u64, String> {
        let deserializer: StrDeserializer<'_, Error> = s.into_deserializer();
        in_unit(deserializer, unit).map_err(|e| e.to_string())
    }

    fn number(n: u64, unit: Unit) -> u64 {
        let deserializer: U64Deserializer<Error> = n.into_deserializer();
        in_unit(deserializer, unit).unwrap()
    }

    #[test]
    fn a_bare_number_is_in_the_settings_unit() {
        assert_eq!(number(300, SECONDS), 300);
        assert_eq!(number(250, MILLISECONDS), 250);
        assert_eq!(number(0, SECONDS), 0);
        assert_eq!(text("300", SECONDS), Ok(300));
        assert_eq!(text("2500", MILLISECONDS), Ok(2500));
        assert_eq!(text("720", MINUTES), Ok(720));
    }

    #[test]
    fn a_duration_with_its_unit_is_converted_to_the_settings_unit() {
        assert_eq!(text("15m", SECONDS), Ok(900));
        assert_eq!(text("90s", SECONDS), Ok(90));
        assert_eq!(text("1h 30m", SECONDS), Ok(5400));
        assert_eq!(text("250ms", MILLISECONDS), Ok(250));
        assert_eq!(text("5s", MILLISECONDS), Ok(5000));
        assert_eq!(text(" 2m ", MILLISECONDS), Ok(120_000));
        assert_eq!(text("12h", MINUTES), Ok(720));
        assert_eq!(text("90d", DAYS), Ok(90));
        assert_eq!(text("0s", SECONDS), Ok(0));
    }

    #[test]
    fn a_bad_duration_is_refused_with_the_reason() {
        let err = text("15 parsecs", SECONDS).unwrap_err();
        assert!(err.contains("\"15 parsecs\" is neither a number of seconds"), "{err}");
        assert!(err.contains("parsecs"), "{err}");
        let err = text("soon", MILLISECONDS).unwrap_err();
        assert!(err.contains("neither a number of milliseconds"), "{err}");
        let err = text("250ms", SECONDS).unwrap_err();
        assert!(err.ends_with("not a whole number of seconds"), "{err}");
        let err = text("-5s", SECONDS).unwrap_err();
        assert!(err.contains("\"-5s\""), "{err}");
    }
}
