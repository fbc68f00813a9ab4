//! The parts of GitHub's REST JSON that the client reads. Unknown fields are
//! ignored; the fake writes the full shapes (checked against GitHub's
//! OpenAPI description in the contract tests).

use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub(crate) struct Label {
    pub name: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Runner {
    pub id: u64,
    pub name: String,
    pub status: String,
    pub busy: bool,
    #[serde(default)]
    pub labels: Vec<Label>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunnersPage {
    pub runners: Vec<Runner>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Jit {
    pub runner: Runner,
    pub encoded_jit_config: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Run {
    pub id: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RunsPage {
    pub workflow_runs: Vec<Run>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Job {
    pub id: u64,
    pub run_id: u64,
    pub status: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub runner_name: Option<String>,
    pub conclusion: Option<String>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct JobsPage {
    pub jobs: Vec<Job>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Repo {
    pub id: u64,
    pub full_name: String,
    #[serde(default)]
    pub private: bool,
    #[serde(default)]
    pub archived: bool,
    #[serde(default)]
    pub disabled: bool,
    pub default_branch: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InstallationRepos {
    pub repositories: Vec<Repo>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Installation {
    pub id: u64,
}

#[derive(Deserialize)]
pub(crate) struct InstallationToken {
    pub token: String,
    pub expires_at: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    pub message: Option<String>,
}
