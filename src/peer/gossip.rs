//! The gossip rule, the items it moves, the bounded message list (ML), the schedule of this
//! peer's own messages, and the items held back for local validation (the API gate).
//!
//! Rule: an item seen for the first time is recorded, delivered, and forwarded to every
//! neighbour except the one it came from (if its TTL allows another hop); an item seen before
//! is ignored and counted. So an item crosses each link at most once in each direction.
//! Application items (types other than the assignment's text) are forwarded only once every
//! local subscriber has validated them (`apps`); until then they wait here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::texts;
use crate::wire::{Msg, Payload};

/// One gossip item, as this peer holds it. Its payload is shared, so the copies held for each
/// neighbour, the young-link memory and the gate cost a reference each.
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

/// A message id as a map key. Ids are SHA-256 digests, so their first eight bytes, hashed with
/// the map's random SipHash key, spread as well as all 32 at a quarter of the hashing (this
/// lookup runs for every frame received). Equality still compares all 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key([u8; 32]);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut head = [0u8; 8];
        head.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(head));
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
#[derive(Debug)]
pub struct MessageList {
    capacity: usize,
    entries: HashMap<Key, Seen>,
    order: VecDeque<[u8; 32]>,
    duplicates: u64,
}

impl MessageList {
    pub fn new(capacity: usize) -> Self {
        MessageList {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
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

    pub fn get(&self, id: &[u8; 32]) -> Option<&Seen> {
        self.entries.get(&Key(*id))
    }

    /// Counts a repeat the caller already found in the list (`get`).
    pub fn count_repeat(&mut self) {
        self.duplicates += 1;
    }

    /// Records a receipt. True on first receipt; a repeat is counted and returns false.
    pub fn first_receipt(&mut self, id: [u8; 32], from: Option<SocketAddr>) -> bool {
        if self.entries.contains_key(&Key(id)) {
            self.duplicates += 1;
            return false;
        }
        while self.entries.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.entries.remove(&Key(old));
                }
                None => break,
            }
        }
        self.entries.insert(
            Key(id),
            Seen {
                from,
                neighbours: None,
            },
        );
        self.order.push_back(id);
        true
    }

    /// The item went to every one of `neighbours` except the one it came from.
    pub fn record_sent(&mut self, id: &[u8; 32], neighbours: &Arc<[SocketAddr]>) {
        if let Some(seen) = self.entries.get_mut(&Key(*id)) {
            seen.neighbours = Some(neighbours.clone());
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
