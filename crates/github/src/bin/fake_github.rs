//! `runfleet-fake-github`: the fake GitHub as a standalone server for
//! black-box runs of the `runfleet` binary.
//!
//! ```text
//! runfleet-fake-github [--listen 127.0.0.1:0] [--pat TOKEN]
//!                      [--app-id N --app-public-key FILE]
//!                      [--webhook-url URL --webhook-secret SECRET]
//! ```
//! Prints one JSON line `{"url":"http://127.0.0.1:PORT"}` on stdout once
//! listening, then serves until interrupted. Control it over HTTP under
//! `/_fake/...` (see `fake/control.rs`).

use std::net::SocketAddr;

use runfleet_github::fake::{FakeGitHub, FakeOptions};

fn usage(msg: &str) -> ! {
    eprintln!("runfleet-fake-github: {msg}");
    eprintln!(
        "usage: runfleet-fake-github [--listen ADDR] [--pat TOKEN] [--app-id N --app-public-key FILE] [--webhook-url URL --webhook-secret SECRET]"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut opts = FakeOptions::default();
    let mut app_id: Option<u64> = None;
    let mut app_key: Option<String> = None;
    let mut webhook: (Option<String>, Option<String>) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--listen" => {
                opts.listen = value()
                    .parse::<SocketAddr>()
                    .unwrap_or_else(|_| usage("--listen takes HOST:PORT"))
            }
            "--pat" => opts.pat = Some(value()),
            "--app-id" => {
                app_id = Some(
                    value()
                        .parse()
                        .unwrap_or_else(|_| usage("--app-id takes a number")),
                )
            }
            "--app-public-key" => {
                let path = value();
                app_key = Some(
                    std::fs::read_to_string(&path)
                        .unwrap_or_else(|e| usage(&format!("cannot read {path}: {e}"))),
                )
            }
            "--webhook-url" => webhook.0 = Some(value()),
            "--webhook-secret" => webhook.1 = Some(value()),
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    match (app_id, app_key) {
        (Some(id), Some(key)) => opts.app = Some((id, key)),
        (None, None) => {}
        _ => usage("--app-id and --app-public-key go together"),
    }
    let fake = FakeGitHub::start_with(opts)
        .await
        .unwrap_or_else(|e| usage(&format!("cannot start: {e}")));
    if let (Some(url), Some(secret)) = &webhook {
        fake.set_webhook(url, secret);
    }
    println!(
        "{}",
        serde_json::json!({ "url": fake.url(), "pat": fake.pat() })
    );
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = std::future::pending::<()>() => {}
    }
    drop(fake);
}
