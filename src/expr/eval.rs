//! Expression evaluation with JavaScript operator semantics (DSUL §5.3):
//! loose and strict equality with objects by identity, relational comparison,
//! `+` concatenation, `in`, `matches` with JavaScript-style regexes.
//!
//! Evaluation holds the execution's [`Budgets`]: no string it builds grows past
//! `max_string_bytes` and no regex it compiles past `max_regex_bytes`.

use super::compare::{js_compare, js_in, loose_eq, strict_eq, to_primitive};
use super::cx::Cx;
use super::functions::call;
use super::jsfmt::{js_str, js_to_number, js_to_string};
use super::parser::{parse, BinOp, MatchRhs, Node, RegexPart, Seg, VarPath};
use super::path::key_of_value;
use super::regex::{compile_regex_literal, regex_too_long, CompiledRegex};
use super::{ExprError, Scope};
use crate::budgets::Budgets;
use crate::value::Value;
use std::cmp::Ordering;
use std::sync::Arc;

/// A parsed expression: a condition key or the inside of `{% %}`.
#[derive(Debug, Clone)]
pub struct Expr {
    root: Node,
    text: Arc<str>,
}

impl Expr {
    /// Parses an expression; syntax errors carry the 1-based column.
    pub fn parse(text: &str) -> Result<Expr, ExprError> {
        Ok(Expr {
            root: parse(text, 0, text.len())?,
            text: Arc::from(text),
        })
    }

    /// Parses `src[start..end]` (a `{% %}` body), reporting columns in `src`.
    pub(crate) fn parse_within(src: &str, start: usize, end: usize) -> Result<Expr, ExprError> {
        Ok(Expr {
            root: parse(src, start, end)?,
            text: Arc::from(&src[start..end]),
        })
    }

    /// Evaluates to the raw value; conditions apply `Value::truthy()`.
    pub fn eval(&self, scope: &dyn Scope) -> Result<Value, ExprError> {
        self.eval_within(scope, scope.budgets())
    }

    /// [`Expr::eval`] with the scope's budgets already fetched (once per template render).
    pub(crate) fn eval_within(
        &self,
        scope: &dyn Scope,
        budgets: &Budgets,
    ) -> Result<Value, ExprError> {
        let cx = Cx {
            scope,
            text: &self.text,
            budgets,
        };
        cx.eval(&self.root)
    }
}

impl Cx<'_> {
    fn eval(&self, node: &Node) -> Result<Value, ExprError> {
        Ok(match node {
            Node::Lit(v) => v.clone(),
            Node::Var(path) => self.lookup(path)?,
            Node::Not(inner) => Value::Bool(!self.eval(inner)?.truthy()),
            Node::Neg(inner) => Value::Number(-js_to_number(&self.eval(inner)?)),
            Node::Exists(inner, negate) => Value::Bool(self.eval(inner)?.is_nullish() == *negate),
            Node::Matches(left, rhs, negate) => {
                let left = self.eval(left)?;
                Value::Bool(self.matches(&left, rhs)? != *negate)
            }
            Node::Bin(op, l, r) => {
                // The reference evaluates both operands before applying any operator.
                let l = self.eval(l)?;
                let r = self.eval(r)?;
                self.binary(*op, l, r)?
            }
            Node::Arith(first, rest) => {
                let mut acc = self.eval(first)?;
                for (op, node) in rest {
                    let r = self.eval(node)?;
                    acc = self.binary(*op, acc, r)?;
                }
                acc
            }
            Node::Logic(first, rest) => {
                // `a op (b op (c …))` with every operand evaluated, as in the reference: the
                // first operand that decides its operator is the result.
                let mut decided = None;
                let mut v = self.eval(first)?;
                for (op, node) in rest {
                    if decided.is_none() && v.truthy() == (*op == BinOp::Or) {
                        decided = Some(v);
                    }
                    v = self.eval(node)?;
                }
                decided.unwrap_or(v)
            }
            Node::Call(c) => {
                let args = c
                    .args
                    .iter()
                    .map(|a| self.eval(a))
                    .collect::<Result<Vec<_>, _>>()?;
                call(self, c.func, args, c.field.as_deref())?
            }
        })
    }

    fn lookup(&self, path: &VarPath) -> Result<Value, ExprError> {
        if let Some(keys) = &path.keys {
            return Ok(self.scope.lookup(keys));
        }
        let mut keys = Vec::with_capacity(path.segs.len());
        for seg in &path.segs {
            keys.push(match seg {
                Seg::Key(k) => k.clone(),
                Seg::Dyn(node) => key_of_value(&self.eval(node)?),
            });
        }
        Ok(self.scope.lookup(&keys))
    }

    fn matches(&self, left: &Value, rhs: &MatchRhs) -> Result<bool, ExprError> {
        let text = js_to_string(left);
        let limit = self.budgets.max_regex_bytes;
        let re = match rhs {
            MatchRhs::Compiled(re) => re.clone(),
            MatchRhs::Parts(parts) => {
                let mut src = String::new();
                for part in parts {
                    match part {
                        RegexPart::Text(t) => src.push_str(t),
                        RegexPart::Var(p) => src.push_str(&js_to_string(&self.lookup(p)?)),
                    }
                    // A data value may be huge; the source alone must fit the regex budget.
                    if src.len() > limit {
                        return Err(self.failure(regex_too_long(self.budgets, src.len())));
                    }
                }
                compile_regex_literal(&src, self.budgets).map_err(|e| self.failure(e))?
            }
            MatchRhs::Value(node) => match self.eval(node)? {
                Value::List(items) if items.len() >= 2 => {
                    for item in items.iter() {
                        let re = CompiledRegex::source(&js_to_string(item), self.budgets)
                            .map_err(|e| self.failure(e))?;
                        if re.0.is_match(&text) {
                            return Ok(true);
                        }
                    }
                    return Ok(false);
                }
                // What `regex(...)` evaluated to in the reference: parts joined, then a literal.
                Value::List(items) => {
                    let joined: String = items.iter().map(js_to_string).collect();
                    compile_regex_literal(&joined, self.budgets).map_err(|e| self.failure(e))?
                }
                // `new RegExp(undefined)` matches everything.
                Value::Undefined => return Ok(true),
                other => CompiledRegex::source(&js_to_string(&other), self.budgets)
                    .map_err(|e| self.failure(e))?,
            },
        };
        Ok(re.0.is_match(&text))
    }

    fn binary(&self, op: BinOp, l: Value, r: Value) -> Result<Value, ExprError> {
        Ok(match op {
            BinOp::And => {
                if l.truthy() {
                    r
                } else {
                    l
                }
            }
            BinOp::Or => {
                if l.truthy() {
                    l
                } else {
                    r
                }
            }
            BinOp::LooseEq => Value::Bool(loose_eq(&l, &r)),
            BinOp::LooseNe => Value::Bool(!loose_eq(&l, &r)),
            BinOp::StrictEq => Value::Bool(strict_eq(&l, &r)),
            BinOp::StrictNe => Value::Bool(!strict_eq(&l, &r)),
            BinOp::Lt => Value::Bool(js_compare(&l, &r) == Some(Ordering::Less)),
            BinOp::Gt => Value::Bool(js_compare(&l, &r) == Some(Ordering::Greater)),
            BinOp::Le => Value::Bool(matches!(
                js_compare(&l, &r),
                Some(Ordering::Less | Ordering::Equal)
            )),
            BinOp::Ge => Value::Bool(matches!(
                js_compare(&l, &r),
                Some(Ordering::Greater | Ordering::Equal)
            )),
            BinOp::In => Value::Bool(js_in(&l, &r)),
            BinOp::NotIn => Value::Bool(!js_in(&l, &r)),
            BinOp::Add => return self.js_add(&l, &r),
            BinOp::Sub => Value::Number(js_to_number(&l) - js_to_number(&r)),
            BinOp::Mul => Value::Number(js_to_number(&l) * js_to_number(&r)),
            BinOp::Div => Value::Number(js_to_number(&l) / js_to_number(&r)),
            BinOp::Mod => Value::Number(js_to_number(&l) % js_to_number(&r)),
        })
    }

    /// JavaScript `+`, sized before the concatenation is allocated.
    fn js_add(&self, l: &Value, r: &Value) -> Result<Value, ExprError> {
        let (l, r) = (to_primitive(l), to_primitive(r));
        if !matches!(l, Value::String(_)) && !matches!(r, Value::String(_)) {
            return Ok(Value::Number(js_to_number(&l) + js_to_number(&r)));
        }
        let (l, r) = (js_str(&l), js_str(&r));
        let len = l.len().saturating_add(r.len());
        self.check_len(len)?;
        let mut s = String::with_capacity(len);
        s.push_str(&l);
        s.push_str(&r);
        Ok(Value::str(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Template;

    use serde_json::json;

    fn scope() -> Value {
        Value::from(json!({
            "a": 1, "b": 2, "five": 5, "sfive": "5", "s": "hello", "t": "x y\"z'",
            "arr": ["zz", "ell"], "one": ["ell"], "list": [1, 2, 3], "obj": {"k": "v", "2": "two"},
            "copy": {"k": "v"}, "k": "k", "idx": 1, "zero": 0, "empty": "", "nul": null,
            "nested": {"deep": {"x": 42}}, "name": "deep", "fr": "india", "re": "^h.l",
        }))
    }

    fn ev(text: &str) -> Value {
        Expr::parse(text)
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .eval(&scope())
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn yes(text: &str) {
        assert!(ev(text).truthy(), "expected true: {text}");
    }

    fn no(text: &str) {
        assert!(!ev(text).truthy(), "expected false: {text}");
    }

    fn num(text: &str) -> f64 {
        match ev(text) {
            Value::Number(n) => n,
            other => panic!("{text}: {other:?}"),
        }
    }

    fn syntax_column(text: &str) -> usize {
        match Expr::parse(text) {
            Err(ExprError::Syntax { column, .. }) => column,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn math_precedence_and_js_arithmetic() {
        assert_eq!(num("2 + 3 * 4"), 14.0);
        assert_eq!(num("(2 + 3) * 4"), 20.0);
        assert_eq!(num("10 % 4"), 2.0);
        assert_eq!(num("7 / 2"), 3.5);
        assert_eq!(num("10 - 2 - 3"), 5.0);
        assert_eq!(num("2 * 3 + 10 / 2"), 11.0);
        assert_eq!(num("1+1"), 2.0);
        assert_eq!(num("-5 + 2"), -3.0);
        assert_eq!(num("3-2"), 1.0);
        assert_eq!(num("{{five}} - 1"), 4.0);
        assert_eq!(num("-{{five}}"), -5.0);
        assert_eq!(num("1/0"), f64::INFINITY);
        assert!(num("{{missing}} + 1").is_nan());
        assert_eq!(ev("{{s}} + 1"), Value::str("hello1"));
        assert_eq!(ev("{{s}} + {{t}}"), Value::str("hellox y\"z'"));
        assert_eq!(ev("{{sfive}} + 1"), Value::str("51"));
        assert_eq!(num("{{sfive}} * 2"), 10.0);
        assert_eq!(num("{{a}} + true"), 2.0);
        assert_eq!(num("1.5 * 2"), 3.0);
    }

    #[test]
    fn equality_operators_and_quirks() {
        yes("{{five}} == \"5\"");
        yes("{{five}} != \"5\"");
        no("{{five}} not equals \"5\"");
        yes("{{five}} = 5");
        yes("{{five}} equals 5");
        no("{{five}} === \"5\"");
        yes("{{five}} === 5");
        yes("{{five}} !== \"5\"");
        yes("undefined == null");
        yes("{{missing}} == null");
        no("undefined == 0");
        no("null == 0");
        yes("{{zero}} == false");
        yes("{{empty}} == 0");
        yes("{{list}} == {{list}}");
        no("{{obj}} == {{copy}}");
        no("{{obj}} === {{copy}}");
        yes("{{obj}} != {{copy}}");
        yes("{{s}} == hello");
        yes("salut !== aurevoir");
        yes("{{fr}} == india");
        // Comparisons group to the right: 1 == (1 == 1) is 1 == true.
        yes("1 == 1 == 1");
    }

    #[test]
    fn relational_operators() {
        yes("{{a}} < 2");
        yes("{{a}}>0");
        yes("{{a}}<=1");
        yes("{{a}} >= 1");
        no("{{a}} > 1");
        yes("\"10\" < \"9\"");
        no("{{sfive}} < 3");
        no("{{missing}} < 1");
        no("{{missing}} >= 1");
        yes("{% {{a}} %} < 3");
    }

    #[test]
    fn logical_operators_group_right_and_return_operands() {
        no("false and false or true");
        yes("(false and false) or true");
        yes("true && {{a}} || false");
        assert_eq!(ev("{{missing}} || \"fallback\""), Value::str("fallback"));
        assert_eq!(ev("{{a}} && {{s}}"), Value::str("hello"));
        assert_eq!(ev("{{zero}} and {{s}}"), Value::Number(0.0));
        yes("true AND {{a}} EQUALS 1");
        yes("false OR \"x\" MATCHES \"x\"");
        yes("{{a}} == 1 and {{b}} == 2");
    }

    #[test]
    fn negation_forms() {
        no("!true");
        yes("!{{missing}}");
        yes("!({{a}} == 2)");
        yes("not ({{a}} == 2)");
        no("NOT ({{a}} == 1)");
        yes("!{{empty}}");
        no("!{{list}}");
        assert_eq!(ev("not"), Value::str("not"));
    }

    #[test]
    fn exists_in_and_matches() {
        yes("{{zero}} exists");
        yes("{{empty}} exists");
        no("{{nul}} exists");
        yes("{{missing}} not exists");
        yes("{{a}} exists and {{b}} exists");
        yes("2 in {{list}}");
        no("\"2\" in {{list}}");
        yes("2 in \"1,2,3\"");
        yes("b in \"a,b\"");
        no("c in \"a,b\"");
        yes("k in {{obj}}");
        yes("2 in {{obj}}");
        no("x in {{a}}");
        yes("x not in {{obj}}");
        yes("\"bonjour\" matches \"bon\"");
        yes("{{s}} matches regex(/^HEL/i)");
        no("{{s}} matches regex(/^HEL/)");
        yes("{{s}} matches regex(^hel)");
        yes("{{s}} not matches \"xyz\"");
        yes("{{s}} matches {{arr}}");
        yes("{{s}} matches {{one}}");
        yes("\"axb\" matches \"a.b\"");
        yes("{{s}} matches {{re}}");
        yes("{{s}} matches regex({{re}})");
        yes("{{s}} matches regex(/{{re}}/i)");
        yes("{{s}} MaTcHeS regex(/^(h|j)el/) and true");
        yes("{{missing}} matches undefined");
        yes("{{list}} matches \"1,2\"");
    }

    #[test]
    fn paths_inside_expressions() {
        assert_eq!(num("{{nested.deep.x}}"), 42.0);
        assert_eq!(num("{{nested[{{name}}].x}}"), 42.0);
        assert_eq!(num("{{nested[\"deep\"][\"x\"]}}"), 42.0);
        assert_eq!(num("{{list[{{idx}}]}}"), 2.0);
        assert_eq!(num("{{list[1 + 1]}}"), 3.0);
        assert_eq!(num("{{list.0}}"), 1.0);
        assert_eq!(num("{{list.length}}"), 3.0);
        assert_eq!(ev("{{obj[{{b}}]}}"), Value::str("two"));
        assert_eq!(ev("{{t}}"), Value::str("x y\"z'"));
        yes("{{t}} == {{t}}");
    }

    #[test]
    fn literals() {
        assert_eq!(ev("true"), Value::Bool(true));
        assert_eq!(ev("FALSE"), Value::Bool(false));
        assert_eq!(ev("null"), Value::Null);
        assert_eq!(ev("undefined"), Value::Undefined);
        assert_eq!(ev("'a b'"), Value::str("a b"));
        assert_eq!(ev("\"{{x}}\""), Value::str("{{x}}"));
        assert_eq!(ev("hello"), Value::str("hello"));
        assert_eq!(ev("-2.5"), Value::Number(-2.5));
    }

    #[test]
    fn syntax_errors_report_columns() {
        assert_eq!(syntax_column("1 +"), 4);
        assert_eq!(syntax_column("(1 + 2"), 7);
        assert_eq!(syntax_column("{{a}} == == 1"), 10);
        assert_eq!(syntax_column("nope(1)"), 1);
        assert_eq!(syntax_column("1 == \"open"), 6);
        assert_eq!(syntax_column("{{ a }}"), 3);
        assert_eq!(syntax_column("hello world"), 7);
        assert_eq!(syntax_column(""), 1);
        assert!(Expr::parse("{{s}} matches regex(/(/)").is_err());
    }

    fn syntax_message(text: &str) -> String {
        match Expr::parse(text) {
            Err(ExprError::Syntax { message, .. }) => message,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn unknown_functions_list_the_valid_ones() {
        let message = syntax_message("rnd(1.5)");
        assert!(
            message.starts_with("Unknown function rnd: expected one of date, rand, round,"),
            "{message}"
        );
        assert!(message.ends_with("; did you mean `rand`?"), "{message}");
        let message = syntax_message("nope(1)");
        assert!(!message.contains("did you mean"), "{message}");
        assert!(message.contains("truncate"), "{message}");
    }

    #[test]
    fn unknown_operators_list_the_valid_ones() {
        let message = syntax_message("{{a}} equal 1");
        assert!(
            message.starts_with("unknown operator `equal`: expected one of ==, ===,"),
            "{message}"
        );
        assert!(message.ends_with("; did you mean `equals`?"), "{message}");
        assert_eq!(syntax_column("{{a}} equal 1"), 7);
        let message = syntax_message("{{a}} & {{b}}");
        assert!(message.ends_with("; did you mean `&&`?"), "{message}");
        let message = syntax_message("{{a}} ?: 1");
        assert!(
            message.starts_with("unknown operator `?:`: expected one of"),
            "{message}"
        );
        assert!(Expr::parse("{{s}} matches regex(/(/)").is_err());
    }

    /// Runs `f` on a thread with a small stack, so any deep recursion left would overflow it.
    /// Half a tokio worker's 2 MiB: unoptimised test builds spend about 12 KiB of stack per
    /// nesting level where release builds spend a few hundred bytes.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap();
    }

    /// Parses, evaluates, clones and drops `text`.
    fn parse_eval_drop(text: &str) -> Result<Value, ExprError> {
        let e = Expr::parse(text)?;
        let copy = e.clone();
        let v = e.eval(&scope());
        drop(e);
        drop(copy);
        v
    }

    fn refused_for_depth(text: &str) -> usize {
        match parse_eval_drop(text) {
            Err(ExprError::Syntax {
                message, column, ..
            }) if message.contains("deeper than 32 levels") => column,
            Err(e) => panic!("{}…: {}", &text[..40], &e.to_string()[..100]),
            Ok(v) => panic!("{}…: {v:?}", &text[..40]),
        }
    }

    #[test]
    fn a_30000_term_chain_is_evaluated_flat_not_overflowed() {
        on_small_stack(|| {
            let chain = |op: &str| vec!["1"; 30_000].join(op);
            assert_eq!(
                parse_eval_drop(&chain("+")).unwrap(),
                Value::Number(30_000.0)
            );
            assert_eq!(
                parse_eval_drop(&chain(" - ")).unwrap(),
                Value::Number(-29_998.0)
            );
            assert_eq!(parse_eval_drop(&chain("*")).unwrap(), Value::Number(1.0));
            assert_eq!(parse_eval_drop(&chain("/")).unwrap(), Value::Number(1.0));
            assert_eq!(parse_eval_drop(&chain("%")).unwrap(), Value::Number(0.0));
            let mixed = vec!["2 * 3 - 1"; 30_000].join(" + ");
            assert_eq!(parse_eval_drop(&mixed).unwrap(), Value::Number(150_000.0));
            let all = vec!["true"; 30_000].join(" and ");
            assert_eq!(parse_eval_drop(&all).unwrap(), Value::Bool(true));
            let any = format!("{} || {{{{s}}}}", vec!["false"; 30_000].join(" || "));
            assert_eq!(parse_eval_drop(&any).unwrap(), Value::str("hello"));
        });
    }

    #[test]
    fn flat_logic_chains_group_to_the_right_and_evaluate_every_operand() {
        // a and (b or c) and (0 or (d and e)): the first deciding operand wins.
        assert_eq!(ev("{{a}} and false or {{s}}"), Value::str("hello"));
        assert_eq!(ev("{{zero}} or {{empty}} and {{a}}"), Value::str(""));
        assert_eq!(ev("1 or 0 and 0"), Value::Number(1.0));
        assert_eq!(ev("0 and 1 or 1"), Value::Number(0.0));
        // The reference evaluates every operand, so a failing one fails the whole chain.
        assert!(Expr::parse("true or round(\"x\")")
            .unwrap()
            .eval(&scope())
            .is_err());
    }

    #[test]
    fn chains_past_max_chain_are_refused() {
        let text = vec!["1"; super::super::parser::MAX_CHAIN + 1].join("+");
        match Expr::parse(&text) {
            Err(ExprError::Syntax { message, .. }) => {
                assert!(message.contains("more than 65536 operands"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_30000_term_comparison_chain_is_refused_not_overflowed() {
        on_small_stack(|| {
            for op in ["==", " < ", "!==", " in ", " matches ", " equals ", ">="] {
                refused_for_depth(&vec!["1"; 30_000].join(op));
            }
        });
    }

    #[test]
    fn nesting_100000_deep_is_refused_not_overflowed() {
        on_small_stack(|| {
            let n = 100_000;
            let wrap = |open: &str, inner: &str, close: &str| {
                format!("{}{inner}{}", open.repeat(n), close.repeat(n))
            };
            assert_eq!(refused_for_depth(&wrap("(", "1", ")")), 34);
            refused_for_depth(&wrap("(1+", "1", ")"));
            refused_for_depth(&wrap("!", "1", ""));
            refused_for_depth(&wrap("- ", "1", ""));
            refused_for_depth(&wrap("not (", "1", ")"));
            refused_for_depth(&wrap("round(", "1", ")"));
            refused_for_depth(&wrap("round(1, ", "1", ")"));
            refused_for_depth(&wrap("{% ", "1", " %}"));
            refused_for_depth(&wrap("{{", "a", "}}"));
            refused_for_depth(&wrap("{{a[", "1", "]}}"));
            // `regex(...)` ends at the first `}}`, so it cannot nest through a path at all.
            let regex = wrap("{{s}} matches regex({{a[", "1", "]}})");
            assert!(matches!(Expr::parse(&regex), Err(ExprError::Syntax { .. })));
            match Template::parse(&format!("x {{% {} %}}", wrap("(", "1", ")"))) {
                Err(ExprError::Syntax { message, .. }) => {
                    assert!(message.contains("deeper than 32"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        });
    }

    #[test]
    fn nesting_at_the_limit_parses_evaluates_and_drops_on_a_small_stack() {
        on_small_stack(|| {
            let n = 32;
            let wrap = |open: &str, inner: &str, close: &str| {
                format!("{}{inner}{}", open.repeat(n), close.repeat(n))
            };
            assert_eq!(
                parse_eval_drop(&wrap("(", "1", ")")).unwrap(),
                Value::Number(1.0)
            );
            refused_for_depth(&format!("({})", wrap("(", "1", ")")));
            let sum = parse_eval_drop(&wrap("(2*1+", "1", ")")).unwrap();
            assert_eq!(sum, Value::Number(65.0));
            let ors = parse_eval_drop(&wrap("(false or ", "1", ")")).unwrap();
            assert_eq!(ors, Value::Number(1.0));
            assert_eq!(
                parse_eval_drop(&wrap("!", "1", "")).unwrap(),
                Value::Bool(true)
            );
            assert_eq!(
                parse_eval_drop(&wrap("- ", "1", "")).unwrap(),
                Value::Number(1.0)
            );
            let calls = parse_eval_drop(&wrap("round(1 + ", "1", ")")).unwrap();
            assert_eq!(calls, Value::Number(33.0));
            let eqs = parse_eval_drop(&vec!["1"; 32].join(" == ")).unwrap();
            assert_eq!(eqs, Value::Bool(true));
            let t = Template::parse(&format!("<{{% {} %}}>", wrap("(", "1 + 1", ")"))).unwrap();
            assert_eq!(t.clone().render(&scope()).unwrap(), Value::str("<2>"));
        });
    }

    #[test]
    fn literal_regexes_over_max_regex_bytes_are_syntax_errors() {
        for text in [
            "{{s}} matches \"(a{1000}){1000}\"",
            "{{s}} matches regex(/(a{1000}){1000}/i)",
        ] {
            match Expr::parse(text) {
                Err(ExprError::Syntax { message, .. }) => {
                    assert!(message.contains("budgets.max_regex_bytes"), "{message}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn huge_numbers_and_division_by_zero_follow_javascript() {
        assert_eq!(num("1e400 * 1"), f64::INFINITY);
        assert_eq!(num("-1e400 * 1"), f64::NEG_INFINITY);
        assert_eq!(num("\"1e400\" * 1"), f64::INFINITY);
        assert_eq!(num("1/0"), f64::INFINITY);
        assert_eq!(num("-1/0"), f64::NEG_INFINITY);
        assert!(num("0/0").is_nan());
        assert!(num("1 % 0").is_nan());
        assert_eq!(num("99999999999999999999999999999999999999 * 1"), 1e38);
        assert_eq!(ev("1/0 + \"\""), Value::str("Infinity"));
        assert_eq!(num("{{list[1e400]}} + 1").to_bits(), f64::NAN.to_bits());
    }

    #[test]
    fn js_equality_helpers() {
        let l = Value::from(json!([1]));
        assert!(loose_eq(&l, &l));
        assert!(loose_eq(&l, &Value::Number(1.0)));
        assert!(loose_eq(&l, &Value::str("1")));
        assert!(!strict_eq(&l, &Value::from(json!([1]))));
        assert!(!strict_eq(
            &Value::Number(f64::NAN),
            &Value::Number(f64::NAN)
        ));
        assert!(loose_eq(&Value::Bool(true), &Value::str("1")));
        assert!(!loose_eq(&Value::Bool(true), &Value::str("true")));
        assert!(loose_eq(
            &Value::from(json!({})),
            &Value::str("[object Object]")
        ));
    }
}
