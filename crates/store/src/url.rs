//! `server.store` URLs: which backend, and where.

use std::path::PathBuf;

use crate::StoreError;

/// A parsed `server.store` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH`: a database file (created if missing).
    SqliteFile(PathBuf),
    /// `sqlite://:memory:`: a private in-memory database, gone with the store.
    SqliteMemory,
    /// `postgres://...` or `postgresql://...`: the URL itself (it holds the
    /// password: never show it) and the URL with its password masked.
    /// `Debug` shows only the masked one.
    Postgres { url: Redacted, masked: String },
}

impl StoreUrl {
    /// Parses a store URL. The error names what is wrong and shows the URL
    /// with any password replaced by `***`.
    ///
    /// - `sqlite://runfleet.db`: `runfleet.db`, relative to the working directory;
    /// - `sqlite:///var/lib/runfleet/runfleet.db`: an absolute path;
    /// - `sqlite://:memory:`: in memory (tests, demos);
    /// - `postgres://user:pass@host/db` / `postgresql://...`: PostgreSQL.
    ///
    /// The path is taken literally: no percent-decoding, no `~` expansion, no
    /// `?query` options.
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        let err = |problem: &str| StoreError::Url {
            url: mask_password(url),
            problem: problem.to_owned(),
        };
        if url.chars().any(char::is_control) {
            return Err(err("contains a control character"));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(if url.starts_with("sqlite:") {
                err("write sqlite:// followed by the path, like sqlite://runfleet.db")
            } else {
                err("must start with sqlite://, postgres:// or postgresql://")
            });
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => {}
            "postgres" | "postgresql" => {
                if rest.is_empty() {
                    return Err(err("names no database after the scheme"));
                }
                return Ok(StoreUrl::Postgres {
                    url: Redacted(url.to_owned()),
                    masked: mask_password(url),
                });
            }
            _ => {
                return Err(err(
                    "must start with sqlite://, postgres:// or postgresql://",
                ));
            }
        }
        if rest == ":memory:" {
            return Ok(StoreUrl::SqliteMemory);
        }
        if rest.is_empty() || rest == "/" {
            return Err(err("names no database file after sqlite://"));
        }
        if rest.contains('?') {
            return Err(err(
                "query options (?...) are not supported; give only the file path",
            ));
        }
        if rest.starts_with('~') {
            return Err(err(
                "~ is not expanded; give an absolute path (sqlite:///home/...)",
            ));
        }
        if rest.ends_with('/') {
            return Err(err("names a directory, not a database file"));
        }
        Ok(StoreUrl::SqliteFile(PathBuf::from(rest)))
    }
}

/// A URL that may hold a password: `Debug` masks it, `Deref` gives it.
#[derive(Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", mask_password(&self.0))
    }
}

impl std::ops::Deref for Redacted {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// `scheme://user:***@host/...`: the URL with the password of its userinfo
/// masked. A value that does not look like a URL but holds an `@` is not
/// shown at all.
pub fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return if url.contains('@') {
            "(not shown)".to_owned()
        } else {
            url.to_owned()
        };
    };
    if scheme.eq_ignore_ascii_case("sqlite") {
        return url.to_owned();
    }
    // Split at the last `@` of the whole rest, so that a password holding an
    // unencoded `/`, `?` or `@` is still masked (at worst too much is hidden).
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(url: &str) -> String {
        match StoreUrl::parse(url) {
            Err(StoreError::Url { url, problem }) => format!("{url}: {problem}"),
            other => panic!("{url}: expected a URL error, got {other:?}"),
        }
    }

    #[test]
    fn sqlite_forms() {
        assert_eq!(
            StoreUrl::parse("sqlite://runfleet.db").unwrap(),
            StoreUrl::SqliteFile("runfleet.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite://data/runfleet.db").unwrap(),
            StoreUrl::SqliteFile("data/runfleet.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///var/lib/runfleet/rf.db").unwrap(),
            StoreUrl::SqliteFile("/var/lib/runfleet/rf.db".into())
        );
        assert_eq!(
            StoreUrl::parse("sqlite://:memory:").unwrap(),
            StoreUrl::SqliteMemory
        );
        assert_eq!(
            StoreUrl::parse("SQLITE://x.db").unwrap(),
            StoreUrl::SqliteFile("x.db".into())
        );
    }

    #[test]
    fn bad_urls_say_why() {
        assert!(problem("sqlite://").contains("names no database file"));
        assert!(problem("sqlite:///").contains("names no database file"));
        assert!(problem("sqlite:runfleet.db").contains("sqlite://runfleet.db"));
        assert!(problem("runfleet.db").contains("must start with sqlite://"));
        assert!(problem("mysql://u:hunter2@h/db").contains("must start with"));
        assert!(problem("sqlite://rf.db?mode=rwc").contains("query options"));
        assert!(problem("sqlite://~/rf.db").contains("not expanded"));
        assert!(problem("sqlite:///var/lib/").contains("directory"));
        assert!(problem("sqlite://a\nb").contains("control character"));
        assert!(problem("postgres://").contains("names no database"));
    }

    #[test]
    fn passwords_are_never_echoed() {
        for url in [
            "mysql://admin:hunter2@db.internal/rf",
            "postgres://admin:hunter2@db.internal:5432/rf?sslmode=require",
            "postgresql://admin:hunter2@db.internal/rf",
            "postgres://admin:hun/ter2@db.internal/rf",
            "admin:hunter2@db.internal",
        ] {
            let shown = match StoreUrl::parse(url) {
                Ok(StoreUrl::Postgres { masked, url }) => {
                    assert!(!format!("{url:?}").contains("hunter2"));
                    masked
                }
                Ok(other) => panic!("{url}: unexpected {other:?}"),
                Err(e) => e.to_string(),
            };
            assert!(
                !shown.contains("hunter2") && !shown.contains("ter2"),
                "{shown}"
            );
        }
        assert_eq!(
            mask_password("postgres://admin:hunter2@db:5432/rf?sslmode=require"),
            "postgres://admin:***@db:5432/rf?sslmode=require"
        );
        // An `@` in the path is not userinfo.
        assert_eq!(
            mask_password("sqlite:///srv/a:b@c.db"),
            "sqlite:///srv/a:b@c.db"
        );
        assert_eq!(mask_password("postgres://db/rf"), "postgres://db/rf");
        assert_eq!(
            mask_password("postgres://u:pa/s?s@db/rf"),
            "postgres://u:***@db/rf"
        );
        assert_eq!(
            mask_password("postgres://u:p@ss@db/rf"),
            "postgres://u:***@db/rf"
        );
    }
}
