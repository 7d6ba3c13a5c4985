//! The automation's `limits:` (SPEC section 7): the named limits every execution takes before
//! its body runs. Each entry is checked when the file loads and kept with its place; the first
//! problem is also what executions fail with, since a run must not go ahead unlimited.

use super::super::{Compile, Span};
use super::{describe, Compiler};
use crate::value::Value;

impl<I: Compile> Compiler<'_, I> {
    /// Reads an automation's `limits:` list; problems are reported at their place, and
    /// the first one is what executions fail with.
    #[allow(clippy::type_complexity)]
    pub(in crate::dsl) fn limits(
        &mut self,
        v: Option<&Value>,
        text: &str,
    ) -> (Vec<(crate::limits::named::Use, Span)>, Option<String>) {
        use crate::limits::named::Use;
        let mut uses = Vec::new();
        let mut first = None;
        let mut problem = |c: &mut Self, path: &[String], message: String| {
            let span = c.span(crate::dsl::locate_path(text, path));
            c.report(&span, message.clone());
            first.get_or_insert(message);
            span
        };
        let entries = match v {
            None | Some(Value::Null) => return (uses, None),
            Some(Value::List(l)) => l.clone(),
            Some(other) => {
                let message = format!(
                    "`limits` takes a list of limit names or maps, found {}",
                    describe(other)
                );
                problem(self, &["limits".into()], message);
                return (uses, first);
            }
        };
        for (i, entry) in entries.iter().enumerate() {
            let path = vec!["limits".to_string(), i.to_string()];
            match Use::parse_entry(entry, &path) {
                Ok(u) => {
                    let place = match entry {
                        Value::String(name) => self.text_span(name),
                        _ => self.span(crate::dsl::locate_path(text, &path)),
                    };
                    uses.push((u, place));
                }
                Err(errors) => {
                    for e in errors {
                        problem(self, &e.path, e.to_string());
                    }
                }
            }
        }
        (uses, first)
    }
}
