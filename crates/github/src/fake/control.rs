//! The fake's control surface over HTTP, for black-box runs (the same
//! operations as the Rust methods on [`FakeGitHub`](super::FakeGitHub)):
//!
//! | route | body | does |
//! |---|---|---|
//! | `POST /_fake/repos` | `{"full_name"}` | creates a repository |
//! | `POST /_fake/orgs` / `POST /_fake/users` | `{"login"}` | registers an owner |
//! | `POST /_fake/installations` | `{"account"}` | installs the App, answers `{"id"}` |
//! | `POST /_fake/jobs` | `{"repo","labels",["webhook":true]}` | queues a job, answers `{"job_id","run_id"}` |
//! | `GET /_fake/jobs` / `GET /_fake/jobs/{id}` | | jobs as the fake sees them |
//! | `POST /_fake/jobs/{id}/start` | `{"runner_name"}` | the runner takes the job |
//! | `POST /_fake/jobs/{id}/complete` | `{"conclusion"}` | the job finishes |
//! | `GET /_fake/runners` | | every runner |
//! | `POST /_fake/runners` | `{"scope":{"kind","name"},"name","labels","online"}` | registers a runner |
//! | `POST /_fake/runners/{name}/online` | | brings a runner online |
//! | `POST /_fake/jit/online` | `{"encoded_jit_config"}` | brings the JIT config's runner online |
//! | `POST /_fake/auto_assign` | `{"on"}` | runners coming online take queued jobs |
//! | `POST /_fake/webhook` | `{"url","secret"}` | where to send signed webhooks |
//! | `POST /_fake/webhook/drop` | `{"count"}` | drops the next N webhooks |
//! | `GET /_fake/deliveries` | | webhooks sent or dropped |
//! | `POST /_fake/deliveries/{id}/redeliver` | | sends one again |
//! | `POST /_fake/faults` | `{"endpoint","fault":{"kind",...},"times"}` | injects a fault |
//! | `DELETE /_fake/faults` | | clears faults |
//! | `GET /_fake/requests` / `DELETE /_fake/requests` | | requests seen / forget them |
//! | `POST /_fake/token_ttl` | `{"seconds"}` | lifetime of new installation tokens |
//! | `POST /_fake/rate_limit` | `{"limit"}` | the primary rate limit it reports (5,000 by default) |
//!
//! Errors answer 404 (unknown job or runner), 409 (wrong state) or 422.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use runfleet_core::model::Scope;
use serde::Deserialize;
use serde_json::json;

use super::state::{FakeRunner, Fault, FaultRule, Installation, OwnerKind};
use super::{FakeError, Shared};

type S = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/_fake/repos", post(add_repo))
        .route("/_fake/orgs", post(add_org))
        .route("/_fake/users", post(add_user))
        .route("/_fake/installations", post(add_installation))
        .route("/_fake/jobs", post(queue_job).get(list_jobs))
        .route("/_fake/jobs/{id}", get(get_job))
        .route("/_fake/jobs/{id}/start", post(start_job))
        .route("/_fake/jobs/{id}/complete", post(complete_job))
        .route("/_fake/runners", get(list_runners).post(register_runner))
        .route("/_fake/runners/{name}/online", post(runner_online))
        .route("/_fake/jit/online", post(jit_online))
        .route("/_fake/auto_assign", post(auto_assign))
        .route("/_fake/webhook", post(set_webhook))
        .route("/_fake/webhook/drop", post(drop_webhooks))
        .route("/_fake/deliveries", get(deliveries))
        .route("/_fake/deliveries/{id}/redeliver", post(redeliver))
        .route("/_fake/faults", post(inject).delete(clear_faults))
        .route("/_fake/requests", get(requests).delete(clear_requests))
        .route("/_fake/token_ttl", post(token_ttl))
        .route("/_fake/rate_limit", post(rate_limit))
        .with_state(shared)
}

fn fail(e: FakeError) -> Response {
    let status = match e {
        FakeError::NoJob(_) | FakeError::NoRunner(_) => StatusCode::NOT_FOUND,
        FakeError::Conflict(_) => StatusCode::CONFLICT,
        FakeError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    (status, Json(json!({ "error": e.to_string() }))).into_response()
}

fn ok(v: serde_json::Value) -> Response {
    Json(v).into_response()
}

#[derive(Deserialize)]
struct FullName {
    full_name: String,
}

async fn add_repo(State(s): S, Json(b): Json<FullName>) -> Response {
    if !crate::webhook::valid_full_name(&b.full_name) {
        return fail(FakeError::Invalid("full_name must be owner/name".into()));
    }
    let id = s.lock().repo(&b.full_name).id;
    ok(json!({ "id": id }))
}

#[derive(Deserialize)]
struct Login {
    login: String,
}

async fn add_org(State(s): S, Json(b): Json<Login>) -> Response {
    let id = s.lock().owner(&b.login, OwnerKind::Organization).id;
    ok(json!({ "id": id }))
}

async fn add_user(State(s): S, Json(b): Json<Login>) -> Response {
    let id = s.lock().owner(&b.login, OwnerKind::User).id;
    ok(json!({ "id": id }))
}

#[derive(Deserialize)]
struct Account {
    account: String,
}

async fn add_installation(State(s): S, Json(b): Json<Account>) -> Response {
    let mut st = s.lock();
    if let Some(i) = st.installation_of(&b.account) {
        return ok(json!({ "id": i.id }));
    }
    st.owner(&b.account, OwnerKind::Organization);
    let id = st.id();
    st.installations.insert(
        id,
        Installation {
            id,
            account: b.account,
        },
    );
    ok(json!({ "id": id }))
}

#[derive(Deserialize)]
struct QueueBody {
    repo: String,
    labels: Vec<String>,
    #[serde(default = "yes")]
    webhook: bool,
}

fn yes() -> bool {
    true
}

async fn queue_job(State(s): S, Json(b): Json<QueueBody>) -> Response {
    if !crate::webhook::valid_full_name(&b.repo) {
        return fail(FakeError::Invalid("repo must be owner/name".into()));
    }
    let q = s.queue_job(&b.repo, b.labels, b.webhook).await;
    ok(json!(q))
}

async fn list_jobs(State(s): S) -> Response {
    let jobs: Vec<_> = s.lock().jobs.values().cloned().collect();
    ok(json!(jobs))
}

async fn get_job(State(s): S, Path(id): Path<u64>) -> Response {
    match s.lock().jobs.get(&id) {
        Some(j) => ok(json!(j)),
        None => fail(FakeError::NoJob(id)),
    }
}

#[derive(Deserialize)]
struct StartBody {
    runner_name: String,
}

async fn start_job(State(s): S, Path(id): Path<u64>, Json(b): Json<StartBody>) -> Response {
    match s.start_job(id, &b.runner_name, true).await {
        Ok(()) => ok(json!({ "ok": true })),
        Err(e) => fail(e),
    }
}

#[derive(Deserialize)]
struct CompleteBody {
    #[serde(default = "success")]
    conclusion: String,
}

fn success() -> String {
    "success".into()
}

async fn complete_job(State(s): S, Path(id): Path<u64>, Json(b): Json<CompleteBody>) -> Response {
    match s.complete_job(id, &b.conclusion, true).await {
        Ok(()) => ok(json!({ "ok": true })),
        Err(e) => fail(e),
    }
}

async fn list_runners(State(s): S) -> Response {
    let runners: Vec<FakeRunner> = s.lock().runners.values().cloned().collect();
    ok(json!(runners))
}

#[derive(Deserialize)]
struct RunnerBody {
    scope: Scope,
    name: String,
    labels: Vec<String>,
    #[serde(default)]
    online: bool,
}

async fn register_runner(State(s): S, Json(b): Json<RunnerBody>) -> Response {
    let mut st = s.lock();
    let id = st.id();
    st.runners.insert(
        id,
        FakeRunner {
            id,
            name: b.name,
            scope: b.scope,
            online: b.online,
            busy: false,
            ephemeral: false,
            labels: b.labels,
            runner_group_id: 1,
            job_id: None,
        },
    );
    ok(json!({ "id": id }))
}

async fn runner_online(State(s): S, Path(name): Path<String>) -> Response {
    match s.runner_online(&name).await {
        Ok(id) => ok(json!({ "id": id })),
        Err(e) => fail(e),
    }
}

#[derive(Deserialize)]
struct JitBody {
    encoded_jit_config: String,
}

async fn jit_online(State(s): S, Json(b): Json<JitBody>) -> Response {
    let name = {
        let st = s.lock();
        st.jit
            .get(&b.encoded_jit_config)
            .and_then(|id| st.runners.get(id))
            .map(|r| r.name.clone())
    };
    match name {
        Some(n) => match s.runner_online(&n).await {
            Ok(id) => ok(json!({ "id": id, "name": n })),
            Err(e) => fail(e),
        },
        None => fail(FakeError::Invalid("unknown JIT config".into())),
    }
}

#[derive(Deserialize)]
struct OnBody {
    on: bool,
}

async fn auto_assign(State(s): S, Json(b): Json<OnBody>) -> Response {
    s.lock().auto_assign = b.on;
    ok(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct WebhookBody {
    url: String,
    secret: String,
}

async fn set_webhook(State(s): S, Json(b): Json<WebhookBody>) -> Response {
    s.lock().webhook = Some((b.url, b.secret));
    ok(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct CountBody {
    count: u32,
}

async fn drop_webhooks(State(s): S, Json(b): Json<CountBody>) -> Response {
    s.lock().drop_webhooks = b.count;
    ok(json!({ "ok": true }))
}

async fn deliveries(State(s): S) -> Response {
    let d = s.lock().deliveries.clone();
    ok(json!(d))
}

async fn redeliver(State(s): S, Path(id): Path<String>) -> Response {
    match s.redeliver(&id).await {
        Ok(r) => ok(json!(r)),
        Err(e) => fail(e),
    }
}

#[derive(Deserialize)]
struct FaultBody {
    endpoint: String,
    fault: Fault,
    #[serde(default = "one")]
    times: u32,
}

fn one() -> u32 {
    1
}

async fn inject(State(s): S, Json(b): Json<FaultBody>) -> Response {
    s.lock().faults.push(FaultRule {
        endpoint: b.endpoint,
        fault: b.fault,
        remaining: b.times,
    });
    ok(json!({ "ok": true }))
}

async fn clear_faults(State(s): S) -> Response {
    s.lock().faults.clear();
    ok(json!({ "ok": true }))
}

async fn requests(State(s): S) -> Response {
    let r = s.lock().requests.clone();
    ok(json!(r))
}

async fn clear_requests(State(s): S) -> Response {
    s.lock().requests.clear();
    ok(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct TtlBody {
    seconds: u64,
}

async fn token_ttl(State(s): S, Json(b): Json<TtlBody>) -> Response {
    s.lock().token_ttl_ms = b.seconds * 1000;
    ok(json!({ "ok": true }))
}

#[derive(Deserialize)]
struct LimitBody {
    limit: u64,
}

async fn rate_limit(State(s): S, Json(b): Json<LimitBody>) -> Response {
    if b.limit == 0 {
        return fail(FakeError::Invalid("limit must be at least 1".into()));
    }
    s.lock().rate_limit = b.limit;
    ok(json!({ "ok": true }))
}
