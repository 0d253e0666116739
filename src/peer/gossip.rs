//! The gossip rule and the bounded message list (ML).
//!
//! Rule: an item seen for the first time is recorded, delivered, and forwarded to every
//! neighbour except the one it came from (if its TTL allows another hop); an item seen before
//! is ignored and counted. So an item crosses each link at most once in each direction.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

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
    pub sent_to: Vec<SocketAddr>,
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
                sent_to: Vec::new(),
            },
        );
        self.order.push_back(id);
        true
    }

    pub fn record_sent(&mut self, id: &[u8; 32], to: &[SocketAddr]) {
        if let Some(seen) = self.entries.get_mut(&Key(*id)) {
            seen.sent_to.extend_from_slice(to);
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

/// Every neighbour except the one the item came from.
pub fn forward_targets<'a>(
    neighbours: impl IntoIterator<Item = &'a SocketAddr>,
    from: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    neighbours
        .into_iter()
        .copied()
        .filter(|n| Some(*n) != from)
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
        let ns = [a(1), a(2), a(3)];
        assert_eq!(forward_targets(&ns, Some(a(2))), vec![a(1), a(3)]);
        assert_eq!(forward_targets(&ns, None), ns.to_vec());
    }

    #[test]
    fn ttl_counts_hops() {
        assert_eq!(next_ttl(0), Some(0));
        assert_eq!(next_ttl(1), None);
        assert_eq!(next_ttl(4), Some(3));
    }
}
