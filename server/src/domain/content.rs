//! What a sendable message content is: exactly one of text and ciphertext, within the size
//! limit, and text without U+0000.

use super::model::Content;
use crate::{Error, Result};

/// Bytes a content counts against `max_message_bytes`: payload plus attribute keys and values.
pub fn content_size(c: &Content) -> usize {
    c.text.len()
        + c.ciphertext.len()
        + c.attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

pub fn check_content(content: Option<&Content>, max_bytes: u32) -> Result<()> {
    let c = content.ok_or_else(|| Error::invalid("content", "is required"))?;
    match (c.text.is_empty(), c.ciphertext.is_empty()) {
        (true, true) => {
            return Err(Error::invalid(
                "content",
                "is empty: set text or ciphertext",
            ))
        }
        (false, false) => {
            return Err(Error::invalid(
                "content",
                "must set exactly one of text and ciphertext",
            ))
        }
        _ => {}
    }
    if c.text.contains('\0') {
        // PostgreSQL text cannot hold it; refused on every backend so both keep the same data.
        return Err(Error::invalid("content", "text must not contain U+0000"));
    }
    let size = content_size(c);
    if size > max_bytes as usize {
        return Err(Error::invalid(
            "content",
            format!("is {size} bytes; the limit is {max_bytes}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Content {
        Content {
            text: s.into(),
            ..Default::default()
        }
    }

    #[test]
    fn exactly_one_payload_within_the_limit() {
        check_content(Some(&text("hi")), 10).unwrap();
        check_content(
            Some(&Content {
                ciphertext: vec![1, 2],
                ..Default::default()
            }),
            10,
        )
        .unwrap();
        for bad in [
            None,
            Some(Content::default()),
            Some(Content {
                text: "a".into(),
                ciphertext: vec![1],
                ..Default::default()
            }),
            Some(text("12345678901")),
            Some(text("a\0b")),
        ] {
            let err = check_content(bad.as_ref(), 10).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidArgument {
                        field: "content",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn attributes_count_toward_the_limit() {
        let mut c = text("12345");
        c.attributes.insert("k".into(), "1234".into());
        check_content(Some(&c), 10).unwrap();
        c.attributes.insert("x".into(), String::new());
        assert!(check_content(Some(&c), 10).is_err());
    }
}
