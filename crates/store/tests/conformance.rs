//! The conformance suite against the in-memory reference and SQLite (a
//! file in a temporary directory, and `:memory:`).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use runfleet_engine::ports::Store;
use runfleet_store::SqliteStore;
use runfleet_store::conformance::{MemDb, TestDb};

/// A SQLite file in its own temporary directory; every `open` is a new
/// `SqliteStore` (its own writer thread and readers) on that file.
struct FileDb {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl FileDb {
    fn new() -> FileDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("runfleet.db");
        FileDb { _dir: dir, path }
    }
}

#[async_trait]
impl TestDb for FileDb {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(SqliteStore::open(&self.path).await.expect("open"))
    }
    async fn fail_timeline_what(&self, what: &str) -> bool {
        // A trigger installed from outside, as a fault injector: the store's
        // own schema never has one.
        let conn = rusqlite::Connection::open(&self.path).expect("open for the trigger");
        conn.execute_batch(&format!(
            "CREATE TRIGGER poison BEFORE INSERT ON timeline WHEN NEW.what = '{}' \
             BEGIN SELECT RAISE(ABORT, 'poisoned timeline entry'); END;",
            what.replace('\'', "''")
        ))
        .expect("create trigger");
        true
    }
}

/// `sqlite://:memory:`: one store, every handle the same.
struct MemoryDb(Arc<SqliteStore>);

#[async_trait]
impl TestDb for MemoryDb {
    async fn open(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
    async fn fail_timeline_what(&self, _what: &str) -> bool {
        false
    }
}

mod reference {
    use super::*;
    runfleet_store::conformance_tests!(|| async { Box::new(MemDb::new()) as Box<dyn TestDb> });
}

mod sqlite_file {
    use super::*;
    runfleet_store::conformance_tests!(|| async { Box::new(FileDb::new()) as Box<dyn TestDb> });
}

mod sqlite_memory {
    use super::*;
    runfleet_store::conformance_tests!(|| async {
        let store = SqliteStore::open_in_memory().await.expect("open :memory:");
        Box::new(MemoryDb(Arc::new(store))) as Box<dyn TestDb>
    });
}
