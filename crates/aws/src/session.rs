//! Account sessions: the base credentials, and one STS session per
//! (role ARN, external id), cached and refreshed before they expire.
//!
//! Each session has its own EC2, SSM and STS clients and its own
//! [`Pacer`](crate::pacing::Pacer): EC2's buckets are per account and region,
//! so pools launched in different accounts do not slow each other down.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::config::{Credentials, SharedCredentialsProvider};
use runfleet_core::model::ErrorKind;
use runfleet_engine::ports::{PortError, PortResult};

use crate::pacing::{Clock, Pacer, Pacing};

/// Which credentials a call uses: the base ones (`role_arn: None`) or an
/// assumed role. `Debug` never shows the external id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RoleKey {
    pub role_arn: Option<String>,
    pub external_id: Option<String>,
}

impl RoleKey {
    pub fn base() -> Self {
        RoleKey::default()
    }
    pub fn new(role_arn: Option<&str>, external_id: Option<&str>) -> Self {
        match role_arn {
            None => RoleKey::base(),
            Some(r) => RoleKey {
                role_arn: Some(r.to_string()),
                external_id: external_id.map(str::to_string),
            },
        }
    }
    /// How this session is named in messages: the role ARN or `base credentials`.
    pub fn label(&self) -> &str {
        self.role_arn.as_deref().unwrap_or("base credentials")
    }
}

impl fmt::Debug for RoleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleKey")
            .field("role_arn", &self.role_arn)
            .field("external_id", &self.external_id.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The clients of one account session.
pub struct Session {
    pub key: RoleKey,
    pub ec2: aws_sdk_ec2::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sts: aws_sdk_sts::Client,
    pub pacer: Arc<Pacer>,
    /// When the assumed credentials expire (`None`: base credentials, which
    /// the SDK's own provider chain refreshes).
    pub expires_at: Option<SystemTime>,
}

/// Timeouts of every call: a connection must open within 5 s, one attempt
/// must finish within 30 s.
pub fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(30))
        .operation_timeout(Duration::from_secs(35))
        .build()
}

/// The SDK's own retries are off: runfleet retries itself (see
/// [`crate::pacing::RetryPolicy`]) so that a capacity error answered with
/// HTTP 500 is not retried three times, a launch whose answer was lost is
/// looked up before it is sent again, and every request is counted.
pub fn clients(
    sdk: &SdkConfig,
) -> (
    aws_sdk_ec2::Client,
    aws_sdk_ssm::Client,
    aws_sdk_sts::Client,
) {
    let ec2 = aws_sdk_ec2::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts())
        .build();
    let ssm = aws_sdk_ssm::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts())
        .build();
    let sts = aws_sdk_sts::config::Builder::from(sdk)
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts())
        .build();
    (
        aws_sdk_ec2::Client::from_conf(ec2),
        aws_sdk_ssm::Client::from_conf(ssm),
        aws_sdk_sts::Client::from_conf(sts),
    )
}

/// Whether a session expiring at `expires_at` must be renewed at `now`:
/// within `margin` of its expiry, or past it.
pub fn needs_refresh(expires_at: Option<SystemTime>, now: SystemTime, margin: Duration) -> bool {
    match expires_at {
        None => false,
        Some(t) => t.duration_since(now).map_or(true, |left| left <= margin),
    }
}

/// The sessions of one [`AwsCloud`](crate::AwsCloud).
pub struct Sessions {
    base_config: SdkConfig,
    base: Arc<Session>,
    pacing: Pacing,
    clock: Clock,
    /// Renew an assumed session this long before it expires.
    pub refresh_margin: Duration,
    /// Asked of STS for each assumed session.
    pub session_duration: Duration,
    assumed: tokio::sync::Mutex<HashMap<RoleKey, Arc<Session>>>,
    pacers: std::sync::Mutex<HashMap<RoleKey, Arc<Pacer>>>,
}

impl Sessions {
    pub fn new(base_config: SdkConfig, pacing: Pacing) -> Self {
        let clock = Clock::new();
        let (ec2, ssm, sts) = clients(&base_config);
        let base = Arc::new(Session {
            key: RoleKey::base(),
            ec2,
            ssm,
            sts,
            pacer: Arc::new(Pacer::new(pacing.clone(), clock)),
            expires_at: None,
        });
        Sessions {
            base_config,
            base,
            pacing,
            clock,
            refresh_margin: Duration::from_secs(10 * 60),
            session_duration: Duration::from_secs(3600),
            assumed: tokio::sync::Mutex::new(HashMap::new()),
            pacers: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn base(&self) -> &Arc<Session> {
        &self.base
    }

    fn pacer(&self, key: &RoleKey) -> Arc<Pacer> {
        let mut pacers = self.pacers.lock().unwrap_or_else(|e| e.into_inner());
        pacers
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Pacer::new(self.pacing.clone(), self.clock)))
            .clone()
    }

    /// The session for `key`, assuming the role when there is no fresh one.
    /// `assume` makes the STS call (it is given the base session to call
    /// with); concurrent callers of the same key wait for one call.
    pub async fn get<F, Fut>(&self, key: &RoleKey, assume: F) -> PortResult<Arc<Session>>
    where
        F: FnOnce(Arc<Session>) -> Fut,
        Fut: std::future::Future<Output = PortResult<Assumed>>,
    {
        if key.role_arn.is_none() {
            return Ok(self.base.clone());
        }
        let mut assumed = self.assumed.lock().await;
        if let Some(s) = assumed.get(key)
            && !needs_refresh(s.expires_at, SystemTime::now(), self.refresh_margin)
        {
            return Ok(s.clone());
        }
        let creds = assume(self.base.clone()).await?;
        let expires_at = creds.expires_at;
        let provider = Credentials::new(
            creds.access_key_id,
            creds.secret_access_key,
            Some(creds.session_token),
            Some(expires_at),
            "runfleet-assume-role",
        );
        let config = self
            .base_config
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(provider))
            .build();
        let (ec2, ssm, sts) = clients(&config);
        let session = Arc::new(Session {
            key: key.clone(),
            ec2,
            ssm,
            sts,
            pacer: self.pacer(key),
            expires_at: Some(expires_at),
        });
        assumed.insert(key.clone(), session.clone());
        Ok(session)
    }

    /// The keys of the assumed sessions made so far.
    pub async fn assumed_keys(&self) -> Vec<RoleKey> {
        self.assumed.lock().await.keys().cloned().collect()
    }
}

/// Credentials from STS `AssumeRole`.
pub struct Assumed {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expires_at: SystemTime,
}

impl Assumed {
    pub fn from_sts(c: &aws_sdk_sts::types::Credentials) -> PortResult<Assumed> {
        let exp = c.expiration();
        let expires_at = SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_secs(exp.secs().max(0) as u64))
            .ok_or_else(|| {
                PortError::new(ErrorKind::Transient, "sts:AssumeRole: bad expiration time")
            })?;
        Ok(Assumed {
            access_key_id: c.access_key_id().to_string(),
            secret_access_key: c.secret_access_key().to_string(),
            session_token: c.session_token().to_string(),
            expires_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_before_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let m = Duration::from_secs(600);
        assert!(!needs_refresh(None, now, m));
        assert!(!needs_refresh(
            Some(now + Duration::from_secs(3600)),
            now,
            m
        ));
        assert!(needs_refresh(Some(now + Duration::from_secs(600)), now, m));
        assert!(needs_refresh(Some(now + Duration::from_secs(1)), now, m));
        assert!(needs_refresh(Some(now - Duration::from_secs(1)), now, m));
    }

    #[test]
    fn role_key_debug_hides_the_external_id() {
        let k = RoleKey::new(
            Some("arn:aws:iam::111111111111:role/r"),
            Some("very-secret-external-id"),
        );
        let shown = format!("{k:?}");
        assert!(shown.contains("111111111111"));
        assert!(!shown.contains("very-secret"), "{shown}");
        assert_eq!(RoleKey::new(None, Some("x")), RoleKey::base());
    }
}
