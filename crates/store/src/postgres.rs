//! [`PgStore`]: the [`Store`] on a PostgreSQL database, for several `serve`
//! replicas sharing one state.
//!
//! Shape: a small pool of connections (tokio-postgres, no TLS), each with
//! its prepared statements. Every trait call is one transaction; `apply` and
//! `apply_fenced` are one explicit transaction each, so a batch lands whole
//! or not at all.
//!
//! **Intake order.** PostgreSQL sequences hand out numbers at `nextval`,
//! not at commit, so two concurrent inserters may commit seq 8 before seq 7;
//! a reader that saw 8 and moved its cursor past it would never see 7. Every
//! intake therefore takes one transaction-scoped advisory lock
//! ([`INTAKE_LOCK`]) in the very statement that draws its seq and inserts:
//! intakes commit one after the other in seq order, and PostgreSQL makes a
//! transaction visible before it releases its locks, so whoever can see seq
//! `n` can see every smaller seq that will ever exist. The price is that
//! intakes across all replicas are serialised on one lock (one commit each);
//! see the crate doc for the measured rate.
//!
//! **Lease.** One row in `lease`. `try_lease` locks it `FOR UPDATE`;
//! `apply_fenced` locks it `FOR SHARE` and checks holder and epoch in the
//! same transaction as the writes, so a write of a leader that lost the lease
//! either committed before the new epoch was taken (and the new leader loads
//! it) or is refused whole.
//!
//! **Secrets.** The URL's password is never shown: errors name the URL with
//! the password masked, and any error text from the driver is scrubbed of
//! the password before it is used.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use runfleet_core::model::{ErrorKind, Instance, IntakeEvent, Job, Launch};
use runfleet_engine::memstore::lease_rule;
use runfleet_engine::ports::{
    Fence, Intake, LeaseInfo, Mutation, PortError, PortResult, Snapshot, Store, TimelineEvent,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use crate::StoreError;
use crate::url::mask_password;

/// A schema migration for PostgreSQL, versioned like SQLite's.
#[derive(Debug, Clone, Copy)]
pub struct PgMigration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every PostgreSQL migration, oldest first; the same versions as
/// [`crate::sqlite::MIGRATIONS`], so [`crate::SCHEMA_VERSION`] names both.
pub const PG_MIGRATIONS: &[PgMigration] = &[
    PgMigration {
        version: 1,
        name: "initial",
        sql: include_str!("migrations/postgres/0001_initial.sql"),
    },
    PgMigration {
        version: 2,
        name: "lease",
        sql: include_str!("migrations/postgres/0002_lease.sql"),
    },
];

/// Advisory lock key serialising intakes ("RFLTINTK").
pub const INTAKE_LOCK: i64 = 0x5246_4C54_494E_544B;
/// Advisory lock key serialising migrations at open ("RFLTMIGR").
pub const MIGRATE_LOCK: i64 = 0x5246_4C54_4D49_4752;

/// Connections kept per store handle.
pub const MAX_CONNECTIONS: usize = 8;
/// Connect timeout when the URL sets none.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PostgreSQL implementation of [`Store`]. Cheap to share behind an
/// `Arc`; dropping it closes its connections.
pub struct PgStore {
    shown: Arc<Shown>,
    config: tokio_postgres::Config,
    idle: Mutex<Vec<Conn>>,
    slots: Semaphore,
    /// The intake writer task (group commit); closed when the store drops.
    intakes: tokio::sync::mpsc::UnboundedSender<IntakeReq>,
    /// Woken by the listener task on every `NOTIFY` of [`INTAKE_CHANNEL`].
    notified: Arc<tokio::sync::Notify>,
    /// Dropped with the store: stops the listener task.
    _listener: tokio::sync::oneshot::Sender<()>,
}

/// The `LISTEN`/`NOTIFY` channel on which every intake commit is announced,
/// so that the leader replica steps at once for a webhook another replica
/// stored.
pub const INTAKE_CHANNEL: &str = "runfleet_intake";

/// One intake waiting for the writer task.
struct IntakeReq {
    delivery: Vec<u8>,
    job_id: i64,
    json: String,
    reply: tokio::sync::oneshot::Sender<PortResult<Intake>>,
}

/// Most intakes committed in one transaction.
pub const MAX_GROUP: usize = 256;

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore")
            .field("url", &self.shown.url)
            .finish_non_exhaustive()
    }
}

/// How this store is named in messages: the masked URL, and the password
/// to scrub from any driver text.
struct Shown {
    url: String,
    password: Option<String>,
}

impl Shown {
    fn scrub(&self, text: String) -> String {
        match &self.password {
            Some(p) if !p.is_empty() && text.contains(p.as_str()) => {
                text.replace(p.as_str(), "***")
            }
            _ => text,
        }
    }

    fn error(&self, doing: &str, e: &tokio_postgres::Error) -> PortError {
        let kind = match e.code() {
            Some(c)
                if *c == SqlState::UNIQUE_VIOLATION
                    || *c == SqlState::CHECK_VIOLATION
                    || *c == SqlState::NOT_NULL_VIOLATION
                    || *c == SqlState::RAISE_EXCEPTION
                    || *c == SqlState::CHARACTER_NOT_IN_REPERTOIRE
                    || *c == SqlState::UNTRANSLATABLE_CHARACTER
                    || *c == SqlState::UNDEFINED_TABLE =>
            {
                ErrorKind::Invalid
            }
            Some(c)
                if *c == SqlState::INVALID_PASSWORD
                    || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                    || *c == SqlState::INSUFFICIENT_PRIVILEGE =>
            {
                ErrorKind::Auth
            }
            _ => ErrorKind::Transient,
        };
        PortError::new(
            kind,
            self.scrub(format!(
                "postgres store {}: {doing}: {}",
                self.url,
                describe(e)
            )),
        )
    }
}

/// The driver's error with the server's message, detail and hint.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} ({})", db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s.push_str(&format!("; {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                let text = inner.to_string();
                if !s.contains(&text) {
                    s.push_str(&format!(": {text}"));
                }
                src = inner.source();
            }
            s
        }
    }
}

/// One pooled connection and its prepared statements.
struct Conn {
    client: Client,
    stmts: HashMap<&'static str, Statement>,
}

impl Conn {
    async fn stmt(&mut self, sql: &'static str) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    async fn execute(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let s = self.stmt(sql).await?;
        self.client.execute(&s, params).await
    }

    async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let s = self.stmt(sql).await?;
        self.client.query(&s, params).await
    }
}

/// A connection taken from the pool; goes back on drop unless it broke or
/// a transaction on it was left open (its caller was cancelled between
/// `BEGIN` and `COMMIT`): such a connection is closed, which rolls the
/// transaction back, so no later caller's `COMMIT` commits it and no lock
/// it took (the lease row's) outlives it.
struct Pooled<'a> {
    store: &'a PgStore,
    conn: Option<Conn>,
    in_transaction: bool,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn.as_ref().expect("pooled connection")
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("pooled connection")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take()
            && !conn.client.is_closed()
            && !self.in_transaction
        {
            self.store
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

impl PgStore {
    /// Connects to the database a `postgres://` URL names and migrates it to
    /// [`crate::SCHEMA_VERSION`]. Refuses, changing nothing, a database that
    /// holds tables of the same names but is not a runfleet store, and one
    /// of a newer schema version.
    ///
    /// TLS is not built in: `sslmode=disable` and `prefer` (the default)
    /// connect in plain text, `sslmode=require` is refused with an error
    /// saying so. Use a loopback or private network, or a TLS-terminating
    /// proxy (pgbouncer, stunnel) on the runfleet host.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let masked = mask_password(url);
        let fail = |reason: String| StoreError::Postgres {
            url: masked.clone(),
            reason,
        };
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            // The driver's parse errors name the option, not the value, but
            // scrub anyway: the URL may not even parse far enough to tell
            // where the password is.
            let text = e.to_string();
            fail(if url.len() > 3 && text.contains(url) {
                "is not a valid PostgreSQL connection URL".to_owned()
            } else {
                format!("is not a valid PostgreSQL connection URL: {text}")
            })
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(fail(
                "sslmode=require: this runfleet is built without TLS for PostgreSQL; \
                 use sslmode=disable on a loopback or private network, or a TLS-terminating proxy"
                    .to_owned(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("runfleet");
        }
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let shown = Arc::new(Shown {
            url: masked.clone(),
            password,
        });
        let (intakes, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(intake_writer(config.clone(), shown.clone(), queue));
        let notified = Arc::new(tokio::sync::Notify::new());
        let (listener, stop) = tokio::sync::oneshot::channel();
        tokio::spawn(intake_listener(
            config.clone(),
            shown.clone(),
            notified.clone(),
            stop,
        ));
        let store = PgStore {
            shown,
            config,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(MAX_CONNECTIONS),
            intakes,
            notified,
            _listener: listener,
        };
        {
            let mut conn = store.conn().await.map_err(|e| fail(e.message))?;
            migrate(&store.shown, &mut conn.client, PG_MIGRATIONS).await?;
        }
        tracing::debug!(store = %masked, schema = crate::SCHEMA_VERSION, "postgres store open");
        Ok(store)
    }

    /// The URL, password masked.
    pub fn url(&self) -> &str {
        &self.shown.url
    }

    async fn connect(&self) -> PortResult<Conn> {
        connect(&self.config, &self.shown).await
    }

    async fn conn(&self) -> PortResult<Pooled<'_>> {
        let slot = self.slots.acquire().await.map_err(|_| {
            PortError::new(
                ErrorKind::Transient,
                format!("postgres store {}: closed", self.shown.url),
            )
        })?;
        let idle = loop {
            let c = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match c {
                Some(c) if c.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match idle {
            Some(c) => c,
            None => self.connect().await?,
        };
        Ok(Pooled {
            store: self,
            conn: Some(conn),
            in_transaction: false,
            _slot: slot,
        })
    }

    fn err(&self, doing: &str) -> impl Fn(tokio_postgres::Error) -> PortError + '_ {
        let doing = doing.to_owned();
        move |e| self.shown.error(&doing, &e)
    }

    /// Runs `body` in a transaction on one connection: COMMIT if it
    /// succeeds, ROLLBACK (or a dropped connection) otherwise.
    async fn in_transaction<T>(
        &self,
        begin: &'static str,
        doing: &str,
        body: impl AsyncFnOnce(&mut Conn) -> Result<T, TxError>,
    ) -> PortResult<T> {
        let mut conn = self.conn().await?;
        conn.in_transaction = true;
        conn.client
            .batch_execute(begin)
            .await
            .map_err(self.err(doing))?;
        let result = body(&mut *conn).await;
        match result {
            Ok(v) => {
                conn.client
                    .batch_execute("COMMIT")
                    .await
                    .map_err(self.err(&format!("{doing} (commit)")))?;
                conn.in_transaction = false;
                Ok(v)
            }
            Err(e) => {
                if conn.client.batch_execute("ROLLBACK").await.is_ok() {
                    conn.in_transaction = false;
                }
                Err(match e {
                    TxError::Db(e) => self.shown.error(doing, &e),
                    TxError::Port(e) => e,
                })
            }
        }
    }
}

/// Why a transaction body failed.
enum TxError {
    Db(tokio_postgres::Error),
    Port(PortError),
}

impl From<tokio_postgres::Error> for TxError {
    fn from(e: tokio_postgres::Error) -> Self {
        TxError::Db(e)
    }
}

async fn connect(config: &tokio_postgres::Config, shown: &Arc<Shown>) -> PortResult<Conn> {
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| shown.error("connecting", &e))?;
    let shown = shown.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(store = %shown.url, error = %shown.scrub(describe(&e)), "postgres connection ended");
        }
    });
    Ok(Conn {
        client,
        stmts: HashMap::new(),
    })
}

/// Group commit for intakes: takes whatever is queued (up to
/// [`MAX_GROUP`]) and stores it in one transaction under the intake lock,
/// so concurrent webhooks of this replica share one commit (one fsync)
/// instead of queueing for the lock one by one. If the group fails, each
/// intake is tried again alone, so one bad intake fails only its caller.
async fn intake_writer(
    config: tokio_postgres::Config,
    shown: Arc<Shown>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<IntakeReq>,
) {
    let mut conn: Option<Conn> = None;
    while let Some(first) = queue.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
            match connect(&config, &shown).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    for r in group {
                        let _ = r.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        // Even a group of one: one commit for the intake and its NOTIFY.
        let outcome = intake_group(c, &group).await.map_err(Some);
        match outcome {
            Ok(results) => {
                for (r, result) in group.into_iter().zip(results) {
                    let _ = r.reply.send(Ok(result));
                }
            }
            Err(e) => {
                if let Some(e) = e {
                    tracing::debug!(store = %shown.url, error = %shown.scrub(describe(&e)), "intake group failed, storing one by one");
                    if c.client.batch_execute("ROLLBACK").await.is_err() {
                        conn = None;
                    }
                }
                for r in group {
                    let result = match conn.as_mut() {
                        Some(c) => intake_one(c, &r)
                            .await
                            .map_err(|e| shown.error("storing an intake", &e)),
                        None => Err(PortError::new(
                            ErrorKind::Transient,
                            format!(
                                "postgres store {}: storing an intake: connection lost",
                                shown.url
                            ),
                        )),
                    };
                    let _ = r.reply.send(result);
                }
            }
        }
    }
}

/// Listens on [`INTAKE_CHANNEL`] on a connection of its own (reconnecting
/// after a second when it breaks) and wakes `notified` on each notification,
/// until `stop` resolves (the store was dropped).
async fn intake_listener(
    config: tokio_postgres::Config,
    shown: Arc<Shown>,
    notified: Arc<tokio::sync::Notify>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    use futures::StreamExt;
    loop {
        let connected = tokio::select! {
            _ = &mut stop => return,
            c = config.connect(NoTls) => c,
        };
        match connected {
            Err(e) => {
                tracing::debug!(store = %shown.url, error = %shown.scrub(describe(&e)), "intake listener cannot connect");
            }
            Ok((client, mut connection)) => {
                let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listen = client.batch_execute("LISTEN runfleet_intake");
                tokio::pin!(listen);
                let mut listening = false;
                loop {
                    tokio::select! {
                        _ = &mut stop => return,
                        r = &mut listen, if !listening => match r {
                            Ok(()) => listening = true,
                            Err(_) => break,
                        },
                        m = messages.next() => match m {
                            Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => notified.notify_one(),
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        },
                    }
                }
                tracing::debug!(store = %shown.url, "intake listener connection ended");
            }
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

const INTAKE_GROUP_SQL: &str = "WITH d AS (INSERT INTO deliveries (id, seq) \
     VALUES ($1, nextval('intake_seq')) ON CONFLICT (id) DO NOTHING RETURNING seq) \
     INSERT INTO intake (seq, job_id, event) SELECT seq, $2, $3 FROM d RETURNING seq";

async fn intake_group(
    c: &mut Conn,
    group: &[IntakeReq],
) -> Result<Vec<Intake>, tokio_postgres::Error> {
    c.client.batch_execute("BEGIN").await?;
    // Held until COMMIT: every seq drawn below commits before any later one.
    c.execute("SELECT pg_advisory_xact_lock($1)", &[&INTAKE_LOCK])
        .await?;
    let stmt = c.stmt(INTAKE_GROUP_SQL).await?;
    // Pipelined, in order: the server runs them one after the other.
    let client = &c.client;
    let rows = futures::future::try_join_all(group.iter().map(|r| async {
        client
            .query(&stmt, &[&r.delivery, &r.job_id, &r.json])
            .await
    }))
    .await?;
    // Delivered to listeners at commit (the leader steps at once).
    c.client
        .batch_execute("NOTIFY runfleet_intake; COMMIT")
        .await?;
    Ok(rows
        .iter()
        .map(|rows| match rows.first() {
            Some(r) => Intake::Stored(u(r.get(0))),
            None => Intake::Duplicate,
        })
        .collect())
}

/// One intake in one statement, so one implicit transaction: the advisory
/// lock is held from before `nextval` until the commit.
async fn intake_one(c: &mut Conn, r: &IntakeReq) -> Result<Intake, tokio_postgres::Error> {
    let rows = c
        .query(INTAKE_SQL, &[&r.delivery, &r.job_id, &r.json, &INTAKE_LOCK])
        .await?;
    if !rows.is_empty() {
        // Best effort: the intake is committed whatever this answers.
        let _ = c.client.batch_execute("NOTIFY runfleet_intake").await;
    }
    Ok(match rows.first() {
        Some(r) => Intake::Stored(u(r.get(0))),
        None => Intake::Duplicate,
    })
}

async fn migrate(
    shown: &Shown,
    client: &mut Client,
    migrations: &[PgMigration],
) -> Result<(), StoreError> {
    let latest = migrations.last().map_or(0, |m| m.version);
    let path = std::path::PathBuf::from(&shown.url);
    let fail = |version: u32, e: &tokio_postgres::Error| StoreError::Migration {
        path: path.clone(),
        version,
        reason: shown.scrub(describe(e)),
    };
    let tx = client.transaction().await.map_err(|e| fail(latest, &e))?;
    // Replicas starting together migrate one after the other.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(|e| fail(latest, &e))?;
    let ours: bool = tx
        .query_one("SELECT to_regclass('runfleet_schema') IS NOT NULL", &[])
        .await
        .map_err(|e| fail(latest, &e))?
        .get(0);
    let found: u32 = if ours {
        let v: i32 = tx
            .query_one("SELECT version FROM runfleet_schema", &[])
            .await
            .map_err(|e| fail(latest, &e))?
            .get(0);
        u32::try_from(v).unwrap_or(0)
    } else {
        let clash: Vec<String> = tx
            .query(
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_name = ANY($1) ORDER BY 1",
                &[&vec![
                    "deliveries",
                    "intake",
                    "jobs",
                    "launches",
                    "instances",
                    "meta",
                    "timeline",
                    "lease",
                ]],
            )
            .await
            .map_err(|e| fail(latest, &e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !clash.is_empty() {
            return Err(StoreError::Foreign {
                path,
                detail: format!(
                    "no runfleet_schema table, but tables named {}",
                    clash.join(", ")
                ),
            });
        }
        tx.batch_execute("CREATE TABLE runfleet_schema (version INTEGER NOT NULL); INSERT INTO runfleet_schema VALUES (0);")
            .await
            .map_err(|e| fail(latest, &e))?;
        0
    };
    if found > latest {
        return Err(StoreError::TooNew {
            path,
            found,
            supported: latest,
        });
    }
    for m in migrations.iter().filter(|m| m.version > found) {
        tx.batch_execute(m.sql)
            .await
            .map_err(|e| fail(m.version, &e))?;
        tracing::info!(store = %shown.url, version = m.version, name = m.name, "migrated");
    }
    if found < latest {
        tx.execute(
            "UPDATE runfleet_schema SET version = $1",
            &[&(latest as i32)],
        )
        .await
        .map_err(|e| fail(latest, &e))?;
    }
    tx.commit().await.map_err(|e| fail(latest, &e))
}

// ---------------------------------------------------------------------------
// The trait

const INTAKE_SQL: &str = "WITH l AS (SELECT pg_advisory_xact_lock($4)), \
     d AS (INSERT INTO deliveries (id, seq) SELECT $1, nextval('intake_seq') FROM l \
           ON CONFLICT (id) DO NOTHING RETURNING seq) \
     INSERT INTO intake (seq, job_id, event) SELECT seq, $2, $3 FROM d RETURNING seq";

#[async_trait]
impl Store for PgStore {
    async fn intake_event(&self, delivery_id: &str, event: &IntakeEvent) -> PortResult<Intake> {
        let json = to_json(&self.shown, "intake event", event)?;
        let job_id = match event {
            IntakeEvent::Job(ev) => i(ev.job_id),
            IntakeEvent::Start(_) => 0,
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || {
            PortError::new(
                ErrorKind::Transient,
                format!(
                    "postgres store {}: the intake writer stopped",
                    self.shown.url
                ),
            )
        };
        self.intakes
            .send(IntakeReq {
                delivery: delivery_id.as_bytes().to_vec(),
                job_id,
                json,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn intake_since(&self, cursor: u64, limit: usize) -> PortResult<Vec<(u64, IntakeEvent)>> {
        let Ok(cursor) = i64::try_from(cursor) else {
            return Ok(Vec::new());
        };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        let rows = conn
            .query(
                "SELECT seq, event FROM intake WHERE seq > $1 ORDER BY seq LIMIT $2",
                &[&cursor, &limit],
            )
            .await
            .map_err(self.err("reading the intake log"))?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.get(0);
                let json: &str = r.get(1);
                Ok((u(seq), from_json(&self.shown, "intake", &seq, json)?))
            })
            .collect()
    }

    async fn load(&self) -> PortResult<Snapshot> {
        let rows = self
            .in_transaction(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                "loading",
                async |c: &mut Conn| {
                    let jobs = c.query("SELECT id::text, record FROM jobs", &[]).await?;
                    let launches = c
                        .query("SELECT encode(id, 'escape'), record FROM launches", &[])
                        .await?;
                    let instances = c
                        .query("SELECT encode(id, 'escape'), record FROM instances", &[])
                        .await?;
                    let cursor = c
                        .query("SELECT value FROM meta WHERE key = 'cursor'", &[])
                        .await?;
                    Ok((jobs, launches, instances, cursor))
                },
            )
            .await?;
        let (jobs, launches, instances, cursor) = rows;
        let decode = |table: &str, rows: &[tokio_postgres::Row]| -> PortResult<Vec<_>> {
            rows.iter()
                .map(|r| {
                    let key: String = r.get(0);
                    let json: &str = r.get(1);
                    Ok((key, json.to_owned(), table.to_owned()))
                })
                .collect()
        };
        let mut jobs: Vec<Job> = decode("jobs", &jobs)?
            .iter()
            .map(|(k, j, t)| from_json(&self.shown, t, k, j))
            .collect::<PortResult<_>>()?;
        let mut launches: Vec<Launch> = decode("launches", &launches)?
            .iter()
            .map(|(k, j, t)| from_json(&self.shown, t, k, j))
            .collect::<PortResult<_>>()?;
        let mut instances: Vec<Instance> = decode("instances", &instances)?
            .iter()
            .map(|(k, j, t)| from_json(&self.shown, t, k, j))
            .collect::<PortResult<_>>()?;
        jobs.sort_by_key(|j| j.id);
        launches.sort_by(|a, b| a.id.cmp(&b.id));
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Snapshot {
            jobs,
            launches,
            instances,
            cursor: cursor.first().map_or(0, |r| u(r.get(0))),
        })
    }

    async fn apply(&self, batch: &[Mutation]) -> PortResult<()> {
        self.write(None, batch).await
    }

    async fn intake_stored_elsewhere(&self) {
        self.notified.notified().await
    }

    async fn timeline(&self, job_id: Option<u64>, limit: usize) -> PortResult<Vec<TimelineEvent>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        let rows = match job_id {
            Some(job) => {
                conn.query(
                    "SELECT at, job_id, instance_id, what FROM timeline \
                     WHERE job_id = $1 ORDER BY seq DESC LIMIT $2",
                    &[&i(job), &limit],
                )
                .await
            }
            None => {
                conn.query(
                    "SELECT at, job_id, instance_id, what FROM timeline \
                     ORDER BY seq DESC LIMIT $1",
                    &[&limit],
                )
                .await
            }
        }
        .map_err(self.err("reading the timeline"))?;
        let mut out = rows
            .iter()
            .map(|r| {
                let instance_id: Option<Vec<u8>> = r.get(2);
                let what: Vec<u8> = r.get(3);
                Ok(TimelineEvent {
                    at: u(r.get(0)),
                    job_id: r.get::<_, Option<i64>>(1).map(u),
                    instance_id: instance_id.map(|b| text(&self.shown, b)).transpose()?,
                    what: text(&self.shown, what)?,
                })
            })
            .collect::<PortResult<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    async fn try_lease(&self, holder: &str, ttl_ms: u64, now_ms: u64) -> PortResult<Option<u64>> {
        let holder = holder.to_owned();
        self.in_transaction("BEGIN", "taking the lease", async |c: &mut Conn| {
            let current = read_lease(c, "FOR UPDATE").await?;
            let Some(next) = lease_rule(current.as_ref(), &holder, ttl_ms, now_ms) else {
                return Ok(None);
            };
            let n = c
                .execute(
                    "INSERT INTO lease (name, holder, epoch, expires_at) VALUES ('leader', $1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     epoch = excluded.epoch, expires_at = excluded.expires_at \
                     WHERE lease.epoch = $4",
                    &[
                        &next.holder,
                        &i(next.epoch),
                        &i(next.expires_at),
                        &current.as_ref().map_or(0, |l| i(l.epoch)),
                    ],
                )
                .await?;
            // 0 rows: another replica created the row between our read and
            // our insert (the first lease ever); it holds it now.
            Ok((n == 1).then_some(next.epoch))
        })
        .await
    }

    async fn release_lease(&self, holder: &str) -> PortResult<()> {
        let mut conn = self.conn().await?;
        conn.execute(
            "UPDATE lease SET expires_at = 0 WHERE name = 'leader' AND holder = $1",
            &[&holder],
        )
        .await
        .map_err(self.err("releasing the lease"))?;
        Ok(())
    }

    async fn lease(&self) -> PortResult<Option<LeaseInfo>> {
        let mut conn = self.conn().await?;
        read_lease(&mut conn, "")
            .await
            .map_err(self.err("reading the lease"))
    }

    async fn apply_fenced(&self, fence: &Fence, batch: &[Mutation]) -> PortResult<()> {
        self.write(Some(fence), batch).await
    }
}

impl PgStore {
    async fn write(&self, fence: Option<&Fence>, batch: &[Mutation]) -> PortResult<()> {
        if batch.is_empty() && fence.is_none() {
            return Ok(());
        }
        let prepared = batch
            .iter()
            .map(|m| Prepared::new(&self.shown, m))
            .collect::<PortResult<Vec<_>>>()?;
        self.in_transaction("BEGIN", "applying a batch", async |c: &mut Conn| {
            if let Some(fence) = fence {
                let current = read_lease(c, "FOR SHARE").await?;
                if !fence.holds(current.as_ref()) {
                    return Err(TxError::Port(fence.refused(current.as_ref())));
                }
            }
            // Prepare (once per connection), then send every statement
            // without waiting for each answer: the server runs them in
            // order; the first error aborts the transaction.
            let mut calls = Vec::new();
            for (sql, params) in prepared.iter().flat_map(Prepared::statements) {
                calls.push((c.stmt(sql).await?, params));
            }
            let client = &c.client;
            futures::future::try_join_all(
                calls
                    .iter()
                    .map(|(stmt, params)| client.execute(stmt, params)),
            )
            .await?;
            Ok(())
        })
        .await
    }
}

async fn read_lease(
    c: &mut Conn,
    lock: &'static str,
) -> Result<Option<LeaseInfo>, tokio_postgres::Error> {
    let sql = match lock {
        "FOR UPDATE" => {
            "SELECT holder, epoch, expires_at FROM lease WHERE name = 'leader' FOR UPDATE"
        }
        "FOR SHARE" => {
            "SELECT holder, epoch, expires_at FROM lease WHERE name = 'leader' FOR SHARE"
        }
        _ => "SELECT holder, epoch, expires_at FROM lease WHERE name = 'leader'",
    };
    let rows = c.query(sql, &[]).await?;
    Ok(rows.first().map(|r| LeaseInfo {
        holder: r.get(0),
        epoch: u(r.get(1)),
        expires_at: u(r.get(2)),
    }))
}

/// A mutation with its JSON made before the transaction starts.
enum Prepared {
    Job {
        id: i64,
        state: String,
        repo: String,
        queued_at: i64,
        record: String,
    },
    Launch {
        id: Vec<u8>,
        job_id: Option<i64>,
        state: String,
        pool: String,
        record: String,
    },
    Instance {
        id: Vec<u8>,
        pool: String,
        state: String,
        launch_id: Option<Vec<u8>>,
        record: String,
    },
    DropInstance(Vec<u8>),
    DropJob(i64),
    Cursor(i64),
    Timeline {
        at: i64,
        job_id: Option<i64>,
        instance_id: Option<Vec<u8>>,
        what: Vec<u8>,
    },
}

impl Prepared {
    fn new(shown: &Shown, m: &Mutation) -> PortResult<Prepared> {
        Ok(match m {
            Mutation::PutJob(j) => Prepared::Job {
                id: i(j.id),
                state: enum_name(&j.state),
                repo: no_nul(&j.repo),
                queued_at: i(j.queued_at),
                record: to_json(shown, "job", j)?,
            },
            Mutation::PutLaunch(l) => Prepared::Launch {
                id: l.id.as_bytes().to_vec(),
                job_id: l.job_id.map(i),
                state: enum_name(&l.state),
                pool: no_nul(&l.pool),
                record: to_json(shown, "launch", l)?,
            },
            Mutation::PutInstance(x) => Prepared::Instance {
                id: x.id.as_bytes().to_vec(),
                pool: no_nul(&x.pool),
                state: enum_name(&x.state),
                launch_id: x.launch_id.as_ref().map(|l| l.as_bytes().to_vec()),
                record: to_json(shown, "instance", x)?,
            },
            Mutation::DropInstance(id) => Prepared::DropInstance(id.as_bytes().to_vec()),
            Mutation::DropJob(id) => Prepared::DropJob(i(*id)),
            Mutation::Cursor(c) => Prepared::Cursor(i(*c)),
            Mutation::Timeline(t) => Prepared::Timeline {
                at: i(t.at),
                job_id: t.job_id.map(i),
                instance_id: t.instance_id.as_ref().map(|s| s.as_bytes().to_vec()),
                what: t.what.as_bytes().to_vec(),
            },
        })
    }

    /// The statements this mutation runs, in order, with their parameters.
    fn statements(&self) -> Vec<(&'static str, Vec<&(dyn ToSql + Sync)>)> {
        match self {
            Prepared::Job {
                id,
                state,
                repo,
                queued_at,
                record,
            } => vec![(
                "INSERT INTO jobs (id, state, repo, queued_at, record) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state, repo = excluded.repo, \
                 queued_at = excluded.queued_at, record = excluded.record",
                vec![id, state, repo, queued_at, record],
            )],
            Prepared::Launch {
                id,
                job_id,
                state,
                pool,
                record,
            } => vec![(
                "INSERT INTO launches (id, job_id, state, pool, record) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET job_id = excluded.job_id, state = excluded.state, \
                 pool = excluded.pool, record = excluded.record",
                vec![id, job_id, state, pool, record],
            )],
            Prepared::Instance {
                id,
                pool,
                state,
                launch_id,
                record,
            } => vec![(
                "INSERT INTO instances (id, pool, state, launch_id, record) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET pool = excluded.pool, state = excluded.state, \
                 launch_id = excluded.launch_id, record = excluded.record",
                vec![id, pool, state, launch_id, record],
            )],
            Prepared::DropInstance(id) => vec![("DELETE FROM instances WHERE id = $1", vec![id])],
            Prepared::DropJob(id) => vec![
                ("DELETE FROM jobs WHERE id = $1", vec![id]),
                ("DELETE FROM launches WHERE job_id = $1", vec![id]),
            ],
            Prepared::Cursor(v) => vec![(
                "INSERT INTO meta (key, value) VALUES ('cursor', $1) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                vec![v],
            )],
            Prepared::Timeline {
                at,
                job_id,
                instance_id,
                what,
            } => vec![(
                "INSERT INTO timeline (at, job_id, instance_id, what) VALUES ($1, $2, $3, $4)",
                vec![at, job_id, instance_id, what],
            )],
        }
    }
}

// ---------------------------------------------------------------------------
// Encoding

fn i(v: u64) -> i64 {
    v as i64
}

fn u(v: i64) -> u64 {
    v as u64
}

fn no_nul(s: &str) -> String {
    s.replace('\0', "")
}

fn enum_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(e) => format!("unnamed: {e}"),
    }
}

fn text(shown: &Shown, bytes: Vec<u8>) -> PortResult<String> {
    String::from_utf8(bytes).map_err(|e| {
        PortError::new(
            ErrorKind::Invalid,
            format!(
                "postgres store {}: stored text is not UTF-8: {e}",
                shown.url
            ),
        )
    })
}

fn to_json<T: Serialize>(shown: &Shown, what: &str, v: &T) -> PortResult<String> {
    serde_json::to_string(v).map_err(|e| {
        PortError::new(
            ErrorKind::Invalid,
            format!("postgres store {}: cannot encode {what}: {e}", shown.url),
        )
    })
}

fn from_json<T: DeserializeOwned>(
    shown: &Shown,
    table: &str,
    key: &dyn fmt::Display,
    json: &str,
) -> PortResult<T> {
    serde_json::from_str(json).map_err(|e| {
        PortError::new(
            ErrorKind::Invalid,
            format!(
                "postgres store {}: {table} row {key} does not decode: {e}",
                shown.url
            ),
        )
    })
}
