//! Finds where a piece of an automation sits in its file.
//!
//! The YAML parser keeps positions only for syntax errors, not for the values it
//! returns, so diagnostics about a value (a bad expression, an instruction) find
//! the value's text in the source. The search moves forward as compilation walks
//! the document in order, which keeps repeated snippets attributed to the right line.
//!
//! Locating stays linear in the file's size: line starts are computed once (a
//! position is a binary search plus a column count from the last position on
//! the same line), and the bytes all searches may scan are bounded by a budget
//! proportional to the file, so snippets that are not in the text verbatim
//! (escaped strings, alias expansions) cannot make each search rescan the file.

/// Bytes every lookup may scan whatever the budget left, so a file whose
/// budget is spent still locates snippets close to the cursor.
const LOOKUP_ALLOWANCE: usize = 1024;
/// Times the file's size that all searches of one file may scan together.
const BUDGET_PER_BYTE: usize = 4;

/// A forward-moving search over one file's text.
pub struct Locator<'a> {
    text: &'a str,
    cursor: usize,
    /// Byte offset of the start of every line, in order.
    line_starts: Vec<usize>,
    /// The last position computed: byte, line index, 1-based column.
    last: (usize, usize, usize),
    /// Bytes searches may still scan beyond their lookup's allowance.
    budget: usize,
    /// What is left of the current lookup's allowance.
    spare: usize,
}

/// Line and column of the node at `path` (keys from the root; list indexes, as digits,
/// are passed over) in a YAML `text`: each key is looked for after the previous one, so
/// the place is that of the deepest key found.
pub fn locate_path(text: &str, path: &[String]) -> (usize, usize) {
    let mut locator = Locator::new(text);
    let mut at = (1, 1);
    for key in path.iter().filter(|k| k.parse::<usize>().is_err()) {
        at = locator.find_key(key);
    }
    at
}

impl<'a> Locator<'a> {
    /// A locator at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(p, _)| p + 1))
            .collect();
        Locator {
            text,
            cursor: 0,
            line_starts,
            last: (0, 0, 1),
            budget: text.len().saturating_mul(BUDGET_PER_BYTE),
            spare: LOOKUP_ALLOWANCE,
        }
    }

    /// Line and column (1-based) of the next occurrence of `needle` at or after the
    /// cursor, moving the cursor there; falls back to the first occurrence in the
    /// file, then to the cursor's own line.
    pub fn find(&mut self, needle: &str) -> (usize, usize) {
        self.spare = LOOKUP_ALLOWANCE;
        let found = self
            .search(self.cursor, needle)
            .or_else(|| self.search(0, needle));
        match found {
            Some(pos) => {
                self.cursor = pos;
                self.position(pos)
            }
            None => self.position(self.cursor),
        }
    }

    /// Line and column of the key `name:` (plain or quoted) at or after the cursor.
    pub fn find_key(&mut self, name: &str) -> (usize, usize) {
        if name.is_empty() {
            return self.find(name);
        }
        self.spare = LOOKUP_ALLOWANCE;
        // One pass over the occurrences of `name`: the first one followed by `:`,
        // or quoted and followed by `:`, is the earliest of the three spellings.
        let step = name.chars().next().map_or(1, char::len_utf8);
        let mut from = self.cursor;
        let mut best = None;
        while let Some(p) = self.search(from, name) {
            let after = &self.text[p + name.len()..];
            if after.starts_with(':') {
                best = Some(p);
                break;
            }
            let quote = self.text[..p].chars().next_back();
            if let Some(q @ ('"' | '\'')) = quote {
                if after.strip_prefix(q).is_some_and(|a| a.starts_with(':')) {
                    best = Some(p - 1);
                    break;
                }
            }
            from = p + step;
        }
        match best {
            Some(pos) => {
                // Past the key: the next lookup is for something after it, and two
                // instructions of the same name must not both land on the first.
                self.cursor = pos + name.len();
                self.position(pos)
            }
            None => self.find(name),
        }
    }

    /// The first occurrence of `needle` at or after byte `from`, scanning no
    /// further than the lookup's allowance and the budget permit.
    fn search(&mut self, from: usize, needle: &str) -> Option<usize> {
        let reach = self
            .spare
            .saturating_add(self.budget)
            .saturating_add(needle.len());
        let mut end = from.saturating_add(reach).min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let found = self.text.get(from..end)?.find(needle).map(|p| p + from);
        let scanned = found.map_or(end - from, |p| p - from);
        let from_budget = scanned.saturating_sub(self.spare);
        self.spare = self.spare.saturating_sub(scanned);
        self.budget = self.budget.saturating_sub(from_budget);
        found
    }

    /// Line and column (1-based) of byte `byte` of the text.
    pub fn position_of(mut self, byte: usize) -> (usize, usize) {
        self.position(byte)
    }

    fn position(&mut self, byte: usize) -> (usize, usize) {
        let line = self.line_starts.partition_point(|&s| s <= byte) - 1;
        let (last_byte, last_line, last_column) = self.last;
        // Positions mostly move forward on the same line; counting from the last
        // one keeps a file written on one long line linear.
        let (from, column) = if line == last_line && byte >= last_byte {
            (last_byte, last_column)
        } else {
            (self.line_starts[line], 1)
        };
        let column = column + self.text[from..byte].chars().count();
        self.last = (byte, line, column);
        (line + 1, column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_forward_and_falls_back() {
        let text = "do:\n  - set: {name: a}\n  - set: {name: b}\n";
        let mut l = Locator::new(text);
        assert_eq!(l.find_key("set"), (2, 5));
        l.find("a}");
        assert_eq!(l.find_key("set"), (3, 5));
        assert_eq!(l.find("do:"), (1, 1));
    }

    #[test]
    fn finds_quoted_keys() {
        let text = "do:\n  - \"set\": {name: a}\n  - 'emit': {event: b}\n  - emitter: x\n";
        let mut l = Locator::new(text);
        assert_eq!(l.find_key("set"), (2, 5));
        assert_eq!(l.find_key("emit"), (3, 5));
        assert_eq!(l.find_key("emitter"), (4, 5));
    }

    /// Line and column by counting from the start, as the locator once did.
    fn naive(text: &str, byte: usize) -> (usize, usize) {
        let before = &text[..byte];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|p| p + 1).unwrap_or(0);
        (line, before[line_start..].chars().count() + 1)
    }

    #[test]
    fn positions_in_a_large_text_match_counting_from_the_start() {
        let mut text = String::from("slug: big\ndo:\n");
        for i in 0..6_000 {
            match i % 4 {
                0 => text.push_str(&format!("  - set: {{name: v{i}, value: '{{{{x}}}}'}}\n")),
                1 => text.push_str(&format!(
                    "  - emit: {{event: é{i}, payload: 'ü {{{{y}}}}'}}\n"
                )),
                2 => text.push_str(&format!("  - 'call{i}': {{a: 1}}\n")),
                _ => text.push_str(&format!(
                    "  - set: {{name: w{i}, value: \"{{{{z}}}}\"}} # é\n"
                )),
            }
        }
        // The same snippets on one long line exercise columns far from a line start.
        text.push_str("long: [");
        for i in 0..1_000 {
            text.push_str(&format!("ñ{i}, "));
        }
        text.push_str("]\n");
        let mut l = Locator::new(&text);
        let mut cursor = 0;
        for i in 0..6_000 {
            let (needle, key) = match i % 4 {
                0 => (format!("v{i},"), false),
                1 => (format!("é{i},"), false),
                2 => (format!("call{i}"), true),
                _ => (format!("w{i},"), false),
            };
            let got = if key {
                l.find_key(&needle)
            } else {
                l.find(&needle)
            };
            let at = text[cursor..].find(&needle).map(|p| p + cursor).unwrap();
            let at = if key { at - 1 } else { at };
            cursor = at;
            assert_eq!(got, naive(&text, at), "needle {needle}");
        }
        for i in 0..1_000 {
            let needle = format!("ñ{i},");
            let at = text[cursor..].find(&needle).map(|p| p + cursor).unwrap();
            cursor = at;
            assert_eq!(l.find(&needle), naive(&text, at), "needle {needle}");
        }
    }

    #[test]
    fn missing_snippets_cost_a_bounded_scan() {
        let text = "do:\n".to_string() + &"  - set: {name: a}\n".repeat(10_000);
        let mut l = Locator::new(&text);
        for _ in 0..10_000 {
            assert_eq!(l.find("absent"), (1, 1));
        }
        // Each miss scanned the file from the cursor and from the start until
        // the budget ran out; after that only the lookup's allowance is scanned.
        assert_eq!(l.budget, 0);
        assert_eq!(l.find_key("set"), (2, 5));
    }
}
