//! `gossip.mode: rooted`: where this peer hangs in a tree rooted at the oldest peer.
//!
//! Every peer hangs from the oldest root it hears of (a root is a registered peer named by the
//! incarnation the seeds certified, its start, and its address; older wins, then the lower
//! address; what a neighbour says of a root is proven, `proof`), by the
//! neighbour nearest to it: a breadth-first tree, the same for every origin, not shaped by
//! which copy of an item came first. The links to the parent and to the children (neighbours
//! whose parent this peer is) are the *backbone*: items are pushed along it whole; every other
//! link gets ids only (`tree`).
//!
//! Neighbours tell each other their place (`TreeRoot`: root, sequence number, distance,
//! "you are my parent") when it changes. This is a distance vector, and a distance vector
//! whose root is gone counts to infinity: every peer takes a neighbour's stale route, one
//! link longer each round. Three rules, Babel's, stop that:
//! - **Sequence numbers.** The root numbers its announcements and sends a new number every
//!   `refresh`; each peer passes on the number of the route it holds. A root whose number has
//!   not grown for [`LOST_REFRESHES`] refreshes is lost: its routes are refused from then on
//!   unless they carry a newer number (a root that was only cut off comes back so). Not
//!   while the peer has a route and its parent's link brought a frame in the last refresh,
//!   though: the parent is nearer the root and will say when it loses it, and a number that
//!   is late while frames still come is late in a queue (a peer that falls seconds behind
//!   under load read every number seconds late, took the root for lost, and made its whole
//!   subtree change parents twice, which sent everything pushed meanwhile twice). The peer
//!   that sees its parent's link fall quiet, or has no route left, decides; and any peer
//!   after [`MAX_LOST_REFRESHES`], so a parent that sends frames but no numbers (a lie
//!   abandoned) holds it no longer than that. A peer that no neighbour offers any route to
//!   the root for [`ROUTELESS_REFRESHES`] takes it for lost then, however recent its number
//!   (the root crashed, or its children all left it for delivering nothing).
//! - **Feasibility.** A route to the same root is taken only if its number is newer than the
//!   one this peer last passed on, or the same number and a shorter distance than it passed
//!   on. A route through this peer's own subtree is never shorter, so no loop forms; a peer
//!   with no such route says it is unreachable (distance [`MAX_DIST`]) and asks for a newer
//!   number: the request goes from parent to parent up to the root, which sends one at once
//!   (at most every `refresh / 10`), so the peer hangs again within a few round trips.
//! - **Poison reverse.** A neighbour whose parent is this peer is no way to the root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A root: the incarnation it registered (its start, Unix ms, certified by the seeds; `u64::MAX`
/// for a peer not registered yet), its address. Older sorts first.
pub type RootId = (u64, SocketAddr);

/// The distance that means "no route": routes this long are not taken.
pub const MAX_DIST: u8 = 32;
/// The root sends a new sequence number every `graft_timeout` times this (2 s by default).
pub const REFRESH_TIMEOUTS: u32 = 20;
/// Refreshes without a newer number after which a root is taken for lost.
pub const LOST_REFRESHES: u32 = 3;
/// ... and after which it is, however busy the parent's link (see the module doc): a parent
/// that sends frames but no numbers holds its subtree no longer than this.
pub const MAX_LOST_REFRESHES: u32 = 8;
/// A root held that no neighbour has offered any route to (every neighbour unreachable, a
/// child, or left as a parent) for this many refreshes is lost, however recent its last
/// number: a newer number, asked for, would have come by then (the region around the peer
/// lost it together: its root crashed, or all the root's children left it for delivering
/// nothing).
pub const ROUTELESS_REFRESHES: u32 = 1;
/// Lost roots remembered (the oldest forgotten first).
pub const MAX_LOST: usize = 64;
/// The root sends a number asked for at most every `refresh` divided by this.
pub const REQUESTS_PER_REFRESH: u32 = 10;
/// A neighbour is told this peer's place at most this many times a `refresh` on average, in
/// bursts of [`TOLD_BURST`] (the latest place when its turn comes): a place that changes
/// faster, say a neighbour lying about its root with a new number every few milliseconds, is
/// not passed on frame for frame.
pub const TOLD_PER_REFRESH: u32 = 20;
pub const TOLD_BURST: f64 = 4.0;
/// Counts (items the parent pushed first, wake-ups grafting what it did not bring) a peer
/// gathers, over at least a refresh, before it judges its parent (see [`Rooted::received`]).
pub const WATCH_ITEMS: u16 = 16;
/// A parent left for delivering too little is no route for this many refreshes (60 s by
/// default), twice as long each time it is left again, up to [`MAX_SHUN_DOUBLINGS`] times.
pub const SHUN_REFRESHES: u32 = 30;
pub const MAX_SHUN_DOUBLINGS: u8 = 4;
/// Neighbours remembered as left (the one whose time is up soonest forgotten first).
pub const MAX_SHUNNED: usize = 64;

/// What the parent delivered since it was chosen: counts (items it pushed first, and
/// wake-ups that grafted what it did not bring), items it pushed first, and up to two of the
/// neighbours the grafts went to.
#[derive(Debug, Default)]
struct Watch {
    counted: u32,
    first: u32,
    announcers: Vec<SocketAddr>,
    /// When the first of these counts came.
    since: Option<Instant>,
    /// When a detour from a child was last counted.
    detour_at: Option<Instant>,
}

/// Whom a change of place is to be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tell {
    Nobody,
    /// Only the parent: a request for a newer number, passed on towards the root.
    Parent,
    All,
}

/// A place in a tree, as announced: its root, the root's sequence number it carries, the
/// distance in links (`MAX_DIST`: unreachable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub root: RootId,
    pub seq: u32,
    pub dist: u8,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    place: Place,
    /// Its parent is this peer.
    child: bool,
}

#[derive(Debug)]
pub struct Rooted {
    me: RootId,
    refresh: Duration,
    heard: BTreeMap<SocketAddr, Heard>,
    /// The neighbours whose last place named this peer parent (`heard`'s `child`), in address
    /// order: asked of every neighbour for every item pushed on, so a few words to scan
    /// rather than a walk of `heard`.
    children: Vec<SocketAddr>,
    place: Place,
    parent: Option<SocketAddr>,
    /// The sequence number this peer sends as a root.
    own_seq: u32,
    /// Feasibility: the newest number passed on for `place.root`, and the shortest distance
    /// passed on with it.
    feasible: (u32, u8),
    /// When `place.root`'s number last grew here (or it was first taken).
    fresh_at: Instant,
    /// As the root: when to send the next number.
    next_refresh: Instant,
    /// Roots taken for lost, with the newest number heard from them.
    lost: BTreeMap<RootId, u32>,
    /// A newer number than this is asked for (this peer is unreachable, or passes on a
    /// request from a neighbour that is).
    want: Option<u32>,
    /// As the root: when a number was last sent.
    last_number: Instant,
    /// When the parent's link last brought a frame (since it became the parent).
    parent_heard: Option<Instant>,
    /// Since when no neighbour has offered any route to the root held (see
    /// [`ROUTELESS_REFRESHES`]).
    routeless_since: Option<Instant>,
    /// Each neighbour's allowance of places (tokens, when last counted).
    told: BTreeMap<SocketAddr, (f64, Instant)>,
    /// Neighbours owed the latest place (told too recently to be told at once).
    owed: BTreeSet<SocketAddr>,
    /// The root, distance and parent every neighbour was last told (see `number_only`).
    told_all: Option<(RootId, u8, Option<SocketAddr>)>,
    /// What the parent delivered since it was chosen (see [`Rooted::received`]).
    watch: Watch,
    /// Parents left for what they delivered: until when they are no route, and how many
    /// times they were left.
    shunned: BTreeMap<SocketAddr, (Instant, u8)>,
    /// Parents left so far (a count for the simulator's summary).
    pub parents_left: u64,
    /// The last parent left, for how long, and its counts (items it pushed first, all), until
    /// taken for the output record (`take_left`).
    left: Option<(SocketAddr, Duration, u32, u32)>,
}

impl Rooted {
    /// A peer at `me`, registered as incarnation `since` (unix ms; `u64::MAX` if not yet):
    /// its own root until it hears of an older one.
    pub fn new(me: SocketAddr, since: u64, refresh: Duration, now: Instant) -> Self {
        let me = (since, me);
        Rooted {
            me,
            refresh,
            heard: BTreeMap::new(),
            children: Vec::new(),
            place: Place {
                root: me,
                seq: 0,
                dist: 0,
            },
            parent: None,
            own_seq: 0,
            feasible: (0, 0),
            fresh_at: now,
            routeless_since: None,
            next_refresh: now + refresh,
            lost: BTreeMap::new(),
            want: None,
            last_number: now,
            parent_heard: None,
            told: BTreeMap::new(),
            owed: BTreeSet::new(),
            told_all: None,
            watch: Watch::default(),
            shunned: BTreeMap::new(),
            parents_left: 0,
            left: None,
        }
    }

    pub fn place(&self) -> Place {
        self.place
    }

    /// This peer's name as a root.
    pub fn me(&self) -> RootId {
        self.me
    }

    /// This peer's name as a root changed (see `Tree::set_me`): if it is the root, it is so
    /// under the new name, with a new number; true if its place changed.
    pub fn set_me(&mut self, me: RootId, now: Instant) -> bool {
        if me == self.me {
            return false;
        }
        let was_root = self.is_root();
        self.me = me;
        if was_root {
            self.own_seq = self.own_seq.wrapping_add(1);
            self.place = Place {
                root: me,
                seq: self.own_seq,
                dist: 0,
            };
            self.feasible = (self.own_seq, 0);
            self.next_refresh = now + self.refresh;
            self.last_number = now;
        }
        self.choose(now) || was_root
    }

    pub fn parent(&self) -> Option<SocketAddr> {
        self.parent
    }

    pub fn is_root(&self) -> bool {
        self.place.root == self.me
    }

    /// Parent or child: items go to it whole.
    /// A cache hint: the children list that `backbone` reads.
    pub fn prefetch(&self) {
        crate::hint::prefetch(self.children.as_ptr());
    }

    pub fn backbone(&self, n: &SocketAddr) -> bool {
        self.parent == Some(*n) || self.children.contains(n)
    }

    /// The backbone: the parent (if any) and the children, in address order after it.
    pub fn backbone_list(&self) -> Vec<SocketAddr> {
        self.parent
            .into_iter()
            .chain(self.children.iter().copied())
            .collect()
    }

    /// How many neighbours name this peer parent.
    pub fn children(&self) -> usize {
        self.children.len()
    }

    /// What to tell neighbour `to`: this peer's place, whether `to` is its parent, and
    /// whether a newer number is asked for (of the parent, or of every neighbour when this
    /// peer is unreachable).
    pub fn announcement(&self, to: &SocketAddr) -> (Place, bool, bool) {
        let parent = self.parent == Some(*to);
        let want = self.want.is_some() && (parent || self.place.dist >= MAX_DIST);
        (self.place, parent, want)
    }

    /// Every neighbour is to be told this peer's place: true if only its number changed
    /// since they were last told (same root, distance and parent, no request). Then only the
    /// neighbours deeper in the tree need be told (`as_near`): a refresh goes down, never
    /// up or across.
    pub fn number_only(&mut self) -> bool {
        let told = (self.place.root, self.place.dist, self.parent);
        let same = self.told_all == Some(told) && self.want.is_none();
        self.told_all = Some(told);
        same
    }

    /// Neighbour `n` last said it is as near this peer's root as this peer is, or nearer, so
    /// a newer number alone from here tells it nothing: the parent never takes its child's
    /// route (poison reverse), and no neighbour takes a route of the same number that is not
    /// shorter than its own (infeasible), nor leaves its parent for an equally long route of
    /// a newer one. It loses only a number that reached this peer first; a neighbour that
    /// loses its route says so (its place changes, so it is told everything again) and asks
    /// for a newer number anyway.
    pub fn as_near(&self, n: &SocketAddr) -> bool {
        self.heard
            .get(n)
            .is_some_and(|h| h.place.root == self.place.root && h.place.dist <= self.place.dist)
    }

    /// A neighbour's place (`child`: its parent is this peer; `want`: it asks for a newer
    /// number); whom to tell of this peer's own.
    pub fn heard(
        &mut self,
        from: SocketAddr,
        place: Place,
        child: bool,
        want: bool,
        now: Instant,
    ) -> Tell {
        if let Some(seq) = self.lost.get(&place.root) {
            if place.seq > *seq && place.dist < MAX_DIST && !self.is_shunned(&from, now) {
                // Not lost after all (it was cut off): taken again.
                self.lost.remove(&place.root);
            }
        }
        self.heard.insert(from, Heard { place, child });
        self.set_child(from, child);
        if self.choose(now) {
            return Tell::All;
        }
        if !want || place.root != self.place.root || self.place.dist >= MAX_DIST {
            return Tell::Nobody;
        }
        if self.is_root() {
            let gap = self.refresh / REQUESTS_PER_REFRESH;
            self.next_refresh = self.next_refresh.min(self.last_number + gap);
            return if self.tick(now) {
                Tell::All
            } else {
                Tell::Nobody
            };
        }
        if self.want.is_some_and(|w| w >= self.place.seq) {
            return Tell::Nobody; // asked already
        }
        self.want = Some(self.place.seq);
        Tell::Parent
    }

    /// A neighbour link went; true if this peer's place changed.
    pub fn link_down(&mut self, n: &SocketAddr, now: Instant) -> bool {
        self.told.remove(n);
        self.owed.remove(n);
        self.set_child(*n, false);
        self.heard.remove(n).is_some() && self.choose(now)
    }

    /// Keeps `children` in step with `heard`.
    fn set_child(&mut self, n: SocketAddr, child: bool) {
        match (self.children.binary_search(&n), child) {
            (Err(at), true) => self.children.insert(at, n),
            (Ok(at), false) => {
                self.children.remove(at);
            }
            _ => {}
        }
    }

    fn told_gap(&self) -> Duration {
        self.refresh / TOLD_PER_REFRESH
    }

    /// `to`'s allowance now: tokens (a place each), refilled one per gap up to the burst.
    fn allowance(&self, to: &SocketAddr, now: Instant) -> f64 {
        match self.told.get(to) {
            None => TOLD_BURST,
            Some(&(tokens, at)) => {
                let gained =
                    now.saturating_duration_since(at).as_secs_f64() / self.told_gap().as_secs_f64();
                (tokens + gained).min(TOLD_BURST)
            }
        }
    }

    /// Whether neighbour `to` may be told this peer's place now (then it counts as told);
    /// if not, it is owed the place when its allowance has grown (see [`Rooted::owed_due`]).
    pub fn may_tell(&mut self, to: SocketAddr, now: Instant) -> bool {
        let tokens = self.allowance(&to, now);
        if tokens < 1.0 {
            self.told.insert(to, (tokens, now));
            self.owed.insert(to);
            return false;
        }
        self.told.insert(to, (tokens - 1.0, now));
        self.owed.remove(&to);
        true
    }

    /// The neighbours owed the latest place whose allowance has grown (counted as told now).
    pub fn owed_due(&mut self, now: Instant) -> Vec<SocketAddr> {
        let due: Vec<SocketAddr> = self
            .owed
            .iter()
            .filter(|n| self.allowance(n, now) >= 1.0 - 1e-9)
            .copied()
            .collect();
        for n in &due {
            let tokens = self.allowance(n, now).max(1.0);
            self.told.insert(*n, (tokens - 1.0, now));
            self.owed.remove(n);
        }
        due
    }

    /// When the next neighbour owed the place may be told.
    pub fn next_owed(&self) -> Option<Instant> {
        let gap = self.told_gap().as_secs_f64();
        self.owed
            .iter()
            .filter_map(|n| self.told.get(n))
            // Rounded up to the microsecond, so the allowance has grown when it is due.
            .map(|&(tokens, at)| {
                at + Duration::from_micros(((1.0 - tokens).max(0.0) * gap * 1e6).ceil() as u64 + 1)
            })
            .min()
    }

    /// An item new here came from neighbour `from` by gossip (not by catch-up). A parent is
    /// judged by what it delivers, not by its place alone: an item its parent brought first
    /// counts for it, a wake-up that grafts items from neighbours off the tree that announced
    /// them (`missed`) against it, and once there are [`WATCH_ITEMS`] counts over at least a
    /// refresh, a parent with more against than for is left (`leave_parent`), if what was
    /// grafted came from at least two neighbours or the parent brought none at all. An
    /// honest parent pushes every item it gets at once, long before anyone off the tree
    /// announces it (ids are gathered for half a second, then grafted a second later); one
    /// that keeps its place but passes nothing on, or lies about its distance to draw
    /// children and then drops their items, brings none. (Two announcers, because one
    /// neighbour announcing fresh items of its own that it pushes to no one would otherwise
    /// make this peer leave an honest parent, which never had them; unless the parent
    /// brought nothing, or a child whose only neighbour off the tree grafts it everything
    /// would never leave a parent that drops it all.) True if this peer's place changed.
    ///
    /// `detour`: the item came from a child as a `Detour`, an item that reached the child's
    /// subtree around this peer (grafted from off the tree there). With the root as parent
    /// (`dist` 1) that is an item from another of the root's subtrees that the root did not
    /// bring, so it counts against the root, with the child as the neighbour it came from
    /// (the two-neighbour rule holds for these too). Deeper, the parent is not to blame: it
    /// had no item to bring either, and the detour goes on up to the peer under the root.
    pub fn received(&mut self, from: SocketAddr, detour: bool, now: Instant) -> bool {
        if self.place.dist >= MAX_DIST {
            return false;
        }
        if self.parent == Some(from) {
            self.watch.first = self.watch.first.saturating_add(1);
        } else if detour && self.place.dist == 1 && self.children.contains(&from) {
            // One count a graft timeout at most, as a wake-up of grafts is one count: a
            // healed partition brings a burst of them from the other side while the root
            // still delivers what its own side sends.
            let gap = self.refresh / REFRESH_TIMEOUTS;
            if self.watch.detour_at.is_some_and(|at| now < at + gap) {
                return false;
            }
            self.watch.detour_at = Some(now);
            self.note_announcer(from);
        } else {
            return false;
        }
        self.watch.counted = self.watch.counted.saturating_add(1);
        self.watch.since.get_or_insert(now);
        self.judge(now)
    }

    /// One of the neighbours that brought what the parent did not (at most two kept: the
    /// two-neighbour rule only asks whether there were two).
    fn note_announcer(&mut self, a: SocketAddr) {
        if self.watch.announcers.len() < 2 && !self.watch.announcers.contains(&a) {
            self.watch.announcers.push(a);
        }
    }

    /// The parent last left for what it delivered, if not taken yet: its address, for how
    /// long, items it pushed first and counts in all.
    pub fn take_left(&mut self) -> Option<(SocketAddr, Duration, u32, u32)> {
        self.left.take()
    }

    /// A wake-up grafted items from `announcers`, neighbours off the tree that announced
    /// them: items the parent did not bring in time, one count however many (see
    /// [`Rooted::received`]). True if this peer's place changed.
    pub fn missed(&mut self, announcers: &[SocketAddr], now: Instant) -> bool {
        if self.parent.is_none() || self.place.dist >= MAX_DIST || announcers.is_empty() {
            // No parent to judge, or only a stand-in while unreachable.
            return false;
        }
        self.watch.counted = self.watch.counted.saturating_add(1);
        self.watch.since.get_or_insert(now);
        for a in announcers {
            self.note_announcer(*a);
        }
        self.judge(now)
    }

    fn judge(&mut self, now: Instant) -> bool {
        let Watch {
            counted,
            first,
            ref announcers,
            since,
            ..
        } = self.watch;
        // At least WATCH_ITEMS counts over at least a refresh: under load a second of late
        // pushes (a queue's spike) makes many grafts in a tenth of a second, but a parent
        // that delivers still brings most of a refresh's items first.
        let long_enough = since.is_some_and(|s| now.saturating_duration_since(s) >= self.refresh);
        if counted < u32::from(WATCH_ITEMS) || !long_enough {
            return false;
        }
        let from_others = announcers.len();
        self.watch = Watch::default();
        // One neighbour alone may be announcing items of its own (see `received`); but a
        // parent that brought nothing at all has nothing to set against it.
        if 2 * first >= counted || (from_others < 2 && first > 0) {
            return false;
        }
        let Some(parent) = self.parent else {
            return false;
        };
        let left_for = self.leave_parent(parent, now);
        self.left = Some((parent, left_for, first, counted));
        log::warn!(
            "parent {parent} left for {left_for:?}: of the last {counted} counts, {first} items \
             it pushed first, {} rounds of grafts for items it did not bring",
            counted - first
        );
        true
    }

    /// The parent is no route for [`SHUN_REFRESHES`] refreshes (more if it was left before).
    /// A root that is left stays the root: this peer hangs from it through another
    /// neighbour (a root that drops everything starves them all; see docs/SECURITY.md).
    /// Returns for how long it is left.
    fn leave_parent(&mut self, parent: SocketAddr, now: Instant) -> Duration {
        let times = self.shunned.get(&parent).map_or(0, |s| s.1);
        let left_for = self.refresh * SHUN_REFRESHES * (1 << times.min(MAX_SHUN_DOUBLINGS));
        if self.shunned.len() >= MAX_SHUNNED && !self.shunned.contains_key(&parent) {
            let soonest = self
                .shunned
                .iter()
                .min_by_key(|(_, s)| s.0)
                .map(|(n, _)| *n)
                .expect("not empty");
            self.shunned.remove(&soonest);
        }
        self.shunned
            .insert(parent, (now + left_for, times.saturating_add(1)));
        self.parents_left += 1;
        self.choose(now);
        left_for
    }

    /// A frame came from neighbour `n` (see the module doc: a root is not lost while the
    /// parent's link is busy).
    pub fn heard_from(&mut self, n: &SocketAddr, now: Instant) {
        if self.parent == Some(*n) {
            self.parent_heard = Some(now);
        }
    }

    /// When [`Rooted::tick`] has something to do.
    pub fn next_tick(&self) -> Instant {
        if self.is_root() {
            return self.next_refresh;
        }
        let lost = self.fresh_at + self.refresh * LOST_REFRESHES;
        let lost = self
            .routeless_since
            .map_or(lost, |r| lost.min(r + self.refresh * ROUTELESS_REFRESHES));
        match self.parent_heard {
            Some(at) if self.place.dist < MAX_DIST => lost
                .max(at + self.refresh)
                .min(self.fresh_at + self.refresh * MAX_LOST_REFRESHES),
            _ => lost,
        }
    }

    /// As the root: a new number when due. Otherwise: the root is lost when its number has
    /// not grown for `LOST_REFRESHES` refreshes. True if this peer's place changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        if now < self.next_tick() {
            return false;
        }
        if self.is_root() {
            self.own_seq = self.own_seq.wrapping_add(1);
            self.place.seq = self.own_seq;
            self.feasible = (self.own_seq, 0);
            self.next_refresh = now + self.refresh;
            self.last_number = now;
            return true;
        }
        let root = self.place.root;
        let newest = self
            .heard
            .values()
            .filter(|h| h.place.root == root)
            .map(|h| h.place.seq)
            .chain([self.place.seq])
            .max()
            .unwrap_or(0);
        if self.lost.len() >= MAX_LOST {
            let oldest = *self.lost.keys().next().expect("not empty");
            self.lost.remove(&oldest);
        }
        self.lost.insert(root, newest);
        log::info!(
            "tree root {} lost: no new announcement for {:?}",
            root.1,
            now.saturating_duration_since(self.fresh_at)
        );
        self.choose(now)
    }

    /// Whether neighbour `n` was left as a parent and its time is not up yet.
    fn is_shunned(&self, n: &SocketAddr, now: Instant) -> bool {
        self.shunned.get(n).is_some_and(|&(until, _)| now < until)
    }

    fn usable(&self, n: &SocketAddr, h: &Heard, now: Instant) -> bool {
        !h.child
            && !self.is_shunned(n, now)
            && h.place.dist < MAX_DIST
            && self
                .lost
                .get(&h.place.root)
                .is_none_or(|&seq| h.place.seq > seq)
    }

    /// Chooses root, parent and distance again; true if the place or parent changed.
    fn choose(&mut self, now: Instant) -> bool {
        let parent = self.parent;
        let changed = self.choose_again(now);
        if self.parent != parent {
            self.parent_heard = None;
            self.watch = Watch::default();
        }
        changed
    }

    fn choose_again(&mut self, now: Instant) -> bool {
        let before = (self.place, self.parent);
        let mut root = self.me;
        for (n, h) in &self.heard {
            if self.usable(n, h, now) && h.place.root < root {
                root = h.place.root;
            }
        }
        // The root held stays, unreachable if need be, until it is lost.
        let held = self.place.root;
        if held != self.me && held < root && !self.lost.contains_key(&held) {
            root = held;
        }
        if root == self.me {
            self.routeless_since = None;
            if !self.is_root() {
                // A new number: whoever took this peer for lost takes it again.
                self.own_seq = self.own_seq.wrapping_add(1);
                self.next_refresh = now + self.refresh;
                self.last_number = now;
            }
            self.want = None;
            self.place = Place {
                root,
                seq: self.own_seq,
                dist: 0,
            };
            self.parent = None;
            self.feasible = (self.own_seq, 0);
            return (self.place, self.parent) != before;
        }
        let switching = root != held;
        let (fseq, fdist) = self.feasible;
        // The best feasible route, and the best one at all (see below).
        let mut best: Option<(u8, bool, SocketAddr, u32)> = None;
        let mut any: Option<(u8, bool, SocketAddr, u32)> = None;
        for (n, h) in &self.heard {
            let p = h.place;
            if p.root != root || !self.usable(n, h, now) {
                continue;
            }
            // Fewest links, then the parent held (no switching between equals), then the
            // lowest address.
            let cand = (p.dist, self.parent != Some(*n), *n, p.seq);
            let better = |b: Option<(u8, bool, SocketAddr, u32)>| {
                b.is_none_or(|b| (cand.0, cand.1, cand.2) < (b.0, b.1, b.2))
            };
            if better(any) {
                any = Some(cand);
            }
            let feasible = switching || p.seq > fseq || (p.seq == fseq && p.dist < fdist);
            if feasible && better(best) {
                best = Some(cand);
            }
        }
        match best {
            Some((dist, _, n, seq)) => {
                self.routeless_since = None;
                let dist = dist + 1;
                if switching || seq > self.place.seq {
                    self.fresh_at = now;
                }
                if switching || seq > fseq {
                    self.feasible = (seq, dist);
                } else {
                    self.feasible.1 = fdist.min(dist);
                }
                self.place = Place { root, seq, dist };
                self.parent = Some(n);
                if switching || self.want.is_some_and(|w| seq > w) {
                    self.want = None;
                }
            }
            None => {
                if any.is_none() {
                    self.routeless_since.get_or_insert(now);
                } else {
                    self.routeless_since = None;
                }
                // No feasible route to the root held: unreachable until a newer number,
                // asked for. Meanwhile items still come from the nearest neighbour: no one
                // takes this peer's distance, so a loop through its own subtree carries no
                // route, only repeats, and a neighbour outside it carries the items.
                self.place.dist = MAX_DIST;
                self.parent = any.map(|a| a.2);
                self.want = Some(fseq);
            }
        }
        (self.place, self.parent) != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    const REFRESH: Duration = Duration::from_secs(2);

    fn place(root: RootId, seq: u32, dist: u8) -> Place {
        Place { root, seq, dist }
    }

    /// Peer at port 10, joined at 1000.
    fn peer(now: Instant) -> Rooted {
        Rooted::new(a(10), 1000, REFRESH, now)
    }

    #[test]
    fn alone_a_peer_is_its_own_root_and_numbers_refreshes() {
        let now = Instant::now();
        let mut r = peer(now);
        assert!(r.is_root());
        assert_eq!(r.place(), place((1000, a(10)), 0, 0));
        assert!(!r.tick(now + REFRESH / 2));
        assert!(r.tick(now + REFRESH));
        assert_eq!(r.place().seq, 1);
        assert_eq!(r.next_tick(), now + REFRESH * 2);
    }

    #[test]
    fn a_newer_number_alone_goes_only_to_deeper_neighbours() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        assert_eq!(
            r.heard(a(20), place(root, 7, 3), false, false, now),
            Tell::All
        );
        assert!(!r.number_only(), "a new root and parent: everyone");
        // The parent's next number: only the number changed.
        assert_eq!(
            r.heard(a(20), place(root, 8, 3), false, false, now),
            Tell::All
        );
        assert!(r.number_only());
        // So it goes to the deeper neighbours only, a child or not.
        r.heard(a(22), place(root, 8, 4), false, false, now);
        r.heard(a(23), place(root, 8, 5), false, false, now);
        r.heard(a(24), place(root, 8, 5), true, false, now);
        r.heard(a(25), place((600, a(9)), 8, 1), false, false, now);
        assert_eq!(r.place().dist, 4);
        let told: Vec<bool> = (20..26).map(|i| r.as_near(&a(i))).collect();
        assert_eq!(told, [true, false, true, false, false, false]);
        // A shorter route through another neighbour: a new parent and distance: everyone.
        assert_eq!(
            r.heard(a(21), place(root, 9, 1), false, false, now),
            Tell::All
        );
        assert_eq!(r.parent(), Some(a(21)));
        assert!(!r.number_only());
        // Its parent's link gone, the old one (a number behind) is no feasible route: this
        // peer is unreachable and asks for a newer number, of everyone, the parent it keeps
        // for items too.
        assert!(r.link_down(&a(21), now));
        assert_eq!(r.place().dist, MAX_DIST);
        assert!(r.want.is_some());
        assert!(!r.number_only());
    }

    #[test]
    fn a_parent_that_does_not_deliver_is_left_for_a_while() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 7, 2), false, false, now);
        r.heard(a(21), place(root, 7, 3), false, false, now);
        assert_eq!((r.parent(), r.place().dist), (Some(a(20)), 3));
        // Over a refresh, half the items first from the parent, half grafted (from two
        // neighbours): an honest parent under load stays.
        let mut t = now;
        for i in 0..WATCH_ITEMS / 2 {
            assert!(!r.received(a(20), false, t));
            assert!(!r.missed(&[a(30 + i % 2)], t));
        }
        // Items from anyone else count neither way.
        assert!(!r.received(a(21), false, t));
        t += REFRESH;
        assert!(!r.received(a(20), false, t));
        assert_eq!(r.parent(), Some(a(20)));
        // Most items grafted, all from one neighbour, while the parent still brings some: the
        // neighbour may be announcing items of its own that it pushes to no one, which the
        // parent never had: not held against it.
        for _ in 0..WATCH_ITEMS {
            assert!(!r.missed(&[a(30)], t));
        }
        assert!(!r.received(a(20), false, t));
        t += REFRESH;
        assert!(!r.missed(&[a(30)], t));
        assert_eq!(r.parent(), Some(a(20)));
        // From two, but all at one moment: a queue's spike, not judged yet ...
        for i in 0..WATCH_ITEMS * 2 {
            assert!(!r.missed(&[a(30 + i % 2)], t));
        }
        // ... and once a refresh has passed with nothing from the parent: left. The other
        // route (same number, longer) is not feasible: unreachable until a newer number,
        // which the parent left cannot bring.
        t += REFRESH;
        assert!(r.missed(&[a(31)], t));
        assert_eq!(r.parents_left, 1);
        assert_eq!(r.place().dist, MAX_DIST);
        assert_ne!(r.parent(), Some(a(20)));
        r.heard(a(20), place(root, 8, 2), false, false, t);
        assert_eq!(r.place().dist, MAX_DIST);
        r.heard(a(21), place(root, 8, 3), false, false, t);
        assert_eq!((r.parent(), r.place().dist), (Some(a(21)), 4));
        // Its time up, the old parent is a route again.
        let later = t + REFRESH * SHUN_REFRESHES;
        r.heard(a(20), place(root, 9, 2), false, false, later);
        assert_eq!((r.parent(), r.place().dist), (Some(a(20)), 3));
        // Left again: for twice as long.
        for i in 0..WATCH_ITEMS {
            assert!(!r.missed(&[a(30 + i % 2)], later));
        }
        assert!(r.missed(&[a(30)], later + REFRESH));
        assert_eq!(r.parents_left, 2);
        let again = later + REFRESH + REFRESH * SHUN_REFRESHES;
        r.heard(a(20), place(root, 10, 2), false, false, again);
        assert_ne!(
            r.parent(),
            Some(a(20)),
            "left for twice as long the second time"
        );
    }

    #[test]
    fn a_parent_that_brings_nothing_is_left_even_if_one_neighbour_brings_it_all() {
        // A child whose only neighbour off the tree grafts it everything: the parent brought
        // not one item first over the counts, so there is nothing honest to weigh them
        // against.
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 7, 2), false, false, now);
        r.heard(a(21), place(root, 7, 3), false, false, now);
        for _ in 0..WATCH_ITEMS {
            assert!(!r.missed(&[a(30)], now));
        }
        assert!(r.missed(&[a(30)], now + REFRESH));
        assert_eq!(r.parents_left, 1);
        assert_ne!(r.parent(), Some(a(20)));
    }

    #[test]
    fn a_root_that_is_left_is_reached_through_another_neighbour() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(1), place(root, 7, 0), false, false, now);
        r.heard(a(21), place(root, 7, 1), false, false, now);
        assert_eq!((r.parent(), r.place().dist), (Some(a(1)), 1));
        for i in 0..WATCH_ITEMS {
            assert!(!r.missed(&[a(30 + i % 2)], now));
        }
        assert!(r.missed(&[a(30)], now + REFRESH));
        // The same number through the sibling is longer than what was passed on: unreachable
        // until a newer one, which comes through the sibling.
        assert_eq!((r.place().root, r.place().dist), (root, MAX_DIST));
        r.heard(a(1), place(root, 8, 0), false, false, now);
        assert_eq!(r.place().dist, MAX_DIST);
        r.heard(a(21), place(root, 8, 1), false, false, now);
        assert_eq!((r.parent(), r.place().dist), (Some(a(21)), 2));
    }

    #[test]
    fn detours_from_children_count_against_the_root_only() {
        let now = Instant::now();
        let root = (500, a(1));
        let gap = REFRESH / REFRESH_TIMEOUTS;
        // Under the root, with children 40 and 41 and another neighbour, 50.
        let under_root = || {
            let mut r = peer(now);
            r.heard(a(1), place(root, 7, 0), false, false, now);
            r.heard(a(40), place(root, 7, 2), true, false, now);
            r.heard(a(41), place(root, 7, 2), true, false, now);
            r.heard(a(50), place(root, 7, 3), false, false, now);
            assert_eq!((r.parent(), r.place().dist), (Some(a(1)), 1));
            r
        };
        let mut t = now;
        let mut tick = || {
            t += gap;
            t
        };
        // Detours from a neighbour that is no child, or plain pushes from children, count
        // neither way.
        let mut r = under_root();
        for _ in 0..WATCH_ITEMS * 4 {
            let t = tick();
            assert!(!r.received(a(50), true, t));
            assert!(!r.received(a(40), false, t));
        }
        assert_eq!(r.parents_left, 0);
        // Items the root brought first and detours from two children, half and half: a
        // root that delivers (its pushes late in a queue) stays.
        let mut r = under_root();
        for i in 0..WATCH_ITEMS * 2 {
            let t = tick();
            assert!(!r.received(a(1), false, t));
            assert!(!r.received(a(40 + i % 2), true, t));
        }
        assert_eq!(r.parents_left, 0);
        // Detours from one child only, while the root still brings some: the child may be
        // pushing items of its own as detours.
        let mut r = under_root();
        for i in 0..WATCH_ITEMS * 4 {
            assert!(!r.received(a(40), true, tick()));
            if i % 4 == 0 {
                assert!(!r.received(a(1), false, tick()));
            }
        }
        assert_eq!(r.parents_left, 0);
        // From two children, but all within one graft timeout: one count.
        let mut r = under_root();
        let t = tick();
        for i in 0..WATCH_ITEMS * 4 {
            assert!(!r.received(a(40 + i % 2), true, t));
        }
        assert_eq!(r.watch.counted, 1);
        // Spread out, nothing from the root over a refresh: left.
        let mut r = under_root();
        let mut left = false;
        for i in 0..WATCH_ITEMS * 2 {
            left |= r.received(a(40 + i % 2), true, tick());
        }
        assert!(left);
        assert_eq!(r.parents_left, 1);
        assert_ne!(r.parent(), Some(a(1)));

        // Deeper in the tree a detour is no fault of the parent: it had nothing to bring.
        let mut d = peer(now);
        d.heard(a(20), place(root, 7, 1), false, false, now);
        d.heard(a(40), place(root, 7, 3), true, false, now);
        d.heard(a(41), place(root, 7, 3), true, false, now);
        assert_eq!((d.parent(), d.place().dist), (Some(a(20)), 2));
        for i in 0..WATCH_ITEMS * 4 {
            assert!(!d.received(a(40 + i % 2), true, tick()));
        }
        assert_eq!((d.parent(), d.parents_left), (Some(a(20)), 0));
    }

    #[test]
    fn the_oldest_root_wins_then_the_fewest_links() {
        let now = Instant::now();
        let mut r = peer(now);
        let old = (500, a(1));
        let older = (400, a(2));
        assert_eq!(
            r.heard(a(20), place(old, 7, 3), false, false, now),
            Tell::All
        );
        assert_eq!((r.place(), r.parent()), (place(old, 7, 4), Some(a(20))));
        // A newer root than this peer's own is not taken.
        assert_eq!(
            r.heard(a(21), place((2000, a(3)), 1, 0), false, false, now),
            Tell::Nobody
        );
        // Fewer links to the same root.
        assert_eq!(
            r.heard(a(22), place(old, 7, 1), false, false, now),
            Tell::All
        );
        assert_eq!((r.place(), r.parent()), (place(old, 7, 2), Some(a(22))));
        // An older root, however far.
        assert_eq!(
            r.heard(a(23), place(older, 1, 9), false, false, now),
            Tell::All
        );
        assert_eq!((r.place(), r.parent()), (place(older, 1, 10), Some(a(23))));
        assert!(r.backbone(&a(23)) && !r.backbone(&a(22)));
    }

    #[test]
    fn equal_routes_keep_the_parent_held() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(30), place(root, 1, 2), false, false, now);
        assert_eq!(r.parent(), Some(a(30)));
        assert_eq!(
            r.heard(a(20), place(root, 1, 2), false, false, now),
            Tell::Nobody
        );
        assert_eq!(
            r.parent(),
            Some(a(30)),
            "not switched to an equal, lower address"
        );
    }

    #[test]
    fn a_child_is_no_way_to_the_root_and_is_backbone() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 1, 1), false, false, now);
        assert_eq!(
            r.heard(a(21), place(root, 1, 3), true, false, now),
            Tell::Nobody
        );
        assert!(r.backbone(&a(21)));
        // Even a child claiming fewer links is not taken as parent (poison reverse).
        r.heard(a(21), place(root, 1, 0), true, false, now);
        assert_eq!(r.parent(), Some(a(20)));
    }

    #[test]
    fn a_longer_route_on_the_same_number_is_not_feasible() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 5, 1), false, false, now);
        r.heard(a(21), place(root, 5, 2), false, false, now);
        assert_eq!(r.place(), place(root, 5, 2));
        // The parent goes: the neighbour at distance 2 may be reaching the root through this
        // peer, so its route is refused, and this peer says it is unreachable.
        assert!(r.link_down(&a(20), now));
        assert_eq!(r.place().dist, MAX_DIST);
        // Items still come through it meanwhile (its distance is no route for anyone).
        assert_eq!(r.parent(), Some(a(21)));
        assert!(r.backbone(&a(21)));
        // A newer number is feasible whatever its length.
        assert_eq!(
            r.heard(a(21), place(root, 6, 2), false, false, now),
            Tell::All
        );
        assert_eq!((r.place(), r.parent()), (place(root, 6, 3), Some(a(21))));
    }

    #[test]
    fn a_shorter_route_on_the_same_number_is_taken_after_the_parent_goes() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 5, 2), false, false, now);
        r.heard(a(21), place(root, 5, 2), false, false, now);
        assert_eq!(r.parent(), Some(a(20)));
        assert!(r.link_down(&a(20), now));
        assert_eq!((r.place(), r.parent()), (place(root, 5, 3), Some(a(21))));
    }

    #[test]
    fn a_root_is_not_lost_while_the_parent_link_brings_frames_but_is_once_it_falls_quiet() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 5, 2), false, false, now);
        r.heard(a(21), place((600, a(2)), 1, 1), false, false, now);
        assert_eq!(r.parent(), Some(a(20)));
        let lost_at = now + REFRESH * LOST_REFRESHES;
        // Frames from another neighbour do not count; the parent's do, a refresh long.
        r.heard_from(&a(21), lost_at - Duration::from_millis(10));
        assert_eq!(r.next_tick(), lost_at);
        let last = lost_at - Duration::from_millis(10);
        r.heard_from(&a(20), last);
        assert_eq!(r.next_tick(), last + REFRESH);
        assert!(!r.tick(lost_at));
        assert!(!r.tick(last + REFRESH - Duration::from_millis(1)));
        assert_eq!(r.place().root, root);
        // The parent's link falls quiet: lost.
        assert!(r.tick(last + REFRESH));
        assert_eq!(r.place().root, (600, a(2)));
    }

    #[test]
    fn a_busy_parent_link_holds_a_silent_root_for_a_bounded_while() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 5, 2), false, false, now);
        r.heard(a(21), place((600, a(2)), 1, 1), false, false, now);
        let cap = now + REFRESH * MAX_LOST_REFRESHES;
        let mut t = now;
        while t < cap - REFRESH / 2 {
            t += REFRESH / 4;
            r.heard_from(&a(20), t);
            assert!(!r.tick(t), "lost at {:?}", t - now);
        }
        assert_eq!(r.next_tick(), cap);
        assert!(r.tick(cap));
        assert_eq!(r.place().root, (600, a(2)));
    }

    #[test]
    fn a_peer_with_no_route_loses_the_root_however_busy_the_link_it_hangs_from() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 5, 1), false, false, now);
        r.heard(a(21), place(root, 5, 2), false, false, now);
        assert_eq!(r.place(), place(root, 5, 2));
        // The parent goes; the other route is longer on the same number: unreachable, and
        // items still come from the neighbour left.
        assert!(r.link_down(&a(20), now));
        assert_eq!((r.place().dist, r.parent()), (MAX_DIST, Some(a(21))));
        let lost_at = now + REFRESH * LOST_REFRESHES;
        r.heard_from(&a(21), lost_at - Duration::from_millis(10));
        assert_eq!(r.next_tick(), lost_at);
        assert!(r.tick(lost_at));
        assert!(r.is_root());
    }

    #[test]
    fn a_silent_root_is_lost_and_the_next_oldest_taken() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 5, 1), false, false, now);
        r.heard(a(21), place((600, a(2)), 1, 1), false, false, now);
        assert_eq!(r.place().root, root);
        let lost_at = now + REFRESH * LOST_REFRESHES;
        assert_eq!(r.next_tick(), lost_at);
        assert!(!r.tick(lost_at - Duration::from_millis(1)));
        assert!(r.tick(lost_at));
        assert_eq!(
            (r.place(), r.parent()),
            (place((600, a(2)), 1, 2), Some(a(21)))
        );
        // Stale routes to the lost root, still going round, are refused...
        assert_eq!(
            r.heard(a(20), place(root, 5, 1), false, false, lost_at),
            Tell::Nobody
        );
        assert_eq!(r.place().root, (600, a(2)));
        // ...a newer number brings it back (it was cut off, not gone).
        assert_eq!(
            r.heard(a(20), place(root, 6, 1), false, false, lost_at),
            Tell::All
        );
        assert_eq!(r.place(), place(root, 6, 2));
    }

    #[test]
    fn a_root_no_neighbour_offers_any_route_to_is_lost_after_a_refresh() {
        let now = Instant::now();
        let root = (500, a(1));
        let joined = || {
            let mut r = peer(now);
            r.heard(a(20), place(root, 5, 1), false, false, now);
            r.heard(a(21), place(root, 5, 2), false, false, now);
            assert_eq!((r.place(), r.parent()), (place(root, 5, 2), Some(a(20))));
            r
        };
        let later = now + REFRESH / 2;
        // The parent goes unreachable; the other neighbour's route (same number, longer) is
        // not feasible but is a route: unreachable, and the root lost only after
        // `LOST_REFRESHES` without a newer number.
        let mut r = joined();
        r.heard(a(20), place(root, 5, MAX_DIST), false, true, later);
        assert_eq!((r.place().dist, r.parent()), (MAX_DIST, Some(a(21))));
        assert_eq!(r.next_tick(), now + REFRESH * LOST_REFRESHES);
        // Both go unreachable: no route at all. Lost a refresh later, though its last
        // number is recent.
        let mut r = joined();
        r.heard(a(20), place(root, 5, MAX_DIST), false, true, later);
        r.heard(a(21), place(root, 5, MAX_DIST), false, true, later);
        assert_eq!((r.place().dist, r.parent()), (MAX_DIST, None));
        let lost_at = later + REFRESH * ROUTELESS_REFRESHES;
        assert_eq!(r.next_tick(), lost_at);
        assert!(!r.tick(lost_at - Duration::from_millis(1)));
        assert!(r.tick(lost_at));
        assert!(r.is_root());
        // A route offered again in time keeps it.
        let mut r = joined();
        r.heard(a(20), place(root, 5, MAX_DIST), false, true, later);
        r.heard(a(21), place(root, 5, MAX_DIST), false, true, later);
        r.heard(a(21), place(root, 6, 2), false, false, later + REFRESH / 2);
        assert_eq!((r.place(), r.parent()), (place(root, 6, 3), Some(a(21))));
        assert!(!r.tick(lost_at));
    }

    #[test]
    fn a_growing_number_keeps_the_root() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 5, 1), false, false, now);
        let later = now + REFRESH * 2;
        assert_eq!(
            r.heard(a(20), place(root, 6, 1), false, false, later),
            Tell::All
        );
        assert_eq!(r.next_tick(), later + REFRESH * LOST_REFRESHES);
        assert!(!r.tick(now + REFRESH * LOST_REFRESHES));
        assert_eq!(r.place().root, root);
    }

    #[test]
    fn with_no_older_root_left_a_peer_becomes_root_with_a_new_number() {
        let now = Instant::now();
        let mut r = peer(now);
        let root = (500, a(1));
        r.heard(a(20), place(root, 5, 1), false, false, now);
        assert!(r.tick(now + REFRESH * LOST_REFRESHES));
        assert!(r.is_root());
        assert_eq!(r.place(), place((1000, a(10)), 1, 0));
    }

    #[test]
    fn an_unreachable_peer_asks_and_the_request_goes_up_to_the_root() {
        let now = Instant::now();
        let root = (500, a(1));
        // This peer, unreachable, asks every neighbour.
        let mut r = peer(now);
        r.heard(a(20), place(root, 5, 1), false, false, now);
        r.heard(a(21), place(root, 5, 2), false, false, now);
        assert!(r.link_down(&a(20), now));
        assert_eq!(
            r.announcement(&a(21)),
            (place(root, 5, MAX_DIST), true, true)
        );
        // A peer in the tree passes the request to its parent only, once per number.
        let mut m = peer(now);
        m.heard(a(20), place(root, 5, 1), false, false, now);
        let asked = m.heard(a(21), place(root, 5, MAX_DIST), false, true, now);
        assert_eq!(asked, Tell::Parent);
        assert_eq!(m.announcement(&a(20)), (place(root, 5, 2), true, true));
        assert!(!m.announcement(&a(21)).2);
        assert_eq!(
            m.heard(a(22), place(root, 5, MAX_DIST), false, true, now),
            Tell::Nobody
        );
        // The newer number clears it.
        assert_eq!(
            m.heard(a(20), place(root, 6, 1), false, false, now),
            Tell::All
        );
        assert!(!m.announcement(&a(20)).2);
        // The root sends a newer number at once, then not more than every refresh / 10.
        let mut top = Rooted::new(a(1), 500, REFRESH, now);
        let later = now + REFRESH / 2;
        assert_eq!(
            top.heard(a(20), place(root, 0, 1), true, true, later),
            Tell::All
        );
        assert_eq!(top.place().seq, 1);
        let soon = later + Duration::from_millis(1);
        assert_eq!(
            top.heard(a(20), place(root, 1, 1), true, true, soon),
            Tell::Nobody
        );
        assert_eq!(top.next_tick(), later + REFRESH / REQUESTS_PER_REFRESH);
    }

    #[test]
    fn a_neighbour_is_told_in_bursts_then_at_most_every_gap_and_then_the_latest() {
        let now = Instant::now();
        let mut r = peer(now);
        let gap = REFRESH / TOLD_PER_REFRESH;
        for _ in 0..TOLD_BURST as usize {
            assert!(r.may_tell(a(20), now));
        }
        assert!(r.may_tell(a(21), now));
        assert!(!r.may_tell(a(20), now + gap / 2));
        assert!(!r.may_tell(a(20), now + gap / 2));
        let due = r.next_owed().unwrap();
        assert!(due >= now + gap && due <= now + gap + Duration::from_micros(2));
        assert!(r.owed_due(now + gap / 2).is_empty());
        assert_eq!(r.owed_due(now + gap), vec![a(20)]);
        assert_eq!(r.next_owed(), None);
        // Sustained changes: one a gap.
        assert!(!r.may_tell(a(20), now + gap + gap / 2));
        assert_eq!(r.owed_due(now + gap * 2), vec![a(20)]);
        // A link gone owes nothing, and a new link to it is told at once.
        assert!(!r.may_tell(a(20), now + gap * 2));
        r.link_down(&a(20), now + gap * 2);
        assert_eq!(r.next_owed(), None);
        assert!(r.may_tell(a(20), now + gap * 2));
    }

    #[test]
    fn lost_roots_are_bounded() {
        let now = Instant::now();
        let mut r = peer(now);
        let mut t = now;
        for k in 0..(MAX_LOST as u16 + 10) {
            let root = (1 + u64::from(k), a(100 + k));
            r.heard(a(20), place(root, 1, 0), false, false, t);
            t += REFRESH * LOST_REFRESHES;
            r.tick(t);
        }
        assert!(r.lost.len() <= MAX_LOST);
    }
}
