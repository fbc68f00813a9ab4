//! Runs an [`Engine`] on the wall clock: a step whenever intake wakes it (a
//! webhook or API call was stored) or a tick passes, a reconcile every
//! `reconcile_interval` and once at start, until shutdown.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use runfleet_core::model::Millis;
use tokio::sync::{Notify, watch};
use tracing::{error, info};

use crate::Engine;

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

/// Drives the engine until `shutdown` turns true; the step under way is
/// finished first. `publish` sees the engine after every step (status page,
/// metrics).
pub async fn drive(
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
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => {}
        }
    }
    info!("engine stopped");
    engine
}
