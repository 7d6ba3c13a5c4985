//! Expression evaluation with JavaScript operator semantics (DSUL §5.3):
//! loose and strict equality with objects by identity, relational comparison,
//! `+` concatenation, `in`, `matches` with JavaScript-style regexes.
//!
//! Evaluation holds the execution's [`Budgets`]: no string it builds grows past
//! `max_string_bytes` and no regex it compiles past `max_regex_bytes`.

use super::functions::call;
use super::jsfmt::TooLong;
use super::jsfmt::{
    canonical_index, js_number_to_string, js_str, js_string_to_number, js_to_number, js_to_string,
};
use super::parser::{parse, BinOp, MatchRhs, Node, RegexPart, Seg, VarPath};
use super::{ExprError, Key, Scope};
use crate::limits::{BudgetExceeded, Budgets};
use crate::value::Value;
use regex::Regex;
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;
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

/// What evaluation needs besides the tree.
pub(crate) struct Cx<'a> {
    pub scope: &'a dyn Scope,
    pub text: &'a str,
    pub budgets: &'a Budgets,
}

/// Why a step of evaluation failed: a message for this expression, or a budget.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Becomes an [`ExprError::Eval`] naming the expression.
    Message(String),
    /// Passed on as [`ExprError::Budget`].
    Budget(BudgetExceeded),
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::Message(message)
    }
}

impl From<BudgetExceeded> for Failure {
    fn from(e: BudgetExceeded) -> Failure {
        Failure::Budget(e)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Message(m) => f.write_str(m),
            Failure::Budget(e) => e.fmt(f),
        }
    }
}

/// Refuses a string of `len` bytes when it is over `max_string_bytes`.
pub(crate) fn check_string_len(budgets: &Budgets, len: usize) -> Result<(), BudgetExceeded> {
    if len > budgets.max_string_bytes {
        return Err(string_too_long(budgets, len));
    }
    Ok(())
}

/// The error for a string of `len` bytes, over `max_string_bytes`.
pub(crate) fn string_too_long(budgets: &Budgets, len: usize) -> BudgetExceeded {
    BudgetExceeded::new(
        budgets,
        "max_string_bytes",
        format!("a string of {len} bytes"),
        len as u64,
    )
}

impl Cx<'_> {
    /// An evaluation error for this expression.
    pub fn fail(&self, message: impl Into<String>) -> ExprError {
        ExprError::Eval {
            message: message.into(),
            text: self.text.to_string(),
        }
    }

    /// The [`ExprError`] for a [`Failure`] in this expression.
    pub fn failure(&self, f: Failure) -> ExprError {
        match f {
            Failure::Message(m) => self.fail(m),
            Failure::Budget(e) => ExprError::Budget(e),
        }
    }

    /// Refuses a produced string of `len` bytes over the `max_string_bytes` budget.
    pub fn check_len(&self, len: usize) -> Result<(), ExprError> {
        check_string_len(self.budgets, len).map_err(ExprError::Budget)
    }

    /// The error for text that went past `max_string_bytes` while being written.
    pub fn too_long(&self, TooLong(len): TooLong) -> ExprError {
        ExprError::Budget(string_too_long(self.budgets, len))
    }

    /// Refuses a produced list or object of `n` entries over the `max_entries` budget.
    pub fn check_entries(&self, n: usize) -> Result<(), ExprError> {
        if n > self.budgets.max_entries {
            return Err(ExprError::Budget(BudgetExceeded::new(
                self.budgets,
                "max_entries",
                format!("a list of {n} entries"),
                n as u64,
            )));
        }
        Ok(())
    }

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

/// The error for a regex source longer than the `max_regex_bytes` budget.
fn regex_too_long(budgets: &Budgets, len: usize) -> Failure {
    Failure::Budget(BudgetExceeded::new(
        budgets,
        "max_regex_bytes",
        format!("a regular expression of {len} bytes"),
        len as u64,
    ))
}

/// A compiled JavaScript regular expression.
#[derive(Debug, Clone)]
pub(crate) struct CompiledRegex(pub Arc<Regex>);

/// Cache key: source, flags and the size limit it was compiled under.
type RegexKey = (String, String, usize);

/// How many compiled patterns one thread keeps; past it the cache starts over. Each
/// may take up to `max_regex_bytes` (plus its lazy DFA's cache), so this many times
/// the default budget is what a tenant feeding distinct patterns can pin per thread.
const REGEX_CACHE_ENTRIES: usize = 64;

/// Longer sources are compiled each time rather than kept, so the cache's text stays small.
const REGEX_CACHE_SOURCE_BYTES: usize = 4096;

thread_local! {
    /// Patterns built at run time (`matches {{var}}`) repeat, so keep their compiled form.
    static REGEX_CACHE: RefCell<HashMap<RegexKey, Arc<Regex>>> = RefCell::new(HashMap::new());
}

impl CompiledRegex {
    /// `new RegExp(source)`.
    pub fn source(source: &str, budgets: &Budgets) -> Result<CompiledRegex, Failure> {
        Self::with_flags(source, "", budgets)
    }

    /// `new RegExp(source, flags)`; `g`, `y`, `u` and `d` do not change a match test.
    /// The source and the compiled program must both fit `max_regex_bytes`.
    pub fn with_flags(
        source: &str,
        flags: &str,
        budgets: &Budgets,
    ) -> Result<CompiledRegex, Failure> {
        let limit = budgets.max_regex_bytes;
        if source.len() > limit {
            return Err(regex_too_long(budgets, source.len()));
        }
        let key = (source.to_string(), flags.to_string(), limit);
        if let Some(re) = REGEX_CACHE.with(|c| c.borrow().get(&key).cloned()) {
            return Ok(CompiledRegex(re));
        }
        let mut builder = regex::RegexBuilder::new(source);
        builder.size_limit(limit).dfa_size_limit(limit);
        for f in flags.chars() {
            match f {
                'i' => builder.case_insensitive(true),
                'm' => builder.multi_line(true),
                's' => builder.dot_matches_new_line(true),
                'g' | 'y' | 'u' | 'd' => &mut builder,
                other => return Err(format!("Invalid regular expression flag `{other}`").into()),
            };
        }
        let re = Arc::new(builder.build().map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => Failure::Budget(BudgetExceeded::new(
                budgets,
                "max_regex_bytes",
                format!("the compiled regular expression /{}/", short(source)),
                limit as u64 + 1,
            )),
            e => Failure::Message(format!(
                "Invalid regular expression /{}/: {e}",
                short(source)
            )),
        })?);
        if source.len() <= REGEX_CACHE_SOURCE_BYTES {
            REGEX_CACHE.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() >= REGEX_CACHE_ENTRIES {
                    c.clear();
                }
                c.insert(key, re.clone());
            });
        }
        Ok(CompiledRegex(re))
    }
}

/// At most the first 100 characters of a pattern, for error messages.
fn short(source: &str) -> std::borrow::Cow<'_, str> {
    match source.char_indices().nth(100) {
        Some((end, _)) => format!("{}…", &source[..end]).into(),
        None => source.into(),
    }
}

/// `regex-parser`: `/source/flags` is a literal, anything else a bare source.
pub(crate) fn compile_regex_literal(
    text: &str,
    budgets: &Budgets,
) -> Result<CompiledRegex, Failure> {
    let t = text.trim();
    if let Some(body) = t.strip_prefix('/') {
        if let Some(slash) = body.rfind('/') {
            let flags = &body[slash + 1..];
            if flags.chars().all(|c| c.is_ascii_alphabetic()) {
                return CompiledRegex::with_flags(&body[..slash], flags, budgets);
            }
        }
    }
    CompiledRegex::source(text, budgets)
}

/// The path key a computed value stands for (`a[{{k}}]`, `a[0]`).
pub(crate) fn key_of_value(v: &Value) -> Key {
    match v {
        Value::Number(n) if *n >= 0.0 && n.fract() == 0.0 && *n < 9_007_199_254_740_992.0 => {
            Key::Index(*n as usize)
        }
        Value::Number(n) => Key::Name(Arc::from(js_number_to_string(*n))),
        Value::String(s) => canonical_index(s).map_or_else(|| Key::Name(s.clone()), Key::Index),
        other => Key::Name(Arc::from(js_to_string(other))),
    }
}

/// JavaScript `ToPrimitive`: lists and objects become their string form.
fn to_primitive(v: &Value) -> Value {
    match v {
        Value::List(_) | Value::Object(_) => Value::str(js_to_string(v)),
        other => other.clone(),
    }
}

/// JavaScript's abstract relational comparison; `None` when a side is NaN.
pub(crate) fn js_compare(l: &Value, r: &Value) -> Option<Ordering> {
    let (l, r) = (to_primitive(l), to_primitive(r));
    if let (Value::String(a), Value::String(b)) = (&l, &r) {
        return Some(a.encode_utf16().cmp(b.encode_utf16()));
    }
    js_to_number(&l).partial_cmp(&js_to_number(&r))
}

/// `x in y` as the reference computes it (DSUL §5.3); any error is false.
fn js_in(x: &Value, y: &Value) -> bool {
    match y {
        Value::String(s) if !s.is_empty() => {
            let x_nan = js_to_number(x).is_nan();
            s.split(',').any(|part| {
                let item = if x_nan || js_string_to_number(part).is_nan() {
                    Value::str(part)
                } else {
                    Value::Number(super::jsfmt::js_parse_int(part))
                };
                same_value_zero(&item, x)
            })
        }
        Value::List(items) => items.iter().any(|i| same_value_zero(i, x)),
        Value::Object(map) => map.contains_key(js_to_string(x).as_str()),
        _ => false,
    }
}

/// `Array.prototype.includes` equality: strict, but NaN equals NaN.
fn same_value_zero(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_nan() && y.is_nan() => true,
        _ => strict_eq(a, b),
    }
}

/// JavaScript `===`; lists and objects are equal only when they are the same value.
pub fn strict_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Undefined, Value::Undefined) | (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Number(x), Value::Number(y)) => x == y,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::List(x), Value::List(y)) => Arc::ptr_eq(x, y),
        (Value::Object(x), Value::Object(y)) => Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// JavaScript `==`; lists and objects are equal only when they are the same value.
pub fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Undefined | Value::Null, Value::Undefined | Value::Null) => true,
        (Value::Undefined | Value::Null, _) | (_, Value::Undefined | Value::Null) => false,
        (Value::Number(x), Value::String(s)) | (Value::String(s), Value::Number(x)) => {
            *x == js_string_to_number(s)
        }
        (Value::Bool(x), other) | (other, Value::Bool(x)) if !matches!(other, Value::Bool(_)) => {
            loose_eq(&Value::Number(f64::from(u8::from(*x))), other)
        }
        (Value::List(_) | Value::Object(_), Value::Number(_) | Value::String(_)) => {
            loose_eq(&to_primitive(a), b)
        }
        (Value::Number(_) | Value::String(_), Value::List(_) | Value::Object(_)) => {
            loose_eq(a, &to_primitive(b))
        }
        _ => strict_eq(a, b),
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
        match Expr::parse("nope(1)") {
            Err(ExprError::Syntax { message, .. }) => assert_eq!(message, "Unknown function nope"),
            other => panic!("{other:?}"),
        }
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
    fn regex_cache_stays_bounded() {
        let budgets = Budgets::default();
        for i in 0..1000 {
            CompiledRegex::source(&format!("^x{i}$"), &budgets).unwrap();
        }
        // Past the source bound a pattern is compiled but not kept.
        CompiledRegex::source(&"y".repeat(REGEX_CACHE_SOURCE_BYTES + 1), &budgets).unwrap();
        let (entries, longest) = REGEX_CACHE.with(|c| {
            let c = c.borrow();
            (c.len(), c.keys().map(|k| k.0.len()).max().unwrap_or(0))
        });
        assert!(entries <= REGEX_CACHE_ENTRIES, "{entries}");
        assert!(longest <= REGEX_CACHE_SOURCE_BYTES, "{longest}");
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
