//! The peer list (PL) and the votes that change it: the voting rule in one place.
//!
//! A member is a peer address with an incarnation (the peer's start time) and the key the
//! peer proved in its handshake, so a peer that restarts on the same port is a new member and
//! a late vote about its old self changes nothing. An address is held by one key at a time:
//! while a member is listed, no other key can be added at its address, by vote or by merge. A change commits when ⌊n/2⌋+1 *distinct configured seeds* have voted for it. A
//! committed list is shared between seeds as a state-based merge (members plus bounded
//! tombstones of removed members), which is how a seed that missed votes or was down catches
//! up: merging is idempotent, commutative and never resurrects a removed member.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use crate::wire::{Member, RemovalReason, VoteOp};

/// Tombstones kept for removed members; older ones are forgotten. A peer removed that long ago
/// whose vote still circulates is too stale to matter.
pub const MAX_TOMBSTONES: usize = 4096;
/// Votes that have not reached a majority are dropped after this long (a peer that registered
/// with too few seeds retries and creates fresh votes).
pub const VOTE_TTL: Duration = Duration::from_secs(120);
/// Bound on open tallies, so a stream of registrations that never complete cannot grow memory.
pub const MAX_TALLIES: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Add,
    Remove,
}

#[derive(Debug)]
struct Tally {
    voters: BTreeSet<SocketAddr>,
    reason: RemovalReason,
    opened: Instant,
}

/// A change that took effect at this seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added(Member),
    Removed(Member, RemovalReason),
}

#[derive(Debug)]
pub struct Registry {
    majority: usize,
    members: BTreeMap<SocketAddr, Member>,
    /// The members' addresses in no particular order, and where each is in it: a random sample
    /// of the list costs its size, not the list's.
    dense: Vec<SocketAddr>,
    position: HashMap<SocketAddr, usize>,
    tombstones: VecDeque<(Member, RemovalReason)>,
    /// Highest removed incarnation per address, mirroring `tombstones`.
    removed_inc: BTreeMap<SocketAddr, u64>,
    tallies: BTreeMap<(Member, Kind), Tally>,
}

impl Registry {
    /// `n_seeds`: all configured seeds, up or not.
    pub fn new(n_seeds: usize) -> Self {
        Registry {
            majority: n_seeds / 2 + 1,
            members: BTreeMap::new(),
            dense: Vec::new(),
            position: HashMap::new(),
            tombstones: VecDeque::new(),
            removed_inc: BTreeMap::new(),
            tallies: BTreeMap::new(),
        }
    }

    pub fn majority(&self) -> usize {
        self.majority
    }

    /// The member listed at an address.
    pub fn member(&self, addr: &SocketAddr) -> Option<Member> {
        self.members.get(addr).copied()
    }

    pub fn contains(&self, m: &Member) -> bool {
        self.members.get(&m.addr) == Some(m)
    }

    /// Was `m` removed (and not listed again since)? A peer that hears so from a seed was
    /// taken for dead while alive, and registers again as a newer incarnation.
    pub fn is_removed(&self, m: &Member) -> bool {
        self.is_tombstoned(m) && !self.contains(m)
    }

    /// Is `m`'s address held by a listed member with another key?
    pub fn held_by_other(&self, m: &Member) -> Option<Member> {
        self.members
            .get(&m.addr)
            .filter(|held| held.key != m.key)
            .copied()
    }

    /// Would an add of `m` be refused: removed already, not newer than the listed member, or
    /// its address held by another key?
    fn add_is_stale(&self, m: &Member) -> bool {
        self.is_tombstoned(m)
            || self
                .members
                .get(&m.addr)
                .is_some_and(|held| held.key != m.key || held.incarnation >= m.incarnation)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Up to `k` members drawn uniformly at random, `exclude` left out, in address order.
    /// Costs about `k`, however many members there are.
    pub fn sample(&self, rng: &mut StdRng, k: usize, exclude: &SocketAddr) -> Vec<Member> {
        let n = self.dense.len();
        let mut picked: Vec<SocketAddr> = if n <= k + 1 {
            self.dense.clone()
        } else {
            rand::seq::index::sample(rng, n, k + 1)
                .into_iter()
                .map(|i| self.dense[i])
                .collect()
        };
        picked.retain(|a| a != exclude);
        picked.sort();
        picked.truncate(k);
        picked.iter().filter_map(|a| self.member(a)).collect()
    }

    /// Members sorted by address (stable output for logs and tests).
    pub fn members(&self) -> Vec<Member> {
        self.members.values().copied().collect()
    }

    pub fn tombstones(&self) -> Vec<(Member, RemovalReason)> {
        self.tombstones.iter().copied().collect()
    }

    fn is_tombstoned(&self, m: &Member) -> bool {
        self.removed_inc
            .get(&m.addr)
            .is_some_and(|&inc| inc >= m.incarnation)
    }

    /// Votes this seed has cast that have not committed yet (re-sent when a seed link comes
    /// up, so no vote is lost to a link that was down).
    pub fn open_votes_of(&self, voter: &SocketAddr) -> Vec<(VoteOp, Member)> {
        self.tallies
            .iter()
            .filter(|(_, t)| t.voters.contains(voter))
            .map(|((m, kind), t)| {
                let op = match kind {
                    Kind::Add => VoteOp::Add,
                    Kind::Remove => VoteOp::Remove(t.reason),
                };
                (op, *m)
            })
            .collect()
    }

    /// Has `voter` already voted to remove `m`?
    pub fn has_voted_remove(&self, voter: &SocketAddr, m: &Member) -> bool {
        self.tallies
            .get(&(*m, Kind::Remove))
            .is_some_and(|t| t.voters.contains(voter))
    }

    /// Records one seed's vote; returns the change if this vote completed a majority.
    /// Votes about stale incarnations, and repeats, change nothing.
    pub fn vote(
        &mut self,
        voter: SocketAddr,
        op: VoteOp,
        m: Member,
        now: Instant,
    ) -> Option<Change> {
        let (kind, reason) = match op {
            VoteOp::Add => {
                if self.add_is_stale(&m) {
                    return None;
                }
                (Kind::Add, RemovalReason::Dead)
            }
            VoteOp::Remove(reason) => {
                if self.is_tombstoned(&m)
                    || self
                        .members
                        .get(&m.addr)
                        .is_some_and(|held| held.incarnation > m.incarnation)
                {
                    return None;
                }
                (Kind::Remove, reason)
            }
        };
        if !self.tallies.contains_key(&(m, kind)) && self.tallies.len() >= MAX_TALLIES {
            self.expire(now);
            if self.tallies.len() >= MAX_TALLIES {
                return None;
            }
        }
        let tally = self.tallies.entry((m, kind)).or_insert_with(|| Tally {
            voters: BTreeSet::new(),
            reason,
            opened: now,
        });
        // A clean leave wins over a death verdict for the record.
        if reason == RemovalReason::Left {
            tally.reason = RemovalReason::Left;
        }
        tally.voters.insert(voter);
        if tally.voters.len() < self.majority {
            return None;
        }
        let reason = tally.reason;
        match kind {
            Kind::Add => self.apply_add(m).then_some(Change::Added(m)),
            Kind::Remove => self
                .apply_remove(m, reason)
                .then_some(Change::Removed(m, reason)),
        }
    }

    /// Adds a committed member (from a majority here or from another seed's list).
    fn apply_add(&mut self, m: Member) -> bool {
        if self.add_is_stale(&m) {
            return false;
        }
        if self.members.insert(m.addr, m).is_none() {
            self.position.insert(m.addr, self.dense.len());
            self.dense.push(m.addr);
        }
        self.tallies.remove(&(m, Kind::Add));
        true
    }

    /// Removes a member for good; true if it was present. The tombstone is kept either way so
    /// the add cannot come back through a late vote or merge.
    fn apply_remove(&mut self, m: Member, reason: RemovalReason) -> bool {
        self.tallies.remove(&(m, Kind::Remove));
        self.tallies.remove(&(m, Kind::Add));
        if self.is_tombstoned(&m) {
            return false;
        }
        if self.held_by_other(&m).is_some() {
            // About a key that does not hold the address: no tombstone may block the holder.
            return false;
        }
        let present = self.contains(&m);
        if present
            || self
                .members
                .get(&m.addr)
                .is_none_or(|held| held.incarnation < m.incarnation)
        {
            if present {
                self.members.remove(&m.addr);
                if let Some(i) = self.position.remove(&m.addr) {
                    self.dense.swap_remove(i);
                    if let Some(moved) = self.dense.get(i) {
                        self.position.insert(*moved, i);
                    }
                }
            }
            self.tombstones.push_back((m, reason));
            let inc = self.removed_inc.entry(m.addr).or_insert(m.incarnation);
            *inc = (*inc).max(m.incarnation);
            while self.tombstones.len() > MAX_TOMBSTONES {
                if let Some((old, _)) = self.tombstones.pop_front() {
                    if self.removed_inc.get(&old.addr) == Some(&old.incarnation) {
                        self.removed_inc.remove(&old.addr);
                    }
                }
            }
        }
        present
    }

    /// Merges another seed's committed state.
    pub fn merge(
        &mut self,
        members: &[Member],
        removed: &[(Member, RemovalReason)],
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for &(m, reason) in removed {
            if self.apply_remove(m, reason) {
                changes.push(Change::Removed(m, reason));
            }
        }
        for &m in members {
            if let Some(old) = self.members.get(&m.addr).copied() {
                // A newer incarnation of the same key replaces the old one; another key at a
                // held address is not taken from anyone.
                if old.key == m.key
                    && old.incarnation < m.incarnation
                    && self.apply_remove(old, RemovalReason::Left)
                {
                    changes.push(Change::Removed(old, RemovalReason::Left));
                }
            }
            if self.apply_add(m) {
                changes.push(Change::Added(m));
            }
        }
        changes
    }

    /// Drops tallies that never reached a majority.
    pub fn expire(&mut self, now: Instant) {
        self.tallies
            .retain(|_, t| now.saturating_duration_since(t.opened) < VOTE_TTL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }
    fn m(p: u16, inc: u64) -> Member {
        Member {
            addr: a(p),
            incarnation: inc,
            key: [p as u8; 32],
        }
    }
    const S1: u16 = 9001;
    const S2: u16 = 9002;
    const S3: u16 = 9003;

    #[test]
    fn majority_of_all_configured_seeds() {
        assert_eq!(Registry::new(1).majority(), 1);
        assert_eq!(Registry::new(2).majority(), 2);
        assert_eq!(Registry::new(3).majority(), 2);
        assert_eq!(Registry::new(4).majority(), 3);
        assert_eq!(Registry::new(5).majority(), 3);
    }

    #[test]
    fn one_vote_is_not_enough_and_two_commit() {
        let now = Instant::now();
        let mut r = Registry::new(3);
        assert_eq!(r.vote(a(S1), VoteOp::Add, m(1, 1), now), None);
        assert!(r.is_empty());
        // The same seed voting again does not count twice.
        assert_eq!(r.vote(a(S1), VoteOp::Add, m(1, 1), now), None);
        assert_eq!(
            r.vote(a(S2), VoteOp::Add, m(1, 1), now),
            Some(Change::Added(m(1, 1)))
        );
        assert!(r.contains(&m(1, 1)));
        // The third vote arrives late: a no-op, not an error.
        assert_eq!(r.vote(a(S3), VoteOp::Add, m(1, 1), now), None);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn removal_is_agreed_and_idempotent() {
        let now = Instant::now();
        let mut r = Registry::new(3);
        r.vote(a(S1), VoteOp::Add, m(1, 1), now);
        r.vote(a(S2), VoteOp::Add, m(1, 1), now);
        let dead = VoteOp::Remove(RemovalReason::Dead);
        assert_eq!(r.vote(a(S3), dead, m(1, 1), now), None);
        assert!(r.contains(&m(1, 1)));
        assert_eq!(
            r.vote(a(S1), dead, m(1, 1), now),
            Some(Change::Removed(m(1, 1), RemovalReason::Dead))
        );
        assert!(r.is_empty());
        assert_eq!(r.vote(a(S2), dead, m(1, 1), now), None);
        // A late add vote for the removed incarnation cannot resurrect it.
        assert_eq!(r.vote(a(S3), VoteOp::Add, m(1, 1), now), None);
        assert_eq!(r.vote(a(S1), VoteOp::Add, m(1, 1), now), None);
        assert!(r.is_empty());
    }

    #[test]
    fn a_restarted_peer_is_a_new_member() {
        let now = Instant::now();
        let mut r = Registry::new(1);
        assert!(r.vote(a(S1), VoteOp::Add, m(1, 1), now).is_some());
        assert!(r
            .vote(a(S1), VoteOp::Remove(RemovalReason::Dead), m(1, 1), now)
            .is_some());
        assert_eq!(
            r.vote(a(S1), VoteOp::Add, m(1, 2), now),
            Some(Change::Added(m(1, 2)))
        );
        // A stale removal vote about the old incarnation changes nothing.
        assert_eq!(
            r.vote(a(S1), VoteOp::Remove(RemovalReason::Dead), m(1, 1), now),
            None
        );
        assert!(r.contains(&m(1, 2)));
    }

    #[test]
    fn a_sample_is_distinct_current_members_without_the_asker() {
        use rand::SeedableRng;
        let mut r = Registry::new(1);
        for p in 0..50u16 {
            r.apply_add(m(9100 + p, 1));
        }
        for p in 0..10u16 {
            r.apply_remove(m(9100 + p, 1), RemovalReason::Dead);
        }
        let mut rng = StdRng::seed_from_u64(3);
        let asker = a(9120);
        for k in [5, 39, 40, 100] {
            let s = r.sample(&mut rng, k, &asker);
            assert_eq!(s.len(), k.min(39), "k = {k}");
            assert!(
                s.windows(2).all(|w| w[0].addr < w[1].addr),
                "sorted and distinct"
            );
            assert!(s.iter().all(|x| x.addr != asker && r.contains(x)));
        }
    }

    #[test]
    fn merge_catches_up_and_never_resurrects() {
        let now = Instant::now();
        let mut up = Registry::new(3);
        for p in [1, 2, 3] {
            up.vote(a(S1), VoteOp::Add, m(p, 1), now);
            up.vote(a(S2), VoteOp::Add, m(p, 1), now);
        }
        up.vote(a(S1), VoteOp::Remove(RemovalReason::Left), m(2, 1), now);
        up.vote(a(S2), VoteOp::Remove(RemovalReason::Left), m(2, 1), now);
        // A seed that was down learns everything from one sync.
        let mut back = Registry::new(3);
        let changes = back.merge(&up.members(), &up.tombstones());
        assert_eq!(back.members(), up.members());
        assert_eq!(changes.len(), 2);
        // A stale list that still has peer 2 does not bring it back.
        let stale = vec![m(1, 1), m(2, 1), m(3, 1)];
        assert!(back.merge(&stale, &[]).is_empty());
        assert_eq!(back.members(), vec![m(1, 1), m(3, 1)]);
        // Merging again is a no-op.
        assert!(back.merge(&up.members(), &up.tombstones()).is_empty());
    }

    #[test]
    fn open_votes_are_remembered_and_expire() {
        let now = Instant::now();
        let mut r = Registry::new(3);
        r.vote(a(S1), VoteOp::Add, m(1, 1), now);
        assert_eq!(r.open_votes_of(&a(S1)), vec![(VoteOp::Add, m(1, 1))]);
        assert!(r.open_votes_of(&a(S2)).is_empty());
        r.expire(now + VOTE_TTL + Duration::from_secs(1));
        assert!(r.open_votes_of(&a(S1)).is_empty());
        // After expiry the vote must be cast again: one more vote is not a majority.
        assert_eq!(
            r.vote(a(S2), VoteOp::Add, m(1, 1), now + VOTE_TTL * 2),
            None
        );
    }

    #[test]
    fn an_address_held_by_a_key_is_not_given_to_another() {
        let now = Instant::now();
        let mut r = Registry::new(1);
        assert!(r.vote(a(S1), VoteOp::Add, m(1, 1), now).is_some());
        let thief = Member {
            key: [99; 32],
            ..m(1, 5)
        };
        assert_eq!(r.held_by_other(&thief), Some(m(1, 1)));
        assert_eq!(r.vote(a(S1), VoteOp::Add, thief, now), None);
        assert!(r.merge(&[thief], &[]).is_empty());
        // A removal naming the thief's key does not remove the holder.
        assert_eq!(
            r.vote(a(S1), VoteOp::Remove(RemovalReason::Left), thief, now),
            None
        );
        assert_eq!(r.members(), vec![m(1, 1)]);
        // The holder's own newer incarnation does replace it, by vote or by merge.
        assert!(r.merge(&[m(1, 2)], &[]).contains(&Change::Added(m(1, 2))));
        assert_eq!(r.members(), vec![m(1, 2)]);
        // Once the holder is removed, the address is free for a new key.
        assert!(r
            .vote(a(S1), VoteOp::Remove(RemovalReason::Dead), m(1, 2), now)
            .is_some());
        assert_eq!(
            r.vote(a(S1), VoteOp::Add, thief, now),
            Some(Change::Added(thief))
        );
    }
}
