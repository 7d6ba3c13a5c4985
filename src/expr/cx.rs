//! What evaluating one expression carries: its scope, its text for error messages and the
//! execution's budgets, and the two ways a step fails (a message or a budget).
//!
//! Kept apart from the evaluator so that the function library, dates, `jsonmatch` and the
//! regex cache can report errors the same way without depending on the evaluator itself.

use super::jsfmt::TooLong;
use super::{ExprError, Scope};
use crate::budgets::{BudgetExceeded, Budgets};

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
    pub(super) fn fail(&self, message: impl Into<String>) -> ExprError {
        ExprError::Eval {
            message: message.into(),
            text: self.text.to_string(),
        }
    }

    /// The [`ExprError`] for a [`Failure`] in this expression.
    pub(super) fn failure(&self, f: Failure) -> ExprError {
        match f {
            Failure::Message(m) => self.fail(m),
            Failure::Budget(e) => ExprError::Budget(e),
        }
    }

    /// Refuses a produced string of `len` bytes over the `max_string_bytes` budget.
    pub(super) fn check_len(&self, len: usize) -> Result<(), ExprError> {
        check_string_len(self.budgets, len).map_err(ExprError::Budget)
    }

    /// The error for text that went past `max_string_bytes` while being written.
    pub(super) fn too_long(&self, TooLong(len): TooLong) -> ExprError {
        ExprError::Budget(string_too_long(self.budgets, len))
    }

    /// Refuses a produced list or object of `n` entries over the `max_entries` budget.
    pub(super) fn check_entries(&self, n: usize) -> Result<(), ExprError> {
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
}
