//! The overlay: this peer's links (to seeds, from seed probes, to neighbours), which of them
//! are its neighbours, the dials under way, the rule that keeps one of two simultaneous links,
//! and the choice of neighbours at the join and when repairing after a loss.
//!
//! The rules:
//! - A peer dials up to `peer.max_neighbours` peers picked from the seeds' lists (randomly, or
//!   by preferential attachment); links are symmetric, so it also keeps those that dial it.
//! - Below the target (a loss, a short list at the join), it asks a seed for a fresh list and
//!   dials the difference, leaving out peers it lost recently (the seeds may still list them).
//! - Of two links between the same pair (both dialed at once), both ends keep the one dialed
//!   by the end with the smaller key, so they agree without talking (an impostor lacks the key
//!   and is refused before this rule, see `admit`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;

use crate::config::{Config, Selection};
use crate::node::ConnId;
use crate::peer::gossip::{forward_targets, Item};
use crate::peer::history::{short_id, CatchUp};
use crate::peer::selection;
use crate::wire::{PeerEntry, PublicKey};

/// The subnet an address counts against for `peer.max_per_subnet`: its /24 (IPv4) or /48
/// (IPv6).
pub fn subnet(addr: &SocketAddr) -> [u8; 7] {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => {
            let o = ip.octets();
            [4, o[0], o[1], o[2], 0, 0, 0]
        }
        std::net::IpAddr::V6(ip) => {
            let o = ip.octets();
            [6, o[0], o[1], o[2], o[3], o[4], o[5]]
        }
    }
}

/// A private or link-local address, exempt from the subnet caps.
pub fn is_private(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.is_private() || ip.is_link_local(),
        std::net::IpAddr::V6(ip) => {
            let first = ip.segments()[0];
            first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfe80
        }
    }
}

/// Why a neighbour link is refused at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A link from this address with another key is up: the newcomer is not that neighbour.
    WrongKey,
    /// `peer.max_inbound` reached.
    InboundFull,
    /// `peer.max_per_subnet` reached for the link's subnet.
    SubnetFull,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::WrongKey => "another key already holds this neighbour link",
            Refusal::InboundFull => "too many inbound neighbours (peer.max_inbound)",
            Refusal::SubnetFull => "too many neighbours from this subnet (peer.max_per_subnet)",
        })
    }
}

/// What a young link remembers (see `YOUNG_LINK`): the short ids of the items forwarded on
/// it, in order (the items themselves are in the history, which the peer sends them again
/// from). Eight bytes an item: a link holding its items cost 64 bytes an item, and in a
/// simulated network whose links are all young while the items spread, that was half the
/// memory. A peer whose history may not keep items for `YOUNG_LINK` (`gossip.history` or
/// `gossip.history_bytes` 0, `gossip.history_age` shorter) keeps the items themselves.
#[derive(Debug)]
struct Young {
    until: Instant,
    ids: Vec<u64>,
    items: Vec<Item>,
    /// Payload bytes of the items remembered.
    bytes: usize,
}

/// What went out on the losing one of two simultaneous links while it was young (see
/// `Young`), in the order it went out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resend {
    /// Short ids, to be sent again from the history.
    pub ids: Vec<u64>,
    /// Items kept whole (the history may not hold them).
    pub items: Vec<Item>,
}

/// Why the losing one of two simultaneous links is closed (sent in a `Reject`).
pub const DUPLICATE_LINK: &str = "duplicate link: keeping the one dialed by the smaller key";
/// A new neighbour link remembers the items forwarded on it for this long (at most
/// `YOUNG_LINK_ITEMS` of them, with `YOUNG_LINK_BYTES` of payload): if it turns out to be the
/// losing one of two simultaneous links, they are sent again on the link kept (those still in
/// the history), since the remote may have closed its end before reading them. Two
/// simultaneous links meet within a handshake (`pow.timeout`).
pub const YOUNG_LINK: Duration = Duration::from_secs(10);
pub const YOUNG_LINK_ITEMS: usize = 1024;
/// (This bounds the burst sent again on the link kept: items past it that a lost link's
/// remote missed come to it by catch-up.)
pub const YOUNG_LINK_BYTES: usize = 1 << 20;
/// Repeats of known gossip items may come this many times faster than new ones; and a link
/// sending new items this many times faster than `limits.gossip_per_second` is cut off (below
/// that, its excess is dropped).
const REPEAT_RATE_FACTOR: u32 = 4;
const ABUSE_RATE_FACTOR: u32 = 4;

/// What becomes of a gossip item a link sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Take,
    /// Over the link's rate: dropped here and counted, the link stays.
    Drop,
    /// Far over it: only a flooder sends this much; the link is cut.
    Cut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Our connection to a seed.
    Seed,
    Neighbour,
    /// A seed's one-off probe connection to us.
    SeedProbe,
}

/// A token bucket as [`crate::limits::RateLimiter`] keeps it, packed for the link table: the same rule and
/// the same arithmetic (rate and burst as whole numbers, the last refill in nanoseconds after
/// the link's birth), in 24 bytes instead of 40.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: u64,
    rate: u32,
    burst: u32,
}

impl Bucket {
    fn new(rate_per_s: u32, burst: u32) -> Self {
        Bucket {
            tokens: burst.max(1) as f64,
            last: 0,
            rate: rate_per_s,
            burst: burst.max(1),
        }
    }

    /// Takes one token at `now` (nanoseconds after the link's birth).
    fn allow(&mut self, now: u64) -> bool {
        let dt = Duration::from_nanos(now.saturating_sub(self.last)).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate as f64).min(self.burst as f64);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A link, its fields in a fixed order: what every frame reads (the flags, the address, the
/// bucket of repeats, most frames being repeats) first, then what a new item reads (its
/// buckets, the egress bucket of the links it goes out on, the young link's memory), then the
/// rest; the young link's memory and catch-up state are boxed.
#[derive(Debug)]
#[repr(C)]
pub struct Link {
    /// When the link was taken: the buckets count time from it.
    born: Instant,
    /// What this remote may send: new gossip items (first receipts), repeats, everything else.
    /// Repeats are cheap to drop, so they have a looser bound.
    repeat_rate: Bucket,
    /// Whether a frame has come in on it since the handshake.
    pub heard: bool,
    pub kind: LinkKind,
    /// Whether we dialed this connection (used to pick one of two simultaneous links).
    pub dialed: bool,
    pub addr: SocketAddr,
    /// New items past this are cut off (see `ABUSE_RATE_FACTOR`).
    abuse_rate: Bucket,
    gossip_rate: Bucket,
    /// What we may forward on this link: a little under what the remote accepts, so an honest
    /// peer's forwarding never trips its neighbour's limit, however much it was sent.
    egress_rate: Bucket,
    /// While the link is young: the items forwarded on it (see `YOUNG_LINK`).
    young: Option<Box<Young>>,
    control_rate: Bucket,
    /// Items this link sent over its rate and we dropped (for the log's sake).
    pub dropped: u64,
    /// The key the remote proved in the handshake.
    pub key: PublicKey,
    /// Catch-up with this neighbour (see `history`).
    pub catch_up: Box<CatchUp>,
}

impl Link {
    /// `now` in nanoseconds after the link's birth.
    fn age(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.born).as_nanos() as u64
    }

    /// May the remote send this control frame now?
    pub fn allow_control(&mut self, now: Instant) -> bool {
        let t = self.age(now);
        self.control_rate.allow(t)
    }

    /// What to do with a gossip item the remote sends now. New items and repeats are metered
    /// apart; an honest neighbour forwards each item once and within our rate (its egress
    /// limit), so only a flooder is dropped, and only a gross one is cut.
    pub fn admit_gossip(&mut self, new: bool, now: Instant) -> Admit {
        let t = self.age(now);
        if !new {
            return if self.repeat_rate.allow(t) {
                Admit::Take
            } else {
                Admit::Cut
            };
        }
        if !self.abuse_rate.allow(t) {
            Admit::Cut
        } else if !self.gossip_rate.allow(t) {
            Admit::Drop
        } else {
            Admit::Take
        }
    }

    /// May we forward one more new item on this link now?
    pub fn allow_send(&mut self, now: Instant) -> bool {
        let t = self.age(now);
        self.egress_rate.allow(t)
    }
}

/// What taking a new neighbour link did.
#[derive(Debug)]
pub enum Joined {
    /// A new neighbour.
    New,
    /// A second link to a neighbour: `loser` is to be closed (it is already forgotten), `kept`
    /// stays; `replaced` says the new link is the one kept. `resend` is what went out on the
    /// loser while it was young (see `Resend`), to forward again on `kept`.
    Duplicate {
        loser: ConnId,
        kept: ConnId,
        replaced: bool,
        resend: Resend,
    },
}

/// Its fields in a fixed order: the link table (read by every frame) first, then what
/// forwarding reads, then the rest.
#[derive(Debug)]
#[repr(C)]
pub struct Overlay {
    links: Links,
    neighbours: BTreeMap<SocketAddr, ConnId>,
    /// The neighbours' addresses, rebuilt when they change: the message list keeps a reference
    /// to it for each item forwarded (where the item went).
    current: Arc<[SocketAddr]>,
    /// Their connections, in the same order: with `current`, what `neighbours` walks (two
    /// short arrays, not the map's nodes; this runs for every item forwarded).
    current_conns: Vec<ConnId>,
    /// Links that are young (may hold forwarded items), so forwarding looks only at them.
    young: BTreeSet<ConnId>,
    /// Whether young links keep the items they forward, not only their ids (see `Young`).
    keep_items: bool,
    me: SocketAddr,
    /// This peer's key, for the duplicate-link rule (addresses decide while none is set).
    me_key: Option<PublicKey>,
    max_neighbours: usize,
    max_inbound: usize,
    max_per_subnet: usize,
    loopback_exempt: bool,
    selection: Selection,
    gossip_per_second: u32,
    /// Other frames a neighbour may send per second: `limits.control_per_second` and tree
    /// mode's allowance.
    control_per_second: u32,
    dialing: BTreeSet<SocketAddr>,
    /// Neighbours lost recently, not to be picked again while the seeds may still list them.
    lost: BTreeMap<SocketAddr, Instant>,
    lost_memory: Duration,
    /// A repair asked a seed for a list and waits for it.
    repairing: bool,
}

impl Overlay {
    pub fn new(me: SocketAddr, config: &Config) -> Self {
        let lv = &config.liveness;
        Overlay {
            me,
            me_key: None,
            max_neighbours: config.peer.max_neighbours,
            max_inbound: config.peer.max_inbound,
            max_per_subnet: config.peer.max_per_subnet,
            loopback_exempt: config.limits.loopback_exempt,
            selection: config.peer.selection,
            gossip_per_second: config.limits.gossip_per_second,
            // Tree mode's frames (announcements, grafts, prunes) come on top of the other
            // control frames, at most `FRAMES_PER_TIMEOUT` per graft timeout from an honest
            // neighbour (counted whatever our mode: a neighbour may run the other).
            control_per_second: config.limits.control_per_second.saturating_add(
                (f64::from(crate::peer::tree::FRAMES_PER_TIMEOUT)
                    / config.gossip.graft_timeout.as_secs_f64().max(1e-3))
                .ceil() as u32,
            ),
            links: Links::default(),
            neighbours: BTreeMap::new(),
            current: Arc::from([]),
            current_conns: Vec::new(),
            dialing: BTreeSet::new(),
            lost: BTreeMap::new(),
            // Long enough for the seeds to confirm a death and remove the peer.
            lost_memory: lv.interval * (lv.misses + 1) + lv.probe_timeout * 2,
            repairing: false,
            young: BTreeSet::new(),
            keep_items: config.gossip.history == 0
                || config.gossip.history_bytes == 0
                || config.gossip.history_age < YOUNG_LINK,
        }
    }

    /// Takes an admitted connection into the link table.
    /// May a new neighbour link from `addr` with `key` be taken? An existing neighbour link
    /// to `addr` under another key keeps its place; an accepted link counts against
    /// `peer.max_inbound`; any link against `peer.max_per_subnet` (other addresses only).
    pub fn admit(&self, addr: &SocketAddr, key: &PublicKey, dialed: bool) -> Result<(), Refusal> {
        if let Some(existing) = self.neighbours.get(addr).and_then(|c| self.links.get(c)) {
            if existing.key != *key {
                return Err(Refusal::WrongKey);
            }
            // A second link of the same neighbour: the duplicate-link rule decides.
            return Ok(());
        }
        if !dialed {
            let inbound = self
                .neighbours
                .values()
                .filter(|c| self.links.get(c).is_some_and(|l| !l.dialed))
                .count();
            if inbound >= self.max_inbound {
                return Err(Refusal::InboundFull);
            }
        }
        if self.subnet_full(addr) {
            return Err(Refusal::SubnetFull);
        }
        Ok(())
    }

    /// Are `peer.max_per_subnet` neighbours (or dials under way) in `addr`'s subnet already?
    /// Only public addresses count: a private network (10/8, 172.16/12, 192.168/16, fc00::/7,
    /// link-local) is the operator's own, and loopback is exempt while `loopback_exempt`.
    fn subnet_full(&self, addr: &SocketAddr) -> bool {
        if self.loopback_exempt && addr.ip().is_loopback() || is_private(addr) {
            return false;
        }
        let net = subnet(addr);
        let n = self
            .neighbours
            .keys()
            .chain(self.dialing.iter())
            .filter(|a| *a != addr && subnet(a) == net)
            .count();
        n >= self.max_per_subnet
    }

    /// Takes an admitted connection into the link table.
    #[allow(clippy::too_many_arguments)]
    pub fn add_link(
        &mut self,
        conn: ConnId,
        addr: SocketAddr,
        key: PublicKey,
        kind: LinkKind,
        dialed: bool,
        now: Instant,
    ) {
        let g = self.gossip_per_second;
        let c = self.control_per_second;
        self.links.insert(
            conn,
            Link {
                addr,
                key,
                kind,
                dialed,
                born: now,
                gossip_rate: Bucket::new(g, g.saturating_mul(2)),
                repeat_rate: Bucket::new(
                    g.saturating_mul(REPEAT_RATE_FACTOR),
                    g.saturating_mul(2 * REPEAT_RATE_FACTOR),
                ),
                control_rate: Bucket::new(c, c.saturating_mul(2)),
                abuse_rate: Bucket::new(
                    g.saturating_mul(ABUSE_RATE_FACTOR),
                    g.saturating_mul(2 * ABUSE_RATE_FACTOR),
                ),
                // 90% of the rate the remote takes, with the same bursts: the remote's bucket
                // refills faster than ours empties, so it always has room for what we send,
                // and a peer relaying a neighbour's items (itself shaped by this budget, with
                // some jitter on the way) has the burst to absorb the jitter.
                egress_rate: Bucket::new(g - g / 10, g.saturating_mul(2)),
                dropped: 0,
                young: (kind == LinkKind::Neighbour).then(|| {
                    Box::new(Young {
                        until: now + YOUNG_LINK,
                        ids: Vec::new(),
                        items: Vec::new(),
                        bytes: 0,
                    })
                }),
                heard: false,
                catch_up: Box::default(),
            },
        );
        if kind == LinkKind::Neighbour {
            self.young.insert(conn);
        }
    }

    pub fn link(&self, conn: ConnId) -> Option<&Link> {
        self.links.get(&conn)
    }

    pub fn link_mut(&mut self, conn: ConnId) -> Option<&mut Link> {
        self.links.get_mut(&conn)
    }

    /// A cache hint (see [`crate::hint`]): the lines of the link table and of `conn`'s link
    /// that a frame on it reads first. The simulator calls it a few events before the frame.
    pub fn prefetch_link(&self, conn: ConnId) {
        if let Some(link) = self.links.get(&conn) {
            crate::hint::prefetch_lines(link, 2);
        }
    }

    /// A cache hint: the link table's inline ids and where its links are.
    pub fn prefetch_table(&self) {
        crate::hint::prefetch_lines(self, std::mem::size_of::<Overlay>().div_ceil(64));
    }

    /// A cache hint for an item to forward: what `targets` reads of every link (its birth and
    /// egress bucket) and the neighbour list (addresses, which the message list will
    /// reference, and connections).
    pub fn prefetch_forwarding(&self) {
        for link in &self.links.links {
            crate::hint::prefetch(link);
            crate::hint::prefetch(&link.egress_rate);
        }
        let current = Arc::as_ptr(&self.current) as *const u8;
        crate::hint::prefetch_lines(current, (self.current.len() * 32).div_ceil(64));
        crate::hint::prefetch(self.current_conns.as_ptr());
    }

    pub fn remove_link(&mut self, conn: ConnId) -> Option<Link> {
        self.links.remove(&conn)
    }

    /// Is `conn` the link neighbour `addr` is known by?
    pub fn is_neighbour_link(&self, conn: ConnId, addr: &SocketAddr) -> bool {
        self.neighbours.get(addr) == Some(&conn)
    }

    /// Neighbours and their links, in address order.
    pub fn neighbours(&self) -> impl Iterator<Item = (SocketAddr, ConnId)> + '_ {
        self.current
            .iter()
            .copied()
            .zip(self.current_conns.iter().copied())
    }

    /// The link a neighbour is known by.
    pub fn conn_of(&self, addr: &SocketAddr) -> Option<ConnId> {
        self.neighbours.get(addr).copied()
    }

    pub fn neighbour_count(&self) -> usize {
        self.neighbours.len()
    }

    pub fn dials_pending(&self) -> bool {
        !self.dialing.is_empty()
    }

    /// This peer's key (the duplicate-link rule compares keys).
    pub fn set_key(&mut self, key: PublicKey) {
        self.me_key = Some(key);
    }

    /// A neighbour link (`conn`, just added with `add_link`) with the neighbour at `addr`,
    /// which proved `key`, is up. Applies the duplicate-link rule if `addr` is a neighbour
    /// already: the link dialed by the end with the smaller key is kept.
    pub fn join(
        &mut self,
        conn: ConnId,
        addr: SocketAddr,
        key: &PublicKey,
        dialed: bool,
    ) -> Joined {
        self.dialing.remove(&addr);
        let Some(&existing) = self.neighbours.get(&addr) else {
            self.neighbours.insert(addr, conn);
            self.changed();
            return Joined::New;
        };
        let mine_smaller = match &self.me_key {
            Some(mine) => mine < key,
            None => self.me < addr,
        };
        let replaced = mine_smaller == dialed;
        let (loser, kept) = if replaced {
            (existing, conn)
        } else {
            (conn, existing)
        };
        let resend = self
            .links
            .remove(&loser)
            .and_then(|l| l.young)
            .map(|y| Resend {
                ids: y.ids,
                items: y.items,
            })
            .unwrap_or_default();
        if replaced {
            self.neighbours.insert(addr, conn);
            self.conns_changed();
        }
        Joined::Duplicate {
            loser,
            kept,
            replaced,
            resend,
        }
    }

    /// Neighbour `addr` is lost: forgets it and its link and keeps it out of repairs for a
    /// while. Its link, if it was a neighbour.
    pub fn drop_neighbour(&mut self, addr: &SocketAddr, now: Instant) -> Option<ConnId> {
        let conn = self.neighbours.remove(addr)?;
        self.changed();
        self.links.remove(&conn);
        self.lost.insert(*addr, now);
        Some(conn)
    }

    fn changed(&mut self) {
        self.current = self.neighbours.keys().copied().collect();
        self.conns_changed();
    }

    /// A neighbour's link changed (the addresses did not).
    fn conns_changed(&mut self) {
        self.current_conns.clear();
        self.current_conns.extend(self.neighbours.values().copied());
    }

    /// Forgets a neighbour without holding it against anyone (we are leaving).
    pub fn forget_neighbour(&mut self, addr: &SocketAddr, conn: ConnId) {
        self.neighbours.remove(addr);
        self.changed();
        self.links.remove(&conn);
    }

    /// A dial to a would-be neighbour failed.
    pub fn dial_failed(&mut self, addr: SocketAddr, now: Instant) {
        self.dialing.remove(&addr);
        self.lost.insert(addr, now);
    }

    /// The join's choice of neighbours from the seeds' union: the peers to dial. `certified`
    /// checks an entry's certificate; an entry is checked only once chosen (a peer dials a few
    /// of the hundreds listed), and one that fails is replaced by another choice.
    pub fn pick_initial(
        &mut self,
        union: &[PeerEntry],
        rng: &mut StdRng,
        certified: &mut dyn FnMut(&PeerEntry) -> bool,
    ) -> Vec<(SocketAddr, PublicKey)> {
        let chosen = self.choose_certified(union.to_vec(), self.max_neighbours, rng, certified);
        let dial = self.start_dials(chosen);
        with_keys(dial, union)
    }

    /// Up to `want` candidates chosen by the selection rule among those open to us, each
    /// certified; a chosen entry that is not is dropped and the choice made again for the rest.
    fn choose_certified(
        &self,
        mut pool: Vec<PeerEntry>,
        want: usize,
        rng: &mut StdRng,
        certified: &mut dyn FnMut(&PeerEntry) -> bool,
    ) -> Vec<SocketAddr> {
        let mut picked = Vec::with_capacity(want);
        while picked.len() < want && !pool.is_empty() {
            let open = self.open_to_us(&pool);
            let chosen = selection::select(&open, want - picked.len(), self.selection, rng);
            if chosen.is_empty() {
                break;
            }
            for addr in chosen {
                let Some(i) = pool.iter().position(|p| p.addr == addr) else {
                    continue;
                };
                let entry = pool.swap_remove(i);
                if certified(&entry) {
                    picked.push(addr);
                }
            }
            // `select` sees candidates in address order whatever the removals did.
            pool.sort_by_key(|p| p.addr);
        }
        picked
    }

    /// The candidates that can still take an inbound link by the degree the seeds report: a
    /// peer has at most `max_neighbours` links of its own choosing, so one with `max_neighbours
    /// + max_inbound` links (or more) refuses newcomers. All of them if none is left.
    fn open_to_us(&self, candidates: &[PeerEntry]) -> Vec<PeerEntry> {
        let full = self.max_neighbours + self.max_inbound;
        let open: Vec<PeerEntry> = candidates
            .iter()
            .filter(|p| (p.degree as usize) < full)
            .cloned()
            .collect();
        if open.is_empty() {
            candidates.to_vec()
        } else {
            open
        }
    }

    /// The chosen peers to dial, in order, leaving out neighbours and any that would take a
    /// subnet past `peer.max_per_subnet`; they count as dials under way from now.
    fn start_dials(&mut self, chosen: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let mut dial = Vec::with_capacity(chosen.len());
        for a in chosen {
            if self.neighbours.contains_key(&a) || self.subnet_full(&a) {
                continue;
            }
            self.dialing.insert(a);
            dial.push(a);
        }
        dial
    }

    /// Short of neighbours, counting dials under way, and no repair waiting for a list?
    pub fn wants_repair(&self) -> bool {
        !self.repairing && self.neighbours.len() + self.dialing.len() < self.max_neighbours
    }

    pub fn set_repairing(&mut self, on: bool) {
        self.repairing = on;
    }

    pub fn is_repairing(&self) -> bool {
        self.repairing
    }

    /// A repair's list arrived: the peers to dial to get back to the target.
    pub fn pick_repair(
        &mut self,
        list: Vec<PeerEntry>,
        now: Instant,
        rng: &mut StdRng,
        certified: &mut dyn FnMut(&PeerEntry) -> bool,
    ) -> Vec<(SocketAddr, PublicKey)> {
        self.repairing = false;
        let memory = self.lost_memory;
        self.lost
            .retain(|_, t| now.saturating_duration_since(*t) < memory);
        let candidates: Vec<PeerEntry> = list
            .into_iter()
            .filter(|p| {
                p.addr != self.me
                    && !self.neighbours.contains_key(&p.addr)
                    && !self.dialing.contains(&p.addr)
                    && !self.lost.contains_key(&p.addr)
            })
            .collect();
        let want = self
            .max_neighbours
            .saturating_sub(self.neighbours.len() + self.dialing.len());
        let dial = self.choose_certified(candidates.clone(), want, rng, certified);
        let dial = self.start_dials(dial);
        with_keys(dial, &candidates)
    }

    /// Where an item goes: the links of every neighbour except the one it came from (the
    /// gossip rule) that have room in their egress rate, the neighbours it was chosen from,
    /// and how many links it was held back from for their rate.
    pub fn targets(
        &mut self,
        from: Option<SocketAddr>,
        eager: impl Fn(&SocketAddr) -> bool,
        now: Instant,
    ) -> (Vec<ConnId>, &Arc<[SocketAddr]>, u64) {
        let mut conns = forward_targets(self.neighbours().filter(|(a, _)| eager(a)), from);
        let before = conns.len();
        let links = &mut self.links;
        conns.retain(|c| links.get_mut(c).is_none_or(|l| l.allow_send(now)));
        let held = (before - conns.len()) as u64;
        (conns, &self.current, held)
    }

    /// Links still young remember `item` as forwarded on them.
    pub fn remember(&mut self, conns: &[ConnId], item: &Item) {
        if self.young.is_empty() {
            return;
        }
        for conn in conns.iter().filter(|c| self.young.contains(c)) {
            if let Some(y) = self.links.get_mut(conn).and_then(|l| l.young.as_mut()) {
                if y.ids.len() + y.items.len() < YOUNG_LINK_ITEMS
                    && y.bytes + item.payload.len() <= YOUNG_LINK_BYTES
                {
                    y.bytes += item.payload.len();
                    if self.keep_items {
                        y.items.push(item.clone());
                    } else {
                        y.ids.push(short_id(&item.id));
                    }
                }
            }
        }
    }

    /// Links past their first seconds stop remembering what they forwarded.
    pub fn expire_young(&mut self, now: Instant) {
        let links = &mut self.links;
        self.young.retain(|conn| {
            let Some(link) = links.get_mut(conn) else {
                return false;
            };
            if link.young.as_ref().is_some_and(|y| now >= y.until) {
                link.young = None;
            }
            link.young.is_some()
        });
    }
}

/// The link table: a handful of links (neighbours, seeds, probes), looked up by connection on
/// every frame received and forwarded. The first `INLINE_LINKS` connection ids sit in the table
/// itself (so in the peer's own memory, fetched with it) and the links apart, in one array in
/// the same order: a lookup scans a cache line or two of ids and then reads the link, instead
/// of walking a tree whose nodes hold the links themselves (a 392-byte `Link` each). Nothing
/// depends on its order: it is never iterated.
#[derive(Debug, Default)]
struct Links {
    /// The ids of `links[..INLINE_LINKS]`; `more` those of the rest.
    first: [ConnId; INLINE_LINKS],
    more: Vec<ConnId>,
    links: Vec<Link>,
}

/// Links whose ids are kept inline: a peer has its neighbours (about twice
/// `peer.max_neighbours`) and a link to each seed.
const INLINE_LINKS: usize = 16;

impl Links {
    fn id(&self, i: usize) -> ConnId {
        if i < INLINE_LINKS {
            self.first[i]
        } else {
            self.more[i - INLINE_LINKS]
        }
    }

    fn set_id(&mut self, i: usize, conn: ConnId) {
        if i < INLINE_LINKS {
            self.first[i] = conn;
        } else {
            self.more[i - INLINE_LINKS] = conn;
        }
    }

    fn position(&self, conn: &ConnId) -> Option<usize> {
        let n = self.links.len();
        self.first[..n.min(INLINE_LINKS)]
            .iter()
            .position(|c| c == conn)
            .or_else(|| {
                self.more
                    .iter()
                    .position(|c| c == conn)
                    .map(|i| i + INLINE_LINKS)
            })
    }

    fn get(&self, conn: &ConnId) -> Option<&Link> {
        self.position(conn).map(|i| &self.links[i])
    }

    fn get_mut(&mut self, conn: &ConnId) -> Option<&mut Link> {
        self.position(conn).map(|i| &mut self.links[i])
    }

    fn insert(&mut self, conn: ConnId, link: Link) {
        match self.position(&conn) {
            Some(i) => self.links[i] = link,
            None => {
                let n = self.links.len();
                if n < INLINE_LINKS {
                    self.first[n] = conn;
                } else {
                    self.more.push(conn);
                }
                self.links.push(link);
            }
        }
    }

    /// Takes a link out; the last one takes its place.
    fn remove(&mut self, conn: &ConnId) -> Option<Link> {
        let i = self.position(conn)?;
        let last = self.links.len() - 1;
        self.set_id(i, self.id(last));
        if last >= INLINE_LINKS {
            self.more.pop();
        }
        Some(self.links.swap_remove(i))
    }
}

/// The chosen addresses with the keys their list entries name (a neighbour must show it).
fn with_keys(chosen: Vec<SocketAddr>, from: &[PeerEntry]) -> Vec<(SocketAddr, PublicKey)> {
    let keys: BTreeMap<SocketAddr, PublicKey> = from.iter().map(|p| (p.addr, p.key)).collect();
    chosen
        .into_iter()
        .filter_map(|a| keys.get(&a).map(|k| (a, *k)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn overlay(me: u16) -> Overlay {
        let c = Config::parse("seeds: [\"127.0.0.1:9001\"]\n").unwrap();
        Overlay::new(a(me), &c)
    }

    #[test]
    fn the_link_table_finds_every_link_past_its_inline_ids_and_after_removals() {
        let now = Instant::now();
        let mut o = overlay(9000);
        let port = |c: ConnId| 10_000 + c as u16;
        let mut live: Vec<ConnId> = Vec::new();
        for c in 1..=40 {
            o.add_link(
                c * 7,
                a(port(c * 7)),
                [0; 32],
                LinkKind::Neighbour,
                true,
                now,
            );
            live.push(c * 7);
        }
        // Out of the middle, the inline part and the end, in turn.
        for c in [14, 280, 7, 119, 273, 63, 112] {
            assert_eq!(o.remove_link(c).map(|l| l.addr), Some(a(port(c))));
            assert!(o.remove_link(c).is_none());
            live.retain(|&l| l != c);
        }
        o.add_link(1000, a(port(1000)), [0; 32], LinkKind::Seed, true, now);
        live.push(1000);
        for c in 0..=1001 {
            let found = o.link(c).map(|l| l.addr);
            assert_eq!(found, live.contains(&c).then(|| a(port(c))), "conn {c}");
        }
    }

    #[test]
    fn of_two_links_both_ends_keep_the_one_the_smaller_address_dialed() {
        let now = Instant::now();
        // 9100 < 9200. At 9100: the link it dialed (conn 2) wins over the accepted one (1).
        let mut small = overlay(9100);
        small.add_link(1, a(9200), [0; 32], LinkKind::Neighbour, false, now);
        assert!(matches!(
            small.join(1, a(9200), &[0; 32], false),
            Joined::New
        ));
        small.add_link(2, a(9200), [0; 32], LinkKind::Neighbour, true, now);
        let Joined::Duplicate {
            loser,
            kept,
            replaced,
            ..
        } = small.join(2, a(9200), &[0; 32], true)
        else {
            panic!("a duplicate")
        };
        assert_eq!((loser, kept, replaced), (1, 2, true));
        // At 9200 the same pair of links: the one it accepted (from 9100) wins.
        let mut big = overlay(9200);
        big.add_link(5, a(9100), [0; 32], LinkKind::Neighbour, true, now);
        big.join(5, a(9100), &[0; 32], true);
        big.add_link(6, a(9100), [0; 32], LinkKind::Neighbour, false, now);
        let Joined::Duplicate {
            loser,
            kept,
            replaced,
            ..
        } = big.join(6, a(9100), &[0; 32], false)
        else {
            panic!("a duplicate")
        };
        assert_eq!((loser, kept, replaced), (5, 6, true));
        assert!(big.link(5).is_none() && big.is_neighbour_link(6, &a(9100)));
    }

    #[test]
    fn with_keys_set_both_ends_keep_the_link_the_smaller_key_dialed() {
        let now = Instant::now();
        // 9100 < 9200 by address, but 9200's key is the smaller: its dial wins at both ends.
        let (k100, k200) = ([9; 32], [1; 32]);
        let mut small = overlay(9100);
        small.set_key(k100);
        small.add_link(1, a(9200), k200, LinkKind::Neighbour, true, now);
        small.join(1, a(9200), &k200, true);
        small.add_link(2, a(9200), k200, LinkKind::Neighbour, false, now);
        let Joined::Duplicate { kept, loser, .. } = small.join(2, a(9200), &k200, false) else {
            panic!("a duplicate")
        };
        assert_eq!((kept, loser), (2, 1), "at 9100: the link 9200 dialed");
        let mut big = overlay(9200);
        big.set_key(k200);
        big.add_link(5, a(9100), k100, LinkKind::Neighbour, false, now);
        big.join(5, a(9100), &k100, false);
        big.add_link(6, a(9100), k100, LinkKind::Neighbour, true, now);
        let Joined::Duplicate { kept, loser, .. } = big.join(6, a(9100), &k100, true) else {
            panic!("a duplicate")
        };
        assert_eq!((kept, loser), (6, 5), "at 9200: the link it dialed");
    }

    #[test]
    fn a_young_link_remembers_what_it_forwarded_within_a_byte_bound() {
        let now = Instant::now();
        let mut o = overlay(9100);
        o.add_link(1, a(9200), [0; 32], LinkKind::Neighbour, false, now);
        o.join(1, a(9200), &[0; 32], false);
        // 40 items of 64 KiB: only what fits in YOUNG_LINK_BYTES is kept.
        for i in 0..40u8 {
            let item = Item::new(0, 0, 0, vec![i; 64 * 1024].into());
            o.remember(&[1], &item);
        }
        o.add_link(2, a(9200), [0; 32], LinkKind::Neighbour, true, now);
        let Joined::Duplicate { resend, .. } = o.join(2, a(9200), &[0; 32], true) else {
            panic!("a duplicate")
        };
        assert!(resend.items.is_empty(), "the history keeps them");
        let resend = resend.ids;
        assert_eq!(resend.len(), YOUNG_LINK_BYTES / (64 * 1024));
        assert!(resend
            .iter()
            .enumerate()
            .all(|(i, s)| *s == short_id(&Item::new(0, 0, 0, vec![i as u8; 64 * 1024].into()).id)));
    }

    #[test]
    fn a_repair_skips_neighbours_dials_and_peers_lost_recently() {
        let now = Instant::now();
        let mut o = overlay(9100);
        o.add_link(1, a(9101), [0; 32], LinkKind::Neighbour, true, now);
        o.join(1, a(9101), &[0; 32], true);
        o.add_link(2, a(9102), [0; 32], LinkKind::Neighbour, true, now);
        o.join(2, a(9102), &[0; 32], true);
        assert_eq!(o.drop_neighbour(&a(9102), now), Some(2));
        assert!(o.wants_repair());
        o.set_repairing(true);
        assert!(!o.wants_repair(), "one repair at a time");
        let list = (9100..9106).map(|p| entry(a(p), [p as u8; 32])).collect();
        let mut rng = StdRng::seed_from_u64(1);
        let mut dial = o.pick_repair(list, now, &mut rng, &mut |_| true);
        dial.sort();
        let want: Vec<(SocketAddr, PublicKey)> =
            [9103, 9104, 9105].map(|p| (a(p), [p as u8; 32])).into();
        assert_eq!(dial, want, "each with the key its list entry names");
        assert!(!o.wants_repair(), "at the target, counting dials");
    }

    #[test]
    fn neighbours_are_admitted_by_key_inbound_cap_and_subnet() {
        let now = Instant::now();
        let c = Config::parse(
            "seeds: [\"127.0.0.1:9001\"]\npeer: { max_neighbours: 2, max_inbound: 2, max_per_subnet: 2 }\nlimits: { loopback_exempt: false }\n",
        )
        .unwrap();
        let mut o = Overlay::new(a(9100), &c);
        let link = |o: &mut Overlay, conn, at: SocketAddr, key, dialed| {
            o.admit(&at, &key, dialed)?;
            o.add_link(conn, at, key, LinkKind::Neighbour, dialed, now);
            o.join(conn, at, &[0; 32], dialed);
            Ok::<(), Refusal>(())
        };
        let far = |n: u8| SocketAddr::from(([192, 0, n, 1], 9000));
        assert_eq!(link(&mut o, 1, a(9101), [1; 32], false), Ok(()));
        // Another key at a neighbour's address does not take its place; its own key may
        // (the duplicate-link rule then keeps one).
        assert_eq!(o.admit(&a(9101), &[2; 32], false), Err(Refusal::WrongKey));
        assert_eq!(o.admit(&a(9101), &[1; 32], true), Ok(()));
        // Two from 127.0.0.0/24 already with a third: the subnet is full for a new address.
        assert_eq!(link(&mut o, 2, a(9102), [3; 32], true), Ok(()));
        assert_eq!(o.admit(&a(9103), &[4; 32], true), Err(Refusal::SubnetFull));
        // Inbound: one so far (9101), cap 2.
        assert_eq!(link(&mut o, 3, far(1), [5; 32], false), Ok(()));
        assert_eq!(o.admit(&far(2), &[6; 32], false), Err(Refusal::InboundFull));
        assert_eq!(
            o.admit(&far(2), &[6; 32], true),
            Ok(()),
            "our own dials are not capped"
        );
        // Choosing neighbours leaves out a full subnet.
        let list: Vec<PeerEntry> = [a(9104), far(3)]
            .into_iter()
            .map(|addr| entry(addr, [7; 32]))
            .collect();
        let mut rng = StdRng::seed_from_u64(1);
        let picked: Vec<SocketAddr> = o
            .pick_initial(&list, &mut rng, &mut |_| true)
            .into_iter()
            .map(|p| p.0)
            .collect();
        assert_eq!(picked, vec![far(3)]);
    }

    fn entry(addr: SocketAddr, key: PublicKey) -> PeerEntry {
        PeerEntry {
            addr,
            incarnation: 1,
            key,
            degree: 0,
            signatures: Vec::new(),
        }
    }

    #[test]
    fn entries_are_checked_once_chosen_and_a_failing_one_is_replaced_by_another_choice() {
        let c =
            Config::parse("seeds: [\"127.0.0.1:9001\"]\npeer: { max_neighbours: 3 }\n").unwrap();
        let mut o = Overlay::new(a(9100), &c);
        // Keys 1..=10; the odd ones do not carry a valid certificate.
        let list: Vec<PeerEntry> = (1..=10u16)
            .map(|p| entry(a(9100 + p), [p as u8; 32]))
            .collect();
        let mut checked = Vec::new();
        let mut rng = StdRng::seed_from_u64(7);
        let picked = o.pick_initial(&list, &mut rng, &mut |e| {
            checked.push(e.addr);
            e.key[0] % 2 == 0
        });
        assert_eq!(picked.len(), 3, "three certified neighbours: {picked:?}");
        assert!(picked.iter().all(|(_, k)| k[0] % 2 == 0), "{picked:?}");
        let mut unique = checked.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            checked.len(),
            "each entry checked at most once"
        );
        assert!(checked.len() < list.len() || picked.len() == 3);
        // Nothing certified: nobody is dialed.
        let mut o = Overlay::new(a(9100), &c);
        assert!(o.pick_initial(&list, &mut rng, &mut |_| false).is_empty());
    }
}
