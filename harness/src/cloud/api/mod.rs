//! The REST API and event stream of `hil cloud --api` (axum): the subset of Particle's cloud
//! API a release pipeline uses, with the paths, status codes and JSON shapes of reference
//! `particle-cloud-api.md` sections 1-3. This is the I/O layer: every request locks the cloud's
//! node, calls the sans-IO [`Cloud`] (its product operations in `products.rs`, [`Cloud::flash`])
//! with the node's current time, saves the change ([`Store`]) before answering, and wakes the
//! driver. Nothing here decides what a device should run.
//!
//! | Method and path | What |
//! |---|---|
//! | `PUT /v1/devices/:id`, `PUT /v1/products/:p/devices/:id` (multipart `file`) | flash a binary: 200 `{"id", "status": "Update started"}` |
//! | `PUT /v1/devices/:id` (JSON/form `firmware_updates_forced`) | force-enable updates |
//! | `PUT /v1/products/:p/devices/:id` (JSON/form) | `desired_firmware_version` (lock; `null` unlocks), `flash`, `development`, `groups`, `firmware_updates_forced` |
//! | `GET /v1/devices`, `GET /v1/devices/:id` | devices with their firmware and targets |
//! | `GET /v1/products/:p/devices[/:id]`, `DELETE /v1/products/:p/devices/:id` | product devices |
//! | `POST /v1/products/:p/devices` (`id`, or a multipart `file` of ids) | add devices to a product |
//! | `POST /v1/products/:p/firmware` (multipart `file` or `binary`, `version`, `title`) | upload: 201 |
//! | `GET /v1/products/:p/firmware[/:version[/binary]]`, `PUT`/`DELETE .../:version` | firmware |
//! | `PUT /v1/products/:p/firmware/release` (`version`, `product_default`, `groups`, `intelligent`) | release |
//! | `GET`/`POST /v1/products/:p/groups`, `GET`/`DELETE /v1/products/:p/groups/:name` | groups and the version released to each (description and color are not kept) |
//! | `POST /v1/products` (`id`, `name`, `platform_id` or `platform`), `GET /v1/products[/:p]` | ours: Particle creates products in its console |
//! | `POST /v1/products/:p/rollouts` (JSON: `app`, `stages`, `soak`, `success_threshold`, `in_progress_timeout`, `intelligent`, `abort`) | ours: start a staged rollout, 201 |
//! | `GET /v1/products/:p/rollouts[/:id]` | ours: staged rollouts, state, counts per stage, state changes |
//! | `PUT`/`POST /v1/products/:p/rollouts/:id/pause`, `.../resume`, `.../abort` (`reason`) | ours: a person's control of a rollout |
//! | `GET /v1/events/:prefix`, `/v1/devices/events[/:prefix]`, `/v1/devices/:id/events[/:prefix]`, `/v1/products/:p/events[/:prefix]`, `/v1/products/:p/devices/:id/events[/:prefix]` | Server-Sent Events |
//!
//! Release semantics (reference 2.2 leaves withdrawal UNCONFIRMED): `product_default=true`
//! makes the version the default, `product_default=false` withdraws it from the default if it
//! was; `groups` given is the version's whole set of groups (groups it had and are not listed
//! are withdrawn); at least one of the two must be given. The "must run on a device before the
//! first release" rule is not enforced (a lab releases freshly built versions).
//!
//! Staged rollouts are ours: Particle's cloud has no rollout API (a release reaches every device
//! it targets, reference 4.5). The paths follow Particle's style under the product, the body
//! keys are those of a fleet scenario's `[[fleet.rollout]]` ([`super::rollout::RolloutSpec`],
//! one deserialisation for both), the behaviour is `cloud::rollout`'s. A control the state does
//! not allow (resuming a running rollout, anything on an aborted one) is 409; an unknown
//! rollout 404. Every state change goes on the product's event stream as `hil/rollout/<kind>`
//! (`started`, `stage`, `paused`, `resumed`, `aborted`, `rolled_back`, `completed`; `coreid`
//! `api`, data: rollout id, version, stage, who and why), including the ones the cloud makes on
//! its own (a stage starting, an abort rule firing).
//!
//! Errors are JSON: `{"ok": false, "error": "<sentence>", "error_description": "<sentence>"}`
//! (api-js shows `error_description`), with Particle's bodies for auth (400 missing token, 401
//! invalid token, 403 `Permission Denied`).

pub mod auth;
pub mod body;
mod events;
mod json;
pub mod lab;

pub use auth::{Scope, Tokens};
pub use events::{api_event, Filter, SseItem};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body as HttpBody;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use protocol::module::{split_combined, Module};
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::fleet::{DeviceChange, FleetError, ProductId, Release};
use super::rollout::{Control, Rollout, RolloutCounts, RolloutSpec};
use super::store::{Store, StoreError};
use super::{Cloud, CloudEvent, DeviceId, JobId, OtaEventKind};
use crate::net::udp::UdpNode;
use crate::testbed::CloudNode;
use body::{query_params, Body};

/// The cloud's node as `hil cloud` runs it.
pub type SharedNode = Arc<UdpNode<CloudNode>>;

/// Largest request body (a combined system + user part is about 1 MB).
const MAX_BODY: usize = 64 << 20;
/// Silence after which an event stream gets a keep-alive newline (reference 3.2: at most 9 s).
pub const KEEPALIVE: Duration = Duration::from_secs(9);

/// An error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        let message = message.into();
        ApiError {
            status,
            body: json!({"ok": false, "error": message, "error_description": message}),
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    fn missing_token() -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            body: json!({"error": "invalid_request",
                         "error_description": "The access token was not found"}),
        }
    }

    fn invalid_token() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            body: json!({"error": "invalid_token",
                         "error_description": "The access token provided is invalid."}),
        }
    }

    fn forbidden(what: impl Into<String>) -> ApiError {
        let info = format!("this access token is not allowed to use {}", what.into());
        ApiError {
            status: StatusCode::FORBIDDEN,
            body: json!({"ok": false, "error": "Permission Denied", "info": info,
                         "error_description": info}),
        }
    }

    fn unsaved(e: StoreError) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the change was made but could not be saved: {e}"),
        )
    }
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> ApiError {
        let status = match e {
            FleetError::NoProduct(_)
            | FleetError::NotInProduct { .. }
            | FleetError::NoFirmware { .. }
            | FleetError::NoGroup { .. }
            | FleetError::NoRollout { .. } => StatusCode::NOT_FOUND,
            FleetError::RolloutControl { .. } => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.to_string())
    }
}

/// A body field that is not what it should be (the message names it).
impl From<String> for ApiError {
    fn from(message: String) -> ApiError {
        ApiError::bad_request(message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.status, &self.body)
    }
}

type ApiResult = Result<Response, ApiError>;

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok(json_response(status, &body))
}

/// Everything the handlers share.
pub struct ApiState {
    node: SharedNode,
    tokens: Tokens,
    store: Option<Mutex<Store>>,
    /// Saved single-device flashes by job, removed from the store when the job ends.
    flashes: Mutex<BTreeMap<JobId, i64>>,
    events: broadcast::Sender<Arc<SseItem>>,
    keepalive: Duration,
    /// What was last published and saved of the rollouts ([`ApiState::rollouts_changed`]).
    rollouts_seen: Mutex<RolloutsSeen>,
}

/// Per rollout (product, id): how many of its state changes were published, and what its
/// state and counts were when the rollouts were last saved.
#[derive(Debug, Default)]
struct RolloutsSeen {
    published: BTreeMap<(ProductId, u32), usize>,
    saved: Vec<RolloutMark>,
}

type RolloutMark = (ProductId, u32, &'static str, usize, usize, RolloutCounts);

fn rollout_marks(cloud: &Cloud) -> Vec<RolloutMark> {
    cloud
        .all_rollouts()
        .map(|r| {
            (
                r.product,
                r.id,
                r.state.name(),
                r.state.stage(r.plan.stages.len()),
                r.transitions.len(),
                r.counts(),
            )
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What was read back from `--state` into a cloud.
#[derive(Debug, Default)]
pub struct Restored {
    pub products: usize,
    pub firmware: usize,
    pub rollouts: usize,
    /// Saved flashes started again, by job.
    pub flashes: BTreeMap<JobId, i64>,
    /// Saved flashes for devices this cloud does not know (kept for a later start).
    pub skipped_flashes: usize,
}

/// Puts the saved state back into a cloud that is not running yet.
pub fn restore(cloud: &mut Cloud, store: &Store) -> Result<Restored, StoreError> {
    let saved = store.load()?;
    let mut restored = Restored {
        products: saved.fleet.products().count(),
        firmware: saved.fleet.products().map(|p| p.firmware.len()).sum(),
        ..Restored::default()
    };
    cloud.restore_fleet(Duration::ZERO, saved.fleet);
    let epoch = Duration::from_secs(cloud.unix_time_at_epoch());
    let mut rollouts = Vec::new();
    for r in store.load_rollouts()? {
        rollouts.push(
            Rollout::from_saved(&r, |unix| unix.saturating_sub(epoch)).map_err(|what| {
                StoreError::Content {
                    path: store.path().to_path_buf(),
                    what: format!("rollouts row (product {}, id {}): {what}", r.product, r.id),
                }
            })?,
        );
    }
    restored.rollouts = rollouts.len();
    cloud.restore_rollouts(rollouts);
    for d in saved.forced {
        cloud.set_updates_forced(Duration::ZERO, d.0, true);
    }
    let known = cloud.devices();
    for f in saved.flashes {
        if known.contains(&f.device) {
            let job = cloud.flash(Duration::ZERO, f.device.0, f.file);
            restored.flashes.insert(job, f.row);
        } else {
            restored.skipped_flashes += 1;
        }
    }
    Ok(restored)
}

impl ApiState {
    pub fn new(
        node: SharedNode,
        tokens: Tokens,
        store: Option<Store>,
        restored_flashes: BTreeMap<JobId, i64>,
    ) -> Arc<ApiState> {
        let (events, _) = broadcast::channel(1024);
        // Restored rollouts' state changes are history: not published again.
        let seen = node.with_node(|n, _| RolloutsSeen {
            published: n
                .cloud
                .all_rollouts()
                .map(|r| ((r.product, r.id), r.transitions.len()))
                .collect(),
            saved: rollout_marks(&n.cloud),
        });
        Arc::new(ApiState {
            node,
            tokens,
            store: store.map(Mutex::new),
            flashes: Mutex::new(restored_flashes),
            events,
            keepalive: KEEPALIVE,
            rollouts_seen: Mutex::new(seen),
        })
    }

    /// Publishes the rollouts' state changes not published yet on their product's stream, and
    /// saves the rollouts if their state or counts changed since the last save (or `force`).
    fn rollouts_changed(&self, cloud: &Cloud, force: bool) -> Result<(), StoreError> {
        let mut seen = lock(&self.rollouts_seen);
        for r in cloud.all_rollouts() {
            let done = seen.published.entry((r.product, r.id)).or_insert(0);
            for t in r.transitions.iter().skip(*done) {
                let data = json!({
                    "rollout": r.id,
                    "version": r.plan.version,
                    "stage": t.stage,
                    "by": t.by.name(),
                    "reason": t.reason,
                    "withdrawn": t.withdrawn,
                });
                self.publish(api_event(
                    &format!("hil/rollout/{}", t.kind.name()),
                    &data.to_string(),
                    r.product,
                    cloud.unix_time(t.at),
                ));
            }
            *done = r.transitions.len();
        }
        let marks = rollout_marks(cloud);
        if force || marks != seen.saved {
            if let Some(store) = &self.store {
                let saved: Vec<_> = cloud
                    .all_rollouts()
                    .map(|r| r.to_saved(|t| cloud.unix_time(t)))
                    .collect();
                lock(store).save_rollouts(&saved)?;
            }
            seen.saved = marks;
        }
        Ok(())
    }

    /// Feeds the cloud's events (as the owner drains them from the node) to the event
    /// streams, and forgets saved flashes that ended. Call it with the node locked.
    pub fn observe(&self, cloud: &Cloud, events: &[(std::time::Duration, CloudEvent)]) {
        for (_, event) in events {
            match event {
                CloudEvent::Stream(s) => {
                    let device = s.device_id;
                    let product = cloud.fleet().product_of(device);
                    // A product device's events carry its product's id (reference 3.2), not
                    // what its Hello said.
                    let frame = match product.and_then(|p| u16::try_from(p).ok()) {
                        Some(p) => {
                            let mut s = s.clone();
                            s.product_id = p;
                            s.to_sse(cloud.unix_time_at_epoch())
                        }
                        None => s.to_sse(cloud.unix_time_at_epoch()),
                    };
                    let item = SseItem {
                        name: s.name.clone(),
                        frame,
                        device: Some(device),
                        product,
                    };
                    let _ = self.events.send(Arc::new(item));
                }
                CloudEvent::Ota(o)
                    if matches!(
                        o.kind,
                        OtaEventKind::Succeeded | OtaEventKind::Failed { .. }
                    ) =>
                {
                    let row = lock(&self.flashes).remove(&o.job);
                    if let (Some(row), Some(store)) = (row, &self.store) {
                        if let Err(e) = lock(store).finish_flash(row) {
                            eprintln!("hil cloud: {e}");
                        }
                    }
                }
                _ => {}
            }
        }
        if let Err(e) = self.rollouts_changed(cloud, false) {
            eprintln!("hil cloud: saving rollouts: {e}");
        }
    }

    /// Runs `f` on the cloud with the node's time; the cloud's events go to the node's list
    /// (where the owner drains them) and the driver is woken.
    fn with_cloud<R>(&self, f: impl FnOnce(&mut Cloud, Duration) -> R) -> R {
        self.node.with_node(|n, now| n.act(now, f))
    }

    /// Like [`ApiState::with_cloud`] for a change: the fleet is saved (one transaction)
    /// before the answer; an error from `f` must have changed nothing.
    fn change<R>(
        &self,
        f: impl FnOnce(&mut Cloud, Duration) -> Result<R, ApiError>,
    ) -> Result<R, ApiError> {
        self.with_cloud(|cloud, now| {
            let r = f(cloud, now)?;
            if let Some(store) = &self.store {
                lock(store)
                    .save_fleet(cloud.fleet())
                    .map_err(ApiError::unsaved)?;
            }
            self.rollouts_changed(cloud, false)
                .map_err(ApiError::unsaved)?;
            Ok(r)
        })
    }

    fn publish(&self, item: SseItem) {
        let _ = self.events.send(Arc::new(item));
    }
}

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/products", post(create_product).get(list_products))
        .route("/v1/products/{p}", get(get_product))
        .route(
            "/v1/products/{p}/devices",
            get(list_product_devices).post(add_product_devices),
        )
        .route(
            "/v1/products/{p}/devices/{id}",
            get(get_product_device)
                .put(update_product_device)
                .delete(remove_product_device),
        )
        .route(
            "/v1/products/{p}/firmware",
            get(list_firmware).post(upload_firmware),
        )
        .route("/v1/products/{p}/firmware/release", put(release_firmware))
        .route(
            "/v1/products/{p}/firmware/{version}",
            get(get_firmware).put(edit_firmware).delete(delete_firmware),
        )
        .route(
            "/v1/products/{p}/firmware/{version}/binary",
            get(firmware_binary),
        )
        .route(
            "/v1/products/{p}/groups",
            get(list_groups).post(create_group),
        )
        .route(
            "/v1/products/{p}/groups/{name}",
            get(get_group).delete(delete_group),
        )
        .route(
            "/v1/products/{p}/rollouts",
            get(list_rollouts).post(create_rollout),
        )
        .route("/v1/products/{p}/rollouts/{id}", get(get_rollout))
        .route(
            "/v1/products/{p}/rollouts/{id}/{action}",
            put(control_rollout).post(control_rollout),
        )
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", get(get_device).put(update_device))
        .route("/v1/events", get(events_without_prefix))
        .route("/v1/events/", get(events_without_prefix))
        .route("/v1/events/{*prefix}", get(events_all))
        .route("/v1/devices/events", get(events_mine))
        .route("/v1/devices/events/{*prefix}", get(events_mine_prefix))
        .route("/v1/devices/{id}/events", get(events_device))
        .route("/v1/devices/{id}/events/{*prefix}", get(events_device))
        .route("/v1/products/{p}/events", get(events_product))
        .route("/v1/products/{p}/events/{*prefix}", get(events_product))
        .route(
            "/v1/products/{p}/devices/{id}/events",
            get(events_product_device),
        )
        .route(
            "/v1/products/{p}/devices/{id}/events/{*prefix}",
            get(events_product_device),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Errors axum itself answers (a path parameter that is not valid UTF-8 after percent
/// decoding, ...) come as plain text: they become the API's JSON error with that text.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).into_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
    };
    ApiError::new(status, text).into_response()
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<ApiState>) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint: {} {} (see `hil cloud --help` for the API)",
        req.method(),
        req.uri().path()
    ))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

// ---- request context ----

/// An authorised request: its token's scope, its body and query.
struct Call {
    scope: Scope,
    body: Body,
    query: BTreeMap<String, String>,
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// Authenticates (header, query, then body field `access_token`) and parses the body. A token
/// that is wrong is refused before the body is looked at.
async fn begin(state: &ApiState, req: Request) -> Result<Call, ApiError> {
    let (parts, body) = req.into_parts();
    let query = query_params(parts.uri.query());
    let early = bearer(&parts.headers).or_else(|| query.get("access_token").cloned());
    let mut scope = match &early {
        Some(t) => Some(
            state
                .tokens
                .scope(t)
                .cloned()
                .ok_or_else(ApiError::invalid_token)?,
        ),
        None => None,
    };
    let bytes = axum::body::to_bytes(body, MAX_BODY).await;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let parsed = match bytes {
        Ok(b) => Body::parse(content_type, b).await,
        Err(_) => Err(format!(
            "the body is larger than {} MiB, or was cut short",
            MAX_BODY >> 20
        )),
    };
    if scope.is_none() {
        let token = parsed
            .as_ref()
            .ok()
            .and_then(|b| b.text("access_token").ok().flatten())
            .ok_or_else(ApiError::missing_token)?;
        scope = Some(
            state
                .tokens
                .scope(&token)
                .cloned()
                .ok_or_else(ApiError::invalid_token)?,
        );
    }
    let body = parsed.map_err(ApiError::bad_request)?;
    Ok(Call {
        scope: scope.unwrap_or(Scope::Limited {
            products: BTreeSet::new(),
            devices: BTreeSet::new(),
        }),
        body,
        query,
    })
}

fn product_id(cloud: &Cloud, text: &str, scope: &Scope) -> Result<ProductId, ApiError> {
    let id = cloud
        .fleet()
        .find_product(text)
        .map(|p| p.id)
        .ok_or_else(|| ApiError::not_found(format!("product `{text}` does not exist")))?;
    if !scope.allows_product(id) {
        return Err(ApiError::forbidden(format!("product {id}")));
    }
    Ok(id)
}

fn parse_device(text: &str) -> Result<DeviceId, ApiError> {
    text.parse::<DeviceId>()
        .map_err(|e| ApiError::not_found(format!("device not found: {e}")))
}

/// A device this cloud knows (registered key or product member) that the token may use.
fn device_id(cloud: &Cloud, text: &str, scope: &Scope) -> Result<DeviceId, ApiError> {
    let id = parse_device(text)?;
    let product = cloud.fleet().product_of(id);
    if !scope.allows_device(id, product) {
        return Err(ApiError::forbidden(format!("device {id}")));
    }
    if product.is_none() && cloud.device(id.0).is_none() {
        return Err(ApiError::not_found(format!(
            "device {id} is not known to this cloud (no key registered, in no product)"
        )));
    }
    Ok(id)
}

/// A device of product `p` the token may use.
fn product_device(
    cloud: &Cloud,
    p: &str,
    id: &str,
    scope: &Scope,
) -> Result<(ProductId, DeviceId), ApiError> {
    let product = cloud
        .fleet()
        .find_product(p)
        .map(|p| p.id)
        .ok_or_else(|| ApiError::not_found(format!("product `{p}` does not exist")))?;
    let device = parse_device(id)?;
    if !scope.allows_device(device, Some(product)) {
        return Err(ApiError::forbidden(format!("device {device}")));
    }
    if cloud.fleet().product_of(device) != Some(product) {
        return Err(FleetError::NotInProduct { product, device }.into());
    }
    Ok((product, device))
}

fn updated_at(cloud: &Cloud, now: Duration) -> String {
    json::iso(cloud.unix_time(now))
}

fn with_updated_at(mut v: Value, at: String) -> Value {
    if let Value::Object(map) = &mut v {
        map.insert("updated_at".into(), Value::String(at));
    }
    v
}

// ---- products (ours) ----

async fn create_product(State(s): State<Arc<ApiState>>, req: Request) -> ApiResult {
    let call = begin(&s, req).await?;
    if !call.scope.is_all() {
        return Err(ApiError::forbidden("product creation (a scoped token)"));
    }
    let b = &call.body;
    let id = match b.text("id")? {
        Some(t) => t.trim().parse::<ProductId>().map_err(|_| {
            ApiError::bad_request(format!(
                "field `id`: `{t}` is not a product id (a number up to 4294967295)"
            ))
        })?,
        None => {
            return Err(ApiError::bad_request(
                "field `id` (the product id) is required",
            ))
        }
    };
    let name = b.text("name")?.unwrap_or_else(|| id.to_string());
    let platform = platform_of(b)?;
    let product = s.change(|cloud, _| {
        cloud.create_product(id, &name, platform)?;
        Ok(json::product(
            cloud.fleet().product(id).expect("just created"),
        ))
    })?;
    ok(StatusCode::CREATED, json!({"ok": true, "product": product}))
}

/// `platform_id` (a number) or `platform` (a board name such as `boron`).
fn platform_of(b: &Body) -> Result<u16, ApiError> {
    if let Some(t) = b.text("platform_id")? {
        return t.trim().parse::<u16>().map_err(|_| {
            ApiError::bad_request(format!("field `platform_id`: `{t}` is not a platform id"))
        });
    }
    match b.text("platform")? {
        Some(name) => lab::platform_id(&name).map_err(ApiError::bad_request),
        None => Err(ApiError::bad_request(
            "field `platform_id` (a number, 13 for Boron) or `platform` (a board name) is required",
        )),
    }
}

async fn list_products(State(s): State<Arc<ApiState>>, req: Request) -> ApiResult {
    let call = begin(&s, req).await?;
    let products = s.with_cloud(|cloud, _| {
        cloud
            .fleet()
            .products()
            .filter(|p| call.scope.allows_product(p.id))
            .map(json::product)
            .collect::<Vec<_>>()
    });
    ok(StatusCode::OK, json!({"products": products}))
}

async fn get_product(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let product = s.with_cloud(|cloud, _| {
        let id = product_id(cloud, &p, &call.scope)?;
        Ok::<_, ApiError>(json::product(cloud.fleet().product(id).expect("found")))
    })?;
    ok(StatusCode::OK, json!({"product": product}))
}

// ---- devices ----

async fn add_product_devices(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let mut ids: Vec<String> = Vec::new();
    if let Some(id) = call.body.text("id")? {
        ids.push(id.trim().to_string());
    }
    for f in &call.body.files {
        let text = String::from_utf8_lossy(&f.bytes);
        ids.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    if ids.is_empty() {
        return Err(ApiError::bad_request(
            "field `id` (a device id) or a multipart `file` of device ids is required",
        ));
    }
    let reply = s.change(|cloud, now| {
        let product = product_id(cloud, &p, &call.scope)?;
        let mut updated = 0;
        let mut invalid = Vec::new();
        let mut errors = Vec::new();
        for text in &ids {
            match text.parse::<DeviceId>() {
                Err(e) => {
                    invalid.push(text.clone());
                    errors.push(e.to_string());
                }
                Ok(id) => match cloud.add_product_device(now, product, id) {
                    Ok(()) => updated += 1,
                    Err(e) => {
                        invalid.push(text.clone());
                        errors.push(e.to_string());
                    }
                },
            }
        }
        Ok(json!({"updated": updated, "nonmemberDeviceIds": [],
                  "invalidDeviceIds": invalid, "errors": errors}))
    })?;
    ok(StatusCode::OK, reply)
}

async fn list_product_devices(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let q = &call.query;
    let groups: Option<BTreeSet<String>> = q.get("groups").map(|g| {
        g.split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect()
    });
    let page: usize = q
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let per_page: usize = q
        .get("perPage")
        .or(q.get("per_page"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
        .clamp(1, 1000);
    let filter_id = q.get("deviceId").map(|s| s.to_ascii_lowercase());
    let reply = s.with_cloud(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        let devices: Vec<DeviceId> = cloud
            .fleet()
            .product(product)
            .map(|p| {
                p.devices
                    .iter()
                    .filter(|(id, d)| {
                        filter_id
                            .as_ref()
                            .is_none_or(|f| id.to_hex().contains(f.as_str()))
                            && groups.as_ref().is_none_or(|g| {
                                g.is_empty() || d.groups.iter().any(|x| g.contains(x))
                            })
                    })
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        let total_pages = devices.len().div_ceil(per_page).max(1);
        let shown: Vec<Value> = devices
            .iter()
            .skip((page - 1).saturating_mul(per_page))
            .take(per_page)
            .map(|d| json::device(cloud, *d))
            .collect();
        Ok::<_, ApiError>(json!({"devices": shown, "customers": [],
                                 "meta": {"total_pages": total_pages}}))
    })?;
    ok(StatusCode::OK, reply)
}

async fn list_devices(State(s): State<Arc<ApiState>>, req: Request) -> ApiResult {
    let call = begin(&s, req).await?;
    let devices = s.with_cloud(|cloud, _| {
        let mut ids: BTreeSet<DeviceId> = cloud.devices().into_iter().collect();
        for p in cloud.fleet().products() {
            ids.extend(p.devices.keys().copied());
        }
        let mut ids: Vec<DeviceId> = ids
            .into_iter()
            .filter(|id| call.scope.allows_device(*id, cloud.fleet().product_of(*id)))
            .collect();
        // Particle sorts by last handshake, newest first; never connected last.
        ids.sort_by_key(|id| std::cmp::Reverse(cloud.device_times(*id).map(|t| t.0)));
        ids.into_iter()
            .map(|id| json::device(cloud, id))
            .collect::<Vec<_>>()
    });
    ok(StatusCode::OK, Value::Array(devices))
}

async fn get_device(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let device = s.with_cloud(|cloud, _| {
        let id = device_id(cloud, &id, &call.scope)?;
        Ok::<_, ApiError>(json::device(cloud, id))
    })?;
    ok(StatusCode::OK, device)
}

async fn get_product_device(
    State(s): State<Arc<ApiState>>,
    Path((p, id)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let device = s.with_cloud(|cloud, _| {
        let (_, id) = product_device(cloud, &p, &id, &call.scope)?;
        Ok::<_, ApiError>(json::device(cloud, id))
    })?;
    ok(StatusCode::OK, device)
}

async fn remove_product_device(
    State(s): State<Arc<ApiState>>,
    Path((p, id)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    s.change(|cloud, now| {
        let (product, id) = product_device(cloud, &p, &id, &call.scope)?;
        cloud.remove_product_device(now, product, id)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The firmware file of a flash or upload: the part named `file` (or `binary`), else the only
/// file part.
fn file_part(call: &Call) -> Result<&body::FilePart, ApiError> {
    let files = &call.body.files;
    files
        .iter()
        .find(|f| f.field == "file" || f.field == "binary")
        .or(if files.len() == 1 {
            files.first()
        } else {
            None
        })
        .ok_or_else(|| {
            let got: Vec<&str> = files.iter().map(|f| f.field.as_str()).collect();
            ApiError::bad_request(format!(
                "no firmware file: send it as the multipart part `file` (or `binary`); \
                 file parts received: {got:?}"
            ))
        })
}

/// Checks a file is module binaries (plain or combined), or an asset bundle whose application
/// matches its assets, and returns their platform.
fn check_modules(name: &str, bytes: &[u8]) -> Result<u16, ApiError> {
    if protocol::bundle::is_zip(bytes) {
        let bundle = protocol::bundle::Bundle::read(bytes).map_err(|e| {
            ApiError::bad_request(format!("{name} is not a usable asset bundle: {e}"))
        })?;
        return check_modules(&format!("{name}: {}", bundle.app_name), &bundle.app);
    }
    let ranges = split_combined(bytes).map_err(|e| {
        ApiError::bad_request(format!("{name} is not a Particle module binary: {e}"))
    })?;
    let mut platform = None;
    for (n, r) in ranges.into_iter().enumerate() {
        let module = bytes
            .get(r)
            .ok_or_else(|| ApiError::bad_request(format!("{name}: module {} is cut short", n + 1)))
            .and_then(|m| {
                Module::parse(m).map_err(|e| {
                    ApiError::bad_request(format!("{name}: module {} does not parse: {e}", n + 1))
                })
            })?;
        platform.get_or_insert(module.prefix.platform_id);
    }
    platform.ok_or_else(|| ApiError::bad_request(format!("{name} holds no module")))
}

/// `PUT /v1/devices/:id` or the product variant with a file: a single-device flash.
fn flash(s: &ApiState, call: &Call, device: Result<DeviceId, ApiError>) -> ApiResult {
    let part = file_part(call)?;
    let name = part.filename.clone().unwrap_or_else(|| part.field.clone());
    let platform = check_modules(&name, &part.bytes)?;
    let file = part.bytes.clone();
    let id = s.with_cloud(|cloud, now| {
        let id = device?;
        let view = cloud.device(id.0).ok_or_else(|| {
            ApiError::not_found(format!(
                "device {id} has no key registered with this cloud: it cannot connect, \
                 nothing can be flashed"
            ))
        })?;
        if let Some(h) = view.hello {
            if h.platform_id != platform {
                return Err(ApiError::bad_request(format!(
                    "{name} is for platform {platform} but device {id} is platform {}",
                    h.platform_id
                )));
            }
        }
        // Saved before the cloud takes it: an acknowledged flash survives a crash.
        let row = match &s.store {
            Some(store) => Some(
                lock(store)
                    .add_flash(id, &file, cloud.unix_time(now))
                    .map_err(|e| {
                        ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!("the flash could not be saved: {e}"),
                        )
                    })?,
            ),
            None => None,
        };
        let job = cloud.flash(now, id.0, file);
        if let Some(row) = row {
            lock(&s.flashes).insert(job, row);
        }
        Ok(id)
    })?;
    ok(
        StatusCode::OK,
        json!({"id": id.to_hex(), "status": "Update started"}),
    )
}

async fn update_device(
    State(s): State<Arc<ApiState>>,
    Path(id): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    if !call.body.files.is_empty() {
        let device = s.with_cloud(|cloud, _| device_id(cloud, &id, &call.scope));
        return flash(&s, &call, device);
    }
    let Some(forced) = call.body.flag("firmware_updates_forced")? else {
        let names: Vec<&str> = call.body.names().collect();
        return Err(ApiError::bad_request(format!(
            "nothing this cloud does: send a firmware file (multipart `file`) or \
             `firmware_updates_forced`; product settings go to PUT /v1/products/:p/devices/:id \
             (fields received: {names:?})"
        )));
    };
    let reply = s.change(|cloud, now| {
        let id = device_id(cloud, &id, &call.scope)?;
        match cloud.fleet().product_of(id) {
            Some(product) => {
                let change = DeviceChange {
                    updates_forced: Some(forced),
                    ..DeviceChange::default()
                };
                cloud.change_product_device(now, product, id, &change, false)?;
            }
            None => {
                cloud.set_updates_forced(now, id.0, forced);
                if let Some(store) = &s.store {
                    lock(store)
                        .save_forced(id, forced)
                        .map_err(ApiError::unsaved)?;
                }
            }
        }
        Ok(json!({"id": id.to_hex(), "firmware_updates_forced": forced,
                  "updated_at": updated_at(cloud, now)}))
    })?;
    ok(StatusCode::OK, reply)
}

const DEVICE_FIELDS: [&str; 5] = [
    "desired_firmware_version",
    "development",
    "groups",
    "firmware_updates_forced",
    "flash",
];

async fn update_product_device(
    State(s): State<Arc<ApiState>>,
    Path((p, id)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    if !call.body.files.is_empty() {
        let device =
            s.with_cloud(|cloud, _| product_device(cloud, &p, &id, &call.scope).map(|(_, d)| d));
        return flash(&s, &call, device);
    }
    let b = &call.body;
    let unsupported: Vec<&str> = b
        .names()
        .filter(|n| !DEVICE_FIELDS.contains(n) && *n != "access_token")
        .collect();
    if !unsupported.is_empty() {
        return Err(ApiError::bad_request(format!(
            "this cloud does not support {unsupported:?} on a product device; it takes \
             {DEVICE_FIELDS:?}"
        )));
    }
    let change = DeviceChange {
        development: b.flag("development")?,
        locked: b.lock("desired_firmware_version")?,
        groups: b.groups("groups")?,
        updates_forced: b.flag("firmware_updates_forced")?,
    };
    let flash_now = b.flag("flash")?.unwrap_or(false);
    if change == DeviceChange::default() && !flash_now {
        return Err(ApiError::bad_request(format!(
            "nothing to change: send one of {DEVICE_FIELDS:?}"
        )));
    }
    let reply = s.change(|cloud, now| {
        let (product, id) = product_device(cloud, &p, &id, &call.scope)?;
        cloud.change_product_device(now, product, id, &change, flash_now)?;
        Ok(with_updated_at(
            json::device(cloud, id),
            updated_at(cloud, now),
        ))
    })?;
    ok(StatusCode::OK, reply)
}

// ---- firmware ----

async fn upload_firmware(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let b = &call.body;
    let version = b.version("version")?.ok_or_else(|| {
        ApiError::bad_request("field `version` (the PRODUCT_VERSION) is required")
    })?;
    let title = b.text("title")?.unwrap_or_default();
    let description = b.text("description")?.unwrap_or_default();
    let part = file_part(&call)?;
    let name = part.filename.clone().unwrap_or_else(|| part.field.clone());
    check_modules(&name, &part.bytes)?;
    let file = part.bytes.clone();
    let (reply, product, at) = s.change(|cloud, now| {
        let product = product_id(cloud, &p, &call.scope)?;
        cloud
            .upload_firmware(now, product, version, &title, &description, file)
            .map_err(|e| ApiError::bad_request(format!("{name}: {e}")))?;
        let prod = cloud.fleet().product(product).expect("found");
        let reply = json::firmware(cloud, prod, &prod.firmware[&version]);
        Ok((reply, product, cloud.unix_time(now)))
    })?;
    s.publish(api_event(
        "particle/firmware/create",
        &json!({"version": version.to_string()}).to_string(),
        product,
        at,
    ));
    ok(StatusCode::CREATED, reply)
}

async fn list_firmware(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let list = s.with_cloud(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        let prod = cloud.fleet().product(product).expect("found");
        Ok::<_, ApiError>(
            prod.firmware
                .values()
                .map(|f| json::firmware(cloud, prod, f))
                .collect::<Vec<_>>(),
        )
    })?;
    ok(StatusCode::OK, Value::Array(list))
}

/// A path segment that must be a number from 1 up (a firmware version, a rollout id); anything
/// else names no such thing: 404 with `what` it should have been.
fn positive_param<T: std::str::FromStr + From<u8> + PartialOrd>(
    text: &str,
    what: &str,
) -> Result<T, ApiError> {
    text.parse::<T>()
        .ok()
        .filter(|v| *v >= T::from(1))
        .ok_or_else(|| ApiError::not_found(format!("`{text}` is not {what}")))
}

fn version_param(text: &str) -> Result<u16, ApiError> {
    positive_param(text, "a firmware version")
}

async fn get_firmware(
    State(s): State<Arc<ApiState>>,
    Path((p, v)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let version = version_param(&v)?;
    let reply = s.with_cloud(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        let prod = cloud.fleet().product(product).expect("found");
        let f = prod
            .firmware
            .get(&version)
            .ok_or(FleetError::NoFirmware { product, version })?;
        Ok::<_, ApiError>(json::firmware(cloud, prod, f))
    })?;
    ok(StatusCode::OK, reply)
}

async fn firmware_binary(
    State(s): State<Arc<ApiState>>,
    Path((p, v)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let version = version_param(&v)?;
    let file = s.with_cloud(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        let prod = cloud.fleet().product(product).expect("found");
        let f = prod
            .firmware
            .get(&version)
            .ok_or(FleetError::NoFirmware { product, version })?;
        Ok::<_, ApiError>(f.file.clone())
    })?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        HttpBody::from(file.as_ref().clone()),
    )
        .into_response())
}

async fn edit_firmware(
    State(s): State<Arc<ApiState>>,
    Path((p, v)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let version = version_param(&v)?;
    let title = call.body.text("title")?;
    let description = call.body.text("description")?;
    if title.is_none() && description.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: send `title` and/or `description`",
        ));
    }
    let reply = s.change(|cloud, now| {
        let product = product_id(cloud, &p, &call.scope)?;
        cloud.edit_firmware(product, version, title.as_deref(), description.as_deref())?;
        let prod = cloud.fleet().product(product).expect("found");
        Ok(with_updated_at(
            json::firmware(cloud, prod, &prod.firmware[&version]),
            updated_at(cloud, now),
        ))
    })?;
    ok(StatusCode::OK, reply)
}

async fn delete_firmware(
    State(s): State<Arc<ApiState>>,
    Path((p, v)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let version = version_param(&v)?;
    s.change(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        cloud.delete_firmware(product, version)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn release_firmware(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let b = &call.body;
    let version = b
        .version("version")?
        .ok_or_else(|| ApiError::bad_request("field `version` is required"))?;
    let product_default = b.flag("product_default")?;
    let groups = b.groups("groups")?;
    let intelligent = b.flag("intelligent")?.unwrap_or(false);
    if product_default.is_none() && groups.is_none() {
        return Err(ApiError::bad_request(
            "say where to release: `product_default` and/or `groups`",
        ));
    }
    let (reply, product, at) = s.change(|cloud, now| {
        let product = product_id(cloud, &p, &call.scope)?;
        let current = cloud
            .fleet()
            .product(product)
            .and_then(|p| p.firmware.get(&version))
            .ok_or(FleetError::NoFirmware { product, version })?
            .clone();
        for g in groups.iter().flatten() {
            super::fleet::valid_group(g)?;
        }
        let release = Release {
            product_default: product_default == Some(true),
            groups: groups.clone().unwrap_or_default(),
            intelligent,
        };
        // Every check is done: the calls below cannot be refused.
        cloud.release_firmware(now, product, version, &release)?;
        let withdraw_default = product_default == Some(false) && current.product_default;
        let withdraw_groups: BTreeSet<String> = match &groups {
            Some(g) => current.groups.difference(g).cloned().collect(),
            None => BTreeSet::new(),
        };
        if withdraw_default || !withdraw_groups.is_empty() {
            cloud.unrelease_firmware(now, product, version, withdraw_default, &withdraw_groups)?;
        }
        let prod = cloud.fleet().product(product).expect("found");
        let reply = with_updated_at(
            json::firmware(cloud, prod, &prod.firmware[&version]),
            updated_at(cloud, now),
        );
        Ok((reply, product, cloud.unix_time(now)))
    })?;
    s.publish(api_event(
        "particle/firmware/release",
        &json!({"immediate": intelligent, "version": version}).to_string(),
        product,
        at,
    ));
    ok(StatusCode::OK, reply)
}

async fn list_groups(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let groups = s.with_cloud(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        let prod = cloud.fleet().product(product).expect("found");
        Ok::<_, ApiError>(
            prod.groups
                .iter()
                .map(|g| group_json(prod, g))
                .collect::<Vec<_>>(),
        )
    })?;
    ok(StatusCode::OK, json!({"groups": groups}))
}

fn group_json(prod: &super::fleet::Product, g: &str) -> Value {
    let fw = prod
        .firmware
        .values()
        .rev()
        .find(|f| f.groups.contains(g))
        .map(|f| f.version);
    let count = prod
        .devices
        .values()
        .filter(|d| d.groups.contains(g))
        .count();
    json!({"name": g, "description": "", "color": "", "fw_version": fw, "device_count": count})
}

async fn create_group(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let name = call
        .body
        .text("name")?
        .ok_or_else(|| ApiError::bad_request("field `name` (the group name) is required"))?;
    let group = s.change(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        cloud.add_product_groups(product, &BTreeSet::from([name.clone()]))?;
        let prod = cloud.fleet().product(product).expect("found");
        Ok(group_json(prod, &name))
    })?;
    ok(StatusCode::CREATED, json!({"group": group}))
}

async fn get_group(
    State(s): State<Arc<ApiState>>,
    Path((p, name)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let group = s.with_cloud(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        let prod = cloud.fleet().product(product).expect("found");
        if !prod.groups.contains(&name) {
            return Err(FleetError::NoGroup {
                product,
                group: name.clone(),
            }
            .into());
        }
        Ok::<_, ApiError>(group_json(prod, &name))
    })?;
    ok(StatusCode::OK, json!({"group": group}))
}

async fn delete_group(
    State(s): State<Arc<ApiState>>,
    Path((p, name)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    s.change(|cloud, now| {
        let product = product_id(cloud, &p, &call.scope)?;
        cloud.delete_product_group(now, product, &name)?;
        Ok(())
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- staged rollouts (ours) ----

fn rollout_id(text: &str) -> Result<u32, ApiError> {
    positive_param(text, "a rollout id (1, 2, ...)")
}

async fn create_rollout(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let mut object = call.body.json_object().ok_or_else(|| {
        ApiError::bad_request(
            "send the rollout as a JSON body (Content-Type: application/json) with `app`, \
             `stages`, `soak`, `in_progress_timeout` and optionally `intelligent`, \
             `success_threshold`, `abort`",
        )
    })?;
    object.remove("access_token");
    let spec: RolloutSpec = serde_json::from_value(Value::Object(object))
        .map_err(|e| ApiError::bad_request(format!("the rollout in the JSON body: {e}")))?;
    if spec.at.is_some() {
        return Err(ApiError::bad_request(
            "field `at` is for scenario files: the API starts a rollout when asked",
        ));
    }
    let plan = spec.plan().map_err(|(field, m)| {
        ApiError::bad_request(if field.is_empty() {
            m
        } else {
            format!("field `{field}`: {m}")
        })
    })?;
    let reply = s.change(|cloud, now| {
        let product = product_id(cloud, &p, &call.scope)?;
        cloud.start_rollout(now, product, plan)?;
        let r = cloud.rollout(product).expect("just started");
        Ok(json::rollout(cloud, r))
    })?;
    ok(StatusCode::CREATED, json!({"ok": true, "rollout": reply}))
}

async fn list_rollouts(
    State(s): State<Arc<ApiState>>,
    Path(p): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let list = s.with_cloud(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        Ok::<_, ApiError>(
            cloud
                .rollouts(product)
                .map(|r| json::rollout(cloud, r))
                .collect::<Vec<_>>(),
        )
    })?;
    ok(StatusCode::OK, json!({"rollouts": list}))
}

async fn get_rollout(
    State(s): State<Arc<ApiState>>,
    Path((p, id)): Path<(String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let id = rollout_id(&id)?;
    let reply = s.with_cloud(|cloud, _| {
        let product = product_id(cloud, &p, &call.scope)?;
        let r = cloud
            .rollouts(product)
            .find(|r| r.id == id)
            .ok_or(FleetError::NoRollout { product, id })?;
        Ok::<_, ApiError>(json::rollout(cloud, r))
    })?;
    ok(StatusCode::OK, json!({"rollout": reply}))
}

async fn control_rollout(
    State(s): State<Arc<ApiState>>,
    Path((p, id, action)): Path<(String, String, String)>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let control = Control::parse(&action).ok_or_else(|| {
        ApiError::not_found(format!(
            "no such rollout action: `{action}` (pause, resume, abort)"
        ))
    })?;
    let id = rollout_id(&id)?;
    let reason = call.body.text("reason")?.unwrap_or_default();
    let reply = s.change(|cloud, now| {
        let product = product_id(cloud, &p, &call.scope)?;
        cloud.control_rollout(now, product, id, control, &reason)?;
        let r = cloud.rollout(product).expect("the rollout just controlled");
        Ok(json::rollout(cloud, r))
    })?;
    ok(StatusCode::OK, json!({"ok": true, "rollout": reply}))
}

// ---- events ----

fn sse(s: &ApiState, filter: Filter) -> Response {
    let body = HttpBody::from_stream(events::stream(s.events.subscribe(), filter, s.keepalive));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn events_without_prefix(State(s): State<Arc<ApiState>>, req: Request) -> ApiResult {
    begin(&s, req).await?;
    Err(ApiError {
        status: StatusCode::BAD_REQUEST,
        body: json!({"ok": false, "error": "event prefix filter is required",
                     "error_description": "event prefix filter is required: GET /v1/events/:prefix, or /v1/devices/events for all"}),
    })
}

async fn events_all(
    State(s): State<Arc<ApiState>>,
    Path(prefix): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    Ok(sse(
        &s,
        Filter {
            prefix,
            device: None,
            product: None,
            scope: call.scope,
        },
    ))
}

async fn events_mine(State(s): State<Arc<ApiState>>, req: Request) -> ApiResult {
    events_mine_prefix(State(s), Path(String::new()), req).await
}

async fn events_mine_prefix(
    State(s): State<Arc<ApiState>>,
    Path(prefix): Path<String>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    Ok(sse(
        &s,
        Filter {
            prefix,
            device: None,
            product: None,
            scope: call.scope,
        },
    ))
}

async fn events_device(
    State(s): State<Arc<ApiState>>,
    Path(params): Path<BTreeMap<String, String>>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let id = params.get("id").cloned().unwrap_or_default();
    let device = s.with_cloud(|cloud, _| device_id(cloud, &id, &call.scope))?;
    Ok(sse(
        &s,
        Filter {
            prefix: params.get("prefix").cloned().unwrap_or_default(),
            device: Some(device),
            product: None,
            scope: call.scope,
        },
    ))
}

async fn events_product(
    State(s): State<Arc<ApiState>>,
    Path(params): Path<BTreeMap<String, String>>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let p = params.get("p").cloned().unwrap_or_default();
    let product = s.with_cloud(|cloud, _| product_id(cloud, &p, &call.scope))?;
    Ok(sse(
        &s,
        Filter {
            prefix: params.get("prefix").cloned().unwrap_or_default(),
            device: None,
            product: Some(product),
            scope: call.scope,
        },
    ))
}

async fn events_product_device(
    State(s): State<Arc<ApiState>>,
    Path(params): Path<BTreeMap<String, String>>,
    req: Request,
) -> ApiResult {
    let call = begin(&s, req).await?;
    let p = params.get("p").cloned().unwrap_or_default();
    let id = params.get("id").cloned().unwrap_or_default();
    let (product, device) = s.with_cloud(|cloud, _| product_device(cloud, &p, &id, &call.scope))?;
    Ok(sse(
        &s,
        Filter {
            prefix: params.get("prefix").cloned().unwrap_or_default(),
            device: Some(device),
            product: Some(product),
            scope: call.scope,
        },
    ))
}
