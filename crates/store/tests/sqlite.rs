//! SQLite specifics: opening from URLs, refusing bad files untouched,
//! settings, migrations on disk, group commit, several handles on one file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use runfleet_core::model::{JobState, JobStatus};
use runfleet_engine::ports::{Intake, Mutation, Store};
use runfleet_store::conformance::{event, job};
use runfleet_store::sqlite::APPLICATION_ID;
use runfleet_store::{SCHEMA_VERSION, SqliteStore, StoreError};

fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn pragma(path: &Path, name: &str) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_query_value(None, name, |r| r.get(0)).unwrap()
}

async fn open_err(path: impl Into<PathBuf>) -> StoreError {
    SqliteStore::open(path).await.expect_err("open must fail")
}

#[tokio::test]
async fn open_dispatches_on_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rf.db");
    let url = format!("sqlite://{}", path.display());
    assert!(url.starts_with("sqlite:///"), "{url}");
    let store = runfleet_store::open(&url).await.unwrap();
    store.apply(&[Mutation::Cursor(7)]).await.unwrap();
    drop(store);
    assert!(path.is_file());
    assert_eq!(
        runfleet_store::open(&url)
            .await
            .unwrap()
            .load()
            .await
            .unwrap()
            .cursor,
        7
    );

    let memory = runfleet_store::open("sqlite://:memory:").await.unwrap();
    memory.apply(&[Mutation::Cursor(3)]).await.unwrap();
    assert_eq!(memory.load().await.unwrap().cursor, 3);
    // Each in-memory store is its own.
    let other = runfleet_store::open("sqlite://:memory:").await.unwrap();
    assert_eq!(other.load().await.unwrap().cursor, 0);
}

#[tokio::test]
async fn an_unreachable_postgres_is_refused_and_its_password_is_not_shown() {
    let err = runfleet_store::open("postgres://runfleet:s3cr3t-pw@127.0.0.1:1/runfleet")
        .await
        .err()
        .expect("nothing listens on port 1");
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Postgres { .. }), "{err:?}");
    assert!(msg.contains("connecting"), "{msg}");
    assert!(
        msg.contains("postgres://runfleet:***@127.0.0.1:1/runfleet"),
        "{msg}"
    );
    assert!(!msg.contains("s3cr3t"), "{msg}");
    assert!(!format!("{err:?}").contains("s3cr3t"));

    let err = runfleet_store::open("mysql://root:s3cr3t-pw@db/rf")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::Url { .. }), "{err:?}");
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
    assert!(
        err.to_string().contains("must start with sqlite://"),
        "{err}"
    );
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        (
            "text.db",
            "runfleet: this is a config file, not a database\n"
                .repeat(200)
                .into_bytes(),
        ),
        ("short.db", b"hello".to_vec()),
        ("binary.db", (0..=255u8).cycle().take(8192).collect()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &content).unwrap();
        let before = dir_listing(dir.path());
        let err = open_err(&path).await;
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::NotADatabase { .. }),
            "{name}: {err:?}"
        );
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("not a SQLite database"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), content, "{name} was changed");
        assert_eq!(
            dir_listing(dir.path()),
            before,
            "files appeared next to {name}"
        );
    }
}

#[tokio::test]
async fn another_applications_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE accounts (id INTEGER); INSERT INTO accounts VALUES (1);")
            .unwrap();
    }
    let content = std::fs::read(&path).unwrap();
    let err = open_err(&path).await;
    assert!(matches!(err, StoreError::Foreign { .. }), "{err:?}");
    assert!(err.to_string().contains("another application"), "{err}");
    assert!(err.to_string().contains("app.db"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), content);

    // One that marked itself with its own application_id, even if empty.
    let path = dir.path().join("marked.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "application_id", 0x1234).unwrap();
    }
    assert!(matches!(open_err(&path).await, StoreError::Foreign { .. }));
    assert_eq!(pragma(&path, "application_id"), 0x1234);
    assert_eq!(pragma(&path, "user_version"), 0);
}

#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rf.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .apply(&[Mutation::PutJob(job(1, JobState::Queued))])
        .await
        .unwrap();
    drop(store);
    let newer = SCHEMA_VERSION + 1;
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", newer).unwrap();
        conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
    }
    let content = std::fs::read(&path).unwrap();
    let err = open_err(&path).await;
    let msg = err.to_string();
    assert!(
        matches!(err, StoreError::TooNew { found, supported, .. } if found == newer && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(msg.contains("newer than this runfleet supports"), "{msg}");
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), content);
    assert_eq!(pragma(&path, "user_version"), i64::from(newer));
}

#[tokio::test]
async fn unusable_paths_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();

    let missing = dir.path().join("no-such-dir").join("rf.db");
    let err = open_err(&missing).await;
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&missing.display().to_string()), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");
    assert!(
        !dir.path().join("no-such-dir").exists(),
        "the directory was created"
    );

    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let under_file = file.join("rf.db");
    let msg = open_err(&under_file).await.to_string();
    assert!(msg.contains("is not a directory"), "{msg}");
    assert_eq!(std::fs::read(&file).unwrap(), b"x");

    let msg = open_err(dir.path()).await.to_string();
    assert!(msg.contains("is a directory"), "{msg}");

    // Where nobody may create files (the kernel refuses even root here).
    let proc_path = Path::new("/proc/runfleet-store-test.db");
    let err = open_err(proc_path).await;
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/proc/runfleet-store-test.db"),
        "{err}"
    );
}

#[tokio::test]
async fn a_new_file_gets_wal_full_sync_and_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rf.db");
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.path(), path);
    let s = store.writer_settings().await.unwrap();
    assert_eq!(s.journal_mode, "wal");
    assert_eq!(s.synchronous, "2", "synchronous must be FULL");
    assert_eq!(s.busy_timeout_ms, "5000");
    assert_eq!(s.user_version, SCHEMA_VERSION.to_string());
    assert_eq!(s.application_id, APPLICATION_ID.to_string());
    drop(store);
    assert_eq!(pragma(&path, "user_version"), i64::from(SCHEMA_VERSION));
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        indexes,
        [
            "instances_by_pool",
            "jobs_by_state",
            "launches_by_job",
            "timeline_by_job"
        ]
    );
    // intake_since and timeline(job) are answered from an index.
    let plan = |sql: &str| -> String {
        conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .unwrap()
            .query_map([], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
            .join("; ")
    };
    let p = plan("SELECT seq, event FROM intake WHERE seq > 5 ORDER BY seq LIMIT 10");
    assert!(p.contains("INTEGER PRIMARY KEY"), "{p}");
    let p = plan("SELECT at FROM timeline WHERE job_id = 5 ORDER BY seq DESC LIMIT 10");
    assert!(p.contains("timeline_by_job"), "{p}");
    assert!(!p.contains("TEMP B-TREE"), "{p}");
}

#[tokio::test]
async fn the_status_page_columns_follow_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rf.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let mut j = job(42, JobState::Queued);
    j.repo = "acme/app".into();
    j.queued_at = 1234;
    store.apply(&[Mutation::PutJob(j.clone())]).await.unwrap();
    j.state = JobState::InProgress;
    store.apply(&[Mutation::PutJob(j)]).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let row: (String, String, i64) = conn
        .query_row(
            "SELECT state, repo, queued_at FROM jobs WHERE id = 42",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(row, ("in_progress".to_owned(), "acme/app".to_owned(), 1234));
}

#[tokio::test]
async fn a_damaged_record_is_reported_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rf.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .apply(&[Mutation::PutJob(job(9, JobState::Queued))])
        .await
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE jobs SET record = '{\"id\": 9' WHERE id = 9", [])
            .unwrap();
    }
    let err = store
        .load()
        .await
        .expect_err("a damaged record must not load");
    assert_eq!(err.kind, runfleet_core::model::ErrorKind::Invalid);
    assert!(err.message.contains("jobs row 9"), "{}", err.message);
    assert!(
        err.message.contains(&path.display().to_string()),
        "{}",
        err.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_intakes_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(dir.path().join("rf.db")).await.unwrap());
    let before = store.commits();
    let tasks: Vec<_> = (0..500u64)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .intake(&format!("g-{n}"), &event(n, JobStatus::Queued, n))
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert!(matches!(t.await.unwrap(), Intake::Stored(_)));
    }
    let commits = store.commits() - before;
    assert!(commits >= 1);
    assert!(
        commits < 500,
        "500 concurrent intakes took {commits} commits: no group commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_agree() {
    // `runfleet launch` and `runfleet serve` may share a file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rf.db");
    let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let tasks: Vec<_> = (0..300u64)
        .map(|n| {
            let s = if n % 2 == 0 { a.clone() } else { b.clone() };
            // Every delivery is sent through both stores.
            let t = if n % 2 == 0 { b.clone() } else { a.clone() };
            tokio::spawn(async move {
                let ev = event(n, JobStatus::Queued, n);
                let id = format!("shared-{n}");
                let first = s.intake(&id, &ev).await.unwrap();
                let second = t.intake(&id, &ev).await.unwrap();
                (first, second)
            })
        })
        .collect();
    for t in tasks {
        let (first, second) = t.await.unwrap();
        assert!(matches!(first, Intake::Stored(_)), "{first:?}");
        assert_eq!(second, Intake::Duplicate);
    }
    let log_a = a.intake_since(0, usize::MAX).await.unwrap();
    let log_b = b.intake_since(0, usize::MAX).await.unwrap();
    assert_eq!(log_a.len(), 300);
    assert_eq!(log_a, log_b);
    assert!(log_a.windows(2).all(|w| w[0].0 < w[1].0));
}
