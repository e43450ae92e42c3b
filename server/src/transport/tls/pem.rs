//! The certificate chain and private key files → one checked `CertifiedKey`, or an error that
//! names the setting, the file and what is wrong with it. Used at start (where an error stops the
//! node) and at each reload (where it keeps the certificate being served).

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys};
use std::path::{Path, PathBuf};

/// Where the server's certificate and key are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files {
    /// The chain, leaf first (PEM `CERTIFICATE` blocks).
    pub cert: PathBuf,
    /// The leaf's private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) PEM.
    pub key: PathBuf,
}

/// Which of the two settings a problem is with; shown as its flag and variable so the operator
/// knows what to fix whichever way they set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Part::Cert => "--tls-cert (CHATD_TLS_CERT)",
            Part::Key => "--tls-key (CHATD_TLS_KEY)",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{part} {path}: cannot read: {source}")]
    Read {
        part: Part,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{part} {path}: {reason}")]
    Invalid {
        part: Part,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "--tls-key (CHATD_TLS_KEY) {key}: the private key does not match the certificate in \
         --tls-cert (CHATD_TLS_CERT) {cert}"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
}

impl PemError {
    fn invalid(part: Part, path: &Path, reason: impl Into<String>) -> PemError {
        PemError::Invalid {
            part,
            path: path.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Reads both files and checks that they make a usable pair.
pub fn load(files: &Files, provider: &CryptoProvider) -> Result<CertifiedKey, PemError> {
    let cert_pem = read(Part::Cert, &files.cert)?;
    let key_pem = read(Part::Key, &files.key)?;
    certified_key(files, &cert_pem, &key_pem, provider)
}

fn read(part: Part, path: &Path) -> Result<Vec<u8>, PemError> {
    std::fs::read(path).map_err(|source| PemError::Read {
        part,
        path: path.to_owned(),
        source,
    })
}

/// The pair from the files' contents (`files` names them in errors).
pub fn certified_key(
    files: &Files,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, PemError> {
    let chain = chain(&files.cert, cert_pem)?;
    let key = private_key(&files.key, key_pem)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| PemError::invalid(Part::Key, &files.key, format!("unusable key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(PemError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        // ring's keys all know their public half, so this is the leaf failing to parse.
        Err(e) => Err(PemError::invalid(
            Part::Cert,
            &files.cert,
            format!("the first certificate is not a valid X.509 certificate: {e}"),
        )),
    }
}

fn chain(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::invalid(Part::Cert, path, format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(PemError::invalid(
            Part::Cert,
            path,
            "no CERTIFICATE block: expected the certificate chain in PEM, leaf first",
        ));
    }
    Ok(chain)
}

fn private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, PemError> {
    use rustls::pki_types::pem::Error;
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let reason = match e {
            Error::NoItemsFound => {
                "no private key: expected a PEM block PRIVATE KEY (PKCS#8), RSA PRIVATE KEY \
                 (PKCS#1) or EC PRIVATE KEY (SEC1)"
                    .to_string()
            }
            e => format!("not PEM: {e}"),
        };
        PemError::invalid(Part::Key, path, reason)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};

    fn provider() -> CryptoProvider {
        super::super::ring_provider().as_ref().clone()
    }

    fn files() -> Files {
        Files {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
        }
    }

    /// A self-signed certificate for localhost and its key (PKCS#8 PEM).
    fn pair(alg: &'static rcgen::SignatureAlgorithm) -> (String, String, KeyPair) {
        let key = KeyPair::generate_for(alg).unwrap();
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = push_fakes::tls::pem;
        (
            pem("CERTIFICATE", cert.der()),
            pem("PRIVATE KEY", &key.serialize_der()),
            key,
        )
    }

    fn load(cert: &str, key: &str) -> Result<CertifiedKey, PemError> {
        certified_key(&files(), cert.as_bytes(), key.as_bytes(), &provider())
    }

    #[test]
    fn a_matching_pair_loads_with_its_chain() {
        let (cert, key, _) = pair(&PKCS_ECDSA_P256_SHA256);
        let (ca, _, _) = pair(&PKCS_ECDSA_P384_SHA384);
        let chain = format!("{cert}\n{ca}");
        let loaded = load(&chain, &key).unwrap();
        assert_eq!(loaded.cert.len(), 2, "leaf and intermediate");
    }

    #[test]
    fn sec1_ec_keys_load_too() {
        // rcgen writes PKCS#8; the same key as SEC1 `EC PRIVATE KEY` (what `openssl ecparam
        // -genkey` writes) is the PKCS#8 wrapper's inner octet string.
        let (cert, _, key) = pair(&PKCS_ECDSA_P256_SHA256);
        let pkcs8 = key.serialize_der();
        let sec1 = sec1_from_pkcs8(&pkcs8);
        let pem = push_fakes::tls::pem("EC PRIVATE KEY", &sec1);
        load(&cert, &pem).unwrap();
    }

    /// The SEC1 `ECPrivateKey` inside a PKCS#8 `PrivateKeyInfo`: the last OCTET STRING (0x04)
    /// of the outer SEQUENCE. Short-form and 0x81 lengths are all P-256 needs.
    fn sec1_from_pkcs8(der: &[u8]) -> Vec<u8> {
        let len = |b: &[u8]| -> (usize, usize) {
            if b[0] < 0x80 {
                (b[0] as usize, 1)
            } else {
                (b[1] as usize, 2)
            }
        };
        let (_, outer_hdr) = len(&der[1..]);
        let mut at = 1 + outer_hdr;
        loop {
            let tag = der[at];
            let (l, h) = len(&der[at + 1..]);
            let body = at + 1 + h;
            if tag == 0x04 {
                return der[body..body + l].to_vec();
            }
            at = body + l;
        }
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch_naming_both_files() {
        let (cert, _, _) = pair(&PKCS_ECDSA_P256_SHA256);
        let (_, other_key, _) = pair(&PKCS_ECDSA_P256_SHA256);
        let e = load(&cert, &other_key).unwrap_err();
        assert!(matches!(e, PemError::Mismatch { .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("--tls-key") && text.contains("key.pem") && text.contains("cert.pem"),
            "{text}"
        );
    }

    #[test]
    fn files_without_the_right_blocks_say_what_was_expected() {
        let (cert, key, _) = pair(&PKCS_ECDSA_P256_SHA256);
        let cases = [
            ("", key.as_str(), "--tls-cert", "no CERTIFICATE block"),
            ("hello", key.as_str(), "--tls-cert", "no CERTIFICATE block"),
            (
                key.as_str(),
                key.as_str(),
                "--tls-cert",
                "no CERTIFICATE block",
            ),
            (cert.as_str(), "", "--tls-key", "no private key"),
            (cert.as_str(), cert.as_str(), "--tls-key", "no private key"),
        ];
        for (c, k, part, want) in cases {
            let e = load(c, k).unwrap_err().to_string();
            assert!(e.starts_with(part) && e.contains(want), "{e}");
        }
    }

    #[test]
    fn broken_pem_and_garbage_der_are_refused() {
        let (cert, key, _) = pair(&PKCS_ECDSA_P256_SHA256);
        // Cut off half way: no END line.
        let half = &key[..key.len() / 2];
        let e = load(&cert, half).unwrap_err().to_string();
        assert!(e.starts_with("--tls-key"), "{e}");

        let junk_key = push_fakes::tls::pem("PRIVATE KEY", b"not a key at all");
        let e = load(&cert, &junk_key).unwrap_err().to_string();
        assert!(
            e.starts_with("--tls-key") && e.contains("unusable key"),
            "{e}"
        );

        let junk_cert = push_fakes::tls::pem("CERTIFICATE", b"not a certificate");
        let e = load(&junk_cert, &key).unwrap_err().to_string();
        assert!(e.starts_with("--tls-cert") && e.contains("X.509"), "{e}");
    }

    #[test]
    fn a_missing_file_names_its_setting_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let files = Files {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("key.pem"),
        };
        let e = super::load(&files, &provider()).unwrap_err().to_string();
        assert!(
            e.starts_with("--tls-cert (CHATD_TLS_CERT)") && e.contains("nope.pem"),
            "{e}"
        );
    }
}
