//! Keeps `serve`'s resident memory near what it really uses, on glibc.
//!
//! A reconcile of thousands of instances and runners allocates tens of
//! megabytes for a moment (EC2 and GitHub answers, parsed and converted);
//! glibc's allocator keeps what was freed, spread over one arena per
//! thread that allocated, so the process stays as large as its largest
//! moment (measured with 2,000 runners: 13.5 MB of heap in use, 16.5 MB
//! free but held). Two arenas instead of eight per core, and handing free
//! pages back every few seconds, return most of that memory soon after.
//!
//! Owns: the allocator's process-wide settings. Never: anything else; a
//! no-op on other platforms and allocators.

use std::time::Duration;

/// How often `serve` hands free pages back: a few milliseconds of one
/// thread each time, even with a hundred megabytes of heap.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);

/// At most two malloc arenas. Call before any thread is started (before
/// the runtime is built).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; no thread other
    // than this one exists yet.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Every `every`, hands the allocator's free pages back to the system
/// (`malloc_trim(0)`, on a blocking thread: it walks the arenas). Runs
/// until the runtime stops.
pub fn spawn_trim(every: Duration) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // SAFETY: malloc_trim is thread-safe; it only releases memory
            // the allocator holds free.
            let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
        }
    });
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = every;
}
