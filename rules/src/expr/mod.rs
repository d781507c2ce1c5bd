//! Mixer's expression language and CEL, in one grammar.
//!
//! - [`parse`]: text to syntax tree. Accepts Mixer's dialect (`a | b` defaults,
//!   `"re".matches(s)`, `match()`, typed literals) and CEL syntax (`? :`, `in`, `has()`,
//!   `s.matches("re")`, arithmetic).
//! - [`compile`]: resolves dotted names against the attribute manifest, type-checks, folds
//!   typed literals and compiles regexes once, producing a [`Program`].
//! - [`eval`]: runs a program directly against a [`crate::bag::Bag`], recording every
//!   attribute it looks at. Nothing is copied into a separate context per request.

mod compile;
mod eval;
mod functions;
pub(crate) mod parse;
mod regex_cache;
#[cfg(test)]
mod tests;

pub use compile::{CompileOptions, IndexKey, Program, assignable, compile};
pub use eval::GeneratedValues;
pub use eval::{EvalError, Outputs};
pub use parse::parse;

/// A compile error with the byte offset in the expression where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at position {pos}: {message}")]
pub struct ExprError {
    pub pos: usize,
    pub message: String,
}

impl ExprError {
    pub(crate) fn new(pos: usize, message: impl Into<String>) -> ExprError {
        ExprError { pos, message: message.into() }
    }
}
