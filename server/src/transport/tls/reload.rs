//! Certificates replaced on disk are picked up without a restart (a renewed Let's Encrypt or
//! cert-manager certificate). The handshake asks [`Current`] for the pair each time, so a swap
//! reaches every later connection; connections already open keep the session they agreed on.
//!
//! A task looks at both files' modification time and length every few seconds and reloads when
//! either changed. A pair that does not load (a file half written, the key of the next
//! certificate already there but not its certificate) is never served: the previous pair stays,
//! a warning says why, and the next poll tries again until the pair loads.

use super::pem::{self, Files};
use crate::metrics::METRICS;
use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::atomic::Ordering::Relaxed;
use std::{sync::Arc, time::Duration, time::SystemTime};
use tokio_util::sync::CancellationToken;

/// The pair handshakes are served with now.
pub struct Current(RwLock<Arc<CertifiedKey>>);

impl Current {
    pub fn new(first: CertifiedKey) -> Current {
        Current(RwLock::new(Arc::new(first)))
    }

    pub fn get(&self) -> Arc<CertifiedKey> {
        self.0.read().clone()
    }

    fn set(&self, next: CertifiedKey) {
        *self.0.write() = Arc::new(next);
    }
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// What a file looked like at a poll; `None` when it could not be looked at (being replaced).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn stamps(files: &Files) -> (Stamp, Stamp) {
    (stamp(&files.cert), stamp(&files.key))
}

/// Polls `files` every `every` until `shutdown`, swapping a new pair into `current`.
pub async fn watch(
    files: Files,
    current: Arc<Current>,
    provider: Arc<CryptoProvider>,
    every: Duration,
    shutdown: CancellationToken,
) {
    // The pair in `current` was loaded from what the files are now.
    let mut loaded = stamps(&files);
    // The stamps of the last pair that failed: warned about once, retried quietly.
    let mut failed = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = stamps(&files);
        if now == loaded && failed.is_none() {
            continue;
        }
        // Loading reads files: off the runtime's threads.
        let (f, p) = (files.clone(), provider.clone());
        let result = match tokio::task::spawn_blocking(move || pem::load(&f, &p)).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificate reload task failed; retrying next poll");
                continue;
            }
        };
        match result {
            Ok(pair) => {
                current.set(pair);
                loaded = now;
                failed = None;
                METRICS.tls_reloads_ok.fetch_add(1, Relaxed);
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                if failed != Some(now) {
                    METRICS.tls_reloads_failed.fetch_add(1, Relaxed);
                    tracing::warn!(
                        error = %e,
                        "TLS certificate files changed but do not load; still serving the previous certificate, retrying each poll"
                    );
                    failed = Some(now);
                } else {
                    tracing::debug!(error = %e, "TLS certificate files still do not load");
                }
            }
        }
    }
}
