//! The on-demand API: `POST /v1/start` and `GET /v1/runs/{id}`.
//!
//! A request is authenticated (GitHub Actions OIDC token, or the
//! token-and-HMAC scheme), its body checked, the repository and pool
//! allowed, the per-repository cap applied, and only then is a
//! [`StartRequest`] stored durably through the intake log; the engine turns
//! it into a recorded launch. Every refusal stores nothing and launches
//! nothing. Error bodies are `{"error": "<one sentence>"}` and never quote a
//! token.

pub mod auth;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use runfleet_core::config::Config;
use runfleet_core::model::{IntakeEvent, Scope, StartRequest};
use runfleet_core::runs::{RunState, run_labels};
use runfleet_engine::Engine;
use runfleet_engine::driver::now_ms;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::AppState;
use auth::{Caller, HmacAuth, MAX_SKEW_SECS, Oidc, Refusal};

/// A start request's body, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartBody {
    /// `owner/name`.
    pub repo: String,
    pub pool: Option<String>,
    /// `Name` tag of the instance.
    pub name: Option<String>,
    /// Unix seconds (required by the HMAC scheme).
    pub time: Option<i64>,
}

/// What is wrong with a start request's body (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBody {
    repo: Option<serde_json::Value>,
    pool: Option<serde_json::Value>,
    name: Option<serde_json::Value>,
    time: Option<serde_json::Value>,
}

fn opt_str(field: &str, v: Option<serde_json::Value>) -> Result<Option<String>, BodyError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(BodyError(format!("`{field}` must be a string"))),
    }
}

/// Parses `{"repo":"o/n","pool":"p","name":"n","time":1700000000}`. Never
/// panics, whatever the bytes.
pub fn parse_start_body(body: &[u8]) -> Result<StartBody, BodyError> {
    let raw: RawBody = serde_json::from_slice(body).map_err(|e| {
        BodyError(if e.is_data() && e.to_string().contains("unknown field") {
            format!(
                "the body has an unknown field: {}",
                first_line(&e.to_string())
            )
        } else {
            format!(
                "the body is not a JSON object: {}",
                first_line(&e.to_string())
            )
        })
    })?;
    let repo = opt_str("repo", raw.repo)?.ok_or_else(|| BodyError("`repo` is required".into()))?;
    let valid_part = |p: &str| {
        !p.is_empty()
            && p.len() <= 100
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    match repo.split_once('/') {
        Some((o, n)) if valid_part(o) && valid_part(n) => {}
        _ => {
            return Err(BodyError(format!(
                "`repo` must be owner/name, got {:?}",
                truncate(&repo)
            )));
        }
    }
    let pool = opt_str("pool", raw.pool)?;
    if pool.as_deref().is_some_and(str::is_empty) {
        return Err(BodyError("`pool` must not be empty".into()));
    }
    let name = opt_str("name", raw.name)?;
    if let Some(n) = &name
        && (n.is_empty() || n.chars().count() > 128 || n.chars().any(char::is_control))
    {
        return Err(BodyError(
            "`name` must be 1 to 128 characters without control characters".into(),
        ));
    }
    let time = match raw.time {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(
            n.as_i64()
                .ok_or_else(|| BodyError("`time` must be whole Unix seconds".into()))?,
        ),
        Some(_) => return Err(BodyError("`time` must be a number (Unix seconds)".into())),
    };
    Ok(StartBody {
        repo,
        pool,
        name,
        time,
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A run accepted here, not yet seen in the engine's published state.
#[derive(Debug, Clone)]
struct Accepted {
    repo: String,
    scope: Scope,
    labels: Vec<String>,
}

/// The API's state: verifiers and the runs accepted by this process.
pub struct Api {
    oidc: Oidc,
    hmac: Option<HmacAuth>,
    accepted: Mutex<HashMap<String, Accepted>>,
}

impl Api {
    pub fn new(config: &Config) -> Api {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        Api {
            oidc: Oidc::new(
                &config.api.oidc_issuer,
                &config.api.oidc_audience,
                http.clone(),
            ),
            hmac: config
                .api
                .hmac
                .then(|| HmacAuth::new(&config.github.api_url, http)),
            accepted: Mutex::new(HashMap::new()),
        }
    }

    /// Authenticates a request. `fresh`: an HMAC-signed request must be new.
    async fn caller<'h>(
        &self,
        headers: &'h HeaderMap,
        body: &[u8],
        fresh: bool,
    ) -> Result<(Caller, Option<&'h str>), Refusal> {
        if let Some(authz) = headers.get(header::AUTHORIZATION) {
            let token = authz
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    Refusal::unauthorized("Authorization must be `Bearer <OIDC token>`")
                })?;
            return Ok((self.oidc.verify(token).await?, None));
        }
        if headers.contains_key("x-github-token") {
            let Some(hmac) = &self.hmac else {
                return Err(Refusal::unauthorized(
                    "the token-and-HMAC scheme is off (api.hmac = false); use an OIDC token",
                ));
            };
            let (caller, token) = hmac.verify(headers, body, fresh)?;
            return Ok((caller, Some(token)));
        }
        Err(Refusal::unauthorized(
            "no credentials: send a GitHub Actions OIDC token as `Authorization: Bearer`, or X-GitHub-Token and X-GitHub-Signature",
        ))
    }

    /// Whether the caller may act for `repo` (OIDC: its own repository;
    /// token: GitHub says it can read it).
    async fn may_act_for(
        &self,
        caller: &Caller,
        token: Option<&str>,
        repo: &str,
    ) -> Result<(), Refusal> {
        match caller {
            Caller::Workflow { repository, owner } => {
                let owner_ok = repo
                    .split_once('/')
                    .is_some_and(|(o, _)| o.eq_ignore_ascii_case(owner));
                if repository.eq_ignore_ascii_case(repo) && owner_ok {
                    Ok(())
                } else {
                    Err(Refusal::forbidden(format!(
                        "the token is for {repository}, not {repo}"
                    )))
                }
            }
            Caller::Token { .. } => match (&self.hmac, token) {
                (Some(h), Some(t)) => h.can_read(t, repo).await,
                _ => Err(Refusal::unauthorized("no token to check")),
            },
        }
    }
}

fn refuse(st: &AppState, route: &str, r: Refusal) -> Response {
    let outcome = match r.status {
        401 => "unauthorized",
        403 => "forbidden",
        429 => "limited",
        400 => "bad_request",
        404 => "not_found",
        _ => "unavailable",
    };
    st.metrics.api(route, outcome);
    warn!(route, status = r.status, reason = %r.message, "/v1 request refused");
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    (status, Json(json!({ "error": r.message }))).into_response()
}

fn bad_request(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        message: message.into(),
    }
}

/// `POST /v1/start`.
pub async fn start(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    const ROUTE: &str = "start";
    if !st.config.api.enabled {
        return refuse(
            &st,
            ROUTE,
            Refusal {
                status: 404,
                message: "the /v1 API is off (api.enabled = false)".into(),
            },
        );
    }
    let (caller, token) = match st.api.caller(&headers, &body, true).await {
        Ok(c) => c,
        Err(r) => return refuse(&st, ROUTE, r),
    };
    let req = match parse_start_body(&body) {
        Ok(b) => b,
        Err(e) => return refuse(&st, ROUTE, bad_request(e.0)),
    };
    if let Caller::Token { .. } = caller {
        let Some(t) = req.time else {
            return refuse(
                &st,
                ROUTE,
                Refusal::unauthorized("`time` is required with X-GitHub-Signature"),
            );
        };
        let now = (now_ms() / 1000) as i64;
        if (now - t).abs() > MAX_SKEW_SECS {
            return refuse(
                &st,
                ROUTE,
                Refusal::unauthorized(format!(
                    "`time` is {}s from the server's clock (at most {MAX_SKEW_SECS}s allowed)",
                    now - t
                )),
            );
        }
    }
    if !st.config.repo_allowed(&req.repo) {
        return refuse(
            &st,
            ROUTE,
            Refusal::forbidden(format!("repository {} is not in github.repos", req.repo)),
        );
    }
    // Then the caller's right to act for it (after the allow-list: no call
    // to GitHub for a repository runfleet never serves).
    if let Err(r) = st.api.may_act_for(&caller, token, &req.repo).await {
        return refuse(&st, ROUTE, r);
    }
    let pool = match &req.pool {
        Some(name) => match st.config.pool(name) {
            Some(p) => p,
            None => {
                let known: Vec<&str> = st.config.pools.iter().map(|p| p.name.as_str()).collect();
                return refuse(
                    &st,
                    ROUTE,
                    bad_request(format!(
                        "unknown pool {name:?} (configured: {})",
                        known.join(", ")
                    )),
                );
            }
        },
        None => &st.config.pools[0],
    };
    let scope = runfleet_core::plan::scope_for(pool, &req.repo);
    // The cap: runs of this repository that are not done or failed.
    let live = {
        let view = st.view.read().expect("view lock");
        let mut accepted = st.api.accepted.lock().expect("accepted lock");
        accepted.retain(|id, _| !view.runs.contains_key(id));
        let mut live = accepted
            .values()
            .filter(|a| a.repo.eq_ignore_ascii_case(&req.repo))
            .count();
        live += view
            .runs
            .values()
            .filter(|r| !r.status.state.is_final())
            .filter(|r| {
                r.status
                    .repo
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(&req.repo))
            })
            .count();
        live
    };
    if live >= st.config.api.max_runs_per_repo as usize {
        st.metrics.api(ROUTE, "limited");
        let mut r = (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({ "error": format!(
                "{} already has {live} runs under way (api.max_runs_per_repo = {})",
                req.repo, st.config.api.max_runs_per_repo
            ) })),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
        return r;
    }
    // (The generator is not Send: draw both numbers before any await.)
    let (a, b): (u64, u64) = {
        let mut rng = rand::rng();
        (rng.random(), rng.random())
    };
    let id = format!("{}-r{a:016x}", st.config.fleet);
    if id.len() > 64 {
        return refuse(
            &st,
            ROUTE,
            Refusal::unavailable(format!(
                "fleet name too long for a launch id ({id:?} is over 64 characters)"
            )),
        );
    }
    let unique = format!("rf-{b:016x}");
    let labels = run_labels(&unique);
    let start = StartRequest {
        id: id.clone(),
        repo: req.repo.clone(),
        pool: pool.name.clone(),
        unique_label: unique,
        name: req.name.clone(),
        at: now_ms(),
    };
    match Engine::intake(&*st.store, &id, &IntakeEvent::Start(start)).await {
        Ok(_) => {}
        Err(e) => {
            return refuse(
                &st,
                ROUTE,
                Refusal::unavailable(format!("not stored, try again: {}", e.message)),
            );
        }
    }
    st.api.accepted.lock().expect("accepted lock").insert(
        id.clone(),
        Accepted {
            repo: req.repo.clone(),
            scope,
            labels: labels.clone(),
        },
    );
    st.waker.wake();
    st.metrics.api(ROUTE, "accepted");
    info!(run_id = %id, repo = %req.repo, pool = %pool.name, "run accepted");
    (
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "labels": labels, "state": RunState::Pending.as_str() })),
    )
        .into_response()
}

/// `GET /v1/runs/{id}`.
pub async fn run(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    const ROUTE: &str = "runs";
    if !st.config.api.enabled {
        return refuse(
            &st,
            ROUTE,
            Refusal {
                status: 404,
                message: "the /v1 API is off (api.enabled = false)".into(),
            },
        );
    }
    // A GET carries no body: an HMAC caller signs the empty body; replays
    // of a read are harmless, so no freshness check.
    let (caller, token) = match st.api.caller(&headers, b"", false).await {
        Ok(c) => c,
        Err(r) => return refuse(&st, ROUTE, r),
    };
    let not_found = || Refusal {
        status: 404,
        message: format!("no run {:?}", truncate(&id)),
    };
    let found = {
        let view = st.view.read().expect("view lock");
        match view.runs.get(&id) {
            Some(r) => Some((r.scope.clone(), serde_json::to_value(&r.status).ok())),
            None => st
                .api
                .accepted
                .lock()
                .expect("accepted lock")
                .get(&id)
                .map(|a| {
                    (
                        a.scope.clone(),
                        Some(json!({
                            "id": id, "state": RunState::Pending.as_str(), "labels": a.labels,
                            "instance_id": null, "runner_name": null,
                        })),
                    )
                }),
        }
    };
    let Some((scope, Some(body))) = found else {
        return refuse(&st, ROUTE, not_found());
    };
    // Only the run's own repository (or, for an org runner, its owner's
    // workflows) may see it; anyone else gets the same 404 as for no run.
    let allowed = match (&caller, &scope) {
        (Caller::Workflow { repository, .. }, Scope::Repo(r)) => repository.eq_ignore_ascii_case(r),
        (Caller::Workflow { owner, .. }, Scope::Org(o)) => owner.eq_ignore_ascii_case(o),
        (Caller::Token { .. }, Scope::Repo(r)) => {
            st.api.may_act_for(&caller, token, r).await.is_ok()
        }
        (Caller::Token { .. }, Scope::Org(_)) => false,
    };
    if !allowed {
        return refuse(&st, ROUTE, not_found());
    }
    st.metrics.api(ROUTE, "ok");
    (StatusCode::OK, Json(body)).into_response()
}
