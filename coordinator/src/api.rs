//! The admin HTTP API: hosts, regions, migrations, draining, the balancer, stopping a region the old way. JSON; every `/v1` route needs
//! `Authorization: Bearer <token>`; `/openapi.json` (the OpenAPI document) and `/metrics`
//! (Prometheus) are open. Errors are `{"error": "..."}` with 400 (malformed request: a bad id in
//! the path, or a body that is not the operation's JSON, whatever axum's own rejection was), 401 (no
//! or wrong token), 404 (unknown host, region or migration, or no such route), 409 (not possible
//! now), 503 (the directory's store failed) or 504 (a process did not answer in time).
//!
//! The OpenAPI document lists, per operation, every status the handler can answer; the
//! [`doc`] module says what the derives cannot (exact ids, the create-region body's two shapes),
//! and `tests/openapi_contract.rs` holds the running API to it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::balancer::{Decision, HostPressure, Kind, Mode, Plan, Settings, Step};
use crate::balancing::{BalancerStatus, BalancerUpdate, Balancing, DecisionRecord, UpdateError};
use axum::{Json, Router};
use baton_wire::RegionId;
use baton_wire::authority::{AuthorityError, OwnershipAuthority};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::OpenApi;

use self::doc::{
    CreateRegionAfresh, CreateRegionFromCheckpoint, MigrationIdSchema, MigrationPath, PathText, RegionIdSchema,
    RegionPath,
};

use crate::directory::Directory;
use crate::hosts::{Happened, HostView, Hosts, ProcessView, RegionLoad};
use crate::migrations::{MigrationRecord, Migrations, Phase, PhaseTiming, StartError};
use baton_wire::serve::{ServerCommand, ServerEvent};

/// What the API serves from.
#[derive(Clone)]
pub struct ApiState {
    /// The bearer token.
    pub token: Arc<String>,
    /// The region directory.
    pub directory: Arc<Directory>,
    /// The hosts.
    pub hosts: Arc<Hosts>,
    /// The migrations.
    pub migrations: Arc<Migrations>,
    /// The balancer.
    pub balancing: Arc<Balancing>,
    /// Renders Prometheus metrics.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The hot standbys (`None`: the coordinator keeps none).
    pub standbys: Option<Arc<crate::standby::Standbys>>,
}

/// An error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}

struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<StartError> for Failure {
    fn from(error: StartError) -> Failure {
        match error {
            StartError::NotFound(message) => Failure(StatusCode::NOT_FOUND, message),
            StartError::Conflict(message) => Failure(StatusCode::CONFLICT, message),
        }
    }
}

fn bad_body(rejection: JsonRejection) -> Failure {
    Failure(StatusCode::BAD_REQUEST, format!("malformed request body: {}", rejection.body_text()))
}

pub mod doc;

/// Proof that the request carried the API token.
struct Authorized;

impl FromRequestParts<ApiState> for Authorized {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            // RFC 9110 §11.1: the scheme's name is case-insensitive ("bearer" is "Bearer").
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
            .map(|(_, token)| token);
        match presented {
            Some(token) if constant_time_eq(token.as_bytes(), state.token.as_bytes()) => Ok(Authorized),
            Some(_) => Err(Failure(StatusCode::UNAUTHORIZED, "the bearer token is not valid".into())),
            None => Err(Failure(StatusCode::UNAUTHORIZED, "missing Authorization: Bearer <token>".into())),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |difference, (x, y)| difference | (x ^ y)) == 0
}

/// A region as the directory and the hosts know it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegionView {
    /// The region.
    pub region: u64,
    /// The owning instance (process) at the directory.
    pub owner: String,
    /// The ownership epoch.
    pub epoch: u64,
    /// The host serving it, as its agent reports.
    pub host: Option<String>,
    /// The serving process's cluster address.
    pub address: Option<String>,
    /// Mean tick duration over the last second, in milliseconds, as its host reports.
    pub tick_ms: Option<f64>,
    /// Players in it, as its host reports.
    pub players: Option<u64>,
}

/// Create a region on a host. Its OpenAPI schema ([`doc`]) is the `oneOf` of its two shapes, afresh
/// and from a checkpoint, which the derive cannot say.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRegion {
    /// The region's id (unused so far).
    pub region: u64,
    /// The host to place it on.
    pub host: String,
    /// The game's initial world (for the sample: `objects`, `npcs`, `plants`, `seed`).
    #[serde(default)]
    pub world: serde_json::Map<String, serde_json::Value>,
    /// Restore the region from its newest checkpoint in the host's checkpoint store instead
    /// (after a full restart, or when its host died). The region may be in the directory already;
    /// it must not be served by any registered host.
    #[serde(default)]
    pub from_checkpoint: bool,
    /// Whether the region keeps a hot standby on another host (absent: the coordinator's
    /// `--standby`; a restore without it keeps the region's earlier choice).
    #[serde(default)]
    pub standby: Option<bool>,
}

/// A region that was stopped: saved to its host's checkpoint store and no longer served.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StoppedRegion {
    /// The region.
    pub region: u64,
    /// The host that served it.
    pub host: String,
    /// The process that served it (released when it serves nothing else).
    pub process: String,
    /// The epoch it had (a restore takes it over at the next).
    pub epoch: u64,
    /// The tick the checkpoint holds.
    pub tick: u64,
    /// The checkpoint file.
    pub checkpoint: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Player inputs received but not applied at the save, which it does not hold.
    pub inputs_discarded: u64,
}

/// Move a region.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartMigration {
    /// The region.
    #[schema(value_type = RegionIdSchema)]
    pub region: u64,
    /// The host to move it to.
    pub to_host: String,
}

/// Draining started.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DrainStarted {
    /// The host.
    pub host: String,
    /// The regions that will move away.
    pub regions: Vec<u64>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Baton coordinator admin API", version = "1"),
    paths(
        list_hosts, drain_host, list_standbys, list_regions, create_region, stop_region, list_migrations, start_migration,
        get_migration, cancel_migration, get_balancer, put_balancer, balancer_plan, openapi_document, metrics
    ),
    components(schemas(
        HostView, ProcessView, RegionLoad, RegionView, CreateRegion, CreateRegionAfresh, CreateRegionFromCheckpoint,
        RegionIdSchema, MigrationIdSchema, StoppedRegion, StartMigration, MigrationRecord, Phase, PhaseTiming,
        DrainStarted, ApiError, BalancerStatus, BalancerUpdate, DecisionRecord, Mode, Settings, Step, Decision, Kind,
        Plan, HostPressure, crate::standby::StandbyView
    )),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// The OpenAPI document.
#[must_use]
pub fn openapi_json() -> String {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc::fix_unsigned_formats(&mut document);
    serde_json::to_string_pretty(&document).unwrap_or_default()
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/hosts", get(list_hosts))
        .route("/v1/hosts/{host}/drain", post(drain_host))
        .route("/v1/standbys", get(list_standbys))
        .route("/v1/regions", get(list_regions).post(create_region))
        .route("/v1/regions/{region}/stop", post(stop_region))
        .route("/v1/migrations", get(list_migrations).post(start_migration))
        .route("/v1/migrations/{id}", get(get_migration))
        .route("/v1/migrations/{id}/cancel", post(cancel_migration))
        .route("/v1/balancer", get(get_balancer).put(put_balancer))
        .route("/v1/balancer/plan", get(balancer_plan))
        .route("/openapi.json", get(openapi_document))
        .route("/metrics", get(metrics))
        .fallback(|| async { Failure(StatusCode::NOT_FOUND, "no such route".into()) })
        .with_state(state)
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", security(()),
    responses((status = 200, description = "The OpenAPI document (no token needed).", body = serde_json::Value,
        content_type = "application/json")))]
async fn openapi_document() -> Response {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

/// The coordinator's metrics, in Prometheus's text format.
#[utoipa::path(get, path = "/metrics", security(()),
    responses(
        (status = 200, description = "The metrics (no token needed).", body = String, content_type = "text/plain"),
        (status = 404, description = "This coordinator does not record metrics.", body = ApiError)))]
async fn metrics(State(state): State<ApiState>) -> Response {
    let hosts = state.hosts.views();
    metrics::gauge!("baton_coordinator_hosts").set(hosts.len() as f64);
    metrics::gauge!("baton_coordinator_hosts_connected").set(hosts.iter().filter(|host| host.connected).count() as f64);
    metrics::gauge!("baton_coordinator_regions").set(state.directory.list().map_or(0, |regions| regions.len()) as f64);
    let migrations = state.migrations.list();
    for phase in ["committed", "aborted"] {
        let count =
            migrations.iter().filter(|record| serde_json::to_value(record.phase).ok() == Some(json!(phase))).count();
        metrics::gauge!("baton_coordinator_migrations", "outcome" => phase).set(count as f64);
    }
    metrics::gauge!("baton_coordinator_migrations_running")
        .set(migrations.iter().filter(|record| !record.phase.is_final()).count() as f64);
    if let Some(live) = baton_net::heap::live_bytes() {
        metrics::gauge!(baton_net::heap::LIVE_BYTES_GAUGE).set(live as f64);
    }
    match state.metrics {
        Some(handle) => handle.render().into_response(),
        None => Failure(StatusCode::NOT_FOUND, "metrics are not enabled".into()).into_response(),
    }
}

/// Every host and its processes.
#[utoipa::path(get, path = "/v1/hosts",
    responses((status = 200, description = "The hosts, by name.", body = Vec<HostView>),
        (status = 401, description = "No or wrong bearer token.", body = ApiError)))]
async fn list_hosts(_: Authorized, State(state): State<ApiState>) -> Json<Vec<HostView>> {
    Json(state.hosts.views())
}

/// Every region's hot standby, as far as it got (empty when the coordinator keeps none).
#[utoipa::path(get, path = "/v1/standbys",
    responses((status = 200, description = "The standbys, by region.", body = Vec<crate::standby::StandbyView>),
        (status = 401, description = "No or wrong bearer token.", body = ApiError)))]
async fn list_standbys(_: Authorized, State(state): State<ApiState>) -> Json<Vec<crate::standby::StandbyView>> {
    Json(state.standbys.as_ref().map(|standbys| standbys.views()).unwrap_or_default())
}

/// Drain a host: no new regions, and its regions move to other hosts.
#[utoipa::path(post, path = "/v1/hosts/{host}/drain",
    params(("host" = String, Path, description = "The host's name (percent-encoded UTF-8).")),
    responses(
        (status = 202, description = "Draining started; its migrations run in the background.", body = DrainStarted),
        (status = 400, description = "The host segment is not UTF-8 once percent-decoded.", body = ApiError),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 404, description = "Unknown host, or an empty host segment (no such route).", body = ApiError)))]
async fn drain_host(
    _: Authorized,
    State(state): State<ApiState>,
    PathText(host): PathText,
) -> Result<Response, Failure> {
    let regions = state.migrations.drain(&host)?;
    Ok((StatusCode::ACCEPTED, Json(DrainStarted { host, regions })).into_response())
}

fn region_view(state: &ApiState, region: RegionId, owner: String, epoch: u64) -> RegionView {
    let located = state.hosts.locate(region);
    let load = state.hosts.region_load(region);
    RegionView {
        region: region.0,
        owner,
        epoch,
        host: located.as_ref().map(|(host, _, _)| host.clone()),
        address: located.map(|(_, _, address)| address.to_string()),
        tick_ms: load.as_ref().map(|load| load.tick_ms),
        players: load.map(|load| load.players),
    }
}

/// Every region in the directory.
#[utoipa::path(get, path = "/v1/regions",
    responses((status = 200, description = "The regions, in id order.", body = Vec<RegionView>),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 503, description = "The directory's store failed.", body = ApiError)))]
async fn list_regions(_: Authorized, State(state): State<ApiState>) -> Result<Json<Vec<RegionView>>, Failure> {
    let regions =
        state.directory.list().map_err(|error| Failure(StatusCode::SERVICE_UNAVAILABLE, error.to_string()))?;
    Ok(Json(
        regions
            .into_iter()
            .map(|(region, ownership)| region_view(&state, region, ownership.owner, ownership.epoch.0))
            .collect(),
    ))
}

/// Create a region on a host (a warm process of that host takes it).
#[utoipa::path(post, path = "/v1/regions", request_body = CreateRegion,
    responses((status = 201, description = "A process of the host owns the region.", body = RegionView),
        (status = 400, description = "The body is not a `CreateRegion`: not JSON, no `Content-Type: application/json`, \
            a missing, unknown or mistyped field, more than 2 MiB, or both `from_checkpoint: true` and a non-empty \
            `world`.",
            body = ApiError),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 404, description = "Unknown host.", body = ApiError),
        (status = 409, description = "Not possible now: the region exists (restore it with `from_checkpoint`), a \
            migration or failover of it is in flight, a host serves it, the host is draining or free, not connected or has no warm process, or the process refused the \
            region.", body = ApiError),
        (status = 503, description = "The directory's store failed.", body = ApiError),
        (status = 504, description = "The process did not report owning the region within 120 s.", body = ApiError)))]
async fn create_region(
    _: Authorized,
    State(state): State<ApiState>,
    body: Result<Json<CreateRegion>, JsonRejection>,
) -> Result<Response, Failure> {
    let Json(request) = body.map_err(bad_body)?;
    match state.directory.current(RegionId(request.region)) {
        // Restoring from a checkpoint takes the region over at epoch + 1; starting it afresh
        // would throw away the world it has.
        Ok(_) if request.from_checkpoint => {}
        Ok(ownership) => {
            return Err(Failure(
                StatusCode::CONFLICT,
                format!(
                    "region {} exists ({}@{}); restore it with \"from_checkpoint\": true",
                    request.region, ownership.owner, ownership.epoch
                ),
            ));
        }
        Err(AuthorityError::UnknownRegion(_)) => {}
        Err(error) => return Err(Failure(StatusCode::SERVICE_UNAVAILABLE, error.to_string())),
    }
    if request.from_checkpoint && !request.world.is_empty() {
        return Err(Failure(StatusCode::BAD_REQUEST, "give either \"world\" or \"from_checkpoint\", not both".into()));
    }
    if let Some(record) = state.migrations.running().into_iter().find(|record| record.region == request.region) {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!("region {} has a {} in flight (id {})", request.region, record.kind, record.id),
        ));
    }
    // Invariant 1: a restore fences the previous owner by epoch, but only a dead owner can be
    // fenced safely, so a region some host still serves is moved with a migration instead.
    if let Some((host, process, _)) = state.hosts.locate(RegionId(request.region)) {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!("region {} is served by {process} on {host}; move it with a migration", request.region),
        ));
    }
    if !state.hosts.exists(&request.host) {
        return Err(Failure(StatusCode::NOT_FOUND, format!("unknown host {}", request.host)));
    }
    if state.hosts.is_draining(&request.host) {
        return Err(Failure(StatusCode::CONFLICT, format!("host {} is draining", request.host)));
    }
    if state.hosts.is_free(&request.host) {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!(
                "host {} is free (the balancer emptied it; it takes regions once taken back into use)",
                request.host
            ),
        ));
    }
    let mut events = state.hosts.subscribe();
    let (process, _) = state
        .hosts
        .claim(&request.host, Duration::from_secs(10))
        .await
        .map_err(|error| Failure(StatusCode::CONFLICT, error.to_string()))?;
    // In use while it loads the world or the checkpoint (not yet the directory's owner).
    let _placing = state.hosts.placing(&process);
    let region = RegionId(request.region);
    let command = ServerCommand::Host {
        region,
        world: request.world.clone(),
        from_checkpoint: request.from_checkpoint,
        take_over: None,
    };
    state
        .hosts
        .run(&request.host, &process, command)
        .map_err(|error| Failure(StatusCode::CONFLICT, error.to_string()))?;
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            match events.recv().await {
                Ok(event) if event.process == process => match event.happened {
                    Happened::Event(ServerEvent::Owning { region: owned, epoch }) if owned == region => {
                        return Ok(epoch.0);
                    }
                    Happened::Event(ServerEvent::Error { region: about, error })
                        if about.is_none_or(|about| about == region) =>
                    {
                        return Err(error);
                    }
                    Happened::Exited { .. } => return Err("the process exited".to_owned()),
                    Happened::Event(_) => {}
                },
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return Err("the coordinator is stopping".to_owned()),
            }
        }
    })
    .await;
    match waited {
        Ok(Ok(epoch)) => {
            // Running again: a failover takes it over if its host is lost.
            if let Err(error) = state.directory.set_stopped(region, false) {
                tracing::error!(%region, %error, "could not record that the region runs again");
            }
            if request.standby.is_some()
                && let Err(error) = state.directory.set_standby_choice(region, request.standby)
            {
                tracing::error!(%region, %error, "could not record whether the region wants a standby");
            }
            Ok((StatusCode::CREATED, Json(region_view(&state, RegionId(request.region), process, epoch)))
                .into_response())
        }
        Ok(Err(reason)) => {
            let _ = state.hosts.release(&request.host, &process);
            Err(Failure(StatusCode::CONFLICT, format!("the process refused the region: {reason}")))
        }
        Err(_) => Err(Failure(StatusCode::GATEWAY_TIMEOUT, "the region did not start within 120 s".into())),
    }
}

/// Stop a region the way regions were restarted before handoffs: its host saves it to the
/// checkpoint store and stops serving it; its players' sessions end. Start it again, on any host
/// that reads the same store, with `POST /v1/regions {"from_checkpoint": true}`. A migration moves
/// a region without any of this; stopping is for maintenance that needs the region down, and the
/// load test's restart baseline.
#[utoipa::path(post, path = "/v1/regions/{region}/stop",
    params(("region" = RegionIdSchema, Path, description = "The region (decimal digits).")),
    responses((status = 200, description = "The region was saved and is no longer served.", body = StoppedRegion),
        (status = 400, description = "The region segment is not a `RegionId`.", body = ApiError),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 404, description = "The directory does not know the region, or an empty region segment (no such \
            route).",
            body = ApiError),
        (status = 409, description = "Not possible now: the region is being migrated, no host serves it, its host is \
            not connected, or its process refused to stop it.", body = ApiError),
        (status = 503, description = "The directory's store failed.", body = ApiError),
        (status = 504, description = "The process did not report the region stopped within 30 s.", body = ApiError)))]
async fn stop_region(
    _: Authorized,
    State(state): State<ApiState>,
    RegionPath(region): RegionPath,
) -> Result<Json<StoppedRegion>, Failure> {
    match state.directory.current(RegionId(region)) {
        Ok(_) => {}
        Err(AuthorityError::UnknownRegion(_)) => {
            return Err(Failure(StatusCode::NOT_FOUND, format!("no region {region}")));
        }
        Err(error) => return Err(Failure(StatusCode::SERVICE_UNAVAILABLE, error.to_string())),
    }
    if state.migrations.running().iter().any(|record| record.region == region) {
        return Err(Failure(StatusCode::CONFLICT, format!("region {region} is being migrated; stop it afterwards")));
    }
    let Some((host, process, _)) = state.hosts.locate(RegionId(region)) else {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!("region {region} is not served by any host (stopped already?)"),
        ));
    };
    let mut events = state.hosts.subscribe();
    let stopping = RegionId(region);
    state
        .hosts
        .run(&host, &process, ServerCommand::Stop { region: stopping })
        .map_err(|error| Failure(StatusCode::CONFLICT, error.to_string()))?;
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match events.recv().await {
                Ok(event) if event.process == process => match event.happened {
                    Happened::Event(ServerEvent::Stopped {
                        region: about,
                        epoch,
                        tick,
                        bytes,
                        path,
                        inputs_discarded,
                    }) if about == stopping => {
                        return Ok(StoppedRegion {
                            region,
                            host: host.clone(),
                            process: process.clone(),
                            epoch: epoch.0,
                            tick,
                            checkpoint: path,
                            bytes,
                            inputs_discarded,
                        });
                    }
                    Happened::Event(ServerEvent::StopRefused { region: about, reason }) if about == stopping => {
                        return Err(reason);
                    }
                    Happened::Event(ServerEvent::Error { region: about, error })
                        if about.is_none_or(|about| about == stopping) =>
                    {
                        return Err(error);
                    }
                    Happened::Exited { .. } => return Err("the process exited".to_owned()),
                    Happened::Event(_) => {}
                },
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return Err("the coordinator is stopping".to_owned()),
            }
        }
    })
    .await;
    let stopped = match waited {
        Ok(Ok(stopped)) => stopped,
        Ok(Err(reason)) => {
            return Err(Failure(StatusCode::CONFLICT, format!("{process} refused to stop it: {reason}")));
        }
        Err(_) => return Err(Failure(StatusCode::GATEWAY_TIMEOUT, format!("{process} did not stop it within 30 s"))),
    };
    // Stopped on purpose: no failover brings it back.
    if let Err(error) = state.directory.set_stopped(stopping, true) {
        tracing::error!(region, %error, "could not record that the region was stopped");
    }
    // A process serving nothing any more goes away; the agent's warm pool has replacements.
    if state.hosts.regions_of(&host, &process).is_some_and(|regions| regions.is_empty()) {
        let _ = state.hosts.release(&host, &process);
    }
    tracing::info!(region, host, process, "region stopped and saved");
    Ok(Json(stopped))
}

/// The migration history, oldest first: every running migration and the last 1000 to finish.
#[utoipa::path(get, path = "/v1/migrations",
    responses((status = 200, description = "Every running migration and the last 1000 to finish, oldest first.", body = Vec<MigrationRecord>),
        (status = 401, description = "No or wrong bearer token.", body = ApiError)))]
async fn list_migrations(_: Authorized, State(state): State<ApiState>) -> Json<Vec<MigrationRecord>> {
    Json(state.migrations.list())
}

/// Move a region to another host.
#[utoipa::path(post, path = "/v1/migrations", request_body = StartMigration,
    responses(
        (status = 202, description = "The migration started; follow it at `/v1/migrations/{id}`.",
            body = MigrationRecord),
        (status = 400, description = "The body is not a `StartMigration`: not JSON, no \
            `Content-Type: application/json`, a missing, unknown or mistyped field, or more than 2 MiB.",
            body = ApiError),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 404, description = "No registered host serves the region, or the target host is unknown.",
            body = ApiError),
        (status = 409, description = "Not possible now: the region is on the target already or being migrated, the \
            target is draining or free, or a host has as many migrations running as it may.", body = ApiError)))]
async fn start_migration(
    _: Authorized,
    State(state): State<ApiState>,
    body: Result<Json<StartMigration>, JsonRejection>,
) -> Result<Response, Failure> {
    let Json(request) = body.map_err(bad_body)?;
    let record = state.migrations.start(request.region, &request.to_host, "migration")?;
    Ok((StatusCode::ACCEPTED, Json(record)).into_response())
}

/// One migration.
#[utoipa::path(get, path = "/v1/migrations/{id}",
    params(("id" = MigrationIdSchema, Path, description = "The migration (decimal digits).")),
    responses((status = 200, description = "The migration.", body = MigrationRecord),
        (status = 400, description = "The id segment is not a `MigrationId`.", body = ApiError),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 404, description = "No such migration, or an empty id segment (no such route).", body = ApiError)))]
async fn get_migration(
    _: Authorized,
    State(state): State<ApiState>,
    MigrationPath(id): MigrationPath,
) -> Result<Json<MigrationRecord>, Failure> {
    state.migrations.get(id).map(Json).ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no migration {id}")))
}

/// Cancel a migration that has not started its handoff.
#[utoipa::path(post, path = "/v1/migrations/{id}/cancel",
    params(("id" = MigrationIdSchema, Path, description = "The migration (decimal digits).")),
    responses((status = 202, description = "Cancelling: the migration aborts (no body)."),
        (status = 400, description = "The id segment is not a `MigrationId`.", body = ApiError),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 404, description = "No such migration, or an empty id segment (no such route).", body = ApiError),
        (status = 409, description = "The migration is over or its handoff has started.", body = ApiError)))]
async fn cancel_migration(
    _: Authorized,
    State(state): State<ApiState>,
    MigrationPath(id): MigrationPath,
) -> Result<StatusCode, Failure> {
    state.migrations.cancel(id)?;
    Ok(StatusCode::ACCEPTED)
}

fn balancer_unavailable() -> Failure {
    Failure(StatusCode::SERVICE_UNAVAILABLE, "the balancer is unavailable".into())
}

/// The balancer: its mode, settings, hosts in use and free, and its decisions.
#[utoipa::path(get, path = "/v1/balancer",
    responses((status = 200, description = "The balancer.", body = BalancerStatus),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 503, description = "The balancer's state is unavailable.", body = ApiError)))]
async fn get_balancer(_: Authorized, State(state): State<ApiState>) -> Result<Json<BalancerStatus>, Failure> {
    state.balancing.status().map(Json).ok_or_else(balancer_unavailable)
}

/// Change the balancer's mode (`off`, `dry-run`, `on`) and/or its settings.
#[utoipa::path(put, path = "/v1/balancer", request_body = BalancerUpdate,
    responses((status = 200, description = "The balancer as changed.", body = BalancerStatus),
        (status = 400, description = "The body is not a `BalancerUpdate` (not JSON, an unknown or mistyped \
            field, more than 2 MiB), or the settings do not hold (levels not rising, numbers out of range); \
            nothing changed.", body = ApiError),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 503, description = "The balancer's state is unavailable.", body = ApiError)))]
async fn put_balancer(
    _: Authorized,
    State(state): State<ApiState>,
    body: Result<Json<BalancerUpdate>, JsonRejection>,
) -> Result<Json<BalancerStatus>, Failure> {
    let Json(update) = body.map_err(bad_body)?;
    match state.balancing.update(update) {
        Ok(status) => Ok(Json(status)),
        Err(UpdateError::Unavailable) => Err(balancer_unavailable()),
        Err(UpdateError::Invalid(error)) => {
            Err(Failure(StatusCode::BAD_REQUEST, format!("bad balancer settings: {error}")))
        }
    }
}

/// What the balancer would do now and why, whatever its mode (changes nothing).
#[utoipa::path(get, path = "/v1/balancer/plan",
    responses((status = 200, description = "The plan: steps, notes on what is not planned and why, hosts' load.",
            body = Plan),
        (status = 401, description = "No or wrong bearer token.", body = ApiError),
        (status = 503, description = "The balancer's state is unavailable.", body = ApiError)))]
async fn balancer_plan(_: Authorized, State(state): State<ApiState>) -> Result<Json<Plan>, Failure> {
    state.balancing.plan().map(Json).ok_or_else(balancer_unavailable)
}
