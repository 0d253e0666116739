//! A keyed hash for table keys cut from item ids (and for the connection table's numbers,
//! which this node assigns itself). An id is a SHA-256 digest, so its bytes are
//! spread evenly already; what a table needs on top is that nobody who does not know its key
//! can aim many ids at one slot (ids are chosen by whoever makes the item, and a few thousand
//! tries find ids that share any 10 bits they like). SipHash (`RandomState`) does that; a
//! folded multiply with a random per-table key, then MurmurHash3's finalizer, does it with two
//! multiplies and a few shifts (the key decides every bit of the result), and the message
//! list and every outbound queue hash a key per frame (SipHash was about 1.5% of a flooding
//! peer's samples under load: BENCHMARKS.md, "What a repeat costs when flooding").

use std::hash::{BuildHasher, Hasher};

/// A `BuildHasher` with a random key of its own (drawn from the operating system's generator
/// through `rand`, never from a simulation's seeded one).
#[derive(Debug, Clone, Copy)]
pub struct IdHash {
    k0: u64,
    k1: u64,
}

impl IdHash {
    pub fn new() -> IdHash {
        IdHash {
            k0: rand::random(),
            // Odd, so the multiply loses no bit of the key.
            k1: rand::random::<u64>() | 1,
        }
    }

    /// The hash of one 8-byte key.
    #[inline]
    pub fn of(&self, key: u64) -> u64 {
        avalanche(folded_multiply(key ^ self.k0, self.k1))
    }
}

impl Default for IdHash {
    fn default() -> IdHash {
        IdHash::new()
    }
}

/// MurmurHash3's finalizer: every bit of the result depends on every bit of `x`. (A folded
/// multiply alone leaves keys that differ only in a few high bits in a few hundred of 1,024
/// slots: its low bits are the product's, which depend on the key's low bits only.)
#[inline]
fn avalanche(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The hasher of a `HashMap` keyed by `u64`s cut from ids (`IdHash` as its `BuildHasher`).
#[derive(Debug, Clone, Copy)]
pub struct IdHasher {
    keys: IdHash,
    state: u64,
}

impl Hasher for IdHasher {
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.state = self.keys.of(self.state ^ n);
    }

    /// Other keys than a `u64` (none in this crate's tables, but a `Hasher` must take any):
    /// eight bytes at a time.
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.state
    }
}

impl BuildHasher for IdHash {
    type Hasher = IdHasher;

    #[inline]
    fn build_hasher(&self) -> IdHasher {
        IdHasher {
            keys: *self,
            state: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn keys_aimed_at_one_slot_without_the_key_spread_over_the_table() {
        // Keys that agree in their low 16 bits (what a table of 65,536 slots would index by
        // without mixing) and differ above: mixed with a random key, they land all over a
        // table of 1,024 slots.
        // The same for keys that differ only in their high bits, or only in a stride of
        // their low bits.
        for aimed in [
            |i: u64| (i << 16) | 0xbeef,
            |i: u64| (i << 54) | 0xbeef,
            |i: u64| (i << 10) | (0xbeef << 32),
        ] {
            let h = IdHash::new();
            let used: std::collections::HashSet<u64> =
                (0..1024u64).map(|i| h.of(aimed(i)) & 1023).collect();
            // 1,024 keys thrown at random into 1,024 slots fill about 63% of them.
            assert!(used.len() > 550, "{} slots used", used.len());
        }
    }

    #[test]
    fn two_tables_hash_the_same_key_differently_and_each_always_the_same() {
        let (a, b) = (IdHash::new(), IdHash::new());
        assert_ne!(a.of(42), b.of(42));
        assert_eq!(a.of(42), a.of(42));
        assert_eq!(a.hash_one(42u64), a.hash_one(42u64));
    }

    #[test]
    fn a_map_keyed_by_it_works_as_a_map() {
        let mut m: HashMap<u64, usize, IdHash> = HashMap::with_hasher(IdHash::new());
        for i in 0..1000u64 {
            m.insert(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i as usize);
        }
        for i in 0..1000u64 {
            assert_eq!(
                m.get(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                Some(&(i as usize))
            );
        }
        assert_eq!(m.len(), 1000);
    }
}
