//! Execution errors: the reference's error names plus a message a user can act on.

use crate::dsl::Span;
use crate::expr::ExprError;
use crate::limits::BudgetExceeded;
use std::fmt;
use std::time::Duration;

/// The kind of failure, named as in the reference runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unknown or disabled automation (`ObjectNotFoundError`).
    NotFound,
    /// A malformed instruction (`InvalidInstructionError`).
    InvalidInstruction,
    /// A template or expression that does not parse or evaluate (`InvalidExpressionSyntax`).
    InvalidExpression,
    /// Call depth exceeded (`TooManyCallError`).
    TooManyCalls,
    /// `validateArguments` refused the arguments (`InvalidArgumentsError`).
    InvalidArguments,
    /// A bad event name or an event too large (`InvalidEventError`).
    InvalidEvent,
    /// A fetch that could not reach its server (`FetchError`).
    Fetch,
    /// The execution went over one of its budgets (`budgets:` settings).
    BudgetExceeded,
    /// The workspace's credit quota restricts the automation's class (SPEC section 8).
    QuotaExceeded,
    /// Something outside the automation's control failed.
    Internal,
    /// A named limit did not grant within its `wait` (SPEC section 7).
    LimitExceeded,
}

impl ErrorKind {
    /// The reference runtime's name for this error.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "ObjectNotFoundError",
            ErrorKind::InvalidInstruction => "InvalidInstructionError",
            ErrorKind::InvalidExpression => "InvalidExpressionSyntax",
            ErrorKind::TooManyCalls => "TooManyCallError",
            ErrorKind::InvalidArguments => "InvalidArgumentsError",
            ErrorKind::InvalidEvent => "InvalidEventError",
            ErrorKind::Fetch => "FetchError",
            ErrorKind::BudgetExceeded => "BudgetExceeded",
            ErrorKind::QuotaExceeded => "QuotaExceeded",
            ErrorKind::Internal => "InternalError",
            ErrorKind::LimitExceeded => "LimitExceeded",
        }
    }

    /// The `code` reports and executed events carry, for refusals by a limit.
    pub fn code(self) -> Option<&'static str> {
        match self {
            ErrorKind::LimitExceeded => Some("LimitExceeded"),
            ErrorKind::QuotaExceeded => Some("QuotaExceeded"),
            _ => None,
        }
    }
}

/// A failed execution.
#[derive(Debug, Clone)]
pub struct ExecError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong.
    pub message: String,
    /// The automation of the innermost failing instruction.
    pub automation: Option<String>,
    /// Where that instruction is written.
    pub span: Option<Span>,
    /// The budget that was exceeded (`max_instructions`), for errors of kind `BudgetExceeded`.
    pub budget: Option<&'static str>,
    /// When to try again, for refusals (`Retry-After`); `None` when unknown.
    pub retry_after: Option<Duration>,
    /// The named limit that refused, for errors of kind `LimitExceeded`.
    pub limit: Option<String>,
}

impl ExecError {
    /// An error without a location yet.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ExecError {
        ExecError {
            kind,
            message: message.into(),
            automation: None,
            span: None,
            budget: None,
            retry_after: None,
            limit: None,
        }
    }

    /// Locates the error at `span` of `automation`, unless a deeper
    /// instruction already did.
    pub fn at(mut self, automation: &str, span: &Span) -> ExecError {
        if self.span.is_none() {
            self.automation = Some(automation.to_string());
            self.span = Some(span.clone());
        }
        self
    }
}

impl fmt::Display for ExecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(slug), Some(span)) = (&self.automation, &self.span) {
            write!(f, "automation `{slug}` ({span}): ")?;
        }
        write!(f, "{} ({})", self.message, self.kind.name())
    }
}

impl std::error::Error for ExecError {}

impl From<ExprError> for ExecError {
    fn from(e: ExprError) -> ExecError {
        match e {
            ExprError::Budget(b) => b.into(),
            e => ExecError::new(ErrorKind::InvalidExpression, e.to_string()),
        }
    }
}

impl From<BudgetExceeded> for ExecError {
    fn from(e: BudgetExceeded) -> ExecError {
        ExecError {
            budget: Some(e.name),
            ..ExecError::new(ErrorKind::BudgetExceeded, e.to_string())
        }
    }
}

impl From<crate::limits::named::AcquireError> for ExecError {
    fn from(e: crate::limits::named::AcquireError) -> ExecError {
        let retry_after = match &e {
            crate::limits::named::AcquireError::Refused { retry_after, .. } => *retry_after,
            crate::limits::named::AcquireError::Unknown(_) => None,
        };
        ExecError {
            retry_after,
            limit: Some(e.limit().to_string()),
            ..ExecError::new(ErrorKind::LimitExceeded, e.to_string())
        }
    }
}

impl From<crate::limits::named::RenderError> for ExecError {
    fn from(e: crate::limits::named::RenderError) -> ExecError {
        ExecError::new(ErrorKind::InvalidInstruction, e.to_string())
    }
}
