//! Joining, and the peer's sessions with its seeds: which seeds it registers with (a random
//! majority, topped up with an unused seed when one is unreachable), registration and its
//! retries, reconnecting with backoff, and the peer lists the seeds send during the join, whose
//! union the peer picks its neighbours from. Pure: the caller passes time in and turns the
//! answers into actions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::backoff::Backoff;
use crate::keys::{self, Certified};
use crate::node::ConnId;
use crate::peer::selection;
use crate::wire::{change_bytes, Member, PeerEntry, PublicKey, Signature, VoteOp};

/// Resend `Register` to a seed that has not confirmed within this time (its vote may have been
/// lost while the seeds were still linking up).
pub const REGISTER_RETRY: Duration = Duration::from_secs(2);
/// A registration still unconfirmed this long after the seed link came up is not going to be
/// (a seed that cannot reach the others, or one that answers but never votes): the peer
/// registers with a seed it has not used as well.
pub const SPARE_AFTER: Duration = Duration::from_secs(6);

#[derive(Debug, Default)]
struct Session {
    conn: Option<ConnId>,
    dialing: bool,
    registered: bool,
    last_register: Option<Instant>,
    /// When to reconnect after losing it.
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// The list it sent during the join.
    list: Option<Vec<PeerEntry>>,
    /// Its being unreachable was said once at warning level; retries are quieter.
    warned: bool,
    /// When this connection came up.
    connected_at: Option<Instant>,
    /// A spare seed was added for this one's unconfirmed registration.
    spared: bool,
}

/// The seeds this peer uses and where it stands with each.
#[derive(Debug)]
pub struct SeedSessions {
    configured: Vec<SocketAddr>,
    majority: usize,
    /// The seeds' keys this peer knows: from `seeds.yaml`, and those proven on its links to
    /// them. A list entry counts only with a certificate they verify.
    keys: BTreeMap<SocketAddr, PublicKey>,
    sessions: BTreeMap<SocketAddr, Session>,
    join_deadline: Option<Instant>,
}

impl SeedSessions {
    pub fn new(
        configured: Vec<SocketAddr>,
        majority: usize,
        keys: BTreeMap<SocketAddr, PublicKey>,
    ) -> Self {
        SeedSessions {
            configured,
            majority,
            keys,
            sessions: BTreeMap::new(),
            join_deadline: None,
        }
    }

    /// Does this entry carry the certificate of its registration: signed by a majority of
    /// the configured seeds, checked with the keys this peer knows?
    pub fn certified(&self, entry: &PeerEntry) -> Certified {
        self.certifies(&entry.member(), &entry.signatures)
    }

    /// Do `signatures` certify `member`'s registration (as `certified` for a list entry)?
    pub fn certifies(&self, member: &Member, signatures: &[(SocketAddr, Signature)]) -> Certified {
        let bytes = change_bytes(VoteOp::Add, member);
        keys::certified(
            &bytes,
            signatures,
            self.majority,
            &self.configured,
            &self.keys,
        )
    }

    /// Is `addr` a configured seed this peer has no session with (one to dial, to learn its
    /// key or to register with as well)?
    pub fn is_unused(&self, addr: &SocketAddr) -> bool {
        self.configured.contains(addr) && !self.sessions.contains_key(addr)
    }

    /// The join starts: a random majority of the seeds to dial. The join waits for their lists
    /// until `wait` has passed (then takes what it has).
    pub fn start(&mut self, rng: &mut StdRng, now: Instant, wait: Duration) -> Vec<SocketAddr> {
        let mut chosen = self.configured.clone();
        chosen.shuffle(rng);
        chosen.truncate(self.majority);
        for s in &chosen {
            self.dialing(*s);
        }
        self.join_deadline = Some(now + wait);
        chosen
    }

    /// A dial to `addr` starts.
    pub fn dialing(&mut self, addr: SocketAddr) {
        let s = self.sessions.entry(addr).or_default();
        s.dialing = true;
        s.retry_at = None;
    }

    /// A seed we have not used yet, to replace one that is unreachable.
    fn spare(&self, rng: &mut StdRng) -> Option<SocketAddr> {
        let spare: Vec<SocketAddr> = self
            .configured
            .iter()
            .copied()
            .filter(|s| !self.sessions.contains_key(s))
            .collect();
        spare.choose(rng).copied()
    }

    /// Our connection to seed `addr`, which proved `key`, is up; we send `Register` on it now.
    pub fn connected(&mut self, addr: SocketAddr, key: PublicKey, conn: ConnId, now: Instant) {
        // The runtime checked the key against the one configured or pinned for `addr`.
        self.keys.entry(addr).or_insert(key);
        let s = self.sessions.entry(addr).or_default();
        s.conn = Some(conn);
        s.dialing = false;
        s.backoff.reset();
        s.last_register = Some(now);
        s.connected_at = Some(now);
    }

    /// A seed to register with as well (the caller dials it), once one connected seed has
    /// left our registration unconfirmed for `SPARE_AFTER` while fewer than a majority have
    /// confirmed it (each such session asks for one spare, once).
    pub fn unconfirmed_spare(&mut self, now: Instant, rng: &mut StdRng) -> Option<SocketAddr> {
        let confirmed = self.sessions.values().filter(|s| s.registered).count();
        if confirmed >= self.majority {
            return None;
        }
        let stuck = self.sessions.values_mut().find(|s| {
            s.conn.is_some()
                && !s.registered
                && !s.spared
                && s.connected_at.is_some_and(|t| now >= t + SPARE_AFTER)
        })?;
        stuck.spared = true;
        self.spare(rng)
    }

    /// The seed confirmed our registration; true the first time.
    pub fn registered(&mut self, addr: &SocketAddr) -> bool {
        match self.sessions.get_mut(addr) {
            Some(s) if !s.registered => {
                s.registered = true;
                true
            }
            _ => false,
        }
    }

    /// The seed sent its peer list during the join.
    pub fn list(&mut self, addr: &SocketAddr, peers: Vec<PeerEntry>) {
        if let Some(s) = self.sessions.get_mut(addr) {
            s.list = Some(peers);
        }
    }

    /// The union of the seeds' lists once every connected seed (a majority) has sent its list,
    /// or once the join has waited long enough and at least one list is in.
    pub fn join_result(&mut self, now: Instant, me: &SocketAddr) -> Option<Vec<PeerEntry>> {
        let connected = self.sessions.values().filter(|s| s.conn.is_some()).count();
        let lists = self
            .sessions
            .values()
            .filter(|s| s.conn.is_some() && s.list.is_some())
            .count();
        let all_in = connected >= self.majority && lists == connected;
        let timed_out = self.join_deadline.is_some_and(|d| now >= d) && lists > 0;
        if !(all_in || timed_out) {
            return None;
        }
        let lists = self.sessions.values().filter_map(|s| s.list.as_deref());
        let union = selection::union(lists, me, |e| self.certified(e) == Certified::Yes);
        for s in self.sessions.values_mut() {
            s.list = None;
        }
        Some(union)
    }

    /// Connection `conn` ended. If it was a seed session's, the wait before reconnecting.
    pub fn lost(&mut self, conn: ConnId, now: Instant) -> Option<Duration> {
        let s = self.sessions.values_mut().find(|s| s.conn == Some(conn))?;
        s.conn = None;
        s.registered = false;
        s.list = None;
        let wait = s.backoff.next_wait();
        s.retry_at = Some(now + wait);
        Some(wait)
    }

    /// A dial to seed `addr` failed: the wait before trying it again, and (while joining with
    /// fewer than a majority of seeds connected or being dialed) an unused seed to dial instead.
    pub fn dial_failed(
        &mut self,
        addr: &SocketAddr,
        now: Instant,
        joining: bool,
        rng: &mut StdRng,
    ) -> (Option<Duration>, Option<SocketAddr>) {
        let wait = self.sessions.get_mut(addr).map(|s| {
            s.dialing = false;
            s.warned = true;
            let wait = s.backoff.next_wait();
            s.retry_at = Some(now + wait);
            wait
        });
        let live = self
            .sessions
            .values()
            .filter(|s| s.conn.is_some() || s.dialing)
            .count();
        let spare = if joining && live < self.majority {
            self.spare(rng)
        } else {
            None
        };
        (wait, spare)
    }

    /// What is due at `now`: seeds to reconnect to, and connections to send `Register` on
    /// again (their registration is unconfirmed after `REGISTER_RETRY`).
    pub fn due(&mut self, now: Instant) -> (Vec<SocketAddr>, Vec<ConnId>) {
        let mut redial = Vec::new();
        let mut register = Vec::new();
        for (addr, s) in self.sessions.iter_mut() {
            if s.conn.is_none() && !s.dialing && s.retry_at.is_some_and(|t| t <= now) {
                redial.push(*addr);
            }
            if let Some(conn) = s.conn {
                if !s.registered && s.last_register.is_some_and(|t| now >= t + REGISTER_RETRY) {
                    s.last_register = Some(now);
                    register.push(conn);
                }
            }
        }
        (redial, register)
    }

    /// Whether a failed dial to `addr` is the first one (worth a warning) or a retry.
    pub fn first_failure(&self, addr: &SocketAddr) -> bool {
        self.sessions.get(addr).is_none_or(|s| !s.warned)
    }

    /// What the join still waits for, in words for people, or `None` once a majority of the
    /// seeds has confirmed the registration.
    /// What joining starts with, said at once (the first `waiting` line comes only later).
    pub fn starting(&self) -> String {
        format!(
            "Joining: contacting seeds, registering with {} of {} (a majority) before gossiping",
            self.majority,
            self.configured.len()
        )
    }

    pub fn waiting(&self) -> Option<String> {
        let registered = self.sessions.values().filter(|s| s.registered).count();
        if registered >= self.majority {
            return None;
        }
        let reachable = self.sessions.values().filter(|s| s.conn.is_some()).count();
        let n = self.configured.len();
        let need = self.majority;
        Some(if reachable < need {
            let down: Vec<String> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.conn.is_none())
                .map(|(a, _)| a.to_string())
                .collect();
            format!(
                "Waiting for seeds: {reachable} of {n} reachable, {need} needed (retrying {})",
                down.join(", ")
            )
        } else {
            format!(
                "Waiting for seeds: registered with {registered} of {need} needed ({reachable} reachable); the seeds are agreeing on it"
            )
        })
    }

    /// Our connections to seeds, in seed address order.
    pub fn conns(&self) -> Vec<ConnId> {
        self.sessions.values().filter_map(|s| s.conn).collect()
    }

    /// The seeds we are connected to, in address order.
    pub fn connected_addrs(&self) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(a, _)| a.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::NodeKey;
    use rand::SeedableRng;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn entry(p: u16) -> PeerEntry {
        PeerEntry {
            addr: a(p),
            incarnation: 1,
            key: [p as u8; 32],
            degree: 0,
            signatures: Vec::new(),
        }
    }

    fn seeds(n: u16) -> Vec<SocketAddr> {
        (1..=n).map(|i| a(9000 + i)).collect()
    }

    #[test]
    fn an_entry_counts_only_signed_by_a_majority_of_configured_seeds_whose_keys_are_known() {
        let keys: Vec<NodeKey> = (1..=4u8).map(|i| NodeKey::from_secret([i; 32])).collect();
        let known: BTreeMap<SocketAddr, PublicKey> =
            (0..2).map(|i| (seeds(3)[i], keys[i].public())).collect();
        let mut s = SeedSessions::new(seeds(3), 2, known);
        let signed = |by: &[usize], e: &PeerEntry| -> Vec<(SocketAddr, crate::wire::Signature)> {
            let bytes = change_bytes(VoteOp::Add, &e.member());
            by.iter()
                .map(|&i| (a(9001 + i as u16), keys[i].sign(&bytes)))
                .collect()
        };
        let mut e = entry(9101);
        e.signatures = signed(&[0, 1], &e);
        assert_eq!(s.certified(&e), Certified::Yes);
        // One seed alone, even twice.
        let one = signed(&[0], &e);
        e.signatures = [one.clone(), one].concat();
        assert_eq!(s.certified(&e), Certified::No);
        // Signed for another member: the key swapped.
        let mut swapped = e.clone();
        swapped.signatures = signed(&[0, 1], &e);
        swapped.key = [0xee; 32];
        assert_eq!(s.certified(&swapped), Certified::No);
        // A seed not configured (key index 3 at 9004) does not count.
        e.signatures = signed(&[0, 3], &e);
        assert_eq!(s.certified(&e), Certified::No);
        // The third seed's key is not known yet: it might, once it is.
        e.signatures = signed(&[0, 2], &e);
        assert_eq!(s.certified(&e), Certified::KeysUnknown(vec![a(9003)]));
        let t0 = Instant::now();
        assert!(s.is_unused(&a(9003)), "to be linked to, to learn its key");
        assert!(!s.is_unused(&a(9009)), "only a configured seed");
        s.connected(a(9003), keys[2].public(), 5, t0);
        assert!(!s.is_unused(&a(9003)), "once");
        assert_eq!(s.certified(&e), Certified::Yes);
    }

    /// Sessions with two of three seeds chosen and linked, when, and the draws' source.
    fn two_of_three_linked() -> (SeedSessions, Vec<SocketAddr>, Instant, StdRng) {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = SeedSessions::new(seeds(3), 2, BTreeMap::new());
        let chosen = s.start(&mut rng, t0, Duration::from_secs(20));
        assert_eq!(chosen.len(), 2);
        s.connected(chosen[0], [1; 32], 1, t0);
        s.connected(chosen[1], [2; 32], 2, t0);
        (s, chosen, t0, rng)
    }

    #[test]
    fn the_join_takes_the_union_once_every_connected_seed_answered() {
        let (mut s, chosen, t0, _) = two_of_three_linked();
        s.list(&chosen[0], vec![entry(9101), entry(9102)]);
        assert_eq!(s.join_result(t0, &a(9100)), None, "one list of two");
        s.list(&chosen[1], vec![entry(9102), entry(9103), entry(9100)]);
        let union = s.join_result(t0, &a(9100)).unwrap();
        let addrs: Vec<_> = union.iter().map(|p| p.addr).collect();
        assert_eq!(
            addrs,
            vec![a(9101), a(9102), a(9103)],
            "no duplicates, not me"
        );
    }

    #[test]
    fn a_registration_left_unconfirmed_brings_in_a_spare_seed_once() {
        let (mut s, chosen, t0, mut rng) = two_of_three_linked();
        // One seed confirms at once; the other never does.
        assert!(s.registered(&chosen[0]));
        assert_eq!(
            s.unconfirmed_spare(t0 + REGISTER_RETRY, &mut rng),
            None,
            "not yet"
        );
        let later = t0 + SPARE_AFTER;
        let spare = s.unconfirmed_spare(later, &mut rng).expect("a spare");
        assert!(!chosen.contains(&spare));
        s.dialing(spare);
        assert_eq!(s.unconfirmed_spare(later, &mut rng), None, "once");
        // Confirmed by a majority: nothing more to do.
        s.connected(spare, [3; 32], 3, later);
        assert!(s.registered(&spare));
        assert_eq!(s.unconfirmed_spare(later + SPARE_AFTER, &mut rng), None);
    }

    #[test]
    fn an_unreachable_seed_is_replaced_while_joining_and_retried_with_backoff() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = SeedSessions::new(seeds(3), 2, BTreeMap::new());
        let chosen = s.start(&mut rng, t0, Duration::from_secs(20));
        let (wait, spare) = s.dial_failed(&chosen[0], t0, true, &mut rng);
        assert_eq!(wait, Some(Duration::from_millis(200)));
        let spare = spare.expect("a third seed to try");
        assert!(!chosen.contains(&spare));
        s.dialing(spare);
        assert!(s.due(t0).0.is_empty());
        assert_eq!(s.due(t0 + Duration::from_millis(200)).0, vec![chosen[0]]);
    }

    #[test]
    fn an_unconfirmed_registration_is_sent_again() {
        let mut rng = StdRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut s = SeedSessions::new(seeds(1), 1, BTreeMap::new());
        s.start(&mut rng, t0, Duration::from_secs(20));
        s.connected(a(9001), [1; 32], 7, t0);
        assert_eq!(s.due(t0 + Duration::from_secs(1)).1, Vec::<ConnId>::new());
        assert_eq!(s.due(t0 + REGISTER_RETRY).1, vec![7]);
        assert!(s.registered(&a(9001)));
        assert!(!s.registered(&a(9001)));
        assert_eq!(s.due(t0 + REGISTER_RETRY * 3).1, Vec::<ConnId>::new());
        assert_eq!(s.lost(7, t0), Some(Duration::from_millis(200)));
        assert!(s.conns().is_empty());
    }
}
