//! Neighbour selection: the union of the seeds' peer lists, and picking from it at random or
//! by preferential attachment (power law). Pure, with the RNG passed in.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::config::Selection;
use crate::wire::PeerEntry;

/// Union of several peer lists without `me`, one entry per address (the highest degree any
/// seed reported), sorted by address. Honest seeds agree on an address's member (it changes
/// hands only by a majority's certificate), so the first list's entry stands, unless another
/// list names a different member there: then `certified` decides (checked only on such a
/// conflict), so a lying seed cannot hide a real member behind a forged entry.
pub fn union<'a>(
    lists: impl IntoIterator<Item = &'a [PeerEntry]>,
    me: &SocketAddr,
    mut certified: impl FnMut(&PeerEntry) -> bool,
) -> Vec<PeerEntry> {
    let mut all: BTreeMap<SocketAddr, PeerEntry> = BTreeMap::new();
    for list in lists {
        for p in list {
            if p.addr == *me {
                continue;
            }
            let e = all.entry(p.addr).or_insert_with(|| p.clone());
            if e.member() != p.member() && !certified(e) && certified(p) {
                let degree = e.degree;
                *e = p.clone();
                e.degree = e.degree.max(degree);
            }
            e.degree = e.degree.max(p.degree);
        }
    }
    all.into_values().collect()
}

/// Picks up to `k` distinct peers. `PowerLaw` draws each pick with probability proportional to
/// degree + 1 (preferential attachment; the +1 lets peers without neighbours be chosen).
pub fn select(
    candidates: &[PeerEntry],
    k: usize,
    how: Selection,
    rng: &mut impl Rng,
) -> Vec<SocketAddr> {
    match how {
        Selection::Random => candidates.choose_multiple(rng, k).map(|p| p.addr).collect(),
        Selection::PowerLaw => {
            let mut pool: Vec<&PeerEntry> = candidates.iter().collect();
            let mut chosen = Vec::with_capacity(k.min(pool.len()));
            while chosen.len() < k && !pool.is_empty() {
                let total: u64 = pool.iter().map(|p| p.degree as u64 + 1).sum();
                let mut x = rng.gen_range(0..total);
                let mut idx = pool.len() - 1;
                for (i, p) in pool.iter().enumerate() {
                    let w = p.degree as u64 + 1;
                    if x < w {
                        idx = i;
                        break;
                    }
                    x -= w;
                }
                chosen.push(pool.swap_remove(idx).addr);
            }
            chosen
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn e(p: u16, degree: u16) -> PeerEntry {
        PeerEntry {
            addr: SocketAddr::from(([127, 0, 0, 1], p)),
            incarnation: 1,
            key: [p as u8; 32],
            degree,
            signatures: Vec::new(),
        }
    }

    #[test]
    fn union_dedups_and_drops_self() {
        let me = e(1, 0).addr;
        let a = vec![e(1, 0), e(2, 1), e(3, 0)];
        let b = vec![e(3, 5), e(4, 0)];
        let u = union([a.as_slice(), b.as_slice()], &me, |_| true);
        assert_eq!(u, vec![e(2, 1), e(3, 5), e(4, 0)]);
    }

    #[test]
    fn a_forged_entry_does_not_hide_the_certified_member_at_its_address() {
        let me = e(1, 0).addr;
        let mut forged = e(2, 9);
        forged.key = [0xee; 32];
        let liar = vec![forged.clone(), e(3, 0)];
        let honest = vec![e(2, 1)];
        let certified = |p: &PeerEntry| p.key != [0xee; 32];
        let u = union([liar.as_slice(), honest.as_slice()], &me, certified);
        assert_eq!(u[0].key, e(2, 0).key, "the certified member stands");
        // Lists that agree are never checked.
        let u = union([honest.as_slice(), honest.as_slice()], &me, |_| {
            panic!("checked")
        });
        assert_eq!(u, honest);
    }

    #[test]
    fn random_selection_is_distinct_and_bounded() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let c: Vec<_> = (10..30).map(|p| e(p, 0)).collect();
        for k in [0, 1, 4, 20, 50] {
            let s = select(&c, k, Selection::Random, &mut rng);
            assert_eq!(s.len(), k.min(20));
            let mut d = s.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), s.len());
        }
    }

    #[test]
    fn power_law_prefers_well_connected_peers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // One hub with degree 30 among 10 loners.
        let mut c: Vec<_> = (10..20).map(|p| e(p, 0)).collect();
        c.push(e(99, 30));
        let hub = e(99, 0).addr;
        let trials = 2000;
        let hits = (0..trials)
            .filter(|_| select(&c, 1, Selection::PowerLaw, &mut rng)[0] == hub)
            .count();
        // Expected share 31/41 ≈ 0.76; uniform would be 1/11 ≈ 0.09.
        assert!(hits > trials * 6 / 10, "{hits}");
        let s = select(&c, 11, Selection::PowerLaw, &mut rng);
        assert_eq!(s.len(), 11);
    }
}
