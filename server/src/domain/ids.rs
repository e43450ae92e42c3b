//! Identifier formats: which ids the server assigns, and what a client may send.

use crate::{Error, Result};

const MAX_DEVICE_ID_LEN: usize = 64;
const MAX_CLIENT_MSG_ID_LEN: usize = 64;

/// A new server-assigned id (chat or message): a UUIDv7 as 32 lowercase hex digits, so ids sort
/// by creation time.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Chat ids are server-assigned; anything not shaped like one is a client error, not a miss.
pub fn check_chat_id(id: &str) -> Result<()> {
    if id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else if id.is_empty() {
        Err(Error::invalid("chat_id", "is required"))
    } else {
        Err(Error::invalid(
            "chat_id",
            "is not a chat id (32 lowercase hex digits)",
        ))
    }
}

/// Device ids are chosen by the client: 1..=64 of `[A-Za-z0-9._-]`.
pub fn check_device_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("device_id", "is required"));
    }
    if id.len() > MAX_DEVICE_ID_LEN
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(Error::invalid(
            "device_id",
            "must be 1..=64 characters of [A-Za-z0-9._-]",
        ));
    }
    Ok(())
}

/// Idempotency keys: 1..=64 bytes, no control characters.
pub fn check_client_msg_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("client_msg_id", "is required"));
    }
    if id.len() > MAX_CLIENT_MSG_ID_LEN || id.chars().any(char::is_control) {
        return Err(Error::invalid(
            "client_msg_id",
            "must be 1..=64 bytes without control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_are_valid_chat_ids() {
        let id = new_id();
        check_chat_id(&id).unwrap();
        assert!(new_id() > id || new_id() != id);
    }

    #[test]
    fn malformed_ids_name_their_field() {
        for bad in ["", "xyz", &"A".repeat(32), &"a".repeat(33)] {
            match check_chat_id(bad) {
                Err(Error::InvalidArgument {
                    field: "chat_id", ..
                }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        for bad in ["", "has space", "ü", &"d".repeat(65)] {
            assert!(
                matches!(
                    check_device_id(bad),
                    Err(Error::InvalidArgument {
                        field: "device_id",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        check_device_id("phone-1.A_b").unwrap();
        assert!(check_client_msg_id("").is_err());
        assert!(check_client_msg_id("a\nb").is_err());
        check_client_msg_id("m-1").unwrap();
    }
}
