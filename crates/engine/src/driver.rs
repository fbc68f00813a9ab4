//! Runs an [`Engine`] on the wall clock: a step whenever intake wakes it (a
//! webhook or API call was stored) or a tick passes, a reconcile every
//! `reconcile_interval` and once at start (or on taking the lease), until
//! shutdown. With several replicas only the lease holder acts.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runfleet_core::model::Millis;
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::Engine;
use crate::lease::Lease;
use crate::ports::PortError;

/// Milliseconds since the Unix epoch, from the wall clock.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Handles shared between the driver and intake (HTTP handlers).
#[derive(Clone)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn new() -> Self {
        Waker(Arc::new(Notify::new()))
    }
    /// Asks for a step as soon as possible.
    pub fn wake(&self) {
        self.0.notify_one();
    }
    async fn woken(&self) {
        self.0.notified().await
    }
}

impl Default for Waker {
    fn default() -> Self {
        Self::new()
    }
}

/// Steps at least this often even without intake (timeouts, grace periods,
/// paced launches come due).
pub const TICK: Duration = Duration::from_secs(1);

/// A follower reloads its state from the store this often (status page).
pub const FOLLOWER_REFRESH: Duration = Duration::from_secs(2);

/// Drives the engine until `shutdown` turns true; the step under way is
/// finished first. `publish` sees the engine after every step (status page,
/// metrics).
///
/// With a lease in the engine's options (several replicas on one store),
/// the lease is kept by a task of its own (renewed every ttl/3), and the
/// engine steps and reconciles only while this replica holds it: on taking
/// it (at a new epoch) the state is reloaded from the store and a reconcile
/// runs at once; on losing it the engine stops acting and, like any
/// follower, only reloads its state every [`FOLLOWER_REFRESH`] for the
/// status page. On shutdown the lease is released, so another replica
/// takes over without waiting for it to expire.
pub async fn drive(
    engine: Engine,
    waker: Waker,
    shutdown: watch::Receiver<bool>,
    publish: impl FnMut(&mut Engine) + Send,
) -> Engine {
    match engine.options().lease.clone() {
        None => drive_alone(engine, waker, shutdown, publish).await,
        Some(lease) => drive_replica(engine, lease, waker, shutdown, publish).await,
    }
}

/// How long to wait for intake before stepping again: a tick, or less when
/// a recorded launch comes due sooner (batching window, EC2's buckets).
fn pause(engine: &Engine) -> Duration {
    let now = now_ms();
    match engine.next_due(now) {
        Some(due) => Duration::from_millis(due - now).min(TICK),
        None => TICK,
    }
}

async fn drive_alone(
    mut engine: Engine,
    waker: Waker,
    mut shutdown: watch::Receiver<bool>,
    mut publish: impl FnMut(&mut Engine) + Send,
) -> Engine {
    let interval = engine.config().server.reconcile_interval.as_millis() as Millis;
    let mut next_reconcile = 0;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = now_ms();
        if now >= next_reconcile {
            if let Err(e) = engine.reconcile(now).await {
                error!(error = %e, "reconcile failed");
                engine.note_store_error(&e);
            }
            next_reconcile = now + interval;
        }
        if let Err(e) = engine.step(now_ms()).await {
            error!(error = %e, "step failed");
            engine.note_store_error(&e);
        }
        publish(&mut engine);
        tokio::select! {
            _ = waker.woken() => {}
            _ = tokio::time::sleep(pause(&engine)) => {}
            _ = shutdown.changed() => {}
        }
    }
    info!("engine stopped");
    engine
}

async fn drive_replica(
    mut engine: Engine,
    lease: Lease,
    waker: Waker,
    mut shutdown: watch::Receiver<bool>,
    mut publish: impl FnMut(&mut Engine) + Send,
) -> Engine {
    let interval = engine.config().server.reconcile_interval.as_millis() as Millis;
    let (stop_keeper, keeper_stop) = watch::channel(false);
    let keeper = tokio::spawn(lease.clone().keep(keeper_stop));
    let mut changes = lease.subscribe();
    let store = engine.store().clone();
    let mut next_reconcile = 0;
    // The epoch whose state the engine holds and acts on.
    let mut acting: Option<u64> = None;
    let mut next_refresh = 0;
    // Say at once that this replica does not lead (yet).
    engine.set_lease_view(Some(lease.view()));
    publish(&mut engine);
    loop {
        if *shutdown.borrow() {
            break;
        }
        match lease.leading() {
            Some(epoch) => {
                if acting != Some(epoch) {
                    info!(replica = %lease.replica(), epoch, "leading: reloading the state from the store");
                    match engine.reload().await {
                        Ok(()) => {
                            acting = Some(epoch);
                            next_reconcile = 0;
                            // Leading shows before the first reconcile ends.
                            engine.set_lease_view(Some(lease.view()));
                            publish(&mut engine);
                        }
                        Err(e) => {
                            error!(error = %e, "cannot reload the state to lead");
                            engine.note_store_error(&e);
                        }
                    }
                }
                if acting == Some(epoch) {
                    let now = now_ms();
                    // After a failed write the in-memory state may hold
                    // what the store does not: reload before acting again.
                    if now >= next_reconcile {
                        if let Err(e) = engine.reconcile(now).await {
                            note_failure(&mut engine, &lease, "reconcile", &e);
                            acting = None;
                        }
                        next_reconcile = now + interval;
                    }
                    if acting.is_some()
                        && lease.leading() == Some(epoch)
                        && let Err(e) = engine.step(now_ms()).await
                    {
                        note_failure(&mut engine, &lease, "step", &e);
                        acting = None;
                    }
                }
            }
            None => {
                if acting.take().is_some() {
                    warn!(replica = %lease.replica(), "not leading any more: stopped acting");
                    next_refresh = 0;
                }
                let now = now_ms();
                if now >= next_refresh {
                    match engine.reload().await {
                        Ok(()) => engine.set_lease_view(Some(lease.view())),
                        Err(e) => engine.note_store_error(&e),
                    }
                    next_refresh = now + FOLLOWER_REFRESH.as_millis() as Millis;
                }
            }
        }
        engine.set_lease_view(Some(lease.view()));
        publish(&mut engine);
        tokio::select! {
            _ = waker.woken() => {}
            _ = tokio::time::sleep(pause(&engine)) => {}
            _ = shutdown.changed() => {}
            _ = changes.changed() => {}
            // A webhook stored by another replica: the leader steps now.
            _ = store.intake_stored_elsewhere() => {}
        }
    }
    let _ = stop_keeper.send(true);
    if let Err(e) = keeper.await {
        error!(error = %e, "lease keeper task failed");
        lease.release().await;
    }
    info!("engine stopped");
    engine
}

fn note_failure(engine: &mut Engine, lease: &Lease, what: &str, e: &PortError) {
    if e.is_fenced() {
        warn!(replica = %lease.replica(), "{what} stopped: {}", e.message);
        lease.lost();
    } else {
        error!(error = %e, "{what} failed");
        engine.note_store_error(e);
    }
}
