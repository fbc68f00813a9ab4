//! A fake GitHub: an axum HTTP server with in-memory state for every endpoint
//! [`GitHubClient`](crate::client::GitHubClient) uses, answering in GitHub's
//! JSON shapes (checked against GitHub's OpenAPI description by
//! `tests/contract.rs`).
//!
//! - Auth: the PAT it was given, App JWTs (RS256, checked with the App's
//!   public key, `iss` = app id, `exp` at most 10 minutes ahead) for
//!   `/app/...` and `.../installation`, and the installation tokens it
//!   issued (expiry settable with [`FakeGitHub::set_token_ttl`]).
//! - Control, as Rust methods here and as HTTP under `/_fake/...` (see
//!   [`control`](self) routes in `control.rs`): queue a job (with or without
//!   its webhook), bring a runner online (by name or by its JIT config),
//!   start and complete jobs, send signed webhooks to a URL, list the
//!   requests seen.
//! - Faults: the next N requests to an endpoint answer 5xx, a secondary or
//!   primary rate limit, or late; webhooks can be dropped.
//!
//! Runners made by `generate-jitconfig` start offline and ephemeral; the
//! encoded JIT config is an opaque random string the fake maps back to its
//! runner. The server binds `127.0.0.1:0` unless told otherwise; it sends
//! webhooks only to the URL it is given.

mod api;
mod control;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use runfleet_core::config::{GithubConfig, Secret};
use runfleet_core::model::Scope;
use tokio::sync::oneshot;

pub use state::{DeliveryRecord, FakeJob, FakeRunner, Fault, OwnerKind, SeenRequest};

use crate::timestamp::now_millis;
use state::{FaultRule, Installation, Run, State};

/// How to start a fake.
#[derive(Debug, Clone)]
pub struct FakeOptions {
    /// Where to listen; `127.0.0.1:0` by default.
    pub listen: SocketAddr,
    /// The accepted personal access token; a random one when `None` and no
    /// App is configured.
    pub pat: Option<String>,
    /// The App: its id and public key (PEM).
    pub app: Option<(u64, String)>,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            pat: None,
            app: None,
        }
    }
}

/// Why a control call was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeError {
    #[error("no runner named {0:?}")]
    NoRunner(String),
    #[error("no job {0}")]
    NoJob(u64),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid: {0}")]
    Invalid(String),
}

/// A job queued through the control surface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueuedJob {
    pub job_id: u64,
    pub run_id: u64,
}

pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub app_key: Option<jsonwebtoken::DecodingKey>,
    pub http: reqwest::Client,
}

impl Shared {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running fake GitHub. Dropping it stops the server.
pub struct FakeGitHub {
    url: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeGitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeGitHub")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn random_string(prefix: &str, len: usize) -> String {
    let mut rng = rand::rng();
    let body: String = (0..len)
        .map(|_| {
            let c = rng.random_range(0..62u8);
            (match c {
                0..=9 => b'0' + c,
                10..=35 => b'a' + c - 10,
                _ => b'A' + c - 36,
            }) as char
        })
        .collect();
    format!("{prefix}{body}")
}

impl FakeGitHub {
    /// A fake on `127.0.0.1:<free port>` accepting a random PAT ([`Self::pat`]).
    pub async fn start() -> FakeGitHub {
        Self::start_with(FakeOptions::default())
            .await
            .expect("bind 127.0.0.1:0")
    }

    pub async fn start_with(opts: FakeOptions) -> std::io::Result<FakeGitHub> {
        let app_key = match &opts.app {
            Some((_, pem)) => Some(
                jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?,
            ),
            None => None,
        };
        let pat = match (&opts.pat, &opts.app) {
            (Some(p), _) => Some(p.clone()),
            (None, None) => Some(random_string("ghp_", 36)),
            (None, Some(_)) => None,
        };
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let url = format!("http://{addr}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(
                url.clone(),
                pat,
                opts.app.as_ref().map(|(id, _)| *id),
            )),
            app_key,
            http,
        });
        let router = api::router(shared.clone()).merge(control::router(shared.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeGitHub {
            url,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Runs until the server stops (for the standalone binary).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// `http://127.0.0.1:PORT`, the `api_url` to give a client.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The accepted personal access token.
    pub fn pat(&self) -> Option<String> {
        self.shared.lock().pat.clone()
    }

    /// A PAT config for a client of this fake.
    pub fn pat_config(&self) -> GithubConfig {
        GithubConfig {
            api_url: self.url.clone(),
            webhook_secret: None,
            token: self.pat().map(Secret::new),
            app_id: None,
            app_private_key: None,
            installation_id: None,
            repos: None,
            poll: false,
        }
    }

    // ----------------------------------------------------------- world

    /// Registers an organisation (the default kind for owners created by
    /// [`Self::add_repo`]).
    pub fn add_org(&self, login: &str) {
        self.shared
            .lock()
            .owner(login, state::OwnerKind::Organization);
    }

    /// Registers a user account: `/orgs/{login}/...` answers 404 for it.
    pub fn add_user(&self, login: &str) {
        self.shared.lock().owner(login, state::OwnerKind::User);
    }

    /// Creates `owner/name` (if new) and returns its id.
    pub fn add_repo(&self, full_name: &str) -> u64 {
        self.shared.lock().repo(full_name).id
    }

    /// Archives a repository.
    pub fn archive_repo(&self, full_name: &str) {
        let mut st = self.shared.lock();
        if let Some(r) = st.repos.get_mut(&full_name.to_ascii_lowercase()) {
            r.archived = true;
        }
    }

    /// Installs the App on `account`; returns the installation id.
    pub fn add_installation(&self, account: &str) -> u64 {
        let mut st = self.shared.lock();
        if let Some(i) = st.installation_of(account) {
            return i.id;
        }
        st.owner(account, state::OwnerKind::Organization);
        let id = st.id();
        st.installations.insert(
            id,
            Installation {
                id,
                account: account.to_string(),
            },
        );
        id
    }

    /// Lifetime of installation tokens issued from now on.
    pub fn set_token_ttl(&self, ttl: Duration) {
        self.shared.lock().token_ttl_ms = ttl.as_millis() as u64;
    }

    /// The primary rate limit the fake reports (`x-ratelimit-limit`; 5,000
    /// by default, GitHub's hourly limit for a PAT). Its
    /// `x-ratelimit-remaining` counts down by one a request and starts over
    /// at zero, so a client that respects it (runfleet's does: it sends
    /// nothing more until `x-ratelimit-reset`, an hour later) stops once
    /// every `per_hour` requests. Raise it to run more requests than that.
    pub fn set_rate_limit(&self, per_hour: u64) {
        self.shared.lock().rate_limit = per_hour.max(1);
    }

    /// Installation tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.lock().tokens_issued
    }

    /// Every installation token currently valid (for tests that check
    /// nothing leaks them).
    pub fn installation_tokens(&self) -> Vec<String> {
        self.shared.lock().tokens.keys().cloned().collect()
    }

    /// Revokes every installation token (they answer 401 from now on).
    pub fn revoke_tokens(&self) {
        self.shared.lock().tokens.clear();
    }

    /// Registers a runner directly (not through generate-jitconfig).
    pub fn register_runner(&self, scope: Scope, name: &str, labels: &[&str], online: bool) -> u64 {
        let mut st = self.shared.lock();
        let id = st.id();
        st.runners.insert(
            id,
            FakeRunner {
                id,
                name: name.to_string(),
                scope,
                online,
                busy: false,
                ephemeral: false,
                labels: labels.iter().map(|s| s.to_string()).collect(),
                runner_group_id: 1,
                job_id: None,
            },
        );
        id
    }

    /// Every runner, by id.
    pub fn runners(&self) -> Vec<FakeRunner> {
        self.shared.lock().runners.values().cloned().collect()
    }

    pub fn runner_by_name(&self, name: &str) -> Option<FakeRunner> {
        self.shared
            .lock()
            .runners
            .values()
            .find(|r| r.name == name)
            .cloned()
    }

    /// The runner an encoded JIT config was minted for.
    pub fn runner_of_jit(&self, encoded: &str) -> Option<FakeRunner> {
        let st = self.shared.lock();
        st.jit
            .get(encoded)
            .and_then(|id| st.runners.get(id))
            .cloned()
    }

    /// Brings a runner online by name; returns its id.
    pub async fn runner_online(&self, name: &str) -> Result<u64, FakeError> {
        self.shared.runner_online(name).await
    }

    /// Brings online the runner an encoded JIT config belongs to, as the
    /// runner process does with `--jitconfig`.
    pub async fn connect_jit(&self, encoded: &str) -> Result<u64, FakeError> {
        let name = self
            .runner_of_jit(encoded)
            .ok_or_else(|| FakeError::Invalid("unknown JIT config".into()))?
            .name;
        self.shared.runner_online(&name).await
    }

    /// When on, a runner coming online takes the oldest queued job it can
    /// serve (as GitHub does), sending its `in_progress` webhook.
    pub fn set_auto_assign(&self, on: bool) {
        self.shared.lock().auto_assign = on;
    }

    // ----------------------------------------------------------- jobs

    /// Queues a job in a new workflow run of `repo`; sends its `queued`
    /// webhook when `webhook` is set (and a target is configured).
    pub async fn queue_job(&self, repo: &str, labels: &[&str], webhook: bool) -> QueuedJob {
        self.shared
            .queue_job(
                repo,
                labels.iter().map(|s| s.to_string()).collect(),
                webhook,
            )
            .await
    }

    /// Adds a queued job to an existing workflow run (which then lists
    /// under the run's status, e.g. `in_progress`).
    pub async fn queue_job_in_run(
        &self,
        run_id: u64,
        labels: &[&str],
        webhook: bool,
    ) -> Result<QueuedJob, FakeError> {
        self.shared
            .queue_job_in_run(
                run_id,
                labels.iter().map(|s| s.to_string()).collect(),
                webhook,
            )
            .await
    }

    pub fn job(&self, job_id: u64) -> Option<FakeJob> {
        self.shared.lock().jobs.get(&job_id).cloned()
    }

    pub fn jobs(&self) -> Vec<FakeJob> {
        self.shared.lock().jobs.values().cloned().collect()
    }

    /// The runner takes the job (`in_progress` webhook).
    pub async fn start_job(&self, job_id: u64, runner_name: &str) -> Result<(), FakeError> {
        self.shared.start_job(job_id, runner_name, true).await
    }

    /// The job finishes (`completed` webhook); an ephemeral runner leaves.
    pub async fn complete_job(&self, job_id: u64, conclusion: &str) -> Result<(), FakeError> {
        self.shared.complete_job(job_id, conclusion, true).await
    }

    // ----------------------------------------------------------- webhooks

    /// Where to send signed webhooks, and the secret to sign them with.
    pub fn set_webhook(&self, url: &str, secret: &str) {
        self.shared.lock().webhook = Some((url.to_string(), secret.to_string()));
    }

    /// Drops the next `n` webhooks (recorded as dropped, never sent).
    pub fn drop_webhooks(&self, n: u32) {
        self.shared.lock().drop_webhooks = n;
    }

    pub fn deliveries(&self) -> Vec<DeliveryRecord> {
        self.shared.lock().deliveries.clone()
    }

    /// Sends a delivery again with the same `X-GitHub-Delivery`.
    pub async fn redeliver(&self, delivery_id: &str) -> Result<DeliveryRecord, FakeError> {
        self.shared.redeliver(delivery_id).await
    }

    /// Sends a job's webhook for `action` now, whatever its state.
    pub async fn send_job_webhook(
        &self,
        job_id: u64,
        action: &str,
    ) -> Result<DeliveryRecord, FakeError> {
        let payload = {
            let st = self.shared.lock();
            let job = st.jobs.get(&job_id).ok_or(FakeError::NoJob(job_id))?;
            st.webhook_payload(action, job)
        };
        Ok(self
            .shared
            .send_webhook("workflow_job", action, Some(job_id), payload)
            .await)
    }

    // ----------------------------------------------------------- faults

    /// The next `times` requests to `endpoint` (`METHOD /template` as in
    /// [`SeenRequest::endpoint`], or `*`) fail with `fault`.
    pub fn inject(&self, endpoint: &str, fault: Fault, times: u32) {
        self.shared.lock().faults.push(FaultRule {
            endpoint: endpoint.to_string(),
            fault,
            remaining: times,
        });
    }

    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    // ----------------------------------------------------------- requests

    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.lock().requests.clone()
    }

    /// Requests seen for one endpoint (`METHOD /template`).
    pub fn count(&self, endpoint: &str) -> usize {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .count()
    }

    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }
}

impl Shared {
    pub(crate) async fn queue_job(
        &self,
        repo: &str,
        labels: Vec<String>,
        webhook: bool,
    ) -> QueuedJob {
        let (queued, payload) = {
            let mut st = self.lock();
            st.repo(repo);
            let full = st.repo(repo).full_name();
            let now = now_millis();
            let run_id = st.id();
            let job_id = st.id();
            let run_number = st.runs.values().filter(|r| r.repo == full).count() as u64 + 1;
            st.runs.insert(
                run_id,
                Run {
                    id: run_id,
                    repo: full.clone(),
                    run_number,
                    status: "queued".into(),
                    conclusion: None,
                    created_at: now,
                    updated_at: now,
                },
            );
            st.add_queued_job(job_id, run_id, full, labels, now)
        };
        self.announce_queued(queued, payload, webhook).await
    }

    /// Sends a new job's `queued` webhook when asked to.
    async fn announce_queued(
        &self,
        queued: QueuedJob,
        payload: serde_json::Value,
        webhook: bool,
    ) -> QueuedJob {
        if webhook {
            self.send_webhook("workflow_job", "queued", Some(queued.job_id), payload)
                .await;
        }
        queued
    }

    pub(crate) async fn queue_job_in_run(
        &self,
        run_id: u64,
        labels: Vec<String>,
        webhook: bool,
    ) -> Result<QueuedJob, FakeError> {
        let (queued, payload) = {
            let mut st = self.lock();
            let now = now_millis();
            let run = st
                .runs
                .get_mut(&run_id)
                .ok_or_else(|| FakeError::Invalid(format!("no run {run_id}")))?;
            if run.status == "completed" {
                return Err(FakeError::Conflict(format!("run {run_id} is completed")));
            }
            run.updated_at = now;
            let repo = run.repo.clone();
            let job_id = st.id();
            st.add_queued_job(job_id, run_id, repo, labels, now)
        };
        Ok(self.announce_queued(queued, payload, webhook).await)
    }

    pub(crate) async fn runner_online(&self, name: &str) -> Result<u64, FakeError> {
        let (id, assign) = {
            let mut st = self.lock();
            let runner = st
                .runners
                .values_mut()
                .find(|r| r.name == name)
                .ok_or_else(|| FakeError::NoRunner(name.to_string()))?;
            runner.online = true;
            let runner = runner.clone();
            let assign = if st.auto_assign && !runner.busy {
                st.jobs
                    .values()
                    .filter(|j| j.status == "queued")
                    .find(|j| runner_serves(&runner, j))
                    .map(|j| j.id)
            } else {
                None
            };
            (runner.id, assign)
        };
        if let Some(job_id) = assign {
            self.start_job(job_id, name, true).await?;
        }
        Ok(id)
    }

    pub(crate) async fn start_job(
        &self,
        job_id: u64,
        runner_name: &str,
        webhook: bool,
    ) -> Result<(), FakeError> {
        let payload = {
            let mut st = self.lock();
            let runner = st
                .runners
                .values()
                .find(|r| r.name == runner_name)
                .cloned()
                .ok_or_else(|| FakeError::NoRunner(runner_name.to_string()))?;
            let job = st
                .jobs
                .get(&job_id)
                .cloned()
                .ok_or(FakeError::NoJob(job_id))?;
            if job.status != "queued" {
                return Err(FakeError::Conflict(format!(
                    "job {job_id} is {}",
                    job.status
                )));
            }
            if !runner.online || runner.busy {
                return Err(FakeError::Conflict(format!(
                    "runner {runner_name} is {}",
                    if runner.busy { "busy" } else { "offline" }
                )));
            }
            if !runner_serves(&runner, &job) {
                return Err(FakeError::Invalid(format!(
                    "runner {runner_name} cannot take job {job_id} (scope or labels)"
                )));
            }
            let now = now_millis();
            let job = st.jobs.get_mut(&job_id).expect("present");
            job.status = "in_progress".into();
            job.runner_id = Some(runner.id);
            job.runner_name = Some(runner.name.clone());
            job.started_at = Some(now);
            let job = job.clone();
            if let Some(r) = st.runners.get_mut(&runner.id) {
                r.busy = true;
                r.job_id = Some(job_id);
            }
            if let Some(run) = st.runs.get_mut(&job.run_id) {
                run.status = "in_progress".into();
                run.updated_at = now;
            }
            st.webhook_payload("in_progress", &job)
        };
        if webhook {
            self.send_webhook("workflow_job", "in_progress", Some(job_id), payload)
                .await;
        }
        Ok(())
    }

    pub(crate) async fn complete_job(
        &self,
        job_id: u64,
        conclusion: &str,
        webhook: bool,
    ) -> Result<(), FakeError> {
        let payload = {
            let mut st = self.lock();
            let now = now_millis();
            let job = st.jobs.get_mut(&job_id).ok_or(FakeError::NoJob(job_id))?;
            if job.status == "completed" {
                return Err(FakeError::Conflict(format!(
                    "job {job_id} is already completed"
                )));
            }
            job.status = "completed".into();
            job.conclusion = Some(conclusion.to_string());
            job.completed_at = Some(now);
            let job = job.clone();
            if let Some(rid) = job.runner_id
                && let Some(r) = st.runners.get_mut(&rid)
            {
                r.busy = false;
                r.job_id = None;
                if r.ephemeral {
                    st.runners.remove(&rid);
                    st.jit.retain(|_, v| *v != rid);
                }
            }
            let run_done = st
                .jobs
                .values()
                .filter(|j| j.run_id == job.run_id)
                .all(|j| j.status == "completed");
            if let Some(run) = st.runs.get_mut(&job.run_id) {
                run.updated_at = now;
                if run_done {
                    run.status = "completed".into();
                    run.conclusion = Some(conclusion.to_string());
                }
            }
            st.webhook_payload("completed", &job)
        };
        if webhook {
            self.send_webhook("workflow_job", "completed", Some(job_id), payload)
                .await;
        }
        Ok(())
    }

    /// Signs and POSTs one delivery to the configured URL (or drops it).
    pub(crate) async fn send_webhook(
        &self,
        event: &str,
        action: &str,
        job_id: Option<u64>,
        payload: serde_json::Value,
    ) -> DeliveryRecord {
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        let id = random_uuid();
        let (target, dropped) = {
            let mut st = self.lock();
            let dropped = st.drop_webhooks > 0;
            if dropped {
                st.drop_webhooks -= 1;
            }
            (st.webhook.clone(), dropped)
        };
        let mut record = DeliveryRecord {
            id,
            event: event.to_string(),
            action: action.to_string(),
            job_id,
            dropped,
            status: None,
            error: None,
            body,
        };
        match target {
            None => record.error = Some("no webhook target configured".into()),
            Some(_) if dropped => {}
            Some((url, secret)) => self.post(&url, &secret, &mut record).await,
        }
        self.lock().deliveries.push(record.clone());
        record
    }

    async fn post(&self, url: &str, secret: &str, record: &mut DeliveryRecord) {
        let signature = crate::webhook::sign(secret.as_bytes(), &record.body);
        let sent = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("user-agent", "GitHub-Hookshot/fake")
            .header("x-github-event", &record.event)
            .header("x-github-delivery", &record.id)
            .header("x-github-hook-id", "1")
            .header("x-hub-signature-256", signature)
            .body(record.body.clone())
            .send()
            .await;
        match sent {
            Ok(r) => record.status = Some(r.status().as_u16()),
            Err(e) => {
                record.error = Some(if e.is_timeout() {
                    "timed out".into()
                } else {
                    "connection failed".into()
                })
            }
        }
    }

    pub(crate) async fn redeliver(&self, delivery_id: &str) -> Result<DeliveryRecord, FakeError> {
        let (mut record, target) = {
            let st = self.lock();
            let rec = st
                .deliveries
                .iter()
                .find(|d| d.id == delivery_id)
                .cloned()
                .ok_or_else(|| FakeError::Invalid(format!("no delivery {delivery_id}")))?;
            (rec, st.webhook.clone())
        };
        record.dropped = false;
        record.status = None;
        record.error = None;
        match target {
            Some((url, secret)) => self.post(&url, &secret, &mut record).await,
            None => record.error = Some("no webhook target configured".into()),
        }
        self.lock().deliveries.push(record.clone());
        Ok(record)
    }
}

/// Whether a runner may take a job: its scope admits the repository and its
/// labels include every label of the job (case-insensitively).
fn runner_serves(runner: &FakeRunner, job: &FakeJob) -> bool {
    runner.scope.admits(&job.repo)
        && job
            .labels
            .iter()
            .all(|l| runner.labels.iter().any(|r| r.eq_ignore_ascii_case(l)))
}

fn random_uuid() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill(&mut b);
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
