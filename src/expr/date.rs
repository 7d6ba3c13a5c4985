//! `date(x)`, `date(x).field` and `date(x, format[, locale[, timezone]])`
//! (DSUL §5.4): JavaScript `new Date(x)` parsing, UTC fields, and day.js
//! formatting with the localized formats of the `en` and `fr` locales.
//!
//! Date-times written without an offset are read as UTC (the reference reads
//! them in the server's zone, which is UTC in its containers). Date text longer
//! than [`MAX_DATE_TEXT`] is an invalid date, and a formatted date stops at the
//! `max_string_bytes` budget.

use super::cx::Cx;
use super::jsfmt::{js_to_string, push_within, TooLong};
use super::ExprError;
use crate::value::Value;
use chrono::{DateTime, Datelike, NaiveDate, Offset, Timelike, Utc};
use chrono_tz::Tz;
use regex::Regex;
use std::sync::{LazyLock, OnceLock};

/// JavaScript's largest representable time, in ms either side of the epoch.
const MAX_TIME_MS: f64 = 8.64e15;

/// The longest text read as a date; every date form JavaScript parses is far shorter.
const MAX_DATE_TEXT: usize = 256;

pub(crate) fn date(cx: &Cx<'_>, args: &[Value], field: Option<&str>) -> Result<Value, ExprError> {
    let ms = args.first().and_then(to_epoch_ms);
    if let Some(Value::String(format)) = args.get(1) {
        let locale = match args.get(2) {
            Some(Value::String(l)) => l.to_string(),
            _ => default_locale().to_string(),
        };
        let tz_name = match args.get(3) {
            Some(Value::String(t)) => t.to_string(),
            _ => default_timezone().to_string(),
        };
        let tz: Tz = tz_name
            .parse()
            .map_err(|_| cx.fail(format!("Invalid time zone specified: {tz_name}")))?;
        return Ok(Value::str(match ms.and_then(utc) {
            Some(dt) => format_date(
                &dt.with_timezone(&tz),
                format,
                locale_of(&locale),
                cx.budgets.max_string_bytes,
            )
            .map_err(|e| cx.too_long(e))?,
            None => "Invalid Date".to_string(),
        }));
    }
    let dt = ms.and_then(utc);
    let num = |f: fn(&DateTime<Utc>) -> u32| {
        Value::Number(dt.as_ref().map_or(f64::NAN, |d| f64::from(f(d))))
    };
    Ok(match field {
        None | Some("ts") => Value::Number(ms.unwrap_or(f64::NAN)),
        Some("iso") => dt.map_or(Value::Undefined, |d| {
            Value::str(d.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        }),
        Some("year") => Value::Number(dt.map_or(f64::NAN, |d| f64::from(d.year()))),
        Some("month") => num(|d| d.month()),
        Some("date") => num(|d| d.day()),
        Some("day") => num(|d| d.weekday().num_days_from_sunday()),
        Some("hour") => num(|d| d.hour()),
        Some("minute") => num(|d| d.minute()),
        Some("second") => num(|d| d.second()),
        Some(_) => Value::Undefined,
    })
}

fn default_timezone() -> &'static str {
    static TZ: OnceLock<String> = OnceLock::new();
    TZ.get_or_init(|| std::env::var("DEFAULT_TIMEZONE").unwrap_or_else(|_| "Europe/Paris".into()))
}

fn default_locale() -> &'static str {
    static LOCALE: OnceLock<String> = OnceLock::new();
    LOCALE.get_or_init(|| std::env::var("DEFAULT_LOCALE").unwrap_or_else(|_| "en".into()))
}

fn utc(ms: f64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms as i64)
}

/// `new Date(x).getTime()`, or `None` for an invalid date.
fn to_epoch_ms(v: &Value) -> Option<f64> {
    let ms = match v {
        Value::Number(n) => *n,
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::String(s) => parse_date_string(s)?,
        Value::List(_) | Value::Object(_) => parse_date_string(&js_to_string(v))?,
        Value::Undefined => return None,
    };
    (ms.is_finite() && ms.abs() <= MAX_TIME_MS).then(|| ms.trunc() + 0.0)
}

static ISO: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"^([+-]\d{6}|\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?)?\s*(Z|z|[+-]\d{2}:?\d{2})?$",
    )
    .ok()
});

/// `Date.parse`: ISO 8601 forms, then RFC 2822.
fn parse_date_string(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.len() > MAX_DATE_TEXT {
        return None;
    }
    if let Some(caps) = ISO.as_ref().and_then(|re| re.captures(s)) {
        let num = |i: usize, default: u32| {
            caps.get(i)
                .map_or(Some(default), |m| m.as_str().parse().ok())
        };
        let year: i32 = caps.get(1)?.as_str().parse().ok()?;
        let date = NaiveDate::from_ymd_opt(year, num(2, 1)?, num(3, 1)?)?;
        let hour = num(4, 0)?;
        let (hour, extra_day) = if hour == 24 { (0, 1) } else { (hour, 0) };
        let frac = caps.get(7).map_or(0, |m| {
            let digits = format!("{:0<3}", m.as_str());
            digits[..3].parse().unwrap_or(0)
        });
        let time = date.and_hms_milli_opt(hour, num(5, 0)?, num(6, 0)?, frac)?;
        let mut ms = time.and_utc().timestamp_millis() as f64 + f64::from(extra_day) * 86_400_000.0;
        if let Some(off) = caps.get(8).map(|m| m.as_str()) {
            if off != "Z" && off != "z" {
                let sign = if off.starts_with('-') { -1.0 } else { 1.0 };
                let digits: String = off[1..].chars().filter(char::is_ascii_digit).collect();
                let h: f64 = digits.get(..2)?.parse().ok()?;
                let m: f64 = digits.get(2..4)?.parse().ok()?;
                ms -= sign * (h * 60.0 + m) * 60_000.0;
            }
        }
        return Some(ms);
    }
    DateTime::parse_from_rfc2822(s)
        .ok()
        .map(|d| d.timestamp_millis() as f64)
}

/// Names and localized formats of a day.js locale.
struct Locale {
    months: [&'static str; 12],
    months_short: [&'static str; 12],
    weekdays: [&'static str; 7],
    weekdays_short: [&'static str; 7],
    weekdays_min: [&'static str; 7],
    /// LT, LTS, L, LL, LLL, LLLL.
    formats: [&'static str; 6],
}

const EN: Locale = Locale {
    months: [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
    months_short: [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ],
    weekdays: [
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
    ],
    weekdays_short: ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"],
    weekdays_min: ["Su", "Mo", "Tu", "We", "Th", "Fr", "Sa"],
    formats: [
        "h:mm A",
        "h:mm:ss A",
        "MM/DD/YYYY",
        "MMMM D, YYYY",
        "MMMM D, YYYY h:mm A",
        "dddd, MMMM D, YYYY h:mm A",
    ],
};

const FR: Locale = Locale {
    months: [
        "janvier",
        "février",
        "mars",
        "avril",
        "mai",
        "juin",
        "juillet",
        "août",
        "septembre",
        "octobre",
        "novembre",
        "décembre",
    ],
    months_short: [
        "janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.", "nov.",
        "déc.",
    ],
    weekdays: [
        "dimanche", "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi",
    ],
    weekdays_short: ["dim.", "lun.", "mar.", "mer.", "jeu.", "ven.", "sam."],
    weekdays_min: ["di", "lu", "ma", "me", "je", "ve", "sa"],
    formats: [
        "HH:mm",
        "HH:mm:ss",
        "DD/MM/YYYY",
        "D MMMM YYYY",
        "D MMMM YYYY HH:mm",
        "dddd D MMMM YYYY HH:mm",
    ],
};

fn locale_of(name: &str) -> &'static Locale {
    let lower = name.to_ascii_lowercase();
    if lower == "fr" || lower.starts_with("fr-") || lower.starts_with("fr_") {
        &FR
    } else {
        &EN
    }
}

static LOCALIZED: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\[[^\]]+\]|LTS?|l{1,4}|L{1,4}").ok());
static TOKENS: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"\[([^\]]+)\]|Y{1,4}|M{1,4}|D{1,2}|d{1,4}|H{1,2}|h{1,2}|a|A|m{1,2}|s{1,2}|Z{1,2}|SSS",
    )
    .ok()
});

/// Replaces every match of `re` in `text` by `with(match)`, stopping once past `max` bytes.
fn replace_within(
    re: &Regex,
    text: &str,
    max: usize,
    mut with: impl FnMut(&regex::Captures<'_>, &mut String) -> Result<(), TooLong>,
) -> Result<String, TooLong> {
    let mut out = String::with_capacity(text.len().min(max));
    let mut last = 0;
    for caps in re.captures_iter(text) {
        let Some(m) = caps.get(0) else { continue };
        push_within(&mut out, &text[last..m.start()], max)?;
        with(&caps, &mut out)?;
        last = m.end();
    }
    push_within(&mut out, &text[last..], max)?;
    Ok(out)
}

/// day.js `localizedFormat`: `L`-style tokens expand; lowercase ones use short names.
fn expand_localized(format: &str, locale: &Locale, max: usize) -> Result<String, TooLong> {
    let Some(re) = LOCALIZED.as_ref() else {
        return Ok(format.to_string());
    };
    replace_within(re, format, max, |c, out| {
        let m = &c[0];
        if m.starts_with('[') {
            return push_within(out, m, max);
        }
        let upper = m.to_ascii_uppercase();
        let f = match upper.as_str() {
            "LT" => locale.formats[0],
            "LTS" => locale.formats[1],
            "L" => locale.formats[2],
            "LL" => locale.formats[3],
            "LLL" => locale.formats[4],
            _ => locale.formats[5],
        };
        if m.starts_with('l') {
            push_within(out, &shorten(f), max)
        } else {
            push_within(out, f, max)
        }
    })
}

/// day.js derives `l` formats by dropping one letter of MMMM, MM, DD and dddd.
fn shorten(format: &str) -> String {
    let mut out = String::new();
    let mut rest = format;
    'outer: while !rest.is_empty() {
        for long in ["MMMM", "dddd", "MM", "DD"] {
            if let Some(r) = rest.strip_prefix(long) {
                out.push_str(&long[1..]);
                rest = r;
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// day.js `format`, in at most `max` bytes.
fn format_date(
    dt: &DateTime<Tz>,
    format: &str,
    locale: &Locale,
    max: usize,
) -> Result<String, TooLong> {
    let format = expand_localized(format, locale, max)?;
    let Some(re) = TOKENS.as_ref() else {
        return Ok(format);
    };
    let offset = dt.offset().fix().local_minus_utc();
    let zone = |sep: &str| {
        let sign = if offset < 0 { '-' } else { '+' };
        let abs = offset.abs() / 60;
        format!("{sign}{:02}{sep}{:02}", abs / 60, abs % 60)
    };
    let hour12 = match dt.hour() % 12 {
        0 => 12,
        h => h,
    };
    let month = dt.month0() as usize;
    let weekday = dt.weekday().num_days_from_sunday() as usize;
    replace_within(re, &format, max, |c, out| {
        if let Some(escaped) = c.get(1) {
            return push_within(out, escaped.as_str(), max);
        }
        let piece = match &c[0] {
            "YY" => format!("{:02}", dt.year().rem_euclid(100)),
            "YYYY" => format!("{:04}", dt.year()),
            "M" => (month + 1).to_string(),
            "MM" => format!("{:02}", month + 1),
            "MMM" => locale.months_short[month].to_string(),
            "MMMM" => locale.months[month].to_string(),
            "D" => dt.day().to_string(),
            "DD" => format!("{:02}", dt.day()),
            "d" => weekday.to_string(),
            "dd" => locale.weekdays_min[weekday].to_string(),
            "ddd" => locale.weekdays_short[weekday].to_string(),
            "dddd" => locale.weekdays[weekday].to_string(),
            "H" => dt.hour().to_string(),
            "HH" => format!("{:02}", dt.hour()),
            "h" => hour12.to_string(),
            "hh" => format!("{hour12:02}"),
            "a" => (if dt.hour() < 12 { "am" } else { "pm" }).to_string(),
            "A" => (if dt.hour() < 12 { "AM" } else { "PM" }).to_string(),
            "m" => dt.minute().to_string(),
            "mm" => format!("{:02}", dt.minute()),
            "s" => dt.second().to_string(),
            "ss" => format!("{:02}", dt.second()),
            "SSS" => format!("{:03}", dt.timestamp_subsec_millis()),
            "Z" => zone(":"),
            "ZZ" => zone(""),
            other => other.to_string(),
        };
        push_within(out, &piece, max)
    })
}

/// Used by tests to check a zone conversion without the environment.
#[cfg(test)]
fn format_at(ms: f64, format: &str, locale: &str, tz: &str) -> String {
    use chrono::TimeZone;
    let tz: Tz = tz.parse().unwrap();
    format_date(
        &tz.timestamp_millis_opt(ms as i64).unwrap(),
        format,
        locale_of(locale),
        usize::MAX,
    )
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Expr;
    use serde_json::json;

    fn ev(text: &str) -> Value {
        let scope = Value::from(json!({
            "d": "2022-04-13T08:36:05.493Z", "t": "2023-03-31T17:07:23.975Z", "ms": 1649838965493.0_f64,
        }));
        Expr::parse(text).unwrap().eval(&scope).unwrap()
    }

    #[test]
    fn fields_are_utc() {
        assert_eq!(ev("date({{d}}).day"), Value::Number(3.0));
        assert_eq!(ev("date({{d}}).date"), Value::Number(13.0));
        assert_eq!(ev("date({{d}}).month"), Value::Number(4.0));
        assert_eq!(ev("date({{d}}).year"), Value::Number(2022.0));
        assert_eq!(ev("date({{d}}).hour"), Value::Number(8.0));
        assert_eq!(ev("date({{d}}).minute"), Value::Number(36.0));
        assert_eq!(ev("date({{d}}).second"), Value::Number(5.0));
        assert_eq!(
            ev("date({{d}}).iso"),
            Value::str("2022-04-13T08:36:05.493Z")
        );
        assert_eq!(ev("date({{d}}).ts"), Value::Number(1649838965493.0));
        assert_eq!(ev("date({{d}})"), Value::Number(1649838965493.0));
        assert_eq!(
            ev("date({{ms}}).iso"),
            Value::str("2022-04-13T08:36:05.493Z")
        );
        assert_eq!(ev("date({{d}}).nope"), Value::Undefined);
        assert_eq!(ev("date(\"nope\").iso"), Value::Undefined);
        assert!(matches!(ev("date(\"nope\").year"), Value::Number(n) if n.is_nan()));
        assert!(matches!(ev("date({{missing}})"), Value::Number(n) if n.is_nan()));
    }

    #[test]
    fn parses_javascript_date_strings() {
        assert_eq!(parse_date_string("2022-04-13"), Some(1649808000000.0));
        assert_eq!(
            parse_date_string("2022-04-13T10:36:05+02:00"),
            Some(1649838965000.0)
        );
        assert_eq!(
            parse_date_string("2022-04-13 08:36:05.493Z"),
            Some(1649838965493.0)
        );
        assert_eq!(
            parse_date_string("Wed, 13 Apr 2022 08:36:05 GMT"),
            Some(1649838965000.0)
        );
        assert_eq!(parse_date_string("2022-13-01"), None);
    }

    #[test]
    fn out_of_range_and_oversized_dates_are_invalid_not_panics() {
        let long = format!("2022-04-13T08:36:05.{}Z", "4".repeat(300));
        assert_eq!(parse_date_string(&long), None);
        assert_eq!(parse_date_string(&"9".repeat(10_000)), None);
        assert_eq!(parse_date_string("+275760-09-13T00:00:00.001Z"), None);
        assert_eq!(
            parse_date_string("2022-04-13T24:00:00Z"),
            Some(1649894400000.0)
        );
        for text in [
            "date(1e400).iso",
            "date(-1e400).year",
            "date(8640000000000001).iso",
            "date(0/0).ts",
        ] {
            let v = ev(text);
            assert!(
                matches!(&v, Value::Number(n) if n.is_nan())
                    || v.is_undefined()
                    || v == Value::str("Invalid Date"),
                "{text}: {v:?}"
            );
        }
        // Near both ends of chrono's range, shifted by a zone's offset past them.
        for text in [
            "date(8200000000000000, \"YYYY-MM-DD\", \"en\", \"Pacific/Kiritimati\")",
            "date(\"-262143-01-01\", \"YYYY\", \"en\", \"Pacific/Kiritimati\")",
        ] {
            assert!(matches!(ev(text), Value::String(_)), "{text}");
        }
    }

    #[test]
    fn formats_like_dayjs() {
        assert_eq!(ev("date({{t}}, \"LT\")"), Value::str("7:07 PM"));
        assert_eq!(ev("date({{t}}, \"LT\", \"fr\")"), Value::str("19:07"));
        assert_eq!(
            ev("date({{t}}, \"LT\", \"fr\", \"America/New_York\")"),
            Value::str("13:07")
        );
        assert_eq!(ev("date({{t}}, \"DD/MM/YYYY\")"), Value::str("31/03/2023"));
        assert_eq!(ev("date(\"nope\", \"LT\")"), Value::str("Invalid Date"));
        let ms = 1680282443975.0; // 2023-03-31T17:07:23.975Z
        let utc = |f: &str, l: &str| format_at(ms, f, l, "UTC");
        assert_eq!(
            utc("YYYY-MM-DD HH:mm:ss.SSS Z ZZ", "en"),
            "2023-03-31 17:07:23.975 +00:00 +0000"
        );
        assert_eq!(
            utc("YY M D H h hh m s a A", "en"),
            "23 3 31 17 5 05 7 23 pm PM"
        );
        assert_eq!(
            utc("d dd ddd dddd MMM MMMM [at] HH", "en"),
            "5 Fr Fri Friday Mar March at 17"
        );
        assert_eq!(utc("ddd dddd MMM MMMM", "fr"), "ven. vendredi mars mars");
        assert_eq!(utc("LTS", "en"), "5:07:23 PM");
        assert_eq!(utc("L", "en"), "03/31/2023");
        assert_eq!(utc("l", "en"), "3/31/2023");
        assert_eq!(utc("LL", "en"), "March 31, 2023");
        assert_eq!(utc("ll", "en"), "Mar 31, 2023");
        assert_eq!(utc("LLL", "en"), "March 31, 2023 5:07 PM");
        assert_eq!(utc("lll", "en"), "Mar 31, 2023 5:07 PM");
        assert_eq!(utc("LLLL", "en"), "Friday, March 31, 2023 5:07 PM");
        assert_eq!(utc("llll", "en"), "Fri, Mar 31, 2023 5:07 PM");
        assert_eq!(utc("L", "fr"), "31/03/2023");
        assert_eq!(utc("l", "fr"), "31/3/2023");
        assert_eq!(utc("LL", "fr"), "31 mars 2023");
        assert_eq!(utc("LLLL", "fr"), "vendredi 31 mars 2023 17:07");
        assert_eq!(utc("llll", "fr"), "ven. 31 mars 2023 17:07");
        assert_eq!(format_at(ms, "Z", "en", "Europe/Paris"), "+02:00");
        assert_eq!(format_at(ms, "ZZ", "en", "America/New_York"), "-0400");
    }
}
