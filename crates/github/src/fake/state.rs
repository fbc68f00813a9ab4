//! The fake's in-memory world and the JSON shapes it answers with (GitHub's
//! own shapes, checked against the OpenAPI description by the contract
//! tests).

use std::collections::{BTreeMap, HashMap};

use runfleet_core::model::{Millis, Scope};
use serde::Serialize;
use serde_json::{Value, json};

use crate::timestamp::format_millis;

/// How an owner is registered: organisations have `/orgs/...` endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OwnerKind {
    Organization,
    User,
}

#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub id: u64,
    pub login: String,
    pub kind: OwnerKind,
}

#[derive(Debug, Clone)]
pub(crate) struct Repo {
    pub id: u64,
    pub owner: String,
    pub name: String,
    pub private: bool,
    pub archived: bool,
    pub created_at: Millis,
}

impl Repo {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// A self-hosted runner the fake knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FakeRunner {
    pub id: u64,
    pub name: String,
    pub scope: Scope,
    pub online: bool,
    pub busy: bool,
    pub ephemeral: bool,
    pub labels: Vec<String>,
    pub runner_group_id: u64,
    /// The job it is running.
    pub job_id: Option<u64>,
}

/// A workflow job the fake knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FakeJob {
    pub id: u64,
    pub run_id: u64,
    pub repo: String,
    pub labels: Vec<String>,
    /// `queued`, `in_progress` or `completed`.
    pub status: String,
    pub conclusion: Option<String>,
    pub runner_id: Option<u64>,
    pub runner_name: Option<String>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub completed_at: Option<Millis>,
    /// Times `rerun` was asked for it.
    pub reruns: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub id: u64,
    pub repo: String,
    pub run_number: u64,
    pub status: String,
    pub conclusion: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone)]
pub(crate) struct Installation {
    pub id: u64,
    pub account: String,
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query as sent.
    pub path: String,
    /// `METHOD /template` (e.g. `GET /repos/{owner}/{repo}/actions/runners`).
    pub endpoint: String,
    pub status: u16,
    /// Wall-clock time it arrived (ms since epoch).
    pub at: Millis,
    /// Which credential it carried: `pat`, `app`, `installation:<id>`, or `none`.
    pub auth: String,
    /// Whether it carried `If-None-Match`.
    pub conditional: bool,
}

/// One webhook delivery the fake made (or dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryRecord {
    pub id: String,
    pub event: String,
    pub action: String,
    pub job_id: Option<u64>,
    /// Dropped by fault injection: never sent.
    pub dropped: bool,
    /// HTTP status of the receiver, if it answered.
    pub status: Option<u16>,
    /// Transport error, if it did not.
    pub error: Option<String>,
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// A failure to inject.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fault {
    /// Answer with this status (5xx) and GitHub's error body.
    Status { status: u16 },
    /// A secondary rate limit: 403 or 429, `Retry-After` when given.
    SecondaryRateLimit {
        status: u16,
        retry_after: Option<u64>,
    },
    /// The primary limit exhausted: 403 with `x-ratelimit-remaining: 0`
    /// and a reset this many seconds ahead.
    PrimaryRateLimit { reset_in: u64 },
    /// Answer normally, this many milliseconds late.
    Delay { ms: u64 },
}

#[derive(Debug, Clone)]
pub(crate) struct FaultRule {
    /// `METHOD /template` or `*`.
    pub endpoint: String,
    pub fault: Fault,
    pub remaining: u32,
}

pub(crate) struct State {
    pub base_url: String,
    pub pat: Option<String>,
    pub app_id: Option<u64>,
    pub token_ttl_ms: u64,
    /// The primary rate limit reported in `x-ratelimit-limit`; see
    /// [`super::FakeGitHub::set_rate_limit`].
    pub rate_limit: u64,
    pub tokens: HashMap<String, (u64, Millis)>,
    pub tokens_issued: u64,
    pub owners: BTreeMap<String, Owner>,
    pub repos: BTreeMap<String, Repo>,
    pub installations: BTreeMap<u64, Installation>,
    pub runners: BTreeMap<u64, FakeRunner>,
    /// encoded JIT config -> runner id
    pub jit: HashMap<String, u64>,
    pub runs: BTreeMap<u64, Run>,
    pub jobs: BTreeMap<u64, FakeJob>,
    pub next_id: u64,
    pub faults: Vec<FaultRule>,
    pub requests: Vec<SeenRequest>,
    pub webhook: Option<(String, String)>,
    pub drop_webhooks: u32,
    pub deliveries: Vec<DeliveryRecord>,
    pub auto_assign: bool,
}

impl State {
    pub fn new(base_url: String, pat: Option<String>, app_id: Option<u64>) -> Self {
        State {
            base_url,
            pat,
            app_id,
            token_ttl_ms: 3_600_000,
            rate_limit: 5000,
            tokens: HashMap::new(),
            tokens_issued: 0,
            owners: BTreeMap::new(),
            repos: BTreeMap::new(),
            installations: BTreeMap::new(),
            runners: BTreeMap::new(),
            jit: HashMap::new(),
            runs: BTreeMap::new(),
            jobs: BTreeMap::new(),
            next_id: 1000,
            faults: Vec::new(),
            requests: Vec::new(),
            webhook: None,
            drop_webhooks: 0,
            deliveries: Vec::new(),
            auto_assign: false,
        }
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn owner(&mut self, login: &str, kind: OwnerKind) -> Owner {
        let key = login.to_ascii_lowercase();
        if let Some(o) = self.owners.get(&key) {
            return o.clone();
        }
        let id = self.id();
        let o = Owner {
            id,
            login: login.to_string(),
            kind,
        };
        self.owners.insert(key, o.clone());
        o
    }

    pub fn find_owner(&self, login: &str) -> Option<&Owner> {
        self.owners.get(&login.to_ascii_lowercase())
    }

    /// The repository, created (with an organisation owner) if new.
    pub fn repo(&mut self, full_name: &str) -> Repo {
        let key = full_name.to_ascii_lowercase();
        if let Some(r) = self.repos.get(&key) {
            return r.clone();
        }
        let (owner, name) = full_name.split_once('/').unwrap_or((full_name, full_name));
        let owner = self.owner(owner, OwnerKind::Organization).login;
        let id = self.id();
        let r = Repo {
            id,
            owner,
            name: name.to_string(),
            private: true,
            archived: false,
            created_at: crate::timestamp::now_millis(),
        };
        self.repos.insert(key, r.clone());
        r
    }

    pub fn find_repo(&self, owner: &str, name: &str) -> Option<&Repo> {
        self.repos
            .get(&format!("{owner}/{name}").to_ascii_lowercase())
    }

    pub fn installation_of(&self, owner: &str) -> Option<&Installation> {
        self.installations
            .values()
            .find(|i| i.account.eq_ignore_ascii_case(owner))
    }

    // ------------------------------------------------------------- shapes

    pub fn user_json(&self, login: &str) -> Value {
        let base = &self.base_url;
        let (id, kind) = self
            .find_owner(login)
            .map(|o| (o.id, o.kind))
            .unwrap_or((1, OwnerKind::User));
        let kind = match kind {
            OwnerKind::Organization => "Organization",
            OwnerKind::User => "User",
        };
        json!({
            "login": login,
            "id": id,
            "node_id": format!("MDQ6VXNlcj{id}"),
            "avatar_url": format!("https://avatars.example.invalid/u/{id}"),
            "gravatar_id": "",
            "url": format!("{base}/users/{login}"),
            "html_url": format!("https://github.example.invalid/{login}"),
            "followers_url": format!("{base}/users/{login}/followers"),
            "following_url": format!("{base}/users/{login}/following{{/other_user}}"),
            "gists_url": format!("{base}/users/{login}/gists{{/gist_id}}"),
            "starred_url": format!("{base}/users/{login}/starred{{/owner}}{{/repo}}"),
            "subscriptions_url": format!("{base}/users/{login}/subscriptions"),
            "organizations_url": format!("{base}/users/{login}/orgs"),
            "repos_url": format!("{base}/users/{login}/repos"),
            "events_url": format!("{base}/users/{login}/events{{/privacy}}"),
            "received_events_url": format!("{base}/users/{login}/received_events"),
            "type": kind,
            "user_view_type": "public",
            "site_admin": false
        })
    }

    /// A repository with every field of GitHub's `full-repository` (a
    /// superset of `repository` and `minimal-repository`).
    pub fn repo_json(&self, r: &Repo) -> Value {
        let base = &self.base_url;
        let full = r.full_name();
        let u = format!("{base}/repos/{full}");
        let created = format_millis(r.created_at);
        json!({
            "id": r.id,
            "node_id": format!("R_kgDO{}", r.id),
            "name": r.name,
            "full_name": full,
            "owner": self.user_json(&r.owner),
            "private": r.private,
            "visibility": if r.private { "private" } else { "public" },
            "html_url": format!("https://github.example.invalid/{full}"),
            "description": null,
            "fork": false,
            "url": u,
            "archive_url": format!("{u}/{{archive_format}}{{/ref}}"),
            "assignees_url": format!("{u}/assignees{{/user}}"),
            "blobs_url": format!("{u}/git/blobs{{/sha}}"),
            "branches_url": format!("{u}/branches{{/branch}}"),
            "collaborators_url": format!("{u}/collaborators{{/collaborator}}"),
            "comments_url": format!("{u}/comments{{/number}}"),
            "commits_url": format!("{u}/commits{{/sha}}"),
            "compare_url": format!("{u}/compare/{{base}}...{{head}}"),
            "contents_url": format!("{u}/contents/{{+path}}"),
            "contributors_url": format!("{u}/contributors"),
            "deployments_url": format!("{u}/deployments"),
            "downloads_url": format!("{u}/downloads"),
            "events_url": format!("{u}/events"),
            "forks_url": format!("{u}/forks"),
            "git_commits_url": format!("{u}/git/commits{{/sha}}"),
            "git_refs_url": format!("{u}/git/refs{{/sha}}"),
            "git_tags_url": format!("{u}/git/tags{{/sha}}"),
            "git_url": format!("git://github.example.invalid/{full}.git"),
            "hooks_url": format!("{u}/hooks"),
            "issue_comment_url": format!("{u}/issues/comments{{/number}}"),
            "issue_events_url": format!("{u}/issues/events{{/number}}"),
            "issues_url": format!("{u}/issues{{/number}}"),
            "keys_url": format!("{u}/keys{{/key_id}}"),
            "labels_url": format!("{u}/labels{{/name}}"),
            "languages_url": format!("{u}/languages"),
            "merges_url": format!("{u}/merges"),
            "milestones_url": format!("{u}/milestones{{/number}}"),
            "notifications_url": format!("{u}/notifications{{?since,all,participating}}"),
            "pulls_url": format!("{u}/pulls{{/number}}"),
            "releases_url": format!("{u}/releases{{/id}}"),
            "ssh_url": format!("git@github.example.invalid:{full}.git"),
            "stargazers_url": format!("{u}/stargazers"),
            "statuses_url": format!("{u}/statuses/{{sha}}"),
            "subscribers_url": format!("{u}/subscribers"),
            "subscription_url": format!("{u}/subscription"),
            "tags_url": format!("{u}/tags"),
            "teams_url": format!("{u}/teams"),
            "trees_url": format!("{u}/git/trees{{/sha}}"),
            "clone_url": format!("https://github.example.invalid/{full}.git"),
            "mirror_url": null,
            "svn_url": format!("https://github.example.invalid/{full}"),
            "homepage": null,
            "language": null,
            "forks_count": 0,
            "forks": 0,
            "stargazers_count": 0,
            "watchers_count": 0,
            "watchers": 0,
            "size": 0,
            "default_branch": "main",
            "open_issues_count": 0,
            "open_issues": 0,
            "is_template": false,
            "topics": [],
            "has_issues": true,
            "has_projects": false,
            "has_wiki": false,
            "has_pages": false,
            "has_downloads": false,
            "has_discussions": false,
            "archived": r.archived,
            "disabled": false,
            "pushed_at": created,
            "created_at": created,
            "updated_at": created,
            "permissions": { "admin": true, "maintain": true, "push": true, "triage": true, "pull": true },
            "allow_forking": false,
            "web_commit_signoff_required": false,
            "license": null,
            "network_count": 0,
            "subscribers_count": 0
        })
    }

    pub fn runner_json(&self, r: &FakeRunner) -> Value {
        let labels: Vec<Value> = r
            .labels
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let read_only = matches!(
                    l.to_ascii_lowercase().as_str(),
                    "self-hosted" | "linux" | "windows" | "macos" | "x64" | "arm64"
                );
                json!({
                    "id": i as u64 + 1,
                    "name": l,
                    "type": if read_only { "read-only" } else { "custom" }
                })
            })
            .collect();
        json!({
            "id": r.id,
            "runner_group_id": r.runner_group_id,
            "name": r.name,
            "os": "linux",
            "status": if r.online { "online" } else { "offline" },
            "busy": r.busy,
            "ephemeral": r.ephemeral,
            "labels": labels
        })
    }

    pub fn run_json(&self, run: &Run) -> Value {
        let base = &self.base_url;
        let (owner, name) = run.repo.split_once('/').unwrap_or(("", ""));
        let repo = self.find_repo(owner, name).cloned();
        let repo_json = repo
            .as_ref()
            .map(|r| self.repo_json(r))
            .unwrap_or(Value::Null);
        let u = format!("{base}/repos/{}/actions/runs/{}", run.repo, run.id);
        json!({
            "id": run.id,
            "name": "CI",
            "node_id": format!("WFR_kwLO{}", run.id),
            "head_branch": "main",
            "head_sha": format!("{:040x}", run.id),
            "path": ".github/workflows/ci.yml",
            "display_title": "CI",
            "run_number": run.run_number,
            "run_attempt": 1,
            "event": "push",
            "status": run.status,
            "conclusion": run.conclusion,
            "workflow_id": 1,
            "check_suite_id": run.id,
            "check_suite_node_id": format!("CS_kwDO{}", run.id),
            "url": u,
            "html_url": format!("https://github.example.invalid/{}/actions/runs/{}", run.repo, run.id),
            "pull_requests": [],
            "created_at": format_millis(run.created_at),
            "updated_at": format_millis(run.updated_at),
            "run_started_at": format_millis(run.created_at),
            "jobs_url": format!("{u}/jobs"),
            "logs_url": format!("{u}/logs"),
            "check_suite_url": format!("{base}/repos/{}/check-suites/{}", run.repo, run.id),
            "artifacts_url": format!("{u}/artifacts"),
            "cancel_url": format!("{u}/cancel"),
            "rerun_url": format!("{u}/rerun"),
            "previous_attempt_url": null,
            "workflow_url": format!("{base}/repos/{}/actions/workflows/1", run.repo),
            "head_commit": null,
            "repository": repo_json,
            "head_repository": repo_json
        })
    }

    pub fn job_json(&self, j: &FakeJob) -> Value {
        let base = &self.base_url;
        let started = j.started_at.unwrap_or(j.created_at);
        json!({
            "id": j.id,
            "run_id": j.run_id,
            "run_url": format!("{base}/repos/{}/actions/runs/{}", j.repo, j.run_id),
            "run_attempt": 1,
            "node_id": format!("CR_kwDO{}", j.id),
            "head_sha": format!("{:040x}", j.run_id),
            "head_branch": "main",
            "workflow_name": "CI",
            "url": format!("{base}/repos/{}/actions/jobs/{}", j.repo, j.id),
            "html_url": format!("https://github.example.invalid/{}/actions/runs/{}/job/{}", j.repo, j.run_id, j.id),
            "status": j.status,
            "conclusion": j.conclusion,
            "created_at": format_millis(j.created_at),
            "started_at": format_millis(started),
            "completed_at": j.completed_at.map(format_millis),
            "name": format!("job-{}", j.id),
            "steps": [],
            "check_run_url": format!("{base}/repos/{}/check-runs/{}", j.repo, j.id),
            "labels": j.labels,
            "runner_id": j.runner_id,
            "runner_name": j.runner_name,
            "runner_group_id": j.runner_id.map(|_| 1),
            "runner_group_name": j.runner_id.map(|_| "Default")
        })
    }

    pub fn installation_json(&self, i: &Installation) -> Value {
        let base = &self.base_url;
        let target_type = match self.find_owner(&i.account).map(|o| o.kind) {
            Some(OwnerKind::User) => "User",
            _ => "Organization",
        };
        let target_id = self.find_owner(&i.account).map(|o| o.id).unwrap_or(1);
        let now = format_millis(crate::timestamp::now_millis());
        json!({
            "id": i.id,
            "account": self.user_json(&i.account),
            "repository_selection": "all",
            "access_tokens_url": format!("{base}/app/installations/{}/access_tokens", i.id),
            "repositories_url": format!("{base}/installation/repositories"),
            "html_url": format!("https://github.example.invalid/settings/installations/{}", i.id),
            "app_id": self.app_id.unwrap_or(0),
            "app_slug": "runfleet",
            "target_id": target_id,
            "target_type": target_type,
            "permissions": { "actions": "write", "administration": "write", "metadata": "read" },
            "events": ["workflow_job"],
            "single_file_name": null,
            "has_multiple_single_files": false,
            "single_file_paths": [],
            "created_at": now,
            "updated_at": now,
            "suspended_by": null,
            "suspended_at": null
        })
    }

    /// The `workflow_job` webhook payload for a job.
    /// Records a new queued job of `run_id` and returns it with its
    /// `queued` webhook payload.
    pub fn add_queued_job(
        &mut self,
        job_id: u64,
        run_id: u64,
        repo: String,
        labels: Vec<String>,
        now: Millis,
    ) -> (super::QueuedJob, Value) {
        let job = FakeJob {
            id: job_id,
            run_id,
            repo,
            labels,
            status: "queued".into(),
            conclusion: None,
            runner_id: None,
            runner_name: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            reruns: 0,
        };
        let payload = self.webhook_payload("queued", &job);
        self.jobs.insert(job_id, job);
        (super::QueuedJob { job_id, run_id }, payload)
    }

    pub fn webhook_payload(&self, action: &str, j: &FakeJob) -> Value {
        let (owner, name) = j.repo.split_once('/').unwrap_or(("", ""));
        let repo = self
            .find_repo(owner, name)
            .map(|r| self.repo_json(r))
            .unwrap_or(Value::Null);
        let mut payload = json!({
            "action": action,
            "workflow_job": self.job_json(j),
            "repository": repo,
            "sender": self.user_json(owner)
        });
        if let Some(i) = self.installation_of(owner) {
            payload["installation"] = json!({ "id": i.id, "node_id": format!("MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u{}", i.id) });
        }
        payload
    }
}

/// GitHub's error body (`basic-error`).
pub(crate) fn error_json(message: &str, status: u16) -> Value {
    json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest",
        "status": status.to_string()
    })
}

/// GitHub's `validation-error-simple`.
pub(crate) fn validation_json(message: &str, errors: &[&str]) -> Value {
    json!({
        "message": message,
        "documentation_url": "https://docs.github.com/rest",
        "errors": errors
    })
}
