//! A JSON Web Key Set (RFC 7517) as an identity provider publishes it, reduced to the keys chatd
//! verifies tokens with: RSA keys for RS256 and P-256 keys for ES256, found by `kid`.
//!
//! A key chatd cannot use (an encryption key, another curve or algorithm, an RSA modulus under
//! 2048 bits, a point off the curve) is skipped with its reason rather than failing the set:
//! providers publish keys for other purposes beside the signing ones.

use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode, GeneralPurposeConfig};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use rsa::traits::PublicKeyParts;
use serde::Deserialize;

/// Shortest RSA modulus accepted, in bits (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// base64url, padded or not (RFC 7515 says unpadded; some providers pad).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The algorithms a provider's token may be signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    /// The algorithm a JWS header's `alg` names, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    pub fn algorithm(self) -> Algorithm {
        match self {
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
        }
    }
}

/// One key tokens can be verified with.
#[derive(Clone)]
pub struct Key {
    /// Its name in the set; tokens name it in their header. A set may leave it out.
    pub kid: Option<String>,
    /// The one algorithm it verifies: from its `alg`, else from its type.
    pub alg: Alg,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The usable keys of one fetched set.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// What a token's `kid` and `alg` find in a set.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(&'a Key),
    /// No key of that name (or, for a token without a `kid`, none of that algorithm).
    Unknown,
    /// The named key verifies another algorithm: algorithm confusion, or a misconfigured IdP.
    Mismatch(Alg),
    /// The token names no key and the set has several of its algorithm.
    Ambiguous,
}

/// The members of one JWK that matter here; every one optional, so that an odd key is skipped
/// with a reason instead of failing the document.
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    key_ops: Option<Vec<String>>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl KeySet {
    /// Reads a JWKS document: the usable keys, and why each other key was skipped. A body that
    /// is not a key set at all is an error.
    pub fn parse(body: &[u8]) -> Result<(KeySet, Vec<String>), String> {
        let doc: Document = serde_json::from_slice(body)
            .map_err(|e| format!("not a JWKS document (a JSON object with `keys`): {e}"))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, value) in doc.keys.into_iter().enumerate() {
            let parsed = serde_json::from_value::<Jwk>(value)
                .map_err(|e| (None, e.to_string()))
                .and_then(Jwk::into_key);
            match parsed {
                Ok(key) => keys.push(key),
                Err((kid, reason)) => skipped.push(match kid {
                    Some(kid) => format!("key {kid:?}: {reason}"),
                    None => format!("key #{i}: {reason}"),
                }),
            }
        }
        Ok((KeySet { keys }, skipped))
    }

    /// A set of the given keys (tests, and the empty set before the first fetch).
    pub fn of(keys: Vec<Key>) -> Self {
        KeySet { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The names of the keys, for logs.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                k.kid
                    .clone()
                    .unwrap_or_else(|| format!("(no kid, {})", k.alg.name()))
            })
            .collect();
        kids.sort();
        kids
    }

    /// The key a token signed with `alg` and naming `kid` is checked with.
    pub fn find(&self, kid: Option<&str>, alg: Alg) -> Lookup<'_> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let Some(first) = named.next() else {
                    return Lookup::Unknown;
                };
                std::iter::once(first)
                    .chain(named)
                    .find(|k| k.alg == alg)
                    .map_or(Lookup::Mismatch(first.alg), Lookup::Found)
            }
            None => {
                let mut of_alg = self.keys.iter().filter(|k| k.alg == alg);
                match (of_alg.next(), of_alg.next()) {
                    (Some(key), None) => Lookup::Found(key),
                    (None, _) => Lookup::Unknown,
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                }
            }
        }
    }

    /// The algorithm of the key named `kid`, if the set has one.
    pub fn alg_of(&self, kid: &str) -> Option<Alg> {
        self.keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid))
            .map(|k| k.alg)
    }
}

impl Jwk {
    /// The key, or its `kid` and why it cannot be used.
    fn into_key(self) -> Result<Key, (Option<String>, String)> {
        let kid = self.kid.clone();
        self.usable().map_err(|reason| (kid, reason))
    }

    fn usable(self) -> Result<Key, String> {
        if let Some(usage) = self.usage.as_deref().filter(|u| *u != "sig") {
            return Err(format!("`use` is {usage:?}, not \"sig\""));
        }
        if let Some(ops) = &self.key_ops {
            if !ops.iter().any(|op| op == "verify") {
                return Err("`key_ops` does not include \"verify\"".into());
            }
        }
        let kty = self.kty.as_deref().unwrap_or_default();
        let (alg, decoding) = match kty {
            "RSA" => (Alg::Rs256, self.rsa()?),
            "EC" => (Alg::Es256, self.ec()?),
            other => return Err(format!("key type {other:?} is not supported (RSA, EC are)")),
        };
        match self.alg.as_deref() {
            None => {}
            Some(name) if name == alg.name() => {}
            Some(name) => {
                return Err(format!(
                    "`alg` {name:?} is not supported for a {kty} key ({} is)",
                    alg.name()
                ))
            }
        }
        Ok(Key {
            kid: self.kid,
            alg,
            decoding,
        })
    }

    fn rsa(&self) -> Result<DecodingKey, String> {
        let n = member(&self.n, "n")?;
        let e = member(&self.e, "e")?;
        let public = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&n),
            rsa::BigUint::from_bytes_be(&e),
        )
        .map_err(|err| format!("not an RSA public key: {err}"))?;
        let bits = public.n().bits();
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA modulus of {bits} bits is under {MIN_RSA_BITS}"
            ));
        }
        Ok(DecodingKey::from_rsa_raw_components(&n, &e))
    }

    fn ec(&self) -> Result<DecodingKey, String> {
        match self.crv.as_deref() {
            Some("P-256") => {}
            other => return Err(format!("curve {other:?} is not supported (P-256 is)")),
        }
        let x = member(&self.x, "x")?;
        let y = member(&self.y, "y")?;
        if x.len() != 32 || y.len() != 32 {
            return Err("P-256 coordinates must be 32 bytes each".into());
        }
        let mut point = Vec::with_capacity(65);
        point.push(0x04);
        point.extend_from_slice(&x);
        point.extend_from_slice(&y);
        p256::PublicKey::from_sec1_bytes(&point)
            .map_err(|_| "the point is not on the P-256 curve".to_string())?;
        // jsonwebtoken keeps an EC public key as its SEC1 point (what `from_ec_components`
        // builds); decoded here once, padded or not.
        Ok(DecodingKey::from_ec_der(&point))
    }
}

/// A base64url member of a key, decoded.
fn member(value: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    let text = value
        .as_deref()
        .ok_or_else(|| format!("`{name}` is missing"))?;
    B64URL
        .decode(text)
        .map_err(|_| format!("`{name}` is not base64url"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use push_fakes::idp::IdpKey;
    use serde_json::json;

    fn parse(doc: serde_json::Value) -> (KeySet, Vec<String>) {
        KeySet::parse(doc.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn rsa_and_p256_signing_keys_are_read_and_others_skipped_with_the_reason() {
        let rsa = IdpKey::rsa("r1", 0);
        let ec = IdpKey::ec("e1");
        let mut rs384 = rsa.jwk();
        rs384["kid"] = json!("r384");
        rs384["alg"] = json!("RS384");
        let mut enc = rsa.jwk();
        enc["kid"] = json!("enc");
        enc["use"] = json!("enc");
        let mut p384 = ec.jwk();
        p384["kid"] = json!("p384");
        p384["crv"] = json!("P-384");
        let mut off_curve = ec.jwk();
        off_curve["kid"] = json!("off");
        off_curve["y"] = off_curve["x"].clone();
        let mut short = rsa.jwk();
        short["kid"] = json!("short");
        short["n"] = json!(B64URL.encode([0xC3u8; 128]));
        let mut ops = ec.jwk();
        ops["kid"] = json!("ops");
        ops["key_ops"] = json!(["encrypt"]);
        let (set, skipped) = parse(json!({"keys": [
            rsa.jwk(), ec.jwk(), rs384, enc, p384, off_curve, short, ops,
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "no-n", "e": "AQAB"},
            "not an object",
        ]}));
        assert_eq!(set.kids(), ["e1", "r1"]);
        let reasons = skipped.join("\n");
        for want in [
            "key \"r384\": `alg` \"RS384\" is not supported for a RSA key (RS256 is)",
            "key \"enc\": `use` is \"enc\", not \"sig\"",
            "key \"p384\": curve Some(\"P-384\") is not supported (P-256 is)",
            "key \"off\": the point is not on the P-256 curve",
            "key \"short\": RSA modulus of 1024 bits is under 2048",
            "key \"ops\": `key_ops` does not include \"verify\"",
            "key \"hmac\": key type \"oct\" is not supported (RSA, EC are)",
            "key \"no-n\": `n` is missing",
            "key #10: ",
        ] {
            assert!(reasons.contains(want), "{want:?} not in\n{reasons}");
        }
        assert_eq!(skipped.len(), 9);
    }

    #[test]
    fn a_body_that_is_no_key_set_is_an_error() {
        for body in ["<html>", "{}", "{\"keys\": 3}", ""] {
            let err = KeySet::parse(body.as_bytes()).unwrap_err();
            assert!(err.starts_with("not a JWKS document"), "{body}: {err}");
        }
        let (empty, skipped) = parse(json!({"keys": []}));
        assert!(empty.is_empty() && skipped.is_empty());
    }

    #[test]
    fn a_token_finds_its_key_by_kid_and_algorithm() {
        let (set, _) = parse(json!({"keys": [
            IdpKey::rsa("a", 0).jwk(), IdpKey::rsa("b", 1).jwk(), IdpKey::ec("c").jwk(),
        ]}));
        assert!(
            matches!(set.find(Some("a"), Alg::Rs256), Lookup::Found(k) if k.kid.as_deref() == Some("a"))
        );
        assert!(matches!(set.find(Some("c"), Alg::Es256), Lookup::Found(_)));
        assert!(matches!(
            set.find(Some("a"), Alg::Es256),
            Lookup::Mismatch(Alg::Rs256)
        ));
        assert!(matches!(
            set.find(Some("c"), Alg::Rs256),
            Lookup::Mismatch(Alg::Es256)
        ));
        assert!(matches!(set.find(Some("zzz"), Alg::Rs256), Lookup::Unknown));
        // Without a kid: the one key of the algorithm, if there is exactly one.
        assert!(matches!(set.find(None, Alg::Es256), Lookup::Found(_)));
        assert!(matches!(set.find(None, Alg::Rs256), Lookup::Ambiguous));
        assert_eq!(set.alg_of("b"), Some(Alg::Rs256));
        assert_eq!(set.alg_of("zzz"), None);
        let (rsa_only, _) = parse(json!({"keys": [IdpKey::rsa("a", 0).jwk()]}));
        assert!(matches!(rsa_only.find(None, Alg::Es256), Lookup::Unknown));
    }

    #[test]
    fn padded_base64url_is_read_too() {
        let mut jwk = IdpKey::ec("p").jwk();
        let x = jwk["x"].as_str().unwrap().to_string();
        jwk["x"] = json!(format!("{x}="));
        let (set, skipped) = parse(json!({"keys": [jwk]}));
        assert_eq!((set.len(), skipped.len()), (1, 0), "{skipped:?}");
    }
}
