//! The SDK's one error type, and which server answers are worth retrying.

use std::time::Duration;
use tonic::Code;

pub type Result<T, E = SdkError> = std::result::Result<T, E>;

/// Everything a call on the SDK can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SdkError {
    /// The server (or the transport in front of it) answered with a gRPC status.
    #[error("{code:?}: {message}")]
    Status {
        code: Code,
        message: String,
        /// For RESOURCE_EXHAUSTED: when the server said to try again.
        retry_after: Option<Duration>,
    },
    /// A configuration value the SDK cannot use (named in the message).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A bad argument caught before anything was sent (named in the message).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The local store in `data_dir` failed (disk full, corrupt file, permissions).
    #[error("local storage: {0}")]
    Storage(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// `Client::events` was already taken: the event stream has one reader.
    #[error("the event stream was already taken")]
    EventsTaken,
    /// Waited for something that did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl SdkError {
    /// The gRPC code this error stands for (local errors map to the nearest one).
    pub fn code(&self) -> Code {
        match self {
            SdkError::Status { code, .. } => *code,
            SdkError::Config(_) | SdkError::InvalidArgument(_) => Code::InvalidArgument,
            SdkError::Storage(_) => Code::Internal,
            SdkError::Closed => Code::Cancelled,
            SdkError::EventsTaken => Code::FailedPrecondition,
            SdkError::Timeout(_) => Code::DeadlineExceeded,
        }
    }

    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        SdkError::Storage(e.to_string())
    }
}

impl From<tonic::Status> for SdkError {
    fn from(s: tonic::Status) -> Self {
        let retry_after = s
            .metadata()
            .get("retry-after-ms")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis);
        SdkError::Status {
            code: s.code(),
            message: s.message().to_string(),
            retry_after,
        }
    }
}

/// Whether a send refused with `code` can succeed later with the same key. Refusals about the
/// message itself or the caller's rights never will; everything about the server's state may.
pub fn is_permanent(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::OutOfRange
            | Code::AlreadyExists
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_retry_after() {
        let mut s = tonic::Status::resource_exhausted("slow down");
        s.metadata_mut().insert(
            "retry-after-ms",
            tonic::metadata::MetadataValue::from(250u32),
        );
        let e = SdkError::from(s);
        match e {
            SdkError::Status {
                code, retry_after, ..
            } => {
                assert_eq!(code, Code::ResourceExhausted);
                assert_eq!(retry_after, Some(Duration::from_millis(250)));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permanent_and_transient_codes() {
        for c in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::NotFound,
            Code::FailedPrecondition,
        ] {
            assert!(is_permanent(c), "{c:?}");
        }
        for c in [
            Code::Unavailable,
            Code::ResourceExhausted,
            Code::Internal,
            Code::DeadlineExceeded,
            Code::Unknown,
            Code::Aborted,
            Code::Cancelled,
            Code::Unauthenticated,
        ] {
            assert!(!is_permanent(c), "{c:?}");
        }
    }
}
