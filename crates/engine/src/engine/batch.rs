//! Launch batching: the planner's launches of one pool go out together as
//! one cloud call for several instances.
//!
//! A launch is sent in a [`LaunchBatch`] recorded in every member before
//! the call (the batch id is the call's idempotency token and the
//! instances' `runfleet:launch` tag). Launches that cannot go now (the
//! pool's batching window is open, or EC2's request or instance bucket is
//! empty) are recorded with `not_before` and come back from the planner as
//! resumed launches, to be batched then with whatever else is due. A batch
//! whose call may not have happened is sent again whole (same id, same
//! size); the instances a call returns go to its members in order of
//! launch id, skipping instances and members already bound.

use runfleet_core::model::{LaunchBatch, LaunchState, Millis};
use runfleet_core::plan::LaunchPlan;

use super::Engine;
use crate::ports::Mutation;

/// One launch call to make: `batch.size` instances for `members`.
#[derive(Debug)]
pub(super) struct LaunchCall {
    pub batch: LaunchBatch,
    /// The plan of the first member: pool, warm or not, name, offerings.
    pub plan: LaunchPlan,
    /// Sent before and maybe done (see [`crate::ports::LaunchRequest::resend`]).
    pub resend: bool,
}

/// The id of a batch of several launches: its first member's id (unique,
/// and never in another batch) and its size.
fn batch_id(first: &str, size: usize) -> String {
    if size == 1 {
        first.to_string()
    } else {
        format!("{first}-x{size}")
    }
}

/// Whether two launches may share one call: same pool, same instance name,
/// same fallback chain, both job or both warm launches. On-demand runs
/// (unique label) always go alone.
fn same_call(a: &LaunchPlan, b: &LaunchPlan) -> bool {
    a.unique_label.is_none()
        && b.unique_label.is_none()
        && a.pool == b.pool
        && a.is_warm() == b.is_warm()
        && a.name == b.name
        && a.offerings == b.offerings
}

impl Engine {
    /// Turns the planned launches into launch calls: sealed batches are
    /// recorded in `pre` (to be stored before any call), launches that
    /// must wait are recorded with `not_before`. Returns the calls and how
    /// many launches progressed (recorded or sent).
    pub(super) fn form_launch_calls(
        &mut self,
        plans: Vec<LaunchPlan>,
        now: Millis,
        pre: &mut Vec<Mutation>,
    ) -> (Vec<LaunchCall>, usize) {
        let mut calls = Vec::new();
        let mut progressed = 0;
        // Sent before and maybe not done: the same call again.
        let mut resend: Vec<(LaunchBatch, LaunchPlan)> = Vec::new();
        let mut groups: Vec<Vec<LaunchPlan>> = Vec::new();
        for lp in plans {
            let sent = lp
                .resume
                .then(|| self.obs.launches.get(&lp.id))
                .flatten()
                .and_then(|l| l.batch.clone());
            match sent {
                Some(b) => {
                    if !resend.iter().any(|(r, _)| r.id == b.id) {
                        resend.push((b, lp));
                    }
                }
                None => match groups.iter_mut().find(|g| same_call(&g[0], &lp)) {
                    Some(g) => g.push(lp),
                    None => groups.push(vec![lp]),
                },
            }
        }
        for (batch, lp) in resend {
            if !self.launch_bucket.try_take(1, now) {
                let at = self.launch_bucket.ready_at(1, now);
                self.members_mut(&batch.id, |l| l.not_before = at);
                continue;
            }
            calls.push(LaunchCall {
                batch,
                plan: lp,
                resend: true,
            });
        }
        let window = self.cfg.server.launch_batch_window.as_millis() as Millis;
        // Never more than the instance bucket can ever hold, or the batch
        // would wait for it forever.
        let max = (self
            .cfg
            .server
            .launch_batch_max
            .min(self.opts.instance_bucket.0))
        .max(1) as usize;
        for group in groups {
            let max = if group[0].unique_label.is_some() {
                1
            } else {
                max
            };
            let pool = group[0].pool.clone();
            let mut rest = group;
            // A call for this pool went out less than a window ago: gather
            // more until the window closes (unless a full call is due; a
            // launch that always goes alone never waits for company).
            if max > 1
                && let Some(&last) = self.last_launch_call.get(&pool)
                && now < last + window
                && rest.len() < max
            {
                progressed += self.defer(rest, last + window, now, pre);
                continue;
            }
            while !rest.is_empty() {
                let want = rest.len().min(max);
                if self.launch_bucket.available(now) == 0 {
                    let at = self.launch_bucket.ready_at(1, now);
                    progressed += self.defer(rest, at, now, pre);
                    break;
                }
                // EC2 refuses a call for more instances than its instance
                // bucket holds: wait until the whole batch fits (a lone
                // launch waits only while the bucket is empty).
                if (self.instance_bucket.available(now) as usize) < want {
                    let at = self.instance_bucket.ready_at(want as u32, now);
                    progressed += self.defer(rest, at, now, pre);
                    break;
                }
                self.launch_bucket.try_take(1, now);
                self.instance_bucket.try_take(want as u32, now);
                let tail = rest.split_off(want);
                let members = rest;
                rest = tail;
                let batch = LaunchBatch {
                    id: batch_id(&members[0].id, want),
                    size: want as u32,
                };
                for lp in &members {
                    let l = if lp.resume {
                        match self.obs.launches.get_mut(&lp.id) {
                            Some(l) => l,
                            None => continue,
                        }
                    } else {
                        self.record_launch(lp, now, pre)
                    };
                    l.batch = Some(batch.clone());
                    l.not_before = 0;
                    let l = l.clone();
                    pre.push(Mutation::PutLaunch(l));
                }
                progressed += members.len();
                self.last_launch_call.insert(pool.clone(), now);
                let plan = members.into_iter().next().expect("a batch has members");
                calls.push(LaunchCall {
                    batch,
                    plan,
                    resend: false,
                });
            }
        }
        (calls, progressed)
    }

    /// Records (new) or reschedules (resumed) launches to be sent at `at`.
    fn defer(
        &mut self,
        plans: Vec<LaunchPlan>,
        at: Millis,
        now: Millis,
        pre: &mut Vec<Mutation>,
    ) -> usize {
        let mut recorded = 0;
        for lp in plans {
            if lp.resume {
                if let Some(l) = self.obs.launches.get_mut(&lp.id) {
                    l.not_before = at;
                }
                continue;
            }
            let l = self.record_launch(&lp, now, pre);
            l.not_before = at;
            let l = l.clone();
            pre.push(Mutation::PutLaunch(l));
            recorded += 1;
        }
        recorded
    }

    /// Applies `f` to every member of a batch.
    fn members_mut(
        &mut self,
        batch_id: &str,
        mut f: impl FnMut(&mut runfleet_core::model::Launch),
    ) {
        for l in self.obs.launches.values_mut() {
            if l.batch.as_ref().is_some_and(|b| b.id == batch_id) {
                f(l);
            }
        }
    }

    /// The members of a batch, in order of launch id.
    pub(super) fn batch_members(&self, batch_id: &str) -> Vec<String> {
        let mut ids: Vec<String> = self
            .obs
            .launches
            .values()
            .filter(|l| l.batch.as_ref().is_some_and(|b| b.id == batch_id))
            .map(|l| l.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// The launch an instance listed with `runfleet:launch = tag` belongs
    /// to: the launch of that id, else the first member of the batch of
    /// that id still waiting for an instance.
    pub(super) fn launch_for_tag(&self, tag: &str) -> Option<String> {
        if self.obs.launches.contains_key(tag) {
            return Some(tag.to_string());
        }
        self.batch_members(tag).into_iter().find(|id| {
            self.obs
                .launches
                .get(id)
                .is_some_and(|l| l.state == LaunchState::Requested && l.instance_id.is_none())
        })
    }

    /// The earliest time after `now` that a recorded launch waits for
    /// (batching window, buckets, retry), if any: the driver wakes then.
    pub fn next_due(&self, now: Millis) -> Option<Millis> {
        self.obs
            .launches
            .values()
            .filter(|l| l.state == LaunchState::Requested && l.not_before > now)
            .map(|l| l.not_before)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_one_keeps_the_launch_id_as_token() {
        assert_eq!(batch_id("f-j1-1", 1), "f-j1-1");
        assert_eq!(batch_id("f-j1-1", 3), "f-j1-1-x3");
    }
}
