//! The peer list (PL) and the votes that change it: the voting rule in one place.
//!
//! A member is a peer address with an incarnation (the peer's start time) and the key the
//! peer proved in its handshake, so a peer that restarts on the same port is a new member and
//! a late vote about its old self changes nothing. An address is held by one key at a time:
//! while a member is listed, no other key can be added at its address, by vote or by merge.
//!
//! A change commits when ⌊n/2⌋+1 *distinct configured seeds* have voted for it, each vote
//! signed by its seed; the signatures together are the change's **certificate**. A committed
//! list is shared between seeds as certificates (each listed member's registration, plus
//! bounded tombstones: the removals' certificates), which is how a seed that missed votes or
//! was down catches up. Nothing is merged without a certificate that verifies, so no single
//! seed can add or remove anyone; merging is idempotent, commutative and never resurrects a
//! removed member.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use crate::peer::overlay::subnet;
use crate::wire::{change_bytes, Certificate, Member, RemovalReason, Signature, VoteOp};

/// Tombstones kept for removed members; older ones are forgotten. A peer removed that long ago
/// whose vote still circulates is too stale to matter.
pub const MAX_TOMBSTONES: usize = 4096;
/// Bound on open tallies, so a stream of registrations that never complete cannot grow memory.
pub const MAX_TALLIES: usize = 65_536;

#[derive(Debug)]
struct Tally {
    /// Each voter's signature of the change.
    voters: BTreeMap<SocketAddr, Signature>,
    opened: Instant,
}

/// Checks one seed's signature of a change: is `voter` a configured seed whose key we know,
/// and does `sig` sign `bytes` under it?
pub type CheckSignature<'a> = &'a mut dyn FnMut(&SocketAddr, &[u8], &Signature) -> bool;

/// A change that took effect at this seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added(Member),
    Removed(Member, RemovalReason),
}

#[derive(Debug)]
pub struct Registry {
    majority: usize,
    /// Votes that have not reached a majority are dropped after this long (`seed.vote_ttl`; a
    /// peer that registered with too few seeds retries and creates fresh votes).
    vote_ttl: Duration,
    members: BTreeMap<SocketAddr, Member>,
    /// The certificate of each listed member's registration.
    certs: BTreeMap<SocketAddr, Certificate>,
    /// Listed members per IP and per subnet (`overlay::subnet`), for the registration caps.
    per_ip: BTreeMap<std::net::IpAddr, usize>,
    per_subnet: BTreeMap<[u8; 7], usize>,
    /// The members' addresses in no particular order, and where each is in it: a random sample
    /// of the list costs its size, not the list's.
    dense: Vec<SocketAddr>,
    position: HashMap<SocketAddr, usize>,
    /// The removals' certificates, oldest first.
    tombstones: VecDeque<Certificate>,
    /// Highest removed incarnation per address, mirroring `tombstones`.
    removed_inc: BTreeMap<SocketAddr, u64>,
    tallies: BTreeMap<(Member, VoteOp), Tally>,
}

impl Registry {
    /// `n_seeds`: all configured seeds, up or not.
    pub fn new(n_seeds: usize, vote_ttl: Duration) -> Self {
        Registry {
            majority: n_seeds / 2 + 1,
            vote_ttl,
            members: BTreeMap::new(),
            certs: BTreeMap::new(),
            per_ip: BTreeMap::new(),
            per_subnet: BTreeMap::new(),
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

    /// How many members are listed on `addr`'s IP and in its subnet.
    pub fn listed_near(&self, addr: &SocketAddr) -> (usize, usize) {
        let ip = self.per_ip.get(&addr.ip()).copied().unwrap_or(0);
        let net = self.per_subnet.get(&subnet(addr)).copied().unwrap_or(0);
        (ip, net)
    }

    /// How many members not listed yet have an open vote to add them on `addr`'s IP and in
    /// its subnet (`addr` itself left out): registrations in flight, which the caps count too,
    /// or a burst of registrations would all pass before the first is listed.
    pub fn adding_near(&self, addr: &SocketAddr) -> (usize, usize) {
        let net = subnet(addr);
        let (mut ip, mut near) = (0, 0);
        let mut last = None;
        for (m, _) in self.tallies.keys().filter(|(_, op)| *op == VoteOp::Add) {
            // Tallies are ordered by member: several incarnations of one address count once.
            if m.addr == *addr || last == Some(m.addr) || self.members.contains_key(&m.addr) {
                continue;
            }
            last = Some(m.addr);
            if subnet(&m.addr) == net {
                near += 1;
                if m.addr.ip() == addr.ip() {
                    ip += 1;
                }
            }
        }
        (ip, near)
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

    /// Every certificate this seed holds: the removals it remembers, then the registrations
    /// of the listed members (what a `Sync` carries).
    pub fn certificates(&self) -> Vec<Certificate> {
        self.tombstones
            .iter()
            .chain(self.certs.values())
            .cloned()
            .collect()
    }

    /// The certificate of listed member `addr`'s registration.
    pub fn certificate(&self, addr: &SocketAddr) -> Option<&Certificate> {
        self.certs.get(addr)
    }

    /// Do the signatures in `c` come from at least a majority of distinct seeds, each valid?
    pub fn verifies(&self, c: &Certificate, check: CheckSignature) -> bool {
        let bytes = change_bytes(c.op, &c.member);
        let mut good = BTreeSet::new();
        for (voter, sig) in &c.signatures {
            if !good.contains(voter) && check(voter, &bytes, sig) {
                good.insert(*voter);
            }
        }
        good.len() >= self.majority
    }

    fn is_tombstoned(&self, m: &Member) -> bool {
        self.removed_inc
            .get(&m.addr)
            .is_some_and(|&inc| inc >= m.incarnation)
    }

    /// Votes this seed has cast that have not committed yet (re-sent when a seed link comes
    /// up, so no vote is lost to a link that was down).
    pub fn open_votes_of(&self, voter: &SocketAddr) -> Vec<(VoteOp, Member, Signature)> {
        self.tallies
            .iter()
            .filter_map(|((m, op), t)| t.voters.get(voter).map(|sig| (*op, *m, *sig)))
            .collect()
    }

    /// Has `voter` already voted to remove `m` (for either reason)?
    pub fn has_voted_remove(&self, voter: &SocketAddr, m: &Member) -> bool {
        [RemovalReason::Dead, RemovalReason::Left].iter().any(|r| {
            self.tallies
                .get(&(*m, VoteOp::Remove(*r)))
                .is_some_and(|t| t.voters.contains_key(voter))
        })
    }

    /// Records one seed's vote, with its signature of the change (checked by the caller);
    /// returns the change if this vote completed a majority. Votes about stale incarnations,
    /// and repeats, change nothing.
    pub fn vote(
        &mut self,
        voter: SocketAddr,
        op: VoteOp,
        m: Member,
        signature: Signature,
        now: Instant,
    ) -> Option<Change> {
        match op {
            VoteOp::Add => {
                if self.add_is_stale(&m) {
                    return None;
                }
            }
            VoteOp::Remove(_) => {
                if self.is_tombstoned(&m)
                    || self
                        .members
                        .get(&m.addr)
                        .is_some_and(|held| held.incarnation > m.incarnation)
                {
                    return None;
                }
            }
        }
        // Full: refused until the periodic `expire` makes room.
        if !self.tallies.contains_key(&(m, op)) && self.tallies.len() >= MAX_TALLIES {
            return None;
        }
        let tally = self.tallies.entry((m, op)).or_insert_with(|| Tally {
            voters: BTreeMap::new(),
            opened: now,
        });
        tally.voters.insert(voter, signature);
        if tally.voters.len() < self.majority {
            return None;
        }
        let cert = Certificate {
            op,
            member: m,
            signatures: tally.voters.iter().map(|(v, s)| (*v, *s)).collect(),
        };
        match op {
            VoteOp::Add => self.apply_add(cert).then_some(Change::Added(m)),
            VoteOp::Remove(reason) => self
                .apply_remove(cert)
                .then_some(Change::Removed(m, reason)),
        }
    }

    /// Adds a committed member, with its certificate (from a majority here or from another
    /// seed's `Sync`). A newer incarnation of the same key replaces the listed one.
    fn apply_add(&mut self, cert: Certificate) -> bool {
        let m = cert.member;
        if self.add_is_stale(&m) {
            return false;
        }
        if self.members.insert(m.addr, m).is_none() {
            self.position.insert(m.addr, self.dense.len());
            self.dense.push(m.addr);
            *self.per_ip.entry(m.addr.ip()).or_insert(0) += 1;
            *self.per_subnet.entry(subnet(&m.addr)).or_insert(0) += 1;
        }
        self.certs.insert(m.addr, cert);
        self.tallies.remove(&(m, VoteOp::Add));
        true
    }

    /// Removes a member for good, by its removal certificate; true if it was present. The
    /// tombstone is kept either way so the add cannot come back through a late vote or merge.
    fn apply_remove(&mut self, cert: Certificate) -> bool {
        let m = cert.member;
        for op in [
            VoteOp::Add,
            VoteOp::Remove(RemovalReason::Dead),
            VoteOp::Remove(RemovalReason::Left),
        ] {
            self.tallies.remove(&(m, op));
        }
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
                self.certs.remove(&m.addr);
                for count in [
                    self.per_ip.get_mut(&m.addr.ip()),
                    self.per_subnet.get_mut(&subnet(&m.addr)),
                ]
                .into_iter()
                .flatten()
                {
                    *count = count.saturating_sub(1);
                }
                if let Some(i) = self.position.remove(&m.addr) {
                    self.dense.swap_remove(i);
                    if let Some(moved) = self.dense.get(i) {
                        self.position.insert(*moved, i);
                    }
                }
            }
            self.tombstones.push_back(cert);
            let inc = self.removed_inc.entry(m.addr).or_insert(m.incarnation);
            *inc = (*inc).max(m.incarnation);
            while self.tombstones.len() > MAX_TOMBSTONES {
                if let Some(old) = self.tombstones.pop_front() {
                    let old = old.member;
                    if self.removed_inc.get(&old.addr) == Some(&old.incarnation) {
                        self.removed_inc.remove(&old.addr);
                    }
                }
            }
        }
        present
    }

    /// Merges certificates from another seed (its `Sync`): removals first, then additions.
    /// A certificate is checked (`verifies`) only when it would change something here, and
    /// applied only if it verifies; the rest are ignored. Returns what changed and how many
    /// certificates failed to verify.
    pub fn merge(
        &mut self,
        certs: Vec<Certificate>,
        check: CheckSignature,
    ) -> (Vec<Change>, usize) {
        let mut changes = Vec::new();
        let mut bad = 0;
        let (removes, adds): (Vec<Certificate>, Vec<Certificate>) =
            certs.into_iter().partition(|c| c.op != VoteOp::Add);
        for c in removes {
            let VoteOp::Remove(reason) = c.op else {
                continue;
            };
            let m = c.member;
            if self.is_tombstoned(&m) || self.held_by_other(&m).is_some() {
                continue;
            }
            if !self.verifies(&c, check) {
                bad += 1;
                continue;
            }
            if self.apply_remove(c) {
                changes.push(Change::Removed(m, reason));
            }
        }
        for c in adds {
            let m = c.member;
            if self.add_is_stale(&m) {
                continue;
            }
            if !self.verifies(&c, check) {
                bad += 1;
                continue;
            }
            // A newer incarnation of the same key replaces the old one.
            let old = self.members.get(&m.addr).copied();
            if self.apply_add(c) {
                if let Some(old) = old {
                    changes.push(Change::Removed(old, RemovalReason::Left));
                }
                changes.push(Change::Added(m));
            }
        }
        (changes, bad)
    }

    /// Drops tallies that never reached a majority. Returns the listed members whose removal
    /// `voter` had voted for in a dropped tally: they are still listed, so check them again.
    pub fn expire(&mut self, now: Instant, voter: &SocketAddr) -> Vec<Member> {
        let ttl = self.vote_ttl;
        let mut recheck = Vec::new();
        self.tallies.retain(|(m, op), t| {
            let open = now.saturating_duration_since(t.opened) < ttl;
            if !open && *op != VoteOp::Add && t.voters.contains_key(voter) {
                recheck.push(*m);
            }
            open
        });
        recheck.retain(|m| self.contains(m));
        recheck.dedup();
        recheck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Signatures are checked by the caller's closure; these tests count voters.
    const SIG: Signature = [0; 64];
    const TTL: Duration = Duration::from_secs(120);

    fn any_sig(_: &SocketAddr, _: &[u8], _: &Signature) -> bool {
        true
    }

    /// A certificate for `m` signed by the given seeds.
    fn cert(op: VoteOp, m: Member, by: &[u16]) -> Certificate {
        Certificate {
            op,
            member: m,
            signatures: by.iter().map(|p| (a(*p), SIG)).collect(),
        }
    }

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
        assert_eq!(Registry::new(1, TTL).majority(), 1);
        assert_eq!(Registry::new(2, TTL).majority(), 2);
        assert_eq!(Registry::new(3, TTL).majority(), 2);
        assert_eq!(Registry::new(4, TTL).majority(), 3);
        assert_eq!(Registry::new(5, TTL).majority(), 3);
    }

    #[test]
    fn one_vote_is_not_enough_and_two_commit() {
        let now = Instant::now();
        let mut r = Registry::new(3, TTL);
        assert_eq!(r.vote(a(S1), VoteOp::Add, m(1, 1), SIG, now), None);
        assert!(r.is_empty());
        // The same seed voting again does not count twice.
        assert_eq!(r.vote(a(S1), VoteOp::Add, m(1, 1), SIG, now), None);
        assert_eq!(
            r.vote(a(S2), VoteOp::Add, m(1, 1), SIG, now),
            Some(Change::Added(m(1, 1)))
        );
        assert!(r.contains(&m(1, 1)));
        // The third vote arrives late: a no-op, not an error.
        assert_eq!(r.vote(a(S3), VoteOp::Add, m(1, 1), SIG, now), None);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn removal_is_agreed_and_idempotent() {
        let now = Instant::now();
        let mut r = Registry::new(3, TTL);
        r.vote(a(S1), VoteOp::Add, m(1, 1), SIG, now);
        r.vote(a(S2), VoteOp::Add, m(1, 1), SIG, now);
        let dead = VoteOp::Remove(RemovalReason::Dead);
        assert_eq!(r.vote(a(S3), dead, m(1, 1), SIG, now), None);
        assert!(r.contains(&m(1, 1)));
        assert_eq!(
            r.vote(a(S1), dead, m(1, 1), SIG, now),
            Some(Change::Removed(m(1, 1), RemovalReason::Dead))
        );
        assert!(r.is_empty());
        assert_eq!(r.vote(a(S2), dead, m(1, 1), SIG, now), None);
        // A late add vote for the removed incarnation cannot resurrect it.
        assert_eq!(r.vote(a(S3), VoteOp::Add, m(1, 1), SIG, now), None);
        assert_eq!(r.vote(a(S1), VoteOp::Add, m(1, 1), SIG, now), None);
        assert!(r.is_empty());
    }

    #[test]
    fn a_restarted_peer_is_a_new_member() {
        let now = Instant::now();
        let mut r = Registry::new(1, TTL);
        assert!(r.vote(a(S1), VoteOp::Add, m(1, 1), SIG, now).is_some());
        assert!(r
            .vote(
                a(S1),
                VoteOp::Remove(RemovalReason::Dead),
                m(1, 1),
                SIG,
                now
            )
            .is_some());
        assert_eq!(
            r.vote(a(S1), VoteOp::Add, m(1, 2), SIG, now),
            Some(Change::Added(m(1, 2)))
        );
        // A stale removal vote about the old incarnation changes nothing.
        assert_eq!(
            r.vote(
                a(S1),
                VoteOp::Remove(RemovalReason::Dead),
                m(1, 1),
                SIG,
                now
            ),
            None
        );
        assert!(r.contains(&m(1, 2)));
    }

    #[test]
    fn a_sample_is_distinct_current_members_without_the_asker() {
        use rand::SeedableRng;
        let mut r = Registry::new(1, TTL);
        for p in 0..50u16 {
            r.apply_add(cert(VoteOp::Add, m(9100 + p, 1), &[S1]));
        }
        for p in 0..10u16 {
            r.apply_remove(cert(
                VoteOp::Remove(RemovalReason::Dead),
                m(9100 + p, 1),
                &[S1],
            ));
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
        let mut up = Registry::new(3, TTL);
        for p in [1, 2, 3] {
            up.vote(a(S1), VoteOp::Add, m(p, 1), SIG, now);
            up.vote(a(S2), VoteOp::Add, m(p, 1), SIG, now);
        }
        up.vote(
            a(S1),
            VoteOp::Remove(RemovalReason::Left),
            m(2, 1),
            SIG,
            now,
        );
        up.vote(
            a(S2),
            VoteOp::Remove(RemovalReason::Left),
            m(2, 1),
            SIG,
            now,
        );
        // A seed that was down learns everything from one sync.
        let mut back = Registry::new(3, TTL);
        let (changes, bad) = back.merge(up.certificates(), &mut any_sig);
        assert_eq!(back.members(), up.members());
        assert_eq!((changes.len(), bad), (2, 0));
        // A stale certificate that still has peer 2 does not bring it back.
        let stale = cert(VoteOp::Add, m(2, 1), &[S1, S2]);
        assert_eq!(back.merge(vec![stale], &mut any_sig), (vec![], 0));
        assert_eq!(back.members(), vec![m(1, 1), m(3, 1)]);
        // Merging again is a no-op, and checks no signature.
        let mut checked = 0;
        let mut count = |_: &SocketAddr, _: &[u8], _: &Signature| {
            checked += 1;
            true
        };
        assert_eq!(back.merge(up.certificates(), &mut count), (vec![], 0));
        assert_eq!(checked, 0);
    }

    #[test]
    fn nothing_is_merged_without_a_majority_of_good_signatures() {
        let mut r = Registry::new(3, TTL);
        // One seed alone, or the same seed twice, is not a majority.
        let alone = cert(VoteOp::Add, m(1, 1), &[S1]);
        let twice = cert(VoteOp::Add, m(2, 1), &[S1, S1]);
        assert_eq!(r.merge(vec![alone, twice], &mut any_sig), (vec![], 2));
        // Two seeds, one of whose signatures does not verify.
        let forged = cert(VoteOp::Add, m(3, 1), &[S1, S2]);
        let mut only_s1 = |v: &SocketAddr, _: &[u8], _: &Signature| *v == a(S1);
        assert_eq!(r.merge(vec![forged.clone()], &mut only_s1), (vec![], 1));
        assert!(r.is_empty());
        // The signatures are over the change: checked against `change_bytes`.
        let mut over = |_: &SocketAddr, b: &[u8], _: &Signature| {
            b == change_bytes(VoteOp::Add, &m(3, 1)).as_slice()
        };
        let (changes, bad) = r.merge(vec![forged], &mut over);
        assert_eq!((changes, bad), (vec![Change::Added(m(3, 1))], 0));
        // An uncertified removal removes nothing.
        let gone = cert(VoteOp::Remove(RemovalReason::Dead), m(3, 1), &[S2]);
        assert_eq!(r.merge(vec![gone], &mut any_sig), (vec![], 1));
        assert_eq!(r.members(), vec![m(3, 1)]);
    }

    #[test]
    fn an_expired_removal_vote_of_a_listed_member_asks_for_a_recheck() {
        let now = Instant::now();
        let mut r = Registry::new(3, TTL);
        r.vote(a(S1), VoteOp::Add, m(1, 1), SIG, now);
        r.vote(a(S2), VoteOp::Add, m(1, 1), SIG, now);
        let dead = VoteOp::Remove(RemovalReason::Dead);
        r.vote(a(S1), dead, m(1, 1), SIG, now);
        r.vote(a(S2), VoteOp::Add, m(2, 1), SIG, now);
        let later = now + TTL + Duration::from_secs(1);
        // Our removal vote expired while the member is listed: check it again. Another seed's
        // expired votes, and expired adds, ask for nothing.
        assert_eq!(r.expire(later, &a(S2)), vec![]);
        let mut r2 = Registry::new(3, TTL);
        r2.vote(a(S1), VoteOp::Add, m(1, 1), SIG, now);
        r2.vote(a(S2), VoteOp::Add, m(1, 1), SIG, now);
        r2.vote(a(S1), dead, m(1, 1), SIG, now);
        assert_eq!(r2.expire(later, &a(S1)), vec![m(1, 1)]);
        assert!(!r2.has_voted_remove(&a(S1), &m(1, 1)), "free to vote again");
    }

    #[test]
    fn open_votes_are_remembered_and_expire() {
        let now = Instant::now();
        let mut r = Registry::new(3, TTL);
        r.vote(a(S1), VoteOp::Add, m(1, 1), SIG, now);
        assert_eq!(r.open_votes_of(&a(S1)), vec![(VoteOp::Add, m(1, 1), SIG)]);
        assert!(r.open_votes_of(&a(S2)).is_empty());
        r.expire(now + TTL + Duration::from_secs(1), &a(S1));
        assert!(r.open_votes_of(&a(S1)).is_empty());
        // After expiry the vote must be cast again: one more vote is not a majority.
        assert_eq!(
            r.vote(a(S2), VoteOp::Add, m(1, 1), SIG, now + TTL * 2),
            None
        );
    }

    #[test]
    fn an_address_held_by_a_key_is_not_given_to_another() {
        let now = Instant::now();
        let mut r = Registry::new(1, TTL);
        assert!(r.vote(a(S1), VoteOp::Add, m(1, 1), SIG, now).is_some());
        let thief = Member {
            key: [99; 32],
            ..m(1, 5)
        };
        assert_eq!(r.held_by_other(&thief), Some(m(1, 1)));
        assert_eq!(r.vote(a(S1), VoteOp::Add, thief, SIG, now), None);
        let stolen = cert(VoteOp::Add, thief, &[S1]);
        assert_eq!(r.merge(vec![stolen], &mut any_sig), (vec![], 0));
        // A removal naming the thief's key does not remove the holder.
        assert_eq!(
            r.vote(a(S1), VoteOp::Remove(RemovalReason::Left), thief, SIG, now),
            None
        );
        assert_eq!(r.members(), vec![m(1, 1)]);
        // The holder's own newer incarnation does replace it, by vote or by merge.
        let newer = cert(VoteOp::Add, m(1, 2), &[S1]);
        let (changes, _) = r.merge(vec![newer], &mut any_sig);
        assert!(changes.contains(&Change::Added(m(1, 2))));
        assert_eq!(r.members(), vec![m(1, 2)]);
        // Once the holder is removed, the address is free for a new key.
        assert!(r
            .vote(
                a(S1),
                VoteOp::Remove(RemovalReason::Dead),
                m(1, 2),
                SIG,
                now
            )
            .is_some());
        assert_eq!(
            r.vote(a(S1), VoteOp::Add, thief, SIG, now),
            Some(Change::Added(thief))
        );
    }
}
