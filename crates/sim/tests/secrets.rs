//! No secret reaches any output (DESIGN invariant 5), under chaos.
//!
//! A chaos run (every fault class on, controller restarts included) with a
//! config whose GitHub token and webhook secret are distinctive canaries,
//! while everything it can print is captured: the tracing logs at TRACE (as
//! text and as JSON), the Prometheus text, the status page HTML and
//! `/status.json` as the server renders them from the engine (every 400
//! steps), the whole store timeline, the engine's health and
//! error counters, the summary (`demo --json`) and its failure lines, and
//! the config's `Debug`. Every JIT config the simulated GitHub minted is
//! collected. None of those values, nor their base64, may appear anywhere.
//!
//! The black-box counterpart (the real `runfleet serve` against the fake
//! GitHub and moto) is `crates/cli/tests/secrets.rs`.

use std::io::Write;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use runfleet_core::config::{MapSecrets, parse};
use runfleet_core::model::{JobEvent, Runner, Scope};
use runfleet_engine::Engine;
use runfleet_engine::ports::{GitHub, JitConfig, JitRequest, PortResult};
use runfleet_server::metrics::Metrics;
use runfleet_server::page;
use runfleet_server::view::View;
use runfleet_sim::driver::DEMO_CONFIG;
use runfleet_sim::{SimOptions, run_wrapped};
use tracing_subscriber::layer::SubscriberExt;

const TOKEN: &str = "ghp_SimLeakCanaryToken8Zq3";
const WEBHOOK_SECRET: &str = "SimLeakCanaryWebhookSecret5Vx";

/// The simulated GitHub, keeping every JIT config it mints.
struct Minting {
    inner: Arc<dyn GitHub>,
    minted: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl GitHub for Minting {
    async fn generate_jitconfig(&self, req: &JitRequest) -> PortResult<JitConfig> {
        let jit = self.inner.generate_jitconfig(req).await?;
        self.minted
            .lock()
            .unwrap()
            .push(jit.encoded.expose().to_string());
        Ok(jit)
    }
    async fn list_runners(&self, scope: &Scope) -> PortResult<Vec<Runner>> {
        self.inner.list_runners(scope).await
    }
    async fn delete_runner(&self, scope: &Scope, runner_id: u64) -> PortResult<()> {
        self.inner.delete_runner(scope, runner_id).await
    }
    async fn list_active_runs(&self, repo: &str) -> PortResult<Vec<u64>> {
        self.inner.list_active_runs(repo).await
    }
    async fn list_run_jobs(&self, repo: &str, run_id: u64) -> PortResult<Vec<JobEvent>> {
        self.inner.list_run_jobs(repo, run_id).await
    }
    async fn get_job(&self, repo: &str, job_id: u64) -> PortResult<JobEvent> {
        self.inner.get_job(repo, job_id).await
    }
    async fn list_repos(&self, owner: &str) -> PortResult<Vec<String>> {
        self.inner.list_repos(owner).await
    }
}

/// A log sink the tracing layers write into.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Base64 (standard and URL-safe alphabets, no padding) of `s` at each of
/// the three byte alignments it can have inside a longer encoded text,
/// minus the partial characters at the ends.
fn base64_forms(s: &str) -> Vec<String> {
    const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let encode = |bytes: &[u8]| -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(STD[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    };
    let mut forms = Vec::new();
    for pad in 0..3 {
        let mut bytes = vec![0u8; pad];
        bytes.extend_from_slice(s.as_bytes());
        let enc = encode(&bytes);
        // Skip the characters that mix in the padding, and the last two
        // (they depend on what follows).
        let skip = if pad == 0 { 0 } else { pad + 1 };
        let core: String = enc.chars().skip(skip).collect();
        let core: String = core.chars().take(core.len().saturating_sub(2)).collect();
        if core.len() >= 12 {
            forms.push(core.clone());
            forms.push(core.replace('+', "-").replace('/', "_"));
        }
    }
    forms
}

/// The secret values (and their base64) found in `text`, by name. Every
/// form is looked up by its first [`WINDOW`] bytes in one pass over the
/// text (hundreds of secrets against megabytes of output), then compared
/// whole.
fn leaks(text: &str, secrets: &[(String, String)]) -> Vec<String> {
    let mut forms: std::collections::HashMap<&[u8], Vec<(String, String)>> =
        std::collections::HashMap::new();
    let mut owned = Vec::new();
    for (name, value) in secrets {
        assert!(value.len() >= WINDOW, "{name} is too short to look for");
        owned.push((format!("{name} in plain text"), value.clone()));
        for form in base64_forms(value) {
            owned.push((format!("{name} as base64 ({form})"), form));
        }
    }
    for (what, form) in &owned {
        forms
            .entry(&form.as_bytes()[..WINDOW])
            .or_default()
            .push((what.clone(), form.clone()));
    }
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for start in 0..bytes.len().saturating_sub(WINDOW - 1) {
        if let Some(cands) = forms.get(&bytes[start..start + WINDOW]) {
            for (what, form) in cands {
                if bytes[start..].starts_with(form.as_bytes()) && !found.contains(what) {
                    found.push(what.clone());
                }
            }
        }
    }
    found
}

/// Bytes of a secret (or of its base64) that identify it in a text.
const WINDOW: usize = 12;

#[test]
fn the_leak_check_finds_a_planted_secret() {
    let secrets = vec![("token".to_string(), TOKEN.to_string())];
    assert!(leaks("nothing here", &secrets).is_empty());
    assert_eq!(leaks(&format!("x={TOKEN}"), &secrets).len(), 1);
    // base64 of the token inside a longer encoded text, at any alignment.
    for prefix in ["", "a", "ab"] {
        let s = format!("{prefix}{TOKEN}!");
        let enc = base64_forms(&s)[0].clone();
        assert!(!leaks(&enc, &secrets).is_empty(), "{prefix:?}: {enc}");
    }
}

#[test]
fn nothing_a_chaos_run_shows_contains_a_secret() {
    let secrets_src = MapSecrets::default()
        .with_env("RUNFLEET_DEMO_TOKEN", TOKEN)
        .with_env("RUNFLEET_DEMO_WEBHOOK_SECRET", WEBHOOK_SECRET);
    let config = parse(DEMO_CONFIG, &secrets_src).expect("demo config");
    let config_debug = format!("{config:?}");
    let opts = SimOptions {
        jobs: 200,
        seed: 5,
        faults: 0.4,
        restart_weight: 0.03,
        ..SimOptions::default()
    };

    let text = Sink::default();
    let json = Sink::default();
    let (t, j) = (text.clone(), json.clone());
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || t.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || j.clone())
                .with_filter(tracing_subscriber::filter::LevelFilter::TRACE),
        );
    use tracing_subscriber::Layer as _;

    let minted = Arc::new(Mutex::new(Vec::new()));
    let metrics = Metrics::new(&config);
    let mut shown = String::new();
    let render = |e: &mut Engine, now: u64, shown: &mut String| {
        let view = View::of(e, now);
        metrics.update(e, &view);
        let timeline =
            futures::executor::block_on(e.store().timeline(None, 100)).unwrap_or_default();
        shown.push_str(&metrics.render());
        shown.push_str(&page::render(&view, &timeline, now));
        shown.push_str(&serde_json::to_string(&view).unwrap());
        shown.push_str(&format!("{:?}", e.health()));
        shown.push_str(&serde_json::to_string(e.stats()).unwrap());
    };
    let mut steps = 0u64;
    let mut last_timeline = String::new();
    let summary = tracing::subscriber::with_default(subscriber, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let minted = minted.clone();
        rt.block_on(run_wrapped(
            &opts,
            config,
            &move |g| {
                Arc::new(Minting {
                    inner: g,
                    minted: minted.clone(),
                })
            },
            &mut |e, now| {
                steps += 1;
                if steps.is_multiple_of(400) {
                    render(e, now, &mut shown);
                    let all = futures::executor::block_on(e.store().timeline(None, 1_000_000))
                        .unwrap_or_default();
                    last_timeline = format!("{all:?}");
                }
            },
            &mut |_| {},
        ))
        .expect("simulation runs")
    });
    assert!(summary.ok(), "{:?}", summary.failures());
    assert!(summary.faults_injected.controller_restarts > 0);

    let logs_text = String::from_utf8(text.0.lock().unwrap().clone()).unwrap();
    let logs_json = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs_text.contains("instance launched") && logs_json.contains("instance launched"),
        "the logs were not captured"
    );
    assert!(
        logs_text.contains("WARN"),
        "no error was logged: the faults did not fire"
    );
    assert!(shown.contains("runfleet_jobs_total") && shown.contains("<html"));

    let minted = minted.lock().unwrap().clone();
    assert!(
        minted.len() >= summary.jobs,
        "{} JIT configs minted for {} jobs",
        minted.len(),
        summary.jobs
    );
    let mut secrets = vec![
        ("the GitHub token".to_string(), TOKEN.to_string()),
        ("the webhook secret".to_string(), WEBHOOK_SECRET.to_string()),
    ];
    // Named by their order, so a failure does not print any part of one.
    secrets.extend(
        minted
            .iter()
            .enumerate()
            .map(|(i, j)| (format!("JIT config #{i}"), j.clone())),
    );

    let outputs = [
        ("logs (text, TRACE)", logs_text.as_str()),
        ("logs (JSON, TRACE)", logs_json.as_str()),
        ("metrics, status page, status.json, health, stats", &shown),
        ("store timeline", &last_timeline),
        ("summary JSON", &serde_json::to_string(&summary).unwrap()),
        ("summary failures", &format!("{:?}", summary.failures())),
        ("config Debug", &config_debug),
    ];
    let mut found = Vec::new();
    for (what, out) in outputs {
        for leak in leaks(out, &secrets) {
            found.push(format!("{what}: {leak}"));
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
    println!(
        "secrets: {} JIT configs + token + webhook secret checked against {} bytes of logs and {} bytes of pages/metrics",
        minted.len(),
        logs_text.len() + logs_json.len(),
        shown.len()
    );
}
