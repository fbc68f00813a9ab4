//! The `/webhook` intake on arbitrary input: the first byte picks the
//! `X-GitHub-Event` header and how the signature header is made, the rest
//! is the body. With a correct signature the body reaches the
//! `workflow_job` parser, so the parser is fuzzed through `receive`, the
//! function the server calls. Nothing may panic, and no error message may
//! carry the secret or the body's text.
#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use runfleet_github::webhook::{Verifier, parse_workflow_job, receive, sign};

const SECRET: &[u8] = b"fuzz-webhook-secret-7f3a";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let verifier = Verifier::from_bytes(SECRET);
    let mut headers = HeaderMap::new();
    let event = match selector % 4 {
        0 | 1 => "workflow_job",
        2 => "ping",
        _ => "push",
    };
    headers.insert("x-github-event", HeaderValue::from_static(event));
    headers.insert("x-github-delivery", HeaderValue::from_static("fuzz-1"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let signature = match (selector / 4) % 4 {
        // A wrong or malformed header made from the body itself.
        1 => String::from_utf8_lossy(&body[..body.len().min(80)]).into_owned(),
        2 => format!("sha256={}", "0".repeat(64)),
        _ => sign(SECRET, body),
    };
    if let Ok(v) = HeaderValue::from_str(&signature) {
        headers.insert("x-hub-signature-256", v);
    }
    match receive(&verifier, &headers, body) {
        Ok(_) => {}
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.contains("fuzz-webhook-secret"), "secret in {msg:?}");
            assert!(e.http_status() >= 400);
        }
    }
    // The parser on its own, with no signature in the way.
    let _ = parse_workflow_job(body, 0);
});
