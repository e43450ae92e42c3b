//! RFC 8291 message encryption for Web Push (aes128gcm, RFC 8188).
//!
//! A push service relays the payload but must not read it: the server encrypts to the
//! subscription's keys (the browser's P-256 public key `p256dh` and its 16-byte `auth` secret)
//! with a fresh ephemeral key and salt per message, as one `aes128gcm` record.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hkdf::Hkdf;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::{PublicKey, SecretKey};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;

/// The subscription fields, as errors name them.
pub const FIELD_P256DH: &str = "keys.p256dh";
pub const FIELD_AUTH: &str = "keys.auth";

/// The record size written in the header. One record always suffices: the payload is capped
/// far below it.
pub const RECORD_SIZE: u32 = 4096;

/// The largest plaintext sent: push services must accept a 4096-byte body (RFC 8030 §7.2), and
/// the body adds the 86-byte header, the padding delimiter and the 16-byte tag.
pub const MAX_PLAINTEXT: usize = 4096 - HEADER_LEN - 1 - TAG_LEN;

const SALT_LEN: usize = 16;
const AUTH_LEN: usize = 16;
const POINT_LEN: usize = 65;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = SALT_LEN + 4 + 1 + POINT_LEN;
const NONCE_LEN: usize = 12;
const LAST_RECORD: u8 = 0x02;
const NOT_LAST_RECORD: u8 = 0x01;

/// Why keys or a body were refused. Key errors name the subscription field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EceError {
    #[error("{field}: not base64url")]
    NotBase64 { field: &'static str },
    #[error("{field}: {len} bytes, expected {expected}")]
    BadLength {
        field: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{field}: not an uncompressed P-256 point (must start with 0x04)")]
    NotUncompressed { field: &'static str },
    #[error("{field}: not a point on the P-256 curve")]
    NotOnCurve { field: &'static str },
    #[error("payload of {len} bytes is over the {MAX_PLAINTEXT} bytes one push can carry")]
    PayloadTooLarge { len: usize },
    #[error("malformed aes128gcm body: {0}")]
    Malformed(&'static str),
    #[error("aes128gcm body does not decrypt with these keys")]
    Decrypt,
}

/// base64url as subscriptions carry it: the URL-safe alphabet, padding optional (browsers
/// omit it, some libraries add it).
pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(text.trim()).ok()
}

pub(crate) fn b64url_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A subscription's keys, checked: a valid point and a 16-byte secret.
#[derive(Clone, PartialEq, Eq)]
pub struct UaKeys {
    p256dh: PublicKey,
    auth: [u8; AUTH_LEN],
}

impl std::fmt::Debug for UaKeys {
    // The auth secret is what keeps other holders of the public key from reading pushes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UaKeys")
            .field("p256dh", &b64url_encode(&point_bytes(&self.p256dh)))
            .field("auth", &"<redacted>")
            .finish()
    }
}

impl UaKeys {
    /// From the subscription's `keys.p256dh` and `keys.auth` (base64url).
    pub fn from_b64url(p256dh: &str, auth: &str) -> Result<Self, EceError> {
        let point = b64url_decode(p256dh).ok_or(EceError::NotBase64 {
            field: FIELD_P256DH,
        })?;
        let auth = b64url_decode(auth).ok_or(EceError::NotBase64 { field: FIELD_AUTH })?;
        Self::from_bytes(&point, &auth)
    }

    pub fn from_bytes(p256dh: &[u8], auth: &[u8]) -> Result<Self, EceError> {
        let p256dh = parse_point(p256dh, FIELD_P256DH)?;
        let auth: [u8; AUTH_LEN] = auth.try_into().map_err(|_| EceError::BadLength {
            field: FIELD_AUTH,
            len: auth.len(),
            expected: AUTH_LEN,
        })?;
        Ok(UaKeys { p256dh, auth })
    }

    /// The user agent's public key, uncompressed (65 bytes).
    pub fn p256dh_bytes(&self) -> [u8; POINT_LEN] {
        point_bytes(&self.p256dh)
    }
}

/// Encrypts `plaintext` for the subscription with a fresh ephemeral key and salt: the body of
/// the push request.
pub fn encrypt(keys: &UaKeys, plaintext: &[u8]) -> Result<Vec<u8>, EceError> {
    let as_secret = SecretKey::random(&mut OsRng);
    let mut salt = [0u8; SALT_LEN];
    OsRng.fill_bytes(&mut salt);
    encrypt_with(keys, plaintext, &as_secret, &salt)
}

/// [`encrypt`] with the application server's key and the salt given (the RFC's test vector
/// pins both).
pub(crate) fn encrypt_with(
    keys: &UaKeys,
    plaintext: &[u8],
    as_secret: &SecretKey,
    salt: &[u8; SALT_LEN],
) -> Result<Vec<u8>, EceError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EceError::PayloadTooLarge {
            len: plaintext.len(),
        });
    }
    let as_public = point_bytes(&as_secret.public_key());
    let ua_public = point_bytes(&keys.p256dh);
    let shared = p256::ecdh::diffie_hellman(as_secret.to_nonzero_scalar(), keys.p256dh.as_affine());
    let (cek, nonce) = key_schedule(
        shared.raw_secret_bytes(),
        &keys.auth,
        &ua_public,
        &as_public,
        salt,
    );

    let mut record = Vec::with_capacity(plaintext.len() + 1);
    record.extend_from_slice(plaintext);
    record.push(LAST_RECORD);
    let sealed = Aes128Gcm::new(&cek.into())
        .encrypt(&Nonce::from(nonce), Payload::from(record.as_slice()))
        // AES-GCM only fails on inputs of gigabytes; the length is capped above.
        .map_err(|_| EceError::PayloadTooLarge {
            len: plaintext.len(),
        })?;

    let mut body = Vec::with_capacity(HEADER_LEN + sealed.len());
    body.extend_from_slice(salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(POINT_LEN as u8);
    body.extend_from_slice(&as_public);
    body.extend_from_slice(&sealed);
    Ok(body)
}

/// The user agent's side: decrypts a push body with the subscription's private key and auth
/// secret. Accepts several records, as RFC 8188 allows.
pub fn decrypt(ua_secret: &SecretKey, auth: &[u8], body: &[u8]) -> Result<Vec<u8>, EceError> {
    let auth: &[u8; AUTH_LEN] = auth.try_into().map_err(|_| EceError::BadLength {
        field: FIELD_AUTH,
        len: auth.len(),
        expected: AUTH_LEN,
    })?;
    if body.len() < HEADER_LEN {
        return Err(EceError::Malformed("shorter than the header"));
    }
    let (salt, rest) = body.split_at(SALT_LEN);
    let (rs, rest) = rest.split_at(4);
    let rs = u32::from_be_bytes([rs[0], rs[1], rs[2], rs[3]]) as usize;
    let (idlen, rest) = rest.split_at(1);
    if usize::from(idlen[0]) != POINT_LEN {
        return Err(EceError::Malformed("key id is not a 65-byte P-256 point"));
    }
    let (as_public, records) = rest.split_at(POINT_LEN);
    if rs <= TAG_LEN + 1 {
        return Err(EceError::Malformed("record size too small"));
    }
    if records.is_empty() {
        return Err(EceError::Malformed("no record"));
    }

    let as_key = parse_point(as_public, "key id")?;
    let ua_public = point_bytes(&ua_secret.public_key());
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), as_key.as_affine());
    let salt: &[u8; SALT_LEN] = salt.try_into().map_err(|_| EceError::Malformed("salt"))?;
    let (cek, base_nonce) = key_schedule(
        shared.raw_secret_bytes(),
        auth,
        &ua_public,
        &point_bytes(&as_key),
        salt,
    );
    let cipher = Aes128Gcm::new(&cek.into());

    let mut plaintext = Vec::with_capacity(records.len());
    let count = records.len().div_ceil(rs);
    for (seq, record) in records.chunks(rs).enumerate() {
        let mut nonce = base_nonce;
        for (n, s) in nonce[NONCE_LEN - 8..]
            .iter_mut()
            .zip((seq as u64).to_be_bytes())
        {
            *n ^= s;
        }
        let opened = cipher
            .decrypt(&Nonce::from(nonce), Payload::from(record))
            .map_err(|_| EceError::Decrypt)?;
        // Padding is zeros after the delimiter; the delimiter says whether more records follow.
        let end = opened
            .iter()
            .rposition(|&b| b != 0)
            .ok_or(EceError::Malformed("record without a delimiter"))?;
        let last = seq + 1 == count;
        match (opened[end], last) {
            (LAST_RECORD, true) | (NOT_LAST_RECORD, false) => {}
            (LAST_RECORD, false) => return Err(EceError::Malformed("last record before the end")),
            (NOT_LAST_RECORD, true) => {
                return Err(EceError::Malformed("truncated: no last record"))
            }
            _ => return Err(EceError::Malformed("bad padding delimiter")),
        }
        plaintext.extend_from_slice(&opened[..end]);
    }
    Ok(plaintext)
}

/// RFC 8291 §3.3–3.4 and RFC 8188 §2.2: the content encryption key and the nonce.
fn key_schedule(
    ecdh_secret: &[u8],
    auth: &[u8; AUTH_LEN],
    ua_public: &[u8; POINT_LEN],
    as_public: &[u8; POINT_LEN],
    salt: &[u8; SALT_LEN],
) -> ([u8; 16], [u8; NONCE_LEN]) {
    let mut key_info = Vec::with_capacity(14 + 2 * POINT_LEN);
    key_info.extend_from_slice(b"WebPush: info\0");
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    expand(
        &Hkdf::<Sha256>::new(Some(auth), ecdh_secret),
        &key_info,
        &mut ikm,
    );

    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    expand(&prk, b"Content-Encoding: aes128gcm\0", &mut cek);
    let mut nonce = [0u8; NONCE_LEN];
    expand(&prk, b"Content-Encoding: nonce\0", &mut nonce);
    (cek, nonce)
}

fn expand(prk: &Hkdf<Sha256>, info: &[u8], out: &mut [u8]) {
    // HKDF-SHA256 refuses only outputs over 8160 bytes; these are 12 to 32.
    if prk.expand(info, out).is_err() {
        unreachable!("HKDF output of {} bytes", out.len());
    }
}

fn parse_point(bytes: &[u8], field: &'static str) -> Result<PublicKey, EceError> {
    if bytes.len() != POINT_LEN {
        return Err(EceError::BadLength {
            field,
            len: bytes.len(),
            expected: POINT_LEN,
        });
    }
    if bytes[0] != 0x04 {
        return Err(EceError::NotUncompressed { field });
    }
    PublicKey::from_sec1_bytes(bytes).map_err(|_| EceError::NotOnCurve { field })
}

fn point_bytes(key: &PublicKey) -> [u8; POINT_LEN] {
    let mut out = [0u8; POINT_LEN];
    out.copy_from_slice(key.to_encoded_point(false).as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8291 §5 and Appendix A.
    const PLAINTEXT: &str = "When I grow up, I want to be a watermelon";
    const AS_PRIVATE: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
    const AS_PUBLIC: &str =
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8";
    const UA_PRIVATE: &str = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94";
    const UA_PUBLIC: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";
    const SALT: &str = "DGv6ra1nlYgDCS1FRnbzlw";
    const BODY: &str = "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN";

    fn secret(b64: &str) -> SecretKey {
        SecretKey::from_slice(&b64url_decode(b64).unwrap()).unwrap()
    }

    #[test]
    fn rfc8291_appendix_a_vector_encrypts_to_the_published_body() {
        let keys = UaKeys::from_b64url(UA_PUBLIC, AUTH).unwrap();
        let as_secret = secret(AS_PRIVATE);
        assert_eq!(
            b64url_encode(&point_bytes(&as_secret.public_key())),
            AS_PUBLIC
        );
        let salt: [u8; 16] = b64url_decode(SALT).unwrap().try_into().unwrap();
        let body = encrypt_with(&keys, PLAINTEXT.as_bytes(), &as_secret, &salt).unwrap();
        assert_eq!(b64url_encode(&body), BODY);
    }

    #[test]
    fn rfc8291_appendix_a_body_decrypts_to_the_plaintext() {
        let body = b64url_decode(BODY).unwrap();
        let auth = b64url_decode(AUTH).unwrap();
        let plaintext = decrypt(&secret(UA_PRIVATE), &auth, &body).unwrap();
        assert_eq!(plaintext, PLAINTEXT.as_bytes());
    }

    #[test]
    fn round_trip_with_fresh_keys_and_salt_each_time() {
        let ua = SecretKey::random(&mut OsRng);
        let mut auth = [0u8; 16];
        OsRng.fill_bytes(&mut auth);
        let keys = UaKeys::from_bytes(&point_bytes(&ua.public_key()), &auth).unwrap();
        let message = br#"{"title":"alice","body":"hi","count":1}"#;
        let one = encrypt(&keys, message).unwrap();
        let two = encrypt(&keys, message).unwrap();
        assert_ne!(one, two, "ephemeral key and salt must differ per message");
        assert_eq!(one.len(), HEADER_LEN + message.len() + 1 + TAG_LEN);
        assert_eq!(&one[16..20], &4096u32.to_be_bytes());
        assert_eq!(one[20], 65);
        assert_eq!(decrypt(&ua, &auth, &one).unwrap(), message);
        assert_eq!(decrypt(&ua, &auth, &two).unwrap(), message);

        let mut other_auth = auth;
        other_auth[0] ^= 1;
        assert_eq!(decrypt(&ua, &other_auth, &one), Err(EceError::Decrypt));
        let mut tampered = one.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(decrypt(&ua, &auth, &tampered), Err(EceError::Decrypt));
    }

    #[test]
    fn the_largest_payload_fits_a_4096_byte_body_and_one_more_byte_is_refused() {
        let keys = UaKeys::from_b64url(UA_PUBLIC, AUTH).unwrap();
        let body = encrypt(&keys, &vec![b'x'; MAX_PLAINTEXT]).unwrap();
        assert_eq!(body.len(), 4096);
        assert_eq!(
            encrypt(&keys, &vec![b'x'; MAX_PLAINTEXT + 1]),
            Err(EceError::PayloadTooLarge {
                len: MAX_PLAINTEXT + 1
            })
        );
    }

    #[test]
    fn malformed_keys_are_refused_naming_the_field() {
        let err = UaKeys::from_b64url("not base64!", AUTH).unwrap_err();
        assert_eq!(
            err,
            EceError::NotBase64 {
                field: "keys.p256dh"
            }
        );
        assert!(err.to_string().contains("keys.p256dh"), "{err}");

        let err = UaKeys::from_b64url(UA_PUBLIC, "@@@").unwrap_err();
        assert_eq!(err, EceError::NotBase64 { field: "keys.auth" });

        let err = UaKeys::from_b64url(&UA_PUBLIC[..40], AUTH).unwrap_err();
        assert_eq!(
            err,
            EceError::BadLength {
                field: "keys.p256dh",
                len: 30,
                expected: 65
            }
        );

        let err = UaKeys::from_b64url(UA_PUBLIC, "AQI").unwrap_err();
        assert_eq!(
            err,
            EceError::BadLength {
                field: "keys.auth",
                len: 2,
                expected: 16
            }
        );
        assert_eq!(err.to_string(), "keys.auth: 2 bytes, expected 16");

        // A compressed point (33 bytes) is not what browsers send.
        let ua = secret(UA_PRIVATE).public_key();
        let compressed = ua.to_encoded_point(true);
        let err = UaKeys::from_bytes(compressed.as_bytes(), &[0; 16]).unwrap_err();
        assert!(matches!(
            err,
            EceError::BadLength {
                field: "keys.p256dh",
                len: 33,
                ..
            }
        ));

        // 65 bytes with the right prefix whose coordinates do not satisfy the curve equation.
        let mut off_curve = point_bytes(&ua);
        off_curve[64] ^= 1;
        let err = UaKeys::from_bytes(&off_curve, &[0; 16]).unwrap_err();
        assert_eq!(
            err,
            EceError::NotOnCurve {
                field: "keys.p256dh"
            }
        );
        assert_eq!(
            err.to_string(),
            "keys.p256dh: not a point on the P-256 curve"
        );

        let mut wrong_prefix = point_bytes(&ua);
        wrong_prefix[0] = 0x05;
        let err = UaKeys::from_bytes(&wrong_prefix, &[0; 16]).unwrap_err();
        assert_eq!(
            err,
            EceError::NotUncompressed {
                field: "keys.p256dh"
            }
        );
    }

    #[test]
    fn padded_base64url_is_accepted_and_debug_hides_the_auth_secret() {
        let keys = UaKeys::from_b64url(UA_PUBLIC, &format!("{AUTH}==")).unwrap();
        assert_eq!(keys, UaKeys::from_b64url(UA_PUBLIC, AUTH).unwrap());
        let debug = format!("{keys:?}");
        assert!(!debug.contains(AUTH), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn truncated_or_malformed_bodies_are_refused() {
        let ua = secret(UA_PRIVATE);
        let auth = b64url_decode(AUTH).unwrap();
        let body = b64url_decode(BODY).unwrap();
        assert!(matches!(
            decrypt(&ua, &auth, &body[..50]),
            Err(EceError::Malformed(_))
        ));
        assert!(matches!(
            decrypt(&ua, &auth, &body[..HEADER_LEN]),
            Err(EceError::Malformed(_))
        ));
        assert_eq!(
            decrypt(&ua, &auth, &body[..body.len() - 1]),
            Err(EceError::Decrypt)
        );
    }
}
