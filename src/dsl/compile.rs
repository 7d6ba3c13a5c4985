//! Turns one automation file's YAML into an [`Automation`].

mod limits;
mod quota;

use super::{Automation, Compile, Diagnostic, Locator, Node, Span, When};
use crate::expr::Template;
use crate::value::{Map, Value};
use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

/// An automation and the problems found while compiling it.
pub struct Compiled<I> {
    /// The automation, runnable even when `diagnostics` is not empty.
    pub automation: Automation<I>,
    /// Problems `validate` reports (the automation fails when it reaches them).
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses and compiles one automation file. A YAML syntax error or a file that is
/// not an automation mapping is an error; other mistakes become diagnostics.
pub fn parse_automation<I: Compile>(file: &Path, text: &str) -> Result<Compiled<I>, Diagnostic> {
    let root = parse_yaml(file, text, true)?;
    let at_top = |message: String| Diagnostic {
        file: file.to_path_buf(),
        line: 1,
        column: 1,
        message,
    };
    let map = match &root {
        Value::Object(m) => m.clone(),
        other => {
            return Err(at_top(format!(
                "an automation file must be a mapping with `do:`, found {}",
                describe(other)
            )))
        }
    };
    let mut c = Compiler {
        file: Arc::from(file),
        locator: Locator::new(text),
        diagnostics: Vec::new(),
        instructions: PhantomData,
    };
    let slug = match map.get("slug") {
        Some(Value::String(s)) => s.to_string(),
        Some(other) => {
            return Err(at_top(format!(
                "`slug` must be a string, found {}",
                describe(other)
            )))
        }
        None => file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if slug.is_empty() || slug.contains('.') {
        return Err(at_top(format!(
            "invalid slug `{slug}`: it must be non-empty and contain no `.`"
        )));
    }
    let when = c.when(map.get("when"));
    // Before `do`, where it is usually written: the locator searches forward.
    let quota = match map.get("quota") {
        None | Some(Value::Null) => None,
        Some(v) => Some(c.quota(v)?),
    };
    let body = match map.get("do") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => c.block(v, "do"),
    };
    let output = map.get("output").map(|v| c.node(v));
    let (limits, limits_invalid) = c.limits(map.get("limits"), text);
    let automation = Automation {
        slug,
        file: file.to_path_buf(),
        when,
        arguments: map.get("arguments").cloned(),
        validate_arguments: map
            .get("validateArguments")
            .is_some_and(|v| matches!(v, Value::Bool(true))),
        disabled: map
            .get("disabled")
            .is_some_and(|v| matches!(v, Value::Bool(true))),
        body,
        output,
        quota,
        limits,
        limits_invalid,
        constant_limits: std::sync::OnceLock::new(),
    };
    Ok(Compiled {
        automation,
        diagnostics: c.diagnostics,
    })
}

/// Values a file may expand to beyond one per byte of its text: room for
/// anchors reused in a small file, while an alias bomb is refused long before
/// it costs memory.
const SPARE_VALUES: usize = 100_000;

/// The parser's own nesting limit; deeper flow collections are refused before
/// parsing, because its scanner's work grows with the square of their depth.
const MAX_FLOW_DEPTH: usize = 128;

/// The byte where `[`/`{` nesting first goes over [`MAX_FLOW_DEPTH`], if it does.
///
/// A one-pass over-estimate of the scanner's flow depth: quoted scalars and
/// comments are skipped (a quote only opens at the start of a token and closes
/// at the end of its line at the latest), and outside brackets only a `[`/`{`
/// that starts a token opens a collection, as in YAML; anything the scanner
/// would not read as a bracket can only make the estimate larger, never smaller.
fn too_deep_flow(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    // The last byte that was not a space or tab, on this line (None at its start).
    let mut previous: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let token_start = matches!(
            previous,
            None | Some(b'[' | b'{' | b',' | b':' | b'-' | b'?')
        );
        match b {
            b'\n' => previous = None,
            b' ' | b'\t' | b'\r' => {}
            b'#' if i == 0 || matches!(bytes[i - 1], b' ' | b'\t' | b'\n') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'\'' | b'"' if token_start => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'\n' {
                    match bytes[i] {
                        b'\\' if b == b'"' => i += 1,
                        b'\'' if b == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 1,
                        c if c == b => break,
                        _ => {}
                    }
                    i += 1;
                }
                previous = Some(b);
                if i < bytes.len() && bytes[i] == b {
                    i += 1;
                }
                continue;
            }
            b'[' | b'{' if depth > 0 || token_start => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some(i);
                }
                previous = Some(b);
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                previous = Some(b);
            }
            _ => previous = Some(b),
        }
        i += 1;
    }
    None
}

/// Parses a YAML file into a value; a syntax error is a diagnostic at its
/// place, with the parser's message only when `quote` allows it (the message
/// can quote the file, which must not happen for secrets).
pub fn parse_yaml(file: &Path, text: &str, quote: bool) -> Result<Value, Diagnostic> {
    if let Some(at) = too_deep_flow(text) {
        let (line, column) = Locator::new(text).position_of(at);
        return Err(Diagnostic {
            file: file.to_path_buf(),
            line,
            column,
            message: format!(
                "invalid YAML: `[` and `{{` nested deeper than {MAX_FLOW_DEPTH} levels"
            ),
        });
    }
    let left = Cell::new(text.len().saturating_add(SPARE_VALUES));
    Builder { left: &left }
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| {
            // Some errors carry no position (a second document, a value the builder
            // refused): point at the second document's marker when there is one, else
            // at the file's start, so that every diagnostic stays file:line:column.
            let (line, column) = match e.location() {
                Some(l) => within_text(text, l.line(), l.column()),
                None => match text.find("\n---") {
                    Some(at) => Locator::new(text).position_of(at + 1),
                    None => (1, 1),
                },
            };
            let message = if quote {
                format!("invalid YAML: {}", strip_location(&e.to_string()))
            } else {
                "invalid YAML".to_string()
            };
            Diagnostic {
                file: file.to_path_buf(),
                line,
                column,
                message,
            }
        })
}

/// A parser position moved into the text: at the end of input the parser counts
/// a line (or a column) past the last one, which no editor can jump to.
fn within_text(text: &str, line: usize, column: usize) -> (usize, usize) {
    let lines: Vec<&str> = text.split('\n').collect();
    let line = line.clamp(1, lines.len());
    let width = lines[line - 1].trim_end_matches('\r').chars().count() + 1;
    (line, column.clamp(1, width))
}

/// Builds runtime values straight from the parser (tags are ignored, keys
/// stringified), counting every value made, alias expansions included: the
/// parser bounds alias jumps, not the values one jump copies.
#[derive(Clone, Copy)]
struct Builder<'c> {
    left: &'c Cell<usize>,
}

impl Builder<'_> {
    fn count<E: serde::de::Error>(self) -> Result<(), E> {
        match self.left.get().checked_sub(1) {
            Some(n) => {
                self.left.set(n);
                Ok(())
            }
            None => Err(E::custom(
                "its aliases expand to more values than the file has bytes (plus 100000)",
            )),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Builder<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Builder<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Bool(b))
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Number(n as f64))
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Number(n as f64))
    }

    fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Number(n))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Value, E> {
        self.count()?;
        Ok(Value::str(s))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.count()?;
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.count()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::list(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut entries: A) -> Result<Value, A::Error> {
        self.count()?;
        let mut map = Map::new();
        while let Some(key) = entries.next_key_seed(self)? {
            let key = match key {
                Value::String(s) => s.to_string(),
                Value::Null => "null".into(),
                other => crate::expr::to_template_string(&other),
            };
            let value = entries.next_value_seed(self)?;
            if map.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "duplicate entry with key {key:?}"
                )));
            }
            map.insert(key, value);
        }
        Ok(Value::object(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (_tag, value): (String, _) = data.variant()?;
        value.newtype_variant_seed(self)
    }
}

/// serde_yaml's messages end in "at line L column C", which the diagnostic
/// already shows in front.
fn strip_location(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(p) => msg[..p].to_string(),
        None => msg.to_string(),
    }
}

/// The state of one file's compilation, handed to each instruction's
/// `compile` (in `runtime::instructions`): it turns values into nodes and
/// blocks, and records diagnostics at the places it finds in the text.
pub struct Compiler<'a, I> {
    file: Arc<Path>,
    locator: Locator<'a>,
    diagnostics: Vec<Diagnostic>,
    instructions: PhantomData<fn() -> I>,
}

impl<I: Compile> Compiler<'_, I> {
    fn report_at(&mut self, (line, col): (usize, usize), message: String) {
        let span = self.span((line, col));
        self.report(&span, message);
    }

    fn span(&self, (line, col): (usize, usize)) -> Span {
        Span {
            file: self.file.clone(),
            line,
            col,
        }
    }

    /// Records a problem at `span` for `validate`.
    pub fn report(&mut self, span: &Span, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::at(span, message));
    }

    /// The place of the next key `name:` in the text.
    pub fn key_span(&mut self, name: &str) -> Span {
        let pos = self.locator.find_key(name);
        self.span(pos)
    }

    /// The place of the next occurrence of `text`.
    pub fn text_span(&mut self, text: &str) -> Span {
        let pos = self.locator.find(text);
        self.span(pos)
    }

    /// Reports a field that `instruction` does not take, at the field's own
    /// place, with the closest valid name and all of them.
    pub fn unknown_field(&mut self, field: &str, instruction: &str, valid: &[&str]) {
        let span = self.key_span(field);
        self.report(
            &span,
            format!(
                "unknown field `{field}` in {instruction}{}",
                super::one_of(field, valid)
            ),
        );
    }

    fn when(&mut self, v: Option<&Value>) -> When {
        let mut when = When::default();
        let Some(Value::Object(m)) = v else {
            return when;
        };
        match m.get("endpoint") {
            Some(Value::Bool(true)) => when.endpoint = Some(String::new()),
            Some(Value::String(s)) if !s.is_empty() => when.endpoint = Some(s.to_string()),
            _ => {}
        }
        when.events = self.string_list(m.get("events"), "when.events");
        for expr in self.string_list(m.get("schedules"), "when.schedules") {
            match <croner::Cron as std::str::FromStr>::from_str(&expr) {
                Ok(cron) => when.schedules.push((expr, cron)),
                Err(e) => {
                    let pos = self.locator.find(&expr);
                    self.report_at(
                        pos,
                        format!("invalid cron expression `{expr}` in when.schedules: {e}"),
                    );
                }
            }
        }
        if when
            .events
            .iter()
            .any(|e| e == "runtime.automations.executed")
        {
            let pos = self.locator.find("runtime.automations.executed");
            self.report_at(
                pos,
                "`runtime.automations.executed` cannot trigger an automation (it would loop); use it in `wait`".into(),
            );
            when.events.retain(|e| e != "runtime.automations.executed");
        }
        when
    }

    fn string_list(&mut self, v: Option<&Value>, field: &str) -> Vec<String> {
        match v {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.to_string()],
            Some(Value::List(items)) => items
                .iter()
                .filter_map(|i| match i {
                    Value::String(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect(),
            Some(other) => {
                let pos = self
                    .locator
                    .find_key(field.rsplit('.').next().unwrap_or(field));
                self.report_at(
                    pos,
                    format!(
                        "`{field}` must be a list of strings, found {}",
                        describe(other)
                    ),
                );
                Vec::new()
            }
        }
    }

    /// Compiles a value into a node, reporting template errors with their place.
    pub fn node(&mut self, v: &Value) -> Node {
        match v {
            Value::String(s) if s.contains("{{") || s.contains("{%") => match Template::parse(s) {
                Ok(t) if t.is_literal() => Node::Const(v.clone()),
                Ok(t) => Node::Template(Box::new(t)),
                Err(e) => {
                    let pos = self.locator.find(s.lines().next().unwrap_or(s));
                    self.report_at(pos, e.to_string());
                    Node::Invalid(e)
                }
            },
            Value::List(items) => {
                let nodes: Vec<Node> = items.iter().map(|i| self.node(i)).collect();
                if nodes.iter().all(|n| n.as_const().is_some()) {
                    Node::Const(v.clone())
                } else {
                    Node::List(nodes)
                }
            }
            Value::Object(m) => {
                let members: Vec<(String, Node)> =
                    m.iter().map(|(k, v)| (k.clone(), self.node(v))).collect();
                if members.iter().all(|(_, n)| n.as_const().is_some()) {
                    Node::Const(v.clone())
                } else {
                    Node::Object(members)
                }
            }
            other => Node::Const(other.clone()),
        }
    }

    /// Compiles a list of instructions (the value of `field`).
    pub fn block(&mut self, v: &Value, field: &str) -> Vec<I> {
        match v {
            Value::Null => Vec::new(),
            Value::List(items) => items.iter().filter_map(|i| self.instruction(i)).collect(),
            other => {
                let span = self.key_span(field);
                let message = format!(
                    "`{field}` must be a list of instructions, found {}",
                    describe(other)
                );
                vec![self.invalid(span, message)]
            }
        }
    }

    /// An instruction that fails with `message` when reached, reported now.
    pub fn invalid(&mut self, span: Span, message: String) -> I {
        self.report(&span, message.as_str());
        I::invalid(span, message)
    }

    fn instruction(&mut self, v: &Value) -> Option<I> {
        let m = match v {
            Value::Null => return None,
            Value::Object(m) => m,
            other => {
                let message = format!(
                    "an instruction must be a mapping like `- set: {{...}}`, found {}",
                    describe(other)
                );
                // A list or number has no text of its own to find: its item marker does.
                let span = match other {
                    Value::String(s) => self.text_span(s),
                    _ => self.text_span("- "),
                };
                return Some(self.invalid(span, message));
            }
        };
        let Some((name, value)) = m.first().filter(|_| m.len() == 1) else {
            return Some(self.not_one_key(m));
        };
        let span = self.key_span(name);
        Some(I::compile(name, value, span, self))
    }

    /// An item with no key or several: the reference would silently run only the first.
    fn not_one_key(&mut self, m: &crate::value::Map) -> I {
        let names: Vec<&str> = m.keys().map(String::as_str).collect();
        let mut message = format!("an instruction item has one key, found {}", names.len());
        if !names.is_empty() {
            message = format!("{message}: {}", names.join(", "));
        }
        let span = match names.split_first() {
            Some((first, rest)) => {
                let span = self.key_span(first);
                // Past every key, so later lookups do not land inside this item.
                for name in rest {
                    self.locator.find_key(name);
                }
                span
            }
            None => self.text_span("{}"),
        };
        self.invalid(span, message)
    }
}

/// How a value is named in a diagnostic: `nothing`, the string, or its type.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Undefined | Value::Null => "nothing".into(),
        Value::String(s) => format!("the string `{s}`"),
        other => format!("a value of type {}", other.type_name()),
    }
}
