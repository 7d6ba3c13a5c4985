//! A workspace's secret values and the [`Redactor`] that hides them (SPEC §6, DSUL §8).
//!
//! Built once per workspace load: one Aho-Corasick automaton over the workspace's secret
//! texts and their JSON-escaped forms, so hiding them costs one pass over a text whatever the
//! number of secrets. Limit and budget settings among the secrets are not secret texts.
//! Where views are redacted (events, logs, error bodies) is the runtime's and the server's.

use crate::value::{Map, Value};
use aho_corasick::{AhoCorasick, MatchKind};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// What replaces a secret.
pub(crate) const REDACTED: &str = "REDACTED";

/// Secret values shorter than this are not searched for inside text: a
/// one- or two-character secret would redact half of every payload.
const MIN_SECRET_LEN: usize = 3;

/// Secrets keys that configure the workspace's limits and budgets: their
/// values are settings, and hiding every `100` would garble every payload.
const SETTING_PREFIXES: [&str; 2] = [
    crate::limits::RATE_LIMIT_SECRET_PREFIX,
    crate::budgets::PREFIX,
];

/// Hides one workspace's secret values (strings and numbers of at least
/// `MIN_SECRET_LEN` (3) characters) in texts and values. Cheap to clone.
#[derive(Clone, Default)]
pub struct Redactor {
    /// The secret texts, for the logs' union of every workspace.
    pub(crate) texts: Arc<[String]>,
    finder: Finder,
    /// Whether some pattern could occur in a number's text: otherwise numbers
    /// are not formatted to be searched.
    numeric: bool,
}

#[derive(Clone, Default)]
enum Finder {
    /// No secret to hide.
    #[default]
    Nothing,
    /// Finds every secret in one pass.
    Automaton(Arc<AhoCorasick>),
    /// The automaton could not be built (gigabytes of secrets): hiding every
    /// text whole is the only way not to leak.
    Everything,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the texts themselves: a Debug print must not leak them.
        write!(f, "Redactor({} secrets)", self.texts.len())
    }
}

impl Redactor {
    /// The redactor of a workspace's secrets.
    pub fn new(secrets: &Map) -> Redactor {
        let r = Redactor::of(secret_texts(secrets));
        if matches!(r.finder, Finder::Everything) {
            tracing::error!(
                "too many secrets to search for: every text of the workspace is hidden"
            );
        }
        r
    }

    /// The redactor of these texts (and their JSON-escaped forms).
    pub(crate) fn of(texts: Vec<String>) -> Redactor {
        let mut patterns: Vec<String> = Vec::with_capacity(texts.len() * 2);
        for t in &texts {
            patterns.push(t.clone());
            // Inside JSON text (a stringified body, a log line in JSON) a
            // secret holding `"`, `\` or a control character appears escaped.
            let escaped = serde_json::to_string(t).unwrap_or_default();
            let escaped = escaped
                .strip_prefix('"')
                .and_then(|e| e.strip_suffix('"'))
                .unwrap_or_default();
            if escaped != t {
                patterns.push(escaped.to_string());
            }
        }
        patterns.sort();
        patterns.dedup();
        let numeric = patterns.iter().any(|p| {
            p.bytes()
                .all(|b| b.is_ascii_digit() || b"+-.e".contains(&b))
        });
        let finder = if patterns.is_empty() {
            Finder::Nothing
        } else {
            // Leftmost-longest: a secret that contains another is hidden whole.
            // No logging here: the log writer's own redactor is built under its lock.
            match AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
            {
                Ok(ac) => Finder::Automaton(Arc::new(ac)),
                Err(_) => Finder::Everything,
            }
        };
        Redactor {
            texts: texts.into(),
            finder,
            numeric,
        }
    }

    /// `hay` with every secret replaced, or `None` when it holds none.
    pub(crate) fn replace(&self, hay: &[u8]) -> Option<Vec<u8>> {
        let ac = match &self.finder {
            Finder::Nothing => return None,
            Finder::Everything => return Some(REDACTED.as_bytes().to_vec()),
            Finder::Automaton(ac) => ac,
        };
        let mut out: Option<Vec<u8>> = None;
        let mut last = 0;
        for m in ac.find_iter(hay) {
            let out = out.get_or_insert_with(|| Vec::with_capacity(hay.len()));
            out.extend_from_slice(&hay[last..m.start()]);
            out.extend_from_slice(REDACTED.as_bytes());
            last = m.end();
        }
        let mut out = out?;
        out.extend_from_slice(&hay[last..]);
        Some(out)
    }

    /// `text` with every secret replaced.
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.replace(text.as_bytes()) {
            // Patterns are whole UTF-8 strings, so cutting them out keeps the
            // text valid; the lossy fallback never runs.
            Some(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
            None => Cow::Borrowed(text),
        }
    }

    /// `v` with every secret hidden in its strings, numbers and keys; a number
    /// holding a secret becomes text.
    pub fn value(&self, v: &Value) -> Value {
        self.changed(v).unwrap_or_else(|| v.clone())
    }

    /// `v` redacted, or `None` when it holds no secret (then nothing is copied).
    fn changed(&self, v: &Value) -> Option<Value> {
        match v {
            Value::String(s) => self.changed_text(s),
            Value::Number(_) if self.numeric => {
                self.changed_text(&crate::expr::to_template_string(v))
            }
            Value::List(items) => {
                let mut out: Option<Vec<Value>> = None;
                for (i, item) in items.iter().enumerate() {
                    match (self.changed(item), &mut out) {
                        (Some(new), out) => {
                            out.get_or_insert_with(|| items[..i].to_vec()).push(new)
                        }
                        (None, Some(out)) => out.push(item.clone()),
                        (None, None) => {}
                    }
                }
                out.map(Value::list)
            }
            Value::Object(m) => {
                let mut out: Option<Map> = None;
                for (i, (k, item)) in m.iter().enumerate() {
                    let key = self.replace(k.as_bytes());
                    let new = self.changed(item);
                    if key.is_none() && new.is_none() {
                        if let Some(out) = &mut out {
                            out.insert(k.clone(), item.clone());
                        }
                        continue;
                    }
                    let out = out.get_or_insert_with(|| {
                        m.iter()
                            .take(i)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    });
                    let key = match key {
                        Some(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        None => k.clone(),
                    };
                    out.insert(key, new.unwrap_or_else(|| item.clone()));
                }
                out.map(Value::object)
            }
            _ => None,
        }
    }

    fn changed_text(&self, s: &str) -> Option<Value> {
        match self.text(s) {
            Cow::Owned(s) => Some(Value::str(s)),
            Cow::Borrowed(_) => None,
        }
    }
}

/// The texts to hide: every string or number secret of the workspace, except
/// limit and budget settings.
pub fn secret_texts(secrets: &Map) -> Vec<String> {
    secrets
        .iter()
        .filter(|(k, _)| !SETTING_PREFIXES.iter().any(|p| k.starts_with(p)))
        .filter_map(|(_, v)| match v {
            Value::String(s) => Some(s.to_string()),
            Value::Number(_) => Some(crate::expr::to_template_string(v)),
            _ => None,
        })
        .filter(|s| s.len() >= MIN_SECRET_LEN)
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A JSON object as a [`Map`] (empty for anything else).
    pub(crate) fn map(j: serde_json::Value) -> Map {
        match Value::from(j) {
            Value::Object(m) => (*m).clone(),
            _ => Map::new(),
        }
    }

    fn redactor() -> Redactor {
        Redactor::new(&map(json!({
            "apiKey": "s3cr3t-value",
            "short": "abc",
            "pin": 987654321,
            "quoted": "a\"b\\c",
            "tiny": "ab",
            "list": ["not", "searched"],
            "sluice_max_instructions": 100,
            "prismeai_ratelimit_automations": 250,
        })))
    }

    #[test]
    fn hides_long_short_numeric_and_json_escaped_secrets_in_text() {
        let r = redactor();
        assert_eq!(
            r.text("key=s3cr3t-value&x=abc pin 987654321!"),
            "key=REDACTED&x=REDACTED pin REDACTED!"
        );
        // As JSON text shows it, and raw.
        assert_eq!(r.text(r#"{"q":"a\"b\\c"}"#), r#"{"q":"REDACTED"}"#);
        assert_eq!(r.text("a\"b\\c"), "REDACTED");
        // Shorter than 3 characters, limit settings and non-scalars are not secrets to hide.
        let clean = "ab 100 250 not searched";
        assert!(matches!(r.text(clean), Cow::Borrowed(_)));
    }

    #[test]
    fn a_secret_that_contains_another_is_hidden_whole() {
        let r = Redactor::new(&map(json!({"a": "abc", "b": "xabcx"})));
        assert_eq!(r.text("xabcx abc"), "REDACTED REDACTED");
    }

    #[test]
    fn hides_secrets_in_strings_numbers_and_keys_of_a_value() {
        let r = redactor();
        let v = Value::from(json!({
            "n": 987654321,
            "bigger": 19876543210u64,
            "other": 12,
            "nested": [1, {"s3cr3t-value": "x abc"}, "plain"],
            "json": "{\"k\":\"a\\\"b\\\\c\"}",
        }));
        assert_eq!(
            r.value(&v).to_json(),
            json!({
                "n": "REDACTED",
                "bigger": "1REDACTED0",
                "other": 12,
                "nested": [1, {"REDACTED": "x REDACTED"}, "plain"],
                "json": "{\"k\":\"REDACTED\"}",
            })
        );
        let clean = Value::from(json!({"a": [1, "two", {"b": 3.5}]}));
        assert!(r.changed(&clean).is_none());
        assert!(Redactor::default().changed(&v).is_none());
    }
}
