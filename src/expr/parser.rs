//! Recursive-descent parser for DSUL expressions (DSUL §5.2) into [`Node`] trees.
//!
//! Precedence, loosest first: `and`/`or` (one level, right-grouped), equality
//! family (`==`, `in`, `matches`, `exists`, right-grouped), relational
//! (right-grouped), `+ -`, `* / %`, prefix `!`/`not (`/`-`, primaries. Static
//! parts (variable paths, literal regexes) are resolved here so evaluation does
//! no text work.
//!
//! Expressions are tenant input, so no tree may be deep enough to overflow a
//! stack when it is parsed, evaluated, cloned or dropped: `and`/`or` and
//! `+ - * / %` chains become flat nodes (bounded in length), and every other
//! nesting (parentheses, calls, `{{ }}`, `{% %}`, prefix operators, comparison
//! chains) counts against [`MAX_DEPTH`].

use super::functions::Func;
use super::jsfmt::canonical_index;
use super::lexer::{syntax_error, tokenize, unknown_operator, Tok, Token};
use super::path::key_of_value;
use super::regex::{compile_regex_literal, CompiledRegex};
use super::suggest::expected_one_of;
use super::{ExprError, Key};
use crate::budgets::Budgets;
use crate::value::Value;
use std::sync::Arc;

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BinOp {
    And,
    Or,
    LooseEq,
    StrictEq,
    StrictNe,
    LooseNe,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// An expression tree node.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Lit(Value),
    Var(VarPath),
    Not(Box<Node>),
    Neg(Box<Node>),
    Bin(BinOp, Box<Node>, Box<Node>),
    /// A left-grouped `+ - * / %` chain: `first op1 x1 op2 x2 …`, kept flat so
    /// that a long chain is not a deep tree.
    Arith(Box<Node>, Vec<(BinOp, Node)>),
    /// A right-grouped `and`/`or` chain, flat for the same reason.
    Logic(Box<Node>, Vec<(BinOp, Node)>),
    /// `x exists` (`negate` for `not exists`).
    Exists(Box<Node>, bool),
    /// `x matches y` (`negate` for `not matches`).
    Matches(Box<Node>, MatchRhs, bool),
    Call(Call),
}

/// The right side of `matches`.
#[derive(Debug, Clone)]
pub(crate) enum MatchRhs {
    /// Any expression, evaluated then used as `String(x).match(y)` does.
    Value(Box<Node>),
    /// A literal pattern compiled at parse time (a quoted string or a plain `regex(...)`).
    Compiled(CompiledRegex),
    /// A `regex(...)` with `{{ }}` inside: text and variables joined at run time.
    Parts(Vec<RegexPart>),
}

/// A piece of a `regex(...)` with variables.
#[derive(Debug, Clone)]
pub(crate) enum RegexPart {
    Text(String),
    Var(VarPath),
}

/// A `{{path}}` inside an expression.
#[derive(Debug, Clone)]
pub(crate) struct VarPath {
    pub segs: Vec<Seg>,
    /// The keys when no segment is dynamic, so lookups need no work.
    pub keys: Option<Vec<Key>>,
}

/// One step of a [`VarPath`].
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    Key(Key),
    Dyn(Node),
}

/// A function call.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    pub func: Func,
    pub args: Vec<Node>,
    pub field: Option<String>,
}

/// Parses `src[start..end]`; errors carry columns in the whole of `src`.
pub(crate) fn parse(src: &str, start: usize, end: usize) -> Result<Node, ExprError> {
    parse_at(src, start, end, 0)
}

/// [`parse`] for text nested `depth` levels inside another expression (a `regex(...)` part).
fn parse_at(src: &str, start: usize, end: usize, depth: usize) -> Result<Node, ExprError> {
    let toks = tokenize(src, start, end)?;
    let mut p = Parser {
        src,
        toks,
        pos: 0,
        end,
        depth,
    };
    if p.toks.is_empty() {
        return Err(syntax_error(src, start, "empty expression"));
    }
    let node = p.boolean()?;
    match p.peek() {
        None => Ok(node),
        Some(Token {
            tok: Tok::Word(word),
            start,
            ..
        }) => Err(unknown_operator(src, *start, word)),
        Some(t) => Err(syntax_error(src, t.start, "unexpected token")),
    }
}

struct Parser<'a> {
    src: &'a str,
    toks: Vec<Token>,
    pos: usize,
    end: usize,
    depth: usize,
}

/// Nesting beyond this is refused so that hostile input cannot overflow the stack.
pub(crate) const MAX_DEPTH: usize = 32;

/// The most operands of one `and`/`or` or arithmetic chain; far beyond any real condition,
/// it keeps one expression's evaluation time proportionate.
pub(crate) const MAX_CHAIN: usize = 65_536;

fn key_of_word(w: &str) -> Key {
    canonical_index(w).map_or_else(|| Key::Name(Arc::from(w)), Key::Index)
}

/// One operand alone, or the flat chain of several.
fn arith(first: Node, rest: Vec<(BinOp, Node)>) -> Node {
    if rest.is_empty() {
        first
    } else {
        Node::Arith(Box::new(first), rest)
    }
}

impl Parser<'_> {
    /// Runs `f` one nesting level deeper, refusing excessive depth.
    fn nested<T>(&mut self, f: fn(&mut Self) -> Result<T, ExprError>) -> Result<T, ExprError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.too_deep());
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    // Kept out of line: every nesting level passes through `nested`, and a debug build gives
    // each function a stack slot for every temporary, formatting ones included.
    #[cold]
    #[inline(never)]
    fn too_deep(&self) -> ExprError {
        self.error(&format!(
            "expression nests deeper than {MAX_DEPTH} levels (parentheses, calls, `{{{{ }}}}`, prefix or comparison operators)"
        ))
    }

    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn peek_tok(&self) -> Option<&Tok> {
        self.peek().map(|t| &t.tok)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Token> {
        self.toks.get(self.pos + ahead)
    }

    fn here(&self) -> usize {
        self.peek().map_or(self.end, |t| t.start)
    }

    fn error(&self, message: &str) -> ExprError {
        let message = if self.peek().is_none() {
            format!("{message}, found the end")
        } else {
            message.to_string()
        };
        syntax_error(self.src, self.here(), message)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<(), ExprError> {
        if self.peek_tok() == Some(tok) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {what}")))
        }
    }

    /// Refuses a chain that already has [`MAX_CHAIN`] operands.
    fn chain_room(&self, operands: usize) -> Result<(), ExprError> {
        if operands >= MAX_CHAIN {
            return Err(self.error(&format!(
                "expression chains more than {MAX_CHAIN} operands with `and`/`or` or arithmetic operators"
            )));
        }
        Ok(())
    }

    fn boolean(&mut self) -> Result<Node, ExprError> {
        let first = self.equality()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek_tok() {
                Some(Tok::And) => BinOp::And,
                Some(Tok::Or) => BinOp::Or,
                _ => break,
            };
            self.chain_room(rest.len() + 1)?;
            self.pos += 1;
            rest.push((op, self.equality()?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Node::Logic(Box::new(first), rest)
        })
    }

    /// An operand on the right of a right-grouped operator, one level deeper.
    fn equality_nested(&mut self) -> Result<Node, ExprError> {
        self.nested(Self::equality)
    }

    fn equality(&mut self) -> Result<Node, ExprError> {
        let left = self.relational()?;
        let op = match self.peek_tok() {
            Some(Tok::LooseEq) => BinOp::LooseEq,
            Some(Tok::StrictEq) => BinOp::StrictEq,
            Some(Tok::StrictNe) => BinOp::StrictNe,
            Some(Tok::NotEquals) => BinOp::LooseNe,
            Some(Tok::In) => BinOp::In,
            Some(Tok::NotIn) => BinOp::NotIn,
            Some(Tok::Exists | Tok::NotExists) => {
                let negate = self.next().is_some_and(|t| t.tok == Tok::NotExists);
                return Ok(Node::Exists(Box::new(left), negate));
            }
            Some(Tok::Matches | Tok::NotMatches) => {
                let negate = self.next().is_some_and(|t| t.tok == Tok::NotMatches);
                let rhs = self.match_rhs()?;
                return Ok(Node::Matches(Box::new(left), rhs, negate));
            }
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.equality_nested()?;
        Ok(Node::Bin(op, Box::new(left), Box::new(right)))
    }

    fn match_rhs(&mut self) -> Result<MatchRhs, ExprError> {
        if let Some(Tok::Regex { start, end }) = self.peek_tok().cloned() {
            self.pos += 1;
            return self.regex_parts(start, end);
        }
        let at = self.here();
        let right = self.equality_nested()?;
        if let Node::Lit(Value::String(s)) = &right {
            // Literal patterns are compiled once, under the default budgets.
            return match CompiledRegex::source(s, &Budgets::default()) {
                Ok(re) => Ok(MatchRhs::Compiled(re)),
                Err(e) => Err(syntax_error(self.src, at, e.to_string())),
            };
        }
        Ok(MatchRhs::Value(Box::new(right)))
    }

    /// Splits `regex(...)` content into text and `{{ }}` variables.
    fn regex_parts(&self, start: usize, end: usize) -> Result<MatchRhs, ExprError> {
        let content = &self.src[start..end];
        let mut parts = Vec::new();
        let mut text_start = 0;
        let mut i = 0;
        while let Some(open) = content[i..].find("{{") {
            let open = i + open;
            let close = content[open..]
                .find("}}")
                .map(|c| open + c + 2)
                .ok_or_else(|| syntax_error(self.src, start + open, "unterminated {{"))?;
            if open > text_start {
                parts.push(RegexPart::Text(content[text_start..open].to_string()));
            }
            if self.depth >= MAX_DEPTH {
                return Err(self.too_deep());
            }
            match parse_at(self.src, start + open, start + close, self.depth + 1)? {
                Node::Var(path) => parts.push(RegexPart::Var(path)),
                _ => return Err(syntax_error(self.src, start + open, "expected a variable")),
            }
            text_start = close;
            i = close;
        }
        if parts.is_empty() {
            return compile_regex_literal(content, &Budgets::default())
                .map(MatchRhs::Compiled)
                .map_err(|e| syntax_error(self.src, start, e.to_string()));
        }
        if text_start < content.len() {
            parts.push(RegexPart::Text(content[text_start..].to_string()));
        }
        Ok(MatchRhs::Parts(parts))
    }

    fn relational(&mut self) -> Result<Node, ExprError> {
        let left = self.additive()?;
        let op = match self.peek_tok() {
            Some(Tok::Lt) => BinOp::Lt,
            Some(Tok::Le) => BinOp::Le,
            Some(Tok::Gt) => BinOp::Gt,
            Some(Tok::Ge) => BinOp::Ge,
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.nested(Self::relational)?;
        Ok(Node::Bin(op, Box::new(left), Box::new(right)))
    }

    fn additive(&mut self) -> Result<Node, ExprError> {
        let first = self.multiplicative()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek_tok() {
                Some(Tok::Plus) => BinOp::Add,
                Some(Tok::Minus) => BinOp::Sub,
                _ => break,
            };
            self.chain_room(rest.len() + 1)?;
            self.pos += 1;
            rest.push((op, self.multiplicative()?));
        }
        Ok(arith(first, rest))
    }

    fn multiplicative(&mut self) -> Result<Node, ExprError> {
        let first = self.unary()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek_tok() {
                Some(Tok::Star) => BinOp::Mul,
                Some(Tok::Slash) => BinOp::Div,
                Some(Tok::Percent) => BinOp::Mod,
                _ => break,
            };
            self.chain_room(rest.len() + 1)?;
            self.pos += 1;
            rest.push((op, self.unary()?));
        }
        Ok(arith(first, rest))
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        match self.peek_tok() {
            Some(Tok::Bang) => {
                self.pos += 1;
                Ok(Node::Not(Box::new(self.nested(Self::additive)?)))
            }
            // `not (expr)`: documented negation the reference lacks (DSUL §10.2).
            Some(Tok::Word(w))
                if w.eq_ignore_ascii_case("not")
                    && self.peek_at(1).is_some_and(|t| t.tok == Tok::LParen) =>
            {
                self.pos += 1;
                Ok(Node::Not(Box::new(self.nested(Self::additive)?)))
            }
            Some(Tok::Minus) => {
                self.pos += 1;
                match self.peek() {
                    Some(Token {
                        tok: Tok::Number(n),
                        space_before: false,
                        ..
                    }) => {
                        let n = -*n;
                        self.pos += 1;
                        Ok(Node::Lit(Value::Number(n)))
                    }
                    _ => Ok(Node::Neg(Box::new(self.nested(Self::unary)?))),
                }
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let Some(token) = self.next() else {
            return Err(self.error("expected a value"));
        };
        Ok(match token.tok {
            Tok::Number(n) => Node::Lit(Value::Number(n)),
            Tok::Str(s) => Node::Lit(Value::str(s)),
            Tok::True => Node::Lit(Value::Bool(true)),
            Tok::False => Node::Lit(Value::Bool(false)),
            Tok::Null => Node::Lit(Value::Null),
            Tok::Undefined => Node::Lit(Value::Undefined),
            Tok::Word(w) => {
                let is_call = self
                    .peek()
                    .is_some_and(|t| t.tok == Tok::LParen && !t.space_before);
                if is_call {
                    self.call(&w, token.start)?
                } else {
                    Node::Lit(Value::str(w))
                }
            }
            Tok::VarOpen => Node::Var(self.var_path()?),
            Tok::LParen => {
                let inner = self.nested(Self::boolean)?;
                self.expect(&Tok::RParen, "`)`")?;
                inner
            }
            Tok::ExprOpen => {
                let inner = self.nested(Self::boolean)?;
                self.expect(&Tok::ExprClose, "`%}`")?;
                inner
            }
            _ => {
                self.pos -= 1;
                return Err(self.error("expected a value"));
            }
        })
    }

    fn call(&mut self, name: &str, at: usize) -> Result<Node, ExprError> {
        let func = Func::from_name(name).ok_or_else(|| {
            let valid = expected_one_of(name, &Func::names());
            syntax_error(self.src, at, format!("Unknown function {name}: {valid}"))
        })?;
        self.expect(&Tok::LParen, "`(`")?;
        let mut args = Vec::new();
        if self.peek_tok() == Some(&Tok::RParen) {
            self.pos += 1;
        } else {
            loop {
                self.chain_room(args.len())?;
                args.push(self.nested(Self::boolean)?);
                match self.next().map(|t| t.tok) {
                    Some(Tok::Comma) => continue,
                    Some(Tok::RParen) => break,
                    _ => {
                        self.pos -= 1;
                        return Err(self.error("expected `,` or `)`"));
                    }
                }
            }
        }
        let mut field = None;
        if let (Some(dot), Some(word)) = (self.peek(), self.peek_at(1)) {
            if dot.tok == Tok::Dot && !dot.space_before && !word.space_before {
                if let Tok::Word(w) = &word.tok {
                    field = Some(w.clone());
                    self.pos += 2;
                }
            }
        }
        Ok(Node::Call(Call { func, args, field }))
    }

    /// A path after `{{`, up to and including its `}}`.
    fn var_path(&mut self) -> Result<VarPath, ExprError> {
        self.nested(Self::var_path_inner)
    }

    fn var_path_inner(&mut self) -> Result<VarPath, ExprError> {
        let mut segs = Vec::new();
        match self.next().map(|t| t.tok) {
            Some(Tok::Word(w)) => segs.push(Seg::Key(key_of_word(&w))),
            Some(Tok::VarOpen) => segs.push(Seg::Dyn(Node::Var(self.var_path()?))),
            _ => {
                self.pos -= 1;
                return Err(self.error("expected a variable name"));
            }
        }
        loop {
            match self.next().map(|t| t.tok) {
                Some(Tok::VarClose) => break,
                Some(Tok::Dot) => match self.next().map(|t| t.tok) {
                    Some(Tok::Word(w)) => segs.push(Seg::Key(key_of_word(&w))),
                    _ => {
                        self.pos -= 1;
                        return Err(self.error("expected a key after `.`"));
                    }
                },
                Some(Tok::LBracket) => {
                    let key = self.boolean()?;
                    self.expect(&Tok::RBracket, "`]`")?;
                    segs.push(match key {
                        Node::Lit(v) => Seg::Key(key_of_value(&v)),
                        node => Seg::Dyn(node),
                    });
                }
                _ => {
                    self.pos -= 1;
                    return Err(self.error("expected `.`, `[` or `}}`"));
                }
            }
        }
        let keys = segs
            .iter()
            .map(|s| match s {
                Seg::Key(k) => Some(k.clone()),
                Seg::Dyn(_) => None,
            })
            .collect();
        Ok(VarPath { segs, keys })
    }
}
