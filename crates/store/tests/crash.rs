//! Invariant 2 under `kill -9`: a child process intakes and applies as fast
//! as it can and prints each acknowledgement; it is killed mid-stream, and
//! everything it acknowledged must be in the file, and every batch whole or
//! absent.
//!
//! The child is this same test binary, started on the ignored test
//! `crash_child` with the database path in an environment variable.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Arc;

use runfleet_core::model::{IntakeEvent, JobState, JobStatus};
use runfleet_engine::ports::{Intake, Mutation, Store};
use runfleet_store::SqliteStore;
use runfleet_store::conformance::{event, job, timeline_event};

const CHILD_ENV: &str = "RUNFLEET_STORE_CRASH_CHILD";
const WRITERS: u64 = 8;
const JOBS_PER_BATCH: u64 = 10;
const WANT_INTAKES: usize = 1500;
const WANT_BATCHES: u64 = 40;

fn batch(k: u64) -> Vec<Mutation> {
    let mut b: Vec<Mutation> = (0..JOBS_PER_BATCH)
        .map(|i| Mutation::PutJob(job(k * JOBS_PER_BATCH + i, JobState::Queued)))
        .collect();
    b.push(Mutation::Timeline(timeline_event(
        k,
        Some(k * JOBS_PER_BATCH),
        "batch",
    )));
    b.push(Mutation::Cursor(k));
    b
}

#[test]
#[ignore = "the child half of kill_9_loses_nothing_acknowledged, which starts it"]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        eprintln!("crash_child is a helper process: kill_9_loses_nothing_acknowledged runs it");
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                // Bounded: the parent kills us long before the end.
                for n in 0..200_000u64 {
                    let id = w * 1_000_000 + n;
                    let ev = event(id, JobStatus::Queued, n);
                    if let Intake::Stored(seq) =
                        store.intake(&format!("crash-{id}"), &ev).await.unwrap()
                    {
                        println!("intake {id} {seq}");
                    }
                }
            }));
        }
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for k in 1..=200_000u64 {
                store.apply(&batch(k)).await.unwrap();
                println!("applied {k}");
            }
        }));
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn kill_9_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    // The pipe stays open until the child is killed: it must die of
    // SIGKILL in the middle of its work, not of a closed stdout.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut acked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut applied = 0;
    let mut line = String::new();
    while acked.len() < WANT_INTAKES || applied < WANT_BATCHES {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break; // the child ended by itself: asserted below
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["intake", id, seq] => {
                acked.insert(id.parse().unwrap(), seq.parse().unwrap());
            }
            ["applied", k] => applied = k.parse().unwrap(),
            _ => {}
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    drop(out);
    assert_eq!(
        status.signal(),
        Some(9),
        "the child did not die of SIGKILL: {status}"
    );
    assert!(
        acked.len() >= WANT_INTAKES,
        "the child acknowledged only {} intakes",
        acked.len()
    );
    assert!(
        applied >= WANT_BATCHES,
        "the child acknowledged only {applied} batches"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(&path)
            .await
            .expect("reopen after kill -9");
        let log = store.intake_since(0, usize::MAX).await.unwrap();
        assert!(
            log.windows(2).all(|w| w[0].0 < w[1].0),
            "seqs out of order after the crash"
        );
        let by_job: BTreeMap<u64, u64> = log
            .iter()
            .map(|(seq, ev)| match ev {
                IntakeEvent::Job(ev) => (ev.job_id, *seq),
                IntakeEvent::Start(req) => panic!("no start request was stored: {req:?}"),
            })
            .collect();
        assert_eq!(by_job.len(), log.len(), "a delivery stored twice");
        for (id, seq) in &acked {
            assert_eq!(
                by_job.get(id),
                Some(seq),
                "acknowledged intake {id} (seq {seq}) lost"
            );
            let ev = event(*id, JobStatus::Queued, id % 1_000_000);
            assert_eq!(
                store.intake(&format!("crash-{id}"), &ev).await.unwrap(),
                Intake::Duplicate,
                "acknowledged delivery {id} not remembered"
            );
        }
        let snap = store.load().await.unwrap();
        let k = snap.cursor;
        assert!(
            k >= applied,
            "acknowledged batch {applied} lost (cursor {k})"
        );
        let ids: Vec<u64> = snap.jobs.iter().map(|j| j.id).collect();
        let want: Vec<u64> = (JOBS_PER_BATCH..(k + 1) * JOBS_PER_BATCH).collect();
        assert_eq!(ids, want, "jobs do not match {k} whole batches");
        assert_eq!(
            store.timeline(None, usize::MAX).await.unwrap().len() as u64,
            k
        );
    });
}
