//! The wording of "did you mean" in automation diagnostics; the nearest name itself is
//! `expr::suggest::closest`, shared with expressions' unknown functions and operators.

use crate::expr::suggest::closest;

/// `; did you mean `x`? expected one of a, b, c` for a name not in `valid`.
pub fn one_of(word: &str, valid: &[&str]) -> String {
    let hint = match closest(word, valid) {
        Some(s) => format!("; did you mean `{s}`?"),
        None => ";".into(),
    };
    format!("{hint} expected one of {}", valid.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_close_choice_then_every_choice() {
        let valid = ["event", "payload", "target", "options", "output"];
        assert_eq!(
            one_of("evnt", &valid),
            "; did you mean `event`? expected one of event, payload, target, options, output"
        );
        assert!(one_of("ouptut", &valid).starts_with("; did you mean `output`?"));
        assert!(one_of("timout", &["timeout", "event"]).starts_with("; did you mean `timeout`?"));
        assert_eq!(one_of("q", &["ab"]), "; expected one of ab");
    }
}
