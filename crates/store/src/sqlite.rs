//! [`SqliteStore`]: the [`Store`] on one SQLite file.
//!
//! Shape: one writer thread owns the only writing connection and commits
//! whatever is queued in one transaction (group commit), each caller's
//! operation inside its own savepoint; callers are answered only after
//! `COMMIT` returned. Reads (`load`, `intake_since`, `timeline`) run on
//! `spawn_blocking` over a small pool of read-only connections, which WAL lets
//! run beside the writer. An in-memory database has one connection only, so
//! there the writer thread serves the reads too.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use runfleet_core::model::{ErrorKind, Instance, IntakeEvent, Job, Launch};
use runfleet_engine::memstore::lease_rule;
use runfleet_engine::ports::{
    Fence, Intake, LeaseInfo, Mutation, PortError, PortResult, Snapshot, Store, TimelineEvent,
};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, params};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use crate::StoreError;

/// `PRAGMA application_id` of a runfleet database ("RFLT").
pub const APPLICATION_ID: i32 = 0x5246_4C54;

/// A schema migration: SQL applied once, in a transaction, in version order.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first. The newest version is the schema version
/// this build reads and writes; a database at a newer one is refused.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "lease",
        sql: include_str!("migrations/0002_lease.sql"),
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// How long a statement waits for another process's lock on the file.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const MAX_IDLE_READERS: usize = 4;
/// Page cache of a reader connection, in KiB as `PRAGMA cache_size` takes
/// it (negative). Readers tail the intake log and read the timeline: the
/// OS's file cache serves the rest. SQLite's default is 2 MiB each.
const READER_CACHE_KIB: i64 = -512;

/// Knobs for measuring the store, not for production: the defaults are the
/// only settings that keep every promise of this crate.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Most operations committed in one transaction; 1 disables group commit.
    pub max_group: usize,
    /// `synchronous=FULL` (true, the default) or `NORMAL` (false: a commit
    /// may be lost on power failure, so a 202 could be a lie).
    pub synchronous_full: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            max_group: 256,
            synchronous_full: true,
        }
    }
}

/// Where a store lives; `Display` names it in every error.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    File(PathBuf),
    Memory,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Memory => f.write_str(":memory:"),
        }
    }
}

impl Location {
    fn path(&self) -> PathBuf {
        match self {
            Location::File(p) => p.clone(),
            Location::Memory => PathBuf::from(":memory:"),
        }
    }
}

/// The SQLite implementation of [`Store`]. Cheap to share behind an `Arc`;
/// dropping the last handle finishes the queued writes and closes the file.
pub struct SqliteStore {
    location: Location,
    writer: Option<mpsc::Sender<Op>>,
    writer_thread: Option<JoinHandle<()>>,
    /// `None` for an in-memory database: the writer serves reads.
    readers: Option<Arc<Readers>>,
    /// Write transactions run so far (group commit makes it smaller than
    /// the number of writes).
    commits: Arc<AtomicU64>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path`, migrating
    /// it to [`SCHEMA_VERSION`]. Refuses, changing nothing, a file that is
    /// not a SQLite database, a SQLite database of another application, and a
    /// runfleet database of a newer schema version.
    pub async fn open(path: impl Into<PathBuf>) -> Result<SqliteStore, StoreError> {
        Self::open_tuned(Location::File(path.into()), Tuning::default()).await
    }

    /// A private in-memory database, gone when the store is dropped.
    pub async fn open_in_memory() -> Result<SqliteStore, StoreError> {
        Self::open_tuned(Location::Memory, Tuning::default()).await
    }

    /// [`SqliteStore::open`] with measurement knobs (benchmarks only).
    #[doc(hidden)]
    pub async fn open_with_tuning(
        path: impl Into<PathBuf>,
        tuning: Tuning,
    ) -> Result<SqliteStore, StoreError> {
        Self::open_tuned(Location::File(path.into()), tuning).await
    }

    async fn open_tuned(location: Location, tuning: Tuning) -> Result<SqliteStore, StoreError> {
        let loc = location.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(loc, tuning))
            .await
            .map_err(|e| StoreError::Open {
                path: location.path(),
                reason: format!("the opening task failed: {e}"),
            })?
    }

    fn open_blocking(location: Location, tuning: Tuning) -> Result<SqliteStore, StoreError> {
        let conn = open_writer(&location, tuning)?;
        let readers = match &location {
            Location::File(path) => {
                let readers = Readers {
                    path: path.clone(),
                    idle: Mutex::new(Vec::new()),
                };
                // Open one now so that a problem shows at open, not at the first read.
                let first = open_reader(path).map_err(|e| open_error(&location, "a reader", &e))?;
                readers
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(first);
                Some(Arc::new(readers))
            }
            Location::Memory => None,
        };
        let (tx, rx) = mpsc::channel();
        let name = format!("runfleet-store-writer({location})");
        let max_group = tuning.max_group.max(1);
        let commits = Arc::new(AtomicU64::new(0));
        let writer_thread = std::thread::Builder::new()
            .name(name)
            .spawn({
                let location = location.to_string();
                let commits = commits.clone();
                move || run_writer(conn, rx, max_group, &location, &commits)
            })
            .map_err(|e| StoreError::Open {
                path: location.path(),
                reason: format!("cannot start the writer thread: {e}"),
            })?;
        tracing::debug!(store = %location, schema = SCHEMA_VERSION, "sqlite store open");
        Ok(SqliteStore {
            location,
            writer: Some(tx),
            writer_thread: Some(writer_thread),
            readers,
            commits,
        })
    }

    /// The database file (`:memory:` for an in-memory store).
    pub fn path(&self) -> PathBuf {
        self.location.path()
    }

    /// Write transactions committed since open (tests and benchmarks: with
    /// group commit, fewer than the writes).
    #[doc(hidden)]
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The writer connection's settings, as SQLite reports them (tests).
    #[doc(hidden)]
    pub async fn writer_settings(&self) -> PortResult<WriterSettings> {
        let loc = self.location.to_string();
        self.on_writer(move |conn| {
            let q = |name: &str| -> rusqlite::Result<String> {
                conn.query_row(&format!("PRAGMA {name}"), [], |r| {
                    r.get::<_, rusqlite::types::Value>(0).map(|v| match v {
                        rusqlite::types::Value::Integer(i) => i.to_string(),
                        rusqlite::types::Value::Text(t) => t,
                        other => format!("{other:?}"),
                    })
                })
            };
            (|| {
                Ok(WriterSettings {
                    journal_mode: q("journal_mode")?,
                    synchronous: q("synchronous")?,
                    busy_timeout_ms: q("busy_timeout")?,
                    user_version: q("user_version")?,
                    application_id: q("application_id")?,
                })
            })()
            .map_err(|e| db_error(&loc, "reading settings", e))
        })
        .await
    }

    async fn send<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<PortResult<T>>) -> Op,
    ) -> PortResult<T> {
        let (tx, rx) = oneshot::channel();
        let writer = self.writer.as_ref().ok_or_else(|| self.stopped())?;
        writer.send(make(tx)).map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    fn stopped(&self) -> PortError {
        PortError::new(
            ErrorKind::Transient,
            format!("sqlite store {}: the writer thread stopped", self.location),
        )
    }

    /// Runs `f` on the writer thread, outside any write transaction.
    async fn on_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> PortResult<T> + Send + 'static,
    ) -> PortResult<T> {
        self.send(|reply| {
            Op::Read(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
        })
        .await
    }

    /// Runs a read on a reader connection (or on the writer, in memory).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> PortResult<T> + Send + 'static,
    ) -> PortResult<T> {
        match &self.readers {
            None => self.on_writer(f).await,
            Some(readers) => {
                let readers = readers.clone();
                tokio::task::spawn_blocking(move || readers.with(f))
                    .await
                    .map_err(|e| {
                        PortError::new(
                            ErrorKind::Transient,
                            format!("sqlite store {}: read task failed: {e}", self.location),
                        )
                    })?
            }
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and exit;
        // waiting for it means the file is closed when drop returns.
        self.writer.take();
        if let Some(handle) = self.writer_thread.take()
            && handle.join().is_err()
        {
            tracing::error!(store = %self.location, "sqlite store writer thread panicked");
        }
    }
}

/// What `PRAGMA` says on the writer connection.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterSettings {
    pub journal_mode: String,
    /// 2 = FULL, 1 = NORMAL.
    pub synchronous: String,
    pub busy_timeout_ms: String,
    pub user_version: String,
    pub application_id: String,
}

#[async_trait]
impl Store for SqliteStore {
    async fn intake_event(&self, delivery_id: &str, event: &IntakeEvent) -> PortResult<Intake> {
        let event_json = to_json(&self.location, "intake event", event)?;
        let op = IntakeOp {
            delivery: delivery_id.to_owned(),
            // Start requests have no job: 0 (GitHub job ids start at 1).
            job_id: match event {
                IntakeEvent::Job(ev) => i(ev.job_id),
                IntakeEvent::Start(_) => 0,
            },
            event_json,
        };
        self.send(|reply| Op::Write(WriteOp::Intake(op, reply)))
            .await
    }

    async fn intake_since(&self, cursor: u64, limit: usize) -> PortResult<Vec<(u64, IntakeEvent)>> {
        // Sequence numbers are positive i64s: nothing lies after a larger cursor.
        let Ok(cursor) = i64::try_from(cursor) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let loc = self.location.to_string();
        self.read(move |conn| {
            let run = || -> rusqlite::Result<Vec<(i64, String)>> {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, event FROM intake WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows =
                    stmt.query_map(params![cursor, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            };
            let rows = run().map_err(|e| db_error(&loc, "reading the intake log", e))?;
            rows.into_iter()
                .map(|(seq, json)| Ok((u(seq), from_json(&loc, "intake", &seq, &json)?)))
                .collect()
        })
        .await
    }

    async fn load(&self) -> PortResult<Snapshot> {
        let loc = self.location.to_string();
        self.read(move |conn| load(conn, &loc)).await
    }

    async fn apply(&self, batch: &[Mutation]) -> PortResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let prepared = batch
            .iter()
            .map(|m| Prepared::new(&self.location, m))
            .collect::<PortResult<Vec<_>>>()?;
        self.send(|reply| Op::Write(WriteOp::Apply(prepared, None, reply)))
            .await
    }

    async fn try_lease(&self, holder: &str, ttl_ms: u64, now_ms: u64) -> PortResult<Option<u64>> {
        let op = LeaseOp::Take {
            holder: holder.to_owned(),
            ttl_ms,
            now_ms,
        };
        self.send(|reply| Op::Write(WriteOp::Lease(op, reply)))
            .await
    }

    async fn release_lease(&self, holder: &str) -> PortResult<()> {
        let op = LeaseOp::Release {
            holder: holder.to_owned(),
        };
        self.send(|reply| Op::Write(WriteOp::Lease(op, reply)))
            .await
            .map(drop)
    }

    async fn lease(&self) -> PortResult<Option<LeaseInfo>> {
        let loc = self.location.to_string();
        self.read(move |conn| read_lease(conn).map_err(|e| db_error(&loc, "reading the lease", e)))
            .await
    }

    async fn apply_fenced(&self, fence: &Fence, batch: &[Mutation]) -> PortResult<()> {
        let prepared = batch
            .iter()
            .map(|m| Prepared::new(&self.location, m))
            .collect::<PortResult<Vec<_>>>()?;
        self.send(|reply| Op::Write(WriteOp::Apply(prepared, Some(fence.clone()), reply)))
            .await
    }

    async fn timeline(&self, job_id: Option<u64>, limit: usize) -> PortResult<Vec<TimelineEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let loc = self.location.to_string();
        self.read(move |conn| {
            let run = || -> rusqlite::Result<Vec<TimelineEvent>> {
                let row = |r: &rusqlite::Row<'_>| {
                    Ok(TimelineEvent {
                        at: u(r.get(0)?),
                        job_id: r.get::<_, Option<i64>>(1)?.map(u),
                        instance_id: r.get(2)?,
                        what: r.get(3)?,
                    })
                };
                let mut out = match job_id {
                    Some(job) => {
                        let mut stmt = conn.prepare_cached(
                            "SELECT at, job_id, instance_id, what FROM timeline \
                             WHERE job_id = ?1 ORDER BY seq DESC LIMIT ?2",
                        )?;
                        stmt.query_map(params![i(job), limit], row)?
                            .collect::<Result<Vec<_>, _>>()?
                    }
                    None => {
                        let mut stmt = conn.prepare_cached(
                            "SELECT at, job_id, instance_id, what FROM timeline \
                             ORDER BY seq DESC LIMIT ?1",
                        )?;
                        stmt.query_map(params![limit], row)?
                            .collect::<Result<Vec<_>, _>>()?
                    }
                };
                out.reverse();
                Ok(out)
            };
            run().map_err(|e| db_error(&loc, "reading the timeline", e))
        })
        .await
    }
}

// ---------------------------------------------------------------------------
// Opening and migrating

fn open_writer(location: &Location, tuning: Tuning) -> Result<Connection, StoreError> {
    // No SQLITE_OPEN_URI: the path is a path, never a `file:` URI.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match location {
        Location::Memory => Connection::open_in_memory_with_flags(flags),
        Location::File(path) => {
            check_path(location, path)?;
            Connection::open_with_flags(path, flags)
        }
    }
    .map_err(|e| open_error(location, "the database", &e))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| open_error(location, "the database", &e))?;

    // Read before anything may write: a file that is not ours is refused untouched.
    let probe = |conn: &Connection| -> rusqlite::Result<(i32, u32, i64)> {
        let app: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
        let version: u32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
        Ok((app, version, objects))
    };
    let (app, version, objects) =
        probe(&conn).map_err(|e| open_error(location, "the database", &e))?;
    check_ownership(location, app, version, objects)?;
    if conn.is_readonly("main").unwrap_or(false) {
        return Err(StoreError::Open {
            path: location.path(),
            reason: "the file is read-only for this user".to_owned(),
        });
    }

    if let Location::File(_) = location {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| open_error(location, "the database in WAL mode", &e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                path: location.path(),
                reason: format!("SQLite refused WAL journal mode (got {mode})"),
            });
        }
    }
    let sync = if tuning.synchronous_full {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(|e| open_error(location, "the database", &e))?;
    migrate(location, &conn, MIGRATIONS)?;
    Ok(conn)
}

/// Errors that name the path problem before SQLite's less helpful
/// "unable to open database file".
fn check_path(location: &Location, path: &Path) -> Result<(), StoreError> {
    let fail = |reason: String| {
        Err(StoreError::Open {
            path: location.path(),
            reason,
        })
    };
    if path.is_dir() {
        return fail("is a directory, not a database file".to_owned());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => fail(format!("{} is not a directory", parent.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fail(format!("directory {} does not exist", parent.display()))
        }
        Err(e) => fail(format!("cannot use directory {}: {e}", parent.display())),
    }
}

fn check_ownership(
    location: &Location,
    app: i32,
    version: u32,
    objects: i64,
) -> Result<(), StoreError> {
    let ours = app == APPLICATION_ID;
    let blank = app == 0 && version == 0 && objects == 0;
    if !ours && !blank {
        return Err(StoreError::Foreign {
            path: location.path(),
            detail: format!(
                "application_id {app:#x}, user_version {version}, {objects} schema objects"
            ),
        });
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: location.path(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Applies the migrations newer than the database's `user_version`, all in
/// one transaction together with the new version number: either the
/// database moves to the newest version or it stays as it was.
fn migrate(
    location: &Location,
    conn: &Connection,
    migrations: &[Migration],
) -> Result<(), StoreError> {
    let latest = migrations.last().map_or(0, |m| m.version);
    let fail = |version: u32, e: &rusqlite::Error| StoreError::Migration {
        path: location.path(),
        version,
        reason: e.to_string(),
    };
    // IMMEDIATE: two processes opening a new file at once migrate one after the other.
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| fail(latest, &e))?;
    let result = (|| -> Result<(), StoreError> {
        let found: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| fail(latest, &e))?;
        if found > latest {
            return Err(StoreError::TooNew {
                path: location.path(),
                found,
                supported: latest,
            });
        }
        for m in migrations.iter().filter(|m| m.version > found) {
            conn.execute_batch(m.sql).map_err(|e| fail(m.version, &e))?;
            tracing::info!(store = %location, version = m.version, name = m.name, "migrated");
        }
        if found < latest {
            conn.pragma_update(None, "user_version", latest)
                .map_err(|e| fail(latest, &e))?;
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(|e| fail(latest, &e))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT").map_err(|e| fail(latest, &e)),
        Err(e) => {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Err(e)
        }
    }
}

fn open_error(location: &Location, what: &str, e: &rusqlite::Error) -> StoreError {
    let path = location.path();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => StoreError::NotADatabase {
            path,
            reason: e.to_string(),
        },
        Some(ErrorCode::DatabaseCorrupt) => StoreError::NotADatabase {
            path,
            reason: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Open {
            path,
            reason: format!(
                "cannot open {what}: locked by another process for more than {}s",
                BUSY_TIMEOUT.as_secs()
            ),
        },
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied | ErrorCode::ReadOnly) => {
            StoreError::Open {
                path,
                reason: format!(
                    "cannot open {what}: {e} (is the file and its directory writable by this user?)"
                ),
            }
        }
        _ => StoreError::Open {
            path,
            reason: format!("cannot open {what}: {e}"),
        },
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", true)?;
    conn.pragma_update(None, "cache_size", READER_CACHE_KIB)?;
    Ok(conn)
}

/// Idle reader connections; a read takes one (or opens one) and gives it back.
struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> PortResult<T>) -> PortResult<T> {
        let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match taken {
            Some(c) => c,
            None => open_reader(&self.path)
                .map_err(|e| db_error(&self.path.display().to_string(), "opening a reader", e))?,
        };
        let out = f(&mut conn);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE_READERS {
            idle.push(conn);
        }
        out
    }
}

// ---------------------------------------------------------------------------
// The writer

type Reply<T> = oneshot::Sender<PortResult<T>>;

enum Op {
    Write(WriteOp),
    Read(Box<dyn FnOnce(&mut Connection) + Send>),
}

enum WriteOp {
    Intake(IntakeOp, Reply<Intake>),
    /// A batch, fenced by the lease when a fence is given.
    Apply(Vec<Prepared>, Option<Fence>, Reply<()>),
    Lease(LeaseOp, Reply<Option<u64>>),
}

enum LeaseOp {
    Take {
        holder: String,
        ttl_ms: u64,
        now_ms: u64,
    },
    Release {
        holder: String,
    },
}

struct IntakeOp {
    delivery: String,
    job_id: i64,
    event_json: String,
}

/// A mutation with its JSON already made (on the caller's task, not the writer).
enum Prepared {
    Job {
        id: i64,
        state: String,
        repo: String,
        queued_at: i64,
        record: String,
    },
    Launch {
        id: String,
        job_id: Option<i64>,
        state: String,
        pool: String,
        record: String,
    },
    Instance {
        id: String,
        pool: String,
        state: String,
        launch_id: Option<String>,
        record: String,
    },
    DropInstance(String),
    DropJob(i64),
    Cursor(i64),
    Timeline {
        at: i64,
        job_id: Option<i64>,
        instance_id: Option<String>,
        what: String,
    },
}

impl Prepared {
    fn new(loc: &Location, m: &Mutation) -> PortResult<Prepared> {
        Ok(match m {
            Mutation::PutJob(j) => Prepared::Job {
                id: i(j.id),
                state: enum_name(&j.state),
                repo: j.repo.clone(),
                queued_at: i(j.queued_at),
                record: to_json(loc, "job", j)?,
            },
            Mutation::PutLaunch(l) => Prepared::Launch {
                id: l.id.clone(),
                job_id: l.job_id.map(i),
                state: enum_name(&l.state),
                pool: l.pool.clone(),
                record: to_json(loc, "launch", l)?,
            },
            Mutation::PutInstance(x) => Prepared::Instance {
                id: x.id.clone(),
                pool: x.pool.clone(),
                state: enum_name(&x.state),
                launch_id: x.launch_id.clone(),
                record: to_json(loc, "instance", x)?,
            },
            Mutation::DropInstance(id) => Prepared::DropInstance(id.clone()),
            Mutation::DropJob(id) => Prepared::DropJob(i(*id)),
            Mutation::Cursor(c) => Prepared::Cursor(i(*c)),
            Mutation::Timeline(t) => Prepared::Timeline {
                at: i(t.at),
                job_id: t.job_id.map(i),
                instance_id: t.instance_id.clone(),
                what: t.what.clone(),
            },
        })
    }

    fn execute(&self, conn: &Connection) -> rusqlite::Result<()> {
        match self {
            Prepared::Job { id, state, repo, queued_at, record } => conn
                .prepare_cached(
                    "INSERT INTO jobs (id, state, repo, queued_at, record) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, repo = excluded.repo, \
                     queued_at = excluded.queued_at, record = excluded.record",
                )?
                .execute(params![id, state, repo, queued_at, record])
                .map(drop),
            Prepared::Launch { id, job_id, state, pool, record } => conn
                .prepare_cached(
                    "INSERT INTO launches (id, job_id, state, pool, record) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (id) DO UPDATE SET job_id = excluded.job_id, state = excluded.state, \
                     pool = excluded.pool, record = excluded.record",
                )?
                .execute(params![id, job_id, state, pool, record])
                .map(drop),
            Prepared::Instance { id, pool, state, launch_id, record } => conn
                .prepare_cached(
                    "INSERT INTO instances (id, pool, state, launch_id, record) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (id) DO UPDATE SET pool = excluded.pool, state = excluded.state, \
                     launch_id = excluded.launch_id, record = excluded.record",
                )?
                .execute(params![id, pool, state, launch_id, record])
                .map(drop),
            Prepared::DropInstance(id) => conn
                .prepare_cached("DELETE FROM instances WHERE id = ?1")?
                .execute(params![id])
                .map(drop),
            Prepared::DropJob(id) => {
                conn.prepare_cached("DELETE FROM jobs WHERE id = ?1")?.execute(params![id])?;
                conn.prepare_cached("DELETE FROM launches WHERE job_id = ?1")?
                    .execute(params![id])
                    .map(drop)
            }
            Prepared::Cursor(c) => conn
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES ('cursor', ?1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![c])
                .map(drop),
            Prepared::Timeline { at, job_id, instance_id, what } => conn
                .prepare_cached(
                    "INSERT INTO timeline (at, job_id, instance_id, what) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![at, job_id, instance_id, what])
                .map(drop),
        }
    }
}

fn execute_intake(conn: &Connection, op: &IntakeOp) -> rusqlite::Result<Intake> {
    let seen: Option<i64> = conn
        .prepare_cached("SELECT seq FROM deliveries WHERE id = ?1")?
        .query_row(params![op.delivery], |r| r.get(0))
        .optional()?;
    if seen.is_some() {
        return Ok(Intake::Duplicate);
    }
    conn.prepare_cached("INSERT INTO intake (job_id, event) VALUES (?1, ?2)")?
        .execute(params![op.job_id, op.event_json])?;
    let seq = conn.last_insert_rowid();
    conn.prepare_cached("INSERT INTO deliveries (id, seq) VALUES (?1, ?2)")?
        .execute(params![op.delivery, seq])?;
    Ok(Intake::Stored(u(seq)))
}

/// The writer loop: take everything queued (up to `max_group`), commit the
/// writes in one transaction, answer, then serve the reads.
fn run_writer(
    mut conn: Connection,
    rx: mpsc::Receiver<Op>,
    max_group: usize,
    location: &str,
    commits: &AtomicU64,
) {
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(op) = next {
            match op {
                Op::Write(w) => writes.push(w),
                Op::Read(r) => reads.push(r),
            }
            next = if writes.len() + reads.len() < max_group {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if !writes.is_empty() {
            commit_group(&conn, location, std::mem::take(&mut writes), commits);
        }
        for read in reads.drain(..) {
            read(&mut conn);
        }
    }
}

enum Done {
    Intake(Intake),
    Applied,
    Lease(Option<u64>),
}

/// Why an operation of a group failed: the database, or the fence.
enum OpError {
    Db(rusqlite::Error),
    Port(PortError),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Db(e)
    }
}

fn read_lease(conn: &Connection) -> rusqlite::Result<Option<LeaseInfo>> {
    conn.prepare_cached("SELECT holder, epoch, expires_at FROM lease WHERE name = 'leader'")?
        .query_row([], |r| {
            Ok(LeaseInfo {
                holder: r.get(0)?,
                epoch: u(r.get(1)?),
                expires_at: u(r.get(2)?),
            })
        })
        .optional()
}

fn execute_lease(conn: &Connection, op: &LeaseOp) -> rusqlite::Result<Option<u64>> {
    let current = read_lease(conn)?;
    match op {
        LeaseOp::Take {
            holder,
            ttl_ms,
            now_ms,
        } => {
            let Some(next) = lease_rule(current.as_ref(), holder, *ttl_ms, *now_ms) else {
                return Ok(None);
            };
            conn.prepare_cached(
                "INSERT INTO lease (name, holder, epoch, expires_at) VALUES ('leader', ?1, ?2, ?3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = excluded.epoch, \
                 expires_at = excluded.expires_at",
            )?
            .execute(params![next.holder, i(next.epoch), i(next.expires_at)])?;
            Ok(Some(next.epoch))
        }
        LeaseOp::Release { holder } => {
            conn.prepare_cached(
                "UPDATE lease SET expires_at = 0 WHERE name = 'leader' AND holder = ?1",
            )?
            .execute(params![holder])?;
            Ok(None)
        }
    }
}

fn commit_group(conn: &Connection, location: &str, ops: Vec<WriteOp>, commits: &AtomicU64) {
    let outcomes = run_group(conn, location, &ops);
    commits.fetch_add(1, Ordering::Relaxed);
    for (op, outcome) in ops.into_iter().zip(outcomes) {
        // A caller that went away (its future dropped) is simply not told.
        match op {
            WriteOp::Intake(_, reply) => {
                let _ = reply.send(outcome.map(|d| match d {
                    Done::Intake(i) => i,
                    _ => unreachable!("an intake answers with an Intake"),
                }));
            }
            WriteOp::Apply(_, _, reply) => {
                let _ = reply.send(outcome.map(drop));
            }
            WriteOp::Lease(_, reply) => {
                let _ = reply.send(outcome.map(|d| match d {
                    Done::Lease(epoch) => epoch,
                    _ => unreachable!("a lease operation answers with an epoch"),
                }));
            }
        }
    }
}

/// One transaction for the whole group, one savepoint per operation: an
/// operation that fails is rolled back alone and answered with its error;
/// if the transaction itself fails (or `COMMIT` does), every operation is
/// answered with that error and nothing of the group is stored.
fn run_group(conn: &Connection, location: &str, ops: &[WriteOp]) -> Vec<PortResult<Done>> {
    let all = |e: PortError| ops.iter().map(|_| Err(e.clone())).collect();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return all(db_error(location, "starting a write transaction", e));
    }
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        if let Err(e) = conn.execute_batch("SAVEPOINT op") {
            return abort(conn, all(db_error(location, "starting a savepoint", e)));
        }
        let result = match op {
            WriteOp::Intake(op, _) => execute_intake(conn, op)
                .map(Done::Intake)
                .map_err(OpError::Db),
            WriteOp::Apply(batch, fence, _) => (|| {
                if let Some(fence) = fence {
                    let current = read_lease(conn)?;
                    if !fence.holds(current.as_ref()) {
                        return Err(OpError::Port(fence.refused(current.as_ref())));
                    }
                }
                batch.iter().try_for_each(|m| m.execute(conn))?;
                Ok(Done::Applied)
            })(),
            WriteOp::Lease(op, _) => execute_lease(conn, op)
                .map(Done::Lease)
                .map_err(OpError::Db),
        };
        match result {
            Ok(done) => {
                if let Err(e) = conn.execute_batch("RELEASE op") {
                    return abort(conn, all(db_error(location, "releasing a savepoint", e)));
                }
                outcomes.push(Ok(done));
            }
            Err(e) => {
                let what = match op {
                    WriteOp::Intake(..) => "storing an intake",
                    WriteOp::Apply(..) => "applying a batch",
                    WriteOp::Lease(..) => "taking the lease",
                };
                let err = match e {
                    OpError::Db(e) => db_error(location, what, e),
                    OpError::Port(e) => e,
                };
                // Some errors (I/O, full disk) make SQLite roll back the whole
                // transaction: then nothing of the group may be claimed.
                if conn.is_autocommit() {
                    return all(err);
                }
                if let Err(e) = conn.execute_batch("ROLLBACK TO op; RELEASE op") {
                    return abort(conn, all(db_error(location, "rolling back a savepoint", e)));
                }
                outcomes.push(Err(err));
            }
        }
    }
    match conn.execute_batch("COMMIT") {
        Ok(()) => outcomes,
        Err(e) => abort(conn, all(db_error(location, "committing", e))),
    }
}

fn abort<T>(conn: &Connection, outcomes: T) -> T {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcomes
}

// ---------------------------------------------------------------------------
// Reading

fn load(conn: &mut Connection, loc: &str) -> PortResult<Snapshot> {
    // One read transaction: the four reads see the same committed state.
    let tx = conn
        .transaction()
        .map_err(|e| db_error(loc, "starting a read", e))?;
    let records = |sql: &str| -> PortResult<Vec<(String, String)>> {
        let run = || -> rusqlite::Result<Vec<(String, String)>> {
            let mut stmt = tx.prepare_cached(sql)?;
            let rows = stmt.query_map([], |r| {
                let key: rusqlite::types::Value = r.get(0)?;
                let key = match key {
                    rusqlite::types::Value::Integer(n) => u(n).to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                };
                Ok((key, r.get(1)?))
            })?;
            rows.collect()
        };
        run().map_err(|e| db_error(loc, "loading", e))
    };
    let mut jobs: Vec<Job> = records("SELECT id, record FROM jobs")?
        .iter()
        .map(|(id, json)| from_json(loc, "jobs", id, json))
        .collect::<PortResult<_>>()?;
    let mut launches: Vec<Launch> = records("SELECT id, record FROM launches")?
        .iter()
        .map(|(id, json)| from_json(loc, "launches", id, json))
        .collect::<PortResult<_>>()?;
    let mut instances: Vec<Instance> = records("SELECT id, record FROM instances")?
        .iter()
        .map(|(id, json)| from_json(loc, "instances", id, json))
        .collect::<PortResult<_>>()?;
    let cursor: Option<i64> = tx
        .prepare_cached("SELECT value FROM meta WHERE key = 'cursor'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)).optional())
        .map_err(|e| db_error(loc, "loading the cursor", e))?;
    drop(tx);
    // The reference store's order: by key, as Rust orders u64 and String.
    jobs.sort_by_key(|j| j.id);
    launches.sort_by(|a, b| a.id.cmp(&b.id));
    instances.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Snapshot {
        jobs,
        launches,
        instances,
        cursor: cursor.map_or(0, u),
    })
}

// ---------------------------------------------------------------------------
// Encoding

/// u64 -> i64, bit for bit (SQLite integers are signed 64-bit).
fn i(v: u64) -> i64 {
    v as i64
}

/// i64 -> u64, bit for bit.
fn u(v: i64) -> u64 {
    v as u64
}

/// The serde name of a unit enum variant (`"in_progress"`).
fn enum_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => format!("unnamed: {e}"),
    }
}

fn to_json<T: Serialize>(loc: &Location, what: &str, v: &T) -> PortResult<String> {
    serde_json::to_string(v).map_err(|e| {
        PortError::new(
            ErrorKind::Invalid,
            format!("sqlite store {loc}: cannot encode {what}: {e}"),
        )
    })
}

fn from_json<T: DeserializeOwned>(
    loc: &str,
    table: &str,
    key: &dyn fmt::Display,
    json: &str,
) -> PortResult<T> {
    serde_json::from_str(json).map_err(|e| {
        PortError::new(
            ErrorKind::Invalid,
            format!("sqlite store {loc}: {table} row {key} does not decode: {e}"),
        )
    })
}

/// Maps a SQLite error to the closed set: constraint violations and damaged
/// files are `Invalid` (trying again will not help), everything else
/// (locks held too long, I/O errors, a full disk) is `Transient`.
fn db_error(loc: &str, doing: &str, e: rusqlite::Error) -> PortError {
    let kind = match e.sqlite_error_code() {
        Some(
            ErrorCode::ConstraintViolation | ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase,
        ) => ErrorKind::Invalid,
        _ => ErrorKind::Transient,
    };
    PortError::new(kind, format!("sqlite store {loc}: {doing}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> u32 {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_failing_migration_changes_nothing() {
        let conn = Connection::open_in_memory().unwrap();
        let loc = Location::Memory;
        let bad = [
            Migration {
                version: 1,
                name: "ok",
                sql: "CREATE TABLE a (x INTEGER);",
            },
            Migration {
                version: 2,
                name: "bad",
                sql: "CREATE TABLE b (y INTEGER); SELECT * FROM nowhere;",
            },
        ];
        let err = migrate(&loc, &conn, &bad).unwrap_err();
        assert!(
            matches!(&err, StoreError::Migration { version: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("nowhere"), "{err}");
        assert_eq!(version(&conn), 0);
        assert!(tables(&conn).is_empty(), "{:?}", tables(&conn));
        assert!(conn.is_autocommit());
    }

    #[test]
    fn migrations_run_once_in_order() {
        let conn = Connection::open_in_memory().unwrap();
        let loc = Location::Memory;
        let first = [Migration {
            version: 1,
            name: "a",
            sql: "CREATE TABLE a (x INTEGER);",
        }];
        migrate(&loc, &conn, &first).unwrap();
        assert_eq!(version(&conn), 1);
        // Running them again is a no-op (CREATE TABLE a again would fail).
        migrate(&loc, &conn, &first).unwrap();
        let second = [
            first[0],
            Migration {
                version: 2,
                name: "b",
                sql: "ALTER TABLE a ADD COLUMN y TEXT;",
            },
        ];
        migrate(&loc, &conn, &second).unwrap();
        assert_eq!(version(&conn), 2);
        assert_eq!(tables(&conn), ["a"]);
        let app: i32 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .unwrap();
        assert_eq!(app, APPLICATION_ID);
        // A database ahead of the given migrations is refused.
        let err = migrate(&loc, &conn, &first).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooNew {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn the_shipped_migrations_are_numbered_one_by_one() {
        for (n, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, n + 1, "{}", m.name);
        }
        let conn = Connection::open_in_memory().unwrap();
        migrate(&Location::Memory, &conn, MIGRATIONS).unwrap();
        assert_eq!(
            tables(&conn),
            [
                "deliveries",
                "instances",
                "intake",
                "jobs",
                "launches",
                "lease",
                "meta",
                "sqlite_sequence",
                "timeline"
            ]
        );
    }

    #[test]
    fn u64_round_trips_through_i64() {
        for v in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            assert_eq!(u(i(v)), v);
        }
    }
}
