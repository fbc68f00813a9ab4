//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::pkcs8::LineEnding;
use runfleet_core::config::{GithubConfig, Secret};
use runfleet_github::client::{ClientOptions, Sleeper};

/// The App key of this test run, generated once per test binary (RSA key
/// generation is slow in debug builds) and shared by its tests.
pub fn app_keypair() -> (String, String) {
    static KEY: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    KEY.get_or_init(rsa_keypair).clone()
}

/// A fresh 2048-bit RSA key pair as (private PKCS#1 PEM, public PKCS#1 PEM).
/// Generated per test run: nothing secret is checked in.
pub fn rsa_keypair() -> (String, String) {
    let mut rng = rsa::rand_core::OsRng;
    let key = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("generate RSA key");
    let private = key
        .to_pkcs1_pem(LineEnding::LF)
        .expect("encode private key")
        .to_string();
    let public = key
        .to_public_key()
        .to_pkcs1_pem(LineEnding::LF)
        .expect("encode public key");
    (private, public)
}

/// Client options for tests: short backoff, and a sleeper that records each
/// wait and returns at once.
pub fn recording_options() -> (ClientOptions, Arc<Mutex<Vec<Duration>>>) {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let w = waits.clone();
    let sleeper: Sleeper = Arc::new(move |d| {
        w.lock().unwrap().push(d);
        Box::pin(async {})
    });
    let opts = ClientOptions {
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        timeout: Duration::from_secs(10),
        sleeper,
        ..ClientOptions::default()
    };
    (opts, waits)
}

pub fn app_config(
    api_url: &str,
    app_id: u64,
    private_pem: &str,
    installation_id: Option<u64>,
) -> GithubConfig {
    GithubConfig {
        api_url: api_url.to_string(),
        webhook_secret: None,
        token: None,
        app_id: Some(app_id),
        app_private_key: Some(Secret::new(private_pem)),
        installation_id,
        repos: None,
        poll: false,
    }
}
