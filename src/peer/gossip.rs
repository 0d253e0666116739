//! The gossip rule, the items it moves, the bounded message list (ML), the schedule of this
//! peer's own messages, and the items held back for local validation (the API gate).
//!
//! Rule: an item seen for the first time is recorded, delivered, and forwarded to every
//! neighbour except the one it came from (if its TTL allows another hop); an item seen before
//! is ignored and counted. So an item crosses each link at most once in each direction.
//! Application items (types other than the assignment's text) are forwarded only once every
//! local subscriber has validated them (`apps`); until then they wait here.

use crate::idhash::IdHash;
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::texts;
use crate::wire::{Msg, Payload};

/// One gossip item, as this peer holds it. Its payload is shared, so the copies held for each
/// neighbour, the history and the gate cost a reference each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: [u8; 32],
    pub data_type: u16,
    /// The TTL it travels with from here (0 = unlimited).
    pub ttl: u8,
    /// Its origin's nonce (see `Msg::Gossip`).
    pub nonce: u64,
    pub payload: Payload,
}

impl Item {
    pub fn new(data_type: u16, ttl: u8, nonce: u64, payload: Payload) -> Item {
        Item {
            id: texts::message_id(data_type, nonce, &payload),
            data_type,
            ttl,
            nonce,
            payload,
        }
    }

    /// The frame that carries it.
    pub fn msg(&self) -> Msg {
        Msg::Gossip {
            data_type: self.data_type,
            ttl: self.ttl,
            nonce: self.nonce,
            payload: self.payload.clone(),
        }
    }

    /// The frame that carries it to a rooted parent when it came around that parent (see
    /// `Msg::Detour`).
    pub fn detour(&self) -> Msg {
        Msg::Detour {
            data_type: self.data_type,
            ttl: self.ttl,
            nonce: self.nonce,
            payload: self.payload.clone(),
        }
    }
}

/// This peer's own messages: `gossip.count` of them, one every `gossip.interval`, from the
/// moment it has its neighbours.
#[derive(Debug)]
pub struct Generator {
    count: u32,
    interval: Duration,
    generated: u32,
    next: Option<Instant>,
}

impl Generator {
    pub fn new(count: u32, interval: Duration) -> Self {
        Generator {
            count,
            interval: interval.max(Duration::from_millis(1)),
            generated: 0,
            next: None,
        }
    }

    /// The schedule starts now (the first message is due at once).
    pub fn start(&mut self, now: Instant) {
        self.next = Some(now);
    }

    /// At the gossip timer: the number of the message to generate now, and the wait until the
    /// next one (`None` when that was the last). Slots missed while the process was not running
    /// (frozen, overloaded) are skipped, not made up in a burst.
    pub fn due(&mut self, now: Instant) -> Option<(u32, Option<Duration>)> {
        let at = self.next?;
        if now < at || self.generated >= self.count {
            return None;
        }
        let n = self.take_number();
        let mut next = at + self.interval;
        while next <= now {
            next += self.interval;
        }
        self.next = Some(next);
        Some((n, (self.generated < self.count).then(|| next - now)))
    }

    /// The number of the next message generated outside the schedule.
    pub fn take_number(&mut self) -> u32 {
        self.generated += 1;
        self.generated
    }
}

/// How an item reached this peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Pushed by a neighbour as it spread: it goes on to the other neighbours.
    Gossip,
    /// Pushed by a rooted child as having reached it around this peer (`Msg::Detour`): as
    /// `Gossip`, and it counts against this peer's parent when that is the root.
    Detour,
    /// Pulled by catch-up: kept and offered, not pushed on (see `history`).
    Sync,
}

/// Network items waiting for their local validations before being passed on, with the
/// neighbour each came from and how.
#[derive(Debug, Default)]
pub struct Gate {
    held: BTreeMap<[u8; 32], (Item, SocketAddr, Via)>,
}

impl Gate {
    pub fn hold(&mut self, item: Item, from: SocketAddr, via: Via) {
        self.held.insert(item.id, (item, from, via));
    }

    /// Takes the item out, validated or not.
    pub fn release(&mut self, id: &[u8; 32]) -> Option<(Item, SocketAddr, Via)> {
        self.held.remove(id)
    }
}

/// What the ML remembers of one item: where it came from and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `None` for items this peer generated or a local client announced.
    pub from: Option<SocketAddr>,
    /// The neighbours this peer had when it forwarded the item (it went to each of them but
    /// `from`). The overlay shares one list among all items forwarded while its neighbours did
    /// not change, so an entry costs a reference, not a list.
    pub neighbours: Option<Arc<[SocketAddr]>>,
}

impl Seen {
    /// The neighbours the item was sent to.
    pub fn sent_to(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let from = self.from;
        self.neighbours
            .iter()
            .flat_map(|n| n.iter().copied())
            .filter(move |a| Some(*a) != from)
    }
}

/// Message ids seen, with a fixed capacity; the oldest is forgotten first.
///
/// Laid out for the lookup on every frame received: an open-addressed table (linear probing,
/// at most half full) of 16-byte slots, four to a cache line, each with eight bytes of an id
/// (its key) and the sequence number of its entry in `entries` (oldest first), which holds the
/// whole id and what is remembered of the item. Deciding that an item is new, the common case
/// of a lookup in the table, reads one line; a key that matches is confirmed against the
/// entry's whole id, so ids that share a key are still told apart. A slot is found by hashing
/// the key with this list's random SipHash key (ids are SHA-256 digests, so eight of their bytes
/// spread as well as all 32; the hash key keeps a sender from crowding one slot). A table of
/// the whole ids and a separate array of sequence numbers took 36 bytes a slot, not 16, and two
/// cache misses to place an id, not one: under load, placing and finding ids took a tenth of
/// the machine's CPU (`perf record -a` during `bench --mode rooted throughput 100 2500`).
///
/// The ids of the last `RECENT` first receipts are also kept in the list itself: the repeats
/// of an item come within milliseconds of its first receipt, mostly before the next item, so
/// they are found there, in memory fetched with the peer, without a second, dependent cache
/// miss into the table.
#[derive(Debug)]
pub struct MessageList {
    /// The ids of the newest first receipts and their sequence numbers (slot `n % RECENT`
    /// for sequence number `n`; an all-zero id is never looked up here, so the zeros of an
    /// unused slot match nothing).
    recent: [Slot; RECENT],
    recent_seqs: [u32; RECENT],
    /// What each recent id is the id of, when the caller said (`note_payload`): a frame that
    /// shares that payload (the same allocation: the simulator sends one payload to every
    /// peer) has that id, found without hashing the payload again (`known_id`).
    recent_payloads: [Option<(Payload, u16, u64)>; RECENT],
    /// Whether `note_payload` keeps anything: only where payloads are shared among peers
    /// ([`share_payloads`]); over TCP every frame has a payload of its own, and keeping them
    /// would cost each first receipt a reference count and each frame a look for nothing.
    sharing: bool,
    capacity: usize,
    /// Oldest first; `entries[i]` has sequence number `first + i` (wrapping).
    entries: VecDeque<Entry>,
    first: u32,
    /// The table; a power of two long, at least twice the number of entries (or empty while
    /// there are none).
    table: Vec<TableSlot>,
    /// The sequence number of the all-zero id, which cannot sit in the table (it marks a free
    /// slot), if it was seen.
    zero: Option<u32>,
    hasher: IdHash,
    duplicates: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(align(32))]
struct Slot([u8; 32]);

const FREE: Slot = Slot([0; 32]);

/// A slot of the table: an id's key (`key_of`; 0 for a free slot) and the sequence number of
/// its entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C, align(16))]
struct TableSlot {
    key: u64,
    seq: u32,
}

const FREE_SLOT: TableSlot = TableSlot { key: 0, seq: 0 };

/// The eight bytes of an id the table keeps, never 0 (the lowest bit set: which ids share a key
/// does not matter, since a match is confirmed against the whole id).
fn key_of(id: &[u8; 32]) -> u64 {
    let mut k = [0u8; 8];
    k.copy_from_slice(&id[8..16]);
    u64::from_le_bytes(k) | 1
}

/// First receipts remembered in the list itself (see `MessageList`).
const RECENT: usize = 4;

#[derive(Debug)]
struct Entry {
    id: [u8; 32],
    seen: Seen,
}

/// Where an id is: its table slot, the all-zero id's place, or among the recent ones (with
/// its sequence number).
#[derive(Clone, Copy)]
enum Place {
    Slot(usize),
    Zero,
    Recent(u32),
}

thread_local! {
    static SHARING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Message lists made on this thread from now on note payloads (`note_payload`,
/// `known_id`): for the simulator, which hands one payload allocation to every peer.
pub fn share_payloads() {
    SHARING.with(|s| s.set(true));
}

impl MessageList {
    pub fn new(capacity: usize) -> Self {
        MessageList {
            recent: [FREE; RECENT],
            recent_seqs: [0; RECENT],
            recent_payloads: Default::default(),
            sharing: SHARING.with(std::cell::Cell::get),
            capacity: capacity.max(1),
            entries: VecDeque::new(),
            first: 0,
            table: Vec::new(),
            zero: None,
            hasher: IdHash::new(),
            duplicates: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Where an id with key `key` starts its probe.
    fn home(&self, key: u64) -> usize {
        self.hasher.of(key) as usize & (self.table.len() - 1)
    }

    fn find(&self, id: &[u8; 32]) -> Option<Place> {
        if *id == FREE.0 {
            return self.zero.map(|_| Place::Zero);
        }
        for k in 0..RECENT {
            if self.recent[k].0 == *id {
                let seq = self.recent_seqs[k];
                // Still in the list (not forgotten since).
                if (seq.wrapping_sub(self.first) as usize) < self.entries.len() {
                    return Some(Place::Recent(seq));
                }
            }
        }
        self.find_in_table(id)
    }

    /// `find` without looking at the recent ids.
    fn find_in_table(&self, id: &[u8; 32]) -> Option<Place> {
        if *id == FREE.0 {
            return self.zero.map(|_| Place::Zero);
        }
        let key = key_of(id);
        self.probe(key)
            .find(|(_, slot)| slot.key == key && self.entry(slot.seq).id == *id)
            .map(|(i, _)| Place::Slot(i))
    }

    /// The taken slots of `key`'s probe, in order, with their index: from its home slot to
    /// the first free one (none when the table is empty).
    fn probe(&self, key: u64) -> impl Iterator<Item = (usize, TableSlot)> + '_ {
        let mask = self.table.len().wrapping_sub(1);
        let start = if self.table.is_empty() {
            0
        } else {
            self.home(key)
        };
        let mut i = start;
        std::iter::from_fn(move || {
            let slot = *self.table.get(i)?;
            if slot.key == 0 {
                return None;
            }
            let at = i;
            i = (i + 1) & mask;
            Some((at, slot))
        })
    }

    fn entry(&self, seq: u32) -> &Entry {
        &self.entries[seq.wrapping_sub(self.first) as usize]
    }

    /// The position in `entries` of what is at `place`.
    fn position(&self, place: Place) -> usize {
        let seq = match place {
            Place::Slot(i) => self.table[i].seq,
            Place::Zero => self.zero.unwrap_or(self.first),
            Place::Recent(seq) => seq,
        };
        seq.wrapping_sub(self.first) as usize
    }

    /// Is `id` in the list? (`get(id).is_some()`, without reading its entry: one cache miss
    /// fewer on the repeats' path.)
    pub fn contains(&self, id: &[u8; 32]) -> bool {
        self.find(id).is_some()
    }

    pub fn get(&self, id: &[u8; 32]) -> Option<&Seen> {
        self.find(id).map(|p| &self.entries[self.position(p)].seen)
    }

    /// Counts a repeat the caller already found in the list (`get`).
    pub fn count_repeat(&mut self) {
        self.duplicates += 1;
    }

    /// Records a receipt. True on first receipt; a repeat is counted and returns false.
    pub fn first_receipt(&mut self, id: [u8; 32], from: Option<SocketAddr>) -> bool {
        if self.find(&id).is_some() {
            self.duplicates += 1;
            return false;
        }
        while self.entries.len() >= self.capacity {
            self.forget_oldest();
        }
        let seq = self.first.wrapping_add(self.entries.len() as u32);
        if id == FREE.0 {
            self.zero = Some(seq);
        } else {
            if 2 * (self.entries.len() + 1) > self.table.len() {
                self.grow();
            }
            self.place(id, seq);
            self.recent[seq as usize % RECENT] = Slot(id);
            self.recent_seqs[seq as usize % RECENT] = seq;
            self.recent_payloads[seq as usize % RECENT] = None;
        }
        self.entries.push_back(Entry {
            id,
            seen: Seen {
                from,
                neighbours: None,
            },
        });
        true
    }

    /// `id` (just recorded by `first_receipt`) is `texts::message_id(data_type, nonce,
    /// payload)`: a repeat sharing `payload` need not hash it (`known_id`).
    pub fn note_payload(&mut self, id: &[u8; 32], data_type: u16, nonce: u64, payload: &Payload) {
        if !self.sharing {
            return;
        }
        let Some(newest) = self.entries.len().checked_sub(1) else {
            return;
        };
        let k = self.first.wrapping_add(newest as u32) as usize % RECENT;
        if self.recent[k].0 == *id && *id != FREE.0 {
            self.recent_payloads[k] = Some((payload.clone(), data_type, nonce));
        }
    }

    /// `texts::message_id(data_type, nonce, payload)` if `payload` is one of the recent ones
    /// noted (the same allocation, so the same bytes) with the same type and nonce.
    pub fn known_id(&self, data_type: u16, nonce: u64, payload: &Payload) -> Option<[u8; 32]> {
        if !self.sharing {
            return None;
        }
        (0..RECENT).find_map(|k| match &self.recent_payloads[k] {
            Some((p, t, n)) if Arc::ptr_eq(p, payload) && *t == data_type && *n == nonce => {
                Some(self.recent[k].0)
            }
            _ => None,
        })
    }

    /// Is the payload at address `addr` (`Arc::as_ptr`) one of the recent ones noted? If not, a frame
    /// carrying it is likely a first receipt (a cache hint's guess, see [`crate::hint`]).
    pub fn knows_payload(&self, addr: usize) -> bool {
        self.recent_payloads
            .iter()
            .flatten()
            .any(|(p, _, _)| Arc::as_ptr(p) as *const u8 as usize == addr)
    }

    /// Might `id` be in the list? False only if it is not: an id that is may be told apart
    /// from one that merely shares its key only by reading its entry, which this does not
    /// (a guess for cache hints, where a wrong "maybe" costs nothing).
    pub fn may_hold(&self, id: &[u8; 32]) -> bool {
        if *id == FREE.0 || self.recent.iter().any(|r| r.0 == *id) {
            return true;
        }
        let key = key_of(id);
        self.probe(key).any(|(_, slot)| slot.key == key)
    }

    /// A cache hint for a lookup of `id` to come: the table slot it starts at.
    pub fn prefetch_lookup(&self, id: &[u8; 32]) {
        if !self.table.is_empty() {
            crate::hint::prefetch(&self.table[self.home(key_of(id))]);
        }
    }

    /// A cache hint for the first receipt of `id` to come: the table slot its lookup starts
    /// at, and where its entry goes.
    pub fn prefetch_first_receipt(&self, id: &[u8; 32]) {
        self.prefetch_lookup(id);
        self.prefetch_newest();
    }

    /// A cache hint for the next first receipt, whatever its id: the newest entry, beside
    /// which its entry goes.
    pub fn prefetch_newest(&self) {
        if let Some(newest) = self.entries.back() {
            crate::hint::prefetch_lines(newest, 2);
        }
    }

    /// A cache hint for the first receipt `k` receipts from now, when the list is full: the
    /// table slot of the entry it will make the list forget (the `k`-th oldest).
    pub fn prefetch_forget(&self, k: usize) {
        if self.entries.len() < self.capacity || self.table.is_empty() {
            return;
        }
        if let Some(e) = self.entries.get(k) {
            crate::hint::prefetch(&self.table[self.home(key_of(&e.id))]);
        }
    }

    /// Puts `id` in the first free slot of its probe.
    fn place(&mut self, id: [u8; 32], seq: u32) {
        self.place_slot(TableSlot {
            key: key_of(&id),
            seq,
        });
    }

    fn place_slot(&mut self, slot: TableSlot) {
        let mask = self.table.len() - 1;
        let mut i = self.home(slot.key);
        while self.table[i].key != 0 {
            i = (i + 1) & mask;
        }
        self.table[i] = slot;
    }

    /// Drops the oldest entry, closing the gap it leaves in the table (backward shift: each id
    /// after it in its run moves up unless its own probe starts after the gap).
    fn forget_oldest(&mut self) {
        let Some(oldest) = self.entries.front() else {
            return;
        };
        if oldest.id == FREE.0 {
            self.zero = None;
        } else if let Some(mut hole) = self.slot_of_oldest(key_of(&oldest.id)) {
            let mask = self.table.len() - 1;
            let mut j = hole;
            loop {
                j = (j + 1) & mask;
                if self.table[j].key == 0 {
                    break;
                }
                let home = self.home(self.table[j].key);
                if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                    self.table[hole] = self.table[j];
                    hole = j;
                }
            }
            self.table[hole] = FREE_SLOT;
        }
        self.entries.pop_front();
        self.first = self.first.wrapping_add(1);
    }

    /// The slot of the oldest entry, whose key is `key` (found by its sequence number: no entry
    /// is read).
    fn slot_of_oldest(&self, key: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.table.len() - 1;
        let mut i = self.home(key);
        loop {
            let slot = self.table[i];
            if slot.key == key && slot.seq == self.first {
                return Some(i);
            }
            if slot.key == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Doubles the table (at least 16 slots) and places every id again.
    ///
    /// The old table is walked in slot order, and a slot's key is all placing it needs: an id
    /// at home `h` in the old table has its home at `h` or `h` + the old length in the new
    /// one, so the writes go along the new table in two runs. (Placing the entries in their
    /// order wrote to a random slot of a table of megabytes for each, a cache miss each: in
    /// a throughput run, where the lists of 100 peers grow to 90,000 entries, the most costly
    /// line of a first receipt.)
    fn grow(&mut self) {
        let len = (self.table.len() * 2).max(16);
        let old = std::mem::replace(&mut self.table, vec![FREE_SLOT; len]);
        for slot in old.into_iter().filter(|s| s.key != 0) {
            self.place_slot(slot);
        }
    }

    /// The item went to every one of `neighbours` except the one it came from.
    pub fn record_sent(&mut self, id: &[u8; 32], neighbours: &Arc<[SocketAddr]>) {
        if let Some(p) = self.find(id) {
            let pos = self.position(p);
            self.entries[pos].seen.neighbours = Some(neighbours.clone());
        }
    }
}

/// The TTL to forward with, or `None` when this hop was the item's last. 0 means unlimited.
pub fn next_ttl(ttl: u8) -> Option<u8> {
    match ttl {
        0 => Some(0),
        1 => None,
        n => Some(n - 1),
    }
}

/// Where an item goes: every neighbour except the one it came from (`T`: however the caller
/// reaches a neighbour, its link say).
pub fn forward_targets<T>(
    neighbours: impl IntoIterator<Item = (SocketAddr, T)>,
    from: Option<SocketAddr>,
) -> Vec<T> {
    neighbours
        .into_iter()
        .filter(|(n, _)| Some(*n) != from)
        .map(|(_, t)| t)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn a_noted_payload_gives_its_id_for_the_same_allocation_only_while_recent() {
        let mut plain = MessageList::new(100);
        let payload = Payload::from(&b"hello"[..]);
        let id = texts::message_id(0, 7, &payload);
        plain.first_receipt(id, None);
        plain.note_payload(&id, 0, 7, &payload);
        assert_eq!(plain.known_id(0, 7, &payload), None, "not sharing payloads");
        share_payloads();
        let mut ml = MessageList::new(100);
        let payload = Payload::from(&b"hello"[..]);
        let id = texts::message_id(0, 7, &payload);
        ml.first_receipt(id, None);
        ml.note_payload(&id, 0, 7, &payload);
        assert_eq!(ml.known_id(0, 7, &payload.clone()), Some(id));
        // The same bytes elsewhere, another type or nonce: hashed as usual.
        assert_eq!(ml.known_id(0, 7, &Payload::from(&b"hello"[..])), None);
        assert_eq!(ml.known_id(1, 7, &payload), None);
        assert_eq!(ml.known_id(0, 8, &payload), None);
        // A note that does not name the newest receipt is ignored.
        let other = Payload::from(&b"other"[..]);
        ml.note_payload(&[9; 32], 0, 0, &other);
        assert_eq!(ml.known_id(0, 0, &other), None);
        for k in 1..=RECENT as u8 {
            ml.first_receipt([k; 32], None);
        }
        assert_eq!(ml.known_id(0, 7, &payload), None);
    }

    #[test]
    fn first_receipt_then_duplicates() {
        let mut ml = MessageList::new(10);
        assert!(ml.first_receipt([1; 32], Some(a(1))));
        assert!(!ml.first_receipt([1; 32], Some(a(2))));
        assert!(!ml.first_receipt([1; 32], None));
        assert_eq!(ml.duplicates(), 2);
        assert_eq!(ml.get(&[1; 32]).unwrap().from, Some(a(1)));
        let ns: Arc<[SocketAddr]> = vec![a(1), a(2), a(3)].into();
        ml.record_sent(&[1; 32], &ns);
        let sent: Vec<_> = ml.get(&[1; 32]).unwrap().sent_to().collect();
        assert_eq!(sent, vec![a(2), a(3)], "every neighbour but the sender");
    }

    #[test]
    fn a_full_list_keeps_exactly_its_newest_entries() {
        let id = |n: u32| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_le_bytes());
            id[31] = 7;
            id
        };
        let mut ml = MessageList::new(100);
        assert!(
            ml.first_receipt([0; 32], None),
            "the all-zero id is an id like any other"
        );
        assert!(!ml.first_receipt([0; 32], None));
        for n in 0..1000u32 {
            assert!(ml.first_receipt(id(n), None));
            assert!(!ml.first_receipt(id(n), None));
            let oldest = n.saturating_sub(99);
            if n % 97 == 0 {
                for k in 0..=n {
                    assert_eq!(ml.get(&id(k)).is_some(), k >= oldest, "{k} after {n}");
                }
            }
        }
        assert!(ml.get(&[0; 32]).is_none(), "forgotten in its turn");
        assert_eq!(ml.len(), 100);
        assert_eq!(ml.duplicates(), 1001);
    }

    #[test]
    fn ids_that_share_the_tables_key_are_told_apart() {
        // The table keeps bytes 8..16 of an id; these differ elsewhere only.
        let id = |n: u8| {
            let mut id = [5u8; 32];
            id[0] = n;
            id
        };
        let mut ml = MessageList::new(8);
        for n in 1..=12 {
            assert!(ml.first_receipt(id(n), Some(a(u16::from(n)))));
        }
        // Ids 9 to 12 are the recent ones; 5 to 8 are found in the table, where all twelve
        // went to the same slot's run.
        for n in 5..=8 {
            assert_eq!(ml.get(&id(n)).unwrap().from, Some(a(u16::from(n))));
            assert!(!ml.first_receipt(id(n), None));
        }
        for n in (1..=4).chain([13]) {
            assert!(ml.get(&id(n)).is_none(), "{n}: forgotten or never seen");
        }
        assert_eq!(ml.len(), 8);
    }

    #[test]
    fn may_hold_is_never_wrong_about_an_id_held_and_rarely_about_one_not() {
        let id = |n: u32| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_le_bytes());
            id[8..12].copy_from_slice(&n.wrapping_mul(0x9e37_79b9).to_le_bytes());
            id
        };
        let mut ml = MessageList::new(1000);
        assert!(!ml.may_hold(&id(1)), "an empty list holds nothing");
        for n in 0..3000u32 {
            ml.first_receipt(id(n), None);
        }
        for n in 0..3000u32 {
            if ml.contains(&id(n)) {
                assert!(ml.may_hold(&id(n)), "{n} is held");
            }
        }
        // Ids never seen (keys of their own): not held, and said so.
        let unseen = (10_000..11_000u32).filter(|&n| ml.may_hold(&id(n))).count();
        assert_eq!(unseen, 0);
        // One sharing a held id's key but not its other bytes: a "maybe", told apart only by
        // the full lookup.
        let mut twin = id(2500);
        twin[0] ^= 1;
        assert!(ml.may_hold(&twin));
        assert!(!ml.contains(&twin));
    }

    #[test]
    fn an_id_forgotten_while_still_among_the_recent_ones_is_new_again() {
        let mut ml = MessageList::new(2);
        for i in 1..=3u8 {
            assert!(ml.first_receipt([i; 32], None));
        }
        assert!(
            ml.get(&[1; 32]).is_none(),
            "forgotten, though among the last four"
        );
        assert!(ml.first_receipt([1; 32], Some(a(9))));
        assert_eq!(ml.get(&[1; 32]).unwrap().from, Some(a(9)));
        assert!(ml.get(&[2; 32]).is_none());
        assert!(!ml.first_receipt([3; 32], None));
    }

    #[test]
    fn the_list_is_bounded_oldest_first() {
        let mut ml = MessageList::new(3);
        for i in 0..5u8 {
            assert!(ml.first_receipt([i; 32], None));
        }
        assert_eq!(ml.len(), 3);
        assert!(ml.get(&[0; 32]).is_none());
        assert!(ml.get(&[1; 32]).is_none());
        assert!(ml.get(&[4; 32]).is_some());
    }

    #[test]
    fn never_back_to_the_sender() {
        let ns = [(a(1), 1), (a(2), 2), (a(3), 3)];
        assert_eq!(forward_targets(ns, Some(a(2))), vec![1, 3]);
        assert_eq!(forward_targets(ns, None), vec![1, 2, 3]);
    }

    #[test]
    fn ttl_counts_hops() {
        assert_eq!(next_ttl(0), Some(0));
        assert_eq!(next_ttl(1), None);
        assert_eq!(next_ttl(4), Some(3));
    }
}
