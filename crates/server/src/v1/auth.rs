//! Who is calling `/v1`: a GitHub Actions OIDC token (signature against the
//! issuer's JWKS, `iss`, `aud`, `exp`, `nbf`) or the token-and-HMAC scheme
//! (`X-GitHub-Token`, `X-GitHub-Signature: sha512=<hex HMAC of the body
//! keyed by the token>`, a fresh `time`, no replay, and the token must read
//! the repository). Tokens are never logged, echoed or kept: caches are
//! keyed by SHA-256 digests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};
use tokio::sync::RwLock;

/// How far `time` of an HMAC-signed request may be from ours.
pub const MAX_SKEW_SECS: i64 = 30;
/// A JWKS is refetched for an unknown `kid` at most this often.
const JWKS_REFETCH: Duration = Duration::from_secs(30);
/// A JWKS is refreshed after this long even when every `kid` is known.
const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// A token's read access to a repository is remembered this long.
const ACCESS_TTL: Duration = Duration::from_secs(300);

/// A refusal: the HTTP status and one sentence that names what is wrong
/// (never a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Refusal {
            status: 401,
            message: message.into(),
        }
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Refusal {
            status: 403,
            message: message.into(),
        }
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Refusal {
            status: 503,
            message: message.into(),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// From an OIDC token: the workflow's repository (`owner/name`) and owner.
    Workflow { repository: String, owner: String },
    /// From a GitHub token that proved it holds the token; which
    /// repositories it may act for is checked per request.
    Token { digest: [u8; 32] },
}

/// The claims of a GitHub Actions OIDC token that runfleet reads.
#[derive(Debug, Deserialize)]
struct Claims {
    repository: String,
    repository_owner: String,
}

/// Verifies GitHub Actions OIDC tokens against the issuer's published keys.
pub struct Oidc {
    issuer: String,
    audience: String,
    http: reqwest::Client,
    jwks: RwLock<Option<(Instant, JwkSet)>>,
    last_fetch: Mutex<Option<Instant>>,
}

impl Oidc {
    pub fn new(issuer: &str, audience: &str, http: reqwest::Client) -> Oidc {
        Oidc {
            issuer: issuer.trim_end_matches('/').to_string(),
            audience: audience.to_string(),
            http,
            jwks: RwLock::new(None),
            last_fetch: Mutex::new(None),
        }
    }

    /// The `Caller` a bearer token stands for, or why not.
    pub async fn verify(&self, token: &str) -> Result<Caller, Refusal> {
        let header = decode_header(token)
            .map_err(|_| Refusal::unauthorized("the bearer token is not a JWT"))?;
        if header.alg != Algorithm::RS256 {
            return Err(Refusal::unauthorized(format!(
                "the token is signed with {:?}; only RS256 is accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| Refusal::unauthorized("the token names no key (kid)"))?;
        let key = self.key(&kid).await?;
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.validate_nbf = true;
        v.leeway = 30;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = decode::<Claims>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            Refusal::unauthorized(match e.kind() {
                K::ExpiredSignature => "the token has expired".to_string(),
                K::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
                K::InvalidIssuer => format!("the token's issuer is not {}", self.issuer),
                K::InvalidAudience => format!("the token's audience is not {:?}", self.audience),
                K::InvalidSignature => "the token's signature does not verify".to_string(),
                K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
                K::Json(_) | K::InvalidClaimFormat(_) => {
                    "the token lacks the repository and repository_owner claims".to_string()
                }
                _ => "the token is not valid".to_string(),
            })
        })?;
        Ok(Caller::Workflow {
            repository: data.claims.repository,
            owner: data.claims.repository_owner,
        })
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, Refusal> {
        {
            let cached = self.jwks.read().await;
            if let Some((at, set)) = cached.as_ref()
                && at.elapsed() < JWKS_MAX_AGE
                && let Some(jwk) = set.find(kid)
            {
                return DecodingKey::from_jwk(jwk).map_err(|_| {
                    Refusal::unauthorized("the issuer's key for the token is unusable")
                });
            }
        }
        // Unknown kid (or stale set): fetch again, but not more than once per
        // JWKS_REFETCH whatever callers send.
        let may_fetch = {
            let mut last = self.last_fetch.lock().expect("jwks fetch lock");
            let ok = last.is_none_or(|t| t.elapsed() >= JWKS_REFETCH)
                || self.jwks.try_read().is_ok_and(|c| {
                    c.as_ref()
                        .is_none_or(|(at, _)| at.elapsed() >= JWKS_MAX_AGE)
                });
            if ok {
                *last = Some(Instant::now());
            }
            ok
        };
        if may_fetch {
            let set = self.fetch().await?;
            *self.jwks.write().await = Some((Instant::now(), set));
        }
        let cached = self.jwks.read().await;
        let jwk = cached
            .as_ref()
            .and_then(|(_, set)| set.find(kid))
            .ok_or_else(|| {
                Refusal::unauthorized(format!("the issuer {} has no key {kid:?}", self.issuer))
            })?;
        DecodingKey::from_jwk(jwk)
            .map_err(|_| Refusal::unauthorized("the issuer's key for the token is unusable"))
    }

    async fn fetch(&self) -> Result<JwkSet, Refusal> {
        let url = format!("{}/.well-known/jwks", self.issuer);
        let r = self.http.get(&url).send().await.map_err(|e| {
            Refusal::unavailable(format!(
                "cannot fetch the OIDC keys from {url}: {}",
                e.without_url()
            ))
        })?;
        if !r.status().is_success() {
            return Err(Refusal::unavailable(format!(
                "the OIDC keys at {url} answered {}",
                r.status()
            )));
        }
        r.json::<JwkSet>()
            .await
            .map_err(|_| Refusal::unavailable(format!("the OIDC keys at {url} are not a JWK set")))
    }
}

/// The token-and-HMAC scheme.
pub struct HmacAuth {
    api_url: String,
    http: reqwest::Client,
    /// Signatures seen (digest) -> when they stop mattering.
    seen: Mutex<HashMap<[u8; 32], Instant>>,
    /// (token, repository) digests known to read -> until when.
    access: Mutex<HashMap<[u8; 32], Instant>>,
}

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// `sha512=<hex>` of `body` keyed by `token`, as a caller sends it.
pub fn sign(token: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha512>::new_from_slice(token.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha512={}", hex::encode(mac.finalize().into_bytes()))
}

impl HmacAuth {
    pub fn new(api_url: &str, http: reqwest::Client) -> HmacAuth {
        HmacAuth {
            api_url: api_url.trim_end_matches('/').to_string(),
            http,
            seen: Mutex::new(HashMap::new()),
            access: Mutex::new(HashMap::new()),
        }
    }

    /// Checks the signature of `body` and returns the caller with the token
    /// (kept only for the repository check that follows). `fresh`: the
    /// request must not have been seen before (a replay is refused).
    pub fn verify<'h>(
        &self,
        headers: &'h HeaderMap,
        body: &[u8],
        fresh: bool,
    ) -> Result<(Caller, &'h str), Refusal> {
        let token = headers
            .get("x-github-token")
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Refusal::unauthorized("X-GitHub-Token is missing"))?;
        let sig = headers
            .get("x-github-signature")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Refusal::unauthorized("X-GitHub-Signature is missing"))?;
        let hex_sig = sig.strip_prefix("sha512=").ok_or_else(|| {
            Refusal::unauthorized("X-GitHub-Signature must be sha512=<hex HMAC-SHA512 of the body>")
        })?;
        let bytes = hex::decode(hex_sig)
            .map_err(|_| Refusal::unauthorized("X-GitHub-Signature is not hex"))?;
        let mut mac = Hmac::<Sha512>::new_from_slice(token.as_bytes()).expect("any key length");
        mac.update(body);
        mac.verify_slice(&bytes)
            .map_err(|_| Refusal::unauthorized("X-GitHub-Signature does not match the body"))?;
        if fresh {
            let key = digest(&[&bytes]);
            let now = Instant::now();
            let mut seen = self.seen.lock().expect("replay cache lock");
            seen.retain(|_, until| *until > now);
            if seen.contains_key(&key) {
                return Err(Refusal::unauthorized(
                    "this request was already used (replay)",
                ));
            }
            // Past 2 x the skew the time check refuses it anyway.
            seen.insert(key, now + Duration::from_secs(2 * MAX_SKEW_SECS as u64 + 1));
        }
        Ok((
            Caller::Token {
                digest: digest(&[token.as_bytes()]),
            },
            token,
        ))
    }

    /// Whether `token` can read `repo` on GitHub (`GET /repos/{repo}`),
    /// remembered for a few minutes by digest.
    pub async fn can_read(&self, token: &str, repo: &str) -> Result<(), Refusal> {
        let key = digest(&[token.as_bytes(), repo.to_ascii_lowercase().as_bytes()]);
        let now = Instant::now();
        {
            let mut access = self.access.lock().expect("access cache lock");
            access.retain(|_, until| *until > now);
            if access.contains_key(&key) {
                return Ok(());
            }
        }
        let url = format!("{}/repos/{repo}", self.api_url);
        let r = self
            .http
            .get(&url)
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .header("user-agent", "runfleet")
            .header("x-github-api-version", "2022-11-28")
            .send()
            .await
            .map_err(|e| {
                Refusal::unavailable(format!(
                    "cannot reach GitHub to check the token: {}",
                    e.without_url()
                ))
            })?;
        match r.status().as_u16() {
            200 => {
                self.access
                    .lock()
                    .expect("access cache lock")
                    .insert(key, now + ACCESS_TTL);
                Ok(())
            }
            401 => Err(Refusal::unauthorized(
                "GitHub refused the token in X-GitHub-Token",
            )),
            403 | 404 => Err(Refusal::forbidden(format!(
                "the token in X-GitHub-Token cannot read {repo}"
            ))),
            s => Err(Refusal::unavailable(format!(
                "GitHub answered {s} when checking the token's access to {repo}"
            ))),
        }
    }
}
