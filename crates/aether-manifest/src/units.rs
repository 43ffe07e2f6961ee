//! Byte sizes (`"64MiB"`) and durations (`"30ms"`): strict parsing and canonical printing.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Separates a message from its hint inside serde error strings; split again by the error layer.
pub(crate) const HELP_SEP: &str = "\n\u{1f}help: ";

/// Builds a serde error that carries a hint for the located diagnostic.
pub(crate) fn error_with_help<E: de::Error>(
    message: impl fmt::Display,
    help: impl fmt::Display,
) -> E {
    E::custom(format!("{message}{HELP_SEP}{help}"))
}

/// Why a size or duration string was rejected, with a hint on how to write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseUnitError {
    message: String,
    help: String,
}

impl ParseUnitError {
    fn new(message: impl Into<String>, help: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            help: help.into(),
        }
    }

    /// What is wrong with the input.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// How to write it instead.
    pub fn help(&self) -> &str {
        &self.help
    }
}

impl fmt::Display for ParseUnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseUnitError {}

/// Splits `"64MiB"` into `("64", "MiB")`; `None` when there are no leading digits.
fn split_number(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(end)
}

/// One unit: its spelling and its multiplier.
struct Unit {
    name: &'static str,
    factor: u128,
}

const SIZE_UNITS: &[Unit] = &[
    Unit {
        name: "B",
        factor: 1,
    },
    Unit {
        name: "kB",
        factor: 1_000,
    },
    Unit {
        name: "KB",
        factor: 1_000,
    },
    Unit {
        name: "MB",
        factor: 1_000_000,
    },
    Unit {
        name: "GB",
        factor: 1_000_000_000,
    },
    Unit {
        name: "TB",
        factor: 1_000_000_000_000,
    },
    Unit {
        name: "PB",
        factor: 1_000_000_000_000_000,
    },
    Unit {
        name: "KiB",
        factor: 1 << 10,
    },
    Unit {
        name: "MiB",
        factor: 1 << 20,
    },
    Unit {
        name: "GiB",
        factor: 1 << 30,
    },
    Unit {
        name: "TiB",
        factor: 1 << 40,
    },
    Unit {
        name: "PiB",
        factor: 1 << 50,
    },
];

/// IEC units used for canonical output, largest first.
const SIZE_CANONICAL: &[Unit] = &[
    Unit {
        name: "PiB",
        factor: 1 << 50,
    },
    Unit {
        name: "TiB",
        factor: 1 << 40,
    },
    Unit {
        name: "GiB",
        factor: 1 << 30,
    },
    Unit {
        name: "MiB",
        factor: 1 << 20,
    },
    Unit {
        name: "KiB",
        factor: 1 << 10,
    },
    Unit {
        name: "B",
        factor: 1,
    },
];

const NANOS: u128 = 1;
const DURATION_UNITS: &[Unit] = &[
    Unit {
        name: "ns",
        factor: NANOS,
    },
    Unit {
        name: "us",
        factor: 1_000,
    },
    Unit {
        name: "µs",
        factor: 1_000,
    },
    Unit {
        name: "ms",
        factor: 1_000_000,
    },
    Unit {
        name: "s",
        factor: 1_000_000_000,
    },
    Unit {
        name: "m",
        factor: 60_000_000_000,
    },
    Unit {
        name: "h",
        factor: 3_600_000_000_000,
    },
];

/// Units used for canonical output, largest first.
const DURATION_CANONICAL: &[Unit] = &[
    Unit {
        name: "h",
        factor: 3_600_000_000_000,
    },
    Unit {
        name: "m",
        factor: 60_000_000_000,
    },
    Unit {
        name: "s",
        factor: 1_000_000_000,
    },
    Unit {
        name: "ms",
        factor: 1_000_000,
    },
    Unit {
        name: "us",
        factor: 1_000,
    },
    Unit {
        name: "ns",
        factor: NANOS,
    },
];

/// Common misspellings of duration units and what they should be.
const DURATION_ALIASES: &[(&str, &str)] = &[
    ("sec", "s"),
    ("secs", "s"),
    ("second", "s"),
    ("seconds", "s"),
    ("S", "s"),
    ("min", "m"),
    ("mins", "m"),
    ("minute", "m"),
    ("minutes", "m"),
    ("M", "m"),
    ("hr", "h"),
    ("hrs", "h"),
    ("hour", "h"),
    ("hours", "h"),
    ("H", "h"),
    ("msec", "ms"),
    ("msecs", "ms"),
    ("millis", "ms"),
    ("MS", "ms"),
    ("usec", "us"),
    ("micros", "us"),
    ("nsec", "ns"),
    ("nanos", "ns"),
];

const SIZE_HELP: &str = "write an integer directly followed by a unit: B, kB, MB, GB, TB, PB \
                         (powers of 1000) or KiB, MiB, GiB, TiB, PiB (powers of 1024), e.g. \"64MiB\"";
const DURATION_HELP: &str = "write an integer directly followed by a unit: ns, us, ms, s, m (minutes) \
                             or h, e.g. \"30s\" or \"250ms\"";

/// Suggests a size unit for a misspelled one (`mib` → `MiB`, `Mb` → `MB`, `M` → `MiB`).
fn suggest_size_unit(unit: &str) -> Option<&'static str> {
    if let Some(u) = SIZE_UNITS
        .iter()
        .find(|u| u.name.eq_ignore_ascii_case(unit))
    {
        return Some(u.name);
    }
    let lower = unit.to_ascii_lowercase();
    let stem = lower.trim_end_matches("bytes").trim_end_matches("byte");
    let stem = stem.strip_suffix('i').unwrap_or(stem);
    match stem {
        "k" => Some("KiB"),
        "m" => Some("MiB"),
        "g" => Some("GiB"),
        "t" => Some("TiB"),
        "p" => Some("PiB"),
        "" if lower.starts_with("byte") => Some("B"),
        _ => None,
    }
}

/// Parses `<digits><unit>` against a unit table; shared by sizes and durations.
fn parse_with_units(
    input: &str,
    what: &str,
    units: &[Unit],
    general_help: &str,
    suggest: impl Fn(&str) -> Option<&'static str>,
) -> Result<u128, ParseUnitError> {
    let compact: String = input.chars().filter(|c| !c.is_whitespace()).collect();
    let (digits, unit) = split_number(&compact);
    if compact.is_empty() {
        return Err(ParseUnitError::new(
            format!("empty {what}"),
            general_help.to_string(),
        ));
    }
    if digits.is_empty() {
        return Err(ParseUnitError::new(
            format!("invalid {what} `{input}`: it must start with a whole number"),
            general_help.to_string(),
        ));
    }
    if unit.is_empty() {
        return Err(ParseUnitError::new(
            format!("{what} `{input}` has no unit"),
            format!("{general_help}; for example \"{digits}{}\"", units[0].name),
        ));
    }
    if let Some(rest) = unit.strip_prefix('.') {
        return Err(ParseUnitError::new(
            format!("invalid {what} `{input}`: fractions are not supported"),
            format!(
                "use a smaller unit to write a whole number ({})",
                rest.trim_start_matches(|c: char| c.is_ascii_digit())
            ),
        ));
    }
    let Some(found) = units.iter().find(|u| u.name == unit) else {
        let help = match suggest(unit) {
            Some(s) => format!("did you mean \"{digits}{s}\"? {general_help}"),
            None => general_help.to_string(),
        };
        return Err(ParseUnitError::new(
            format!("invalid {what} `{input}`: unknown unit `{unit}`"),
            help,
        ));
    };
    if compact.len() != input.len() {
        return Err(ParseUnitError::new(
            format!("invalid {what} `{input}`: no spaces are allowed"),
            format!("write \"{compact}\""),
        ));
    }
    let number: u128 = digits.parse().map_err(|_| {
        ParseUnitError::new(
            format!("{what} `{input}` is too large"),
            general_help.to_string(),
        )
    })?;
    number.checked_mul(found.factor).ok_or_else(|| {
        ParseUnitError::new(
            format!("{what} `{input}` is too large"),
            general_help.to_string(),
        )
    })
}

/// Prints `value` with the largest unit that divides it exactly.
/// Zero is printed as `0` followed by `zero_unit`.
fn canonical(
    value: u128,
    units: &[Unit],
    zero_unit: &str,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    if value == 0 {
        return write!(f, "0{zero_unit}");
    }
    for unit in units {
        if value.is_multiple_of(unit.factor) {
            return write!(f, "{}{}", value / unit.factor, unit.name);
        }
    }
    // Unreachable: the last unit of each table has factor 1.
    write!(f, "{value}")
}

/// Error for a bare number where a unit is required, e.g. `memory = 64`.
fn bare_number<E: de::Error>(
    what: &str,
    shown: impl fmt::Display,
    example_unit: &str,
    help: &str,
) -> E {
    error_with_help(
        format_args!("{what} must be a string with a unit, found the bare number `{shown}`"),
        format_args!("write \"{shown}{example_unit}\" (quoted, with a unit); {help}"),
    )
}

/// A number of bytes, written in the Aetherfile as an integer with a unit.
///
/// Parses `"100B"`, `"10kB"`, `"64MB"` (powers of 1000) and `"512KiB"`, `"64MiB"`, `"1GiB"`
/// (powers of 1024). Bare integers are rejected so that nobody has to guess the unit.
/// Prints (and serializes) with the largest IEC unit that divides the value exactly, else bytes:
/// `64MiB`, `10000B`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// `n` bytes.
    pub const fn b(n: u64) -> Self {
        Self(n)
    }

    /// `n` KiB (1024 bytes each).
    pub const fn kib(n: u64) -> Self {
        Self(n << 10)
    }

    /// `n` MiB.
    pub const fn mib(n: u64) -> Self {
        Self(n << 20)
    }

    /// `n` GiB.
    pub const fn gib(n: u64) -> Self {
        Self(n << 30)
    }

    /// The number of bytes.
    pub const fn as_u64(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ParseUnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = parse_with_units(s, "size", SIZE_UNITS, SIZE_HELP, suggest_size_unit)?;
        u64::try_from(value)
            .map(ByteSize)
            .map_err(|_| ParseUnitError::new(format!("size `{s}` is too large"), SIZE_HELP))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        canonical(u128::from(self.0), SIZE_CANONICAL, "B", f)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size string such as \"64MiB\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse()
                    .map_err(|e: ParseUnitError| error_with_help(e.message, e.help))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                Err(bare_number("a size", v, "MiB", SIZE_HELP))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Err(bare_number("a size", v, "MiB", SIZE_HELP))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ByteSize, E> {
                Err(error_with_help(
                    format_args!("a size must be a string with a unit, found the number `{v}`"),
                    SIZE_HELP,
                ))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl JsonSchema for ByteSize {
    fn schema_name() -> Cow<'static, str> {
        "ByteSize".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": SIZE_PATTERN,
            "description": "A size: an integer directly followed by a unit, B, kB, MB, GB, TB, PB (powers of 1000) or KiB, MiB, GiB, TiB, PiB (powers of 1024), e.g. \"64MiB\".",
            "examples": ["64MiB", "512KiB", "10MB"]
        })
    }
}

/// Regular expression that every valid size string matches (used in the JSON and CUE schemas).
pub(crate) const SIZE_PATTERN: &str = "^[0-9]+(B|kB|KB|MB|GB|TB|PB|KiB|MiB|GiB|TiB|PiB)$";
/// Regular expression that every valid duration string matches (used in the JSON and CUE schemas).
pub(crate) const DURATION_PATTERN: &str = "^[0-9]+(ns|us|µs|ms|s|m|h)$";

/// A span of time, written in the Aetherfile as an integer with a unit.
///
/// Parses `"250us"`, `"30ms"`, `"5s"`, `"2m"` (minutes), `"1h"`; also `ns` and `µs`.
/// Bare numbers are rejected (is `30` seconds or milliseconds?). Prints (and serializes) with the
/// largest unit that divides the value exactly: `90s` prints as `90s`, `120s` as `2m`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    /// `n` milliseconds.
    pub const fn from_millis(n: u64) -> Self {
        Self(std::time::Duration::from_millis(n))
    }

    /// `n` seconds.
    pub const fn from_secs(n: u64) -> Self {
        Self(std::time::Duration::from_secs(n))
    }

    /// The standard library duration.
    pub const fn get(self) -> std::time::Duration {
        self.0
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Self(d)
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        d.0
    }
}

impl FromStr for Duration {
    type Err = ParseUnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nanos = parse_with_units(s, "duration", DURATION_UNITS, DURATION_HELP, |unit| {
            DURATION_ALIASES
                .iter()
                .find(|(alias, _)| *alias == unit)
                .map(|(_, real)| *real)
        })?;
        let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| {
            ParseUnitError::new(format!("duration `{s}` is too large"), DURATION_HELP)
        })?;
        // The remainder is below 10^9, so it always fits.
        let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
        Ok(Duration(std::time::Duration::new(secs, sub)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        canonical(self.0.as_nanos(), DURATION_CANONICAL, "s", f)
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string such as \"30s\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                v.parse()
                    .map_err(|e: ParseUnitError| error_with_help(e.message, e.help))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(bare_number("a duration", v, "s", DURATION_HELP))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(bare_number("a duration", v, "s", DURATION_HELP))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(error_with_help(
                    format_args!("a duration must be a string with a unit, found the number `{v}`"),
                    DURATION_HELP,
                ))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: an integer directly followed by a unit, ns, us (or µs), ms, s, m (minutes) or h, e.g. \"30s\" or \"250ms\".",
            "examples": ["30s", "250ms", "5m"]
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        let cases = [
            ("64MiB", 64 << 20),
            ("64MB", 64_000_000),
            ("512KiB", 512 << 10),
            ("1GiB", 1 << 30),
            ("100B", 100),
            ("10kB", 10_000),
            ("0B", 0),
        ];
        for (text, bytes) in cases {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
    }

    #[test]
    fn sizes_print_canonically_and_round_trip() {
        for (bytes, text) in [
            (64 << 20, "64MiB"),
            (123, "123B"),
            (0, "0B"),
            (10_000, "10000B"),
            (1 << 30, "1GiB"),
            (1536 << 20, "1536MiB"),
        ] {
            assert_eq!(ByteSize(bytes).to_string(), text);
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)));
        }
        for n in [0, 1, 1023, 1024, 1025, u64::MAX, u64::MAX - 1, 1 << 63] {
            let s = ByteSize(n).to_string();
            assert_eq!(s.parse::<ByteSize>(), Ok(ByteSize(n)), "{s}");
        }
    }

    #[test]
    fn bad_sizes() {
        let e = "64 Mb".parse::<ByteSize>().unwrap_err();
        assert!(e.message().contains("unknown unit `Mb`"), "{e}");
        assert!(e.help().contains("\"64MB\""), "{}", e.help());
        let e = "64 MiB".parse::<ByteSize>().unwrap_err();
        assert!(e.message().contains("no spaces"), "{e}");
        assert!(
            "64".parse::<ByteSize>()
                .unwrap_err()
                .message()
                .contains("no unit")
        );
        assert!("MiB".parse::<ByteSize>().is_err());
        assert!("1.5GiB".parse::<ByteSize>().is_err());
        assert!("99999999999999PiB".parse::<ByteSize>().is_err());
        assert!("-1B".parse::<ByteSize>().is_err());
    }

    #[test]
    fn durations() {
        let d = |s: &str| s.parse::<Duration>().map(|d| d.0);
        use std::time::Duration as D;
        assert_eq!(d("250us"), Ok(D::from_micros(250)));
        assert_eq!(d("30ms"), Ok(D::from_millis(30)));
        assert_eq!(d("5s"), Ok(D::from_secs(5)));
        assert_eq!(d("2m"), Ok(D::from_secs(120)));
        assert_eq!(d("1h"), Ok(D::from_secs(3600)));
        assert_eq!(Duration(D::from_secs(120)).to_string(), "2m");
        assert_eq!(Duration(D::from_secs(90)).to_string(), "90s");
        assert_eq!(Duration(D::from_millis(1500)).to_string(), "1500ms");
        assert_eq!(Duration(D::ZERO).to_string(), "0s");
        for n in [D::ZERO, D::from_nanos(1), D::MAX, D::from_secs(86_400)] {
            let s = Duration(n).to_string();
            assert_eq!(d(&s), Ok(n), "{s}");
        }
        let e = "30 parsecs".parse::<Duration>().unwrap_err();
        assert!(e.message().contains("unknown unit `parsecs`"), "{e}");
        let e = "30sec".parse::<Duration>().unwrap_err();
        assert!(e.help().contains("\"30s\""), "{}", e.help());
    }
}
