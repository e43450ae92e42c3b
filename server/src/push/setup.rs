//! The providers this node pushes through, built from its [`PushConfig`]: each provider whose
//! settings are given, none otherwise. A half-configured provider stops start-up naming what is
//! missing, rather than silently sending nothing.

use super::apns::{ApnsConfig, ApnsSender};
use super::fcm::{FcmConfig, FcmSender};
use super::webhook::{WebhookConfig, WebhookSender};
use super::webpush::{self, WebPushConfig, WebPushSender};
use super::{Provider, Sender};
use crate::config::PushConfig;
use crate::domain::push_tokens::TokenCheck;
use crate::https::{HttpClient, HttpConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long one request to a provider may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The configured providers, by the tokens they serve.
#[derive(Clone, Default)]
pub struct Senders(BTreeMap<Provider, Arc<dyn Sender>>);

impl Senders {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn providers(&self) -> Vec<Provider> {
        self.0.keys().copied().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Sender>> {
        self.0.values()
    }

    /// For tests: any set of senders.
    pub fn of(senders: Vec<Arc<dyn Sender>>) -> Self {
        Senders(senders.into_iter().map(|s| (s.provider(), s)).collect())
    }
}

impl std::fmt::Debug for Senders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("push: {provider} needs {missing} as well")]
    Missing {
        provider: &'static str,
        missing: &'static str,
    },
    #[error("push: {0}")]
    Provider(String),
}

fn provider_err(e: impl std::fmt::Display) -> SetupError {
    SetupError::Provider(e.to_string())
}

/// The providers' checks of a token at registration: a Web Push subscription must have valid
/// keys and point at an allowed push service (whether or not Web Push is on, so a token never
/// waits in the store for a push it could not get).
pub fn token_check(cfg: &PushConfig) -> Result<TokenCheck, SetupError> {
    let hosts = cfg
        .webpush_hosts
        .clone()
        .unwrap_or_else(webpush::default_allowed_hosts);
    let allowed = webpush::AllowedHosts::new(&hosts).map_err(provider_err)?;
    Ok(Arc::new(move |provider, token| {
        if provider != Provider::WebPush {
            return Ok(());
        }
        let refused = |e: webpush::WebPushError| crate::Error::invalid("token", e.to_string());
        let subscription = webpush::parse_subscription(token).map_err(refused)?;
        allowed.check(&subscription).map_err(refused)
    }))
}

/// Builds every provider `cfg` configures.
pub fn senders(cfg: &PushConfig) -> Result<Senders, SetupError> {
    let http_cfg = HttpConfig {
        extra_ca_pem: cfg.ca_file.clone(),
        timeout: REQUEST_TIMEOUT,
    };
    let mut out: Vec<Arc<dyn Sender>> = Vec::new();
    let configured = cfg.fcm_credentials.is_some()
        || cfg.apns_key.is_some()
        || cfg.vapid_key.is_some()
        || cfg.webhook_url.is_some();
    if !configured {
        return Ok(Senders::default());
    }
    let http = HttpClient::new(&http_cfg).map_err(provider_err)?;
    if let Some(credentials) = &cfg.fcm_credentials {
        let mut fcm = FcmConfig::new(credentials.clone());
        if let Some(url) = &cfg.fcm_url {
            fcm.base_url = url.clone();
        }
        fcm.token_url = cfg.fcm_token_url.clone();
        out.push(Arc::new(
            FcmSender::new(&fcm, http.clone()).map_err(provider_err)?,
        ));
    }
    if let Some(key) = &cfg.apns_key {
        let need = |v: &Option<String>, missing| {
            v.clone().ok_or(SetupError::Missing {
                provider: "APNs (--push-apns-key)",
                missing,
            })
        };
        let key_id = need(&cfg.apns_key_id, "--push-apns-key-id")?;
        let team_id = need(&cfg.apns_team_id, "--push-apns-team-id")?;
        let topic = need(&cfg.apns_topic, "--push-apns-topic")?;
        let mut apns = ApnsConfig::new(key.clone(), &key_id, &team_id, &topic);
        if let Some(url) = &cfg.apns_url {
            apns.base_url = url.clone();
        }
        out.push(Arc::new(
            ApnsSender::new(&apns, &http_cfg).map_err(provider_err)?,
        ));
    }
    if let Some(key) = &cfg.vapid_key {
        let subject = cfg.vapid_subject.clone().ok_or(SetupError::Missing {
            provider: "Web Push (--push-vapid-key)",
            missing: "--push-vapid-subject",
        })?;
        let mut web = WebPushConfig::new(key.clone(), subject);
        if let Some(hosts) = &cfg.webpush_hosts {
            web.allowed_hosts = hosts.clone();
        }
        out.push(Arc::new(
            WebPushSender::new(&web, http.clone()).map_err(provider_err)?,
        ));
    }
    if let Some(url) = &cfg.webhook_url {
        let hook = WebhookConfig {
            url: url.clone(),
            secret: cfg.webhook_secret.clone(),
        };
        out.push(Arc::new(
            WebhookSender::new(&hook, http.clone()).map_err(provider_err)?,
        ));
    }
    Ok(Senders::of(out))
}
