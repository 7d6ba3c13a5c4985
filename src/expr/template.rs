//! String templates (DSUL §4): `{{path}}` and `{% expr %}` inside values.
//!
//! A template is split into segments once, at load time. Rendering a lone
//! segment returns the typed value; a mixed string is stringified (§4.2) and
//! only re-parsed when the produced text still contains `{{` or `{%` — the
//! reference's re-scan rule (§4.3), which also resolves `{{a[{{k}}]}}` inside
//! out and expands template text coming from data, with a bounded number of
//! passes instead of the reference's endless loop. As in the reference, the
//! re-scan looks for `{{ }}` only: `{% %}` text coming from data is never
//! evaluated. No rendered string, in any pass, grows past the execution's
//! `max_string_bytes` budget.

use super::cx::string_too_long;
use super::eval::Expr;
use super::jsfmt::{push_template_string, push_within, TooLong};
use super::{parse_variable_name, ExprError, Key, Scope};
use crate::budgets::Budgets;
use crate::value::Value;
use std::sync::Arc;

/// How many re-scans a render may do before it is declared runaway.
const MAX_PASSES: usize = 64;

/// A compiled string value that may contain `{{ }}` / `{% %}`.
#[derive(Debug, Clone)]
pub struct Template {
    text: Arc<str>,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// No template at all: render returns the text.
    Literal,
    /// The whole string is one `{{path}}`.
    LoneVar(Vec<Key>),
    /// The whole string is one `{% expr %}`.
    LoneExpr(Expr),
    /// Text mixed with templates, stringified.
    Mixed(Vec<Segment>),
}

#[derive(Debug, Clone)]
enum Segment {
    Text(Box<str>),
    Var(Vec<Key>),
    Expr(Expr),
}

impl Template {
    /// Compiles a string; a bad `{% %}` expression or `{{path}}` is an error here.
    pub fn parse(text: &str) -> Result<Template, ExprError> {
        Self::compile(text, true)
    }

    /// Compiles `text`; `with_exprs` is false for re-scans, which leave `{% %}` as text.
    fn compile(text: &str, with_exprs: bool) -> Result<Template, ExprError> {
        let segments = scan(text, with_exprs)?;
        let kind = match segments.as_slice() {
            [] | [Segment::Text(_)] => Kind::Literal,
            [Segment::Var(_)] | [Segment::Expr(_)] => match segments.into_iter().next() {
                Some(Segment::Var(keys)) => Kind::LoneVar(keys),
                Some(Segment::Expr(e)) => Kind::LoneExpr(e),
                _ => Kind::Literal,
            },
            _ => Kind::Mixed(segments),
        };
        Ok(Template {
            text: Arc::from(text),
            kind,
        })
    }

    /// True when the text has no template, so rendering returns it unchanged.
    pub fn is_literal(&self) -> bool {
        matches!(self.kind, Kind::Literal)
    }

    /// Renders per DSUL §4: a lone template keeps its value's type.
    pub fn render(&self, scope: &dyn Scope) -> Result<Value, ExprError> {
        match &self.kind {
            Kind::Literal => Ok(Value::String(self.text.clone())),
            Kind::LoneVar(keys) => Ok(scope.lookup(keys)),
            Kind::LoneExpr(e) => e.eval(scope),
            Kind::Mixed(_) => self.render_pass(scope, scope.budgets(), 0, &self.text),
        }
    }

    /// One pass; `origin` is the text the caller asked for, named in a runaway error.
    fn render_pass(
        &self,
        scope: &dyn Scope,
        budgets: &Budgets,
        pass: usize,
        origin: &str,
    ) -> Result<Value, ExprError> {
        let segments = match &self.kind {
            Kind::Literal => return Ok(Value::String(self.text.clone())),
            Kind::LoneVar(keys) => return Ok(scope.lookup(keys)),
            Kind::LoneExpr(e) => return e.eval_within(scope, budgets),
            Kind::Mixed(segments) => segments,
        };
        let max = budgets.max_string_bytes;
        let too_long = |TooLong(len)| ExprError::Budget(string_too_long(budgets, len));
        let mut out = String::with_capacity(self.text.len() + 16);
        for seg in segments {
            let pushed = match seg {
                Segment::Text(t) => push_within(&mut out, t, max),
                Segment::Var(keys) => push_template_string(&mut out, &scope.lookup(keys), max),
                Segment::Expr(e) => {
                    push_template_string(&mut out, &e.eval_within(scope, budgets)?, max)
                }
            };
            pushed.map_err(too_long)?;
        }
        if !out.contains("{{") {
            return Ok(Value::str(out));
        }
        let next = Template::compile(&out, false)?;
        if next.is_literal() {
            return Ok(Value::String(next.text));
        }
        if pass + 1 >= MAX_PASSES {
            return Err(ExprError::Runaway(origin.to_string()));
        }
        next.render_pass(scope, budgets, pass + 1, origin)
    }
}

/// Splits `text` into literal text, innermost `{{path}}` runs and outermost
/// `{% %}` blocks (nested pairs counted, not crossing a line end) when
/// `with_exprs` is set.
fn scan(text: &str, with_exprs: bool) -> Result<Vec<Segment>, ExprError> {
    let b = text.as_bytes();
    let mut segments = Vec::new();
    let mut lit_start = 0;
    let mut i = 0;
    let flush = |segments: &mut Vec<Segment>, from: usize, to: usize| {
        if to > from {
            segments.push(Segment::Text(text[from..to].into()));
        }
    };
    while i + 1 < b.len() {
        if b[i] != b'{' {
            i += 1;
            continue;
        }
        if b[i + 1] == b'%' && with_exprs {
            if let Some(close) = expr_close(b, i) {
                let expr = Expr::parse_within(text, i + 2, close)?;
                flush(&mut segments, lit_start, i);
                segments.push(Segment::Expr(expr));
                i = close + 2;
                lit_start = i;
                continue;
            }
        } else if b[i + 1] == b'{' {
            let body_start = i + 2;
            let body_len = b[body_start..]
                .iter()
                .position(|c| *c == b'{' || *c == b'}')
                .unwrap_or(b.len() - body_start);
            let body_end = body_start + body_len;
            if b[body_end..].starts_with(b"}}") {
                let keys = parse_variable_name(&text[body_start..body_end])?;
                flush(&mut segments, lit_start, i);
                segments.push(Segment::Var(keys));
                i = body_end + 2;
                lit_start = i;
                continue;
            }
        }
        i += 1;
    }
    flush(&mut segments, lit_start, b.len());
    Ok(segments)
}

/// The offset of the `%}` closing the `{%` at `open`, counting nested pairs.
fn expr_close(b: &[u8], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = open + 2;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'\n', _) => return None,
            (b'{', b'%') => {
                depth += 1;
                i += 2;
            }
            (b'%', b'}') if depth == 0 => return Some(i),
            (b'%', b'}') => {
                depth -= 1;
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Expr;

    use serde_json::json;

    fn scope() -> Value {
        Value::from(json!({
            "a": 5, "b": 5, "s": "str", "f": 1.5, "big": 1e21, "tiny": 0.000001, "t": true, "nul": null,
            "o": {"a": 1, "b": [1, 2]}, "l": [1, "x"], "k": "key", "map": {"key": "found", "n": 7},
            "deux": "trois", "x": "un+{{deux}}", "self": "{{self}}", "loop": "a{{loop}}",
            "item": "thing", "raw": "{\"a\": {\"b\": [10, 20]}}", "idx": 1, "arr": ["p", "q"],
            "open": "{{", "name": "map", "pct": "{% 1 + 1 %}",
        }))
    }

    fn render(text: &str) -> Value {
        Template::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .render(&scope())
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn lone_templates_keep_types() {
        assert_eq!(render("{{a}}"), Value::Number(5.0));
        assert_eq!(render("{{t}}"), Value::Bool(true));
        assert_eq!(render("{{nul}}"), Value::Null);
        assert_eq!(render("{{o}}"), Value::from(json!({"a": 1, "b": [1, 2]})));
        assert_eq!(render("{{l}}"), Value::from(json!([1, "x"])));
        assert_eq!(render("{{missing}}"), Value::Undefined);
        assert_eq!(render("{{o.b[1]}}"), Value::Number(2.0));
        assert_eq!(render("{{o.b.0}}"), Value::Number(1.0));
        assert_eq!(render("{% {{a}} + 1 %}"), Value::Number(6.0));
        assert_eq!(
            render("{% json({{raw}}) %}"),
            Value::from(json!({"a": {"b": [10, 20]}}))
        );
        assert_eq!(render("{% {{l}} %}"), Value::from(json!([1, "x"])));
    }

    #[test]
    fn mixed_templates_stringify() {
        assert_eq!(render("item {{item}}"), Value::str("item thing"));
        assert_eq!(
            render("a={{a}} f={{f}} t={{t}}"),
            Value::str("a=5 f=1.5 t=true")
        );
        assert_eq!(render("[{{missing}}|{{nul}}]"), Value::str("[|]"));
        assert_eq!(render("x{{big}} {{tiny}}"), Value::str("x1e+21 0.000001"));
        assert_eq!(
            render(" {{o}}"),
            Value::str(" {\n  \"a\": 1,\n  \"b\": [\n    1,\n    2\n  ]\n}")
        );
        assert_eq!(render("{{a}}{{b}}"), Value::str("55"));
        assert_eq!(render("n: {% 1/0 %}"), Value::str("n: null"));
        assert_eq!(render("{% 1 %} and {% 2 %}"), Value::str("1 and 2"));
        assert_eq!(render("sum={% {{a}} + {{b}} %}!"), Value::str("sum=10!"));
    }

    #[test]
    fn spaces_are_part_of_the_name() {
        assert_eq!(render("{{ a }}"), Value::Undefined);
        assert_eq!(render("x{{ a }}y"), Value::str("xy"));
    }

    #[test]
    fn rescans_resolve_nested_and_data_templates() {
        assert_eq!(render("{{map[{{k}}]}}"), Value::str("found"));
        assert_eq!(render("{{map.n}}"), Value::Number(7.0));
        assert_eq!(render("{{arr[{{idx}}]}}"), Value::str("q"));
        assert_eq!(render("v={{{{name}}.key}}"), Value::str("v=found"));
        assert_eq!(render("{{x}} et {{deux}}"), Value::str("un+trois et trois"));
        assert_eq!(render("{{x}}"), Value::str("un+{{deux}}"));
        assert_eq!(render("{% \"{{x}}\" %}"), Value::str("{{x}}"));
        assert_eq!(render("{{pct}}!"), Value::str("{% 1 + 1 %}!"));
        assert_eq!(render("{% \"{{x}}\" %}!"), Value::str("un+trois!"));
        assert_eq!(render("{% {% {{a}} %} < 6 %}"), Value::Bool(true));
        assert_eq!(render("<{% {% {{a}} %} + 1 %}>"), Value::str("<6>"));
        assert_eq!(render("{{self}}"), Value::str("{{self}}"));
    }

    #[test]
    fn runaway_rescans_fail() {
        for text in ["{{self}} again", "{{loop}}!"] {
            match Template::parse(text).unwrap().render(&scope()) {
                Err(ExprError::Runaway(t)) => assert_eq!(t, text),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn unmatched_openers_stay_text() {
        for text in [
            "{{a", "a {{", "{% 1", "a }} b", "{ {a} }", "{%\n1 %}", "100%", "{}",
        ] {
            let t = Template::parse(text).unwrap();
            assert!(t.is_literal(), "{text}");
            assert_eq!(t.render(&scope()).unwrap(), Value::str(text));
        }
        assert_eq!(render("{{ {{a}}"), Value::str("{{ 5"));
        assert_eq!(render("{{{a}}}"), Value::str("{5}"));
        assert_eq!(render("{{open}}a}}"), Value::Number(5.0));
        assert_eq!(render("x{{open}}a}}"), Value::str("x5"));
    }

    #[test]
    fn parse_errors_have_columns() {
        match Template::parse("ab {% 1 + %}") {
            Err(ExprError::Syntax { column, text, .. }) => {
                assert_eq!(column, 11);
                assert_eq!(text, "ab {% 1 + %}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Template::parse("{{a..b}}"),
            Err(ExprError::InvalidPath(_))
        ));
        assert!(matches!(
            Template::parse("x {{}}"),
            Err(ExprError::InvalidPath(_))
        ));
        assert!(matches!(
            Template::parse("{% nope(1) %}"),
            Err(ExprError::Syntax { column: 4, .. })
        ));
    }

    #[test]
    fn evaluation_errors_propagate() {
        let t = Template::parse("v {% round(\"x\") %}").unwrap();
        assert!(matches!(t.render(&scope()), Err(ExprError::Eval { .. })));
    }

    /// The template and condition strings of the conformance sample, with the
    /// results the reference gave.
    #[test]
    fn conformance_cases() {
        let vars = Value::from(json!({
            "b": 5, "a": 1, "s": "hello", "arr": ["zz", "ell"], "n": 3,
            "d": "2022-04-13T08:36:05.493Z", "raw": "{\"a\": {\"b\": [10, 20]}}",
            "obj": {"list": [{"name": "a"}, {"name": "b"}]}, "o": {"a": {"b": [10, 20]}},
        }));
        let r = |t: &str| Template::parse(t).unwrap().render(&vars).unwrap();
        let c = |t: &str| Expr::parse(t).unwrap().eval(&vars).unwrap().truthy();
        // 001
        assert_eq!(r("{{b}}"), Value::Number(5.0));
        assert_eq!(r("{% {{b}} + 1 %}"), Value::Number(6.0));
        // 007
        assert_eq!(r("{{obj.list[1].name}}"), Value::str("b"));
        assert_eq!(r("{{obj.list.0.name}}"), Value::str("a"));
        // 013
        for (t, v) in [
            ("{% 2 + 3 * 4 %}", 14.0),
            ("{% (2 + 3) * 4 %}", 20.0),
            ("{% 10 % 4 %}", 2.0),
            ("{% 7 / 2 %}", 3.5),
            ("{% 10 - 2 - 3 %}", 5.0),
            ("{% 2 * 3 + 10 / 2 %}", 11.0),
        ] {
            assert_eq!(r(t), Value::Number(v), "{t}");
        }
        // 043, 109
        assert!(c("{{a}} == 1"));
        assert!(!c("{{a}} == 3"));
        assert!(c("{{n}} > 0"));
        assert_eq!(r("{% {{n}} - 1 %}"), Value::Number(2.0));
        // 049
        assert!(c("\"bonjour\" matches \"bon\""));
        assert!(c("{{s}} matches regex(/^HEL/i)"));
        assert!(c("{{s}} not matches \"xyz\""));
        assert!(c("{{s}} matches {{arr}}"));
        // 055
        assert!(c("true AND {{a}} EQUALS 1"));
        assert!(c("false OR \"x\" MATCHES \"x\""));
        // 061
        for (field, v) in [
            ("day", 3.0),
            ("date", 13.0),
            ("month", 4.0),
            ("year", 2022.0),
            ("hour", 8.0),
            ("minute", 36.0),
            ("second", 5.0),
            ("ts", 1649838965493.0),
        ] {
            assert_eq!(
                r(&format!("{{% date({{{{d}}}}).{field} %}}")),
                Value::Number(v),
                "{field}"
            );
        }
        assert_eq!(
            r("{% date({{d}}).iso %}"),
            Value::str("2022-04-13T08:36:05.493Z")
        );
        assert_eq!(r("{% date({{d}}) %}"), Value::Number(1649838965493.0));
        // 067
        assert_eq!(r("{% rand(10, 11) %}"), Value::Number(10.0));
        assert_eq!(r("{% rand() < 1 %}"), Value::Bool(true));
        // 127
        assert!(c("{{s}} == hello"));
        assert!(c("salut !== aurevoir"));
        // 139
        assert_eq!(r("{{ a }}"), Value::Undefined);
        assert_eq!(r("x{{ a }}y"), Value::str("xy"));
        assert_eq!(r("{{a}}"), Value::Number(1.0));
        // 145
        assert_eq!(
            r("{% json({{raw}}) %}"),
            Value::from(json!({"a": {"b": [10, 20]}}))
        );
        assert_eq!(r("{{o.a.b[1]}}"), Value::Number(20.0));
    }

    #[test]
    fn literal_detection() {
        assert!(Template::parse("plain text").unwrap().is_literal());
        assert!(Template::parse("").unwrap().is_literal());
        assert!(!Template::parse("a {{b}}").unwrap().is_literal());
        assert!(!Template::parse("{% 1 %}").unwrap().is_literal());
    }

    /// A scope with tiny budgets, as a workspace override would give.
    struct Tiny {
        vars: Value,
        budgets: Budgets,
    }

    impl Scope for Tiny {
        fn lookup(&self, path: &[Key]) -> Value {
            crate::expr::get_path(&self.vars, path)
        }

        fn budgets(&self) -> &Budgets {
            &self.budgets
        }
    }

    fn tiny(vars: serde_json::Value) -> Tiny {
        Tiny {
            vars: Value::from(vars),
            budgets: Budgets {
                max_string_bytes: 20,
                max_entries: 5,
                max_regex_bytes: 10_000,
                ..Budgets::default()
            },
        }
    }

    fn over_budget(text: &str, scope: &dyn Scope) -> &'static str {
        match Template::parse(text).unwrap().render(scope) {
            Err(ExprError::Budget(e)) => e.name,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn a_string_doubled_40_times_hits_max_string_bytes() {
        let doubled = Template::parse("{{s}}{{s}}").unwrap();
        let mut s = Value::str("0123456789abcdef");
        for round in 0..40 {
            let mut vars = crate::value::Map::new();
            vars.insert("s".into(), s.clone());
            match doubled.render(&Value::object(vars)) {
                Ok(v) => s = v,
                Err(ExprError::Budget(e)) => {
                    assert_eq!(e.name, "max_string_bytes");
                    assert_eq!(e.found, 32 << round);
                    assert!(e.to_string().contains("a string of 16777216 bytes"), "{e}");
                    return;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("40 doublings stayed under max_string_bytes");
    }

    #[test]
    fn scope_budgets_bound_every_string_an_expression_builds() {
        let scope = tiny(json!({
            "s": "0123456789", "l": ["0123456789", "0123456789", "x"], "o": {"k": "0123456789"},
            "big": "0123456789012345678901234567890", "q": "a=1&b=2&c=3&d=4&e=5&f=6",
        }));
        assert_eq!(render_in("{{s}}!", &scope), Value::str("0123456789!"));
        for text in [
            "{{s}}{{s}}!",
            "a {{s}} {{s}}",
            "x{{o}}",
            "{% {{s}} + {{s}} + 1 %}",
            "{% join({{l}}, \",\") %}",
            "{% replace({{s}}, \"9\", \"$`$`\") %}",
            "{% json({{o}}) + {{s}} %}",
            "{% json({{l}}) %}",
            "{% upper({{big}}) %}",
            "{% truncate({{big}}, 15, \"......\") %}",
            "{% URLSearchParams({{o}}).asString + {{s}} %}",
            "{% date(0, \"LLLL LLLL\", \"en\", \"UTC\") %}",
        ] {
            assert_eq!(over_budget(text, &scope), "max_string_bytes", "{text}");
        }
        assert_eq!(
            over_budget("{% split({{s}}, \"\") %}", &scope),
            "max_entries"
        );
        assert_eq!(
            over_budget("{% URLSearchParams({{q}}).asJSON %}", &scope),
            "max_entries"
        );
        assert_eq!(
            render_in("{% split(\"a,b\", \",\") %}", &scope),
            Value::from(json!(["a", "b"]))
        );
    }

    #[test]
    fn rescans_stop_at_max_string_bytes() {
        let scope = tiny(json!({"a": "{{b}}{{b}}", "b": "0123456789"}));
        assert_eq!(over_budget("{{a}}.", &scope), "max_string_bytes");
    }

    fn render_in(text: &str, scope: &dyn Scope) -> Value {
        Template::parse(text).unwrap().render(scope).unwrap()
    }

    #[test]
    fn run_time_regexes_stay_within_max_regex_bytes() {
        let scope = tiny(json!({
            "s": "aaa", "long": "a".repeat(10_001), "huge": "(a{100}){100}", "ok": "^a+$",
            "q": {"x": {"$regex": "(b{100}){100}"}},
        }));
        assert_eq!(
            render_in("{% {{s}} matches {{ok}} %}", &scope),
            Value::Bool(true)
        );
        for text in [
            "{% {{s}} matches {{long}} %}",
            "{% {{s}} matches {{huge}} %}",
            "{% {{s}} matches regex({{huge}}) %}",
            "{% {{s}} matches regex(/x{{long}}/i) %}",
            "{% jsonmatch({{q}}, {{q}}) %}",
        ] {
            assert_eq!(over_budget(text, &scope), "max_regex_bytes", "{text}");
        }
    }
}
