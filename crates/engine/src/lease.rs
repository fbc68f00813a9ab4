//! Several `serve` replicas on one store: the leadership lease.
//!
//! Every replica accepts intake (webhooks, `/v1` calls) into the shared
//! store; only the replica holding the lease steps and reconciles. A
//! [`Lease`] keeps trying to take or renew the lease every `ttl / 3`
//! ([`Lease::keep`]); a [`LeasedStore`] wraps the store so that every
//! `apply` of this replica is [`Store::apply_fenced`] with the epoch it
//! holds, and is refused without one. The driver
//! ([`crate::driver::drive`]) acts only while [`Lease::leading`] answers an
//! epoch, reloads the engine's state from the store whenever it starts
//! leading at a new epoch, and on a follower just reloads the state
//! periodically for the status page.
//!
//! # Why every job still gets exactly one instance
//!
//! - A launch is recorded (fenced) before its cloud call, and its id is the
//!   EC2 `ClientToken`. A new leader loads every recorded launch when it
//!   takes the lease, so it resumes the same ids; two replicas that briefly
//!   both act on one launch id get the same instance from EC2.
//! - A leader that lost the lease cannot write: the store refuses its batch
//!   whole (fenced by epoch, in the same transaction as the writes, and
//!   serialised with the taking of the lease). So no record of a new leader
//!   is ever overwritten by an older leader's view, and a launch record
//!   never goes backwards (e.g. `launched` back to `requested`): only the
//!   current epoch writes, and it started from what the store holds.
//! - A leader also stops acting on its own once its lease is older than the
//!   ttl on its monotonic clock without a renewal, which bounds the overlap
//!   to clock drift between replicas; within that overlap the only cloud
//!   effect that could double is a launch, and the `ClientToken` makes it
//!   one instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use runfleet_core::model::IntakeEvent;
use serde::Serialize;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::driver::now_ms;
use crate::ports::{
    Fence, Intake, LeaseInfo, Mutation, PortError, PortResult, Snapshot, Store, TimelineEvent,
};

/// What the status page and `/readyz` show about the lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseView {
    /// This replica's id.
    pub replica: String,
    /// Whether this replica holds the lease (and so reconciles and launches).
    pub leader: bool,
    /// The epoch this replica holds, when it leads.
    pub epoch: Option<u64>,
    /// The holder as last read from the store (this replica when it leads).
    pub holder: Option<String>,
}

/// The lease as this replica last knew it (see [`Lease::subscribe`]).
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Held at this epoch until `until` (monotonic), if held.
    held: Option<(u64, Instant)>,
    /// The holder last seen in the store.
    holder: Option<String>,
}

struct Inner {
    store: Arc<dyn Store>,
    replica: String,
    ttl: Duration,
    state: watch::Sender<State>,
}

/// This replica's side of the leadership lease. Cheap to clone.
#[derive(Clone)]
pub struct Lease(Arc<Inner>);

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("replica", &self.0.replica)
            .field("ttl", &self.0.ttl)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// A lease for `replica` on `store` (the raw store, not a
    /// [`LeasedStore`]), held for `ttl` per renewal.
    pub fn new(store: Arc<dyn Store>, replica: impl Into<String>, ttl: Duration) -> Lease {
        Lease(Arc::new(Inner {
            store,
            replica: replica.into(),
            ttl,
            state: watch::Sender::new(State::default()),
        }))
    }

    /// This replica's id.
    pub fn replica(&self) -> &str {
        &self.0.replica
    }

    /// The lease period.
    pub fn ttl(&self) -> Duration {
        self.0.ttl
    }

    /// The epoch this replica holds right now, if it holds the lease and its
    /// last renewal is younger than the ttl.
    pub fn leading(&self) -> Option<u64> {
        let s = self.0.state.borrow();
        s.held
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(epoch, _)| epoch)
    }

    /// The fence for a write now, if this replica leads.
    pub fn fence(&self) -> Option<Fence> {
        self.leading().map(|epoch| Fence {
            holder: self.0.replica.clone(),
            epoch,
        })
    }

    /// What the status page shows.
    pub fn view(&self) -> LeaseView {
        let epoch = self.leading();
        LeaseView {
            replica: self.0.replica.clone(),
            leader: epoch.is_some(),
            epoch,
            holder: self.0.state.borrow().holder.clone(),
        }
    }

    /// Wakes when the lease state changes (taken, lost).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.0.state.subscribe()
    }

    /// Forgets the lease at once (a write was refused as fenced).
    pub fn lost(&self) {
        self.0.state.send_modify(|s| s.held = None);
    }

    /// One attempt to take or renew the lease; answers the epoch held.
    pub async fn renew(&self) -> PortResult<Option<u64>> {
        let asked = Instant::now();
        let ttl_ms = self.0.ttl.as_millis() as u64;
        let got = self
            .0
            .store
            .try_lease(&self.0.replica, ttl_ms, now_ms())
            .await;
        match got {
            Ok(Some(epoch)) => {
                let before = self.0.state.borrow().held.map(|(e, _)| e);
                if before != Some(epoch) {
                    info!(replica = %self.0.replica, epoch, "took the leadership lease");
                }
                let replica = self.0.replica.clone();
                self.0.state.send_modify(|s| {
                    s.held = Some((epoch, asked + self.0.ttl));
                    s.holder = Some(replica);
                });
                Ok(Some(epoch))
            }
            Ok(None) => {
                let holder = self.0.store.lease().await.ok().flatten();
                let was = self.0.state.borrow().held.is_some();
                if was {
                    warn!(replica = %self.0.replica, holder = ?holder.as_ref().map(|l| &l.holder), "lost the leadership lease");
                }
                self.0.state.send_if_modified(|s| {
                    let holder = holder.map(|l: LeaseInfo| l.holder);
                    let changed = s.held.is_some() || s.holder != holder;
                    s.held = None;
                    s.holder = holder;
                    changed
                });
                Ok(None)
            }
            Err(e) => {
                // Keep what is held until it lapses on its own.
                warn!(replica = %self.0.replica, error = %e, "cannot renew the leadership lease");
                Err(e)
            }
        }
    }

    /// Takes or renews the lease every `ttl / 3` until `stop` turns true,
    /// then gives it up if held.
    pub async fn keep(self, mut stop: watch::Receiver<bool>) {
        let every = (self.0.ttl / 3).max(Duration::from_millis(50));
        loop {
            if *stop.borrow() {
                break;
            }
            let _ = self.renew().await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => {}
            }
        }
        self.release().await;
    }

    /// Gives the lease up now (shutdown): another replica may take it at
    /// once instead of waiting for it to expire.
    pub async fn release(&self) {
        let held = self.0.state.borrow().held.is_some();
        self.lost();
        if held {
            match self.0.store.release_lease(&self.0.replica).await {
                Ok(()) => info!(replica = %self.0.replica, "released the leadership lease"),
                Err(e) => {
                    warn!(replica = %self.0.replica, error = %e, "cannot release the leadership lease")
                }
            }
        }
    }
}

/// A store whose every `apply` is fenced by this replica's lease: refused
/// (storing nothing) unless this replica leads. Intake and reads pass through.
pub struct LeasedStore {
    inner: Arc<dyn Store>,
    lease: Lease,
}

impl LeasedStore {
    pub fn new(inner: Arc<dyn Store>, lease: Lease) -> LeasedStore {
        LeasedStore { inner, lease }
    }
}

#[async_trait]
impl Store for LeasedStore {
    async fn intake_event(&self, delivery_id: &str, event: &IntakeEvent) -> PortResult<Intake> {
        self.inner.intake_event(delivery_id, event).await
    }
    async fn intake_since(&self, cursor: u64, limit: usize) -> PortResult<Vec<(u64, IntakeEvent)>> {
        self.inner.intake_since(cursor, limit).await
    }
    async fn load(&self) -> PortResult<Snapshot> {
        self.inner.load().await
    }
    async fn apply(&self, batch: &[Mutation]) -> PortResult<()> {
        let Some(fence) = self.lease.fence() else {
            return Err(PortError::fenced(format!(
                "replica {} does not hold the leadership lease; the batch was not stored",
                self.lease.replica()
            )));
        };
        let result = self.inner.apply_fenced(&fence, batch).await;
        if result.as_ref().is_err_and(PortError::is_fenced) {
            self.lease.lost();
        }
        result
    }
    async fn timeline(&self, job_id: Option<u64>, limit: usize) -> PortResult<Vec<TimelineEvent>> {
        self.inner.timeline(job_id, limit).await
    }
    async fn try_lease(&self, holder: &str, ttl_ms: u64, now_ms: u64) -> PortResult<Option<u64>> {
        self.inner.try_lease(holder, ttl_ms, now_ms).await
    }
    async fn release_lease(&self, holder: &str) -> PortResult<()> {
        self.inner.release_lease(holder).await
    }
    async fn lease(&self) -> PortResult<Option<LeaseInfo>> {
        self.inner.lease().await
    }
    async fn apply_fenced(&self, fence: &Fence, batch: &[Mutation]) -> PortResult<()> {
        self.inner.apply_fenced(fence, batch).await
    }
    async fn intake_stored_elsewhere(&self) {
        self.inner.intake_stored_elsewhere().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memstore::MemStore;

    #[tokio::test]
    async fn only_the_holder_writes_and_a_stopped_keeper_hands_over_at_once() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let ttl = Duration::from_secs(60);
        let a = Lease::new(store.clone(), "a", ttl);
        let b = Lease::new(store.clone(), "b", ttl);
        let sa = LeasedStore::new(store.clone(), a.clone());
        let sb = LeasedStore::new(store.clone(), b.clone());
        // Nobody leads yet: writes are refused, intake is not.
        assert!(
            sa.apply(&[Mutation::Cursor(1)])
                .await
                .unwrap_err()
                .is_fenced()
        );
        assert_eq!(a.renew().await.unwrap(), Some(1));
        assert_eq!(b.renew().await.unwrap(), None);
        assert_eq!(a.view().epoch, Some(1));
        assert_eq!(b.view().holder.as_deref(), Some("a"));
        assert!(!b.view().leader);
        sa.apply(&[Mutation::Cursor(2)]).await.unwrap();
        assert!(
            sb.apply(&[Mutation::Cursor(3)])
                .await
                .unwrap_err()
                .is_fenced()
        );
        assert_eq!(store.load().await.unwrap().cursor, 2);

        // a's keeper stops (shutdown): the lease is released, b takes it
        // without waiting 60 s, and a's late writes are refused.
        let (stop, rx) = watch::channel(false);
        let keeper = tokio::spawn(a.clone().keep(rx));
        stop.send(true).unwrap();
        keeper.await.unwrap();
        assert_eq!(a.leading(), None);
        assert_eq!(b.renew().await.unwrap(), Some(2));
        let stale = Fence {
            holder: "a".into(),
            epoch: 1,
        };
        assert!(
            store
                .apply_fenced(&stale, &[Mutation::Cursor(9)])
                .await
                .unwrap_err()
                .is_fenced()
        );
        sb.apply(&[Mutation::Cursor(4)]).await.unwrap();
        assert_eq!(store.load().await.unwrap().cursor, 4);
    }

    #[tokio::test]
    async fn a_lease_not_renewed_within_its_ttl_stops_counting() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        let a = Lease::new(store, "a", Duration::from_millis(30));
        assert_eq!(a.renew().await.unwrap(), Some(1));
        assert_eq!(a.leading(), Some(1));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(a.leading(), None, "acting on a lease older than its ttl");
        assert!(a.fence().is_none());
    }
}
