//! The REST client against the fake GitHub on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::{app_config, app_keypair, recording_options, rsa_keypair};
use runfleet_core::config::Secret;
use runfleet_core::model::{ErrorKind, JobStatus, Scope};
use runfleet_engine::ports::{GitHub, JitRequest};
use runfleet_github::client::{ClientOptions, GitHubClient};
use runfleet_github::fake::{FakeGitHub, FakeOptions, Fault};

const RUNNERS: &str = "GET /repos/{owner}/{repo}/actions/runners";
const JIT: &str = "POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig";

fn jit_request(repo: &str, name: &str) -> JitRequest {
    JitRequest {
        scope: Scope::Repo(repo.into()),
        name: name.into(),
        labels: vec!["self-hosted".into(), "linux".into(), "x64".into()],
        runner_group_id: 1,
    }
}

async fn pat_fake() -> (
    FakeGitHub,
    GitHubClient,
    std::sync::Arc<std::sync::Mutex<Vec<Duration>>>,
) {
    let fake = FakeGitHub::start().await;
    fake.add_repo("acme/app");
    let (opts, waits) = recording_options();
    let client = GitHubClient::with_options(&fake.pat_config(), opts).unwrap();
    (fake, client, waits)
}

#[tokio::test]
async fn pat_jitconfig_creates_an_offline_runner_that_its_config_brings_online() {
    let (fake, client, _) = pat_fake().await;
    let jit = client
        .generate_jitconfig(&jit_request("acme/app", "runfleet-linux-i-0abc"))
        .await
        .unwrap();
    let runner = fake
        .runner_of_jit(jit.encoded.expose())
        .expect("fake knows the JIT config");
    assert_eq!(runner.id, jit.runner_id);
    assert_eq!(runner.name, "runfleet-linux-i-0abc");
    assert!(!runner.online, "a JIT runner starts offline");
    assert!(runner.ephemeral);

    let listed = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, jit.runner_id);
    assert!(!listed[0].online && !listed[0].busy);
    assert!(listed[0].labels.iter().any(|l| l == "x64"));
    assert_eq!(listed[0].scope, Scope::Repo("acme/app".into()));

    fake.connect_jit(jit.encoded.expose()).await.unwrap();
    let one = client
        .get_runner(&Scope::Repo("acme/app".into()), jit.runner_id)
        .await
        .unwrap();
    assert!(one.online);

    // The same name again is a conflict: Invalid, not retried.
    let again = client
        .generate_jitconfig(&jit_request("acme/app", "runfleet-linux-i-0abc"))
        .await
        .unwrap_err();
    assert_eq!(again.kind, ErrorKind::Invalid);
    assert!(again.message.contains("409"), "{}", again.message);
    assert_eq!(fake.count(JIT), 2);
}

#[tokio::test]
async fn org_scope_jitconfig_and_runners() {
    let (fake, client, _) = pat_fake().await;
    fake.add_org("acme");
    let req = JitRequest {
        scope: Scope::Org("acme".into()),
        name: "runfleet-org-i-1".into(),
        labels: vec!["big".into()],
        runner_group_id: 7,
    };
    let jit = client.generate_jitconfig(&req).await.unwrap();
    let runners = client
        .list_runners(&Scope::Org("acme".into()))
        .await
        .unwrap();
    assert_eq!(
        runners.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![jit.runner_id]
    );
    assert_eq!(
        fake.runner_by_name("runfleet-org-i-1")
            .unwrap()
            .runner_group_id,
        7
    );
    // Repo-level listing does not see org runners.
    assert!(
        client
            .list_runners(&Scope::Repo("acme/app".into()))
            .await
            .unwrap()
            .is_empty()
    );
    client
        .delete_runner(&Scope::Org("acme".into()), jit.runner_id)
        .await
        .unwrap();
    assert!(fake.runners().is_empty());
    assert_eq!(
        fake.count("POST /orgs/{org}/actions/runners/generate-jitconfig"),
        1
    );
}

#[tokio::test]
async fn pagination_over_250_runners() {
    let (fake, client, _) = pat_fake().await;
    for i in 0..250 {
        fake.register_runner(
            Scope::Repo("acme/app".into()),
            &format!("r-{i}"),
            &["self-hosted"],
            i % 2 == 0,
        );
    }
    let runners = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(runners.len(), 250);
    let mut ids: Vec<u64> = runners.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 250, "no runner twice");
    assert_eq!(runners.iter().filter(|r| r.online).count(), 125);
    let pages: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.endpoint == RUNNERS)
        .map(|r| r.path)
        .collect();
    assert_eq!(pages.len(), 3, "{pages:?}");
    assert!(pages[0].contains("per_page=100"));
    assert!(pages[2].contains("page=3"));
    assert_eq!(client.request_counts(), vec![(RUNNERS.to_string(), 3)]);
    // The same counts through the engine's port.
    let port: &dyn GitHub = &client;
    assert_eq!(port.request_counts(), vec![(RUNNERS.to_string(), 3)]);
}

#[tokio::test]
async fn secondary_rate_limit_waits_exactly_retry_after_then_retries() {
    let (fake, client, waits) = pat_fake().await;
    fake.inject(
        RUNNERS,
        Fault::SecondaryRateLimit {
            status: 403,
            retry_after: Some(1),
        },
        1,
    );
    let runners = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert!(runners.is_empty());
    assert_eq!(*waits.lock().unwrap(), vec![Duration::from_secs(1)]);
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![403, 200]);
}

#[tokio::test]
async fn secondary_rate_limit_really_waits_on_the_clock() {
    let fake = FakeGitHub::start().await;
    fake.add_repo("acme/app");
    let client = GitHubClient::new(&fake.pat_config()).unwrap();
    fake.inject(
        RUNNERS,
        Fault::SecondaryRateLimit {
            status: 429,
            retry_after: Some(1),
        },
        1,
    );
    let t0 = Instant::now();
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert!(t0.elapsed() >= Duration::from_secs(1));
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs[1].at - reqs[0].at >= 1000,
        "retry came {} ms later",
        reqs[1].at - reqs[0].at
    );
}

#[tokio::test]
async fn secondary_rate_limit_on_jitconfig_is_retried_once_the_wait_is_over() {
    // A rate-limited request was refused, not executed: repeating the POST is safe.
    let (fake, client, waits) = pat_fake().await;
    fake.inject(
        JIT,
        Fault::SecondaryRateLimit {
            status: 429,
            retry_after: Some(1),
        },
        1,
    );
    client
        .generate_jitconfig(&jit_request("acme/app", "r1"))
        .await
        .unwrap();
    assert_eq!(*waits.lock().unwrap(), vec![Duration::from_secs(1)]);
    assert_eq!(fake.count(JIT), 2);
    assert_eq!(fake.runners().len(), 1);
}

#[tokio::test]
async fn long_retry_after_is_returned_not_slept() {
    let (fake, client, waits) = pat_fake().await;
    fake.inject(
        RUNNERS,
        Fault::SecondaryRateLimit {
            status: 403,
            retry_after: Some(120),
        },
        1,
    );
    let e = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert_eq!(e.retry_after_ms, Some(120_000));
    assert!(waits.lock().unwrap().is_empty());
    assert_eq!(fake.count(RUNNERS), 1);
}

#[tokio::test]
async fn exhausted_primary_limit_fails_fast_until_reset() {
    let (fake, client, _) = pat_fake().await;
    fake.inject(RUNNERS, Fault::PrimaryRateLimit { reset_in: 3600 }, 1);
    let e = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert!(e.retry_after_ms.unwrap() > 3_500_000);
    let rl = client.rate_limit().unwrap();
    assert_eq!(rl.remaining, 0);
    // The next call does not reach GitHub at all.
    let e2 = client.get_job("acme/app", 1).await.unwrap_err();
    assert_eq!(e2.kind, ErrorKind::Throttled);
    assert_eq!(fake.requests().len(), 1);
}

#[tokio::test]
async fn remaining_counts_down_from_the_fakes_rate_limit() {
    let (fake, client, _) = pat_fake().await;
    let scope = Scope::Repo("acme/app".into());
    client.list_runners(&scope).await.unwrap();
    assert_eq!(client.rate_limit().unwrap().remaining, 4999);
    // One request already counted: remaining 1, then 0.
    fake.set_rate_limit(3);
    client.list_runners(&scope).await.unwrap();
    assert_eq!(client.rate_limit().unwrap().remaining, 1);
    client.list_runners(&scope).await.unwrap();
    assert_eq!(client.rate_limit().unwrap().remaining, 0);
    let e = client.list_runners(&scope).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Throttled);
    assert_eq!(fake.requests().len(), 3, "nothing sent once exhausted");
    // A higher limit: a fresh client goes on.
    fake.set_rate_limit(1_000_000);
    let again = GitHubClient::new(&fake.pat_config()).unwrap();
    again.list_runners(&scope).await.unwrap();
    assert_eq!(again.rate_limit().unwrap().remaining, 999_996);
}

#[tokio::test]
async fn get_is_retried_after_5xx_with_backoff() {
    let (fake, client, waits) = pat_fake().await;
    fake.inject(RUNNERS, Fault::Status { status: 502 }, 2);
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(fake.count(RUNNERS), 3);
    let waits = waits.lock().unwrap().clone();
    assert_eq!(waits.len(), 2);
    assert!(
        waits.iter().all(|w| *w <= Duration::from_millis(5)),
        "{waits:?}"
    );
}

#[tokio::test]
async fn get_gives_up_after_max_attempts() {
    let (fake, client, _) = pat_fake().await;
    fake.inject(RUNNERS, Fault::Status { status: 503 }, 10);
    let e = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert_eq!(
        fake.count(RUNNERS),
        ClientOptions::default().max_attempts as usize
    );
    assert!(
        e.message
            .starts_with("GET /repos/{owner}/{repo}/actions/runners: 503"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn post_jitconfig_is_not_retried_after_5xx() {
    let (fake, client, waits) = pat_fake().await;
    fake.inject(JIT, Fault::Status { status: 500 }, 1);
    let e = client
        .generate_jitconfig(&jit_request("acme/app", "r1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(
        e.message
            .contains("POST /repos/{owner}/{repo}/actions/runners/generate-jitconfig: 500"),
        "{}",
        e.message
    );
    assert_eq!(fake.count(JIT), 1);
    assert!(waits.lock().unwrap().is_empty());
}

#[tokio::test]
async fn slow_answer_times_out_as_transient() {
    let fake = FakeGitHub::start().await;
    fake.add_repo("acme/app");
    let (mut opts, _) = recording_options();
    opts.timeout = Duration::from_millis(200);
    let client = GitHubClient::with_options(&fake.pat_config(), opts).unwrap();
    fake.inject(JIT, Fault::Delay { ms: 1000 }, 1);
    let e = client
        .generate_jitconfig(&jit_request("acme/app", "r1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Transient);
    assert!(e.message.contains("timed out"), "{}", e.message);
    // GETs are retried after a timeout.
    fake.inject(RUNNERS, Fault::Delay { ms: 1000 }, 1);
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
}

#[tokio::test]
async fn etag_304_reuses_the_cached_body() {
    let (fake, client, _) = pat_fake().await;
    fake.register_runner(Scope::Repo("acme/app".into()), "a", &["self-hosted"], true);
    let first = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    let second = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(first, second);
    let seen = fake.requests();
    assert_eq!(
        seen.iter()
            .map(|r| (r.status, r.conditional))
            .collect::<Vec<_>>(),
        vec![(200, false), (304, true)]
    );
    // A change shows through.
    fake.register_runner(Scope::Repo("acme/app".into()), "b", &["self-hosted"], true);
    let third = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(third.len(), 2);
    assert_eq!(fake.requests().last().unwrap().status, 200);
}

#[tokio::test]
async fn errors_never_contain_the_token() {
    let fake = FakeGitHub::start().await;
    fake.add_repo("acme/app");
    let pat = fake.pat().unwrap();
    let (opts, _) = recording_options();
    // Wrong token: Auth.
    let mut cfg = fake.pat_config();
    let wrong = "ghp_wrongwrongwrongwrongwrongwrong1234".to_string();
    cfg.token = Some(Secret::new(wrong.clone()));
    let bad = GitHubClient::with_options(&cfg, opts.clone()).unwrap();
    let e = bad
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.message.contains("401"), "{}", e.message);
    let mut texts = vec![e.to_string(), format!("{e:?}"), format!("{bad:?}")];

    let client = GitHubClient::with_options(&fake.pat_config(), opts).unwrap();
    texts.push(format!("{client:?}"));
    let s = Scope::Repo("acme/app".into());
    let jit = client
        .generate_jitconfig(&jit_request("acme/app", "r1"))
        .await
        .unwrap();
    texts.push(format!("{jit:?}"));
    fake.connect_jit(jit.encoded.expose()).await.unwrap();
    let job = fake.queue_job("acme/app", &["self-hosted"], false).await;
    fake.start_job(job.job_id, "r1").await.unwrap();
    let errors = vec![
        client.delete_runner(&s, jit.runner_id).await.unwrap_err(), // busy: 422
        client.delete_runner(&s, 999_999).await.unwrap_err(),       // 404
        client
            .generate_jitconfig(&jit_request("acme/app", "r1"))
            .await
            .unwrap_err(), // 409
        client.get_job("acme/missing", 1).await.unwrap_err(),
        client
            .list_runners(&Scope::Org("nobody".into()))
            .await
            .unwrap_err(),
    ];
    assert_eq!(errors[0].kind, ErrorKind::Invalid);
    assert_eq!(errors[1].kind, ErrorKind::NotFound);
    assert_eq!(errors[2].kind, ErrorKind::Invalid);
    assert_eq!(errors[3].kind, ErrorKind::NotFound);
    assert_eq!(errors[4].kind, ErrorKind::NotFound);
    for e in &errors {
        texts.push(e.to_string());
        texts.push(format!("{e:?}"));
    }
    for t in &texts {
        assert!(!t.contains(&pat), "token leaked: {t}");
        assert!(!t.contains(&wrong), "token leaked: {t}");
        assert!(!t.contains(jit.encoded.expose()), "JIT config leaked: {t}");
    }
}

#[tokio::test]
async fn queued_jobs_from_queued_and_in_progress_runs() {
    let (fake, client, _) = pat_fake().await;
    let a = fake
        .queue_job("acme/app", &["self-hosted", "linux"], false)
        .await;
    let b = fake
        .queue_job("acme/app", &["self-hosted", "gpu"], false)
        .await;
    // A run in progress with one job running and one still queued.
    fake.register_runner(
        Scope::Repo("acme/app".into()),
        "busy-one",
        &["self-hosted", "linux"],
        true,
    );
    fake.start_job(a.job_id, "busy-one").await.unwrap();
    let c = fake
        .queue_job_in_run(a.run_id, &["self-hosted", "arm64"], false)
        .await
        .unwrap();
    // Another repository's job is not listed.
    fake.queue_job("acme/other", &["self-hosted"], false).await;

    let mut jobs = client.list_queued_jobs("acme/app").await.unwrap();
    jobs.sort_by_key(|j| j.job_id);
    assert_eq!(
        jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(),
        vec![b.job_id, c.job_id]
    );
    assert!(
        jobs.iter().all(|j| j.status == JobStatus::Queued
            && j.repo == "acme/app"
            && j.runner_name.is_none())
    );
    assert_eq!(jobs[0].labels, vec!["self-hosted", "gpu"]);
    assert_eq!(jobs[1].run_id, a.run_id);
    let created = fake.job(b.job_id).unwrap().created_at;
    assert_eq!(
        jobs[0].at,
        created / 1000 * 1000,
        "queued events are timed by created_at"
    );
    assert_eq!(fake.count("GET /repos/{owner}/{repo}/actions/runs"), 2);
    assert_eq!(
        fake.count("GET /repos/{owner}/{repo}/actions/runs/{run_id}/jobs"),
        2
    );

    let running = client.get_job("acme/app", a.job_id).await.unwrap();
    assert_eq!(running.status, JobStatus::InProgress);
    assert_eq!(running.runner_name.as_deref(), Some("busy-one"));
    fake.complete_job(a.job_id, "failure").await.unwrap();
    let done = client.get_job("acme/app", a.job_id).await.unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.conclusion.as_deref(), Some("failure"));
    assert!(done.at >= running.at);
}

#[tokio::test]
async fn delete_runner_kinds() {
    let (fake, client, _) = pat_fake().await;
    let s = Scope::Repo("acme/app".into());
    let idle = fake.register_runner(s.clone(), "idle", &["self-hosted"], true);
    let busy = fake.register_runner(s.clone(), "busy", &["self-hosted"], true);
    let job = fake.queue_job("acme/app", &["self-hosted"], false).await;
    fake.start_job(job.job_id, "busy").await.unwrap();
    assert_eq!(
        client.delete_runner(&s, busy).await.unwrap_err().kind,
        ErrorKind::Invalid
    );
    client.delete_runner(&s, idle).await.unwrap();
    assert_eq!(
        client.delete_runner(&s, idle).await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(fake.runners().len(), 1);
}

#[tokio::test]
async fn delete_retried_after_lost_answer_counts_as_done() {
    let (fake, client, _) = pat_fake().await;
    let s = Scope::Repo("acme/app".into());
    let id = fake.register_runner(s.clone(), "r", &["self-hosted"], true);
    // First attempt is answered 502; the retry deletes it.
    fake.inject(
        "DELETE /repos/{owner}/{repo}/actions/runners/{runner_id}",
        Fault::Status { status: 502 },
        1,
    );
    client.delete_runner(&s, id).await.unwrap();
    assert!(fake.runners().is_empty());
}

#[tokio::test]
async fn repos_rerun_and_listing() {
    let (fake, client, _) = pat_fake().await;
    fake.add_repo("acme/lib");
    fake.add_repo("acme/old");
    fake.archive_repo("acme/old");
    fake.add_user("alice");
    fake.add_repo("alice/dotfiles");
    let repo = client.get_repo("acme/app").await.unwrap();
    assert_eq!(repo.full_name, "acme/app");
    assert!(!repo.archived);
    assert_eq!(
        client.get_repo("acme/nope").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        client.list_repos("acme").await.unwrap(),
        vec!["acme/app", "acme/lib"]
    );
    // A user: /orgs answers 404, /users is asked next.
    assert_eq!(
        client.list_repos("alice").await.unwrap(),
        vec!["alice/dotfiles"]
    );
    assert_eq!(fake.count("GET /users/{username}/repos"), 1);

    let job = fake.queue_job("acme/app", &["self-hosted"], false).await;
    fake.register_runner(Scope::Repo("acme/app".into()), "r", &["self-hosted"], true);
    fake.start_job(job.job_id, "r").await.unwrap();
    fake.complete_job(job.job_id, "failure").await.unwrap();
    client.rerun_job("acme/app", job.job_id).await.unwrap();
    assert_eq!(fake.job(job.job_id).unwrap().status, "queued");
    assert_eq!(fake.job(job.job_id).unwrap().reruns, 1);
}

#[tokio::test]
async fn bad_names_are_refused_without_a_request() {
    let (fake, client, _) = pat_fake().await;
    for repo in [
        "acme",
        "acme/../x",
        "acme/app?x=1",
        "/app",
        "acme/app/extra",
        "a b/c",
    ] {
        let e = client.list_queued_jobs(repo).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{repo}");
    }
    assert_eq!(
        client.list_repos("../etc").await.unwrap_err().kind,
        ErrorKind::Invalid
    );
    assert!(fake.requests().is_empty());
}

#[test]
fn construction_errors_name_the_key() {
    let mut cfg = runfleet_core::config::GithubConfig {
        api_url: "not a url".into(),
        webhook_secret: None,
        token: Some(Secret::new("t")),
        app_id: None,
        app_private_key: None,
        installation_id: None,
        repos: None,
        poll: false,
    };
    assert!(
        GitHubClient::new(&cfg)
            .unwrap_err()
            .message
            .contains("github.api_url")
    );
    cfg.api_url = "https://ghe.example.invalid/api/v3/".into();
    assert_eq!(
        GitHubClient::new(&cfg).unwrap().api_url(),
        "https://ghe.example.invalid/api/v3"
    );
    cfg.token = None;
    cfg.app_id = Some(1);
    cfg.app_private_key = Some(Secret::new(
        "-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----\n",
    ));
    let e = GitHubClient::new(&cfg).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.message.contains("github.app_private_key") && !e.message.contains("nope"));
}

// ------------------------------------------------------------------ App auth

const APP_ID: u64 = 4242;

async fn app_fake() -> (FakeGitHub, String) {
    let (private, public) = tokio::task::spawn_blocking(app_keypair).await.unwrap();
    let fake = FakeGitHub::start_with(FakeOptions {
        app: Some((APP_ID, public)),
        ..FakeOptions::default()
    })
    .await
    .unwrap();
    fake.add_repo("acme/app");
    fake.add_installation("acme");
    (fake, private)
}

#[tokio::test]
async fn app_auth_with_a_generated_rsa_key() {
    let (fake, private) = app_fake().await;
    let (opts, _) = recording_options();
    let client =
        GitHubClient::with_options(&app_config(fake.url(), APP_ID, &private, None), opts).unwrap();
    let jit = client
        .generate_jitconfig(&jit_request("acme/app", "r1"))
        .await
        .unwrap();
    assert!(fake.runner_of_jit(jit.encoded.expose()).is_some());
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    client.list_queued_jobs("acme/app").await.unwrap();

    let seen = fake.requests();
    let auth_of = |endpoint: &str| {
        seen.iter()
            .filter(|r| r.endpoint == endpoint)
            .map(|r| r.auth.clone())
            .collect::<Vec<_>>()
    };
    // Installation looked up once for the owner, with the JWT.
    assert_eq!(
        auth_of("GET /repos/{owner}/{repo}/installation"),
        vec!["app"]
    );
    assert_eq!(
        auth_of("POST /app/installations/{installation_id}/access_tokens"),
        vec!["app"]
    );
    assert!(auth_of(JIT).iter().all(|a| a.starts_with("installation:")));
    assert!(
        auth_of(RUNNERS)
            .iter()
            .all(|a| a.starts_with("installation:"))
    );
    assert!(seen.iter().all(|r| r.status < 400), "{seen:?}");
    assert_eq!(fake.tokens_issued(), 1, "the token is cached");

    // Another owner without an installation: NotFound naming the lookup.
    fake.add_repo("other/x");
    let e = client
        .list_runners(&Scope::Repo("other/x".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message.contains("/repos/{owner}/{repo}/installation"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn app_token_is_refreshed_before_it_expires() {
    let (fake, private) = app_fake().await;
    let inst = fake.add_installation("acme");
    let (mut opts, _) = recording_options();
    opts.token_refresh_margin = Duration::from_secs(300);
    let client =
        GitHubClient::with_options(&app_config(fake.url(), APP_ID, &private, Some(inst)), opts)
            .unwrap();
    // Tokens living 2 minutes are inside the 5-minute margin: each use
    // mints a fresh one before the old one could expire mid-call.
    fake.set_token_ttl(Duration::from_secs(120));
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(fake.tokens_issued(), 2);
    // Tokens living an hour are reused.
    fake.set_token_ttl(Duration::from_secs(3600));
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(fake.tokens_issued(), 3);
    // installation_id configured: no lookup.
    assert_eq!(fake.count("GET /repos/{owner}/{repo}/installation"), 0);
}

#[tokio::test]
async fn app_token_expired_on_githubs_side_is_replaced() {
    let (fake, private) = app_fake().await;
    let (mut opts, _) = recording_options();
    opts.token_refresh_margin = Duration::ZERO;
    let client =
        GitHubClient::with_options(&app_config(fake.url(), APP_ID, &private, None), opts).unwrap();
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    let old = fake.installation_tokens();
    // GitHub stops accepting the token (expired or revoked) before the
    // client expected: one 401, a new token, the call succeeds.
    fake.revoke_tokens();
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(fake.tokens_issued(), 2);
    let statuses: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.endpoint == RUNNERS)
        .map(|r| r.status)
        .collect();
    // The last answer is 200 or, as the body did not change, 304.
    assert_eq!(statuses.len(), 3, "{statuses:?}");
    assert_eq!(statuses[..2], [200, 401]);
    assert!(matches!(statuses[2], 200 | 304), "{statuses:?}");
    assert_ne!(fake.installation_tokens(), old);
}

#[tokio::test]
async fn app_token_expiry_by_the_clock() {
    let (fake, private) = app_fake().await;
    let (mut opts, _) = recording_options();
    opts.token_refresh_margin = Duration::from_millis(500);
    let client =
        GitHubClient::with_options(&app_config(fake.url(), APP_ID, &private, None), opts).unwrap();
    // GitHub writes expires_at in whole seconds: a 2 s token expires, as
    // the client reads it, 1–2 s from now, which is within 0.5 s margin
    // only after that time has passed.
    fake.set_token_ttl(Duration::from_secs(2));
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(fake.tokens_issued(), 1);
    // Wait until the fake itself refuses the old token, then use the client.
    let token = fake.installation_tokens();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let probe = reqwest::Client::new()
            .get(format!("{}/repos/acme/app/actions/runners", fake.url()))
            .bearer_auth(&token[0])
            .send()
            .await
            .unwrap();
        if probe.status() == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap();
    assert_eq!(
        fake.tokens_issued(),
        2,
        "a new token was minted for the expired one"
    );
    // The refresh happened before sending: the only 401 was the probe's.
    let unauthorized = fake.requests().iter().filter(|r| r.status == 401).count();
    assert_eq!(unauthorized, 1);
    assert!(fake.requests().last().unwrap().status < 400);
}

#[tokio::test]
async fn app_lists_installation_repositories() {
    let (fake, private) = app_fake().await;
    fake.add_repo("acme/lib");
    fake.add_repo("elsewhere/x");
    let (opts, _) = recording_options();
    let client =
        GitHubClient::with_options(&app_config(fake.url(), APP_ID, &private, None), opts).unwrap();
    assert_eq!(
        client.list_repos("acme").await.unwrap(),
        vec!["acme/app", "acme/lib"]
    );
    assert_eq!(fake.count("GET /orgs/{org}/installation"), 1);
    assert_eq!(fake.count("GET /installation/repositories"), 1);
    // An owner the App is not installed on: NotFound.
    assert_eq!(
        client.list_repos("elsewhere").await.unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn app_with_the_wrong_key_is_refused_without_leaking_it() {
    let (fake, _) = app_fake().await;
    let (other_private, _) = tokio::task::spawn_blocking(rsa_keypair).await.unwrap();
    let (opts, _) = recording_options();
    let client =
        GitHubClient::with_options(&app_config(fake.url(), APP_ID, &other_private, None), opts)
            .unwrap();
    let e = client
        .list_runners(&Scope::Repo("acme/app".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.message.contains("401"), "{}", e.message);
    assert!(!e.message.contains("PRIVATE KEY") && !format!("{e:?}").contains("BEGIN"));
    assert_eq!(fake.tokens_issued(), 0);
}

#[tokio::test]
async fn rerun_through_the_engine_port() {
    use runfleet_engine::ports::GitHub;
    let (fake, client, _) = pat_fake().await;
    let job = fake.queue_job("acme/app", &["self-hosted"], false).await;
    fake.register_runner(Scope::Repo("acme/app".into()), "r", &["self-hosted"], true);
    fake.start_job(job.job_id, "r").await.unwrap();
    let port: &dyn GitHub = &client;
    // Not completed yet: GitHub refuses, and says so with a permanent kind.
    let e = port.rerun_job("acme/app", job.job_id).await.unwrap_err();
    assert!(
        !matches!(e.kind, ErrorKind::Transient | ErrorKind::Throttled),
        "{e}"
    );
    fake.complete_job(job.job_id, "failure").await.unwrap();
    port.rerun_job("acme/app", job.job_id).await.unwrap();
    assert_eq!(fake.job(job.job_id).unwrap().reruns, 1);
    assert_eq!(
        fake.count("POST /repos/{owner}/{repo}/actions/jobs/{job_id}/rerun"),
        2
    );
}

#[tokio::test]
async fn running_jobs_name_their_runner() {
    use runfleet_engine::ports::GitHub;
    let (fake, client, _) = pat_fake().await;
    let running = fake.queue_job("acme/app", &["self-hosted"], false).await;
    let waiting = fake.queue_job("acme/app", &["self-hosted"], false).await;
    fake.register_runner(
        Scope::Repo("acme/app".into()),
        "runfleet-p-i-0abc",
        &["self-hosted"],
        true,
    );
    fake.start_job(running.job_id, "runfleet-p-i-0abc")
        .await
        .unwrap();
    let port: &dyn GitHub = &client;
    let jobs = port.list_running_jobs("acme/app").await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0].job_id, running.job_id);
    assert_eq!(jobs[0].runner_name.as_deref(), Some("runfleet-p-i-0abc"));
    let queued = port.list_queued_jobs("acme/app").await.unwrap();
    assert!(queued.iter().all(|j| j.job_id != running.job_id));
    assert!(
        queued.iter().any(|j| j.job_id == waiting.job_id),
        "{queued:?}"
    );
}

#[tokio::test]
async fn active_runs_and_one_runs_jobs_whatever_their_status() {
    let (fake, client, _) = pat_fake().await;
    let port: &dyn GitHub = &client;
    let a = fake
        .queue_job("acme/app", &["self-hosted", "linux"], false)
        .await;
    let b = fake
        .queue_job_in_run(a.run_id, &["self-hosted", "linux"], false)
        .await
        .unwrap();
    let c = fake
        .queue_job_in_run(a.run_id, &["self-hosted", "linux"], false)
        .await
        .unwrap();
    let done = fake
        .queue_job("acme/app", &["self-hosted", "linux"], false)
        .await;
    for r in ["r-1", "r-2", "r-3"] {
        fake.register_runner(
            Scope::Repo("acme/app".into()),
            r,
            &["self-hosted", "linux"],
            true,
        );
    }
    fake.start_job(a.job_id, "r-1").await.unwrap();
    fake.start_job(b.job_id, "r-2").await.unwrap();
    fake.complete_job(b.job_id, "success").await.unwrap();
    fake.start_job(done.job_id, "r-3").await.unwrap();
    fake.complete_job(done.job_id, "success").await.unwrap();

    // The run with a job still running or waiting is active; the run whose
    // only job is done is not.
    assert_eq!(
        port.list_active_runs("acme/app").await.unwrap(),
        vec![a.run_id]
    );
    let mut jobs = port.list_run_jobs("acme/app", a.run_id).await.unwrap();
    jobs.sort_by_key(|j| j.job_id);
    let seen: Vec<(u64, JobStatus)> = jobs.iter().map(|j| (j.job_id, j.status)).collect();
    assert_eq!(
        seen,
        vec![
            (a.job_id, JobStatus::InProgress),
            (b.job_id, JobStatus::Completed),
            (c.job_id, JobStatus::Queued),
        ]
    );
    assert_eq!(jobs[0].runner_name.as_deref(), Some("r-1"));
    assert_eq!(jobs[1].conclusion.as_deref(), Some("success"));
    let e = port.list_run_jobs("acme/app", 987_654).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
}
