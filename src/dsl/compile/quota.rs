//! The automation's `quota:` (SPEC section 8): its cost, class and fallback, checked when the
//! file loads. A mistake here refuses the file with its place: an automation must not run
//! with a cost or class other than the one its author meant.

use super::super::{Compile, Diagnostic, Node, Quota};
use super::{describe, Compiler};
use crate::quota::QuotaClass;
use crate::value::Value;

const FIELDS: &[&str] = &["cost", "class", "fallback"];
const CLASSES: &str = "premium, standard or essential";

impl<I: Compile> Compiler<'_, I> {
    /// Compiles `quota: {cost, class, fallback}`.
    pub(in crate::dsl) fn quota(&mut self, v: &Value) -> Result<Quota<I>, Diagnostic> {
        let Value::Object(m) = v else {
            let span = self.key_span("quota");
            return Err(Diagnostic::at(
                &span,
                format!(
                    "`quota` must be a mapping with cost, class and fallback, found {}",
                    describe(v)
                ),
            ));
        };
        let mut quota = Quota {
            cost: None,
            class: QuotaClass::default(),
            fallback: None,
        };
        for (field, value) in m.iter() {
            match field.as_str() {
                "cost" => quota.cost = self.cost(value)?,
                "class" => {
                    quota.class = match value.as_str() {
                        Some("premium") => QuotaClass::Premium,
                        Some("standard") => QuotaClass::Standard,
                        Some("essential") => QuotaClass::Essential,
                        _ => {
                            let span = self.key_span("class");
                            return Err(Diagnostic::at(
                                &span,
                                format!(
                                    "quota.class: {} is not a class, expected {CLASSES}",
                                    shown(value)
                                ),
                            ));
                        }
                    }
                }
                "fallback" => match value {
                    Value::List(_) => quota.fallback = Some(self.block(value, "fallback")),
                    other => {
                        let span = self.key_span("fallback");
                        return Err(Diagnostic::at(
                            &span,
                            format!(
                                "quota.fallback must be a list of instructions, found {}",
                                describe(other)
                            ),
                        ));
                    }
                },
                other => {
                    let span = self.key_span(other);
                    return Err(Diagnostic::at(
                        &span,
                        format!(
                            "unknown field `{other}` in quota{}",
                            crate::dsl::one_of(other, FIELDS)
                        ),
                    ));
                }
            }
        }
        Ok(quota)
    }

    /// A cost: a number of credits from 0, or a template computing one when it starts.
    fn cost(&mut self, value: &Value) -> Result<Option<Node>, Diagnostic> {
        let refuse = |c: &mut Self, problem: String| {
            let span = c.key_span("cost");
            Err(Diagnostic::at(&span, format!("quota.cost: {problem}")))
        };
        match value {
            Value::Number(n) if n.is_finite() && *n >= 0.0 => {
                Ok((*n > 0.0).then(|| Node::Const(value.clone())))
            }
            Value::String(s) if s.contains("{{") || s.contains("{%") => match self.node(value) {
                Node::Invalid(e) => refuse(self, format!("invalid template: {e}")),
                node => Ok(Some(node)),
            },
            other => refuse(
                self,
                format!(
                    "{} is not valid, expected a number of credits from 0 or a template such as '{{{{body.words}}}}'",
                    shown(other)
                ),
            ),
        }
    }
}

/// A value as the user wrote it, for messages.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Number(n) => n.to_string(),
        other => describe(other),
    }
}
