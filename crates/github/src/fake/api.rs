//! The fake's GitHub REST endpoints, behind one middleware that records the
//! request, applies injected faults, checks credentials and adds ETags and
//! rate-limit headers.

// Helpers here return a ready HTTP answer as their error; they run once per
// request of a test server, so the size of `Response` does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json};
use runfleet_core::model::Scope;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::state::{
    FakeRunner, Fault, OwnerKind, SeenRequest, State as World, error_json, validation_json,
};
use super::{Shared, random_string};
use crate::timestamp::{format_millis, now_millis};

/// Who a request authenticated as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Principal {
    Pat,
    App,
    Installation(u64),
}

type S = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
            post(repo_jit),
        )
        .route(
            "/orgs/{org}/actions/runners/generate-jitconfig",
            post(org_jit),
        )
        .route("/repos/{owner}/{repo}/actions/runners", get(repo_runners))
        .route("/orgs/{org}/actions/runners", get(org_runners))
        .route(
            "/repos/{owner}/{repo}/actions/runners/{runner_id}",
            get(repo_runner).delete(repo_delete_runner),
        )
        .route(
            "/orgs/{org}/actions/runners/{runner_id}",
            get(org_runner).delete(org_delete_runner),
        )
        .route("/repos/{owner}/{repo}/actions/runs", get(list_runs))
        .route(
            "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
            get(list_jobs),
        )
        .route("/repos/{owner}/{repo}/actions/jobs/{job_id}", get(get_job))
        .route(
            "/repos/{owner}/{repo}/actions/jobs/{job_id}/rerun",
            post(rerun_job),
        )
        .route("/repos/{owner}/{repo}", get(get_repo))
        .route("/orgs/{org}/repos", get(org_repos))
        .route("/users/{username}/repos", get(user_repos))
        .route("/installation/repositories", get(installation_repos))
        .route("/repos/{owner}/{repo}/installation", get(repo_installation))
        .route("/orgs/{org}/installation", get(org_installation))
        .route("/users/{username}/installation", get(user_installation))
        .route(
            "/app/installations/{installation_id}/access_tokens",
            post(access_token),
        )
        .route_layer(middleware::from_fn_with_state(shared.clone(), gate))
        .with_state(shared)
}

fn respond(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn not_found() -> Response {
    respond(StatusCode::NOT_FOUND, error_json("Not Found", 404))
}

fn forbidden(msg: &str) -> Response {
    respond(StatusCode::FORBIDDEN, error_json(msg, 403))
}

// ------------------------------------------------------------------ gate

async fn gate(State(shared): S, mut req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let method = req.method().clone();
    let endpoint = format!("{method} {template}");
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let if_none_match = req.headers().get("if-none-match").cloned();
    let conditional = if_none_match.is_some();
    let principal = authenticate(&shared, req.headers());
    let auth_label = match principal {
        Ok(Principal::Pat) => "pat".to_string(),
        Ok(Principal::App) => "app".to_string(),
        Ok(Principal::Installation(id)) => format!("installation:{id}"),
        Err(_) => "none".to_string(),
    };

    let fault = {
        let mut st = shared.lock();
        let rule = st
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && (f.endpoint == endpoint || f.endpoint == "*"));
        let fault = rule.map(|r| {
            r.remaining -= 1;
            r.fault.clone()
        });
        st.faults.retain(|f| f.remaining > 0);
        fault
    };

    let response = match fault {
        Some(Fault::Status { status }) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(respond(code, error_json("Server Error", status)))
        }
        Some(Fault::SecondaryRateLimit {
            status,
            retry_after,
        }) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            let mut r = respond(
                code,
                error_json(
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                    status,
                ),
            );
            if let Some(s) = retry_after {
                r.headers_mut().insert("retry-after", HeaderValue::from(s));
            }
            Some(r)
        }
        Some(Fault::PrimaryRateLimit { reset_in }) => {
            let mut r = respond(
                StatusCode::FORBIDDEN,
                error_json("API rate limit exceeded.", 403),
            );
            let limit = shared.lock().rate_limit;
            let h = r.headers_mut();
            h.insert("x-ratelimit-limit", HeaderValue::from(limit));
            h.insert("x-ratelimit-remaining", HeaderValue::from(0u64));
            h.insert(
                "x-ratelimit-reset",
                HeaderValue::from(now_millis() / 1000 + reset_in),
            );
            Some(r)
        }
        Some(Fault::Delay { ms }) => {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            None
        }
        None => None,
    };

    let response = match response {
        Some(r) => r,
        None => match check_access(&template, principal) {
            Err(r) => r,
            Ok(p) => {
                req.extensions_mut().insert(p);
                let resp = next.run(req).await;
                finish(&method, resp, if_none_match).await
            }
        },
    };
    let mut response = response;
    add_rate_headers(&shared, response.headers_mut());
    let status = response.status().as_u16();
    shared.lock().requests.push(SeenRequest {
        method: method.to_string(),
        path,
        endpoint,
        status,
        at: now_millis(),
        auth: auth_label,
        conditional,
    });
    response
}

fn add_rate_headers(shared: &Shared, h: &mut HeaderMap) {
    if h.contains_key("x-ratelimit-remaining") {
        return;
    }
    let (limit, used) = {
        let st = shared.lock();
        let limit = st.rate_limit.max(1);
        (limit, st.requests.len() as u64 % limit)
    };
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(limit - used - 1));
    h.insert("x-ratelimit-used", HeaderValue::from(used + 1));
    h.insert(
        "x-ratelimit-reset",
        HeaderValue::from(now_millis() / 1000 + 3600),
    );
    h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
}

/// ETag on successful GETs; 304 when `If-None-Match` matches.
async fn finish(method: &Method, resp: Response, if_none_match: Option<HeaderValue>) -> Response {
    if method != Method::GET || resp.status() != StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 << 20).await else {
        return respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            error_json("body too large", 500),
        );
    };
    let digest = Sha256::digest(&bytes);
    let etag = format!("W/\"{}\"", hex::encode(&digest[..16]));
    let etag_value = HeaderValue::from_str(&etag).expect("hex is a valid header");
    if if_none_match
        .as_ref()
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r.headers_mut().insert("etag", etag_value);
        if let Some(link) = parts.headers.get("link") {
            r.headers_mut().insert("link", link.clone());
        }
        return r;
    }
    parts.headers.insert("etag", etag_value);
    Response::from_parts(parts, Body::from(bytes))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get("authorization")?.to_str().ok()?;
    v.strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
        .or_else(|| v.strip_prefix("token "))
        .map(str::trim)
}

fn authenticate(shared: &Shared, headers: &HeaderMap) -> Result<Principal, &'static str> {
    let token = bearer(headers).ok_or("Requires authentication")?;
    let st = shared.lock();
    if st.pat.as_deref().is_some_and(|p| p == token) {
        return Ok(Principal::Pat);
    }
    if let Some((inst, exp)) = st.tokens.get(token) {
        return if *exp > now_millis() {
            Ok(Principal::Installation(*inst))
        } else {
            Err("Bad credentials")
        };
    }
    if let (Some(key), Some(app_id)) = (&shared.app_key, st.app_id) {
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
        v.set_required_spec_claims(&["exp", "iat", "iss"]);
        v.set_issuer(&[app_id.to_string()]);
        v.leeway = 0;
        v.validate_aud = false;
        #[derive(Deserialize)]
        struct Claims {
            iat: u64,
            exp: u64,
        }
        if let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, &v) {
            let now = now_millis() / 1000;
            // GitHub: exp no more than 10 minutes ahead; iat not in the future.
            if data.claims.exp > now + 600 + 5
                || data.claims.iat > now + 5
                || data.claims.exp <= data.claims.iat
            {
                return Err("'Expiration time' claim ('exp') is too far in the future");
            }
            return Ok(Principal::App);
        }
        if token.split('.').count() == 3 {
            return Err("A JSON web token could not be decoded");
        }
    }
    Err("Bad credentials")
}

fn check_access(
    template: &str,
    principal: Result<Principal, &'static str>,
) -> Result<Principal, Response> {
    let app_only = template.starts_with("/app/") || template.ends_with("/installation");
    match principal {
        Err(msg) => Err(respond(StatusCode::UNAUTHORIZED, error_json(msg, 401))),
        Ok(Principal::App) if app_only => Ok(Principal::App),
        Ok(_) if app_only => Err(respond(
            StatusCode::UNAUTHORIZED,
            error_json("A JSON web token could not be decoded", 401),
        )),
        Ok(Principal::App) => Err(forbidden(
            "This endpoint requires an installation access token",
        )),
        Ok(Principal::Pat) if template == "/installation/repositories" => Err(forbidden(
            "You must authenticate with an installation access token",
        )),
        Ok(p) => Ok(p),
    }
}

/// An installation token may act only on its account's resources.
fn allow(st: &World, p: Principal, owner: &str) -> Result<(), Response> {
    match p {
        Principal::Pat => Ok(()),
        Principal::App => Err(forbidden(
            "This endpoint requires an installation access token",
        )),
        Principal::Installation(id) => match st.installations.get(&id) {
            Some(i) if i.account.eq_ignore_ascii_case(owner) => Ok(()),
            _ => Err(forbidden("Resource not accessible by integration")),
        },
    }
}

// ------------------------------------------------------------ pagination

#[derive(Deserialize)]
struct PageQuery {
    per_page: Option<usize>,
    page: Option<usize>,
    status: Option<String>,
}

/// One page of `items` and its `Link` header, keeping the other query
/// parameters. Long lists page their records and render only the page.
fn paginate<T>(base: &str, uri: &Uri, items: Vec<T>, q: &PageQuery) -> (Vec<T>, Option<String>) {
    let per_page = q.per_page.unwrap_or(30).clamp(1, 100);
    let page = q.page.unwrap_or(1).max(1);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let start = (page - 1).saturating_mul(per_page).min(total);
    let end = (start + per_page).min(total);
    let slice = items.into_iter().skip(start).take(end - start).collect();
    let others: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("page=") && !kv.starts_with("per_page="))
        .map(str::to_string)
        .collect();
    let link_to = |p: usize| {
        let mut params = others.clone();
        params.push(format!("per_page={per_page}"));
        params.push(format!("page={p}"));
        format!("<{base}{}?{}>", uri.path(), params.join("&"))
    };
    let mut links = Vec::new();
    if page < last {
        links.push(format!("{}; rel=\"next\"", link_to(page + 1)));
        links.push(format!("{}; rel=\"last\"", link_to(last)));
    }
    if page > 1 {
        links.push(format!("{}; rel=\"prev\"", link_to(page - 1)));
        links.push(format!("{}; rel=\"first\"", link_to(1)));
    }
    (slice, (!links.is_empty()).then(|| links.join(", ")))
}

fn with_link(mut r: Response, link: Option<String>) -> Response {
    if let Some(l) = link
        && let Ok(v) = HeaderValue::from_str(&l)
    {
        r.headers_mut().insert("link", v);
    }
    r
}

// ------------------------------------------------------------- runners

#[derive(Deserialize)]
struct JitBody {
    name: Option<String>,
    runner_group_id: Option<u64>,
    labels: Option<Vec<String>>,
    #[allow(dead_code)]
    work_folder: Option<String>,
}

fn jit(
    shared: &Shared,
    scope: Scope,
    owner: &str,
    p: Principal,
    body: Result<Json<JitBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mut st = shared.lock();
    if let Err(r) = allow(&st, p, owner) {
        return r;
    }
    let Ok(Json(body)) = body else {
        return respond(
            StatusCode::BAD_REQUEST,
            error_json("Problems parsing JSON", 400),
        );
    };
    let (Some(name), Some(group), Some(labels)) = (body.name, body.runner_group_id, body.labels)
    else {
        return respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            validation_json(
                "Invalid request.",
                &["name, runner_group_id and labels are required"],
            ),
        );
    };
    if labels.is_empty() || labels.len() > 100 || name.is_empty() {
        return respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            validation_json("Validation Failed", &["labels must have 1 to 100 entries"]),
        );
    }
    if st
        .runners
        .values()
        .any(|r| r.name == name && r.scope == scope)
    {
        return respond(
            StatusCode::CONFLICT,
            error_json(
                &format!("Already exists - A runner with the name {name} already exists."),
                409,
            ),
        );
    }
    let id = st.id();
    let mut all_labels = vec!["self-hosted".to_string()];
    for l in labels {
        if !all_labels.iter().any(|x| x.eq_ignore_ascii_case(&l)) {
            all_labels.push(l);
        }
    }
    let runner = FakeRunner {
        id,
        name,
        scope,
        online: false,
        busy: false,
        ephemeral: true,
        labels: all_labels,
        runner_group_id: group,
        job_id: None,
    };
    let encoded = random_string("", 96);
    st.jit.insert(encoded.clone(), id);
    let body = json!({ "runner": st.runner_json(&runner), "encoded_jit_config": encoded });
    st.runners.insert(id, runner);
    respond(StatusCode::CREATED, body)
}

async fn repo_jit(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((owner, repo)): Path<(String, String)>,
    body: Result<Json<JitBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let full = {
        let st = shared.lock();
        match st.find_repo(&owner, &repo) {
            Some(r) => r.full_name(),
            None => return not_found(),
        }
    };
    jit(&shared, Scope::Repo(full), &owner, p, body)
}

async fn org_jit(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path(org): Path<String>,
    body: Result<Json<JitBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let login = match org_login(&shared, &org) {
        Ok(l) => l,
        Err(r) => return r,
    };
    jit(&shared, Scope::Org(login), &org, p, body)
}

fn org_login(shared: &Shared, org: &str) -> Result<String, Response> {
    match shared.lock().find_owner(org) {
        Some(o) if o.kind == OwnerKind::Organization => Ok(o.login.clone()),
        _ => Err(not_found()),
    }
}

fn repo_scope(shared: &Shared, owner: &str, repo: &str) -> Result<Scope, Response> {
    shared
        .lock()
        .find_repo(owner, repo)
        .map(|r| Scope::Repo(r.full_name()))
        .ok_or_else(not_found)
}

fn same_scope(a: &Scope, b: &Scope) -> bool {
    match (a, b) {
        (Scope::Repo(x), Scope::Repo(y)) | (Scope::Org(x), Scope::Org(y)) => {
            x.eq_ignore_ascii_case(y)
        }
        _ => false,
    }
}

fn runners_page(
    shared: &Shared,
    scope: &Scope,
    owner: &str,
    p: Principal,
    uri: &Uri,
    q: &PageQuery,
) -> Response {
    let st = shared.lock();
    if let Err(r) = allow(&st, p, owner) {
        return r;
    }
    let all: Vec<&FakeRunner> = st
        .runners
        .values()
        .filter(|r| same_scope(&r.scope, scope))
        .collect();
    let total = all.len();
    let (page, link) = paginate(&st.base_url, uri, all, q);
    let page: Vec<Value> = page.into_iter().map(|r| st.runner_json(r)).collect();
    with_link(
        respond(
            StatusCode::OK,
            json!({ "total_count": total, "runners": page }),
        ),
        link,
    )
}

async fn repo_runners(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((owner, repo)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Response {
    match repo_scope(&shared, &owner, &repo) {
        Ok(scope) => runners_page(&shared, &scope, &owner, p, &uri, &q),
        Err(r) => r,
    }
}

async fn org_runners(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Response {
    match org_login(&shared, &org) {
        Ok(login) => runners_page(&shared, &Scope::Org(login), &org, p, &uri, &q),
        Err(r) => r,
    }
}

fn one_runner(shared: &Shared, scope: &Scope, owner: &str, p: Principal, id: u64) -> Response {
    let st = shared.lock();
    if let Err(r) = allow(&st, p, owner) {
        return r;
    }
    match st.runners.get(&id).filter(|r| same_scope(&r.scope, scope)) {
        Some(r) => respond(StatusCode::OK, st.runner_json(r)),
        None => not_found(),
    }
}

fn delete_runner(shared: &Shared, scope: &Scope, owner: &str, p: Principal, id: u64) -> Response {
    let mut st = shared.lock();
    if let Err(r) = allow(&st, p, owner) {
        return r;
    }
    match st.runners.get(&id).filter(|r| same_scope(&r.scope, scope)) {
        None => not_found(),
        Some(r) if r.busy => respond(
            StatusCode::UNPROCESSABLE_ENTITY,
            validation_json(
                &format!(
                    "Bad request - Runner \"{}\" is still running a job\"",
                    r.name
                ),
                &[],
            ),
        ),
        Some(_) => {
            st.runners.remove(&id);
            st.jit.retain(|_, v| *v != id);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

async fn repo_runner(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
) -> Response {
    match repo_scope(&shared, &owner, &repo) {
        Ok(scope) => one_runner(&shared, &scope, &owner, p, id),
        Err(r) => r,
    }
}

async fn org_runner(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((org, id)): Path<(String, u64)>,
) -> Response {
    match org_login(&shared, &org) {
        Ok(login) => one_runner(&shared, &Scope::Org(login), &org, p, id),
        Err(r) => r,
    }
}

async fn repo_delete_runner(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((owner, repo, id)): Path<(String, String, u64)>,
) -> Response {
    match repo_scope(&shared, &owner, &repo) {
        Ok(scope) => delete_runner(&shared, &scope, &owner, p, id),
        Err(r) => r,
    }
}

async fn org_delete_runner(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((org, id)): Path<(String, u64)>,
) -> Response {
    match org_login(&shared, &org) {
        Ok(login) => delete_runner(&shared, &Scope::Org(login), &org, p, id),
        Err(r) => r,
    }
}

// ------------------------------------------------------------ runs, jobs

async fn list_runs(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((owner, repo)): Path<(String, String)>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Response {
    let st = shared.lock();
    if let Err(r) = allow(&st, p, &owner) {
        return r;
    }
    let Some(r) = st.find_repo(&owner, &repo) else {
        return not_found();
    };
    let full = r.full_name();
    // Newest first, as GitHub lists them.
    let all: Vec<_> = st
        .runs
        .values()
        .rev()
        .filter(|run| run.repo == full)
        .filter(|run| {
            q.status
                .as_deref()
                .is_none_or(|s| run.status == s || run.conclusion.as_deref() == Some(s))
        })
        .collect();
    let total = all.len();
    let (page, link) = paginate(&st.base_url, &uri, all, &q);
    let page: Vec<Value> = page.into_iter().map(|run| st.run_json(run)).collect();
    with_link(
        respond(
            StatusCode::OK,
            json!({ "total_count": total, "workflow_runs": page }),
        ),
        link,
    )
}

async fn list_jobs(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((owner, repo, run_id)): Path<(String, String, u64)>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Response {
    let st = shared.lock();
    if let Err(r) = allow(&st, p, &owner) {
        return r;
    }
    let Some(r) = st.find_repo(&owner, &repo) else {
        return not_found();
    };
    let full = r.full_name();
    if st.runs.get(&run_id).is_none_or(|run| run.repo != full) {
        return not_found();
    }
    let all: Vec<_> = st.jobs.values().filter(|j| j.run_id == run_id).collect();
    let total = all.len();
    let (page, link) = paginate(&st.base_url, &uri, all, &q);
    let page: Vec<Value> = page.into_iter().map(|j| st.job_json(j)).collect();
    with_link(
        respond(
            StatusCode::OK,
            json!({ "total_count": total, "jobs": page }),
        ),
        link,
    )
}

async fn get_job(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((owner, repo, job_id)): Path<(String, String, u64)>,
) -> Response {
    let st = shared.lock();
    if let Err(r) = allow(&st, p, &owner) {
        return r;
    }
    let full = format!("{owner}/{repo}");
    match st
        .jobs
        .get(&job_id)
        .filter(|j| j.repo.eq_ignore_ascii_case(&full))
    {
        Some(j) => respond(StatusCode::OK, st.job_json(j)),
        None => not_found(),
    }
}

async fn rerun_job(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((owner, repo, job_id)): Path<(String, String, u64)>,
) -> Response {
    let mut st = shared.lock();
    if let Err(r) = allow(&st, p, &owner) {
        return r;
    }
    let full = format!("{owner}/{repo}");
    let Some(job) = st
        .jobs
        .get_mut(&job_id)
        .filter(|j| j.repo.eq_ignore_ascii_case(&full))
    else {
        return not_found();
    };
    if job.status != "completed" {
        return respond(
            StatusCode::FORBIDDEN,
            error_json("This job is not complete and cannot be re-run", 403),
        );
    }
    job.reruns += 1;
    job.status = "queued".into();
    job.conclusion = None;
    job.runner_id = None;
    job.runner_name = None;
    job.started_at = None;
    job.completed_at = None;
    job.created_at = now_millis();
    let run_id = job.run_id;
    if let Some(run) = st.runs.get_mut(&run_id) {
        run.status = "queued".into();
        run.conclusion = None;
        run.updated_at = now_millis();
    }
    respond(StatusCode::CREATED, json!({}))
}

// ------------------------------------------------------------ repos

async fn get_repo(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path((owner, repo)): Path<(String, String)>,
) -> Response {
    let st = shared.lock();
    if allow(&st, p, &owner).is_err() {
        return not_found();
    }
    match st.find_repo(&owner, &repo) {
        Some(r) => respond(StatusCode::OK, st.repo_json(r)),
        None => not_found(),
    }
}

fn repos_of(st: &World, owner: &str) -> Vec<Value> {
    st.repos
        .values()
        .filter(|r| r.owner.eq_ignore_ascii_case(owner))
        .map(|r| st.repo_json(r))
        .collect()
}

async fn org_repos(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path(org): Path<String>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Response {
    let st = shared.lock();
    if let Err(r) = allow(&st, p, &org) {
        return r;
    }
    if st
        .find_owner(&org)
        .is_none_or(|o| o.kind != OwnerKind::Organization)
    {
        return not_found();
    }
    let (page, link) = paginate(&st.base_url, &uri, repos_of(&st, &org), &q);
    with_link(respond(StatusCode::OK, Value::Array(page)), link)
}

async fn user_repos(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Path(user): Path<String>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Response {
    let st = shared.lock();
    if let Err(r) = allow(&st, p, &user) {
        return r;
    }
    if st.find_owner(&user).is_none() {
        return not_found();
    }
    let (page, link) = paginate(&st.base_url, &uri, repos_of(&st, &user), &q);
    with_link(respond(StatusCode::OK, Value::Array(page)), link)
}

async fn installation_repos(
    State(shared): S,
    Extension(p): Extension<Principal>,
    Query(q): Query<PageQuery>,
    uri: Uri,
) -> Response {
    let st = shared.lock();
    let Principal::Installation(id) = p else {
        return forbidden("You must authenticate with an installation access token");
    };
    let Some(inst) = st.installations.get(&id) else {
        return not_found();
    };
    let all = repos_of(&st, &inst.account);
    let total = all.len();
    let (page, link) = paginate(&st.base_url, &uri, all, &q);
    with_link(
        respond(
            StatusCode::OK,
            json!({ "total_count": total, "repository_selection": "all", "repositories": page }),
        ),
        link,
    )
}

// ------------------------------------------------------------ app

fn installation_for_owner(shared: &Shared, owner: &str, kind: Option<OwnerKind>) -> Response {
    let st = shared.lock();
    if let Some(k) = kind
        && st.find_owner(owner).is_some_and(|o| o.kind != k)
    {
        return not_found();
    }
    match st.installation_of(owner) {
        Some(i) => respond(StatusCode::OK, st.installation_json(i)),
        None => not_found(),
    }
}

async fn repo_installation(
    State(shared): S,
    Path((owner, repo)): Path<(String, String)>,
) -> Response {
    if shared.lock().find_repo(&owner, &repo).is_none() {
        return not_found();
    }
    installation_for_owner(&shared, &owner, None)
}

async fn org_installation(State(shared): S, Path(org): Path<String>) -> Response {
    installation_for_owner(&shared, &org, Some(OwnerKind::Organization))
}

async fn user_installation(State(shared): S, Path(user): Path<String>) -> Response {
    installation_for_owner(&shared, &user, Some(OwnerKind::User))
}

async fn access_token(State(shared): S, Path(id): Path<u64>, _body: Bytes) -> Response {
    let mut st = shared.lock();
    if !st.installations.contains_key(&id) {
        return not_found();
    }
    let token = random_string("ghs_", 36);
    let expires_at = now_millis() + st.token_ttl_ms;
    st.tokens.insert(token.clone(), (id, expires_at));
    st.tokens_issued += 1;
    let mut perms = BTreeMap::new();
    perms.insert("actions", "write");
    perms.insert("administration", "write");
    perms.insert("metadata", "read");
    respond(
        StatusCode::CREATED,
        json!({
            "token": token,
            "expires_at": format_millis(expires_at),
            "permissions": perms,
            "repository_selection": "all"
        }),
    )
}
