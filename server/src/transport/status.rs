//! The one place where domain errors become gRPC statuses and error-frame codes.

use crate::Error;
use tonic::{metadata::MetadataValue, Code, Status};

pub fn code(e: &Error) -> Code {
    match e {
        Error::InvalidArgument { .. } => Code::InvalidArgument,
        Error::Unauthenticated(_) => Code::Unauthenticated,
        Error::PermissionDenied(_) => Code::PermissionDenied,
        Error::NotFound(_) => Code::NotFound,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::RateLimited { .. } | Error::ResourceExhausted(_) | Error::Limited { .. } => {
            Code::ResourceExhausted
        }
        Error::Unavailable(_) => Code::Unavailable,
        Error::Unimplemented(_) => Code::Unimplemented,
        Error::Internal(_) => Code::Internal,
    }
}

/// The code for `e`, counted in the errors metric (and an abuse limit's refusal in the limits
/// metric): every error a client sees passes here once.
pub fn counted(e: &Error) -> Code {
    let c = code(e);
    crate::metrics::METRICS.error(c);
    if let Error::Limited { limit, .. } = e {
        crate::metrics::METRICS.limited(*limit);
    }
    c
}

/// The status for `e`. Internal details are logged here and replaced by a generic message.
pub fn status(e: &Error) -> Status {
    if let Error::Internal(detail) = e {
        tracing::error!(%detail, "internal error");
    }
    let mut status = Status::new(counted(e), e.to_string());
    if let Error::RateLimited { retry_after_ms } = e {
        status
            .metadata_mut()
            .insert("retry-after-ms", MetadataValue::from(*retry_after_ms));
    }
    status
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        status(&e)
    }
}

/// The error a client stream's failure means for its session.
pub fn from_stream_status(s: &Status) -> Error {
    match s.code() {
        Code::ResourceExhausted | Code::OutOfRange => {
            Error::ResourceExhausted(format!("frame rejected: {}", s.message()))
        }
        Code::Cancelled => Error::Unavailable("the client cancelled the stream".into()),
        _ => Error::invalid("frame", s.message().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_carry_retry_after() {
        let s = status(&Error::RateLimited {
            retry_after_ms: 120,
        });
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.metadata()
                .get("retry-after-ms")
                .and_then(|v| v.to_str().ok()),
            Some("120")
        );
    }

    #[test]
    fn internal_details_stay_inside() {
        let s = status(&Error::Internal("SELECT * FROM secrets failed".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("SELECT"));
        let s = status(&Error::invalid("chat_id", "is required"));
        assert_eq!(s.message(), "invalid chat_id: is required");
    }
}
