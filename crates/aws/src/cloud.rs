//! [`AwsCloud`]: the engine's [`Cloud`] over EC2, SSM and STS.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ec2::types::{
    Filter, Instance as Ec2Instance, InstanceInterruptionBehavior, InstanceMarketOptionsRequest,
    InstanceStateName, InstanceType, LaunchTemplateSpecification, MarketType, ResourceType,
    ShutdownBehavior, SpotInstanceType, SpotMarketOptions, Tag, TagSpecification,
};
use aws_sdk_ssm::types::ParameterType;
use base64::Engine as _;
use runfleet_core::config::{AwsConfig, CapacityMarket, Config, Secret};
use runfleet_core::model::{ErrorKind, InstanceState, Millis, Offering};
use runfleet_engine::ports::{
    Cloud, CloudEvent, CloudInstance, LaunchOutcome, LaunchRequest, Launched, PortError, PortResult,
};
use tracing::{debug, info, warn};

use crate::error::{code_of, from_sdk, scrub};
use crate::pacing::{Api, Pacing, RetryPolicy};
use crate::session::{Assumed, RoleKey, Session, Sessions};

/// Tag keys runfleet reads (the engine sets them).
pub const TAG_FLEET: &str = "runfleet:fleet";
pub const TAG_LAUNCH: &str = "runfleet:launch";

/// EC2's limit on raw user data (before base64).
pub const MAX_USER_DATA: usize = 16 * 1024;

/// Tunables of [`AwsCloud`].
#[derive(Debug, Clone)]
pub struct AwsOptions {
    pub pacing: Pacing,
    pub retry: RetryPolicy,
    /// `MaxResults` of each DescribeInstances page (5..=1000).
    pub describe_page_size: i32,
    /// `MaxResults` of each GetParametersByPath page (1..=10).
    pub ssm_page_size: i32,
    /// Instance ids per TerminateInstances call (EC2 takes up to 1000) and
    /// per ownership look-up.
    pub terminate_batch: usize,
    /// Renew an assumed-role session this long before it expires.
    pub refresh_margin: Duration,
    /// `RoleSessionName` of assumed sessions.
    pub role_session_name: String,
}

impl Default for AwsOptions {
    fn default() -> Self {
        AwsOptions {
            pacing: Pacing::default(),
            retry: RetryPolicy::default(),
            describe_page_size: 500,
            ssm_page_size: 10,
            terminate_batch: 100,
            refresh_margin: Duration::from_secs(10 * 60),
            role_session_name: "runfleet".to_string(),
        }
    }
}

/// An AWS failure with its code kept for decisions inside the adapter.
struct Failure {
    err: PortError,
    code: Option<String>,
}

impl From<PortError> for Failure {
    fn from(err: PortError) -> Self {
        Failure { err, code: None }
    }
}

fn failure<E>(
    op: &str,
    e: &aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
) -> Failure
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    Failure {
        err: from_sdk(op, e),
        code: code_of(e).map(str::to_string),
    }
}

/// How many successful launches are remembered by token.
const LAUNCH_MEMO: usize = 10_000;

/// Launch token -> the instances its call started, and the tokens in the
/// order they were added (the oldest are forgotten first).
type LaunchMemo = (HashMap<String, Vec<Launched>>, Vec<String>);

/// The engine's [`Cloud`] on AWS. One value serves every pool, whatever
/// account its role points at.
pub struct AwsCloud {
    sessions: Sessions,
    opts: AwsOptions,
    counts: Mutex<BTreeMap<String, u64>>,
    /// Sessions whose instances and parameters belong to this fleet's view.
    known: Mutex<BTreeSet<RoleKey>>,
    /// Which session an instance was seen in.
    owners: Mutex<HashMap<String, RoleKey>>,
    /// Launch token -> what it launched (a repeated call answers from here).
    launched: Mutex<LaunchMemo>,
    /// Launch tokens whose last RunInstances has an unknown outcome.
    uncertain: Mutex<HashSet<String>>,
    /// The EC2 event queue (`aws.events_queue`), when there is one.
    events: Option<crate::events::EventQueue>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AwsCloud {
    /// An adapter on `sdk` (credentials, region, endpoint), using the base
    /// credentials for calls that name no role.
    pub fn new(sdk: SdkConfig, opts: AwsOptions) -> AwsCloud {
        let mut sessions = Sessions::new(sdk, opts.pacing.clone());
        sessions.refresh_margin = opts.refresh_margin;
        AwsCloud {
            sessions,
            opts,
            counts: Mutex::new(BTreeMap::new()),
            known: Mutex::new(BTreeSet::from([RoleKey::base()])),
            owners: Mutex::new(HashMap::new()),
            launched: Mutex::new((HashMap::new(), Vec::new())),
            uncertain: Mutex::new(HashSet::new()),
            events: None,
        }
    }

    /// Reads EC2 events from the SQS queue at `url` (base credentials) for
    /// [`Cloud::poll_events`]; see [`crate::events`].
    pub fn with_events_queue(mut self, sdk: &SdkConfig, url: &str) -> AwsCloud {
        self.events = Some(crate::events::EventQueue::new(sdk, url));
        self
    }

    /// The SDK config from the standard AWS chain (environment, profiles,
    /// instance role, `AWS_ENDPOINT_URL`), with `aws.region` when set.
    pub async fn load_sdk_config(aws: &AwsConfig) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(r) = &aws.region {
            loader = loader.region(Region::new(r.clone()));
        }
        loader.load().await
    }

    /// The adapter for a config: the standard chain, and every account the
    /// pools launch in (each pool's role, else `aws.role_arn`, else the base
    /// credentials) registered for listing and cleanup.
    pub async fn from_config(cfg: &Config) -> AwsCloud {
        let sdk = Self::load_sdk_config(&cfg.aws).await;
        Self::for_config(cfg, sdk, AwsOptions::default())
    }

    /// [`AwsCloud::from_config`] on a given SDK config.
    pub fn for_config(cfg: &Config, sdk: SdkConfig, opts: AwsOptions) -> AwsCloud {
        let queue = cfg.aws.events_queue.as_deref();
        let cloud = match queue {
            Some(url) => AwsCloud::new(sdk.clone(), opts).with_events_queue(&sdk, url),
            None => AwsCloud::new(sdk, opts),
        };
        let keys = config_roles(cfg);
        *lock(&cloud.known) = keys.into_iter().collect();
        cloud
    }

    /// Adds an account session to the ones listed and cleaned.
    pub fn register_role(&self, role_arn: Option<&str>, external_id: Option<&Secret>) {
        lock(&self.known).insert(RoleKey::new(role_arn, external_id.map(Secret::expose)));
    }

    /// Requests sent so far, by operation (`ec2:RunInstances`, ...), retries
    /// included: `runfleet_aws_requests_total{operation}`.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        lock(&self.counts).clone()
    }

    pub(crate) fn count(&self, op: &str) {
        *lock(&self.counts).entry(op.to_string()).or_default() += 1;
    }

    /// The session of `key`, assuming its role if needed.
    pub(crate) async fn session(&self, key: &RoleKey) -> PortResult<Arc<Session>> {
        let name = self.opts.role_session_name.clone();
        let duration = self.sessions.session_duration;
        self.sessions
            .get(key, |base| async move {
                let role = key.role_arn.clone().unwrap_or_default();
                let ext = key.external_id.clone();
                let out = self
                    .call(&base, Api::Sts, "sts:AssumeRole", true, || {
                        let mut b = base
                            .sts
                            .assume_role()
                            .role_arn(&role)
                            .role_session_name(&name)
                            .duration_seconds(duration.as_secs() as i32);
                        if let Some(x) = &ext {
                            b = b.external_id(x);
                        }
                        async move { b.send().await.map_err(|e| failure("sts:AssumeRole", &e)) }
                    })
                    .await
                    .map_err(|f| match &ext {
                        Some(x) => scrub(f.err, x),
                        None => f.err,
                    })?;
                let creds = out.credentials().ok_or_else(|| {
                    PortError::new(
                        ErrorKind::Transient,
                        "sts:AssumeRole: answer has no credentials",
                    )
                })?;
                info!(role_arn = %role, "assumed role");
                Assumed::from_sts(creds)
            })
            .await
    }

    /// Calls `f` after taking a token of `api`; retries throttled answers,
    /// and transient ones when `idempotent`, with jittered backoff within
    /// the retry budget.
    async fn call<T, F, Fut>(
        &self,
        s: &Session,
        api: Api,
        op: &str,
        idempotent: bool,
        mut f: F,
    ) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = &self.opts.retry;
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            s.pacer.acquire(api, op).await?;
            self.count(op);
            match f().await {
                Ok(v) => return Ok(v),
                Err(fail) => {
                    let kind = fail.err.kind;
                    if !policy.retries(kind, idempotent) || attempt >= policy.max_attempts {
                        return Err(fail);
                    }
                    let wait = policy
                        .backoff(attempt)
                        .max(Duration::from_millis(fail.err.retry_after_ms.unwrap_or(0)));
                    if started.elapsed() + wait > policy.budget {
                        return Err(fail);
                    }
                    debug!(
                        operation = op,
                        attempt,
                        kind = kind.as_str(),
                        wait_ms = wait.as_millis() as u64,
                        "retrying AWS call"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    fn known_keys(&self) -> Vec<RoleKey> {
        lock(&self.known).iter().cloned().collect()
    }

    fn note_owner(&self, instance_id: &str, key: &RoleKey) {
        lock(&self.owners).insert(instance_id.to_string(), key.clone());
    }

    // ------------------------------------------------------------------
    // Launch
    // ------------------------------------------------------------------

    async fn launch_impl(&self, req: &LaunchRequest) -> PortResult<LaunchOutcome> {
        if req.offerings.is_empty() {
            return Err(PortError::new(
                ErrorKind::Capacity,
                "ec2:RunInstances: no offering to try",
            ));
        }
        if req.user_data.len() > MAX_USER_DATA {
            return Err(PortError::new(
                ErrorKind::Invalid,
                format!(
                    "ec2:RunInstances: user data of pool {} is {} bytes, EC2 takes at most {MAX_USER_DATA}",
                    req.pool,
                    req.user_data.len()
                ),
            ));
        }
        let key = RoleKey::new(
            req.role_arn.as_deref(),
            req.external_id.as_ref().map(Secret::expose),
        );
        lock(&self.known).insert(key.clone());
        if let Some(done) = lock(&self.launched).0.get(&req.client_token) {
            return Ok(LaunchOutcome {
                instances: done.clone(),
                errors: Vec::new(),
            });
        }
        let count = req.count.max(1) as usize;
        let session = self.session(&key).await?;
        // A call that may have taken effect, in this process or in one that
        // died since: what it started is looked up first (moto, unlike EC2,
        // does not answer a repeated ClientToken with the same instances).
        if req.resend || lock(&self.uncertain).contains(&req.client_token) {
            let found = self.find_launched(&session, req).await?;
            // Every instance of the call is there: done. Fewer (a batch cut
            // short): the call is sent again with the same tokens, which
            // EC2 answers with the instances it already started.
            if !found.is_empty() && found.len() >= count {
                return Ok(self.launched_ok(&key, req, found, Vec::new()));
            }
        }
        let user_data = base64::engine::general_purpose::STANDARD.encode(req.user_data.as_bytes());
        let mut errors = Vec::new();
        let mut instances: Vec<Launched> = Vec::new();
        for off in &req.offerings {
            let remaining = count - instances.len();
            if remaining == 0 {
                break;
            }
            match self
                .run_one(&session, req, off, &user_data, remaining)
                .await
            {
                Ok(ls) => {
                    for l in ls {
                        if !instances.iter().any(|i| i.instance_id == l.instance_id) {
                            instances.push(l);
                        }
                    }
                }
                Err(f) if advances(&f) => {
                    info!(pool = %req.pool, launch_id = %req.client_token, offering = %off, kind = f.err.kind.as_str(), error = %f.err.message, "offering failed, trying the next");
                    errors.push((off.clone(), f.err));
                }
                // Some instances started and the rest cannot be: keep them.
                Err(f) if !instances.is_empty() && f.err.kind.is_permanent() => {
                    warn!(pool = %req.pool, launch_id = %req.client_token, offering = %off, error = %f.err, "launch stopped after {} of {count} instances", instances.len());
                    errors.push((off.clone(), f.err));
                    break;
                }
                Err(f) => {
                    warn!(pool = %req.pool, launch_id = %req.client_token, offering = %off, error = %f.err, "launch stopped");
                    return Err(f.err);
                }
            }
        }
        if instances.is_empty() {
            return Ok(LaunchOutcome { instances, errors });
        }
        Ok(self.launched_ok(&key, req, instances, errors))
    }

    fn launched_ok(
        &self,
        key: &RoleKey,
        req: &LaunchRequest,
        instances: Vec<Launched>,
        errors: Vec<(Offering, PortError)>,
    ) -> LaunchOutcome {
        for l in &instances {
            self.note_owner(&l.instance_id, key);
        }
        lock(&self.uncertain).remove(&req.client_token);
        let mut memo = lock(&self.launched);
        if memo.0.len() >= LAUNCH_MEMO {
            let old: Vec<String> = memo.1.drain(..LAUNCH_MEMO / 2).collect();
            for t in old {
                memo.0.remove(&t);
            }
        }
        if memo
            .0
            .insert(req.client_token.clone(), instances.clone())
            .is_none()
        {
            memo.1.push(req.client_token.clone());
        }
        LaunchOutcome { instances, errors }
    }

    /// One RunInstances for one offering, for up to `count` instances (at
    /// least one, or a capacity error). Throttled answers are retried
    /// (they were not executed); an answer lost in transit (timeout, 5xx) is
    /// first looked up by the launch tag, then sent again with the same
    /// client token.
    async fn run_one(
        &self,
        s: &Session,
        req: &LaunchRequest,
        off: &Offering,
        user_data: &str,
        count: usize,
    ) -> Result<Vec<Launched>, Failure> {
        const OP: &str = "ec2:RunInstances";
        let token = offering_token(&req.client_token, off);
        let tags: Vec<Tag> = req
            .tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let spec = |rt: ResourceType| {
            TagSpecification::builder()
                .resource_type(rt)
                .set_tags(Some(tags.clone()))
                .build()
        };
        let mut b = s
            .ec2
            .run_instances()
            .launch_template(template_spec(
                &req.launch_template,
                req.launch_template_version.as_deref(),
            ))
            .instance_type(InstanceType::from(off.instance_type.as_str()))
            .min_count(1)
            .max_count(i32::try_from(count).unwrap_or(i32::MAX))
            .client_token(&token)
            .user_data(user_data)
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .tag_specifications(spec(ResourceType::Instance))
            .tag_specifications(spec(ResourceType::Volume));
        if let Some(subnet) = &off.subnet {
            b = b.subnet_id(subnet);
        }
        if off.market == CapacityMarket::Spot {
            b = b.instance_market_options(spot_options());
        }
        let policy = &self.opts.retry;
        let started = tokio::time::Instant::now();
        let mut attempt = 0u32;
        let mut transient_tries = 0u32;
        loop {
            attempt += 1;
            s.pacer.acquire(Api::RunInstances, OP).await?;
            self.count(OP);
            let fail = match b.clone().send().await {
                Ok(out) => {
                    if out.instances().is_empty() {
                        return Err(Failure::from(PortError::new(
                            ErrorKind::Transient,
                            "ec2:RunInstances: answer lists no instance",
                        )));
                    }
                    return out
                        .instances()
                        .iter()
                        .map(|i| launched_from(i, off))
                        .collect();
                }
                Err(e) => failure(OP, &e),
            };
            let kind = fail.err.kind;
            if kind == ErrorKind::Transient {
                lock(&self.uncertain).insert(req.client_token.clone());
                transient_tries += 1;
            }
            let retry = match kind {
                ErrorKind::Throttled => attempt < policy.max_attempts,
                ErrorKind::Transient => transient_tries < 3,
                _ => false,
            };
            if !retry {
                return Err(fail);
            }
            let wait = policy.backoff(attempt);
            if started.elapsed() + wait > policy.budget {
                return Err(fail);
            }
            debug!(
                operation = OP,
                attempt,
                kind = kind.as_str(),
                "retrying launch with the same client token"
            );
            tokio::time::sleep(wait).await;
            if kind == ErrorKind::Transient && count == 1 {
                let found = self.find_launched(s, req).await.map_err(Failure::from)?;
                if !found.is_empty() {
                    return Ok(found);
                }
            }
        }
    }

    /// The instances already launched for this call (by their
    /// `runfleet:launch` tag, or by client token when the request carries
    /// no such tag).
    async fn find_launched(&self, s: &Session, req: &LaunchRequest) -> PortResult<Vec<Launched>> {
        const OP: &str = "ec2:DescribeInstances";
        let launch_tag = req
            .tags
            .iter()
            .find(|(k, _)| k == TAG_LAUNCH)
            .map(|(_, v)| v.clone());
        let mut filters = vec![filter(
            "instance-state-name",
            ["pending", "running"].map(str::to_string),
        )];
        match launch_tag {
            Some(v) => filters.push(filter(&format!("tag:{TAG_LAUNCH}"), [v])),
            None => filters.push(filter(
                "client-token",
                req.offerings
                    .iter()
                    .map(|o| offering_token(&req.client_token, o)),
            )),
        }
        self.describe(s, OP, filters, |i| {
            let ty = i.instance_type().map(|t| t.as_str().to_string())?;
            let market = market_of(i);
            let off = req
                .offerings
                .iter()
                .find(|o| o.instance_type == ty && o.market == market)
                .cloned()
                .unwrap_or(Offering {
                    instance_type: ty,
                    subnet: i.subnet_id().map(str::to_string),
                    market,
                });
            launched_from(i, &off).ok()
        })
        .await
    }

    /// Every instance matching `filters` (all pages).
    async fn describe<T>(
        &self,
        s: &Session,
        op: &str,
        filters: Vec<Filter>,
        mut keep: impl FnMut(&Ec2Instance) -> Option<T>,
    ) -> PortResult<Vec<T>> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = self
                .call(s, Api::Describe, op, true, || {
                    let b = s
                        .ec2
                        .describe_instances()
                        .set_filters(Some(filters.clone()))
                        .max_results(self.opts.describe_page_size.clamp(5, 1000))
                        .set_next_token(next.clone());
                    async move {
                        b.send()
                            .await
                            .map_err(|e| failure("ec2:DescribeInstances", &e))
                    }
                })
                .await
                .map_err(|f| f.err)?;
            // Only what the caller keeps outlives the page: the SDK's
            // description of an instance is kilobytes, and thousands of
            // them held at once stay in the process's memory after.
            for r in page.reservations() {
                out.extend(r.instances().iter().filter_map(&mut keep));
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    // ------------------------------------------------------------------
    // Observe and terminate
    // ------------------------------------------------------------------

    async fn list_impl(&self, fleet: &str) -> PortResult<Vec<CloudInstance>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for key in self.known_keys() {
            let s = self.session(&key).await?;
            let instances = self
                .describe(
                    &s,
                    "ec2:DescribeInstances",
                    vec![filter(&format!("tag:{TAG_FLEET}"), [fleet.to_string()])],
                    cloud_instance,
                )
                .await?;
            for ci in instances {
                // Only what really carries this fleet's tag.
                if ci.tag(TAG_FLEET) != Some(fleet) || !seen.insert(ci.id.clone()) {
                    continue;
                }
                self.note_owner(&ci.id, &key);
                out.push(ci);
            }
        }
        Ok(out)
    }

    async fn terminate_impl(&self, fleet: &str, ids: &[String]) -> PortResult<()> {
        let mut wanted: Vec<String> = Vec::new();
        for id in ids {
            if !wanted.contains(id) {
                wanted.push(id.clone());
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let batch = self.opts.terminate_batch.clamp(1, 1000);
        // Look every id up first: which session holds it and which fleet it is tagged with.
        let mut mine: BTreeMap<RoleKey, Vec<String>> = BTreeMap::new();
        let mut refused: Vec<String> = Vec::new();
        let mut found: HashSet<String> = HashSet::new();
        for key in self.known_keys() {
            let s = self.session(&key).await?;
            let rest: Vec<String> = wanted
                .iter()
                .filter(|i| !found.contains(*i))
                .cloned()
                .collect();
            for chunk in rest.chunks(batch) {
                // (id, tagged with this fleet, terminated)
                let instances = self
                    .describe(
                        &s,
                        "ec2:DescribeInstances",
                        vec![filter("instance-id", chunk.iter().cloned())],
                        |i| {
                            let id = i.instance_id()?.to_string();
                            let tagged = i
                                .tags()
                                .iter()
                                .any(|t| t.key() == Some(TAG_FLEET) && t.value() == Some(fleet));
                            let gone = matches!(
                                i.state().and_then(|st| st.name()),
                                Some(InstanceStateName::Terminated)
                            );
                            Some((id, tagged, gone))
                        },
                    )
                    .await?;
                for (id, tagged, gone) in instances {
                    if !chunk.contains(&id) || !found.insert(id.clone()) {
                        continue;
                    }
                    if !tagged {
                        refused.push(id);
                        continue;
                    }
                    self.note_owner(&id, &key);
                    if !gone {
                        mine.entry(key.clone()).or_default().push(id);
                    }
                }
            }
        }
        for (key, ids) in &mine {
            let s = self.session(key).await?;
            for chunk in ids.chunks(batch) {
                self.call(
                    &s,
                    Api::TerminateInstances,
                    "ec2:TerminateInstances",
                    true,
                    || {
                        let b = s
                            .ec2
                            .terminate_instances()
                            .set_instance_ids(Some(chunk.to_vec()));
                        async move {
                            b.send()
                                .await
                                .map_err(|e| failure("ec2:TerminateInstances", &e))
                        }
                    },
                )
                .await
                .map_err(|f| f.err)?;
                info!(fleet, count = chunk.len(), "terminated instances");
            }
        }
        let missing = wanted.len() - found.len();
        if missing > 0 {
            debug!(
                fleet,
                missing, "instances to terminate not found (already gone)"
            );
        }
        if !refused.is_empty() {
            refused.sort();
            warn!(fleet, refused = ?refused, "refused to terminate instances without this fleet's tag");
            return Err(PortError::new(
                ErrorKind::Invalid,
                format!(
                    "ec2:TerminateInstances: refused {} not tagged {TAG_FLEET}={fleet}",
                    refused.join(", ")
                ),
            ));
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // SSM
    // ------------------------------------------------------------------

    /// The session an instance lives in: where it was seen, else the only
    /// known one, else the first that lists it.
    async fn owner_of(&self, instance_id: &str) -> PortResult<Option<RoleKey>> {
        if let Some(k) = lock(&self.owners).get(instance_id) {
            return Ok(Some(k.clone()));
        }
        let keys = self.known_keys();
        if keys.len() == 1 {
            return Ok(keys.into_iter().next());
        }
        for key in keys {
            let s = self.session(&key).await?;
            let found = self
                .describe(
                    &s,
                    "ec2:DescribeInstances",
                    vec![filter("instance-id", [instance_id.to_string()])],
                    |i| i.instance_id().map(str::to_string),
                )
                .await?;
            if !found.is_empty() {
                self.note_owner(instance_id, &key);
                return Ok(Some(key));
            }
        }
        Ok(None)
    }

    async fn put_jit_impl(&self, fleet: &str, instance_id: &str, value: &Secret) -> PortResult<()> {
        const OP: &str = "ssm:PutParameter";
        let name = jit_parameter(fleet, instance_id)?;
        let key = self.owner_of(instance_id).await?.ok_or_else(|| {
            PortError::new(
                ErrorKind::NotFound,
                format!("{OP}: instance {instance_id} is in no known account"),
            )
        })?;
        let s = self.session(&key).await?;
        self.call(&s, Api::SsmWrite, OP, true, || {
            let b = s
                .ssm
                .put_parameter()
                .name(&name)
                .value(value.expose())
                .r#type(ParameterType::SecureString)
                .overwrite(true);
            async move { b.send().await.map_err(|e| failure(OP, &e)) }
        })
        .await
        .map_err(|f| scrub(f.err, value.expose()))?;
        debug!(fleet, instance_id, "runner config parameter written");
        Ok(())
    }

    async fn delete_jit_impl(&self, fleet: &str, instance_id: &str) -> PortResult<()> {
        const OP: &str = "ssm:DeleteParameter";
        let name = jit_parameter(fleet, instance_id)?;
        let keys = match lock(&self.owners).get(instance_id) {
            Some(k) => vec![k.clone()],
            None => self.known_keys(),
        };
        for key in keys {
            let s = self.session(&key).await?;
            let r = self
                .call(&s, Api::SsmWrite, OP, true, || {
                    let b = s.ssm.delete_parameter().name(&name);
                    async move { b.send().await.map_err(|e| failure(OP, &e)) }
                })
                .await;
            match r {
                Ok(_) => {}
                Err(f) if f.err.kind == ErrorKind::NotFound => {}
                Err(f) => return Err(f.err),
            }
        }
        Ok(())
    }

    async fn list_jit_impl(&self, fleet: &str) -> PortResult<Vec<String>> {
        const OP: &str = "ssm:GetParametersByPath";
        let prefix = instances_prefix(fleet)?;
        let mut ids = BTreeSet::new();
        for key in self.known_keys() {
            let s = self.session(&key).await?;
            let mut next: Option<String> = None;
            loop {
                let page = self
                    .call(&s, Api::SsmRead, OP, true, || {
                        // Never decrypt: only the names are wanted.
                        let b = s
                            .ssm
                            .get_parameters_by_path()
                            .path(&prefix)
                            .recursive(true)
                            .with_decryption(false)
                            .max_results(self.opts.ssm_page_size.clamp(1, 10))
                            .set_next_token(next.clone());
                        async move { b.send().await.map_err(|e| failure(OP, &e)) }
                    })
                    .await
                    .map_err(|f| f.err)?;
                for p in page.parameters() {
                    if let Some(id) = p.name().and_then(|n| instance_of_parameter(&prefix, n)) {
                        if !lock(&self.owners).contains_key(id) {
                            self.note_owner(id, &key);
                        }
                        ids.insert(id.to_string());
                    }
                }
                match page.next_token() {
                    Some(t) if !t.is_empty() => next = Some(t.to_string()),
                    _ => break,
                }
            }
        }
        Ok(ids.into_iter().collect())
    }
}

#[async_trait]
impl Cloud for AwsCloud {
    async fn launch(&self, req: &LaunchRequest) -> PortResult<LaunchOutcome> {
        self.launch_impl(req).await
    }
    async fn list_instances(&self, fleet: &str) -> PortResult<Vec<CloudInstance>> {
        self.list_impl(fleet).await
    }
    async fn terminate(&self, fleet: &str, instance_ids: &[String]) -> PortResult<()> {
        self.terminate_impl(fleet, instance_ids).await
    }
    async fn put_jit(&self, fleet: &str, instance_id: &str, value: &Secret) -> PortResult<()> {
        self.put_jit_impl(fleet, instance_id, value).await
    }
    async fn delete_jit(&self, fleet: &str, instance_id: &str) -> PortResult<()> {
        self.delete_jit_impl(fleet, instance_id).await
    }
    async fn list_jit(&self, fleet: &str) -> PortResult<Vec<String>> {
        self.list_jit_impl(fleet).await
    }
    async fn poll_events(&self) -> PortResult<Vec<CloudEvent>> {
        let Some(q) = &self.events else {
            return Ok(Vec::new());
        };
        let received = q.receive().await;
        // Requests are counted whether or not the answer was good.
        match &received {
            Ok(r) => r.requests.iter().for_each(|op| self.count(op)),
            Err(_) => self.count("sqs:ReceiveMessage"),
        }
        Ok(received?.events)
    }
    async fn ack_events(&self, acks: &[String]) -> PortResult<()> {
        let Some(q) = &self.events else {
            return Ok(());
        };
        if acks.is_empty() {
            return Ok(());
        }
        let result = q.delete(acks).await;
        for _ in 0..acks.len().div_ceil(10) {
            self.count("sqs:DeleteMessageBatch");
        }
        result.map(|_| ())
    }
}

// ----------------------------------------------------------------------
// Pure helpers
// ----------------------------------------------------------------------

/// Every account session the pools of `cfg` launch in.
pub fn config_roles(cfg: &Config) -> BTreeSet<RoleKey> {
    let mut keys: BTreeSet<RoleKey> = cfg
        .pools
        .iter()
        .map(|p| {
            let role = p.role_arn.as_deref().or(cfg.aws.role_arn.as_deref());
            let ext = p
                .external_id
                .as_ref()
                .or(cfg.aws.external_id.as_ref())
                .map(Secret::expose);
            RoleKey::new(role, ext)
        })
        .collect();
    if keys.is_empty() {
        keys.insert(RoleKey::new(
            cfg.aws.role_arn.as_deref(),
            cfg.aws.external_id.as_ref().map(Secret::expose),
        ));
    }
    keys
}

/// Whether a failed offering lets the launch go on to the next one: no
/// capacity or no quota for it (a spot quota does not stop on-demand), or a
/// parameter of this offering (subnet, instance type) is wrong.
fn advances(f: &Failure) -> bool {
    match f.err.kind {
        ErrorKind::Capacity | ErrorKind::Quota => true,
        ErrorKind::Invalid => f.code.as_deref().is_some_and(|c| {
            c.starts_with("InvalidSubnet")
                || c == "InvalidParameterValue"
                || c == "InvalidInstanceType"
        }),
        _ => false,
    }
}

/// The client token of one offering of a launch: the launch id plus a digest
/// of the offering. EC2 answers `IdempotentParameterMismatch` when a token is
/// reused with other parameters, so each (launch, offering) pair has its
/// own, and the same pair always gets the same one (at most 64 characters).
pub fn offering_token(launch_id: &str, off: &Offering) -> String {
    let market = match off.market {
        CapacityMarket::Spot => "spot",
        CapacityMarket::OnDemand => "od",
    };
    let digest = fnv64(&format!(
        "{}|{}|{market}",
        off.instance_type,
        off.subnet.as_deref().unwrap_or("")
    ));
    let short = (digest ^ (digest >> 32)) as u32;
    let token = format!("{launch_id}-{short:08x}");
    if token.len() <= 64 && token.is_ascii() {
        token
    } else {
        format!("rf-{:016x}-{short:08x}", fnv64(launch_id))
    }
}

fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// A launch template by id (`lt-` and hex) or by name, at `version`
/// (`$Default` when none).
pub fn template_spec(template: &str, version: Option<&str>) -> LaunchTemplateSpecification {
    let b = LaunchTemplateSpecification::builder().version(version.unwrap_or("$Default"));
    if is_template_id(template) {
        b.launch_template_id(template).build()
    } else {
        b.launch_template_name(template).build()
    }
}

pub fn is_template_id(s: &str) -> bool {
    s.strip_prefix("lt-").is_some_and(|hex| {
        (8..=17).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

fn spot_options() -> InstanceMarketOptionsRequest {
    InstanceMarketOptionsRequest::builder()
        .market_type(MarketType::Spot)
        .spot_options(
            SpotMarketOptions::builder()
                .spot_instance_type(SpotInstanceType::OneTime)
                .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                .build(),
        )
        .build()
}

pub(crate) fn filter(name: &str, values: impl IntoIterator<Item = String>) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.into_iter().collect()))
        .build()
}

fn millis_of(t: Option<&aws_sdk_ec2::primitives::DateTime>) -> Millis {
    t.map_or(0, |d| {
        (d.secs().max(0) as u64) * 1000 + (d.subsec_nanos() / 1_000_000) as u64
    })
}

fn market_of(i: &Ec2Instance) -> CapacityMarket {
    match i.instance_lifecycle().map(|l| l.as_str()) {
        Some("spot") => CapacityMarket::Spot,
        _ => CapacityMarket::OnDemand,
    }
}

fn launched_from(i: &Ec2Instance, off: &Offering) -> Result<Launched, Failure> {
    let id = i.instance_id().ok_or_else(|| {
        Failure::from(PortError::new(
            ErrorKind::Transient,
            "ec2:RunInstances: instance without an id",
        ))
    })?;
    Ok(Launched {
        instance_id: id.to_string(),
        offering: off.clone(),
        launched_at: millis_of(i.launch_time()),
    })
}

fn state_of(name: Option<&InstanceStateName>) -> InstanceState {
    match name {
        Some(InstanceStateName::Pending) => InstanceState::Pending,
        Some(InstanceStateName::Running) => InstanceState::Running,
        Some(InstanceStateName::ShuttingDown) => InstanceState::ShuttingDown,
        Some(InstanceStateName::Terminated) => InstanceState::Terminated,
        Some(InstanceStateName::Stopping) => InstanceState::Stopping,
        Some(InstanceStateName::Stopped) => InstanceState::Stopped,
        _ => InstanceState::Pending,
    }
}

/// An EC2 instance as the engine sees it.
pub fn cloud_instance(i: &Ec2Instance) -> Option<CloudInstance> {
    Some(CloudInstance {
        id: i.instance_id()?.to_string(),
        state: state_of(i.state().and_then(|s| s.name())),
        launched_at: millis_of(i.launch_time()),
        tags: i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string())))
            .collect(),
        market: Some(market_of(i)),
    })
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s != "."
        && s != ".."
}

/// `/runfleet/<fleet>/instances/`.
pub fn instances_prefix(fleet: &str) -> PortResult<String> {
    if !valid_segment(fleet) {
        return Err(PortError::new(
            ErrorKind::Invalid,
            "ssm: fleet name is not a plain path segment",
        ));
    }
    Ok(format!("/runfleet/{fleet}/instances/"))
}

/// `/runfleet/<fleet>/instances/<instance id>/jitconfig`; refuses any name
/// that would leave the fleet's prefix.
pub fn jit_parameter(fleet: &str, instance_id: &str) -> PortResult<String> {
    let prefix = instances_prefix(fleet)?;
    if !valid_segment(instance_id) {
        return Err(PortError::new(
            ErrorKind::Invalid,
            "ssm: instance id is not a plain path segment",
        ));
    }
    Ok(format!("{prefix}{instance_id}/jitconfig"))
}

/// The instance id of a parameter named `<prefix><id>/jitconfig`.
fn instance_of_parameter<'a>(prefix: &str, name: &'a str) -> Option<&'a str> {
    let id = name.strip_prefix(prefix)?.strip_suffix("/jitconfig")?;
    valid_segment(id).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn off(t: &str, subnet: Option<&str>, market: CapacityMarket) -> Offering {
        Offering {
            instance_type: t.into(),
            subnet: subnet.map(str::to_string),
            market,
        }
    }

    #[test]
    fn tokens_are_stable_distinct_and_short() {
        let a = off("m7i.large", Some("subnet-a"), CapacityMarket::Spot);
        let b = off("m7i.large", Some("subnet-a"), CapacityMarket::OnDemand);
        let c = off("m6i.large", Some("subnet-a"), CapacityMarket::Spot);
        let t = |o: &Offering| offering_token("acme-ci-j42-1", o);
        assert_eq!(t(&a), t(&a));
        assert!(t(&a).starts_with("acme-ci-j42-1-"));
        assert_ne!(t(&a), t(&b));
        assert_ne!(t(&a), t(&c));
        let long = "x".repeat(80);
        let lt = offering_token(&long, &a);
        assert!(lt.len() <= 64, "{lt}");
        assert_ne!(lt, offering_token(&"y".repeat(80), &a));
    }

    #[test]
    fn parameter_names_stay_under_the_fleet_prefix() {
        assert_eq!(
            jit_parameter("acme-ci", "i-0123").unwrap(),
            "/runfleet/acme-ci/instances/i-0123/jitconfig"
        );
        for bad in ["", "..", "i-1/../../x", "a b", "i-1/jitconfig"] {
            assert!(jit_parameter("acme-ci", bad).is_err(), "{bad:?}");
        }
        assert!(jit_parameter("../other", "i-1").is_err());
        let prefix = instances_prefix("f").unwrap();
        assert_eq!(
            instance_of_parameter(&prefix, "/runfleet/f/instances/i-9/jitconfig"),
            Some("i-9")
        );
        assert_eq!(
            instance_of_parameter(&prefix, "/runfleet/f/instances/i-9/other"),
            None
        );
        assert_eq!(
            instance_of_parameter(&prefix, "/runfleet/g/instances/i-9/jitconfig"),
            None
        );
    }

    #[test]
    fn template_ids_and_names() {
        assert!(is_template_id("lt-0123456789abcdef0"));
        assert!(!is_template_id("lt-runners"));
        assert!(!is_template_id("linux-runner"));
        let s = template_spec("lt-0123456789abcdef0", None);
        assert_eq!(s.launch_template_id(), Some("lt-0123456789abcdef0"));
        assert_eq!(s.version(), Some("$Default"));
        let s = template_spec("my-template", Some("3"));
        assert_eq!(s.launch_template_name(), Some("my-template"));
        assert_eq!(s.version(), Some("3"));
    }

    #[test]
    fn which_failures_walk_on() {
        let f = |kind, code: Option<&str>| Failure {
            err: PortError::new(kind, "x"),
            code: code.map(str::to_string),
        };
        assert!(advances(&f(
            ErrorKind::Capacity,
            Some("InsufficientInstanceCapacity")
        )));
        assert!(advances(&f(
            ErrorKind::Quota,
            Some("MaxSpotInstanceCountExceeded")
        )));
        assert!(advances(&f(
            ErrorKind::Invalid,
            Some("InvalidSubnetID.NotFound")
        )));
        assert!(!advances(&f(
            ErrorKind::Invalid,
            Some("InvalidLaunchTemplateId.NotFound")
        )));
        assert!(!advances(&f(
            ErrorKind::Auth,
            Some("UnauthorizedOperation")
        )));
        assert!(!advances(&f(ErrorKind::Transient, None)));
        assert!(!advances(&f(
            ErrorKind::Throttled,
            Some("RequestLimitExceeded")
        )));
    }
}
