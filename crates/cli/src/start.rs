//! `runfleet start`: the client of a remote `runfleet serve`'s
//! `POST /v1/start` and `GET /v1/runs/{id}`.
//!
//! Authenticates with a GitHub Actions OIDC token (requested from
//! `ACTIONS_ID_TOKEN_REQUEST_URL` with the `--audience`, sent as
//! `Authorization: Bearer`), or with `--github-token-env NAME` by the
//! token-and-HMAC scheme: `X-GitHub-Token` and `X-GitHub-Signature:
//! sha512=<hex HMAC-SHA512 of the exact body, keyed by the token>`. Polls the
//! run until its instance exists (or, with `--wait`, until its runner is
//! online), then prints the same JSON and `GITHUB_OUTPUT` lines as `launch`.
//!
//! Never prints a token, an OIDC token or a signature; the server's error
//! answers are shown as their `error` field on one line.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use hmac::{Hmac, Mac};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Client, Url};
use runfleet_core::config::parse_duration;
use serde::Deserialize;

use crate::progress::{Progress, RunOutput};

/// The command line of `runfleet start`.
pub struct StartArgs {
    pub url: String,
    pub repo: String,
    pub pool: Option<String>,
    pub name: Option<String>,
    pub wait: bool,
    pub timeout: Option<String>,
    pub audience: String,
    pub github_token_env: Option<String>,
}

/// Without `--timeout`: the default `boot_timeout` of a server.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// How often the run is looked up.
const POLL: Duration = Duration::from_secs(2);

/// `POST /v1/start`'s answer.
#[derive(Debug, Deserialize)]
struct Accepted {
    id: String,
    #[serde(default)]
    labels: Vec<String>,
}

/// `GET /v1/runs/{id}`'s answer.
#[derive(Debug, Deserialize)]
struct RunView {
    state: String,
    #[serde(default)]
    labels: Vec<String>,
    instance_id: Option<String>,
    runner_name: Option<String>,
    reason: Option<String>,
}

/// How the request proves who it is for.
enum Auth {
    /// A GitHub Actions OIDC token.
    Bearer(String),
    /// A GitHub token; requests carry it and an HMAC of their body.
    Hmac(String),
}

impl Auth {
    fn headers(&self, body: &[u8]) -> Result<HeaderMap> {
        let mut h = HeaderMap::new();
        match self {
            Auth::Bearer(t) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {t}"))
                    .map_err(|_| anyhow!("the OIDC token is not a valid header value"))?;
                v.set_sensitive(true);
                h.insert(AUTHORIZATION, v);
            }
            Auth::Hmac(t) => {
                let mut v = HeaderValue::from_str(t)
                    .map_err(|_| anyhow!("the GitHub token is not a valid header value"))?;
                v.set_sensitive(true);
                h.insert("x-github-token", v);
                let mut s = HeaderValue::from_str(&signature(t, body))?;
                s.set_sensitive(true);
                h.insert("x-github-signature", s);
            }
        }
        Ok(h)
    }
}

/// `sha512=<hex HMAC-SHA512 of body keyed by token>`.
pub fn signature(token: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha512>::new_from_slice(token.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha512={}", hex::encode(mac.finalize().into_bytes()))
}

/// One line from an error answer: its `error` field, or its start.
fn error_line(status: reqwest::StatusCode, body: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| {
            let t: String = body.chars().take(200).collect();
            if t.trim().is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no reason given")
                    .to_string()
            } else {
                t
            }
        });
    let one: String = msg.split_whitespace().collect::<Vec<_>>().join(" ");
    format!("HTTP {}: {one}", status.as_u16())
}

fn base_url(url: &str) -> Result<Url> {
    let u = Url::parse(url).map_err(|e| anyhow!("--url {url:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        bail!("--url {url:?}: must be an http:// or https:// address");
    }
    Ok(u)
}

fn endpoint(base: &Url, path: &str) -> String {
    format!("{}{path}", base.as_str().trim_end_matches('/'))
}

/// The OIDC token of this workflow run, for `audience`.
async fn oidc_token(http: &Client, audience: &str) -> Result<String> {
    let (Ok(url), Ok(token)) = (
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL"),
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
    ) else {
        bail!(
            "no credentials: inside GitHub Actions give the job `permissions: id-token: write` \
             (ACTIONS_ID_TOKEN_REQUEST_URL is not set), or pass --github-token-env NAME"
        );
    };
    let mut u = Url::parse(&url).context("ACTIONS_ID_TOKEN_REQUEST_URL is not a URL")?;
    u.query_pairs_mut().append_pair("audience", audience);
    let mut auth = HeaderValue::from_str(&format!("bearer {token}"))
        .map_err(|_| anyhow!("ACTIONS_ID_TOKEN_REQUEST_TOKEN is not a valid header value"))?;
    auth.set_sensitive(true);
    let r = http
        .get(u)
        .header(AUTHORIZATION, auth)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot reach GitHub's OIDC token endpoint: {}",
                e.without_url()
            )
        })?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "GitHub refused an OIDC token ({})",
            error_line(status, &body)
        );
    }
    #[derive(Deserialize)]
    struct Answer {
        value: String,
    }
    let a: Answer = serde_json::from_str(&body)
        .map_err(|_| anyhow!("GitHub's OIDC token endpoint answered without a token"))?;
    Ok(a.value)
}

fn body(args: &StartArgs, now_secs: u64) -> Vec<u8> {
    let mut b = serde_json::Map::new();
    b.insert("repo".into(), args.repo.clone().into());
    if let Some(p) = &args.pool {
        b.insert("pool".into(), p.clone().into());
    }
    if let Some(n) = &args.name {
        b.insert("name".into(), n.clone().into());
    }
    b.insert("time".into(), now_secs.into());
    serde_json::to_vec(&serde_json::Value::Object(b)).expect("a JSON object serialises")
}

/// `runfleet start`.
pub fn run(args: StartArgs) -> Result<ExitCode> {
    let base = base_url(&args.url)?;
    let shape_ok = args
        .repo
        .split_once('/')
        .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'));
    if !shape_ok {
        bail!("--repo {:?} is not OWNER/NAME", args.repo);
    }
    let timeout = match &args.timeout {
        Some(t) => parse_duration(t).map_err(|why| anyhow!("--timeout {t:?}: {why}"))?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() {
        bail!("--timeout must be more than zero");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(start(args, base, timeout))
}

async fn start(args: StartArgs, base: Url, timeout: Duration) -> Result<ExitCode> {
    let deadline = tokio::time::Instant::now() + timeout;
    let http = Client::builder()
        .timeout(Duration::from_secs(30))
        .user_agent(concat!("runfleet/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let auth = match &args.github_token_env {
        Some(name) => match std::env::var(name) {
            Ok(t) if !t.is_empty() => Auth::Hmac(t),
            _ => bail!("--github-token-env {name}: the environment variable is not set or empty"),
        },
        None => Auth::Bearer(oidc_token(&http, &args.audience).await?),
    };
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body = body(&args, now_secs);
    let url = endpoint(&base, "/v1/start");
    let r = http
        .post(&url)
        .headers(auth.headers(&body)?)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| anyhow!("POST {url}: {}", e.without_url()))?;
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("POST /v1/start refused: {}", error_line(status, &text));
    }
    let accepted: Accepted = serde_json::from_str(&text)
        .map_err(|e| anyhow!("POST /v1/start answered {status} without a run: {e}"))?;
    if accepted.id.is_empty()
        || !accepted
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("POST /v1/start answered an unusable run id");
    }
    let mut progress = Progress::new();
    progress.set("pending", &format!("run {}", accepted.id));
    let run_url = endpoint(&base, &format!("/v1/runs/{}", accepted.id));
    loop {
        let got = http.get(&run_url).headers(auth.headers(b"")?).send().await;
        match got {
            Err(e) => progress.set("unreachable", &e.without_url().to_string()),
            Ok(r) => {
                let status = r.status();
                let text = r.text().await.unwrap_or_default();
                if !status.is_success() {
                    progress.finish();
                    bail!(
                        "GET /v1/runs/{} refused: {}",
                        accepted.id,
                        error_line(status, &text)
                    );
                }
                let run: RunView = serde_json::from_str(&text).map_err(|e| {
                    anyhow!(
                        "GET /v1/runs/{} answered an unreadable run: {e}",
                        accepted.id
                    )
                })?;
                let detail = match (&run.instance_id, &run.runner_name) {
                    (_, Some(r)) => format!("runner {r}"),
                    (Some(i), None) => format!("instance {i}"),
                    _ => format!("run {}", accepted.id),
                };
                progress.set(&run.state, &detail);
                let ready = match run.state.as_str() {
                    "failed" => {
                        progress.finish();
                        bail!(
                            "run {} failed: {}",
                            accepted.id,
                            run.reason.as_deref().unwrap_or("no reason given")
                        );
                    }
                    "online" | "busy" | "done" => true,
                    _ => !args.wait && run.instance_id.is_some(),
                };
                if ready {
                    progress.finish();
                    RunOutput {
                        labels: if run.labels.is_empty() {
                            accepted.labels
                        } else {
                            run.labels
                        },
                        instance_id: run.instance_id,
                        runner_name: run.runner_name,
                    }
                    .emit()?;
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            progress.finish();
            bail!(
                "run {} not {} within the timeout (the server stops it after its boot_timeout)",
                accepted.id,
                if args.wait { "online" } else { "launched" }
            );
        }
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_lines_are_one_line_and_prefer_the_error_field() {
        let s = reqwest::StatusCode::UNAUTHORIZED;
        assert_eq!(
            error_line(s, r#"{"error":"bad\nsignature"}"#),
            "HTTP 401: bad signature"
        );
        assert_eq!(error_line(s, ""), "HTTP 401: Unauthorized");
        assert_eq!(error_line(s, "<html>\n nope"), "HTTP 401: <html> nope");
    }

    #[test]
    fn signature_is_hex_hmac_sha512() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha512=164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
        );
    }
}
