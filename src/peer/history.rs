//! Catch-up (anti-entropy): the items a peer keeps for others who missed them, and the
//! comparison two neighbours run to find what one lacks.
//!
//! The history holds the last `gossip.history` items this peer passed on (at most
//! `gossip.history_age` old and `gossip.history_bytes` of payload in all), and notes the ids
//! of items it received but does not pass on, sorted into [`BUCKETS`] buckets by the first byte of
//! their id. Each bucket keeps a count and a fingerprint (the wrapping sum of its items' short
//! ids), updated as items come and go, so a digest of the whole history is 256 small pairs and
//! costs nothing to build. One round, every `gossip.sync_interval`, with one random neighbour:
//!
//! 1. A sends its digest (`SyncDigest`).
//! 2. B compares it with its own and answers with the short ids of its items in the buckets that
//!    differ (`SyncIds`, at most [`MAX_SYNC_IDS`]), starting at a random bucket so that a
//!    capped answer covers other buckets next time. Equal digests get no answer.
//! 3. A asks for those it lacks (`SyncWant`) and remembers what it asked for.
//! 4. B sends them (`SyncItem`), at most `gossip.sync_bytes` per round and neighbour.
//!
//! Only what was asked for is accepted, so a neighbour cannot use catch-up to push items past
//! the gossip rate limit. Items received this way are recorded and delivered like any other
//! first receipt but not flooded onwards: the neighbours that lack them pull them in their own
//! rounds (flooding old items would meet repeats on every link that had them).
//!
//! A short id is the first eight bytes of the id (a SHA-256 digest). Two items whose ids share
//! them cost each other catch-up, nothing else; making such a pair takes about 2^32 hashes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::peer::gossip::Item;
use crate::wire::Payload;
pub use crate::wire::Summary;

/// Buckets of a digest: the first byte of an id.
pub const BUCKETS: usize = 256;
/// An item enters the digest, and answers, only once held this long: items still spreading
/// (a push takes milliseconds, a graft in tree mode a fraction of a second) are not pulled
/// by catch-up ahead of gossip, which would stop them where they were pulled (caught-up items
/// are not pushed on).
pub const SETTLE: Duration = Duration::from_secs(1);
/// The most short ids in one answer: 32 KiB.
pub const MAX_SYNC_IDS: usize = 4096;

/// The first eight bytes of an id, as catch-up names items.
pub fn short_id(id: &[u8; 32]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id[..8]);
    u64::from_be_bytes(b)
}

fn bucket_of(short: u64) -> usize {
    (short >> 56) as usize
}

/// What the history keeps of an item it offers to others.
#[derive(Debug, Clone)]
struct Offer {
    data_type: u16,
    /// The TTL it travels with from here.
    ttl: u8,
    nonce: u64,
    payload: Payload,
}

#[derive(Debug)]
struct Held {
    at: Instant,
    id: [u8; 32],
    data: Offer,
    /// False for an item this peer knows but does not pass on (its TTL ended here, or it is
    /// waiting for or failed local validation): it counts in the digest, so a neighbour that
    /// has it is not asked for it, but nobody is sent it from here. It is still shown to a
    /// local client that subscribes to its type later.
    offered: bool,
}

impl Held {
    fn item(&self) -> Item {
        Item {
            id: self.id,
            data_type: self.data.data_type,
            ttl: self.data.ttl,
            nonce: self.data.nonce,
            payload: self.data.payload.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    summary: Summary,
    /// Oldest first.
    items: VecDeque<Held>,
    /// The short id of each of `items`, in the same order: what a look-up by short id walks
    /// (8 bytes an item, where `Held` is 88: every first receipt asks whether its id is
    /// held, and a bucket holds about `gossip.history` / [`BUCKETS`] items).
    shorts: VecDeque<u64>,
    /// The first `settled` items are the settled ones, counted in the digest (held for
    /// [`SETTLE`] already): items enter a bucket and settle in the order they arrived, and
    /// leave it oldest first.
    settled: usize,
}

#[derive(Debug)]
pub struct History {
    buckets: Vec<Bucket>,
    /// The bucket of every item held, oldest first: the oldest item overall is at the front
    /// of the bucket named here.
    order: VecDeque<u8>,
    /// Payload bytes held.
    bytes: usize,
    max_items: usize,
    max_age: Duration,
    max_bytes: usize,
    settle: Duration,
    /// Items not yet in the digest, oldest first: when each came, its short id, and its number
    /// in the order items came (`pushed` counts them).
    unsettled: VecDeque<(Instant, u64, u64)>,
    /// Items ever held, and items ever dropped by the bounds. Items leave oldest first, so the
    /// ones still held are those numbered `dropped` and later: `settle` knows an item is gone
    /// without reading it (a cache miss per item in a large simulation).
    pushed: u64,
    dropped: u64,
}

impl History {
    pub fn new(max_items: usize, max_age: Duration, max_bytes: usize) -> Self {
        History {
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
            order: VecDeque::new(),
            bytes: 0,
            max_items,
            max_age,
            max_bytes,
            settle: SETTLE,
            unsettled: VecDeque::new(),
            pushed: 0,
            dropped: 0,
        }
    }

    /// How long an item waits before it counts in the digest (tests use zero).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Items held for the settling time enter the digest. Called before a digest is built or
    /// compared.
    pub fn settle(&mut self, now: Instant) {
        while let Some(&(at, short, number)) = self.unsettled.front() {
            if now.saturating_duration_since(at) < self.settle {
                break;
            }
            self.unsettled.pop_front();
            if number < self.dropped {
                // The bounds took it before it settled.
                continue;
            }
            // Still held, so the oldest unsettled item of its bucket (items come, settle and
            // leave a bucket in the order they came).
            let bucket = &mut self.buckets[bucket_of(short)];
            debug_assert!(bucket
                .items
                .get(bucket.settled)
                .is_some_and(|h| short_id(&h.id) == short));
            bucket.settled += 1;
            bucket.summary.count += 1;
            bucket.summary.sum = bucket.summary.sum.wrapping_add(short);
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Payload bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Notes an item received for the first time (the caller has checked it is new), without
    /// offering it yet.
    pub fn know(&mut self, item: &Item, now: Instant) {
        if !self.knows_short(short_id(&item.id)) {
            self.push(item, false, now);
        }
    }

    /// Offers `item` to neighbours that lack it: this peer passes it on. Kept whether or not
    /// it was known before.
    pub fn offer(&mut self, item: &Item, now: Instant) {
        let short = short_id(&item.id);
        let bucket = &mut self.buckets[bucket_of(short)];
        // Usually the item was noted (`know`) just before it is offered: the newest of its
        // bucket, found without a walk along the bucket.
        let newest = bucket.items.len().checked_sub(1);
        let held = newest
            .filter(|&k| bucket.items[k].id == item.id)
            .or_else(|| bucket.items.iter().position(|h| h.id == item.id));
        if let Some(k) = held {
            let held = &mut bucket.items[k];
            held.offered = true;
            // With the TTL it goes on with from here.
            held.data.ttl = item.ttl;
            return;
        }
        self.push(item, true, now);
    }

    fn push(&mut self, item: &Item, offered: bool, now: Instant) {
        if self.max_items == 0 {
            return;
        }
        let short = short_id(&item.id);
        let b = bucket_of(short);
        self.bytes += item.payload.len();
        let bucket = &mut self.buckets[b];
        self.unsettled.push_back((now, short, self.pushed));
        self.pushed += 1;
        bucket.shorts.push_back(short);
        debug_assert_eq!(bucket.shorts.len(), bucket.items.len() + 1);
        bucket.items.push_back(Held {
            at: now,
            id: item.id,
            data: Offer {
                data_type: item.data_type,
                ttl: item.ttl,
                nonce: item.nonce,
                payload: item.payload.clone(),
            },
            offered,
        });
        self.order.push_back(b as u8);
        // Also keeps `unsettled` to the items of the last `settle`, when nothing asks for a
        // digest (catch-up off).
        self.settle(now);
        self.bound();
    }

    /// The newest `max` items of `data_type`, oldest first (for a local client that has just
    /// subscribed).
    pub fn recent_of_type(&self, data_type: u16, max: usize) -> Vec<Item> {
        let mut found: Vec<(Instant, Item)> = self
            .buckets
            .iter()
            .flat_map(|b| b.items.iter())
            .filter(|h| h.data.data_type == data_type)
            .map(|h| (h.at, h.item()))
            .collect();
        found.sort_by_key(|(at, _)| *at);
        let skip = found.len().saturating_sub(max);
        found.into_iter().skip(skip).map(|(_, i)| i).collect()
    }

    fn bound(&mut self) {
        while self.order.len() > self.max_items || self.bytes > self.max_bytes {
            self.pop_oldest();
        }
    }

    /// Forgets items older than the age bound.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&b) = self.order.front() {
            let oldest = self.buckets[b as usize].items.front().map(|h| h.at);
            match oldest {
                Some(at) if now.saturating_duration_since(at) > self.max_age => self.pop_oldest(),
                _ => break,
            }
        }
    }

    fn pop_oldest(&mut self) {
        let Some(b) = self.order.pop_front() else {
            return;
        };
        let bucket = &mut self.buckets[b as usize];
        if let Some(held) = bucket.items.pop_front() {
            bucket.shorts.pop_front();
            self.dropped += 1;
            // The oldest of its bucket: settled if any is.
            if bucket.settled > 0 {
                bucket.settled -= 1;
                bucket.summary.count -= 1;
                bucket.summary.sum = bucket.summary.sum.wrapping_sub(short_id(&held.id));
            }
            self.bytes -= held.data.payload.len();
        }
    }

    /// The digest: one summary per bucket.
    pub fn digest(&self) -> Vec<Summary> {
        self.buckets.iter().map(|b| b.summary).collect()
    }

    /// Step 2: the short ids of what this side offers in the buckets where `theirs` differs,
    /// bucket by bucket from `start`, as many whole buckets as fit in [`MAX_SYNC_IDS`].
    /// Empty when the digests agree (or `theirs` is not a digest of [`BUCKETS`] buckets).
    pub fn answer(&self, theirs: &[Summary], start: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        if theirs.len() != BUCKETS {
            return ids;
        }
        for k in 0..BUCKETS {
            let b = (start + k) % BUCKETS;
            let bucket = &self.buckets[b];
            if bucket.summary == theirs[b] {
                continue;
            }
            let offered = || {
                // The settled ones are the first `settled`.
                bucket
                    .items
                    .iter()
                    .take(bucket.settled)
                    .filter(|h| h.offered)
                    .map(|h| short_id(&h.id))
            };
            let n = offered().count();
            if ids.len() + n > MAX_SYNC_IDS {
                if ids.is_empty() {
                    // One bucket larger than an answer: its newest items.
                    ids.extend(offered().skip(n - MAX_SYNC_IDS));
                }
                break;
            }
            ids.extend(offered());
        }
        ids
    }

    /// Step 3: which of `theirs` this side does not know.
    pub fn lacking(&self, theirs: &[u64]) -> Vec<u64> {
        theirs
            .iter()
            .copied()
            .filter(|&s| !self.knows_short(s))
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect()
    }

    /// A cache hint for the first receipt of `id` to come: its bucket's head. Then, once that
    /// is in the cache, [`History::prefetch_column`].
    pub fn prefetch_bucket(&self, id: &[u8; 32]) {
        crate::hint::prefetch(&self.buckets[bucket_of(short_id(id))]);
    }

    /// A cache hint, after [`History::prefetch_bucket`]: the short ids `know` will walk, and
    /// the newest item, beside which the new one goes.
    pub fn prefetch_column(&self, id: &[u8; 32]) {
        let bucket = &self.buckets[bucket_of(short_id(id))];
        let (a, b) = bucket.shorts.as_slices();
        for part in [a, b] {
            crate::hint::prefetch_lines(part.as_ptr(), (part.len() * 8).div_ceil(64));
        }
        if let Some(newest) = bucket.items.back() {
            crate::hint::prefetch_lines(newest, 2);
        }
    }

    /// A cache hint for the push `k` pushes from now, when the history is full: the item it
    /// will make the history drop (the `k`-th oldest, at the front of its bucket unless that
    /// bucket also holds an older one of the next `k`). With `payload`, once that item is in
    /// the cache: its payload's count, which the drop decrements.
    pub fn prefetch_leaving(&self, k: usize, payload: bool) {
        if self.order.len() < self.max_items {
            return;
        }
        let Some(oldest) = self
            .order
            .get(k)
            .and_then(|&b| self.buckets[b as usize].items.front())
        else {
            return;
        };
        if payload {
            // The counts sit just before the bytes.
            let bytes = oldest.data.payload.as_ptr();
            crate::hint::prefetch(bytes.wrapping_sub(16));
        } else {
            crate::hint::prefetch_lines(oldest, 2);
        }
    }

    pub fn knows_short(&self, short: u64) -> bool {
        self.buckets[bucket_of(short)].shorts.contains(&short)
    }

    /// The first item held with short id `short`.
    fn held(&self, short: u64) -> Option<&Held> {
        let bucket = &self.buckets[bucket_of(short)];
        let k = bucket.shorts.iter().position(|&s| s == short)?;
        bucket.items.get(k)
    }

    /// The items named (short ids) that this side offers, in the order named: what went out
    /// on a link that is closing, to send again on another.
    pub fn offered(&self, shorts: &[u64]) -> Vec<Item> {
        shorts
            .iter()
            .filter_map(|&s| {
                let bucket = &self.buckets[bucket_of(s)];
                let mut held = bucket.shorts.iter().zip(&bucket.items);
                held.find(|(&x, h)| x == s && h.offered)
                    .map(|(_, h)| h.item())
            })
            .collect()
    }

    /// Step 4: the items asked for that this side offers, oldest first, until `max_bytes` of
    /// payload (at least one item, so an item larger than the bound still goes).
    pub fn serve(&self, wanted: &[u64], max_bytes: usize) -> Vec<Item> {
        let mut found: Vec<(Instant, Item)> = Vec::new();
        for &s in wanted {
            if let Some(h) = self.held(s).filter(|h| h.offered) {
                found.push((h.at, h.item()));
            }
        }
        found.sort_by_key(|(at, _)| *at);
        let mut bytes = 0;
        let mut items = Vec::new();
        for (_, item) in found {
            if !items.is_empty() && bytes + item.payload.len() > max_bytes {
                break;
            }
            bytes += item.payload.len();
            items.push(item);
        }
        items
    }
}

/// The catch-up state of one neighbour link.
#[derive(Debug, Default)]
pub struct CatchUp {
    /// Short ids asked of this neighbour and not yet received, with when: items it sends by
    /// catch-up that are not here are metered like gossip (see `PeerCore`).
    pub wanted: BTreeMap<u64, Instant>,
    /// When we last answered its digest.
    pub answered: Option<Instant>,
    /// The current serving window (one `sync_interval` long) and the payload bytes sent to it
    /// in that window.
    pub window: Option<Instant>,
    pub served: usize,
}

impl CatchUp {
    /// May we answer a digest from this neighbour now? At most one every half interval: an
    /// honest neighbour sends one per interval at most (its rounds pick among its neighbours).
    pub fn may_answer(&mut self, now: Instant, interval: Duration) -> bool {
        if self
            .answered
            .is_some_and(|at| now.saturating_duration_since(at) < interval / 2)
        {
            return false;
        }
        self.answered = Some(now);
        true
    }

    /// Step 3 on our side: of the ids `lacking` (that we do not know), those to ask for now.
    /// What was asked for long ago and never came is forgotten; what is still awaited is not
    /// asked again; at most twice an answer's worth is awaited at once.
    pub fn ask(&mut self, lacking: Vec<u64>, now: Instant, interval: Duration) -> Vec<u64> {
        let stale = interval * 4;
        self.wanted
            .retain(|_, at| now.saturating_duration_since(*at) < stale);
        let room = (2 * MAX_SYNC_IDS).saturating_sub(self.wanted.len());
        let ask: Vec<u64> = lacking
            .into_iter()
            .filter(|s| !self.wanted.contains_key(s))
            .take(room)
            .collect();
        for &s in &ask {
            self.wanted.insert(s, now);
        }
        ask
    }

    /// Payload bytes we may still send this neighbour in the current window.
    pub fn budget(&mut self, now: Instant, interval: Duration, per_window: usize) -> usize {
        if self
            .window
            .is_none_or(|at| now.saturating_duration_since(at) >= interval)
        {
            self.window = Some(now);
            self.served = 0;
        }
        per_window.saturating_sub(self.served)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::texts::TEXT_DATA_TYPE;

    fn item(n: u32) -> Item {
        Item::new(
            TEXT_DATA_TYPE,
            0,
            0,
            format!("item {n}").into_bytes().into(),
        )
    }

    fn history() -> History {
        History::new(10_000, Duration::from_secs(600), 1 << 20).with_settle(Duration::ZERO)
    }

    /// One catch-up round from `a`'s side: what `a` ends up asking `b` for.
    fn round(a: &mut History, b: &mut History) -> Vec<Item> {
        let now = Instant::now() + Duration::from_secs(1000);
        a.settle(now);
        b.settle(now);
        let ids = b.answer(&a.digest(), 0);
        let want = a.lacking(&ids);
        b.serve(&want, 1 << 20)
    }

    #[test]
    fn equal_histories_exchange_only_the_digest() {
        let (mut a, mut b) = (history(), history());
        let t = Instant::now();
        for n in 0..100 {
            a.offer(&item(n), t);
            b.offer(&item(n), t);
        }
        assert!(b.answer(&a.digest(), 0).is_empty());
    }

    #[test]
    fn a_late_joiner_gets_exactly_what_it_lacks() {
        let (mut a, mut b) = (history(), history());
        let t = Instant::now();
        for n in 0..500 {
            b.offer(&item(n), t);
            if n % 7 == 0 {
                a.offer(&item(n), t);
            }
        }
        let got = round(&mut a, &mut b);
        assert_eq!(got.len(), 500 - 500usize.div_ceil(7));
        for i in &got {
            assert!(!a.knows_short(short_id(&i.id)));
            a.offer(i, t);
        }
        assert_eq!(a.digest(), b.digest());
        assert!(round(&mut a, &mut b).is_empty());
    }

    #[test]
    fn an_answer_is_bounded_and_later_rounds_cover_the_rest() {
        let (mut a, mut b) = (history(), history());
        let t = Instant::now();
        for n in 0..3 * MAX_SYNC_IDS as u32 {
            b.offer(&item(n), t);
        }
        let mut rounds = 0;
        while a.digest() != b.digest() {
            let ids = b.answer(&a.digest(), rounds * 97);
            assert!(!ids.is_empty() && ids.len() <= MAX_SYNC_IDS);
            for i in b.serve(&a.lacking(&ids), usize::MAX) {
                a.offer(&i, t);
            }
            rounds += 1;
            assert!(rounds < 10);
        }
        assert_eq!(a.len(), b.len());
    }

    #[test]
    fn served_bytes_are_bounded_oldest_first() {
        let mut b = history();
        let t = Instant::now();
        let mut wanted = Vec::new();
        for n in 0..10u32 {
            let i = item(n);
            wanted.push(short_id(&i.id));
            b.offer(&i, t + Duration::from_millis(n as u64));
        }
        let one = item(0).payload.len();
        let got = b.serve(&wanted, 3 * one);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], item(0));
        assert_eq!(b.serve(&wanted, 0).len(), 1, "one item always goes");
    }

    #[test]
    fn bounded_by_count_bytes_and_age_and_the_digest_follows() {
        let t = Instant::now();
        let mut h = History::new(5, Duration::from_secs(60), 1 << 20).with_settle(Duration::ZERO);
        for n in 0..8 {
            h.offer(&item(n), t);
        }
        assert_eq!(h.len(), 5);
        assert!(!h.knows_short(short_id(&item(2).id)));
        assert!(h.knows_short(short_id(&item(3).id)));
        let total: u32 = h.digest().iter().map(|s| s.count).sum();
        assert_eq!(total, 5);

        let mut h = History::new(100, Duration::from_secs(60), 3 * item(0).payload.len())
            .with_settle(Duration::ZERO);
        for n in 0..5 {
            h.offer(&item(n), t);
        }
        assert_eq!(h.len(), 3);
        assert!(h.bytes() <= 3 * item(0).payload.len());

        let mut h = History::new(100, Duration::from_secs(60), 1 << 20).with_settle(Duration::ZERO);
        h.offer(&item(0), t);
        h.offer(&item(1), t + Duration::from_secs(30));
        h.expire(t + Duration::from_secs(61));
        assert_eq!(h.len(), 1);
        assert!(h.knows_short(short_id(&item(1).id)));
        let empty = History::new(100, Duration::from_secs(60), 1 << 20);
        h.expire(t + Duration::from_secs(100));
        assert_eq!(h.digest(), empty.digest());
    }

    #[test]
    fn items_dropped_by_the_bounds_before_they_settle_leave_the_digest_exact() {
        let t = Instant::now();
        let mut h = History::new(6, Duration::from_secs(60), 1 << 20);
        // Held 1 s before they count; the bound takes the oldest ones before that.
        for n in 0..10u32 {
            h.offer(&item(n), t + Duration::from_millis(n as u64));
        }
        h.settle(t + Duration::from_secs(2));
        let total: u32 = h.digest().iter().map(|s| s.count).sum();
        assert_eq!(total, 6);
        let mut again = History::new(6, Duration::from_secs(60), 1 << 20);
        for n in 4..10u32 {
            again.offer(&item(n), t);
        }
        again.settle(t + Duration::from_secs(2));
        assert_eq!(h.digest(), again.digest());
        // An item known, then offered after others arrived, is offered once, not twice.
        let mut k = history();
        k.know(&item(1), t);
        k.offer(&item(2), t);
        k.offer(&item(1), t);
        assert_eq!(k.len(), 2);
        assert_eq!(k.serve(&[short_id(&item(1).id)], 1 << 20), vec![item(1)]);
    }

    #[test]
    fn known_items_count_in_the_digest_but_are_not_offered() {
        let (mut a, mut b) = (history(), history());
        let t = Instant::now();
        let i = item(1);
        a.know(&i, t);
        b.know(&i, t);
        assert_eq!(a.digest(), b.digest(), "neither asks the other for it");
        let mut c = history();
        assert!(round(&mut c, &mut b).is_empty(), "not offered: not listed");
        b.offer(&i, t);
        assert_eq!(b.len(), 1, "offering a known item does not add it twice");
        assert_eq!(round(&mut c, &mut b), vec![i]);
    }

    #[test]
    fn items_still_spreading_are_not_in_the_digest_or_answers_until_they_settle() {
        let t = Instant::now();
        let mut b = History::new(100, Duration::from_secs(60), 1 << 20);
        let a = History::new(100, Duration::from_secs(60), 1 << 20);
        b.offer(&item(1), t);
        b.settle(t + SETTLE / 2);
        assert_eq!(b.digest(), a.digest(), "not yet");
        assert!(b.answer(&a.digest(), 0).is_empty());
        b.settle(t + SETTLE);
        assert_ne!(b.digest(), a.digest());
        assert_eq!(b.answer(&a.digest(), 0), vec![short_id(&item(1).id)]);
        // Evicted before it settled: nothing to take out of the digest.
        let mut c = History::new(1, Duration::from_secs(60), 1 << 20);
        c.offer(&item(1), t);
        c.offer(&item(2), t);
        c.settle(t + SETTLE);
        assert_eq!(c.digest().iter().map(|s| s.count).sum::<u32>(), 1);
    }

    #[test]
    fn a_digest_of_the_wrong_shape_gets_no_answer() {
        let mut b = history();
        b.offer(&item(1), Instant::now());
        assert!(b.answer(&[Summary::default(); 3], 0).is_empty());
    }
}
