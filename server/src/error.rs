//! The one error type of the server. Every failure a client can see is one of these kinds;
//! `transport::status` maps them to gRPC codes in one place. Internal details (SQL, I/O) stay in
//! the logs, never in what the client reads.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum Error {
    /// The request is malformed; `field` names the offending field.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    /// The request is well formed but the state forbids it (group full, wrong chat kind).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Token bucket empty: the client may retry after `retry_after_ms`.
    #[error("rate limit exceeded, retry after {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u32 },
    /// A bounded resource is used up (e.g. a session's outgoing queue).
    #[error("{0}")]
    ResourceExhausted(String),
    /// An abuse limit refused the request (RESOURCE_EXHAUSTED); `message` names the limit and
    /// its value (see [`Limit::refusal`](crate::domain::limits::Limit::refusal)).
    #[error("{message}")]
    Limited {
        limit: crate::domain::limits::Limit,
        message: String,
    },
    /// The store or another dependency cannot be reached; nothing was committed.
    #[error("{0}")]
    Unavailable(String),
    /// The server does not offer this yet.
    #[error("{0}")]
    Unimplemented(String),
    /// A bug or an unexpected backend failure; the detail is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub fn chat_not_found(chat_id: &str) -> Self {
        Error::NotFound(format!("chat {chat_id} not found"))
    }

    pub fn not_member(chat_id: &str) -> Self {
        Error::PermissionDenied(format!("not a member of chat {chat_id}"))
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Error::Internal(detail.to_string())
    }
}
