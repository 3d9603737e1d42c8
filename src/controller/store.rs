//! The observed store: the controller's copy of Docker's state, fed by lists, events and action results.
//!
//! A list is taken over time; changes learned from events or actions while it was under way win over it,
//! so a slow list never resurrects a removed container or forgets a freshly created one.

use std::collections::HashMap;

use berth_reconciler::{ContainerId, ContainerState, Observed, ObservedContainer, SessionId, Timestamp};

/// The observed view plus the bookkeeping that merges lists with newer changes.
#[derive(Debug, Default)]
pub struct ObservedStore {
    view: Observed,
    generation: u64,
    touched: HashMap<ContainerId, u64>,
    tombstones: HashMap<ContainerId, u64>,
}

impl ObservedStore {
    /// The current view.
    pub fn view(&self) -> &Observed {
        &self.view
    }

    /// Whether a complete list has been applied.
    pub fn is_listed(&self) -> bool {
        self.view.listed_at.is_some()
    }

    /// Marks the start of a list; pass the returned generation to [`ObservedStore::apply_list`].
    pub fn begin_list(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    fn bump(&mut self) -> u64 {
        self.generation += 1;
        self.generation
    }

    /// Replaces the view with a complete list begun at `started` (generation) and `listed_at` (time).
    pub fn apply_list(&mut self, list: Vec<ObservedContainer>, started: u64, listed_at: Timestamp) {
        let mut next = std::collections::BTreeMap::new();
        for mut c in list {
            if self.tombstones.get(&c.id).is_some_and(|g| *g > started) {
                continue;
            }
            if let Some(cur) = self.view.containers.get(&c.id) {
                if self.touched.get(&c.id).is_some_and(|g| *g > started) {
                    next.insert(c.id.clone(), cur.clone());
                    continue;
                }
                c.removal_requested = cur.removal_requested;
                if c.exit_code.is_none() {
                    c.exit_code = cur.exit_code;
                }
                c.oom_killed |= cur.oom_killed;
            }
            next.insert(c.id.clone(), c);
        }
        for (id, c) in &self.view.containers {
            if !next.contains_key(id) && self.touched.get(id).is_some_and(|g| *g > started) {
                next.insert(id.clone(), c.clone());
            }
        }
        self.view.containers = next;
        self.view.listed_at = Some(listed_at);
        self.touched.retain(|_, g| *g > started);
        self.tombstones.retain(|_, g| *g > started);
        let live: std::collections::BTreeSet<SessionId> =
            self.view.containers.values().map(|c| c.labels.session).collect();
        self.view.attached.retain(|s| live.contains(s));
    }

    /// Records a container's current state from an event or an action.
    pub fn upsert(&mut self, mut c: ObservedContainer) {
        let g = self.bump();
        if let Some(cur) = self.view.containers.get(&c.id) {
            c.removal_requested |= cur.removal_requested;
            c.oom_killed |= cur.oom_killed;
        }
        self.touched.insert(c.id.clone(), g);
        self.tombstones.remove(&c.id);
        self.view.containers.insert(c.id.clone(), c);
    }

    /// Sets a known container's state.
    pub fn set_state(&mut self, id: &ContainerId, state: ContainerState) {
        let g = self.bump();
        if let Some(c) = self.view.containers.get_mut(id) {
            // Never move an exited container back to running on a late reply.
            if !(matches!(c.state, ContainerState::Exited | ContainerState::Dead) && state == ContainerState::Running) {
                c.state = state;
            }
            self.touched.insert(id.clone(), g);
        }
    }

    /// Records that a container is gone.
    pub fn remove(&mut self, id: &ContainerId) {
        let g = self.bump();
        if let Some(c) = self.view.containers.remove(id) {
            let session = c.labels.session;
            if !self.view.containers.values().any(|o| o.labels.session == session) {
                self.view.attached.remove(&session);
            }
        }
        self.touched.remove(id);
        self.tombstones.insert(id.clone(), g);
    }

    /// Marks or clears a removal request.
    pub fn set_removal_requested(&mut self, id: &ContainerId, requested: bool) {
        if let Some(c) = self.view.containers.get_mut(id) {
            c.removal_requested = requested;
        }
    }

    /// Records whether berth holds `session`'s terminal stream.
    pub fn set_attached(&mut self, session: SessionId, attached: bool) {
        if attached {
            self.view.attached.insert(session);
        } else {
            self.view.attached.remove(&session);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_reconciler::observed::Health;
    use berth_reconciler::{ManagedLabels, SessionKind};

    fn container(n: u8) -> ObservedContainer {
        ObservedContainer {
            id: format!("{:064x}", n).parse().expect("hex"),
            labels: ManagedLabels {
                session: SessionId::from_bytes([n; 16]),
                owner: "a".parse().expect("valid"),
                created_at: Timestamp::ZERO,
                profile: "default".parse().expect("valid"),
                kind: SessionKind::Anonymous,
                policy_hash: "00".into(),
                resume_hash: None,
                epoch: 0,
            },
            state: ContainerState::Running,
            exit_code: None,
            oom_killed: false,
            health: Health::Unknown,
            removal_requested: false,
        }
    }

    #[test]
    fn a_slow_list_keeps_containers_created_while_it_ran() {
        let mut s = ObservedStore::default();
        let g = s.begin_list();
        s.upsert(container(1));
        s.apply_list(vec![], g, Timestamp::from_millis(5));
        assert!(s.view().containers.contains_key(&container(1).id));
    }

    #[test]
    fn a_slow_list_does_not_resurrect_containers_removed_while_it_ran() {
        let mut s = ObservedStore::default();
        let g = s.begin_list();
        s.remove(&container(2).id);
        s.apply_list(vec![container(2)], g, Timestamp::from_millis(5));
        assert!(s.view().containers.is_empty());
    }

    #[test]
    fn a_list_replaces_what_nothing_newer_touched() {
        let mut s = ObservedStore::default();
        s.upsert(container(3));
        let g = s.begin_list();
        s.apply_list(vec![], g, Timestamp::from_millis(5));
        assert!(s.view().containers.is_empty());
        assert_eq!(s.view().listed_at, Some(Timestamp::from_millis(5)));
    }
}
