//! `chat.v1.AdminService`: operator calls, for tokens with the admin role only. Every call is
//! written to the log's `audit` target (who, what, whom, the outcome) whatever its outcome.

use super::grpc::authorization;
use super::http::GaugeSource;
use crate::auth::{check_user_id, Authenticator, Caller};
use crate::clock::now_ms;
use crate::domain::user_data::UserData;
use crate::metrics::{Gauge, Throughput, METRICS};
use crate::Error;
use chat_proto::v1::{self as pb, admin_service_server::AdminService};
use futures_util::Stream;
use std::{pin::Pin, sync::atomic::Ordering::Relaxed, sync::Arc};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// Export chunks waiting for the client; the export reads the store no further ahead.
const EXPORT_QUEUE: usize = 4;

pub struct AdminApi {
    auth: Authenticator,
    node_id: String,
    gauges: GaugeSource,
    throughput: Arc<Throughput>,
    user_data: Arc<UserData>,
}

impl AdminApi {
    pub fn new(
        auth: Authenticator,
        node_id: String,
        gauges: GaugeSource,
        throughput: Arc<Throughput>,
        user_data: Arc<UserData>,
    ) -> Self {
        AdminApi {
            auth,
            node_id,
            gauges,
            throughput,
            user_data,
        }
    }

    /// The caller, if an admin; anyone else is refused (and audited).
    async fn admin<T>(&self, req: &Request<T>, action: &'static str) -> Result<Caller, Status> {
        let header = authorization(req)?;
        let caller = self.auth.authenticate_header(header.as_deref()).await?;
        if !caller.admin {
            tracing::warn!(target: "audit", action, caller = caller.user_id, outcome = "refused: not an admin");
            return Err(Error::PermissionDenied(format!(
                "{action} needs a token with the admin role"
            ))
            .into());
        }
        Ok(caller)
    }
}

/// The gauge named `name` among `gauges` (as the metrics endpoint shows them); 0 when this
/// node has none.
fn gauge(gauges: &[Gauge], name: &str) -> u64 {
    gauges
        .iter()
        .filter(|g| g.name == name)
        .map(|g| g.value.max(0.0) as u64)
        .sum()
}

fn target_user(user_id: &str) -> Result<(), Status> {
    check_user_id("user_id", user_id).map_err(Status::from)
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_stats(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        let caller = self.admin(&req, "GetStats").await?;
        tracing::info!(target: "audit", action = "GetStats", caller = caller.user_id, outcome = "ok");
        let gauges = (self.gauges)();
        Ok(Response::new(pb::Stats {
            node_id: self.node_id.clone(),
            sessions: gauge(&gauges, "chatd_sessions"),
            users_online: gauge(&gauges, "chatd_users_online"),
            messages_total: METRICS.messages_received.load(Relaxed),
            messages_per_second: self.throughput.per_second(),
            fanout_lag: gauge(&gauges, "chatd_fanout_backlog")
                + gauge(&gauges, "chatd_outbox_depth"),
            store_write_queue: gauge(&gauges, "chatd_store_write_queue"),
            push_dead_letters: METRICS.push_dead_letters(),
        }))
    }

    type ExportUserDataStream = ExportStream;

    async fn export_user_data(
        &self,
        req: Request<pb::ExportUserDataRequest>,
    ) -> Result<Response<Self::ExportUserDataStream>, Status> {
        let caller = self.admin(&req, "ExportUserData").await?;
        let user_id = req.into_inner().user_id;
        target_user(&user_id)?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(EXPORT_QUEUE);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<(), Status>>();
        let user_data = self.user_data.clone();
        tokio::spawn(async move {
            let result = user_data.export(&user_id, now_ms(), tx).await;
            match &result {
                Ok(()) => {
                    tracing::info!(target: "audit", action = "ExportUserData", caller = caller.user_id, user_id, outcome = "ok")
                }
                Err(e) => {
                    tracing::warn!(target: "audit", action = "ExportUserData", caller = caller.user_id, user_id, outcome = "failed", error = %e)
                }
            }
            let _ = done_tx.send(result.map_err(Status::from));
        });
        // The chunks, then the export's outcome: a failure partway ends the stream with its
        // status, so a client never takes a cut-short export for a whole one.
        let stream = futures_util::stream::unfold((rx, Some(done_rx)), |(mut rx, done)| async {
            if let Some(data) = rx.recv().await {
                return Some((Ok(pb::ExportChunk { data }), (rx, done)));
            }
            let outcome = match done?.await {
                Ok(outcome) => outcome,
                Err(_) => Err(Status::internal("the export stopped")),
            };
            outcome.err().map(|status| (Err(status), (rx, None)))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delete_user_data(
        &self,
        req: Request<pb::DeleteUserDataRequest>,
    ) -> Result<Response<pb::DeleteUserDataResponse>, Status> {
        let caller = self.admin(&req, "DeleteUserData").await?;
        let user_id = req.into_inner().user_id;
        target_user(&user_id)?;
        match self.user_data.erase(&user_id, now_ms()).await {
            Ok(erased) => {
                tracing::info!(
                    target: "audit",
                    action = "DeleteUserData",
                    caller = caller.user_id,
                    user_id,
                    messages_erased = erased.messages,
                    chats_left = erased.chats_left,
                    sessions_remained = erased.sessions_remained,
                    outcome = "ok"
                );
                Ok(Response::new(pb::DeleteUserDataResponse {
                    messages_deleted: erased.messages,
                    chats_left: erased.chats_left,
                }))
            }
            Err(e) => {
                tracing::warn!(target: "audit", action = "DeleteUserData", caller = caller.user_id, user_id, outcome = "failed", error = %e);
                Err(e.into())
            }
        }
    }
}
