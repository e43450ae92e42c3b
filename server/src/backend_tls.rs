//! The client side of TLS to a backend (Redis, Kafka): the CA that signed the server's
//! certificate and the client certificate and key the node presents, as files. They are checked
//! when the configuration is read, so a missing or mangled file stops start-up naming its setting
//! and path rather than surfacing later as an opaque handshake failure.
//!
//! PostgreSQL's URL carries its own: `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (README,
//! "TLS to the backends"); [`check_postgres_url`] checks those files the same way.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// TLS files for one backend; all `None`: the plain protocol (or, for a `rediss://` URL, TLS
/// trusting Mozilla's roots without a client certificate).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendTls {
    /// CA certificates (PEM) the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// The client certificate chain (PEM), for servers that require one; set with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

impl BackendTls {
    /// Whether any file is set, i.e. the backend is to be reached over TLS.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// The client certificate and key, when both are set (the configuration refuses one alone).
    pub fn client_pair(&self) -> Option<(&Path, &Path)> {
        Some((self.cert.as_deref()?, self.key.as_deref()?))
    }
}

/// What a TLS file must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemKind {
    /// One or more `CERTIFICATE` blocks (a CA bundle, a certificate chain).
    Certificates,
    /// One private key block.
    PrivateKey,
}

/// Reads `path` and checks that it holds `kind`; the error says what is wrong, for a message
/// that also names the setting.
pub fn check_pem(path: &Path, kind: PemKind) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    match kind {
        PemKind::Certificates => {
            let certs = CertificateDer::pem_slice_iter(&bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("not a PEM certificate file: {e}"))?;
            match certs.is_empty() {
                true => Err("not a PEM certificate file: no CERTIFICATE block in it".into()),
                false => Ok(()),
            }
        }
        PemKind::PrivateKey => match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(_) => Ok(()),
            Err(pem::Error::NoItemsFound) => {
                Err("not a PEM private key file: no PRIVATE KEY block in it".into())
            }
            Err(e) => Err(format!("not a PEM private key file: {e}")),
        },
    }
}

/// Checks the TLS files a PostgreSQL URL names (`sslrootcert`, `sslcert`, `sslkey`, and
/// sqlx's spellings of them) the way [`check_pem`] checks the other backends' settings, and
/// that a client certificate comes with its key. sqlx would read them only at the first
/// connection and say less about what is wrong.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    // An unparsable URL is sqlx's to report, with its own words.
    let Ok(url) = url::Url::parse(url) else {
        return Ok(());
    };
    let mut cert = None;
    let mut key = None;
    for (name, value) in url.query_pairs() {
        let kind = match name.as_ref() {
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" => PemKind::Certificates,
            "sslcert" | "ssl-cert" => {
                cert = Some(name.to_string());
                PemKind::Certificates
            }
            "sslkey" | "ssl-key" => {
                key = Some(name.to_string());
                PemKind::PrivateKey
            }
            _ => continue,
        };
        check_pem(Path::new(value.as_ref()), kind).map_err(|e| format!("{name}={value}: {e}"))?;
    }
    match (cert, key) {
        (Some(name), None) => Err(format!(
            "{name} needs sslkey too (the client certificate's key)"
        )),
        (None, Some(name)) => Err(format!("{name} needs sslcert too (the key's certificate)")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // PEM armour around bytes that are no real certificate or key: this check is about the
    // file's form (the right block, valid base64); the TLS libraries judge the contents.
    const CERT: &str =
        "-----BEGIN CERTIFICATE-----\nMIIBeTCCAR+gAwIBAgIU\n-----END CERTIFICATE-----\n";
    const KEY: &str =
        "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----\n";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn certificates_and_keys_are_told_apart_and_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cert = write(dir.path(), "c.pem", CERT);
        let key = write(dir.path(), "k.pem", KEY);
        let junk = write(dir.path(), "j.pem", "not pem at all\n");
        assert_eq!(check_pem(&cert, PemKind::Certificates), Ok(()));
        assert_eq!(check_pem(&key, PemKind::PrivateKey), Ok(()));
        assert_eq!(
            check_pem(&key, PemKind::Certificates),
            Err("not a PEM certificate file: no CERTIFICATE block in it".into())
        );
        assert_eq!(
            check_pem(&cert, PemKind::PrivateKey),
            Err("not a PEM private key file: no PRIVATE KEY block in it".into())
        );
        assert!(check_pem(&junk, PemKind::Certificates).is_err());
        let pg = |query: String| check_postgres_url(&format!("postgres://u@h/db?{query}"));
        let (c, k) = (cert.display(), key.display());
        assert_eq!(
            pg(format!(
                "sslmode=verify-full&sslrootcert={c}&sslcert={c}&sslkey={k}"
            )),
            Ok(())
        );
        assert_eq!(pg("sslmode=disable".into()), Ok(()));
        assert_eq!(
            pg(format!("sslcert={c}")),
            Err("sslcert needs sslkey too (the client certificate's key)".into())
        );
        assert_eq!(
            pg(format!("sslrootcert={k}")),
            Err(format!(
                "sslrootcert={k}: not a PEM certificate file: no CERTIFICATE block in it"
            ))
        );
        let missing = check_pem(&dir.path().join("none.pem"), PemKind::Certificates);
        assert!(
            missing
                .as_ref()
                .is_err_and(|e| e.starts_with("cannot read it: No such file")),
            "{missing:?}"
        );
    }
}

/// The TLS endpoints and files of the test services (`scripts/services` makes them; scripts/test
/// passes them on as `CHATD_TEST_TLS_*`). The tests that use them are `#[ignore]`d; run without
/// them, they fail rather than pass untested.
#[cfg(test)]
pub(crate) mod test_env {
    use super::BackendTls;
    use std::path::PathBuf;

    pub(crate) fn var(name: &str) -> String {
        match std::env::var(name) {
            Ok(v) if !v.is_empty() => v,
            _ => panic!(
                "{name} is not set: this test needs the services' TLS endpoints. Run \
                 `scripts/test`, or start them (`eval \"$(scripts/services up)\"`), export \
                 CHATD_TEST_TLS_DATABASE_URL=$CHATD_SERVICES_TLS_DATABASE_URL, \
                 CHATD_TEST_TLS_REDIS_URL=$CHATD_SERVICES_TLS_REDIS_URL, \
                 CHATD_TEST_TLS_KAFKA_BROKERS=$CHATD_SERVICES_TLS_KAFKA_BROKERS and \
                 CHATD_TEST_TLS_CA=$CHATD_SERVICES_TLS_CA and run the ignored tests"
            ),
        }
    }

    /// The directory of the test certificates (the CA's).
    fn dir() -> PathBuf {
        let ca = PathBuf::from(var("CHATD_TEST_TLS_CA"));
        ca.parent().map(PathBuf::from).unwrap_or_default()
    }

    /// The test CA and the client certificate it signed: what the services accept.
    pub(crate) fn trusted() -> BackendTls {
        let dir = dir();
        BackendTls {
            ca: Some(dir.join("ca.pem")),
            cert: Some(dir.join("client.pem")),
            key: Some(dir.join("client.key")),
        }
    }

    /// The test CA without a client certificate.
    pub(crate) fn without_client_cert() -> BackendTls {
        BackendTls {
            cert: None,
            key: None,
            ..trusted()
        }
    }

    /// A client certificate signed by a CA the services do not trust.
    pub(crate) fn untrusted_client() -> BackendTls {
        let dir = dir();
        BackendTls {
            cert: Some(dir.join("untrusted-client.pem")),
            key: Some(dir.join("untrusted-client.key")),
            ..trusted()
        }
    }

    /// A CA that did not sign the services' certificate (with the right client certificate).
    pub(crate) fn untrusted_ca() -> BackendTls {
        BackendTls {
            ca: Some(dir().join("untrusted-ca.pem")),
            ..trusted()
        }
    }
}
