//! The store conformance suite: what every [`Store`] must do, written once,
//! run against the in-memory reference ([`MemStore`]), [`SqliteStore`] and
//! [`PgStore`](crate::PgStore).
//!
//! Each case is a `pub async fn(&dyn TestDb)` that panics on a violation.
//! A backend's tests implement [`TestDb`] (how to open a handle on one fresh
//! database) and expand [`conformance_tests!`](crate::conformance_tests) to
//! get one `#[tokio::test]` per case:
//!
//! ```text
//! runfleet_store::conformance_tests!(|| async { Box::new(MyDb::fresh().await) as Box<dyn TestDb> });
//! ```
//!
//! Random inputs come from proptest's deterministic runner, so a failure
//! reproduces on every run; the failing input is in the panic message.
//!
//! [`SqliteStore`]: crate::SqliteStore

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use runfleet_core::config::CapacityMarket;
use runfleet_core::model::{
    ErrorKind, Instance, InstanceState, IntakeEvent, Interruption, InterruptionKind, Job, JobEvent,
    JobState, JobStatus, Launch, LaunchState, Millis, Offering, Scope, StartRequest,
    TerminateReason,
};
use runfleet_engine::memstore::MemStore;
use runfleet_engine::ports::{Fence, Intake, Mutation, Snapshot, Store, TimelineEvent};

/// One database under test.
#[async_trait]
pub trait TestDb: Send + Sync {
    /// A new handle on this database: every call sees the same data.
    async fn open(&self) -> Arc<dyn Store>;
    /// Arranges that applying `Mutation::Timeline` with this `what` fails
    /// inside the store (a trigger raising an error, say), so that a batch
    /// can be made to fail midway. `false`: this backend cannot fail
    /// (the in-memory reference), and the cases that need it check less.
    async fn fail_timeline_what(&self, what: &str) -> bool;
}

/// The in-memory reference as a [`TestDb`]: every handle is the same store.
#[derive(Default)]
pub struct MemDb(Arc<MemStore>);

impl MemDb {
    pub fn new() -> MemDb {
        MemDb::default()
    }
}

#[async_trait]
impl TestDb for MemDb {
    async fn open(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
    async fn fail_timeline_what(&self, _what: &str) -> bool {
        false
    }
}

/// One `#[tokio::test]` per conformance case, for the backend that `$make`
/// (a closure returning a future of `Box<dyn TestDb>`, one fresh database
/// per call) opens. The calling crate needs `tokio` with `macros` and
/// `rt-multi-thread`.
///
/// `conformance_tests!(optional: $make)`: `$make` returns a future of
/// `Option<Box<dyn TestDb>>`, `None` when the backend is not available here
/// (it printed why): each case then passes without running.
#[macro_export]
macro_rules! conformance_tests {
    (@names ($($opt:ident)?) $make:expr) => {
        $crate::conformance_tests!(@cases ($($opt)?) $make;
            empty_store_loads_empty,
            duplicate_delivery_stored_once,
            intake_since_order_and_limit,
            intake_matches_the_reference_store,
            apply_batch_is_atomic,
            puts_overwrite_by_id,
            drop_job_removes_its_launches,
            cursor_persists,
            timeline_order_filter_limit,
            load_round_trips_every_field,
            load_round_trips_arbitrary_records,
            apply_matches_the_reference_store,
            reopen_sees_everything_committed,
            concurrent_intakes_store_each_delivery_once,
            tailing_intake_since_misses_nothing,
            start_requests_share_the_intake_log,
            tailing_two_handles_misses_nothing,
            lease_is_exclusive_until_it_expires,
            fenced_apply_refuses_a_stale_leader_whole,
            concurrent_lease_takers_one_winner,
        );
    };
    (@cases () $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let db: Box<dyn $crate::conformance::TestDb> = ($make)().await;
                $crate::conformance::$case(&*db).await;
            }
        )*
    };
    (@cases (optional) $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let db: Option<Box<dyn $crate::conformance::TestDb>> = ($make)().await;
                if let Some(db) = db {
                    $crate::conformance::$case(&*db).await;
                }
            }
        )*
    };
    (optional: $make:expr) => {
        $crate::conformance_tests!(@names (optional) $make);
    };
    ($make:expr) => {
        $crate::conformance_tests!(@names () $make);
    };
}

// ---------------------------------------------------------------------------
// Fixtures

/// A job event whose fields tell where it came from.
pub fn event(job_id: u64, status: JobStatus, at: Millis) -> JobEvent {
    JobEvent {
        job_id,
        run_id: job_id * 10,
        repo: format!("acme/repo-{}", job_id % 3),
        labels: vec!["self-hosted".into(), "linux".into()],
        status,
        runner_name: (status != JobStatus::Queued).then(|| format!("runfleet-p-i-{job_id:x}")),
        conclusion: (status == JobStatus::Completed).then(|| "success".to_owned()),
        at,
    }
}

pub fn job(id: u64, state: JobState) -> Job {
    let mut j = Job::new(&event(id, JobStatus::Queued, 1_700_000_000_000 + id));
    j.state = state;
    j
}

pub fn launch(id: &str, job_id: Option<u64>) -> Launch {
    Launch {
        id: id.to_owned(),
        pool: "linux-x64".into(),
        scope: Scope::Repo("acme/app".into()),
        job_id,
        unique_label: None,
        name: None,
        state: LaunchState::Requested,
        requested_at: 1_700_000_000_000,
        instance_id: None,
        error: None,
        not_before: 0,
        batch: None,
    }
}

pub fn instance(id: &str, launch_id: Option<&str>) -> Instance {
    Instance {
        id: id.to_owned(),
        fleet: "acme-ci".into(),
        pool: "linux-x64".into(),
        state: InstanceState::Running,
        launched_at: 1_700_000_000_000,
        launch_id: launch_id.map(str::to_owned),
        scope: Some(Scope::Repo("acme/app".into())),
        unique_label: None,
        market: Some(CapacityMarket::Spot),
        jit_written: true,
        param_present: true,
        runner_online_at: None,
        busy: false,
        job_done_at: None,
        terminate_requested_at: None,
        terminate_reason: None,
        offering: None,
        interruption: None,
        assigned: None,
    }
}

pub fn timeline_event(at: Millis, job_id: Option<u64>, what: &str) -> TimelineEvent {
    TimelineEvent {
        at,
        job_id,
        instance_id: job_id.map(|j| format!("i-{j:x}")),
        what: what.to_owned(),
    }
}

async fn all_intake(store: &dyn Store) -> Vec<(u64, JobEvent)> {
    jobs_only(
        store
            .intake_since(0, usize::MAX)
            .await
            .expect("intake_since"),
    )
}

/// The job observations of an intake page (these cases store no start requests).
fn jobs_only(page: Vec<(u64, IntakeEvent)>) -> Vec<(u64, JobEvent)> {
    page.into_iter()
        .map(|(seq, ev)| match ev {
            IntakeEvent::Job(ev) => (seq, ev),
            IntakeEvent::Start(req) => panic!("unexpected start request {req:?} at {seq}"),
        })
        .collect()
}

fn assert_strictly_increasing(seqs: impl IntoIterator<Item = u64>) {
    let seqs: Vec<u64> = seqs.into_iter().collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers not strictly increasing: {seqs:?}"
    );
}

fn stored(i: Intake) -> u64 {
    match i {
        Intake::Stored(seq) => seq,
        Intake::Duplicate => panic!("expected Stored, got Duplicate"),
    }
}

fn generate<S: Strategy>(runner: &mut TestRunner, strategy: &S) -> S::Value
where
    S::Value: Debug,
{
    strategy
        .new_tree(runner)
        .expect("generating a test input")
        .current()
}

// ---------------------------------------------------------------------------
// Strategies (arbitrary model values over their whole range)

/// u64s with the edges (0, 2^63 - 1, 2^63, u64::MAX) well represented.
pub fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => any::<u64>(),
        2 => 0..2_000_000_000_000u64,
        1 => select(vec![0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX]),
    ]
}

/// Any text, including the empty string, newlines, NUL and non-ASCII.
pub fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "(?s).{0,24}",
        1 => Just(String::new()),
        1 => "[a-z0-9/-]{1,12}",
    ]
}

pub fn arb_scope() -> impl Strategy<Value = Scope> {
    prop_oneof![
        arb_text().prop_map(Scope::Repo),
        arb_text().prop_map(Scope::Org)
    ]
}

pub fn arb_job_event() -> impl Strategy<Value = JobEvent> {
    (
        (arb_u64(), arb_u64(), arb_text(), vec(arb_text(), 0..4)),
        (
            select(vec![
                JobStatus::Queued,
                JobStatus::InProgress,
                JobStatus::Completed,
            ]),
            option::of(arb_text()),
            option::of(arb_text()),
            arb_u64(),
        ),
    )
        .prop_map(
            |((job_id, run_id, repo, labels), (status, runner_name, conclusion, at))| JobEvent {
                job_id,
                run_id,
                repo,
                labels,
                status,
                runner_name,
                conclusion,
                at,
            },
        )
}

pub fn arb_job(id: impl Strategy<Value = u64>) -> impl Strategy<Value = Job> {
    let state = select(vec![
        JobState::Queued,
        JobState::InProgress,
        JobState::Completed,
        JobState::Ignored,
        JobState::Failed,
    ]);
    (
        (
            id,
            arb_u64(),
            arb_text(),
            vec(arb_text(), 0..4),
            state,
            arb_u64(),
        ),
        (
            option::of(arb_u64()),
            option::of(arb_u64()),
            option::of(arb_text()),
            option::of(arb_text()),
            any::<u32>(),
            arb_u64(),
        ),
    )
        .prop_map(
            |(
                (id, run_id, repo, labels, state, queued_at),
                (started_at, completed_at, runner_name, reason, launches, retry_at),
            )| Job {
                id,
                run_id,
                repo,
                labels,
                state,
                queued_at,
                started_at,
                completed_at,
                runner_name,
                reason,
                launches,
                retry_at,
                conclusion: None,
                rerun_requested_at: None,
            },
        )
}

pub fn arb_error_kind() -> impl Strategy<Value = ErrorKind> {
    select(vec![
        ErrorKind::Capacity,
        ErrorKind::Throttled,
        ErrorKind::Quota,
        ErrorKind::Auth,
        ErrorKind::Invalid,
        ErrorKind::NotFound,
        ErrorKind::Transient,
    ])
}

pub fn arb_launch(
    id: impl Strategy<Value = String>,
    job_id: impl Strategy<Value = Option<u64>>,
) -> impl Strategy<Value = Launch> {
    let state = select(vec![
        LaunchState::Requested,
        LaunchState::Launched,
        LaunchState::Failed,
        LaunchState::Cancelled,
    ]);
    (
        (
            id,
            arb_text(),
            arb_scope(),
            job_id,
            option::of(arb_text()),
            option::of(arb_text()),
        ),
        (
            state,
            arb_u64(),
            option::of(arb_text()),
            option::of((arb_error_kind(), arb_text())),
            arb_u64(),
            option::of((arb_text(), 1u32..1000)),
        ),
    )
        .prop_map(
            |(
                (id, pool, scope, job_id, unique_label, name),
                (state, requested_at, instance_id, error, not_before, batch),
            )| Launch {
                id,
                pool,
                scope,
                job_id,
                unique_label,
                name,
                state,
                requested_at,
                instance_id,
                error,
                not_before,
                batch: batch.map(|(id, size)| runfleet_core::model::LaunchBatch { id, size }),
            },
        )
}

pub fn arb_instance(id: impl Strategy<Value = String>) -> impl Strategy<Value = Instance> {
    let state = select(vec![
        InstanceState::Pending,
        InstanceState::Running,
        InstanceState::Stopping,
        InstanceState::Stopped,
        InstanceState::ShuttingDown,
        InstanceState::Terminated,
    ]);
    let market = select(vec![CapacityMarket::Spot, CapacityMarket::OnDemand]);
    let reason = select(vec![
        TerminateReason::Completed,
        TerminateReason::BootTimeout,
        TerminateReason::MaxLifetime,
        TerminateReason::Orphan,
        TerminateReason::Idle,
        TerminateReason::PoolRemoved,
        TerminateReason::Interrupted,
    ]);
    (
        (
            id,
            arb_text(),
            arb_text(),
            state,
            arb_u64(),
            option::of(arb_text()),
        ),
        (
            option::of(arb_scope()),
            option::of(arb_text()),
            option::of(market),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            option::of(arb_u64()),
            any::<bool>(),
            option::of(arb_u64()),
            option::of(arb_u64()),
            option::of(reason),
        ),
    )
        .prop_map(
            |(
                (id, fleet, pool, state, launched_at, launch_id),
                (scope, unique_label, market, jit_written, param_present),
                (runner_online_at, busy, job_done_at, terminate_requested_at, terminate_reason),
            )| Instance {
                id,
                fleet,
                pool,
                state,
                launched_at,
                launch_id,
                scope,
                unique_label,
                market,
                jit_written,
                param_present,
                runner_online_at,
                busy,
                job_done_at,
                terminate_requested_at,
                terminate_reason,
                offering: None,
                interruption: None,
                assigned: None,
            },
        )
}

pub fn arb_timeline(
    job_id: impl Strategy<Value = Option<u64>>,
) -> impl Strategy<Value = TimelineEvent> {
    (arb_u64(), job_id, option::of(arb_text()), arb_text()).prop_map(
        |(at, job_id, instance_id, what)| TimelineEvent {
            at,
            job_id,
            instance_id,
            what,
        },
    )
}

/// Small id spaces, so that puts overwrite and drops hit.
fn few_job_ids() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0..6u64, 1 => Just(u64::MAX)]
}
fn few_launch_ids() -> impl Strategy<Value = String> {
    (0..8u8).prop_map(|n| format!("l{n}"))
}
fn few_instance_ids() -> impl Strategy<Value = String> {
    (0..6u8).prop_map(|n| format!("i-{n}"))
}

/// Any mutation, over small id spaces.
pub fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => arb_job(few_job_ids()).prop_map(Mutation::PutJob),
        3 => arb_launch(few_launch_ids(), option::of(few_job_ids())).prop_map(Mutation::PutLaunch),
        3 => arb_instance(few_instance_ids()).prop_map(Mutation::PutInstance),
        1 => few_instance_ids().prop_map(Mutation::DropInstance),
        1 => few_job_ids().prop_map(Mutation::DropJob),
        1 => arb_u64().prop_map(Mutation::Cursor),
        2 => arb_timeline(option::of(few_job_ids())).prop_map(Mutation::Timeline),
    ]
}

// ---------------------------------------------------------------------------
// Cases

/// A new store is empty, and every read of it says so.
pub async fn empty_store_loads_empty(db: &dyn TestDb) {
    let s = db.open().await;
    assert_eq!(s.load().await.unwrap(), Snapshot::default());
    assert!(s.intake_since(0, 10).await.unwrap().is_empty());
    assert!(s.timeline(None, 10).await.unwrap().is_empty());
    assert!(s.timeline(Some(1), 10).await.unwrap().is_empty());
    s.apply(&[]).await.unwrap();
    assert_eq!(s.load().await.unwrap(), Snapshot::default());
}

/// The same delivery id twice stores once; the second event is not kept,
/// even when its body differs, and even through another handle.
pub async fn duplicate_delivery_stored_once(db: &dyn TestDb) {
    let s = db.open().await;
    let first = event(7, JobStatus::Queued, 100);
    let other = event(8, JobStatus::Completed, 200);
    let a = stored(s.intake("d-1", &first).await.unwrap());
    assert_eq!(s.intake("d-1", &first).await.unwrap(), Intake::Duplicate);
    assert_eq!(s.intake("d-1", &other).await.unwrap(), Intake::Duplicate);
    let b = stored(s.intake("d-2", &first).await.unwrap());
    assert!(a < b, "{a} then {b}");
    // Delivery ids are compared exactly.
    let c = stored(s.intake("D-1", &other).await.unwrap());
    assert!(b < c);
    assert_eq!(
        all_intake(&*s).await,
        vec![(a, first.clone()), (b, first), (c, other.clone())]
    );
    let again = db.open().await;
    assert_eq!(
        again.intake("d-1", &other).await.unwrap(),
        Intake::Duplicate
    );
    assert_eq!(all_intake(&*again).await.len(), 3);
}

/// `intake_since` returns what follows the cursor, in order, at most `limit`.
pub async fn intake_since_order_and_limit(db: &dyn TestDb) {
    let s = db.open().await;
    let mut log = Vec::new();
    for n in 0..25u64 {
        let ev = event(n, JobStatus::Queued, 1000 - n);
        let seq = stored(s.intake(&format!("d-{n}"), &ev).await.unwrap());
        log.push((seq, ev));
    }
    assert_strictly_increasing(log.iter().map(|(s, _)| *s));
    assert_eq!(all_intake(&*s).await, log);
    // Paging with the last seq as the cursor walks the log exactly once.
    let mut cursor = 0;
    let mut pages = Vec::new();
    loop {
        let page = s.intake_since(cursor, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        cursor = page.last().unwrap().0;
        pages.push(page.len());
        assert!(pages.len() <= 3, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, [10, 10, 5]);
    assert_eq!(
        jobs_only(s.intake_since(log[4].0, 3).await.unwrap()),
        log[5..8]
    );
    // A cursor that is not a stored seq starts after it all the same.
    let after: Vec<_> = log
        .iter()
        .filter(|(q, _)| *q > log[4].0 + 1)
        .take(2)
        .cloned()
        .collect();
    assert_eq!(
        jobs_only(s.intake_since(log[4].0 + 1, 2).await.unwrap()),
        after
    );
    assert!(s.intake_since(0, 0).await.unwrap().is_empty());
    assert!(s.intake_since(log[24].0, 10).await.unwrap().is_empty());
    assert!(s.intake_since(u64::MAX, 10).await.unwrap().is_empty());
    assert!(
        s.intake_since(i64::MAX as u64 + 1, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Random intakes (any event, a few delivery ids reused) give the same
/// answers and the same log as the reference store; seqs may differ in
/// value but not in order.
pub async fn intake_matches_the_reference_store(db: &dyn TestDb) {
    let s = db.open().await;
    let reference = MemStore::new();
    let mut runner = TestRunner::deterministic();
    let strategy = vec((0..40u32, arb_job_event()), 1..30);
    for _ in 0..8 {
        let input = generate(&mut runner, &strategy);
        for (delivery, ev) in &input {
            let id = format!("delivery-{delivery}");
            let want = reference.intake(&id, ev).await.unwrap();
            let got = s.intake(&id, ev).await.unwrap();
            assert_eq!(
                matches!(got, Intake::Duplicate),
                matches!(want, Intake::Duplicate),
                "intake {id} {ev:?}: got {got:?}, reference {want:?}"
            );
        }
        let got = all_intake(&*s).await;
        let want = all_intake(&reference).await;
        assert_strictly_increasing(got.iter().map(|(s, _)| *s));
        let events = |l: &[(u64, JobEvent)]| l.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>();
        assert_eq!(events(&got), events(&want), "after {input:?}");
    }
}

/// A batch is applied whole or not at all. Where the backend can make a
/// mutation fail, a batch failing at its last mutation leaves no trace, the
/// store stays usable, and writes made concurrently by others are kept.
pub async fn apply_batch_is_atomic(db: &dyn TestDb) {
    let s = db.open().await;
    let base = vec![
        Mutation::PutJob(job(1, JobState::Queued)),
        Mutation::PutLaunch(launch("l-1", Some(1))),
        Mutation::PutInstance(instance("i-1", Some("l-1"))),
        Mutation::Cursor(3),
        Mutation::Timeline(timeline_event(10, Some(1), "queued")),
    ];
    s.apply(&base).await.unwrap();
    let before = s.load().await.unwrap();
    assert_eq!(before.jobs.len(), 1);
    assert_eq!(before.launches.len(), 1);
    assert_eq!(before.instances.len(), 1);
    assert_eq!(before.cursor, 3);
    let timeline_before = s.timeline(None, 100).await.unwrap();
    assert_eq!(timeline_before.len(), 1);

    let mut changed = job(1, JobState::Completed);
    changed.reason = Some("changed".into());
    let mut batch = vec![
        Mutation::PutJob(changed),
        Mutation::PutJob(job(2, JobState::Queued)),
        Mutation::PutLaunch(launch("l-2", Some(2))),
        Mutation::DropInstance("i-1".into()),
        Mutation::Cursor(99),
        Mutation::Timeline(timeline_event(20, Some(2), "launch requested")),
    ];
    if !db.fail_timeline_what("poison").await {
        // The reference cannot fail: the whole batch lands.
        s.apply(&batch).await.unwrap();
        let after = s.load().await.unwrap();
        assert_eq!(after.jobs.len(), 2);
        assert_eq!(after.cursor, 99);
        assert!(after.instances.is_empty());
        return;
    }
    batch.push(Mutation::Timeline(timeline_event(30, Some(2), "poison")));
    let err = s
        .apply(&batch)
        .await
        .expect_err("a batch with a failing mutation must fail");
    assert!(!err.message.is_empty());
    assert_eq!(
        s.load().await.unwrap(),
        before,
        "a failed batch left a trace"
    );
    assert_eq!(s.timeline(None, 100).await.unwrap(), timeline_before);
    let reopened = db.open().await;
    assert_eq!(reopened.load().await.unwrap(), before);

    // Others' writes at the same moment are not taken down with it.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..40u64 {
        let store = s.clone();
        tasks.spawn(async move {
            let ev = event(100 + n, JobStatus::Queued, n);
            let i = store.intake(&format!("atomic-{n}"), &ev).await?;
            assert!(matches!(i, Intake::Stored(_)), "{i:?}");
            Ok(())
        });
        if n % 10 == 0 {
            let store = s.clone();
            let batch = batch.clone();
            tasks.spawn(async move {
                assert!(
                    store.apply(&batch).await.is_err(),
                    "the poisoned batch succeeded"
                );
                Ok(())
            });
            let store = s.clone();
            tasks.spawn(async move {
                store
                    .apply(&[Mutation::PutJob(job(1000 + n, JobState::Queued))])
                    .await
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("a concurrent write failed");
    }
    let after = s.load().await.unwrap();
    let ids: Vec<u64> = after.jobs.iter().map(|j| j.id).collect();
    assert_eq!(ids, [1, 1000, 1010, 1020, 1030]);
    assert_eq!(after.cursor, 3);
    assert_eq!(all_intake(&*s).await.len(), 40);

    // Still usable: the same batch without the poison applies whole.
    batch.pop();
    s.apply(&batch).await.unwrap();
    let after = s.load().await.unwrap();
    assert_eq!(after.cursor, 99);
    assert!(after.instances.is_empty());
    assert_eq!(
        after.jobs.iter().find(|j| j.id == 1).unwrap().state,
        JobState::Completed
    );
}

/// A put replaces the record with the same id, every field of it.
pub async fn puts_overwrite_by_id(db: &dyn TestDb) {
    let s = db.open().await;
    s.apply(&[
        Mutation::PutJob(job(5, JobState::Queued)),
        Mutation::PutLaunch(launch("l-5", Some(5))),
        Mutation::PutInstance(instance("i-5", Some("l-5"))),
    ])
    .await
    .unwrap();
    let mut j = job(5, JobState::Failed);
    j.repo = "other/repo".into();
    j.reason = Some("no capacity".into());
    j.launches = 3;
    let mut l = launch("l-5", None);
    l.state = LaunchState::Failed;
    l.error = Some((ErrorKind::Capacity, "InsufficientInstanceCapacity".into()));
    let mut x = instance("i-5", None);
    x.state = InstanceState::Terminated;
    x.terminate_reason = Some(TerminateReason::Completed);
    s.apply(&[
        Mutation::PutJob(j.clone()),
        Mutation::PutLaunch(l.clone()),
        Mutation::PutInstance(x.clone()),
    ])
    .await
    .unwrap();
    let snap = s.load().await.unwrap();
    assert_eq!(snap.jobs, [j]);
    assert_eq!(snap.launches, [l]);
    assert_eq!(snap.instances, [x]);
}

/// `DropJob` removes the job and the launches made for it, nothing else;
/// `DropInstance` removes the instance; dropping what is not there is fine.
pub async fn drop_job_removes_its_launches(db: &dyn TestDb) {
    let s = db.open().await;
    s.apply(&[
        Mutation::PutJob(job(1, JobState::Completed)),
        Mutation::PutJob(job(2, JobState::Queued)),
        Mutation::PutLaunch(launch("a", Some(1))),
        Mutation::PutLaunch(launch("b", Some(1))),
        Mutation::PutLaunch(launch("c", Some(2))),
        Mutation::PutLaunch(launch("d", None)),
        Mutation::PutInstance(instance("i-a", Some("a"))),
        Mutation::PutInstance(instance("i-c", Some("c"))),
    ])
    .await
    .unwrap();
    s.apply(&[
        Mutation::DropJob(1),
        Mutation::DropJob(404),
        Mutation::DropInstance("i-404".into()),
    ])
    .await
    .unwrap();
    let snap = s.load().await.unwrap();
    assert_eq!(snap.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [2]);
    assert_eq!(
        snap.launches
            .iter()
            .map(|l| l.id.as_str())
            .collect::<Vec<_>>(),
        ["c", "d"]
    );
    assert_eq!(
        snap.instances
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        ["i-a", "i-c"]
    );
    s.apply(&[Mutation::DropInstance("i-a".into())])
        .await
        .unwrap();
    let snap = s.load().await.unwrap();
    assert_eq!(
        snap.instances
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        ["i-c"]
    );
    // A launch put after its job was dropped is a new record, kept.
    s.apply(&[Mutation::PutLaunch(launch("e", Some(1)))])
        .await
        .unwrap();
    assert_eq!(s.load().await.unwrap().launches.len(), 3);
}

/// The cursor is set (not maxed) by `Cursor`, the last one of a batch wins,
/// and it is there for a new handle.
pub async fn cursor_persists(db: &dyn TestDb) {
    let s = db.open().await;
    assert_eq!(s.load().await.unwrap().cursor, 0);
    s.apply(&[Mutation::Cursor(5)]).await.unwrap();
    assert_eq!(s.load().await.unwrap().cursor, 5);
    s.apply(&[Mutation::Cursor(9), Mutation::Cursor(3)])
        .await
        .unwrap();
    assert_eq!(s.load().await.unwrap().cursor, 3);
    s.apply(&[Mutation::Cursor(u64::MAX)]).await.unwrap();
    assert_eq!(s.load().await.unwrap().cursor, u64::MAX);
    s.apply(&[Mutation::Cursor(42)]).await.unwrap();
    drop(s);
    assert_eq!(db.open().await.load().await.unwrap().cursor, 42);
}

/// The timeline keeps insertion order (not `at` order), filters by job, and
/// returns the newest `limit` entries, oldest first.
pub async fn timeline_order_filter_limit(db: &dyn TestDb) {
    let s = db.open().await;
    let entries = [
        timeline_event(50, Some(1), "queued"),
        timeline_event(40, Some(2), "queued"),
        timeline_event(60, None, "orphan terminated"),
        timeline_event(10, Some(1), "launch requested"),
        timeline_event(70, Some(2), "launch requested"),
        timeline_event(20, Some(1), "instance running"),
        timeline_event(30, Some(u64::MAX), "edge"),
    ];
    // Across several batches, some with more than one entry.
    s.apply(&[Mutation::Timeline(entries[0].clone())])
        .await
        .unwrap();
    s.apply(&[
        Mutation::Timeline(entries[1].clone()),
        Mutation::Timeline(entries[2].clone()),
    ])
    .await
    .unwrap();
    for e in &entries[3..] {
        s.apply(&[Mutation::Timeline(e.clone())]).await.unwrap();
    }
    assert_eq!(s.timeline(None, 100).await.unwrap(), entries);
    assert_eq!(s.timeline(None, 3).await.unwrap(), entries[4..]);
    let job1 = [entries[0].clone(), entries[3].clone(), entries[5].clone()];
    assert_eq!(s.timeline(Some(1), 100).await.unwrap(), job1);
    assert_eq!(s.timeline(Some(1), 2).await.unwrap(), job1[1..]);
    assert_eq!(s.timeline(Some(2), 1).await.unwrap(), [entries[4].clone()]);
    assert_eq!(
        s.timeline(Some(u64::MAX), 5).await.unwrap(),
        [entries[6].clone()]
    );
    assert!(s.timeline(Some(3), 10).await.unwrap().is_empty());
    assert!(s.timeline(Some(1), 0).await.unwrap().is_empty());
    assert!(s.timeline(None, 0).await.unwrap().is_empty());
    assert_eq!(s.timeline(None, usize::MAX).await.unwrap(), entries);
}

/// Records with every optional field set, extreme numbers and awkward text
/// come back exactly, sorted by id like the reference.
pub async fn load_round_trips_every_field(db: &dyn TestDb) {
    let s = db.open().await;
    let awkward = "naïve 'quote' \"dq\" \\ \n\t\0 ✓ 🚀";
    let j = Job {
        id: u64::MAX,
        run_id: i64::MAX as u64 + 1,
        repo: awkward.into(),
        labels: vec![String::new(), awkward.into(), "X64".into()],
        state: JobState::InProgress,
        queued_at: u64::MAX,
        started_at: Some(0),
        completed_at: Some(u64::MAX - 1),
        runner_name: Some(awkward.into()),
        reason: Some(String::new()),
        launches: u32::MAX,
        retry_at: 1,
        conclusion: Some(awkward.into()),
        rerun_requested_at: Some(u64::MAX),
    };
    let l = Launch {
        id: awkward.into(),
        pool: String::new(),
        scope: Scope::Org(awkward.into()),
        job_id: Some(u64::MAX),
        unique_label: Some("rf-0123".into()),
        name: Some(awkward.into()),
        state: LaunchState::Launched,
        requested_at: u64::MAX,
        instance_id: Some("i-0123456789abcdef0".into()),
        error: Some((ErrorKind::NotFound, awkward.into())),
        not_before: i64::MAX as u64,
        batch: None,
    };
    let x = Instance {
        id: awkward.into(),
        fleet: "acme".into(),
        pool: awkward.into(),
        state: InstanceState::ShuttingDown,
        launched_at: u64::MAX,
        launch_id: Some(awkward.into()),
        scope: Some(Scope::Org("acme".into())),
        unique_label: Some(String::new()),
        market: Some(CapacityMarket::OnDemand),
        jit_written: false,
        param_present: true,
        runner_online_at: Some(u64::MAX),
        busy: true,
        job_done_at: Some(0),
        terminate_requested_at: Some(i64::MAX as u64 + 7),
        terminate_reason: Some(TerminateReason::PoolRemoved),
        offering: Some(Offering {
            instance_type: "m7i.large".into(),
            subnet: Some(awkward.into()),
            market: CapacityMarket::Spot,
        }),
        interruption: Some(Interruption {
            kind: InterruptionKind::SpotWarning,
            at: u64::MAX,
        }),
        assigned: Some(runfleet_core::model::WarmAssignment {
            job_id: u64::MAX,
            at: i64::MAX as u64 + 9,
        }),
    };
    let plain_job = job(3, JobState::Ignored);
    let plain_launch = launch("a-launch", None);
    let plain_instance = instance("i-0", None);
    s.apply(&[
        Mutation::PutJob(j.clone()),
        Mutation::PutJob(plain_job.clone()),
        Mutation::PutLaunch(l.clone()),
        Mutation::PutLaunch(plain_launch.clone()),
        Mutation::PutInstance(x.clone()),
        Mutation::PutInstance(plain_instance.clone()),
        Mutation::Cursor(i64::MAX as u64 + 3),
    ])
    .await
    .unwrap();
    let snap = s.load().await.unwrap();
    assert_eq!(snap.jobs, [plain_job, j]);
    assert_eq!(snap.launches, [plain_launch, l]);
    assert_eq!(snap.instances, [plain_instance, x]);
    assert_eq!(snap.cursor, i64::MAX as u64 + 3);
    let ev = JobEvent {
        job_id: u64::MAX,
        run_id: 0,
        repo: awkward.into(),
        labels: vec![awkward.into()],
        status: JobStatus::Completed,
        runner_name: Some(awkward.into()),
        conclusion: Some(awkward.into()),
        at: u64::MAX,
    };
    let seq = stored(s.intake(awkward, &ev).await.unwrap());
    assert_eq!(all_intake(&*s).await, [(seq, ev)]);
    let t = TimelineEvent {
        at: u64::MAX,
        job_id: Some(u64::MAX),
        instance_id: Some(awkward.into()),
        what: awkward.into(),
    };
    s.apply(&[Mutation::Timeline(t.clone())]).await.unwrap();
    assert_eq!(s.timeline(Some(u64::MAX), 1).await.unwrap(), [t]);
}

/// Arbitrary records (distinct ids) come back exactly.
pub async fn load_round_trips_arbitrary_records(db: &dyn TestDb) {
    let s = db.open().await;
    let mut runner = TestRunner::deterministic();
    let strategy = (
        vec(arb_job(arb_u64()), 0..8),
        vec(arb_launch(arb_text(), option::of(arb_u64())), 0..8),
        vec(arb_instance(arb_text()), 0..8),
    );
    let mut jobs = BTreeMap::new();
    let mut launches = BTreeMap::new();
    let mut instances = BTreeMap::new();
    for _ in 0..24 {
        let (js, ls, xs) = generate(&mut runner, &strategy);
        let mut batch = Vec::new();
        for j in js {
            jobs.insert(j.id, j.clone());
            batch.push(Mutation::PutJob(j));
        }
        for l in ls {
            launches.insert(l.id.clone(), l.clone());
            batch.push(Mutation::PutLaunch(l));
        }
        for x in xs {
            instances.insert(x.id.clone(), x.clone());
            batch.push(Mutation::PutInstance(x));
        }
        s.apply(&batch).await.unwrap();
        let snap = s.load().await.unwrap();
        assert_eq!(
            snap.jobs,
            jobs.values().cloned().collect::<Vec<_>>(),
            "after {batch:?}"
        );
        assert_eq!(
            snap.launches,
            launches.values().cloned().collect::<Vec<_>>(),
            "after {batch:?}"
        );
        assert_eq!(
            snap.instances,
            instances.values().cloned().collect::<Vec<_>>(),
            "after {batch:?}"
        );
    }
}

/// Random batches of every kind of mutation leave the store exactly where
/// they leave the reference, in `load` and in `timeline`.
pub async fn apply_matches_the_reference_store(db: &dyn TestDb) {
    let s = db.open().await;
    let reference = MemStore::new();
    let mut runner = TestRunner::deterministic();
    let strategy = vec(vec(arb_mutation(), 0..12), 1..5);
    for _ in 0..30 {
        let batches = generate(&mut runner, &strategy);
        for batch in &batches {
            reference.apply(batch).await.unwrap();
            s.apply(batch).await.unwrap();
            assert_eq!(
                s.load().await.unwrap(),
                reference.load().await.unwrap(),
                "after {batch:?}"
            );
        }
        for job_id in [None, Some(0), Some(1), Some(5), Some(u64::MAX)] {
            for limit in [1, 4, usize::MAX] {
                assert_eq!(
                    s.timeline(job_id, limit).await.unwrap(),
                    reference.timeline(job_id, limit).await.unwrap(),
                    "timeline({job_id:?}, {limit}) after {batches:?}"
                );
            }
        }
    }
}

/// Whatever was committed through one handle is there, identical, for the
/// next one after the first is dropped (for a file or a server: after the
/// process let go of it).
pub async fn reopen_sees_everything_committed(db: &dyn TestDb) {
    let s = db.open().await;
    let mut runner = TestRunner::deterministic();
    let batches = generate(&mut runner, &vec(vec(arb_mutation(), 1..10), 5..10));
    for (n, batch) in batches.iter().enumerate() {
        s.apply(batch).await.unwrap();
        s.intake(
            &format!("reopen-{n}"),
            &event(n as u64, JobStatus::Queued, 5),
        )
        .await
        .unwrap();
    }
    let snap = s.load().await.unwrap();
    let log = all_intake(&*s).await;
    let timeline = s.timeline(None, usize::MAX).await.unwrap();
    drop(s);
    let s = db.open().await;
    assert_eq!(s.load().await.unwrap(), snap);
    assert_eq!(all_intake(&*s).await, log);
    assert_eq!(s.timeline(None, usize::MAX).await.unwrap(), timeline);
    assert_eq!(
        s.intake("reopen-0", &event(0, JobStatus::Queued, 5))
            .await
            .unwrap(),
        Intake::Duplicate
    );
    // And it goes on from there: the next seq is after every earlier one.
    let next = stored(
        s.intake("reopen-next", &event(99, JobStatus::Queued, 5))
            .await
            .unwrap(),
    );
    assert!(log.iter().all(|(seq, _)| *seq < next));
}

/// 1,000 intakes from as many tasks, 200 of them repeating a delivery id:
/// exactly the 800 distinct deliveries are stored, each once, with distinct
/// and increasing seqs, and every caller got the right answer.
pub async fn concurrent_intakes_store_each_delivery_once(db: &dyn TestDb) {
    let s = db.open().await;
    let mut tasks = tokio::task::JoinSet::new();
    // Deliveries 0..800; 0..200 are sent twice, the copies interleaved.
    let mut order: Vec<u64> = (0..800).collect();
    for n in 0..200 {
        order.insert((n * 4 + 1) as usize, n);
    }
    assert_eq!(order.len(), 1000);
    for n in order {
        let s = s.clone();
        tasks.spawn(async move {
            let ev = event(n, JobStatus::Queued, n);
            (
                n,
                s.intake(&format!("concurrent-{n}"), &ev)
                    .await
                    .expect("intake"),
            )
        });
    }
    let mut stored_by: BTreeMap<u64, u64> = BTreeMap::new();
    let mut duplicates = 0;
    while let Some(done) = tasks.join_next().await {
        let (n, outcome) = done.expect("task");
        match outcome {
            Intake::Stored(seq) => assert!(
                stored_by.insert(n, seq).is_none(),
                "delivery {n} stored twice"
            ),
            Intake::Duplicate => duplicates += 1,
        }
    }
    assert_eq!(stored_by.len(), 800);
    assert_eq!(duplicates, 200);
    let log = all_intake(&*s).await;
    assert_eq!(log.len(), 800);
    assert_strictly_increasing(log.iter().map(|(seq, _)| *seq));
    let seqs: BTreeSet<u64> = stored_by.values().copied().collect();
    assert_eq!(seqs.len(), 800, "two deliveries got the same seq");
    for (seq, ev) in &log {
        assert_eq!(
            stored_by.get(&ev.job_id),
            Some(seq),
            "log entry {seq} for delivery {}",
            ev.job_id
        );
        assert_eq!(*ev, event(ev.job_id, JobStatus::Queued, ev.job_id));
    }
}

/// A reader tailing the log with `intake_since` while many writers intake
/// at once sees every entry exactly once: no seq becomes visible before a
/// smaller one that will later appear.
pub async fn tailing_intake_since_misses_nothing(db: &dyn TestDb) {
    let s = db.open().await;
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let s = s.clone();
            tokio::spawn(async move {
                for n in 0..50u64 {
                    let id = w * 1000 + n;
                    s.intake(&format!("tail-{id}"), &event(id, JobStatus::Queued, n))
                        .await
                        .expect("intake");
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let finished = writers.iter().all(|w| w.is_finished());
        let page = s.intake_since(cursor, 7).await.expect("intake_since");
        if let Some((last, _)) = page.last() {
            cursor = *last;
        }
        let empty = page.is_empty();
        seen.extend(jobs_only(page));
        assert!(
            seen.len() <= 400,
            "the tailing reader got entries more than once"
        );
        if finished && empty {
            break;
        }
        if empty {
            tokio::task::yield_now().await;
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    let all = all_intake(&*s).await;
    assert_eq!(all.len(), 400);
    assert_eq!(seen, all, "the tailing reader missed or repeated entries");
}

/// Start requests (`launch`, `/v1/start`) go through the same log as job
/// observations, in order, and a repeated request id stores nothing.
pub async fn start_requests_share_the_intake_log(db: &dyn TestDb) {
    let s = db.open().await;
    let job = event(3, JobStatus::Queued, 100);
    let start = StartRequest {
        id: "fleet-r00ff".into(),
        repo: "acme/app".into(),
        pool: "linux".into(),
        unique_label: "rf-00ff".into(),
        name: Some("build box".into()),
        at: 150,
    };
    let a = stored(s.intake("d-job", &job).await.unwrap());
    let b = stored(
        s.intake_event(&start.id, &IntakeEvent::Start(start.clone()))
            .await
            .unwrap(),
    );
    assert!(a < b);
    assert_eq!(
        s.intake_event(&start.id, &IntakeEvent::Start(start.clone()))
            .await
            .unwrap(),
        Intake::Duplicate
    );
    assert_eq!(
        s.intake_since(0, 10).await.unwrap(),
        vec![(a, IntakeEvent::Job(job)), (b, IntakeEvent::Start(start))]
    );
}

/// Two handles on one database (two replicas) write at once while a reader
/// on a third tails the log: it sees every entry exactly once, in order.
pub async fn tailing_two_handles_misses_nothing(db: &dyn TestDb) {
    let a = db.open().await;
    let b = db.open().await;
    let reader = db.open().await;
    let writers: Vec<_> = (0..6u64)
        .map(|w| {
            let s = if w % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                for n in 0..40u64 {
                    let id = w * 1000 + n;
                    s.intake(&format!("two-{id}"), &event(id, JobStatus::Queued, n))
                        .await
                        .expect("intake");
                    // The same delivery through the other replica: stored once.
                    if n % 10 == 0 {
                        assert_eq!(
                            s.intake(&format!("two-{id}"), &event(id, JobStatus::Queued, n))
                                .await
                                .expect("intake"),
                            Intake::Duplicate
                        );
                    }
                }
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        let finished = writers.iter().all(|w| w.is_finished());
        let page = reader.intake_since(cursor, 5).await.expect("intake_since");
        if let Some((last, _)) = page.last() {
            cursor = *last;
        }
        let empty = page.is_empty();
        seen.extend(jobs_only(page));
        assert!(
            seen.len() <= 240,
            "the tailing reader got entries more than once"
        );
        if finished && empty {
            break;
        }
        if empty {
            tokio::task::yield_now().await;
        }
    }
    for w in writers {
        w.await.expect("writer");
    }
    let all = all_intake(&*reader).await;
    assert_eq!(all.len(), 240);
    assert_strictly_increasing(all.iter().map(|(s, _)| *s));
    assert_eq!(seen, all, "the tailing reader missed or repeated entries");
}

/// The lease: one holder at a time; renewals keep the epoch; another holder
/// gets it only once it expired (or was released), with the next epoch.
pub async fn lease_is_exclusive_until_it_expires(db: &dyn TestDb) {
    let s = db.open().await;
    let other = db.open().await;
    assert_eq!(s.lease().await.unwrap(), None);
    let t0 = 1_700_000_000_000u64;
    assert_eq!(s.try_lease("a", 1000, t0).await.unwrap(), Some(1));
    assert_eq!(other.try_lease("b", 1000, t0 + 10).await.unwrap(), None);
    // Renewed by its holder: same epoch, later expiry.
    assert_eq!(s.try_lease("a", 1000, t0 + 500).await.unwrap(), Some(1));
    assert_eq!(other.try_lease("b", 1000, t0 + 1499).await.unwrap(), None);
    let l = other.lease().await.unwrap().expect("lease");
    assert_eq!(
        (l.holder.as_str(), l.epoch, l.expires_at),
        ("a", 1, t0 + 1500)
    );
    // Expired: the next holder gets the next epoch, and the old one is out.
    assert_eq!(
        other.try_lease("b", 1000, t0 + 1500).await.unwrap(),
        Some(2)
    );
    assert_eq!(s.try_lease("a", 1000, t0 + 1501).await.unwrap(), None);
    assert_eq!(
        other.try_lease("b", 1000, t0 + 2000).await.unwrap(),
        Some(2)
    );
    // Releasing by someone else does nothing; by the holder frees it now.
    s.release_lease("a").await.unwrap();
    assert_eq!(s.try_lease("a", 1000, t0 + 2001).await.unwrap(), None);
    other.release_lease("b").await.unwrap();
    assert_eq!(s.try_lease("a", 1000, t0 + 2002).await.unwrap(), Some(3));
    // A holder renewing after its own expiry, nobody else having taken it,
    // keeps its epoch: nothing was written by anyone else in between.
    assert_eq!(s.try_lease("a", 1000, t0 + 9000).await.unwrap(), Some(3));
    drop(s);
    let l = db.open().await.lease().await.unwrap().expect("lease");
    assert_eq!(
        (l.holder.as_str(), l.epoch, l.expires_at),
        ("a", 3, t0 + 10_000)
    );
}

/// A fenced batch lands only while its writer holds the lease at its epoch;
/// a stale leader's batch is refused with a fenced error and none of it is
/// stored, even when the lease has merely expired and been taken.
pub async fn fenced_apply_refuses_a_stale_leader_whole(db: &dyn TestDb) {
    let s = db.open().await;
    let other = db.open().await;
    let a = Fence {
        holder: "replica-a".into(),
        epoch: 1,
    };
    let batch = vec![
        Mutation::PutJob(job(1, JobState::Queued)),
        Mutation::PutLaunch(launch("l-1", Some(1))),
        Mutation::PutInstance(instance("i-1", Some("l-1"))),
        Mutation::Cursor(7),
        Mutation::Timeline(timeline_event(10, Some(1), "launch requested")),
    ];
    // Never taken: refused.
    let err = s.apply_fenced(&a, &batch).await.expect_err("no lease yet");
    assert!(err.is_fenced(), "{err:?}");
    assert_eq!(s.load().await.unwrap(), Snapshot::default());
    assert_eq!(
        s.try_lease("replica-a", 1000, 5_000).await.unwrap(),
        Some(1)
    );
    s.apply_fenced(&a, &batch).await.unwrap();
    let before = s.load().await.unwrap();
    assert_eq!(before.cursor, 7);
    // Expired but not taken: still a's (nobody else wrote).
    s.apply_fenced(&a, &[Mutation::Cursor(8)]).await.unwrap();
    // A wrong epoch of the right holder is refused too.
    let wrong = Fence {
        holder: "replica-a".into(),
        epoch: 2,
    };
    assert!(
        s.apply_fenced(&wrong, &[Mutation::Cursor(1)])
            .await
            .unwrap_err()
            .is_fenced()
    );
    let before = s.load().await.unwrap();
    let timeline_before = s.timeline(None, 100).await.unwrap();
    // b takes over.
    assert_eq!(
        other.try_lease("replica-b", 1000, 6_001).await.unwrap(),
        Some(2)
    );
    let mut launched = launch("l-1", Some(1));
    launched.state = LaunchState::Launched;
    launched.instance_id = Some("i-1".into());
    let stale = vec![
        Mutation::PutJob(job(1, JobState::Failed)),
        Mutation::PutJob(job(2, JobState::Queued)),
        Mutation::PutLaunch(launch("l-1", Some(1))),
        Mutation::DropInstance("i-1".into()),
        Mutation::Cursor(99),
        Mutation::Timeline(timeline_event(20, Some(1), "stale")),
    ];
    let err = s.apply_fenced(&a, &stale).await.expect_err("stale leader");
    assert!(err.is_fenced(), "{err:?}");
    assert!(
        err.message.contains("replica-a") && err.message.contains("replica-b"),
        "{}",
        err.message
    );
    assert_eq!(
        s.load().await.unwrap(),
        before,
        "a stale batch left a trace"
    );
    assert_eq!(s.timeline(None, 100).await.unwrap(), timeline_before);
    // The new leader writes; the record moves forward and stays there.
    let b = Fence {
        holder: "replica-b".into(),
        epoch: 2,
    };
    other
        .apply_fenced(&b, &[Mutation::PutLaunch(launched.clone())])
        .await
        .unwrap();
    assert!(
        s.apply_fenced(&a, &[Mutation::PutLaunch(launch("l-1", Some(1)))])
            .await
            .unwrap_err()
            .is_fenced()
    );
    let snap = db.open().await.load().await.unwrap();
    assert_eq!(snap.launches, [launched]);
    assert_eq!(snap.cursor, 8);
    // Unfenced writes (a single-process store, `runfleet launch`) still work.
    s.apply(&[Mutation::Cursor(9)]).await.unwrap();
    assert_eq!(s.load().await.unwrap().cursor, 9);
}

/// Many replicas racing for a free (or expired) lease at the same instant:
/// exactly one wins each round, and the epoch grows by one per new holder.
pub async fn concurrent_lease_takers_one_winner(db: &dyn TestDb) {
    let mut handles = Vec::new();
    for _ in 0..6 {
        handles.push(db.open().await);
    }
    let mut epochs = Vec::new();
    for round in 0..5u64 {
        let now = 1_000_000 + round * 10_000;
        let mut tasks = tokio::task::JoinSet::new();
        for (n, h) in handles.iter().enumerate() {
            let h = h.clone();
            tasks.spawn(async move {
                let holder = format!("r{round}-{n}");
                (
                    holder.clone(),
                    h.try_lease(&holder, 5_000, now).await.expect("try_lease"),
                )
            });
        }
        let mut winners = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (holder, got) = done.expect("task");
            if let Some(epoch) = got {
                winners.push((holder, epoch));
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (holder, epoch) = winners.pop().unwrap();
        let l = handles[0].lease().await.unwrap().expect("lease");
        assert_eq!((l.holder, l.epoch), (holder, epoch));
        epochs.push(epoch);
    }
    assert_eq!(epochs, [1, 2, 3, 4, 5]);
}
