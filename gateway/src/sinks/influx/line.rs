//! InfluxDB line protocol, written by hand (as Telegraf and Vector do):
//! `measurement,tag=v,tag=v field=v,field=v timestamp_ns\n`.
//!
//! Escaping follows the line protocol reference (identical in 1.x, 2.x and
//! 3.x):
//! - measurement: `,` and space are backslash-escaped;
//! - tag keys, tag values, field keys: `,`, `=` and space are escaped;
//! - string field values are double-quoted with `"` and `\` escaped.
//!
//! What the protocol cannot carry is made safe rather than rejected:
//! line breaks in names become spaces (a newline ends a line), and
//! trailing backslashes of names are dropped (they would escape the
//! separator after them). Empty tag keys or values are left out (InfluxDB
//! refuses them). NaN and ±Inf are not representable: such a field is left
//! out and counted; a point left with no field is skipped and counted.

use std::fmt::Write as _;

/// One field value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(&'a str),
}

/// How unsigned integers are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unsigned {
    /// `123u` (InfluxDB 2.x, 3.x, and 1.x ≥ 1.8 with unsigned support).
    #[default]
    Native,
    /// `123i`, saturating at `i64::MAX` (InfluxDB 1.x before 1.8).
    AsInteger,
}

/// What was left out of a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Skipped {
    /// Fields dropped because their value was NaN or ±Inf.
    pub non_finite_fields: u32,
    /// Whether the whole point was dropped (no field left).
    pub point: bool,
}

fn clean(s: &str) -> impl Iterator<Item = char> + '_ {
    let trimmed = s.trim_end_matches('\\');
    trimmed
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
}

fn measurement(out: &mut String, s: &str) {
    for c in clean(s) {
        if c == ',' || c == ' ' {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Tag keys, tag values and field keys.
fn key(out: &mut String, s: &str) {
    for c in clean(s) {
        if c == ',' || c == '=' || c == ' ' {
            out.push('\\');
        }
        out.push(c);
    }
}

fn string_field(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

fn blank(s: &str) -> bool {
    clean(s).all(char::is_whitespace)
}

/// Appends one point (and its newline) to `out`; on `Skipped::point`
/// nothing is appended.
pub fn point(
    out: &mut String,
    name: &str,
    tags: &[(&str, &str)],
    fields: &[(&str, FieldValue<'_>)],
    ts_ns: u64,
    unsigned: Unsigned,
) -> Skipped {
    let mut skipped = Skipped::default();
    let start = out.len();
    measurement(out, name);
    for (k, v) in tags {
        if blank(k) || blank(v) {
            continue;
        }
        out.push(',');
        key(out, k);
        out.push('=');
        key(out, v);
    }
    let mut first = true;
    for (k, v) in fields {
        if let FieldValue::Float(f) = v {
            if !f.is_finite() {
                skipped.non_finite_fields += 1;
                continue;
            }
        }
        if blank(k) {
            continue;
        }
        out.push(if first { ' ' } else { ',' });
        first = false;
        key(out, k);
        out.push('=');
        // Writing into a String cannot fail.
        let _ = match *v {
            FieldValue::Float(f) => write!(out, "{f}"),
            FieldValue::Int(i) => write!(out, "{i}i"),
            FieldValue::UInt(u) => match unsigned {
                Unsigned::Native => write!(out, "{u}u"),
                Unsigned::AsInteger => write!(out, "{}i", i64::try_from(u).unwrap_or(i64::MAX)),
            },
            FieldValue::Bool(b) => write!(out, "{b}"),
            FieldValue::Str(s) => {
                string_field(out, s);
                Ok(())
            }
        };
    }
    if first {
        out.truncate(start);
        skipped.point = true;
        return skipped;
    }
    let _ = writeln!(out, " {ts_ns}");
    skipped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(name: &str, tags: &[(&str, &str)], fields: &[(&str, FieldValue<'_>)]) -> String {
        let mut s = String::new();
        point(
            &mut s,
            name,
            tags,
            fields,
            1_700_000_000_000_000_000,
            Unsigned::Native,
        );
        s
    }

    #[test]
    fn plain_point() {
        assert_eq!(
            one(
                "device_data",
                &[("device_id", "boiler-1"), ("tag_name", "water_temp")],
                &[
                    ("value", FieldValue::Float(71.5)),
                    ("quality", FieldValue::Int(0)),
                    ("count", FieldValue::UInt(7)),
                    ("on", FieldValue::Bool(true)),
                    ("mode", FieldValue::Str("AUTO")),
                ]
            ),
            "device_data,device_id=boiler-1,tag_name=water_temp value=71.5,quality=0i,count=7u,on=true,mode=\"AUTO\" 1700000000000000000\n"
        );
    }

    #[test]
    fn names_from_real_plants_are_escaped() {
        let line = one(
            "device data",
            &[
                ("device_name", "Boiler 1, Hall=A"),
                ("unit", "°C"),
                ("location", "Halle 3 — Öfen"),
                ("quote", "say \"hi\""),
            ],
            &[(
                "water temp,=x",
                FieldValue::Str("He said \"hot\" \\ C:\\path\nnext"),
            )],
        );
        assert_eq!(
            line,
            "device\\ data,device_name=Boiler\\ 1\\,\\ Hall\\=A,unit=°C,location=Halle\\ 3\\ —\\ Öfen,quote=say\\ \"hi\" \
             water\\ temp\\,\\=x=\"He said \\\"hot\\\" \\\\ C:\\\\path\nnext\" 1700000000000000000\n"
        );
    }

    #[test]
    fn unsafe_characters_and_empty_tags() {
        // Newlines in names become spaces, trailing backslashes go, empty tags are left out.
        assert_eq!(
            one(
                "m\n1\\",
                &[("a", ""), ("", "x"), ("b", "v\\"), ("c", "  ")],
                &[("v", FieldValue::Int(-3))]
            ),
            "m\\ 1,b=v v=-3i 1700000000000000000\n"
        );
    }

    #[test]
    fn non_finite_fields_are_skipped_and_counted() {
        let mut s = String::new();
        let k = point(
            &mut s,
            "m",
            &[],
            &[("a", FieldValue::Float(f64::NAN)), ("b", FieldValue::Float(2.0))],
            5,
            Unsigned::Native,
        );
        assert_eq!(s, "m b=2 5\n");
        assert_eq!(
            k,
            Skipped {
                non_finite_fields: 1,
                point: false
            }
        );
        let mut s = String::from("keep\n");
        let k = point(
            &mut s,
            "m",
            &[("t", "x")],
            &[("a", FieldValue::Float(f64::INFINITY))],
            5,
            Unsigned::Native,
        );
        assert_eq!(s, "keep\n", "nothing appended for a point with no field");
        assert_eq!(
            k,
            Skipped {
                non_finite_fields: 1,
                point: true
            }
        );
    }

    #[test]
    fn unsigned_as_integer_saturates() {
        let mut s = String::new();
        point(
            &mut s,
            "m",
            &[],
            &[("u", FieldValue::UInt(u64::MAX)), ("v", FieldValue::UInt(9))],
            1,
            Unsigned::AsInteger,
        );
        assert_eq!(s, "m u=9223372036854775807i,v=9i 1\n");
    }

    #[test]
    fn floats_round_trip() {
        for f in [0.1, -0.0, 1e-300, 1.7976931348623157e308, 123456789.125] {
            let line = one("m", &[], &[("v", FieldValue::Float(f))]);
            let text = line.split(' ').nth(1).unwrap().strip_prefix("v=").unwrap();
            assert_eq!(text.parse::<f64>().unwrap(), f, "{line}");
        }
    }
}
