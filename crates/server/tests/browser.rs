//! The status page in a real headless Chromium: it renders the pools, the
//! queued jobs and the failures, and its screenshot is not blank.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{job_payload, service};

fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var("RUNFLEET_CHROMIUM").ok(),
        Some("/usr/bin/chromium".into()),
        Some("/usr/bin/chromium-browser".into()),
    ];
    candidates
        .into_iter()
        .flatten()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Runs headless Chromium on `url` with one action flag (`--dump-dom`,
/// `--screenshot=...`) and a fresh profile, off the main thread. The flags
/// keep Chromium off the network: only the page on loopback is fetched.
async fn chromium_run(
    bin: &Path,
    profile: PathBuf,
    action: String,
    url: &str,
) -> std::process::Output {
    let (bin, url) = (bin.to_path_buf(), url.to_string());
    tokio::task::spawn_blocking(move || {
        let out = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&action)
            .arg(&url)
            .output()
            .expect("chromium runs");
        assert!(
            out.status.success(),
            "chromium {action} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn status_page_renders_in_headless_chromium() {
    let Some(bin) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is required in CI (.ci/run installs it)"
        );
        eprintln!("skipping: chromium not installed");
        return;
    };
    let s = service().await;
    let linux = ["self-hosted", "linux", "x64"];
    s.deliver(
        "workflow_job",
        "d-1",
        &job_payload("queued", 11, "acme/app", &linux),
        None,
    )
    .await;
    s.deliver(
        "workflow_job",
        "d-2",
        &job_payload("queued", 12, "acme/app", &["self-hosted", "gpu"]),
        None,
    )
    .await;
    s.until("one instance", |s| s.instances().len() == 1).await;
    s.until("the unmatched job shown as a failure", |s| {
        !s.running.state.view.read().unwrap().failures.is_empty()
    })
    .await;

    let dir = std::env::temp_dir().join(format!("runfleet-browser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("{}/", s.url);
    let dom = chromium_run(&bin, dir.join("p1"), "--dump-dom".into(), &url).await;
    let dom = String::from_utf8_lossy(&dom.stdout);
    for needle in [
        "id=\"pools\"",
        "linux-x64",
        "linux-arm64",
        "windows",
        "id=\"instances\"",
        "id=\"failures\"",
        "no pool has all of the labels",
        "id=\"timeline\"",
    ] {
        assert!(dom.contains(needle), "rendered DOM lacks {needle}:\n{dom}");
    }

    let shot = dir.join("page.png");
    chromium_run(
        &bin,
        dir.join("p2"),
        format!("--screenshot={}", shot.display()),
        &url,
    )
    .await;
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&shot).expect("screenshot written"),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let px = info.color_type.samples();
    let pixels = &buf[..info.buffer_size()];
    let total = pixels.len() / px;
    let inked = pixels
        .chunks(px)
        .filter(|p| p.iter().take(3).any(|&c| c < 200))
        .count();
    let green = pixels
        .chunks(px)
        .filter(|p| p[1] > 120 && p[0] < 100 && p[2] < 120)
        .count();
    assert!(
        info.width >= 1000 && info.height >= 800,
        "{}x{}",
        info.width,
        info.height
    );
    assert!(
        inked * 100 > total,
        "screenshot is nearly blank: {inked} of {total} pixels inked"
    );
    assert!(green > 0, "the capacity bar (green) is not drawn");
    if let Some(keep) = std::env::var_os("RUNFLEET_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("screenshot copied");
    }
    s.running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
