//! `gossip.mode: tree`: Plumtree's push along a spanning tree that forms itself.
//!
//! Every neighbour starts *eager*: new items are pushed to it whole. A neighbour that sends an
//! item we already have is on a redundant path: we make it *lazy* and tell it so (`Prune`);
//! from then on it gets only the ids of new items (`IHave`, gathered for half a
//! `gossip.graft_timeout` and sent together). An id announced by a lazy neighbour that does not
//! arrive whole within `gossip.graft_timeout` is asked for (`Graft`), which also makes that
//! neighbour eager again: the tree repairs itself where a push path broke (a crash, a cut
//! link). A neighbour that pushes us a new item, or grafts, is eager.
//!
//! Grafts due within a quarter timeout of each other go in one frame, and a neighbour is
//! told `Prune` at most once a timeout, so an honest neighbour's tree frames stay within
//! [`FRAMES_PER_TIMEOUT`] per timeout.
//!
//! Only the lazy set is kept: every other neighbour is eager, so a new link is eager on both
//! sides and a lost one needs no bookkeeping beyond forgetting it. What does not arrive even by
//! grafting is left to catch-up (`history`).
//!
//! `gossip.mode: rooted` keeps the announcements and grafts but not the shaping: items are
//! pushed along a tree that hangs from one root, each peer by its neighbour nearest to it
//! (`rooted`), and never pruned. A tree shaped by which copy came first is cut when items from
//! different origins cross (each prunes a different link of the same cycle) and deepens as
//! repairs join it where they can; one shaped by distances to a root is neither. Each id is
//! announced to one neighbour off the tree only (to all of them, ids would cost what
//! flooding's duplicates cost), the same one for all the ids gathered together (one frame),
//! and grafted after ten times the timeout (pushes are never cut,
//! so an id announced before its push came is late far more often than lost). An item that
//! reached a peer by catch-up is pushed to its children and announced to its parent, which
//! grafts it at once if it lacks it. A new child is told at once the ids received in the last
//! moments (`backfill`): what was pushed along the tree before its link was in it; it grafts
//! what it lacks once its old parent, if still linked, has released it (sent the last push
//! it had queued for it).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::peer::rooted::{Place, Rooted, Tell, REFRESH_TIMEOUTS};

/// The most ids in one `IHave` or `Graft`.
pub const MAX_IDS: usize = 4096;
/// The most ids announced but not yet received that a peer waits for at once; announcements
/// past it are ignored (catch-up still finds the items).
pub const MAX_MISSING: usize = 16_384;
/// Tree frames (`IHave`, `Graft`, `Prune`, `TreeRoot`) an honest neighbour sends per
/// `graft_timeout` at most: announcements every half timeout, grafts at most every quarter, a
/// prune per graft (and a place in the rooted tree when it changes, rarely but in bursts,
/// which the link's burst allowance takes).
/// The control rate of a link allows this many on top of `limits.control_per_second`.
pub const FRAMES_PER_TIMEOUT: u32 = 8;

#[derive(Debug)]
struct Missing {
    /// When to graft the next announcer.
    due: Instant,
    /// Neighbours that announced it, in order, not yet asked.
    announcers: VecDeque<SocketAddr>,
}

#[derive(Debug)]
pub struct Tree {
    graft_timeout: Duration,
    lazy: BTreeSet<SocketAddr>,
    missing: BTreeMap<[u8; 32], Missing>,
    /// Every `missing` id by its `due`: the next graft's wake-up, and the ids due at a
    /// wake-up, without a walk of `missing`, which a peer seconds behind fills with
    /// thousands of ids announced before their pushes came (walked once per delivery, that
    /// cost grew with the lag and made it fall further behind).
    dues: BTreeSet<(Instant, [u8; 32])>,
    /// Ids waiting to be announced to each lazy neighbour, gathered for half a
    /// `graft_timeout`.
    announce: Gathered,
    /// Rooted shape: the same for the neighbours off the backbone, gathered for
    /// [`ROOTED_ANNOUNCE_WAIT`] `graft_timeout`s (see there).
    announce_off: Gathered,
    /// Rooted shape: the neighbour off the backbone that the ids gathered now go to, drawn
    /// with the first of them; drawn again once they are sent.
    off_pick: Option<SocketAddr>,
    /// The wake-ups asked for and not yet come (a few at most): one is asked for only when
    /// none of these comes soon enough. Timers cannot be taken back, so one overtaken by an
    /// earlier one stays here until it fires; were it forgotten, the tree would ask again for
    /// the same instant, and each of the two would ask for the next wake-up when it came, and
    /// so on: every such overtaking used to add a timer to every wake-up for good (10.9 M of
    /// the 35.5 M events of `sim --peers 10000 --config C` in rooted mode were these).
    wakes: Vec<Instant>,
    /// Spreads the first graft of each id over a second `graft_timeout` (see `first_due`).
    salt: u64,
    /// When each neighbour was last sent `Prune`.
    pruned: BTreeMap<SocketAddr, Instant>,
    /// `Prune` frames sent and ids grafted so far (for `stats`).
    pub prunes_sent: u64,
    pub ids_grafted: u64,
    /// `gossip.mode: rooted`.
    rooted_mode: bool,
    /// The rooted shape, from the first neighbour link on (see `rooted`).
    rooted: Option<Rooted>,
    /// Rooted shape: the backbone as last seen, and the announcements owed to the
    /// neighbours that joined it since (see `backfill`).
    backbone: Vec<SocketAddr>,
    backfills: Vec<(SocketAddr, Vec<[u8; 32]>)>,
    /// Rooted shape: the neighbours whose links are up; the parent as last seen, and when
    /// this peer last took a parent while it had none or its old one had gone (see
    /// `backfill`).
    linked: BTreeSet<SocketAddr>,
    parent: Option<SocketAddr>,
    orphaned_at: Option<Instant>,
    /// Rooted shape: the old parent, still linked, whose pushes may still be on their way
    /// since this peer left it, until it says it sent the last (`released`).
    awaiting: Option<SocketAddr>,
    /// Rooted shape: the ids of the latest first receipts, when and from whom each came
    /// (at most [`MAX_IDS`], none older than [`BACKFILL_TIMEOUTS`] `graft_timeout`s).
    recent: VecDeque<(Instant, [u8; 32], Option<SocketAddr>)>,
}

/// A neighbour that joins this peer's backbone is told the ids this peer received in the last
/// this many `graft_timeout`s (see `Tree::backfill`).
pub const BACKFILL_TIMEOUTS: u32 = 2;
/// A parent taken this many `graft_timeout`s ago or less, when this peer had none or its old
/// one had gone, is new for the backfill's purposes.
pub const NEW_PARENT_TIMEOUTS: u32 = 10;

/// The rooted shape waits this many `graft_timeout`s before grafting (see `graft_wait`).
pub const ROOTED_GRAFT_WAIT: u32 = 10;

/// The rooted shape gathers the ids it announces off the backbone for this many
/// `graft_timeout`s (those to a backbone neighbour, after a catch-up, for half of one, as in
/// tree mode). They are the safety net for a push lost on its way, grafted only
/// [`ROOTED_GRAFT_WAIT`] timeouts after they arrive, so half a second more costs a repair
/// little; gathered for half a timeout instead, each of a peer's neighbours off the backbone
/// took a frame of a few ids 20 times a second whatever the load: under load most of a peer's
/// reads and sends, and a fifth of the peers' CPU at 1,000 items a second (N = 100).
pub const ROOTED_ANNOUNCE_WAIT: u32 = 5;

/// Ids gathered to be announced, per neighbour, and since when the oldest waits.
#[derive(Debug, Default)]
struct Gathered {
    /// In address order; one entry per neighbour at most, so a handful: found by a binary
    /// search of a few words (this runs for every item received) rather than a tree's walk.
    ids: Vec<(SocketAddr, Vec<[u8; 32]>)>,
    since: Option<Instant>,
}

impl Gathered {
    fn push(&mut self, to: SocketAddr, id: [u8; 32], now: Instant) {
        match self.ids.binary_search_by_key(&to, |(n, _)| *n) {
            Ok(k) => self.ids[k].1.push(id),
            Err(k) => self.ids.insert(k, (to, vec![id])),
        }
        self.since.get_or_insert(now);
    }

    /// Ids for `to` are dropped (its link went); with nothing left, nothing is due.
    fn forget(&mut self, to: &SocketAddr) {
        if let Ok(k) = self.ids.binary_search_by_key(to, |(n, _)| *n) {
            self.ids.remove(k);
        }
        if self.ids.is_empty() {
            self.since = None;
        }
    }

    /// When they are due, gathered for `wait`.
    fn due(&self, wait: Duration) -> Option<Instant> {
        self.since.map(|at| at + wait)
    }

    /// If due at `now`, all of them, as `IHave` frames (at most `MAX_IDS` ids each).
    fn take_due(
        &mut self,
        now: Instant,
        wait: Duration,
        ihave: &mut Vec<(SocketAddr, Vec<[u8; 32]>)>,
    ) {
        if self.due(wait).is_none_or(|at| now < at) {
            return;
        }
        self.since = None;
        for (n, ids) in std::mem::take(&mut self.ids) {
            for chunk in ids.chunks(MAX_IDS) {
                ihave.push((n, chunk.to_vec()));
            }
        }
    }
}

/// What the tree asks the peer to send.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TreeOut {
    pub ihave: Vec<(SocketAddr, Vec<[u8; 32]>)>,
    pub graft: Vec<(SocketAddr, Vec<[u8; 32]>)>,
    /// Rooted shape: this peer's place changed; every neighbour is to be told.
    pub place_changed: bool,
    /// Rooted shape: neighbours owed the latest place, now due.
    pub tell: Vec<SocketAddr>,
}

impl Tree {
    /// `rooted`: the rooted shape (`gossip.mode: rooted`), else Plumtree's.
    pub fn new(graft_timeout: Duration, salt: u64, rooted: bool) -> Self {
        Tree {
            salt,
            graft_timeout: graft_timeout.max(Duration::from_millis(1)),
            lazy: BTreeSet::new(),
            missing: BTreeMap::new(),
            dues: BTreeSet::new(),
            announce: Gathered::default(),
            announce_off: Gathered::default(),
            off_pick: None,
            wakes: Vec::new(),
            pruned: BTreeMap::new(),
            prunes_sent: 0,
            ids_grafted: 0,
            rooted_mode: rooted,
            rooted: None,
            backbone: Vec::new(),
            backfills: Vec::new(),
            linked: BTreeSet::new(),
            parent: None,
            orphaned_at: None,
            awaiting: None,
            recent: VecDeque::new(),
        }
    }

    /// How long an announced id may stay missing before its first graft (plus a share of as
    /// much again): `graft_timeout`, and [`ROOTED_GRAFT_WAIT`] times that in the rooted shape,
    /// whose pushes are never cut by prunes, so an id announced and not yet pushed is late in
    /// a busy queue far more often than lost.
    fn graft_wait(&self) -> Duration {
        if self.rooted_mode {
            self.graft_timeout * ROOTED_GRAFT_WAIT
        } else {
            self.graft_timeout
        }
    }

    /// Rooted shape: a neighbour link came up. The first one starts this peer's place, as
    /// the peer at `me` registered as incarnation `since` (`u64::MAX`: not yet).
    pub fn rooted_up(&mut self, me: SocketAddr, since: u64, now: Instant) {
        if self.rooted_mode && self.rooted.is_none() {
            let refresh = self.graft_timeout * REFRESH_TIMEOUTS;
            self.rooted = Some(Rooted::new(me, since, refresh, now));
        }
    }

    /// Rooted shape: this peer's name as a root changed (it registered, or again as a new
    /// incarnation); true if its place changed.
    pub fn set_me(&mut self, me: (u64, SocketAddr), now: Instant) -> bool {
        let changed = self.rooted.as_mut().is_some_and(|r| r.set_me(me, now));
        self.backfill(now);
        changed
    }

    /// Rooted shape: `addr`'s link came up (see `backfill`).
    pub fn link_up(&mut self, addr: SocketAddr) {
        if self.rooted_mode {
            self.linked.insert(addr);
        }
    }

    /// Rooted shape: a neighbour link went; true if this peer's place changed.
    pub fn rooted_down(&mut self, addr: &SocketAddr, now: Instant) -> bool {
        let changed = self.rooted.as_mut().is_some_and(|r| r.link_down(addr, now));
        self.backfill(now);
        changed
    }

    /// Rooted shape: a neighbour's place (see `Rooted::heard`); whom to tell of this
    /// peer's own.
    pub fn heard_place(
        &mut self,
        from: SocketAddr,
        place: Place,
        child: bool,
        want: bool,
        now: Instant,
    ) -> Tell {
        let tell = match &mut self.rooted {
            Some(r) => r.heard(from, place, child, want, now),
            None => Tell::Nobody,
        };
        self.backfill(now);
        tell
    }

    /// Rooted shape: a neighbour that joined the backbone since the last look is told the ids
    /// this peer received in the last [`BACKFILL_TIMEOUTS`] `graft_timeout`s (but those it
    /// sent), at once, not with the next batch (`take_backfills`). Until its link was in the
    /// backbone, items pushed along the tree did not go to it: a peer that just joined, or
    /// whose parent went, while items were on their way would otherwise wait for a graft or a
    /// catch-up round for them.
    ///
    /// A new child is always told; it grafts the ones it lacks at once if it was cut off
    /// from pushes until then, and otherwise after the usual wait (`backbone_due`): its old
    /// parent was pushing to it until it changed, and under load what that parent still has
    /// queued for it would be grafted a second time. A new parent is told
    /// only by a peer whose old parent went (or that had none), which then may have pushed
    /// items to a link that never delivered them.
    fn backfill(&mut self, now: Instant) {
        let Some(r) = &self.rooted else {
            return;
        };
        let parent = r.parent();
        if parent != self.parent {
            let old = self.parent.filter(|p| self.linked.contains(p));
            if old.is_none() {
                self.orphaned_at = Some(now);
            }
            self.awaiting = old;
            self.parent = parent;
        }
        let backbone = r.backbone_list();
        if backbone == self.backbone {
            return;
        }
        let orphaned = self.orphaned(now);
        let joined: Vec<SocketAddr> = backbone
            .iter()
            .filter(|n| !self.backbone.contains(n))
            .filter(|n| Some(**n) != parent || orphaned)
            .copied()
            .collect();
        self.backbone = backbone;
        self.forget_recent(now);
        for n in joined {
            let ids: Vec<[u8; 32]> = self
                .recent
                .iter()
                .filter(|(_, _, from)| *from != Some(n))
                .map(|(_, id, _)| *id)
                .collect();
            if !ids.is_empty() {
                self.backfills.push((n, ids));
            }
        }
    }

    /// Rooted shape: this peer's parent changed in the last [`NEW_PARENT_TIMEOUTS`]
    /// `graft_timeout`s from none, or from one whose link went.
    fn orphaned(&self, now: Instant) -> bool {
        let window = self.graft_timeout * NEW_PARENT_TIMEOUTS;
        self.orphaned_at
            .is_some_and(|at| now.saturating_duration_since(at) < window)
    }

    /// Rooted shape: when to graft `id`, announced at `now` by backbone neighbour `from`.
    /// A child announces only what reached it outside the tree (catch-up, a backfill after
    /// its parent went): no push of it is coming, so at once. The parent announces ids to a
    /// new child (`backfill`): at once too unless this peer left a parent that is still
    /// linked and has not yet said it sent its last push here (`released`): until then what
    /// that parent had queued for it (seconds of pushes under load) may still come, so the
    /// ids wait as an announcement off the tree does.
    fn backbone_due(&self, id: &[u8; 32], from: &SocketAddr, now: Instant) -> Instant {
        if self.parent != Some(*from) || self.awaiting.is_none() {
            now
        } else {
            self.first_due(id, now)
        }
    }

    /// Rooted shape: `from` released this peer (`TreeRoot` flag bit 2): every push it had
    /// queued here as this peer's parent has arrived. If it is the old parent awaited, the
    /// ids the new parent announced and still missing are grafted now.
    pub fn released(&mut self, from: SocketAddr, now: Instant) {
        if self.awaiting != Some(from) {
            return;
        }
        self.awaiting = None;
        let Some(parent) = self.parent else {
            return;
        };
        for (id, m) in self.missing.iter_mut() {
            if m.announcers.front() == Some(&parent) && m.due > now {
                self.dues.remove(&(m.due, *id));
                m.due = now;
                self.dues.insert((now, *id));
            }
        }
    }

    /// The announcements owed to neighbours that joined the backbone (see `backfill`), to
    /// send now.
    pub fn take_backfills(&mut self) -> Vec<(SocketAddr, Vec<[u8; 32]>)> {
        std::mem::take(&mut self.backfills)
    }

    /// Drops the recent ids too old to backfill.
    fn forget_recent(&mut self, now: Instant) {
        let window = self.graft_timeout * BACKFILL_TIMEOUTS;
        while self
            .recent
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > window)
        {
            self.recent.pop_front();
        }
    }

    /// Cache hints (see [`crate::hint`]) for a first receipt to come, in two steps a few
    /// events apart: first the lines of this tree that `first_receipt` and `next_wake` read,
    /// then (`prefetch_heap`, those lines in the cache by then) what they point to.
    pub fn prefetch_fields(&self) {
        crate::hint::prefetch(&self.wakes);
        crate::hint::prefetch(&self.recent);
        crate::hint::prefetch(&self.announce_off);
        crate::hint::prefetch(&self.rooted);
    }

    pub fn prefetch_heap(&self) {
        crate::hint::prefetch(self.wakes.as_ptr());
        if let Some(f) = self.recent.front() {
            crate::hint::prefetch(f);
        }
        if let Some(b) = self.recent.back() {
            crate::hint::prefetch(b);
        }
        crate::hint::prefetch(self.announce_off.ids.as_ptr());
        if let Some(r) = &self.rooted {
            r.prefetch();
        }
    }

    /// Rooted shape: an item new here came from `from` by gossip (see `Rooted::received`);
    /// true if this peer left its parent for it.
    pub fn received(&mut self, from: SocketAddr, detour: bool, now: Instant) -> bool {
        let left = self
            .rooted
            .as_mut()
            .is_some_and(|r| r.received(from, detour, now));
        if left {
            self.backfill(now);
        }
        left
    }

    /// A frame came from neighbour `n` (see `Rooted::heard_from`).
    pub fn heard_from(&mut self, n: &SocketAddr, now: Instant) {
        if let Some(r) = &mut self.rooted {
            r.heard_from(n, now);
        }
    }

    /// Rooted shape: this peer's place in the tree.
    pub fn rooted(&self) -> Option<&Rooted> {
        self.rooted.as_ref()
    }

    pub fn rooted_mut(&mut self) -> Option<&mut Rooted> {
        self.rooted.as_mut()
    }

    /// The root this peer hangs from, and its distance to it.
    pub fn root(&self) -> Option<(SocketAddr, u8)> {
        self.rooted
            .as_ref()
            .map(|r| (r.place().root.1, r.place().dist))
    }

    fn in_backbone(&self, n: &SocketAddr) -> bool {
        self.rooted.as_ref().is_some_and(|r| r.backbone(n))
    }

    /// Pushed items whole: in the rooted shape the backbone, in Plumtree's every neighbour
    /// not pruned.
    pub fn is_eager(&self, addr: &SocketAddr) -> bool {
        if self.rooted_mode {
            return self.in_backbone(addr);
        }
        !self.lazy.contains(addr)
    }

    /// A neighbour link came up or went: either way it starts over as eager.
    pub fn reset(&mut self, addr: &SocketAddr) {
        self.lazy.remove(addr);
        self.linked.remove(addr);
        if self.awaiting == Some(*addr) {
            self.awaiting = None;
        }
        self.pruned.remove(addr);
        self.announce.forget(addr);
        self.announce_off.forget(addr);
        if self.off_pick == Some(*addr) {
            self.off_pick = None;
        }
        for m in self.missing.values_mut() {
            m.announcers.retain(|a| a != addr);
        }
    }

    /// First receipt of `id`, pushed by `from` (`None`: generated or announced here): it is no
    /// longer missing and its sender is eager. `lazy` are the neighbours to announce it to.
    /// In the rooted shape the backbone alone is eager, and the id goes to one lazy
    /// neighbour.
    pub fn first_receipt(
        &mut self,
        id: [u8; 32],
        from: Option<SocketAddr>,
        lazy: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) {
        self.forget_missing(&id);
        if self.rooted_mode {
            self.forget_recent(now);
            if self.recent.len() >= MAX_IDS {
                self.recent.pop_front();
            }
            self.recent.push_back((now, id, from));
            // The backbone decides who is eager; the id goes to one neighbour off it (to
            // all of them it would cost what flooding's duplicates cost: an id is a third of
            // a short item's frame). The same one for every id gathered until they are sent
            // (`off_pick`), so they go in one frame, not one to each such link; the next
            // gathering draws again: the one whose address hashes lowest with its first id.
            // (`reset` forgets a pick whose link went.)
            if let Some(n) = self
                .off_pick
                .filter(|n| Some(*n) != from && !self.in_backbone(n))
            {
                self.announce_off.push(n, id, now);
                return;
            }
            let pick = lazy
                .into_iter()
                .filter(|n| Some(*n) != from && !self.in_backbone(n))
                .min_by_key(|n| self.draw(&id, n));
            if let Some(n) = pick {
                // An id from the window's pick itself (after a catch-up) goes to another; a
                // pick that joined the backbone is drawn again.
                if self.off_pick.is_none_or(|p| self.in_backbone(&p)) {
                    self.off_pick = Some(n);
                }
                self.announce_off.push(n, id, now);
            }
            return;
        }
        if let Some(f) = from {
            self.lazy.remove(&f);
        }
        for n in lazy {
            if Some(n) != from && self.lazy.contains(&n) {
                self.announce.push(n, id, now);
            }
        }
    }

    /// A number drawn from `id`, neighbour `n` and this peer's salt.
    fn draw(&self, id: &[u8; 32], n: &SocketAddr) -> u64 {
        let mut h = [0u8; 8];
        h.copy_from_slice(&id[8..16]);
        let port = u64::from(n.port());
        let ip = match n.ip() {
            std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
            std::net::IpAddr::V6(v6) => {
                let b = v6.octets();
                u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"))
            }
        };
        (u64::from_le_bytes(h) ^ self.salt ^ (ip << 16 | port)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// `id` arrived some other way (catch-up): no graft for it.
    pub fn arrived(&mut self, id: &[u8; 32]) {
        self.forget_missing(id);
    }

    fn forget_missing(&mut self, id: &[u8; 32]) {
        if let Some(m) = self.missing.remove(id) {
            self.dues.remove(&(m.due, *id));
        }
    }

    /// Rooted shape: `id`, new here, came by catch-up from `from`, so the tree never pushed
    /// it here and this peer never pushed it on: the peer pushes it to its children itself,
    /// and it is announced to the parent, which grafts it at once if it lacks it too (an
    /// announcement over the backbone means no push is coming) and so pushes it along the
    /// rest of the tree. A healed partition's items spread so, not a catch-up round per link;
    /// a late joiner's catch-up costs its parent only the ids, which it has.
    pub fn caught_up(&mut self, id: [u8; 32], from: SocketAddr, now: Instant) {
        let parent = self.rooted.as_ref().and_then(Rooted::parent);
        if let Some(p) = parent.filter(|p| *p != from) {
            self.announce.push(p, id, now);
        }
    }

    /// Rooted shape: `n`'s parent is this peer.
    pub fn is_child(&self, n: &SocketAddr) -> bool {
        self.rooted
            .as_ref()
            .is_some_and(|r| r.backbone(n) && r.parent() != Some(*n))
    }

    /// A repeat pushed by `from`: it is lazy from now on, and true when it must be told
    /// `Prune`: unless it was told less than a `graft_timeout` ago, whether or not it was
    /// lazy here already. A neighbour that pushes a repeat takes us for eager whatever we
    /// take it for (under load, pushes it queued before our `Prune` reached it make it eager
    /// here again and then repeats; once we have it lazy, only telling it again stops it),
    /// and a prune per repeat would be a prune per item. Never a backbone neighbour in the
    /// rooted shape.
    pub fn repeat(&mut self, from: SocketAddr, now: Instant) -> bool {
        if self.rooted_mode {
            // Who pushes is the backbone's business: nothing to prune.
            return false;
        }
        self.lazy.insert(from);
        let recent = self
            .pruned
            .get(&from)
            .is_some_and(|at| now.saturating_duration_since(*at) < self.graft_timeout);
        if recent {
            return false;
        }
        self.pruned.insert(from, now);
        self.prunes_sent += 1;
        true
    }

    /// `from` is told to send ids only (ignored in the rooted shape, where the backbone
    /// decides).
    pub fn prune(&mut self, from: SocketAddr) {
        self.lazy.insert(from);
    }

    /// `from` asks for items: it is eager from now on (not in the rooted shape, where the
    /// backbone decides). Ids already waiting to be announced to it still go: those items
    /// were not pushed to it.
    pub fn graft(&mut self, from: SocketAddr) {
        self.lazy.remove(&from);
    }

    /// Ids `from` announced; `known` tells which this peer already has.
    pub fn ihave(
        &mut self,
        from: SocketAddr,
        ids: &[[u8; 32]],
        known: impl Fn(&[u8; 32]) -> bool,
        now: Instant,
    ) {
        for id in ids {
            if known(id) {
                continue;
            }
            if let Some(m) = self.missing.get_mut(id) {
                if !m.announcers.contains(&from) {
                    m.announcers.push_back(from);
                }
                continue;
            }
            if self.missing.len() >= MAX_MISSING {
                continue;
            }
            let due = if self.in_backbone(&from) {
                self.backbone_due(id, &from, now)
            } else {
                self.first_due(id, now)
            };
            self.dues.insert((due, *id));
            self.missing.insert(
                *id,
                Missing {
                    due,
                    announcers: VecDeque::from([from]),
                },
            );
        }
    }

    /// When to graft an id first heard of at `now`: after `graft_timeout` and a share of a
    /// second one drawn from the id and this peer's salt. Every peer cut off from the push
    /// tree hears of a missing id at about the same moment; spread out, the first one to
    /// graft pushes the item on to the others before they graft too (which would join the
    /// parts by several links at once, and the next duplicates would cut them again).
    fn first_due(&self, id: &[u8; 32], now: Instant) -> Instant {
        let mut h = [0u8; 8];
        h.copy_from_slice(&id[..8]);
        let h = (u64::from_le_bytes(h) ^ self.salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let share = (h >> 54) as u32; // 0..1024
        let wait = self.graft_wait();
        now + wait + wait * share / 1024
    }

    /// At a wake-up: the announcements due, and grafts for ids that did not arrive in time
    /// (each to the next neighbour that announced it, which becomes eager), with those due
    /// within a quarter `graft_timeout`, so grafts go a few frames a timeout, not one per id.
    pub fn due(&mut self, now: Instant) -> TreeOut {
        self.wakes.retain(|w| *w > now);
        let mut out = TreeOut::default();
        if let Some(r) = &mut self.rooted {
            out.place_changed = r.tick(now);
            out.tell = r.owed_due(now);
            self.backfill(now);
            out.ihave.append(&mut self.backfills);
        }
        let (half, off) = self.announce_waits();
        self.announce.take_due(now, half, &mut out.ihave);
        self.announce_off.take_due(now, off, &mut out.ihave);
        if self.announce_off.since.is_none() {
            self.off_pick = None;
        }
        let mut grafts: BTreeMap<SocketAddr, Vec<[u8; 32]>> = BTreeMap::new();
        let timeout = self.graft_timeout;
        let soon = now + timeout / 4;
        // The ids due, in id order (as a walk of `missing` would find them).
        let mut ids = Vec::new();
        while let Some(&(due, id)) = self.dues.first() {
            if due > soon {
                break;
            }
            self.dues.pop_first();
            ids.push(id);
        }
        ids.sort_unstable();
        let mut off_tree: Vec<SocketAddr> = Vec::new();
        for id in ids {
            let Some(m) = self.missing.get_mut(&id) else {
                continue;
            };
            let Some(to) = m.announcers.pop_front() else {
                self.missing.remove(&id);
                continue;
            };
            if self.rooted.as_ref().is_some_and(|r| !r.backbone(&to)) && !off_tree.contains(&to) {
                off_tree.push(to);
            }
            grafts.entry(to).or_default().push(id);
            self.ids_grafted += 1;
            m.due = now + timeout;
            self.dues.insert((m.due, id));
        }
        if let Some(r) = &mut self.rooted {
            // Items the parent did not bring in time (see `Rooted::received`): one count
            // per wake-up that grafts any, however many, so a burst of old ids (a healed
            // partition's, announced as they are caught up) weighs little against the
            // items the parent keeps bringing; a parent that brings nothing loses every
            // count.
            if r.missed(&off_tree, now) {
                out.place_changed = true;
                self.backfill(now);
                out.ihave.append(&mut self.backfills);
            }
        }
        for (to, ids) in grafts {
            self.lazy.remove(&to);
            for chunk in ids.chunks(MAX_IDS) {
                out.graft.push((to, chunk.to_vec()));
            }
        }
        out
    }

    /// How long ids are gathered for a lazy neighbour, and (rooted shape) for one off the
    /// backbone.
    fn announce_waits(&self) -> (Duration, Duration) {
        (
            self.graft_timeout / 2,
            self.graft_timeout * ROOTED_ANNOUNCE_WAIT,
        )
    }

    /// The next wake-up to ask for, if one is needed and not already asked for (earlier).
    pub fn next_wake(&mut self, now: Instant) -> Option<Duration> {
        let (half, off) = self.announce_waits();
        let announce = self.announce.due(half);
        let off = self.announce_off.due(off);
        let graft = self.dues.first().map(|(at, _)| *at);
        let tick = self.rooted.as_ref().map(Rooted::next_tick);
        let owed = self.rooted.as_ref().and_then(Rooted::next_owed);
        let at = announce
            .into_iter()
            .chain(off)
            .chain(graft)
            .chain(tick)
            .chain(owed)
            .min()?;
        if self.wakes.iter().any(|w| *w <= at) {
            return None;
        }
        self.wakes.push(at);
        Some(at.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    const T: Duration = Duration::from_millis(100);

    #[test]
    fn a_repeat_prunes_its_sender_once_and_a_push_or_graft_makes_it_eager_again() {
        let mut t = Tree::new(T, 0, false);
        assert!(t.is_eager(&a(1)));
        let now = Instant::now();
        assert!(t.repeat(a(1), now), "first repeat: prune");
        assert!(!t.repeat(a(1), now), "told already");
        assert!(!t.is_eager(&a(1)));
        t.first_receipt([1; 32], Some(a(1)), [], now);
        assert!(t.is_eager(&a(1)));
        // Eager again and a repeat again at once (its queue to us was full of pushes sent
        // before our prune): lazy, but not told again within a graft timeout.
        assert!(!t.repeat(a(1), now + T / 2));
        assert!(!t.is_eager(&a(1)));
        // Still pushing repeats a timeout later, lazy here all along: told again.
        assert!(t.repeat(a(1), now + T), "told again a timeout later");
        assert!(!t.is_eager(&a(1)));
        t.prune(a(2));
        assert!(!t.is_eager(&a(2)));
        t.graft(a(2));
        assert!(t.is_eager(&a(2)));
    }

    #[test]
    fn lazy_neighbours_get_ids_in_batches_after_half_the_graft_timeout() {
        let now = Instant::now();
        let mut t = Tree::new(T, 0, false);
        t.prune(a(2));
        t.prune(a(3));
        t.first_receipt([1; 32], Some(a(3)), [a(1), a(2), a(3)], now);
        t.first_receipt([2; 32], None, [a(1), a(2), a(3)], now);
        assert_eq!(t.next_wake(now), Some(T / 2));
        assert_eq!(t.next_wake(now), None, "already asked for");
        assert_eq!(t.due(now), TreeOut::default(), "not yet");
        let out = t.due(now + T / 2);
        // a(1) is eager (gets items whole); a(3) pushed item 1, so it is eager again.
        assert_eq!(out.ihave, vec![(a(2), vec![[1; 32], [2; 32]])]);
    }

    #[test]
    fn a_wake_up_overtaken_by_an_earlier_one_is_not_asked_for_again() {
        let now = Instant::now();
        let mut t = Tree::new(T, 0, false);
        t.prune(a(1));
        t.prune(a(2));
        // A graft due at `first` (between one and two timeouts), then an announcement due
        // at half a timeout: two timers, the second overtaking the first.
        t.ihave(a(1), &[[7; 32]], |_| false, now);
        let first = t.next_wake(now).unwrap();
        t.first_receipt([1; 32], None, [a(2)], now);
        assert_eq!(t.next_wake(now), Some(T / 2));
        // At half a timeout: the announcement goes; the graft's timer is still to come, so
        // nothing more is asked for.
        assert_eq!(t.due(now + T / 2).ihave, vec![(a(2), vec![[1; 32]])]);
        assert_eq!(
            t.next_wake(now + T / 2),
            None,
            "the graft's timer still comes"
        );
        // It comes: the graft goes, and the next one (a timeout later) is asked for once.
        let out = t.due(now + first);
        assert_eq!(out.graft, vec![(a(1), vec![[7; 32]])]);
        assert_eq!(t.next_wake(now + first), Some(T));
        assert_eq!(t.next_wake(now + first), None);
    }

    #[test]
    fn ids_waiting_for_a_neighbour_still_go_when_it_grafts_or_prunes_meanwhile() {
        // The item was not pushed to a(2) (it was lazy when the item came): if the queued
        // announcement were dropped when a(2) turns eager, a(2) would never hear of the item.
        let now = Instant::now();
        let mut t = Tree::new(T, 0, false);
        t.prune(a(2));
        t.prune(a(3));
        t.first_receipt([1; 32], None, [a(2), a(3)], now);
        t.graft(a(2));
        t.prune(a(3));
        let out = t.due(now + T / 2);
        assert_eq!(
            out.ihave,
            vec![(a(2), vec![[1; 32]]), (a(3), vec![[1; 32]])]
        );
    }

    #[test]
    fn an_announced_item_that_does_not_come_is_grafted_from_each_announcer_in_turn() {
        let now = Instant::now();
        let mut t = Tree::new(T, 0, false);
        t.prune(a(1));
        t.prune(a(2));
        t.ihave(a(1), &[[7; 32], [8; 32]], |id| id == &[8; 32], now);
        t.ihave(a(2), &[[7; 32]], |_| false, now);
        // The first graft waits one timeout and a share of a second (spread over peers).
        let first = t.next_wake(now).unwrap();
        assert!(first >= T && first < 2 * T, "{first:?}");
        assert_eq!(
            t.due(now + first - T / 4 - Duration::from_millis(1)),
            TreeOut::default()
        );
        let out = t.due(now + first);
        assert_eq!(out.graft, vec![(a(1), vec![[7; 32]])]);
        assert!(t.is_eager(&a(1)), "grafting makes it eager");
        // The next announcer is asked one timeout later.
        assert_eq!(t.next_wake(now + first), Some(T));
        let out = t.due(now + first + T);
        assert_eq!(out.graft, vec![(a(2), vec![[7; 32]])]);
        // Nobody left to ask: forgotten (catch-up will find it).
        assert_eq!(t.due(now + first + 2 * T), TreeOut::default());
        assert_eq!(t.next_wake(now + first + 2 * T), None);
    }

    #[test]
    fn grafts_due_close_together_go_in_one_frame() {
        let now = Instant::now();
        let mut t = Tree::new(T, 0, false);
        let ids: Vec<[u8; 32]> = (0..50u8).map(|k| [k; 32]).collect();
        for (k, id) in ids.iter().enumerate() {
            t.ihave(
                a(1),
                &[*id],
                |_| false,
                now + Duration::from_millis(k as u64),
            );
        }
        let mut frames = 0;
        let mut grafted = 0;
        let mut at = now;
        while let Some(w) = t.next_wake(at) {
            at += w;
            for (_, ids) in t.due(at).graft {
                frames += 1;
                grafted += ids.len();
            }
            if grafted == ids.len() {
                break;
            }
        }
        assert_eq!(grafted, ids.len());
        // Due over about 1.5 timeouts: a frame per quarter timeout at most.
        assert!(frames <= 8, "{frames} graft frames");
    }

    #[test]
    fn an_item_that_arrives_is_not_grafted_and_a_lost_link_is_not_asked() {
        let now = Instant::now();
        let mut t = Tree::new(T, 0, false);
        t.ihave(a(1), &[[7; 32]], |_| false, now);
        t.ihave(a(2), &[[9; 32]], |_| false, now);
        t.first_receipt([7; 32], Some(a(3)), [], now);
        t.reset(&a(2));
        assert_eq!(t.due(now + 2 * T), TreeOut::default());
    }

    #[test]
    fn missing_ids_are_bounded() {
        let now = Instant::now();
        let mut t = Tree::new(T, 0, false);
        let ids: Vec<[u8; 32]> = (0..MAX_MISSING as u32 + 10)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                id
            })
            .collect();
        t.ihave(a(1), &ids, |_| false, now);
        assert_eq!(t.missing.len(), MAX_MISSING);
    }

    #[test]
    fn the_next_graft_wake_up_is_the_first_due_and_ids_that_arrive_leave_none() {
        let now = Instant::now();
        let mut t = Tree::new(T, 0, false);
        let id = |i: u32| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id
        };
        t.ihave(a(1), &[id(1), id(2)], |_| false, now);
        let first = t.missing.values().map(|m| m.due).min().unwrap();
        t.ihave(a(2), &[id(3)], |_| false, now + T / 2);
        assert_eq!(t.next_wake(now), Some(first - now));
        // All arrive: no graft wake-up is left (the one asked for grafts nothing).
        for i in 1..=3 {
            t.arrived(&id(i));
        }
        assert_eq!(t.dues.first(), None);
        assert_eq!(t.due(first), TreeOut::default());
        assert_eq!(t.next_wake(first), None);
        // One announced again is grafted at its own time.
        t.ihave(a(1), &[id(4)], |_| false, first);
        let due = t.missing[&id(4)].due;
        assert_eq!(t.next_wake(first), Some(due - first));
        assert_eq!(t.due(due).graft, vec![(a(1), vec![id(4)])]);
    }

    /// A rooted tree at a peer (port 10) whose parent is a(1) and child a(2); a(3) and a(4)
    /// are other neighbours.
    fn rooted(now: Instant) -> Tree {
        let mut t = Tree::new(T, 7, true);
        t.rooted_up(a(10), 1000, now);
        let root = (500, a(99));
        let at = |seq, dist| Place { root, seq, dist };
        t.heard_place(a(1), at(1, 1), false, false, now);
        t.heard_place(a(2), at(1, 3), true, false, now);
        t.heard_place(a(3), at(1, 2), false, false, now);
        t.heard_place(a(4), at(1, 3), false, false, now);
        assert_eq!(t.root(), Some((a(99), 2)));
        t
    }

    #[test]
    fn rooted_the_backbone_alone_is_eager_and_never_pruned() {
        let now = Instant::now();
        let mut t = rooted(now);
        let eager: Vec<u16> = (1..=4).filter(|p| t.is_eager(&a(*p))).collect();
        assert_eq!(eager, vec![1, 2]);
        // Repeats prune no one; a prune or a graft changes nothing.
        assert!(!t.repeat(a(1), now));
        assert!(!t.repeat(a(3), now));
        t.prune(a(2));
        t.graft(a(3));
        let eager: Vec<u16> = (1..=4).filter(|p| t.is_eager(&a(*p))).collect();
        assert_eq!(eager, vec![1, 2]);
        // Nor does a push from off the tree.
        t.first_receipt([1; 32], Some(a(4)), (1..=4).map(a), now);
        assert!(!t.is_eager(&a(4)));
    }

    #[test]
    fn ids_gathered_for_a_link_that_went_are_not_due() {
        let now = Instant::now();
        let mut g = Gathered::default();
        g.push(a(1), [1; 32], now);
        g.push(a(2), [2; 32], now);
        g.forget(&a(1));
        assert_eq!(g.due(T), Some(now + T), "a(2)'s id still waits");
        g.forget(&a(2));
        assert_eq!(g.due(T), None, "nothing left: no wake-up for it");
        let mut ihave = vec![];
        g.take_due(now + T, T, &mut ihave);
        assert!(ihave.is_empty());
    }

    #[test]
    fn rooted_each_id_is_announced_to_one_neighbour_off_the_tree() {
        let now = Instant::now();
        let mut t = rooted(now);
        for k in 0..64u8 {
            t.first_receipt([k; 32], Some(a(1)), (1..=4).map(a), now);
        }
        // Gathered for `ROOTED_ANNOUNCE_WAIT` timeouts, not half of one.
        let wait = T * ROOTED_ANNOUNCE_WAIT;
        assert_eq!(t.next_wake(now), Some(wait));
        assert!(t.due(now + wait - T / 2).ihave.is_empty());
        let out = t.due(now + wait);
        let mut told = 0;
        for (to, ids) in &out.ihave {
            assert!([a(3), a(4)].contains(to), "never the backbone");
            told += ids.len();
        }
        assert_eq!(told, 64, "each id once");
        assert_eq!(out.ihave.len(), 1, "all to one neighbour: one frame");
        // The next gathering draws again: over a few, both get some.
        let mut to = BTreeSet::new();
        for w in 1..=8u8 {
            let at = now + wait * u32::from(w);
            t.first_receipt([w; 32], Some(a(1)), (1..=4).map(a), at);
            t.first_receipt([w + 100; 32], Some(a(1)), (1..=4).map(a), at);
            let out = t.due(at + wait);
            assert_eq!(out.ihave.len(), 1);
            to.insert(out.ihave[0].0);
        }
        assert_eq!(to, BTreeSet::from([a(3), a(4)]), "spread over both");
    }

    #[test]
    fn rooted_an_id_is_not_announced_to_the_neighbour_it_came_from() {
        let now = Instant::now();
        let mut t = rooted(now);
        t.first_receipt([1; 32], Some(a(1)), (1..=4).map(a), now);
        let window = t.off_pick.expect("drawn");
        let other = if window == a(3) { a(4) } else { a(3) };
        // By catch-up from the window's pick: to the other one, and the window stays.
        t.first_receipt([2; 32], Some(window), (1..=4).map(a), now);
        t.first_receipt([3; 32], Some(a(1)), (1..=4).map(a), now);
        let mut out = t.due(now + T * ROOTED_ANNOUNCE_WAIT).ihave;
        out.sort();
        let mut want = vec![(window, vec![[1; 32], [3; 32]]), (other, vec![[2; 32]])];
        want.sort();
        assert_eq!(out, want);
        // Its link goes: the next id draws another.
        t.first_receipt([4; 32], Some(a(1)), (1..=4).map(a), now);
        let pick = t.off_pick.expect("drawn");
        t.reset(&pick);
        t.first_receipt(
            [5; 32],
            Some(a(1)),
            [1, 2, 3, 4].map(a).into_iter().filter(|n| *n != pick),
            now,
        );
        assert_ne!(t.off_pick, Some(pick));
        assert!(t.off_pick.is_some());
    }

    #[test]
    fn rooted_ids_over_the_backbone_are_grafted_at_once_others_after_ten_timeouts() {
        let now = Instant::now();
        let mut t = rooted(now);
        t.ihave(a(3), &[[1; 32]], |_| false, now);
        t.ihave(a(1), &[[2; 32]], |_| false, now);
        let out = t.due(now);
        assert_eq!(out.graft, vec![(a(1), vec![[2; 32]])]);
        assert!(t.due(now + T * 9).graft.is_empty());
        let late = now + T * ROOTED_GRAFT_WAIT * 2;
        assert_eq!(t.due(late).graft, vec![(a(3), vec![[1; 32]])]);
        assert!(!t.is_eager(&a(3)), "grafting makes no one eager");
    }

    #[test]
    fn rooted_an_item_caught_up_is_announced_to_the_parent() {
        let now = Instant::now();
        let mut t = rooted(now);
        assert!(t.is_child(&a(2)) && !t.is_child(&a(1)) && !t.is_child(&a(3)));
        t.caught_up([5; 32], a(3), now);
        t.caught_up([6; 32], a(1), now);
        assert_eq!(
            t.due(now + T).ihave,
            vec![(a(1), vec![[5; 32]])],
            "to the parent, not back to the sender"
        );
        // Plumtree's shape has no parent: nothing.
        let mut p = Tree::new(T, 0, false);
        p.caught_up([5; 32], a(3), now);
        assert!(p.due(now + T).ihave.is_empty());
    }

    #[test]
    fn rooted_a_neighbour_joining_the_backbone_is_told_the_recent_ids_it_did_not_send() {
        let now = Instant::now();
        let mut t = rooted(now);
        assert!(t.take_backfills().is_empty(), "nothing received yet");
        let root = (500, a(99));
        let window = T * BACKFILL_TIMEOUTS;
        // Too old by the time a(4) joins, then recent ones: from the parent, from a(4),
        // generated here.
        t.first_receipt([1; 32], Some(a(1)), (1..=4).map(a), now);
        let later = now + window;
        t.first_receipt([2; 32], Some(a(1)), (1..=4).map(a), later);
        t.first_receipt([3; 32], Some(a(4)), (1..=4).map(a), later);
        t.first_receipt([4; 32], None, (1..=4).map(a), later);
        let joins = later + T / 2;
        // a(4) names this peer its parent: a new child.
        let at = |seq, dist| Place { root, seq, dist };
        t.heard_place(a(4), at(1, 3), true, false, joins);
        assert_eq!(
            t.take_backfills(),
            vec![(a(4), vec![[2; 32], [4; 32]])],
            "recent ones only, and not those a(4) sent"
        );
        assert!(t.take_backfills().is_empty(), "once");
        // A place that changes nothing in the backbone backfills no one.
        t.heard_place(a(4), at(1, 3), true, false, joins);
        assert!(t.take_backfills().is_empty());
        // A new parent (a(3) comes nearer the root) is told them too, a(1) no longer in the
        // backbone is not.
        t.heard_place(a(3), at(1, 0), false, false, joins);
        assert_eq!(t.rooted().and_then(Rooted::parent), Some(a(3)));
        assert_eq!(
            t.take_backfills(),
            vec![(a(3), vec![[2; 32], [3; 32], [4; 32]])]
        );
        // Over the backbone an announcement is grafted at once: what a(4) lacks comes now.
        let mut child = Tree::new(T, 1, true);
        child.rooted_up(a(4), 2000, joins);
        child.heard_place(a(10), at(1, 2), false, false, joins);
        child.ihave(a(10), &[[2; 32], [4; 32]], |id| id == &[4; 32], joins);
        assert_eq!(child.due(joins).graft, vec![(a(10), vec![[2; 32]])]);
    }

    #[test]
    fn rooted_after_a_change_between_live_parents_grafts_wait_for_the_old_ones_release() {
        // Links up long ago: parent a(1), then a(3) comes nearer the root while a(1) stays.
        let t0 = Instant::now();
        let now = t0 + T * NEW_PARENT_TIMEOUTS * 2;
        let mut t = Tree::new(T, 7, true);
        t.rooted_up(a(10), 1000, t0);
        for p in 1..=3 {
            t.link_up(a(p));
        }
        let root = (500, a(99));
        let at = |seq, dist| Place { root, seq, dist };
        t.heard_place(a(1), at(1, 1), false, false, t0);
        t.heard_place(a(2), at(1, 3), true, false, t0);
        t.first_receipt([1; 32], Some(a(2)), (1..=3).map(a), now);
        assert_eq!(t.rooted().and_then(Rooted::parent), Some(a(1)));
        t.take_backfills();
        t.heard_place(a(3), at(1, 0), false, false, now);
        assert_eq!(t.rooted().and_then(Rooted::parent), Some(a(3)));
        assert!(
            t.take_backfills().is_empty(),
            "the old parent was pushing until now: the new one is not told"
        );
        // Told by the new parent what it had: grafted after the usual wait, not at once
        // (what the old parent had queued is on its way).
        t.ihave(a(3), &[[2; 32]], |_| false, now);
        assert!(t.due(now + T).graft.is_empty());
        let late = now + T * ROOTED_GRAFT_WAIT * 2;
        assert_eq!(t.due(late).graft, vec![(a(3), vec![[2; 32]])]);
        // Until the old parent says its last push went (`TreeRoot` bit 2): then what the new
        // one announced and is still missing is grafted at once.
        t.ihave(a(3), &[[5; 32]], |_| false, late);
        t.released(a(2), late);
        assert!(t.due(late).graft.is_empty(), "only the old parent releases");
        t.released(a(1), late);
        assert_eq!(t.next_wake(late), Some(Duration::ZERO));
        assert_eq!(t.due(late).graft, vec![(a(3), vec![[5; 32]])]);
        t.ihave(a(3), &[[6; 32]], |_| false, late);
        assert_eq!(
            t.due(late).graft,
            vec![(a(3), vec![[6; 32]])],
            "and from then on"
        );
        // Its parent's link goes: the next parent is told, and grafts from it go at once.
        t.first_receipt([4; 32], Some(a(2)), (1..=3).map(a), late);
        t.reset(&a(3));
        t.rooted_down(&a(3), late);
        assert_eq!(t.rooted().and_then(Rooted::parent), Some(a(1)));
        assert_eq!(t.take_backfills(), vec![(a(1), vec![[4; 32]])]);
        t.ihave(a(1), &[[3; 32]], |_| false, late);
        assert_eq!(t.due(late).graft, vec![(a(1), vec![[3; 32]])]);
    }

    #[test]
    fn rooted_the_recent_ids_are_bounded() {
        let now = Instant::now();
        let mut t = rooted(now);
        for k in 0..MAX_IDS as u32 + 100 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&k.to_be_bytes());
            t.first_receipt(id, Some(a(1)), (1..=4).map(a), now);
        }
        assert_eq!(t.recent.len(), MAX_IDS);
        let root = (500, a(99));
        t.heard_place(
            a(4),
            Place {
                root,
                seq: 1,
                dist: 3,
            },
            true,
            false,
            now,
        );
        let backfills = t.take_backfills();
        assert_eq!(backfills.len(), 1);
        assert_eq!(backfills[0].1.len(), MAX_IDS, "one frame's worth");
        // And in time: what is older than the window goes as new ids come, backbone change
        // or not (a steady tree would otherwise keep MAX_IDS of them per peer).
        let later = now + T * BACKFILL_TIMEOUTS + T;
        t.first_receipt([9; 32], Some(a(1)), (1..=4).map(a), later);
        assert_eq!(t.recent.len(), 1);
    }

    #[test]
    fn rooted_the_root_refreshes_through_the_wake_up() {
        let now = Instant::now();
        let mut t = Tree::new(T, 7, true);
        t.rooted_up(a(10), 1000, now);
        let refresh = T * REFRESH_TIMEOUTS;
        assert_eq!(t.next_wake(now), Some(refresh));
        assert!(!t.due(now + refresh / 2).place_changed);
        assert!(t.due(now + refresh).place_changed);
        assert_eq!(t.rooted().map(|r| r.place().seq), Some(1));
    }
}
