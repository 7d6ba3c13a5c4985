//! Tokenizer for DSUL expressions (DSUL §5.1).
//!
//! It follows the reference's token order, with sluice's deliberate changes
//! (§10.20): keywords only match whole words (`india` stays one bare word) and
//! operators need no surrounding spaces. Inside `{{ }}` it switches to a path
//! mode; `regex(...)` is captured as one token whose content the parser splits.

use super::suggest::expected_one_of;
use super::ExprError;

/// A token kind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Dot,
    LBracket,
    RBracket,
    Comma,
    LParen,
    RParen,
    ExprOpen,
    ExprClose,
    VarOpen,
    VarClose,
    Number(f64),
    Str(String),
    Word(String),
    /// `regex(`; the content spans `start..end` bytes of the source.
    Regex {
        start: usize,
        end: usize,
    },
    Matches,
    NotMatches,
    LooseEq,
    StrictEq,
    StrictNe,
    NotEquals,
    Lt,
    Le,
    Gt,
    Ge,
    Bang,
    Exists,
    NotExists,
    In,
    NotIn,
    And,
    Or,
    Null,
    Undefined,
    True,
    False,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
}

/// A token with its start offset in the source and whether blanks preceded it.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub tok: Tok,
    pub start: usize,
    pub space_before: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Main,
    /// Main mode opened by `[` inside a path; `]` returns to the path.
    Bracket,
    Var,
}

/// Splits `src[start..end]` into tokens.
pub(crate) fn tokenize(src: &str, start: usize, end: usize) -> Result<Vec<Token>, ExprError> {
    let mut lx = Lexer {
        src,
        pos: start,
        end,
        modes: vec![Mode::Main],
        out: Vec::new(),
    };
    lx.run()?;
    Ok(lx.out)
}

/// A word where an operator belongs (`{{a}} equal 1`): names the operators it could have meant.
pub(crate) fn unknown_operator(src: &str, at: usize, given: &str) -> ExprError {
    let valid = expected_one_of(given, &OPERATORS);
    syntax_error(src, at, format!("unknown operator `{given}`: {valid}"))
}

/// Every binary and postfix operator, as written in expressions.
const OPERATORS: [&str; 25] = [
    "==",
    "===",
    "!=",
    "!==",
    "<",
    "<=",
    ">",
    ">=",
    "and",
    "or",
    "&&",
    "||",
    "equals",
    "not equals",
    "in",
    "not in",
    "matches",
    "not matches",
    "exists",
    "not exists",
    "+",
    "-",
    "*",
    "/",
    "%",
];

/// A syntax error at byte offset `at` of `src`.
pub(crate) fn syntax_error(src: &str, at: usize, message: impl Into<String>) -> ExprError {
    let at = at.min(src.len());
    let column = src.get(..at).map_or(at, |s| s.chars().count()) + 1;
    ExprError::Syntax {
        message: message.into(),
        text: src.to_string(),
        column,
    }
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    end: usize,
    modes: Vec<Mode>,
    out: Vec<Token>,
}

const WORD_OPERATORS: [(&str, Tok); 10] = [
    ("matches", Tok::Matches),
    ("equals", Tok::LooseEq),
    ("exists", Tok::Exists),
    ("in", Tok::In),
    ("and", Tok::And),
    ("or", Tok::Or),
    ("null", Tok::Null),
    ("undefined", Tok::Undefined),
    ("true", Tok::True),
    ("false", Tok::False),
];

const SYMBOLS: [(&str, Tok); 19] = [
    ("{%", Tok::ExprOpen),
    ("%}", Tok::ExprClose),
    ("{{", Tok::VarOpen),
    ("===", Tok::StrictEq),
    ("==", Tok::LooseEq),
    ("!==", Tok::StrictNe),
    ("!=", Tok::StrictNe),
    ("=", Tok::LooseEq),
    ("<=", Tok::Le),
    (">=", Tok::Ge),
    ("<", Tok::Lt),
    (">", Tok::Gt),
    ("!", Tok::Bang),
    ("&&", Tok::And),
    ("||", Tok::Or),
    ("+", Tok::Plus),
    ("-", Tok::Minus),
    ("*", Tok::Star),
    ("/", Tok::Slash),
];

fn is_main_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

fn is_path_word_char(c: char) -> bool {
    !(c.is_whitespace() || matches!(c, '.' | '[' | ']' | '{' | '}' | '\'' | '"'))
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.pos..self.end]
    }

    fn mode(&self) -> Mode {
        self.modes.last().copied().unwrap_or(Mode::Main)
    }

    fn push(&mut self, tok: Tok, start: usize, space_before: bool) {
        self.out.push(Token {
            tok,
            start,
            space_before,
        });
    }

    fn run(&mut self) -> Result<(), ExprError> {
        let mut space = false;
        while self.pos < self.end {
            let start = self.pos;
            let rest = self.rest();
            let Some(c) = rest.chars().next() else { break };
            if self.mode() == Mode::Var {
                self.var_token(c, start)?;
                space = false;
                continue;
            }
            if c.is_whitespace() {
                self.pos += c.len_utf8();
                space = true;
                continue;
            }
            self.main_token(c, start, space)?;
            space = false;
        }
        Ok(())
    }

    fn var_token(&mut self, c: char, start: usize) -> Result<(), ExprError> {
        let rest = self.rest();
        let tok = if rest.starts_with("{{") {
            self.pos += 2;
            self.modes.push(Mode::Var);
            Tok::VarOpen
        } else if rest.starts_with("}}") {
            self.pos += 2;
            self.modes.pop();
            Tok::VarClose
        } else {
            match c {
                '.' => {
                    self.pos += 1;
                    Tok::Dot
                }
                '[' => {
                    self.pos += 1;
                    self.modes.push(Mode::Bracket);
                    Tok::LBracket
                }
                '\'' | '"' => self.string(c)?,
                c if is_path_word_char(c) => {
                    let len: usize = rest
                        .chars()
                        .take_while(|c| is_path_word_char(*c))
                        .map(char::len_utf8)
                        .sum();
                    self.pos += len;
                    Tok::Word(rest[..len].to_string())
                }
                _ => {
                    return Err(syntax_error(
                        self.src,
                        start,
                        format!("unexpected `{c}` inside {{{{ }}}}"),
                    ))
                }
            }
        };
        self.push(tok, start, false);
        Ok(())
    }

    fn main_token(&mut self, c: char, start: usize, space: bool) -> Result<(), ExprError> {
        let rest = self.rest();
        let simple = match c {
            '.' => Some(Tok::Dot),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            ',' => Some(Tok::Comma),
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            _ => None,
        };
        if let Some(tok) = simple {
            self.pos += 1;
            if tok == Tok::RBracket && self.mode() == Mode::Bracket {
                self.modes.pop();
            }
            self.push(tok, start, space);
            return Ok(());
        }
        if rest
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("regex("))
        {
            self.pos += 6;
            let content_start = self.pos;
            let content_end = self.regex_end()?;
            self.pos = content_end + 1;
            self.push(
                Tok::Regex {
                    start: content_start,
                    end: content_end,
                },
                start,
                space,
            );
            return Ok(());
        }
        if rest.starts_with("}}") {
            self.pos += 2;
            self.push(Tok::VarClose, start, space);
            return Ok(());
        }
        if c.is_ascii_digit() {
            let tok = self.number_or_word();
            self.push(tok, start, space);
            return Ok(());
        }
        if is_main_word_char(c) {
            let tok = self.word();
            self.push(tok, start, space);
            return Ok(());
        }
        if c == '\'' || c == '"' {
            let tok = self.string(c)?;
            self.push(tok, start, space);
            return Ok(());
        }
        // `%}` must win over the modulo operator.
        if rest.starts_with('%') && !rest.starts_with("%}") {
            self.pos += 1;
            self.push(Tok::Percent, start, space);
            return Ok(());
        }
        for (sym, tok) in SYMBOLS.iter() {
            if rest.starts_with(sym) {
                self.pos += sym.len();
                if *tok == Tok::VarOpen {
                    self.modes.push(Mode::Var);
                }
                self.push(tok.clone(), start, space);
                return Ok(());
            }
        }
        // A run of operator characters that is no operator (`&`, `=>`, `?:`): name the real ones.
        const OPERATOR_CHARS: &str = "&|^~?:=<>!";
        if "&|^~?:".contains(c) {
            let run: String = rest
                .chars()
                .take_while(|c| OPERATOR_CHARS.contains(*c))
                .collect();
            return Err(unknown_operator(self.src, start, &run));
        }
        Err(syntax_error(self.src, start, format!("unexpected `{c}`")))
    }

    fn string(&mut self, quote: char) -> Result<Tok, ExprError> {
        let start = self.pos;
        let body = &self.src[start + 1..self.end];
        match body.find([quote, '\n']) {
            Some(i) if body[i..].starts_with(quote) => {
                self.pos = start + 1 + i + 1;
                Ok(Tok::Str(body[..i].to_string()))
            }
            _ => Err(syntax_error(self.src, start, "unterminated string")),
        }
    }

    fn word_len(&self) -> usize {
        self.rest()
            .chars()
            .take_while(|c| is_main_word_char(*c))
            .map(char::len_utf8)
            .sum()
    }

    fn number_or_word(&mut self) -> Tok {
        let rest = self.rest();
        let b = rest.as_bytes();
        let mut i = 0;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
            i += 1;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
        }
        // `1st` or `2fa` is one bare word, not a number glued to a word.
        if rest[i..].chars().next().is_some_and(is_main_word_char) && !rest[..i].contains('.') {
            return self.word();
        }
        self.pos += i;
        Tok::Number(rest[..i].parse().unwrap_or(f64::NAN))
    }

    fn word(&mut self) -> Tok {
        let len = self.word_len();
        let word = &self.rest()[..len];
        if word.eq_ignore_ascii_case("not") {
            if let Some(tok) = self.not_operator(len) {
                return tok;
            }
        }
        let tok = WORD_OPERATORS
            .iter()
            .find(|(w, _)| word.eq_ignore_ascii_case(w))
            .map(|(_, t)| t.clone())
            .unwrap_or_else(|| Tok::Word(word.to_string()));
        self.pos += len;
        tok
    }

    /// `not matches`, `not equals`, `not in`, `not exists` (blanks between).
    fn not_operator(&mut self, not_len: usize) -> Option<Tok> {
        let after = &self.rest()[not_len..];
        let trimmed = after.trim_start_matches([' ', '\t']);
        if trimmed.len() == after.len() {
            return None;
        }
        let next_len: usize = trimmed
            .chars()
            .take_while(|c| is_main_word_char(*c))
            .map(char::len_utf8)
            .sum();
        let next = &trimmed[..next_len];
        let tok = [
            ("matches", Tok::NotMatches),
            ("equals", Tok::NotEquals),
            ("in", Tok::NotIn),
            ("exists", Tok::NotExists),
        ]
        .into_iter()
        .find(|(w, _)| next.eq_ignore_ascii_case(w))
        .map(|(_, t)| t)?;
        self.pos += not_len + (after.len() - trimmed.len()) + next_len;
        Some(tok)
    }

    /// The byte offset of the `)` closing a `regex(`: the first `)` after a
    /// `/.../flags` literal, or the first unbalanced `)`; `{{ }}` variables,
    /// escapes and character classes are skipped.
    fn regex_end(&self) -> Result<usize, ExprError> {
        let s = &self.src[..self.end];
        let b = s.as_bytes();
        let mut i = self.pos;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let mut in_literal = b.get(i) == Some(&b'/');
        if in_literal {
            i += 1;
        }
        let mut in_class = false;
        let mut depth = 0usize;
        while i < b.len() {
            if b[i..].starts_with(b"{{") {
                match s[i..].find("}}") {
                    Some(j) => {
                        i += j + 2;
                        continue;
                    }
                    None => break,
                }
            }
            match b[i] {
                b'\\' => i += 1,
                b'[' if !in_class => in_class = true,
                b']' if in_class => in_class = false,
                _ if in_class => {}
                b'/' if in_literal => in_literal = false,
                _ if in_literal => {}
                b'(' => depth += 1,
                b')' if depth == 0 => return Ok(i),
                b')' => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        Err(syntax_error(self.src, self.pos, "unterminated regex("))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        tokenize(s, 0, s.len())
            .unwrap()
            .into_iter()
            .map(|t| t.tok)
            .collect()
    }

    #[test]
    fn keywords_are_whole_words_and_case_insensitive() {
        assert_eq!(
            toks("india AND index Or"),
            vec![
                Tok::Word("india".into()),
                Tok::And,
                Tok::Word("index".into()),
                Tok::Or
            ]
        );
        assert_eq!(
            toks("a NOT  in b not equals c not exists"),
            vec![
                Tok::Word("a".into()),
                Tok::NotIn,
                Tok::Word("b".into()),
                Tok::NotEquals,
                Tok::Word("c".into()),
                Tok::NotExists
            ]
        );
        assert_eq!(toks("not (x)")[0], Tok::Word("not".into()));
    }

    #[test]
    fn symbols_numbers_and_paths() {
        assert_eq!(
            toks("{{a.b[0]}}>=1.5"),
            vec![
                Tok::VarOpen,
                Tok::Word("a".into()),
                Tok::Dot,
                Tok::Word("b".into()),
                Tok::LBracket,
                Tok::Number(0.0),
                Tok::RBracket,
                Tok::VarClose,
                Tok::Ge,
                Tok::Number(1.5)
            ]
        );
        assert_eq!(
            toks("1 !== 2 != 3 === 4 = 5 % 6"),
            vec![
                Tok::Number(1.0),
                Tok::StrictNe,
                Tok::Number(2.0),
                Tok::StrictNe,
                Tok::Number(3.0),
                Tok::StrictEq,
                Tok::Number(4.0),
                Tok::LooseEq,
                Tok::Number(5.0),
                Tok::Percent,
                Tok::Number(6.0)
            ]
        );
        assert_eq!(toks("1st"), vec![Tok::Word("1st".into())]);
        assert_eq!(toks("{{$index}}")[1], Tok::Word("$index".into()));
    }

    #[test]
    fn regex_tokens_span_their_content() {
        let s = "{{s}} matches regex(/^(a|b)\\)$/i) and x";
        let t = tokenize(s, 0, s.len()).unwrap();
        let Tok::Regex { start, end } = t[4].tok else {
            panic!("{:?}", t[4])
        };
        assert_eq!(&s[start..end], "/^(a|b)\\)$/i");
        assert_eq!(t[5].tok, Tok::And);
        let s = "x matches regex(a(b)c)";
        let t = tokenize(s, 0, s.len()).unwrap();
        let Tok::Regex { start, end } = t[2].tok else {
            panic!()
        };
        assert_eq!(&s[start..end], "a(b)c");
    }

    #[test]
    fn errors_have_columns() {
        match tokenize("a == 'open", 0, 10) {
            Err(ExprError::Syntax { column, .. }) => assert_eq!(column, 6),
            other => panic!("{other:?}"),
        }
        match tokenize("{{a b}}", 0, 7) {
            Err(ExprError::Syntax { column, .. }) => assert_eq!(column, 4),
            other => panic!("{other:?}"),
        }
    }
}
