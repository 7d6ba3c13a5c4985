//! JavaScript regular expressions (`matches`, `$regex`): compiled within the
//! `max_regex_bytes` budget and cached per thread, since patterns built at run time repeat.

use super::cx::Failure;
use crate::budgets::{BudgetExceeded, Budgets};
use regex::Regex;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

/// The error for a regex source longer than the `max_regex_bytes` budget.
pub(crate) fn regex_too_long(budgets: &Budgets, len: usize) -> Failure {
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
    pub(super) fn source(source: &str, budgets: &Budgets) -> Result<CompiledRegex, Failure> {
        Self::with_flags(source, "", budgets)
    }

    /// `new RegExp(source, flags)`; `g`, `y`, `u` and `d` do not change a match test.
    /// The source and the compiled program must both fit `max_regex_bytes`.
    pub(super) fn with_flags(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
