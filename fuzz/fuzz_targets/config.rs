//! `runfleet_core::config::parse` on arbitrary text: every input gives a
//! `Config` or an error, never a panic, and no error message carries the
//! secrets the config refers to.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runfleet_core::config::{MapSecrets, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let secrets = MapSecrets::default()
        .with_env("GITHUB_TOKEN", "ghp_fuzzTokenValue0123456789")
        .with_env("RUNFLEET_WEBHOOK_SECRET", "fuzz-webhook-secret-7f3a")
        .with_file("/etc/runfleet/app.pem", "-----BEGIN FUZZ KEY-----");
    if let Err(e) = parse(text, &secrets) {
        let msg = e.to_string();
        for s in [
            "ghp_fuzzTokenValue",
            "fuzz-webhook-secret",
            "BEGIN FUZZ KEY",
        ] {
            // Only a secret the input did not itself contain must stay out.
            assert!(
                text.contains(s) || !msg.contains(s),
                "secret {s:?} in the error {msg:?}"
            );
        }
    }
});
