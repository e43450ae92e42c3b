//! A fake Sygnal-like push gateway: `POST /_matrix/push/v1/notify` with
//! `{"notification": {…, "devices": [{"app_id", "pushkey", "data"}]}}`, the bearer secret
//! checked when one is set, every notification recorded, and `{"rejected": [pushkeys]}` for
//! the pushkeys a test marked dead (or a scripted answer).

use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use crate::server::{Alpn, Answer, FakeServer, Recorded};
use crate::tls::TestPki;

pub const PATH: &str = "/_matrix/push/v1/notify";

struct State {
    secret: Option<String>,
    rejected: Mutex<HashSet<String>>,
    next: Mutex<VecDeque<Answer>>,
    notifications: Mutex<Vec<Value>>,
}

/// The fake gateway.
pub struct FakeWebhook {
    server: FakeServer,
    state: Arc<State>,
}

impl FakeWebhook {
    /// Starts the gateway; with `secret`, requests without `Authorization: Bearer <secret>`
    /// are answered 401.
    pub async fn start(pki: &TestPki, secret: Option<&str>) -> Self {
        let state = Arc::new(State {
            secret: secret.map(str::to_owned),
            rejected: Mutex::new(HashSet::new()),
            next: Mutex::new(VecDeque::new()),
            notifications: Mutex::new(Vec::new()),
        });
        let handler_state = state.clone();
        let server = FakeServer::https(
            pki,
            Alpn::Both,
            Arc::new(move |req: &Recorded| handle(&handler_state, req)),
        )
        .await
        .expect("fake webhook gateway listens");
        FakeWebhook { server, state }
    }

    /// The notify URL (`WebhookConfig::url`).
    pub fn url(&self) -> String {
        format!("{}{PATH}", self.server.url())
    }

    /// From now on this pushkey is in the `rejected` list of every answer naming it.
    pub fn reject(&self, pushkey: &str) {
        self.state.rejected.lock().insert(pushkey.to_owned());
    }

    /// The answer to the next well-formed notification, instead of the `rejected` list.
    pub fn answer_next(&self, answer: Answer) {
        self.state.next.lock().push_back(answer);
    }

    /// The `notification` objects of the well-formed requests, oldest first.
    pub fn notifications(&self) -> Vec<Value> {
        self.state.notifications.lock().clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.server.requests()
    }

    pub fn request_count(&self) -> usize {
        self.server.request_count()
    }
}

fn handle(state: &State, req: &Recorded) -> Answer {
    if req.path != PATH {
        return error(404, "M_UNRECOGNIZED", "no such path");
    }
    if req.method != http::Method::POST {
        return error(405, "M_UNRECOGNIZED", "POST only");
    }
    if let Some(secret) = &state.secret {
        let expected = format!("Bearer {secret}");
        if req.header("authorization") != Some(expected.as_str()) {
            return error(401, "M_UNAUTHORIZED", "bad or missing bearer secret");
        }
    }
    if !req
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json"))
    {
        return error(400, "M_NOT_JSON", "content-type must be application/json");
    }
    let Some(notification) = req.json().and_then(|v| v.get("notification").cloned()) else {
        return error(400, "M_BAD_JSON", "no notification object");
    };
    let pushkeys: Option<Vec<String>> = notification
        .get("devices")
        .and_then(Value::as_array)
        .filter(|devices| !devices.is_empty())
        .and_then(|devices| {
            devices
                .iter()
                .map(|d| d.get("pushkey").and_then(Value::as_str).map(str::to_owned))
                .collect()
        });
    let Some(pushkeys) = pushkeys else {
        return error(400, "M_BAD_JSON", "devices must list pushkeys");
    };
    state.notifications.lock().push(notification);
    if let Some(answer) = state.next.lock().pop_front() {
        return answer;
    }
    let rejected = state.rejected.lock();
    let dead: Vec<&String> = pushkeys.iter().filter(|k| rejected.contains(*k)).collect();
    Answer::json(200, &json!({ "rejected": dead }))
}

fn error(status: u16, code: &str, why: &str) -> Answer {
    Answer::json(status, &json!({ "errcode": code, "error": why }))
}
