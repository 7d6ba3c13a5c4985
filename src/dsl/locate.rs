//! Finds where a piece of an automation sits in its file.
//!
//! The YAML parser keeps positions only for syntax errors, not for the values it
//! returns, so diagnostics about a value (a bad expression, an instruction) find
//! the value's text in the source. The search moves forward as compilation walks
//! the document in order, which keeps repeated snippets attributed to the right line.

/// A forward-moving search over one file's text.
pub struct Locator<'a> {
    text: &'a str,
    cursor: usize,
}

impl<'a> Locator<'a> {
    /// A locator at the start of `text`.
    pub fn new(text: &'a str) -> Self {
        Locator { text, cursor: 0 }
    }

    /// Line and column (1-based) of the next occurrence of `needle` at or after the
    /// cursor, moving the cursor there; falls back to the first occurrence in the
    /// file, then to the cursor's own line.
    pub fn find(&mut self, needle: &str) -> (usize, usize) {
        let found = self.text[self.cursor..]
            .find(needle)
            .map(|p| p + self.cursor)
            .or_else(|| self.text.find(needle));
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
        let candidates = [
            format!("{name}:"),
            format!("\"{name}\":"),
            format!("'{name}':"),
        ];
        let rest = &self.text[self.cursor..];
        let best = candidates
            .iter()
            .filter_map(|c| rest.find(c.as_str()))
            .min()
            .map(|p| p + self.cursor);
        match best {
            Some(pos) => {
                self.cursor = pos;
                self.position(pos)
            }
            None => self.find(name),
        }
    }

    fn position(&self, byte: usize) -> (usize, usize) {
        let before = &self.text[..byte];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|p| p + 1).unwrap_or(0);
        (line, before[line_start..].chars().count() + 1)
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
}
