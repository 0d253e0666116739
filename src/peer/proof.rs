//! `gossip.mode: rooted`: proofs of roots, their numbers and distances (`wire::RootNumber`).
//!
//! A root is a registered peer, named by the incarnation it registered (its start, which
//! seeds hold to their clocks, so no one can claim to be older than it is) and its address;
//! its certificate (a majority of the seeds' signatures over the registration) proves both
//! and the key. The root signs each of its numbers together with the anchor of a *distance
//! chain*: a secret value hashed [`MAX_DIST`] times. It sends its neighbours the secret
//! itself (distance 0); each peer passes on the value it heard from its parent hashed once
//! more (its distance, one more). A value at distance `d`, hashed `MAX_DIST - d` times, gives
//! the anchor; going the other way takes a preimage. So a neighbour cannot name a root that
//! is not registered, backdate one, make up a number, or claim to be nearer the root than the
//! neighbour it heard from (SEAD's hash chains, for a distance vector): the most a liar can do
//! is to pass on its parent's distance as its own, one link shorter than it is.
//!
//! Every receiver checks what it is told: the certificate once per root, a number's
//! signature once per number (the last [`NUMBERS_KEPT`] are remembered, so the copies of one
//! number from every neighbour cost a comparison), the chain at every place (at most 32
//! hashes of 32 bytes). What is false (a certificate the seeds did not sign, a number the
//! root did not sign, a distance the chain does not prove) is a lie, and the neighbour is
//! cut off; what cannot be checked yet (seeds whose keys this peer has not seen) is taken as
//! no route.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::keys::{verify, Certified, NodeKey};
use crate::peer::rooted::{RootId, MAX_DIST};
use crate::wire::{root_number_bytes, RootNumber, Signature};

/// Roots whose certificates are remembered (the oldest root id forgotten first).
pub const MAX_ROOTS: usize = 64;
/// Numbers remembered per root, the newest.
pub const NUMBERS_KEPT: usize = 4;

/// One link down a distance chain.
pub fn chain_step(v: &[u8; 32]) -> [u8; 32] {
    Sha256::new()
        .chain_update(b"gossipnet/7 chain")
        .chain_update(v)
        .finalize()
        .into()
}

/// Does `value` lie at `dist` on the chain that ends at `anchor`? Any value does at
/// [`MAX_DIST`] and over (no route).
pub fn on_chain(value: &[u8; 32], dist: u8, anchor: &[u8; 32]) -> bool {
    if dist >= MAX_DIST {
        return true;
    }
    let mut v = *value;
    for _ in dist..MAX_DIST {
        v = chain_step(&v);
    }
    v == *anchor
}

/// What a check of a place found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    Holds,
    /// Its certificate is signed by seeds whose keys this peer has not seen yet.
    Unproven,
    /// A certificate the seeds did not sign, a number its root did not sign, or a distance
    /// the chain does not prove: a lie.
    False,
}

/// What this peer knows to be true of roots, and the chain values it needs to pass on.
#[derive(Debug, Default)]
pub struct Proofs {
    /// Per root, its numbers checked (the newest [`NUMBERS_KEPT`], in order of `seq`), each
    /// with the root's key and certificate.
    roots: BTreeMap<RootId, VecDeque<Arc<RootNumber>>>,
    /// Per neighbour, the chain value of the place it told last, if that checked.
    values: BTreeMap<SocketAddr, [u8; 32]>,
    /// Per chain (by anchor), the value at the lowest distance checked so far: a value at
    /// another distance checks against it in as many hashes as the distances differ (one or
    /// two, between neighbours), not up to 32.
    lows: BTreeMap<[u8; 32], (u8, [u8; 32])>,
    /// As a root: the secret start of each of its own numbers' chains kept, by `seq`.
    own: VecDeque<(u32, [u8; 32])>,
}

impl Proofs {
    /// Checks a place a neighbour told (`from`): the root's certificate (`certified`, when
    /// the root is new here), the number's signature and the distance chain. When it holds,
    /// `value` is what this peer builds on if `from` becomes its parent.
    pub fn check(
        &mut self,
        from: SocketAddr,
        number: &Arc<RootNumber>,
        dist: u8,
        value: &[u8; 32],
        certified: impl FnOnce(&RootNumber) -> Certified,
    ) -> Checked {
        let mut checked = self.check_number(number, certified);
        if checked == Checked::Holds && !self.on_chain(value, dist, &number.anchor) {
            checked = Checked::False;
        }
        if checked == Checked::Holds {
            self.values.insert(from, *value);
        } else {
            self.values.remove(&from);
        }
        checked
    }

    fn check_number(
        &mut self,
        number: &Arc<RootNumber>,
        certified: impl FnOnce(&RootNumber) -> Certified,
    ) -> Checked {
        let id = (number.incarnation, number.root);
        let signed = |n: &RootNumber| {
            verify(
                &n.key,
                &root_number_bytes(&n.root, n.incarnation, n.seq, &n.anchor),
                &n.signature,
            )
        };
        match self.roots.get(&id) {
            Some(known) => {
                if known.iter().any(|n| n.seq == number.seq && **n == **number) {
                    return Checked::Holds;
                }
                // The root's key is known, and so is a certificate of it: only the number is
                // new. Another certificate is checked as a new one: the number is kept and
                // passed on with it, so a real number relayed with a made-up certificate must
                // not pass (the peers this one tells would take it for the liar).
                let root = known.back().expect("never empty");
                if root.key != number.key {
                    return Checked::False;
                }
                if root.certificate != number.certificate {
                    match certified(number) {
                        Certified::Yes => {}
                        Certified::KeysUnknown(_) => return Checked::Unproven,
                        Certified::No => return Checked::False,
                    }
                }
                if !signed(number) {
                    return Checked::False;
                }
            }
            None => match certified(number) {
                Certified::Yes if signed(number) => {}
                Certified::KeysUnknown(_) => return Checked::Unproven,
                _ => return Checked::False,
            },
        }
        self.remember(number.clone());
        Checked::Holds
    }

    /// `on_chain`, from the lowest value of that chain checked so far when there is one.
    fn on_chain(&mut self, value: &[u8; 32], dist: u8, anchor: &[u8; 32]) -> bool {
        if dist >= MAX_DIST {
            return true;
        }
        let hashed = |mut v: [u8; 32], times: u8| {
            for _ in 0..times {
                v = chain_step(&v);
            }
            v
        };
        if let Some(&(low, at_low)) = self.lows.get(anchor) {
            if dist >= low {
                return hashed(at_low, dist - low) == *value;
            }
            if hashed(*value, low - dist) != at_low {
                return false;
            }
        } else if !on_chain(value, dist, anchor) {
            return false;
        }
        if !self.lows.contains_key(anchor) && self.lows.len() >= MAX_ROOTS * NUMBERS_KEPT {
            self.lows.pop_first();
        }
        self.lows.insert(*anchor, (dist, *value));
        true
    }

    /// Keeps a number checked (or this peer's own).
    fn remember(&mut self, number: Arc<RootNumber>) {
        let id = (number.incarnation, number.root);
        if !self.roots.contains_key(&id) && self.roots.len() >= MAX_ROOTS {
            // Keep the oldest roots: they are the ones a tree hangs from. One younger than
            // all kept is not kept (its numbers are checked again each time, within the
            // link's control rate).
            if self
                .roots
                .last_key_value()
                .is_some_and(|(last, _)| id > *last)
            {
                return;
            }
            self.roots.pop_last();
        }
        let known = self.roots.entry(id).or_default();
        if known.iter().any(|n| n.seq == number.seq) {
            return;
        }
        let at = known.partition_point(|n| n.seq < number.seq);
        known.insert(at, number);
        while known.len() > NUMBERS_KEPT {
            known.pop_front();
        }
        if known.is_empty() {
            self.roots.remove(&id);
        }
    }

    /// `n`'s link went.
    pub fn forget(&mut self, n: &SocketAddr) {
        self.values.remove(n);
    }

    /// A root's number `seq`, if checked here (or this peer's own).
    pub fn number(&self, root: RootId, seq: u32) -> Option<Arc<RootNumber>> {
        self.roots
            .get(&root)?
            .iter()
            .find(|n| n.seq == seq)
            .cloned()
    }

    /// A root's newest number checked here.
    pub fn newest(&self, root: RootId) -> Option<Arc<RootNumber>> {
        self.roots.get(&root)?.back().cloned()
    }

    /// The chain value to tell at distance one more than neighbour `parent`'s.
    pub fn value_below(&self, parent: &SocketAddr) -> Option<[u8; 32]> {
        self.values.get(parent).map(chain_step)
    }

    /// As root `me` (certified by `certificate`): number `seq` and the chain's secret start
    /// (distance 0), made and signed with `key` the first time it is asked for. The start is
    /// drawn from `key`'s signature of the number with no anchor: no one else can make it,
    /// and it costs the peer's randomness nothing.
    pub fn own_number(
        &mut self,
        me: RootId,
        key: &NodeKey,
        certificate: &[(SocketAddr, Signature)],
        seq: u32,
    ) -> (Arc<RootNumber>, [u8; 32]) {
        if let Some(&(_, start)) = self.own.iter().find(|(s, _)| *s == seq) {
            if let Some(n) = self.number(me, seq) {
                return (n, start);
            }
        }
        let (incarnation, root) = me;
        let start: [u8; 32] = Sha256::new()
            .chain_update(b"gossipnet/7 chain start")
            .chain_update(key.sign(&root_number_bytes(&root, incarnation, seq, &[0; 32])))
            .finalize()
            .into();
        let mut anchor = start;
        for _ in 0..MAX_DIST {
            anchor = chain_step(&anchor);
        }
        let number = Arc::new(RootNumber {
            root,
            incarnation,
            key: key.public(),
            certificate: certificate.to_vec(),
            seq,
            anchor,
            signature: key.sign(&root_number_bytes(&root, incarnation, seq, &anchor)),
        });
        self.own.retain(|(s, _)| *s != seq);
        self.own.push_back((seq, start));
        while self.own.len() > NUMBERS_KEPT {
            self.own.pop_front();
        }
        self.remember(number.clone());
        (number, start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn a_chain_value_checks_at_its_distance_and_further_only() {
        let key = NodeKey::from_secret([1; 32]);
        let mut root = Proofs::default();
        let (number, start) = root.own_number((5, a(1)), &key, &[], 1);
        assert!(on_chain(&start, 0, &number.anchor));
        let mut v = start;
        for d in 1..MAX_DIST {
            v = chain_step(&v);
            assert!(on_chain(&v, d, &number.anchor), "{d}");
            // Claimed one link nearer: no.
            assert!(!on_chain(&v, d - 1, &number.anchor), "{d}");
        }
        // No route needs no proof.
        assert!(on_chain(&[0; 32], MAX_DIST, &number.anchor));
    }

    #[test]
    fn a_number_checks_once_under_the_certified_key_and_signed_by_it() {
        let key = NodeKey::from_secret([1; 32]);
        let other = NodeKey::from_secret([2; 32]);
        let mut root = Proofs::default();
        let (number, start) = root.own_number((5, a(1)), &key, &[], 7);
        let mut p = Proofs::default();
        // Not certified: refused.
        assert_eq!(
            p.check(a(2), &number, 0, &start, |_| Certified::No),
            Checked::False
        );
        assert_eq!(
            p.check(a(2), &number, 0, &start, |_| Certified::KeysUnknown(vec![
                a(9)
            ])),
            Checked::Unproven
        );
        assert_eq!(p.value_below(&a(2)), None);
        let mut asked = 0;
        let checked = p.check(a(2), &number, 0, &start, |_| {
            asked += 1;
            Certified::Yes
        });
        assert_eq!(checked, Checked::Holds);
        assert_eq!(p.value_below(&a(2)), Some(chain_step(&start)));
        // The same number again, from another neighbour: not asked again.
        assert_eq!(
            p.check(a(3), &number, 0, &start, |_| unreachable!()),
            Checked::Holds
        );
        assert_eq!(asked, 1);
        // A number made up by someone else for that root: refused.
        let mut forged = (*number).clone();
        forged.seq = 8;
        forged.signature = other.sign(&root_number_bytes(&a(1), 5, 8, &forged.anchor));
        let yes = |_: &RootNumber| Certified::Yes;
        assert_eq!(
            p.check(a(3), &Arc::new(forged.clone()), 0, &start, yes),
            Checked::False
        );
        forged.key = other.public();
        assert_eq!(
            p.check(a(3), &Arc::new(forged), 0, &start, yes),
            Checked::False
        );
        // A new number of the root: its signature checked, under the key known.
        let (next, next_start) = root.own_number((5, a(1)), &key, &[], 8);
        let checked = p.check(a(3), &next, 1, &chain_step(&next_start), |_| unreachable!());
        assert_eq!(checked, Checked::Holds);
        assert_eq!(p.number((5, a(1)), 8), Some(next.clone()));
        // A real number relayed with a certificate no seed signed: refused (it would be
        // passed on with it); with another good one, checked and taken.
        let mut recertified = (*next).clone();
        recertified.certificate = vec![(a(9), [1; 64])];
        let recertified = Arc::new(recertified);
        assert_eq!(
            p.check(a(3), &recertified, 1, &chain_step(&next_start), |_| {
                Certified::No
            }),
            Checked::False
        );
        assert_eq!(
            p.check(a(3), &recertified, 1, &chain_step(&next_start), |_| {
                Certified::Yes
            }),
            Checked::Holds
        );
        // A value claimed nearer than it is: refused, and forgotten as a base.
        assert_eq!(
            p.check(a(3), &number, 0, &chain_step(&start), yes),
            Checked::False
        );
        assert_eq!(p.value_below(&a(3)), None);
    }

    #[test]
    fn chain_values_check_against_the_lowest_one_checked() {
        let key = NodeKey::from_secret([1; 32]);
        let mut root = Proofs::default();
        let (n, start) = root.own_number((5, a(1)), &key, &[], 1);
        let at = |d: u8| {
            let mut v = start;
            for _ in 0..d {
                v = chain_step(&v);
            }
            v
        };
        let mut p = Proofs::default();
        let yes = |_: &RootNumber| Certified::Yes;
        // Heard at 3 first, then at 4 and 2 (each a hash or two from it), then lies.
        for (d, v, want) in [
            (3, at(3), Checked::Holds),
            (4, at(4), Checked::Holds),
            (2, at(2), Checked::Holds),
            (5, at(5), Checked::Holds),
            (1, at(2), Checked::False),
            (3, at(4), Checked::False),
            (0, at(0), Checked::Holds),
            (0, at(1), Checked::False),
        ] {
            assert_eq!(p.check(a(2), &n, d, &v, yes), want, "{d}");
        }
        assert_eq!(p.lows[&n.anchor], (0, start));
    }

    #[test]
    fn numbers_and_roots_kept_are_bounded() {
        let key = NodeKey::from_secret([1; 32]);
        let mut root = Proofs::default();
        let mut p = Proofs::default();
        for seq in 1..=10 {
            let (n, s) = root.own_number((5, a(1)), &key, &[], seq);
            assert_eq!(p.check(a(2), &n, 0, &s, |_| Certified::Yes), Checked::Holds);
        }
        assert_eq!(p.roots[&(5, a(1))].len(), NUMBERS_KEPT);
        assert!(p.number((5, a(1)), 10).is_some());
        assert!(p.number((5, a(1)), 6).is_none());
        for r in 0..(2 * MAX_ROOTS as u16) {
            let mut other = Proofs::default();
            let (n, s) = other.own_number((100 + u64::from(r), a(r)), &key, &[], 1);
            p.check(a(2), &n, 0, &s, |_| Certified::Yes);
        }
        assert_eq!(p.roots.len(), MAX_ROOTS);
        assert!(p.roots.contains_key(&(5, a(1))), "the oldest root stays");
        // An older one than all but the first takes the youngest one's place.
        let (young, _) = p
            .roots
            .last_key_value()
            .map(|(k, v)| (*k, v.len()))
            .unwrap();
        let mut other = Proofs::default();
        let (n, s) = other.own_number((6, a(999)), &key, &[], 1);
        assert_eq!(p.check(a(2), &n, 0, &s, |_| Certified::Yes), Checked::Holds);
        assert!(p.roots.contains_key(&(6, a(999))));
        assert!(!p.roots.contains_key(&young));
        assert_eq!(p.roots.len(), MAX_ROOTS);
    }
}
