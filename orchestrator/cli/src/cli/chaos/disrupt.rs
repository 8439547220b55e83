//! Plays a fault schedule against the running system: kills and restarts
//! processes, sets and clears fault switches, and restarts any process an
//! injected crash took down (a supervisor would).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::plan::{Action, GROUPS, Planned, Target};
use super::system::System;
use crate::cli::shop::request;

#[derive(Debug, Default)]
pub struct Disruptor {
    /// Applied disruptions by kind.
    pub applied: BTreeMap<String, u64>,
    /// Disruptions skipped because their target was not up.
    pub skipped: u64,
    pub crashes_restarted: u64,
    restarts: Vec<(Instant, Target)>,
    /// (when, worker group, fault target) to clear.
    clears: Vec<(Instant, usize, String)>,
    /// (when, worker group) whose link to heal.
    link_heals: Vec<(Instant, usize)>,
    down: HashSet<Target>,
}

impl Disruptor {
    /// Plays `schedule` from now until `duration` has passed and every
    /// restart and clear it scheduled is done.
    pub async fn play(&mut self, system: &mut System, schedule: &[Planned], duration: Duration) {
        let start = Instant::now();
        let mut next = 0;
        loop {
            let now = Instant::now();
            while let Some(step) = schedule.get(next).filter(|s| start + Duration::from_millis(s.at_ms) <= now) {
                self.apply(system, &step.action, now).await;
                next += 1;
            }
            self.tend(system, now).await;
            let done = next == schedule.len()
                && self.restarts.is_empty()
                && self.clears.is_empty()
                && self.link_heals.is_empty();
            if done && now >= start + duration {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn apply(&mut self, system: &mut System, action: &Action, now: Instant) {
        match action {
            Action::Kill { target, down_for_ms } => {
                if system.kill9(*target).await {
                    tracing::info!(target = %target.name(), down_for_ms, "chaos: kill -9");
                    self.down.insert(*target);
                    self.restarts.push((now + Duration::from_millis(*down_for_ms), *target));
                    *self.applied.entry(action.kind()).or_default() += 1;
                } else {
                    self.skipped += 1;
                }
            }
            Action::Fault { group, spec, clear_after_ms } => {
                let admin = system.admin_url(*group);
                match request(&admin, "POST", "/faults", Some(&json!({ "spec": spec }))).await {
                    Ok(_) => {
                        tracing::info!(group = GROUPS[*group], %spec, "chaos: fault set");
                        let target = spec.split_once('=').map_or(spec.as_str(), |(t, _)| t).to_owned();
                        self.clears.push((now + Duration::from_millis(*clear_after_ms), *group, target));
                        *self.applied.entry(action.kind()).or_default() += 1;
                    }
                    Err(e) => {
                        tracing::info!(group = GROUPS[*group], %spec, error = %e, "chaos: fault not set");
                        self.skipped += 1;
                    }
                }
            }
            Action::Network { group, fault, heal_after_ms } => match system.link(*group) {
                Some(link) => {
                    tracing::info!(group = GROUPS[*group], ?fault, heal_after_ms, "chaos: network fault");
                    link.set(Some(*fault));
                    self.link_heals.push((now + Duration::from_millis(*heal_after_ms), *group));
                    *self.applied.entry(action.kind()).or_default() += 1;
                }
                None => self.skipped += 1,
            },
        }
    }

    /// Restarts what is due, clears what is due, and brings back any process
    /// that died on its own.
    async fn tend(&mut self, system: &mut System, now: Instant) {
        let due: Vec<Target> = self.restarts.iter().filter(|(at, _)| *at <= now).map(|(_, t)| *t).collect();
        for target in due {
            match system.start(target).await {
                Ok(()) => {
                    self.restarts.retain(|(_, t)| *t != target);
                    self.down.remove(&target);
                }
                Err(e) => tracing::warn!(target = %target.name(), error = %e, "chaos: restart failed; retrying"),
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.clears).into_iter().partition(|c| c.0 <= now);
        self.clears = later;
        for (_, group, target) in due {
            // A worker that is down has no switches left to clear.
            let _ = request(&system.admin_url(group), "DELETE", &format!("/faults?target={target}"), None).await;
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.link_heals).into_iter().partition(|h| h.0 <= now);
        self.link_heals = later;
        for (_, group) in due {
            if let Some(link) = system.link(group) {
                link.set(None);
            }
        }
        for target in system.reap() {
            if !self.down.contains(&target) {
                tracing::info!(target = %target.name(), "chaos: a process crashed; restarting it");
                self.crashes_restarted += 1;
                self.restarts.push((now, target));
                self.down.insert(target);
            }
        }
    }

    /// Ends every disruption now: every switch cleared, every process up.
    pub async fn heal(&mut self, system: &mut System) -> anyhow::Result<()> {
        self.clears.clear();
        self.link_heals.clear();
        system.heal_links();
        self.restarts.clear();
        self.down.clear();
        system.reap();
        system.start_all().await?;
        for group in 0..GROUPS.len() {
            request(&system.admin_url(group), "DELETE", "/faults", None).await?;
        }
        Ok(())
    }

    /// Keeps crashed processes coming back while the run settles.
    pub async fn supervise(&mut self, system: &mut System) {
        self.tend(system, Instant::now()).await;
    }
}
