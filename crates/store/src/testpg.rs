//! A throwaway PostgreSQL server for tests (feature `conformance`): its own
//! cluster in a temporary directory, on a free loopback port, password
//! authentication, `fsync=off`; stopped and deleted when dropped (and by a
//! small watchdog if the test process is killed).
//!
//! The binaries are found through `RUNFLEET_PG_BIN` (what
//! `crates/store/tests/install-postgres.sh` prints), else the newest
//! `/usr/lib/postgresql/*/bin`, else `initdb` on `PATH`. `initdb` refuses to
//! run as root, so as root the cluster runs as the `postgres` user
//! (`runuser`).
//!
//! With `CI` set (`CI=true`) a missing PostgreSQL is a test failure
//! ([`cluster_or_skip`] panics); elsewhere the test prints why and skips.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// A running throwaway cluster.
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    port: u16,
    password: String,
}

/// The user name of the cluster's superuser (the tests' login).
pub const USER: &str = "runfleet";

/// Where the PostgreSQL server binaries are, if anywhere.
pub fn find_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("RUNFLEET_PG_BIN") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").is_file() {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    })
}

/// A cluster, or `None` with the reason printed when PostgreSQL is not
/// installed here. Panics instead when `CI=true`: CI must run these tests.
pub fn cluster_or_skip() -> Option<PgCluster> {
    match PgCluster::start() {
        Ok(c) => Some(c),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
                panic!("PostgreSQL tests cannot run on CI: {e}");
            }
            eprintln!("SKIPPED: PostgreSQL tests need a local PostgreSQL: {e}");
            None
        }
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl PgCluster {
    /// initdb into a fresh temporary directory and start the server, with
    /// `fsync=off` (tests: fast, not crash-safe).
    pub fn start() -> Result<PgCluster, String> {
        Self::start_with(false)
    }

    /// [`PgCluster::start`]; `durable`: PostgreSQL's default durability
    /// (`fsync`, `synchronous_commit`), for measurements.
    pub fn start_with(durable: bool) -> Result<PgCluster, String> {
        let bin = find_bin().ok_or(
            "no initdb found (set RUNFLEET_PG_BIN, or run crates/store/tests/install-postgres.sh)",
        )?;
        let run_as = is_root().then(|| "postgres".to_owned());
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "runfleet-pg-{}-{n}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut cluster = PgCluster {
            dir,
            bin,
            run_as,
            port: 0,
            password: format!("pw-{:016x}", rand::random::<u64>()),
        };
        if let Some(user) = &cluster.run_as {
            let status = Command::new("chown")
                .arg(user)
                .arg(&cluster.dir)
                .status()
                .map_err(|e| format!("chown: {e}"))?;
            if !status.success() {
                return Err(format!(
                    "cannot give {} to the {user} user (does it exist?)",
                    cluster.dir.display()
                ));
            }
        }
        let pwfile = cluster.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", cluster.password))
            .map_err(|e| format!("{}: {e}", pwfile.display()))?;
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data().to_str().unwrap_or_default(),
                "-U",
                USER,
                &format!("--pwfile={}", pwfile.display()),
                "--auth=scram-sha-256",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        cluster.watchdog();
        let mut last = String::new();
        for _ in 0..5 {
            cluster.port = free_port().map_err(|e| format!("no free port: {e}"))?;
            let fast = if durable {
                ""
            } else {
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            };
            let opts = format!(
                "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' \
                 -c max_connections=200{fast}",
                cluster.port
            );
            let log = cluster.dir.join("log");
            match cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    cluster.data().to_str().unwrap_or_default(),
                    "-w",
                    "-t",
                    "60",
                    "-l",
                    log.to_str().unwrap_or_default(),
                    "-o",
                    &opts,
                    "start",
                ],
            ) {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    last = format!(
                        "{e}; log: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    )
                }
            }
        }
        Err(last)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let out = self
            .command(tool)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Stops the server and deletes the directory once this process is
    /// gone, however it ended.
    fn watchdog(&self) {
        let stop = format!(
            "{} {} -D {} stop -m immediate",
            self.run_as
                .as_ref()
                .map(|u| format!("runuser -u {u} --"))
                .unwrap_or_default(),
            self.bin.join("pg_ctl").display(),
            self.data().display()
        );
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {stop} >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            dir = self.dir.display()
        );
        let _ = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The login password (tests check that it never shows).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://runfleet:PASSWORD@127.0.0.1:PORT/db`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{db}?sslmode=disable",
            self.password, self.port
        )
    }

    /// Creates a new empty database and answers its URL.
    pub async fn create_database(&self) -> String {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("rf_{n}_{:x}", rand::random::<u32>());
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(client);
        let _ = task.await;
        self.url(&name)
    }

    /// Runs SQL on a database of this cluster as the superuser.
    pub async fn sql(&self, url: &str, sql: &str) {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test cluster");
        let task = tokio::spawn(conn);
        client.batch_execute(sql).await.expect("test SQL");
        drop(client);
        let _ = task.await;
    }

    /// The data directory (tests may look at the server log beside it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap_or_default(),
                "stop",
                "-m",
                "immediate",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
