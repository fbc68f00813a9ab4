//! An in-memory [`Store`]: the simulator's and the tests' store, and the
//! reference the durable stores are tested against.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use runfleet_core::model::{Instance, IntakeEvent, Job, Launch};

use crate::ports::{
    Fence, Intake, LeaseInfo, Mutation, PortResult, Snapshot, Store, TimelineEvent,
};

#[derive(Default)]
struct Inner {
    deliveries: HashSet<String>,
    log: Vec<(u64, IntakeEvent)>,
    seq: u64,
    jobs: BTreeMap<u64, Job>,
    launches: BTreeMap<String, Launch>,
    instances: BTreeMap<String, Instance>,
    cursor: u64,
    timeline: Vec<TimelineEvent>,
    lease: Option<LeaseInfo>,
}

impl Inner {
    fn apply(&mut self, batch: &[Mutation]) {
        for m in batch {
            match m {
                Mutation::PutJob(job) => {
                    self.jobs.insert(job.id, job.clone());
                }
                Mutation::PutLaunch(l) => {
                    self.launches.insert(l.id.clone(), l.clone());
                }
                Mutation::PutInstance(i) => {
                    self.instances.insert(i.id.clone(), i.clone());
                }
                Mutation::DropInstance(id) => {
                    self.instances.remove(id);
                }
                Mutation::DropJob(id) => {
                    self.jobs.remove(id);
                    self.launches.retain(|_, l| l.job_id != Some(*id));
                }
                Mutation::Cursor(c) => self.cursor = *c,
                Mutation::Timeline(t) => self.timeline.push(t.clone()),
            }
        }
    }
}

/// The lease rule every store implements: `Some(epoch)` if `holder` may
/// have the lease `current` now, with the new lease to store.
pub fn lease_rule(
    current: Option<&LeaseInfo>,
    holder: &str,
    ttl_ms: u64,
    now_ms: u64,
) -> Option<LeaseInfo> {
    let epoch = match current {
        None => 1,
        Some(l) if l.holder == holder => l.epoch,
        Some(l) if l.expires_at <= now_ms => l.epoch + 1,
        Some(_) => return None,
    };
    Some(LeaseInfo {
        holder: holder.to_owned(),
        epoch,
        expires_at: now_ms.saturating_add(ttl_ms),
    })
}

/// Everything in one mutex; `apply` is atomic because it holds it.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
    /// Number of distinct deliveries stored.
    pub fn deliveries(&self) -> usize {
        self.inner.lock().unwrap().deliveries.len()
    }
}

#[async_trait]
impl Store for MemStore {
    async fn intake_event(&self, delivery_id: &str, event: &IntakeEvent) -> PortResult<Intake> {
        let mut g = self.inner.lock().unwrap();
        if !g.deliveries.insert(delivery_id.to_string()) {
            return Ok(Intake::Duplicate);
        }
        g.seq += 1;
        let seq = g.seq;
        g.log.push((seq, event.clone()));
        Ok(Intake::Stored(seq))
    }

    async fn intake_since(&self, cursor: u64, limit: usize) -> PortResult<Vec<(u64, IntakeEvent)>> {
        let g = self.inner.lock().unwrap();
        let start = g.log.partition_point(|(s, _)| *s <= cursor);
        Ok(g.log[start..].iter().take(limit).cloned().collect())
    }

    async fn load(&self) -> PortResult<Snapshot> {
        let g = self.inner.lock().unwrap();
        Ok(Snapshot {
            jobs: g.jobs.values().cloned().collect(),
            launches: g.launches.values().cloned().collect(),
            instances: g.instances.values().cloned().collect(),
            cursor: g.cursor,
        })
    }

    async fn apply(&self, batch: &[Mutation]) -> PortResult<()> {
        self.inner.lock().unwrap().apply(batch);
        Ok(())
    }

    async fn try_lease(&self, holder: &str, ttl_ms: u64, now_ms: u64) -> PortResult<Option<u64>> {
        let mut g = self.inner.lock().unwrap();
        Ok(
            lease_rule(g.lease.as_ref(), holder, ttl_ms, now_ms).map(|l| {
                let epoch = l.epoch;
                g.lease = Some(l);
                epoch
            }),
        )
    }

    async fn release_lease(&self, holder: &str) -> PortResult<()> {
        let mut g = self.inner.lock().unwrap();
        if let Some(l) = g.lease.as_mut().filter(|l| l.holder == holder) {
            l.expires_at = 0;
        }
        Ok(())
    }

    async fn lease(&self) -> PortResult<Option<LeaseInfo>> {
        Ok(self.inner.lock().unwrap().lease.clone())
    }

    async fn apply_fenced(&self, fence: &Fence, batch: &[Mutation]) -> PortResult<()> {
        let mut g = self.inner.lock().unwrap();
        if !fence.holds(g.lease.as_ref()) {
            return Err(fence.refused(g.lease.as_ref()));
        }
        g.apply(batch);
        Ok(())
    }

    async fn timeline(&self, job_id: Option<u64>, limit: usize) -> PortResult<Vec<TimelineEvent>> {
        let g = self.inner.lock().unwrap();
        let mut out: Vec<TimelineEvent> = g
            .timeline
            .iter()
            .rev()
            .filter(|t| job_id.is_none() || t.job_id == job_id)
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        Ok(out)
    }
}

impl MemStore {
    /// Whether a launch with this id is recorded (the simulator checks
    /// invariant 1 with it at every launch call).
    /// Whether a launch, or a batch of launches, of that id is recorded.
    pub fn has_launch(&self, id: &str) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.launches.contains_key(id)
            || inner
                .launches
                .values()
                .any(|l| l.batch.as_ref().is_some_and(|b| b.id == id))
    }
}
