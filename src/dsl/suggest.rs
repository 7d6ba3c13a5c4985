//! "Did you mean" for misspelt names: the closest valid name by edit distance,
//! so a diagnostic about `sett` or `evnt` names the fix as well as the mistake.

/// Edits (insert, delete, replace a character) that turn `a` into `b`.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate closest to `word`, when it is close enough to be a typo: at
/// most a third of the word's characters differ (and at least one may).
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let allowed = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (distance(word, c), *c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `; did you mean `x`? expected one of a, b, c` for a name not in `valid`.
pub fn one_of(word: &str, valid: &[&str]) -> String {
    let hint = match did_you_mean(word, valid) {
        Some(s) => format!("; did you mean `{s}`?"),
        None => ";".into(),
    };
    format!("{hint} expected one of {}", valid.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("sett", "set"), 1);
        assert_eq!(distance("evnt", "event"), 1);
        assert_eq!(distance("timout", "timeout"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggests_only_close_names() {
        let valid = ["event", "payload", "target", "options", "output"];
        assert_eq!(did_you_mean("evnt", &valid), Some("event"));
        assert_eq!(did_you_mean("ouptut", &valid), Some("output"));
        assert_eq!(did_you_mean("zzz", &valid), None);
        assert_eq!(
            one_of("evnt", &valid),
            "; did you mean `event`? expected one of event, payload, target, options, output"
        );
        assert_eq!(one_of("q", &["ab"]), "; expected one of ab");
    }
}
