//! "Did you mean": the valid choices for a misspelt name, and the closest of them.
//!
//! Unknown functions and operators in expressions name what would have been accepted, so a
//! typo is fixed from the message alone. Public so that the automation compiler can word its
//! unknown instructions and fields the same way.

/// `expected one of a, b, c` followed by `; did you mean `x`?` when one choice is close.
pub fn expected_one_of(given: &str, valid: &[&str]) -> String {
    let mut text = format!("expected one of {}", valid.join(", "));
    if let Some(close) = closest(given, valid) {
        text.push_str(&format!("; did you mean `{close}`?"));
    }
    text
}

/// The valid choice nearest to `given`, when it is near enough to be a typo of it: at most one
/// edit for short names, a third of the name's length for longer ones (case is ignored).
/// Between equally near choices, one that starts like `given` wins (`&` means `&&`, not `<`).
pub fn closest<'a>(given: &str, valid: &[&'a str]) -> Option<&'a str> {
    let given = given.to_lowercase();
    let allowed = (given.chars().count() / 3).max(1);
    let first = given.chars().next();
    valid
        .iter()
        .map(|v| {
            let v_lower = v.to_lowercase();
            let other_start = v_lower.chars().next() != first;
            (edits(&given, &v_lower), other_start, *v)
        })
        .filter(|(d, _, _)| *d <= allowed)
        .min_by_key(|(d, other_start, _)| (*d, *other_start))
        .map(|(_, _, v)| v)
}

/// The Levenshtein distance between two texts, in characters.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_finds_its_choice_and_a_stranger_finds_none() {
        let valid = ["set", "emit", "fetch", "wait"];
        assert_eq!(closest("sett", &valid), Some("set"));
        assert_eq!(closest("FETCH", &valid), Some("fetch"));
        assert_eq!(closest("xyz", &valid), None);
        assert_eq!(
            expected_one_of("emt", &valid),
            "expected one of set, emit, fetch, wait; did you mean `emit`?"
        );
        assert_eq!(
            expected_one_of("zzzzzz", &valid),
            "expected one of set, emit, fetch, wait"
        );
    }
}
