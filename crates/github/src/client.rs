//! The GitHub REST client: [`GitHubClient`] implements the engine's
//! [`GitHub`] port against `api_url` (github.com or GitHub Enterprise Server).
//!
//! Request pipeline (every call goes through [`GitHubClient::perform`]):
//! - counted per endpoint template (`GET /repos/{owner}/{repo}/actions/runners`)
//!   before it is sent, retries included ([`GitHubClient::request_counts`]);
//! - GETs carry `If-None-Match` when a previous answer had an `ETag`; a 304
//!   returns the cached body;
//! - a secondary rate limit (403/429 with `Retry-After`, or a rate-limit
//!   message) waits exactly `Retry-After` and tries again (any method: the
//!   request was refused, not executed), unless the wait is longer than
//!   [`ClientOptions::max_retry_after`]: then `Throttled` with
//!   `retry_after_ms`. An exhausted primary limit (`x-ratelimit-remaining: 0`)
//!   fails fast until `x-ratelimit-reset`;
//! - 5xx and transport errors are retried with jittered exponential backoff
//!   for GET and DELETE only; a POST is never repeated after it may have run;
//! - failures map to [`ErrorKind`]s with messages `METHOD /path/{template}:
//!   status: GitHub's message`, never a token.
//!
//! App auth: an RS256 JWT (`iat` 60 s in the past, `exp` 9 min ahead, `iss` =
//! app id) buys installation tokens, cached per installation and refreshed
//! [`ClientOptions::token_refresh_margin`] before they expire (or at once
//! after a 401). Without `installation_id` the installation is looked up per
//! owner and cached.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::Rng;
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderValue};
use runfleet_core::config::{GithubConfig, Secret};
use runfleet_core::model::{ErrorKind, JobEvent, Millis, Runner, Scope};
use runfleet_engine::ports::{GitHub, JitConfig, JitRequest, PortError, PortResult};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::timestamp::{now_millis, parse_millis};
use crate::webhook::{JobFields, valid_full_name, valid_name};
use crate::wire;

/// A sleep the client awaits between attempts; tests may record instead.
pub type Sleeper = Arc<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Tunables. [`ClientOptions::default`] suits production.
#[derive(Clone)]
pub struct ClientOptions {
    pub user_agent: String,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Attempts per call, first one included.
    pub max_attempts: u32,
    /// First backoff step for 5xx/transport retries; doubles each attempt,
    /// jittered to 50–100 %.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// A `Retry-After` (or primary reset) longer than this is not waited for
    /// inside the call: the call fails `Throttled` with `retry_after_ms`.
    pub max_retry_after: Duration,
    /// An installation token is replaced this long before it expires.
    pub token_refresh_margin: Duration,
    /// ETag cache entries kept (GET answers).
    pub etag_cache_entries: usize,
    pub sleeper: Sleeper,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            user_agent: concat!("runfleet/", env!("CARGO_PKG_VERSION")).to_string(),
            timeout: Duration::from_secs(30),
            max_attempts: 4,
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(8),
            max_retry_after: Duration::from_secs(60),
            token_refresh_margin: Duration::from_secs(300),
            etag_cache_entries: 1024,
            sleeper: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("user_agent", &self.user_agent)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("max_retry_after", &self.max_retry_after)
            .finish_non_exhaustive()
    }
}

/// The last primary rate-limit state GitHub reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub remaining: u64,
    /// `x-ratelimit-reset`, in milliseconds since the epoch.
    pub reset_at: Millis,
}

/// A repository as [`GitHubClient::get_repo`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub id: u64,
    pub full_name: String,
    pub private: bool,
    pub archived: bool,
    pub disabled: bool,
    pub default_branch: Option<String>,
}

enum Credentials {
    Pat(Secret),
    App(Box<App>),
}

struct App {
    app_id: u64,
    key: EncodingKey,
    installation_id: Option<u64>,
    /// owner (lowercase) -> installation id
    installations: Mutex<HashMap<String, u64>>,
    tokens: tokio::sync::Mutex<HashMap<u64, CachedToken>>,
    jwt: Mutex<Option<CachedToken>>,
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    expires_at: Millis,
}

/// Whose rate-limit bucket and ETag cache a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bucket {
    Pat,
    App,
    Installation(u64),
}

/// What a request acts for, to pick its credentials.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    /// `owner/name`
    Repo(&'a str, &'a str),
    Owner(&'a str),
}

impl Target<'_> {
    fn owner(&self) -> &str {
        match self {
            Target::Repo(o, _) | Target::Owner(o) => o,
        }
    }
}

struct Call<'a> {
    method: Method,
    template: &'static str,
    /// Full URL (always under `api_url`).
    url: String,
    body: Option<Vec<u8>>,
    /// Body of the answer may hold a secret: keep parse errors generic.
    secret_answer: bool,
    target: Option<Target<'a>>,
}

struct Resp {
    status: u16,
    body: Bytes,
    link: Option<String>,
}

#[derive(Default)]
struct EtagCache {
    /// Use counter, for evicting the least recently used entry.
    tick: u64,
    entries: HashMap<(Bucket, String), CachedBody>,
}

struct CachedBody {
    etag: String,
    body: Bytes,
    link: Option<String>,
    used: u64,
}

/// The GitHub REST client. Cheap to share behind an `Arc`.
pub struct GitHubClient {
    http: reqwest::Client,
    base: String,
    creds: Credentials,
    opts: ClientOptions,
    counts: Mutex<BTreeMap<String, u64>>,
    etags: Mutex<EtagCache>,
    limits: Mutex<HashMap<Bucket, RateLimit>>,
    last_limit: Mutex<Option<RateLimit>>,
}

impl std::fmt::Debug for GitHubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.creds {
            Credentials::Pat(_) => "pat",
            Credentials::App(_) => "app",
        };
        f.debug_struct("GitHubClient")
            .field("api_url", &self.base)
            .field("auth", &auth)
            .finish_non_exhaustive()
    }
}

fn err(kind: ErrorKind, message: impl Into<String>) -> PortError {
    PortError::new(kind, message)
}

fn split_repo(repo: &str) -> PortResult<(&str, &str)> {
    if !valid_full_name(repo) {
        return Err(err(
            ErrorKind::Invalid,
            format!("repository {repo:?} is not owner/name"),
        ));
    }
    Ok(repo.split_once('/').expect("checked by valid_full_name"))
}

fn check_owner(owner: &str) -> PortResult<&str> {
    if valid_name(owner) {
        Ok(owner)
    } else {
        Err(err(
            ErrorKind::Invalid,
            format!("owner {owner:?} is not a valid GitHub name"),
        ))
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::DELETE | Method::HEAD)
}

/// `rel="next"` of a `Link` header.
pub fn next_link(link: &str) -> Option<&str> {
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim();
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then_some(url)
    })
}

impl GitHubClient {
    /// A client for `cfg` (PAT when `token` is set, otherwise App auth).
    pub fn new(cfg: &GithubConfig) -> PortResult<Self> {
        Self::with_options(cfg, ClientOptions::default())
    }

    pub fn with_options(cfg: &GithubConfig, opts: ClientOptions) -> PortResult<Self> {
        let base = cfg.api_url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&base).map_err(|e| {
            err(
                ErrorKind::Invalid,
                format!("github.api_url {base:?} is not a URL: {e}"),
            )
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(err(
                ErrorKind::Invalid,
                format!("github.api_url {base:?} must be an http(s) URL"),
            ));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(err(
                ErrorKind::Invalid,
                format!("github.api_url {base:?} must not have a query or fragment"),
            ));
        }
        let creds = if let Some(token) = &cfg.token {
            if token.expose().is_empty() {
                return Err(err(ErrorKind::Auth, "github.token is empty"));
            }
            Credentials::Pat(token.clone())
        } else {
            let (Some(app_id), Some(pem)) = (cfg.app_id, cfg.app_private_key.as_ref()) else {
                return Err(err(
                    ErrorKind::Auth,
                    "no GitHub credentials: set github.token or github.app_id and github.app_private_key",
                ));
            };
            let key = EncodingKey::from_rsa_pem(pem.expose().as_bytes()).map_err(|_| {
                err(
                    ErrorKind::Auth,
                    "github.app_private_key is not an RSA private key in PEM form",
                )
            })?;
            Credentials::App(Box::new(App {
                app_id,
                key,
                installation_id: cfg.installation_id,
                installations: Mutex::new(HashMap::new()),
                tokens: tokio::sync::Mutex::new(HashMap::new()),
                jwt: Mutex::new(None),
            }))
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "accept",
            HeaderValue::from_static("application/vnd.github+json"),
        );
        headers.insert(
            "x-github-api-version",
            HeaderValue::from_static("2022-11-28"),
        );
        let http = reqwest::Client::builder()
            .user_agent(opts.user_agent.clone())
            .default_headers(headers)
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(10)))
            // Never follow a redirect off api_url with our credentials.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| err(ErrorKind::Invalid, format!("cannot build HTTP client: {e}")))?;
        Ok(GitHubClient {
            http,
            base,
            creds,
            opts,
            counts: Mutex::new(BTreeMap::new()),
            etags: Mutex::new(EtagCache::default()),
            limits: Mutex::new(HashMap::new()),
            last_limit: Mutex::new(None),
        })
    }

    /// `api_url` without a trailing slash.
    pub fn api_url(&self) -> &str {
        &self.base
    }

    /// Requests sent so far per endpoint (`METHOD /template`), retries and
    /// 304s included, sorted by endpoint.
    pub fn request_counts(&self) -> Vec<(String, u64)> {
        self.counts_snapshot()
    }

    fn counts_snapshot(&self) -> Vec<(String, u64)> {
        let counts = self.counts.lock().expect("counts lock");
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// All requests sent so far.
    pub fn total_requests(&self) -> u64 {
        self.counts.lock().expect("counts lock").values().sum()
    }

    /// The primary rate limit as GitHub last reported it.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        *self.last_limit.lock().expect("limit lock")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn count(&self, method: &Method, template: &str) {
        let mut counts = self.counts.lock().expect("counts lock");
        *counts.entry(format!("{method} {template}")).or_insert(0) += 1;
    }

    // ---------------------------------------------------------------- auth

    fn app(&self) -> Option<&App> {
        match &self.creds {
            Credentials::App(app) => Some(app),
            Credentials::Pat(_) => None,
        }
    }

    /// A JWT for App-level calls, reused until a minute before it expires.
    fn app_jwt(&self, app: &App) -> PortResult<Secret> {
        let now = now_millis();
        let mut cached = app.jwt.lock().expect("jwt lock");
        if let Some(c) = cached.as_ref()
            && c.expires_at > now + 60_000
        {
            return Ok(c.token.clone());
        }
        #[derive(Serialize)]
        struct Claims {
            iat: u64,
            exp: u64,
            iss: String,
        }
        let now_s = now / 1000;
        let claims = Claims {
            iat: now_s.saturating_sub(60),
            exp: now_s + 540,
            iss: app.app_id.to_string(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &app.key)
            .map_err(|_| {
                err(
                    ErrorKind::Auth,
                    "cannot sign the GitHub App JWT with github.app_private_key",
                )
            })?;
        let token = Secret::new(token);
        *cached = Some(CachedToken {
            token: token.clone(),
            expires_at: (now_s + 540) * 1000,
        });
        Ok(token)
    }

    /// The installation serving `target`'s owner.
    async fn installation_for(&self, app: &App, target: Target<'_>) -> PortResult<u64> {
        if let Some(id) = app.installation_id {
            return Ok(id);
        }
        let owner_key = target.owner().to_ascii_lowercase();
        if let Some(id) = app
            .installations
            .lock()
            .expect("installations lock")
            .get(&owner_key)
        {
            return Ok(*id);
        }
        let jwt = self.app_jwt(app)?;
        let found = match target {
            Target::Repo(o, n) => {
                self.app_get_installation(
                    &jwt,
                    "/repos/{owner}/{repo}/installation",
                    &format!("/repos/{o}/{n}/installation"),
                )
                .await?
            }
            Target::Owner(o) => {
                match self
                    .app_get_installation(
                        &jwt,
                        "/orgs/{org}/installation",
                        &format!("/orgs/{o}/installation"),
                    )
                    .await
                {
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        self.app_get_installation(
                            &jwt,
                            "/users/{username}/installation",
                            &format!("/users/{o}/installation"),
                        )
                        .await?
                    }
                    other => other?,
                }
            }
        };
        app.installations
            .lock()
            .expect("installations lock")
            .insert(owner_key, found);
        Ok(found)
    }

    async fn app_get_installation(
        &self,
        jwt: &Secret,
        template: &'static str,
        path: &str,
    ) -> PortResult<u64> {
        let call = Call {
            method: Method::GET,
            template,
            url: self.url(path),
            body: None,
            secret_answer: false,
            target: None,
        };
        let resp = self.perform(&call, jwt, Bucket::App).await?;
        let inst: wire::Installation = decode(&call, &resp)?;
        Ok(inst.id)
    }

    /// A valid installation token, minted or refreshed as needed.
    async fn installation_token(&self, app: &App, id: u64, force: bool) -> PortResult<Secret> {
        let mut tokens = app.tokens.lock().await;
        let margin = self.opts.token_refresh_margin.as_millis() as u64;
        if !force
            && let Some(t) = tokens.get(&id)
            && t.expires_at > now_millis() + margin
        {
            return Ok(t.token.clone());
        }
        let jwt = self.app_jwt(app)?;
        let call = Call {
            method: Method::POST,
            template: "/app/installations/{installation_id}/access_tokens",
            url: self.url(&format!("/app/installations/{id}/access_tokens")),
            body: None,
            secret_answer: true,
            target: None,
        };
        let resp = self.perform(&call, &jwt, Bucket::App).await?;
        let tok: wire::InstallationToken = decode(&call, &resp)?;
        let expires_at = parse_millis(&tok.expires_at).ok_or_else(|| {
            err(
                ErrorKind::Transient,
                "POST /app/installations/{installation_id}/access_tokens: unreadable expires_at",
            )
        })?;
        let token = Secret::new(tok.token);
        tokens.insert(
            id,
            CachedToken {
                token: token.clone(),
                expires_at,
            },
        );
        tracing::debug!(
            installation_id = id,
            expires_at,
            "installation token minted"
        );
        Ok(token)
    }

    /// Sends an API call with the right credentials; for an installation
    /// token refused with 401, mints a new token and tries once more.
    async fn request(&self, call: Call<'_>) -> PortResult<Resp> {
        match &self.creds {
            Credentials::Pat(token) => self.perform(&call, token, Bucket::Pat).await,
            Credentials::App(app) => {
                let target = call.target.ok_or_else(|| {
                    err(
                        ErrorKind::Invalid,
                        format!(
                            "{} {}: no owner to authenticate for",
                            call.method, call.template
                        ),
                    )
                })?;
                let id = self.installation_for(app, target).await?;
                let token = self.installation_token(app, id, false).await?;
                match self.perform(&call, &token, Bucket::Installation(id)).await {
                    Err(e) if e.kind == ErrorKind::Auth && e.message.contains(": 401") => {
                        tracing::info!(
                            installation_id = id,
                            "installation token refused; minting a new one"
                        );
                        let token = self.installation_token(app, id, true).await?;
                        self.perform(&call, &token, Bucket::Installation(id)).await
                    }
                    other => other,
                }
            }
        }
    }

    // ------------------------------------------------------------ transport

    fn limit_gate(&self, bucket: Bucket, call: &Call<'_>) -> PortResult<()> {
        let limits = self.limits.lock().expect("limit lock");
        if let Some(l) = limits.get(&bucket) {
            let now = now_millis();
            if l.remaining == 0 && l.reset_at > now {
                let mut e = err(
                    ErrorKind::Throttled,
                    format!(
                        "{} {}: primary rate limit exhausted until x-ratelimit-reset",
                        call.method, call.template
                    ),
                );
                e.retry_after_ms = Some(l.reset_at - now);
                return Err(e);
            }
        }
        Ok(())
    }

    fn note_limits(&self, bucket: Bucket, headers: &HeaderMap) {
        let num = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(remaining), Some(reset)) =
            (num("x-ratelimit-remaining"), num("x-ratelimit-reset"))
        {
            let rl = RateLimit {
                remaining,
                reset_at: reset.saturating_mul(1000),
            };
            self.limits.lock().expect("limit lock").insert(bucket, rl);
            *self.last_limit.lock().expect("limit lock") = Some(rl);
            if remaining < 100 {
                tracing::warn!(remaining, reset, "GitHub primary rate limit running low");
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .opts
            .backoff_base
            .saturating_mul(1u32 << attempt.min(16));
        let capped = exp.min(self.opts.backoff_max);
        let factor: f64 = rand::rng().random_range(0.5..=1.0);
        capped.mul_f64(factor)
    }

    /// One call with retries, ETags, rate limits and counting.
    async fn perform(&self, call: &Call<'_>, bearer: &Secret, bucket: Bucket) -> PortResult<Resp> {
        self.limit_gate(bucket, call)?;
        let what = format!("{} {}", call.method, call.template);
        let mut attempt: u32 = 0;
        let mut retried_after_failure = false;
        loop {
            attempt += 1;
            let last = attempt >= self.opts.max_attempts;
            let cached_etag = if call.method == Method::GET {
                let etags = self.etags.lock().expect("etag lock");
                etags
                    .entries
                    .get(&(bucket, call.url.clone()))
                    .map(|c| c.etag.clone())
            } else {
                None
            };
            let mut rb = self
                .http
                .request(call.method.clone(), &call.url)
                .bearer_auth(bearer.expose());
            if let Some(etag) = &cached_etag {
                rb = rb.header("if-none-match", etag);
            }
            if let Some(body) = &call.body {
                rb = rb
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            self.count(&call.method, call.template);
            let sent = rb.send().await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    let reason = if e.is_timeout() {
                        "timed out"
                    } else if e.is_connect() {
                        "connection failed"
                    } else {
                        "request failed"
                    };
                    tracing::debug!(endpoint = %what, attempt, reason, "GitHub request failed");
                    // A POST may have reached GitHub: never repeat it.
                    if is_idempotent(&call.method) && !last {
                        retried_after_failure = true;
                        (self.opts.sleeper)(self.backoff(attempt - 1)).await;
                        continue;
                    }
                    return Err(err(ErrorKind::Transient, format!("{what}: {reason}")));
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            self.note_limits(bucket, &headers);
            let body = match resp.bytes().await {
                Ok(b) => b,
                Err(_) => {
                    if is_idempotent(&call.method) && !last {
                        retried_after_failure = true;
                        (self.opts.sleeper)(self.backoff(attempt - 1)).await;
                        continue;
                    }
                    return Err(err(
                        ErrorKind::Transient,
                        format!("{what}: {status}: body cut short"),
                    ));
                }
            };
            let link = headers
                .get("link")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            tracing::debug!(endpoint = %what, status, attempt, "GitHub answered");

            if status == 304 && cached_etag.is_some() {
                let mut etags = self.etags.lock().expect("etag lock");
                etags.tick += 1;
                let tick = etags.tick;
                if let Some(c) = etags.entries.get_mut(&(bucket, call.url.clone())) {
                    c.used = tick;
                    return Ok(Resp {
                        status: 200,
                        body: c.body.clone(),
                        link: c.link.clone(),
                    });
                }
                // Evicted meanwhile: ask again without a condition.
                continue;
            }
            if (200..300).contains(&status) {
                if call.method == Method::GET
                    && let Some(etag) = headers.get("etag").and_then(|v| v.to_str().ok())
                {
                    self.remember(bucket, &call.url, etag, &body, &link);
                }
                return Ok(Resp { status, body, link });
            }

            let message = error_message(&body, bearer);
            let retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let remaining = headers
                .get("x-ratelimit-remaining")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let rate_limited = status == 429
                || (status == 403
                    && (retry_after.is_some()
                        || remaining == Some(0)
                        || message.to_ascii_lowercase().contains("rate limit")));
            if rate_limited {
                let wait_ms = if let Some(s) = retry_after {
                    s * 1000
                } else if remaining == Some(0) {
                    self.limits
                        .lock()
                        .expect("limit lock")
                        .get(&bucket)
                        .map(|l| l.reset_at.saturating_sub(now_millis()))
                        .unwrap_or(60_000)
                } else {
                    // GitHub: without Retry-After, wait at least a minute.
                    60_000
                };
                let wait = Duration::from_millis(wait_ms);
                tracing::warn!(endpoint = %what, status, wait_ms, attempt, "GitHub rate limit");
                if !last && wait <= self.opts.max_retry_after {
                    (self.opts.sleeper)(wait).await;
                    continue;
                }
                let mut e = err(ErrorKind::Throttled, format!("{what}: {status}: {message}"));
                e.retry_after_ms = Some(wait_ms);
                return Err(e);
            }
            if status >= 500 {
                if is_idempotent(&call.method) && !last {
                    retried_after_failure = true;
                    (self.opts.sleeper)(self.backoff(attempt - 1)).await;
                    continue;
                }
                return Err(err(
                    ErrorKind::Transient,
                    format!("{what}: {status}: {message}"),
                ));
            }
            if status == 404 && call.method == Method::DELETE && retried_after_failure {
                // An earlier attempt whose answer was lost did delete it.
                return Ok(Resp {
                    status: 204,
                    body: Bytes::new(),
                    link: None,
                });
            }
            let kind = match status {
                401 | 403 => ErrorKind::Auth,
                404 | 410 => ErrorKind::NotFound,
                400 | 409 | 422 => ErrorKind::Invalid,
                408 => ErrorKind::Transient,
                _ => ErrorKind::Invalid,
            };
            return Err(err(kind, format!("{what}: {status}: {message}")));
        }
    }

    fn remember(&self, bucket: Bucket, url: &str, etag: &str, body: &Bytes, link: &Option<String>) {
        let cap = self.opts.etag_cache_entries;
        if cap == 0 {
            return;
        }
        let mut etags = self.etags.lock().expect("etag lock");
        etags.tick += 1;
        let tick = etags.tick;
        let key = (bucket, url.to_string());
        if etags.entries.len() >= cap && !etags.entries.contains_key(&key) {
            let oldest = etags
                .entries
                .iter()
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                etags.entries.remove(&k);
            }
        }
        etags.entries.insert(
            key,
            CachedBody {
                etag: etag.to_string(),
                body: body.clone(),
                link: link.clone(),
                used: tick,
            },
        );
    }

    /// GETs every page of a list, following `Link: rel="next"` (only
    /// within `api_url`).
    async fn get_all<T: DeserializeOwned, I>(
        &self,
        template: &'static str,
        first_path: &str,
        target: Target<'_>,
        items: impl Fn(T) -> Vec<I>,
    ) -> PortResult<Vec<I>> {
        let mut out = Vec::new();
        let mut url = self.url(first_path);
        for _page in 0..1000 {
            let call = Call {
                method: Method::GET,
                template,
                url: url.clone(),
                body: None,
                secret_answer: false,
                target: Some(target),
            };
            let resp = self.request(call).await?;
            let page: T = decode_named(Method::GET, template, false, &resp)?;
            out.extend(items(page));
            match resp.link.as_deref().and_then(next_link) {
                Some(next) => {
                    if !next.starts_with(&format!("{}/", self.base)) {
                        return Err(err(
                            ErrorKind::Invalid,
                            format!("GET {template}: pagination link leaves api_url; not followed"),
                        ));
                    }
                    url = next.to_string();
                }
                None => return Ok(out),
            }
        }
        Err(err(
            ErrorKind::Invalid,
            format!("GET {template}: more than 1000 pages"),
        ))
    }

    async fn get_one<T: DeserializeOwned>(
        &self,
        template: &'static str,
        path: &str,
        target: Target<'_>,
    ) -> PortResult<T> {
        let call = Call {
            method: Method::GET,
            template,
            url: self.url(path),
            body: None,
            secret_answer: false,
            target: Some(target),
        };
        let resp = self.request(call).await?;
        decode_named(Method::GET, template, false, &resp)
    }

    // ------------------------------------------------------------ endpoints

    fn runner_paths(scope: &Scope) -> PortResult<(Target<'_>, String, bool)> {
        match scope {
            Scope::Repo(r) => {
                let (o, n) = split_repo(r)?;
                Ok((
                    Target::Repo(o, n),
                    format!("/repos/{o}/{n}/actions/runners"),
                    true,
                ))
            }
            Scope::Org(o) => {
                let o = check_owner(o)?;
                Ok((
                    Target::Owner(o),
                    format!("/orgs/{o}/actions/runners"),
                    false,
                ))
            }
        }
    }

    /// One self-hosted runner.
    pub async fn get_runner(&self, scope: &Scope, runner_id: u64) -> PortResult<Runner> {
        let (target, base, repo) = Self::runner_paths(scope)?;
        let template = if repo {
            "/repos/{owner}/{repo}/actions/runners/{runner_id}"
        } else {
            "/orgs/{org}/actions/runners/{runner_id}"
        };
        let r: wire::Runner = self
            .get_one(template, &format!("{base}/{runner_id}"), target)
            .await?;
        Ok(to_runner(r, scope))
    }

    /// Re-runs one job (`POST .../actions/jobs/{job_id}/rerun`).
    pub async fn rerun_job(&self, repo: &str, job_id: u64) -> PortResult<()> {
        let (o, n) = split_repo(repo)?;
        let call = Call {
            method: Method::POST,
            template: "/repos/{owner}/{repo}/actions/jobs/{job_id}/rerun",
            url: self.url(&format!("/repos/{o}/{n}/actions/jobs/{job_id}/rerun")),
            body: Some(b"{}".to_vec()),
            secret_answer: false,
            target: Some(Target::Repo(o, n)),
        };
        self.request(call).await.map(|_| ())
    }

    /// Reads a repository (also proves the credentials can see it).
    pub async fn get_repo(&self, repo: &str) -> PortResult<Repository> {
        let (o, n) = split_repo(repo)?;
        let r: wire::Repo = self
            .get_one(
                "/repos/{owner}/{repo}",
                &format!("/repos/{o}/{n}"),
                Target::Repo(o, n),
            )
            .await?;
        Ok(Repository {
            id: r.id,
            full_name: r.full_name,
            private: r.private,
            archived: r.archived,
            disabled: r.disabled,
            default_branch: r.default_branch,
        })
    }

    /// Jobs whose status is `job_status` in the runs of `repo` whose
    /// status is one of `run_statuses` (all pages).
    async fn jobs_in_runs(
        &self,
        repo: &str,
        run_statuses: &[&str],
        job_status: &str,
    ) -> PortResult<Vec<JobEvent>> {
        let (o, n) = split_repo(repo)?;
        let mut runs = Vec::new();
        for status in run_statuses {
            runs.extend(self.run_ids(o, n, status).await?);
        }
        runs.sort_unstable();
        runs.dedup();
        let now = now_millis();
        let mut out = Vec::new();
        for run in runs {
            let jobs = match self.run_jobs(o, n, run).await {
                // The run was deleted between the two calls.
                Err(e) if e.kind == ErrorKind::NotFound => continue,
                other => other?,
            };
            for j in jobs.into_iter().filter(|j| j.status == job_status) {
                out.push(job_event(j, repo, now)?);
            }
        }
        Ok(out)
    }

    /// Every job of one run (all pages).
    async fn run_jobs(&self, o: &str, n: &str, run: u64) -> PortResult<Vec<wire::Job>> {
        self.get_all(
            "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs",
            &format!("/repos/{o}/{n}/actions/runs/{run}/jobs?per_page=100"),
            Target::Repo(o, n),
            |p: wire::JobsPage| p.jobs,
        )
        .await
    }

    async fn run_ids(&self, o: &str, n: &str, status: &str) -> PortResult<Vec<u64>> {
        self.get_all(
            "/repos/{owner}/{repo}/actions/runs",
            &format!("/repos/{o}/{n}/actions/runs?status={status}&per_page=100"),
            Target::Repo(o, n),
            |p: wire::RunsPage| p.workflow_runs.into_iter().map(|r| r.id).collect(),
        )
        .await
    }
}

fn to_runner(r: wire::Runner, scope: &Scope) -> Runner {
    Runner {
        id: r.id,
        name: r.name,
        scope: scope.clone(),
        online: r.status == "online",
        busy: r.busy,
        labels: r.labels.into_iter().map(|l| l.name).collect(),
    }
}

/// A REST job object as a [`JobEvent`] of `repo`.
fn job_event(j: wire::Job, repo: &str, observed_at: Millis) -> PortResult<JobEvent> {
    JobFields {
        id: j.id,
        run_id: j.run_id,
        repo: repo.to_string(),
        status: &j.status,
        labels: j.labels.clone(),
        runner_name: j.runner_name.as_deref(),
        conclusion: j.conclusion.as_deref(),
        created_at: j.created_at.as_deref(),
        started_at: j.started_at.as_deref(),
        completed_at: j.completed_at.as_deref(),
    }
    .into_event(observed_at)
    .map_err(|e| err(ErrorKind::Transient, format!("GET job {}: {e}", j.id)))
}

/// GitHub's `message` from an error body, without the bearer token should
/// it ever be echoed, at most 200 characters.
fn error_message(body: &[u8], bearer: &Secret) -> String {
    let msg = serde_json::from_slice::<wire::ErrorBody>(body)
        .ok()
        .and_then(|b| b.message)
        .unwrap_or_else(|| "no message".to_string());
    let msg = if bearer.expose().is_empty() {
        msg
    } else {
        msg.replace(bearer.expose(), "***")
    };
    msg.chars().take(200).collect()
}

fn decode<T: DeserializeOwned>(call: &Call<'_>, resp: &Resp) -> PortResult<T> {
    decode_named(call.method.clone(), call.template, call.secret_answer, resp)
}

fn decode_named<T: DeserializeOwned>(
    method: Method,
    template: &str,
    secret_answer: bool,
    resp: &Resp,
) -> PortResult<T> {
    serde_json::from_slice(&resp.body).map_err(|e| {
        // serde_json may quote a value from the body; say only where.
        let detail = if secret_answer {
            String::new()
        } else {
            format!(
                " ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        };
        err(
            ErrorKind::Transient,
            format!(
                "{method} {template}: {}: unexpected response body{detail}",
                resp.status
            ),
        )
    })
}

#[async_trait]
impl GitHub for GitHubClient {
    async fn generate_jitconfig(&self, req: &JitRequest) -> PortResult<JitConfig> {
        if req.labels.is_empty() || req.labels.len() > 100 {
            return Err(err(
                ErrorKind::Invalid,
                format!(
                    "generate-jitconfig for {}: needs 1 to 100 labels, got {}",
                    req.name,
                    req.labels.len()
                ),
            ));
        }
        let (target, path, template) = match &req.scope {
            Scope::Repo(r) => {
                let (o, n) = split_repo(r)?;
                (
                    Target::Repo(o, n),
                    format!("/repos/{o}/{n}/actions/runners/generate-jitconfig"),
                    "/repos/{owner}/{repo}/actions/runners/generate-jitconfig",
                )
            }
            Scope::Org(o) => {
                let o = check_owner(o)?;
                (
                    Target::Owner(o),
                    format!("/orgs/{o}/actions/runners/generate-jitconfig"),
                    "/orgs/{org}/actions/runners/generate-jitconfig",
                )
            }
        };
        #[derive(Serialize)]
        struct Body<'a> {
            name: &'a str,
            runner_group_id: u64,
            labels: &'a [String],
            work_folder: &'a str,
        }
        let body = serde_json::to_vec(&Body {
            name: &req.name,
            runner_group_id: req.runner_group_id,
            labels: &req.labels,
            work_folder: "_work",
        })
        .map_err(|e| err(ErrorKind::Invalid, format!("POST {template}: {e}")))?;
        let call = Call {
            method: Method::POST,
            template,
            url: self.url(&path),
            body: Some(body),
            secret_answer: true,
            target: Some(target),
        };
        let resp = self.request(call).await?;
        let jit: wire::Jit = decode_named(Method::POST, template, true, &resp)?;
        Ok(JitConfig {
            runner_id: jit.runner.id,
            encoded: Secret::new(jit.encoded_jit_config),
        })
    }

    async fn list_runners(&self, scope: &Scope) -> PortResult<Vec<Runner>> {
        let (target, base, repo) = Self::runner_paths(scope)?;
        let template = if repo {
            "/repos/{owner}/{repo}/actions/runners"
        } else {
            "/orgs/{org}/actions/runners"
        };
        self.get_all(
            template,
            &format!("{base}?per_page=100"),
            target,
            |p: wire::RunnersPage| p.runners.into_iter().map(|r| to_runner(r, scope)).collect(),
        )
        .await
    }

    async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> PortResult<()> {
        let (target, base, repo) = Self::runner_paths(scope)?;
        let template = if repo {
            "/repos/{owner}/{repo}/actions/runners/{runner_id}"
        } else {
            "/orgs/{org}/actions/runners/{runner_id}"
        };
        let call = Call {
            method: Method::DELETE,
            template,
            url: self.url(&format!("{base}/{runner_id}")),
            body: None,
            secret_answer: false,
            target: Some(target),
        };
        self.request(call).await.map(|_| ())
    }

    async fn list_active_runs(&self, repo: &str) -> PortResult<Vec<u64>> {
        let (o, n) = split_repo(repo)?;
        let mut runs = self.run_ids(o, n, "queued").await?;
        runs.extend(self.run_ids(o, n, "in_progress").await?);
        runs.sort_unstable();
        runs.dedup();
        Ok(runs)
    }

    /// Jobs `queued`, `in_progress` or `completed`; one `waiting` (for an
    /// environment's approval), `pending` or `requested` is not listed,
    /// as [`GitHub::list_queued_jobs`] does not list it: no runner can take
    /// it yet.
    async fn list_run_jobs(&self, repo: &str, run_id: u64) -> PortResult<Vec<JobEvent>> {
        let (o, n) = split_repo(repo)?;
        let now = now_millis();
        self.run_jobs(o, n, run_id)
            .await?
            .into_iter()
            .filter(|j| matches!(j.status.as_str(), "queued" | "in_progress" | "completed"))
            .map(|j| job_event(j, repo, now))
            .collect()
    }

    async fn list_queued_jobs(&self, repo: &str) -> PortResult<Vec<JobEvent>> {
        self.jobs_in_runs(repo, &["queued", "in_progress"], "queued")
            .await
    }

    async fn list_running_jobs(&self, repo: &str) -> PortResult<Vec<JobEvent>> {
        self.jobs_in_runs(repo, &["in_progress"], "in_progress")
            .await
    }

    async fn get_job(&self, repo: &str, job_id: u64) -> PortResult<JobEvent> {
        let (o, n) = split_repo(repo)?;
        let j: wire::Job = self
            .get_one(
                "/repos/{owner}/{repo}/actions/jobs/{job_id}",
                &format!("/repos/{o}/{n}/actions/jobs/{job_id}"),
                Target::Repo(o, n),
            )
            .await?;
        job_event(j, repo, now_millis())
    }

    fn request_counts(&self) -> Vec<(String, u64)> {
        self.counts_snapshot()
    }

    async fn rerun_job(&self, repo: &str, job_id: u64) -> PortResult<()> {
        GitHubClient::rerun_job(self, repo, job_id).await
    }

    async fn list_repos(&self, owner: &str) -> PortResult<Vec<String>> {
        let owner = check_owner(owner)?;
        let target = Target::Owner(owner);
        let repos: Vec<wire::Repo> = if self.app().is_some() {
            self.get_all(
                "/installation/repositories",
                "/installation/repositories?per_page=100",
                target,
                |p: wire::InstallationRepos| p.repositories,
            )
            .await?
        } else {
            let org = self
                .get_all(
                    "/orgs/{org}/repos",
                    &format!("/orgs/{owner}/repos?type=all&per_page=100"),
                    target,
                    |p: Vec<wire::Repo>| p,
                )
                .await;
            match org {
                Err(e) if e.kind == ErrorKind::NotFound => {
                    self.get_all(
                        "/users/{username}/repos",
                        &format!("/users/{owner}/repos?type=owner&per_page=100"),
                        target,
                        |p: Vec<wire::Repo>| p,
                    )
                    .await?
                }
                other => other?,
            }
        };
        let mut names: Vec<String> = repos
            .into_iter()
            .filter(|r| !r.archived && !r.disabled)
            .filter(|r| {
                r.full_name
                    .split_once('/')
                    .is_some_and(|(o, _)| o.eq_ignore_ascii_case(owner))
            })
            .map(|r| r.full_name)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_next() {
        let h = r#"<https://api.github.com/x?page=2>; rel="next", <https://api.github.com/x?page=5>; rel="last""#;
        assert_eq!(next_link(h), Some("https://api.github.com/x?page=2"));
        let h = r#"<https://api.github.com/x?page=1>; rel="prev", <https://api.github.com/x?page=1>; rel="first""#;
        assert_eq!(next_link(h), None);
        assert_eq!(next_link("garbage"), None);
    }

    #[test]
    fn error_message_redacts_the_bearer() {
        let bearer = Secret::new("ghp_abc123");
        let body = br#"{"message":"token ghp_abc123 is bad"}"#;
        assert_eq!(error_message(body, &bearer), "token *** is bad");
        assert_eq!(error_message(b"<html>", &bearer), "no message");
    }
}
