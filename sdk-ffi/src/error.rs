//! The one error type of the bindings: each `chat_sdk::SdkError` case as a variant with its
//! gRPC [`Code`] (Python `ChatError.Server`, Kotlin `ChatException.Server`, Swift
//! `ChatError.Server`).
//!
//! The text field is `detail`, not `message`: Kotlin exceptions inherit `message` from
//! `Throwable` and uniffi's generated variant would not compile (uniffi-rs#1434).

use crate::types::Code;
use chat_sdk::SdkError;

/// Display is exported: Kotlin's `toString()` and Swift's `description` read like
/// `NOT_FOUND: chat not found` (Python's `str(e)` lists the fields).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi::export(Display)]
pub enum ChatError {
    /// The server (or the transport in front of it) answered with a gRPC status.
    #[error("{}: {detail}", code.name())]
    Server {
        code: Code,
        detail: String,
        /// For RESOURCE_EXHAUSTED: when the server said to try again.
        retry_after_ms: Option<u64>,
    },
    /// A configuration value the SDK cannot use (named in `detail`).
    #[error("invalid configuration: {detail}")]
    Config { code: Code, detail: String },
    /// A bad argument caught before anything was sent.
    #[error("invalid argument: {detail}")]
    InvalidArgument { code: Code, detail: String },
    /// The local store in `data_dir` failed (disk full, corrupt file, permissions).
    #[error("local storage: {detail}")]
    Storage { code: Code, detail: String },
    /// The client was closed.
    #[error("{detail}")]
    Closed { code: Code, detail: String },
    /// The events were already taken: by `events()` or by a listener.
    #[error("{detail}")]
    EventsTaken { code: Code, detail: String },
    /// Waited for something that did not happen in time.
    #[error("timed out: {detail}")]
    Timeout { code: Code, detail: String },
    /// The bindings themselves failed (e.g. no thread could be started).
    #[error("internal: {detail}")]
    Internal { code: Code, detail: String },
}

impl ChatError {
    pub(crate) fn events_taken(detail: impl Into<String>) -> Self {
        ChatError::EventsTaken {
            code: Code::FailedPrecondition,
            detail: detail.into(),
        }
    }

    pub(crate) fn config(detail: impl Into<String>) -> Self {
        ChatError::Config {
            code: Code::InvalidArgument,
            detail: detail.into(),
        }
    }
}

impl From<SdkError> for ChatError {
    fn from(e: SdkError) -> Self {
        let code = Code::from(e.code());
        let detail = e.to_string();
        match e {
            SdkError::Status {
                message,
                retry_after,
                ..
            } => ChatError::Server {
                code,
                detail: message,
                retry_after_ms: retry_after
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            },
            SdkError::Config(m) => ChatError::Config { code, detail: m },
            SdkError::InvalidArgument(m) => ChatError::InvalidArgument { code, detail: m },
            SdkError::Storage(m) => ChatError::Storage { code, detail: m },
            SdkError::Closed => ChatError::Closed { code, detail },
            SdkError::EventsTaken => ChatError::EventsTaken { code, detail },
            SdkError::Timeout(m) => ChatError::Timeout { code, detail: m },
        }
    }
}

pub type Result<T, E = ChatError> = std::result::Result<T, E>;
