//! An in-memory [`Store`]: the simulator's and the tests' store, and the
//! reference the durable stores are tested against.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use runfleet_core::model::{Instance, IntakeEvent, Job, Launch};

use crate::ports::{Intake, Mutation, PortResult, Snapshot, Store, TimelineEvent};

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
        let mut g = self.inner.lock().unwrap();
        for m in batch {
            match m {
                Mutation::PutJob(job) => {
                    g.jobs.insert(job.id, job.clone());
                }
                Mutation::PutLaunch(l) => {
                    g.launches.insert(l.id.clone(), l.clone());
                }
                Mutation::PutInstance(i) => {
                    g.instances.insert(i.id.clone(), i.clone());
                }
                Mutation::DropInstance(id) => {
                    g.instances.remove(id);
                }
                Mutation::DropJob(id) => {
                    g.jobs.remove(id);
                    g.launches.retain(|_, l| l.job_id != Some(*id));
                }
                Mutation::Cursor(c) => g.cursor = *c,
                Mutation::Timeline(t) => g.timeline.push(t.clone()),
            }
        }
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
    pub fn has_launch(&self, id: &str) -> bool {
        self.inner.lock().unwrap().launches.contains_key(id)
    }
}
