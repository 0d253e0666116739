//! Frames and messages of the node-to-node protocol: encoding, decoding and size limits.
//!
//! Pure: no sockets, no clocks. A frame is `len: u32` (big-endian, the body's length) and a
//! body of `tag: u8` and the message's fields. The length is checked against the limit before
//! anything is allocated, and decoding never panics on any input. `docs/PROTOCOL.md` is the
//! byte-level description of everything here and must change with it.

use std::fmt;
use std::net::SocketAddr;

/// Protocol versions this build speaks (negotiated in the handshake).
pub const PROTOCOL_VERSION: u16 = 8;
pub const MIN_PROTOCOL_VERSION: u16 = 8;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Bound on entries in one peer list or sync frame, so one frame stays far below the limit.
pub const MAX_LIST_ENTRIES: usize = 16_384;
/// Bound on the reason text of a Reject and on assignment texts (liveness, dead node).
pub const MAX_TEXT: usize = 1024;

/// An Ed25519 public key: a node's identity.
pub type PublicKey = [u8; 32];
/// An Ed25519 signature.
pub type Signature = [u8; 64];

/// A gossip item's payload: one allocation, shared by reference wherever the item goes (every
/// neighbour's frame, the young-link memory, an item waiting for validation).
pub type Payload = std::sync::Arc<[u8]>;

/// Bytes of a `Gossip`, `SyncItem` or `Detour` frame before its payload: length, tag, type,
/// TTL, nonce.
const ITEM_HEAD: usize = 16;

/// One encoded frame as queues hold it: `head` (at most `ITEM_HEAD` bytes, inline) then
/// `body`, which is shared. Cloning it copies no payload, so an item queued for every
/// neighbour, resent on a young link or served to a catch-up costs its payload once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    head: [u8; ITEM_HEAD],
    head_len: u8,
    body: Payload,
}

impl Frame {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        usize::from(self.head_len) + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The frame's bytes from `from` on, in at most two slices (empty ones left out).
    pub fn parts(&self, from: usize) -> impl Iterator<Item = &[u8]> {
        let head = &self.head[..usize::from(self.head_len)];
        let (head, body) = if from < head.len() {
            (&head[from..], &self.body[..])
        } else {
            (
                &head[..0],
                &self.body[(from - head.len()).min(self.body.len())..],
            )
        };
        [head, body].into_iter().filter(|p| !p.is_empty())
    }

    /// The frame's bytes in one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts(0).flatten().copied().collect()
    }
}

impl From<Vec<u8>> for Frame {
    fn from(bytes: Vec<u8>) -> Frame {
        Frame {
            head: [0; ITEM_HEAD],
            head_len: 0,
            body: bytes.into(),
        }
    }
}

impl From<&[u8]> for Frame {
    fn from(bytes: &[u8]) -> Frame {
        Frame {
            head: [0; ITEM_HEAD],
            head_len: 0,
            body: bytes.into(),
        }
    }
}

/// Who is on the other end of a connection, as the connector declares in `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Peer = 1,
    Seed = 2,
}

/// Why a peer leaves the peer list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RemovalReason {
    Dead = 1,
    Left = 2,
}

impl RemovalReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RemovalReason::Dead => "dead",
            RemovalReason::Left => "left",
        }
    }
}

/// A change to the peer list that seeds vote on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VoteOp {
    Add,
    Remove(RemovalReason),
}

impl VoteOp {
    fn code(self) -> u8 {
        match self {
            VoteOp::Add => 1,
            VoteOp::Remove(RemovalReason::Dead) => 2,
            VoteOp::Remove(RemovalReason::Left) => 3,
        }
    }

    fn from_code(code: u8) -> Result<VoteOp, WireError> {
        Ok(match code {
            1 => VoteOp::Add,
            2 => VoteOp::Remove(RemovalReason::Dead),
            3 => VoteOp::Remove(RemovalReason::Left),
            other => return Err(WireError::BadValue("vote op", other as u64)),
        })
    }
}

/// What a seed signs when it votes for a change: the domain string, the op and the member,
/// encoded as in `Vote`.
pub fn change_bytes(op: VoteOp, member: &Member) -> Vec<u8> {
    let mut out = CHANGE_DOMAIN.to_vec();
    out.push(op.code());
    put_member(&mut out, member);
    out
}

/// The domain of a vote's signature.
pub const CHANGE_DOMAIN: &[u8] = b"gossipnet/2 change";

/// The domain of a root's signature over its number.
pub const ROOT_DOMAIN: &[u8] = b"gossipnet/7 root";

/// Rooted mode: a root's number, provable to anyone who knows the seeds' keys. The root is a
/// registered peer: its address, the incarnation it registered (its start, Unix ms: the
/// older root wins) and its key, with the certificate of that registration (as a `PeerList`
/// entry carries it); `seq` its number, `anchor` the end of the number's distance chain, and
/// the root's signature over both ([`root_number_bytes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootNumber {
    pub root: SocketAddr,
    pub incarnation: u64,
    pub key: PublicKey,
    pub certificate: Vec<(SocketAddr, Signature)>,
    pub seq: u32,
    pub anchor: [u8; 32],
    pub signature: Signature,
}

impl RootNumber {
    /// The root as a registered member (what its certificate signs).
    pub fn member(&self) -> Member {
        Member {
            addr: self.root,
            incarnation: self.incarnation,
            key: self.key,
        }
    }
}

/// What a root signs for its number: `ROOT_DOMAIN | root: addr | incarnation: u64 | seq: u32
/// | anchor`.
pub fn root_number_bytes(
    root: &SocketAddr,
    incarnation: u64,
    seq: u32,
    anchor: &[u8; 32],
) -> Vec<u8> {
    let mut out = ROOT_DOMAIN.to_vec();
    put_addr(&mut out, root);
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(anchor);
    out
}

fn put_root_number(out: &mut Vec<u8>, n: &RootNumber) {
    put_addr(out, &n.root);
    out.extend_from_slice(&n.incarnation.to_be_bytes());
    out.extend_from_slice(&n.key);
    put_signatures(out, &n.certificate);
    out.extend_from_slice(&n.seq.to_be_bytes());
    out.extend_from_slice(&n.anchor);
    out.extend_from_slice(&n.signature);
}

/// A committed change: the signatures of the seeds that voted for it (a majority of the
/// configured seeds, each under its own key). Seeds sync certificates, never bare lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub op: VoteOp,
    pub member: Member,
    pub signatures: Vec<(SocketAddr, Signature)>,
}

/// At most this many certificates in one `Sync` frame (a cert of three signatures is about
/// 300 bytes, so a frame stays far below the 1 MiB frame limit); a longer list goes in several.
pub const SYNC_CHUNK: usize = 2048;

/// One entry of a peer list sent to a peer: the member (address, incarnation, the key the
/// peer there must show), how many neighbours it reported, and the certificate of its
/// registration (the signatures of the seeds that voted to add it), which the receiving peer
/// checks before it trusts the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerEntry {
    pub addr: SocketAddr,
    pub incarnation: u64,
    pub key: PublicKey,
    pub degree: u16,
    pub signatures: Vec<(SocketAddr, Signature)>,
}

impl PeerEntry {
    /// The listed member this entry names.
    pub fn member(&self) -> Member {
        Member {
            addr: self.addr,
            incarnation: self.incarnation,
            key: self.key,
        }
    }
}

/// One committed member as seeds exchange it: a peer address, its incarnation and the key it
/// proved in its handshake. The address is held by that key until the member is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub addr: SocketAddr,
    pub incarnation: u64,
    pub key: PublicKey,
}

/// One bucket of a catch-up digest: how many items the history holds in it and the wrapping
/// sum of their short ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub count: u32,
    pub sum: u64,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    // --- handshake ---
    /// Acceptor → connector, first frame on every connection.
    Challenge {
        min_version: u16,
        max_version: u16,
        difficulty: u8,
        challenge: [u8; 32],
        acceptor: SocketAddr,
        /// The acceptor's public key (proven by the signature in `Welcome`).
        acceptor_key: PublicKey,
    },
    /// Connector → acceptor: who I am, the proof of work, and my signature over the
    /// transcript (the challenge and everything above the signature).
    Hello {
        version: u16,
        role: Role,
        addr: SocketAddr,
        incarnation: u64,
        challenge: [u8; 32],
        key: PublicKey,
        nonce: u64,
        signature: Signature,
    },
    /// Acceptor → connector: admitted, signed over the same transcript.
    Welcome {
        signature: Signature,
    },
    /// Either way: refused, with a reason for the log; the connection closes.
    Reject {
        reason: String,
    },

    // --- peer ↔ seed ---
    Register,
    /// Seed → peer: the registration is committed; the certificate of it (the peer as a
    /// member: its address, this incarnation, its key), as a peer list entry carries it.
    Registered {
        incarnation: u64,
        signatures: Vec<(SocketAddr, Signature)>,
    },
    GetPeers,
    PeerList {
        peers: Vec<PeerEntry>,
    },
    /// Peer → seed: how many neighbours I have now (for power-law selection).
    Degree {
        neighbours: u16,
    },
    /// Peer → seed: `Dead Node:<ip>:<port>:<ts>:<reporter>`.
    DeadNode {
        text: String,
    },
    /// Peer → seed or neighbour: I am shutting down cleanly.
    Leave,
    /// Seed → peer: this incarnation of you was removed from the peer list (you were taken
    /// for dead); register again as a newer incarnation.
    Removed {
        incarnation: u64,
    },

    // --- peer ↔ peer (and seed → peer probes) ---
    Gossip {
        data_type: u16,
        ttl: u8,
        /// Set by the item's origin: 0 for the assignment's own messages (unique by their
        /// text), random for each application's `ANNOUNCE`, so the same data announced twice
        /// is two items. Part of the item's id.
        nonce: u64,
        /// Shared, not copied, by every queue and record that holds the item.
        payload: Payload,
    },
    /// `Liveness Request:<ts>:<sender>`.
    LivenessRequest {
        text: String,
    },
    /// `Liveness Reply:<ts>:<sender>:<replier>`.
    LivenessReply {
        text: String,
    },
    /// Tree mode: ids of new items, to a lazy neighbour.
    IHave {
        ids: Vec<[u8; 32]>,
    },
    /// Tree mode: send me these items, and push to me from now on.
    Graft {
        ids: Vec<[u8; 32]>,
    },
    /// Tree mode: you are on a redundant path; send me ids only.
    Prune,
    /// Rooted mode: the root this peer's tree hangs from and the root's number it carries,
    /// as the root signed it (`number`); its distance to the root in links (32 and over:
    /// none) and the element of the number's distance chain for it (`value`: hashed
    /// `32 - dist` times it gives the signed anchor, so no one can claim to be nearer than
    /// the neighbour it heard from); whether the receiver is its parent (its next link
    /// towards the root), whether it asks for a newer number, and whether it releases the
    /// receiver, which no longer names it parent: every push it queued for the receiver as
    /// its child went before this frame (flags byte: bit 0 parent, bit 1 want, bit 2
    /// released; the other bits zero).
    TreeRoot {
        number: std::sync::Arc<RootNumber>,
        dist: u8,
        value: [u8; 32],
        parent: bool,
        want: bool,
        released: bool,
    },
    /// Rooted mode: an item pushed to the parent that reached the sender around it (grafted
    /// from a neighbour off the tree, or a `Detour` from a child), laid out as `Gossip`: an
    /// item the parent's own parent should have brought.
    Detour {
        data_type: u16,
        ttl: u8,
        nonce: u64,
        payload: Payload,
    },
    /// Catch-up, step 1: a summary of every bucket of the sender's history.
    SyncDigest {
        buckets: Vec<Summary>,
    },
    /// Catch-up, step 2: the short ids of what the sender holds where the digests differ.
    SyncIds {
        ids: Vec<u64>,
    },
    /// Catch-up, step 3: the short ids the sender lacks and asks for.
    SyncWant {
        ids: Vec<u64>,
    },
    /// Catch-up, step 4: one item asked for (laid out as `Gossip`).
    SyncItem {
        data_type: u16,
        ttl: u8,
        nonce: u64,
        payload: Payload,
    },

    // --- seed ↔ seed ---
    /// Seed → seed: this seed's vote for a change, signed (`change_bytes`).
    Vote {
        op: VoteOp,
        member: Member,
        signature: Signature,
    },
    /// Seed → seed: certificates of committed changes (the listed members' registrations and
    /// the removals still remembered), at most `SYNC_CHUNK` per frame.
    Sync {
        certs: Vec<Certificate>,
    },
}

mod tag {
    pub const CHALLENGE: u8 = 0x01;
    pub const HELLO: u8 = 0x02;
    pub const WELCOME: u8 = 0x03;
    pub const REJECT: u8 = 0x04;
    pub const REGISTER: u8 = 0x10;
    pub const REGISTERED: u8 = 0x11;
    pub const GET_PEERS: u8 = 0x12;
    pub const PEER_LIST: u8 = 0x13;
    pub const DEGREE: u8 = 0x14;
    pub const DEAD_NODE: u8 = 0x15;
    pub const LEAVE: u8 = 0x16;
    pub const REMOVED: u8 = 0x17;
    pub const GOSSIP: u8 = 0x20;
    pub const LIVENESS_REQUEST: u8 = 0x21;
    pub const LIVENESS_REPLY: u8 = 0x22;
    pub const SYNC_DIGEST: u8 = 0x23;
    pub const SYNC_IDS: u8 = 0x24;
    pub const SYNC_WANT: u8 = 0x25;
    pub const SYNC_ITEM: u8 = 0x26;
    pub const IHAVE: u8 = 0x27;
    pub const GRAFT: u8 = 0x28;
    pub const PRUNE: u8 = 0x29;
    pub const TREE_ROOT: u8 = 0x2A;
    pub const DETOUR: u8 = 0x2B;
    pub const VOTE: u8 = 0x30;
    pub const SYNC: u8 = 0x31;
}

impl Msg {
    /// A short name for logs and `rejected` events.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Challenge { .. } => "Challenge",
            Msg::Hello { .. } => "Hello",
            Msg::Welcome { .. } => "Welcome",
            Msg::Reject { .. } => "Reject",
            Msg::Register => "Register",
            Msg::Registered { .. } => "Registered",
            Msg::GetPeers => "GetPeers",
            Msg::PeerList { .. } => "PeerList",
            Msg::Degree { .. } => "Degree",
            Msg::DeadNode { .. } => "DeadNode",
            Msg::Leave => "Leave",
            Msg::Removed { .. } => "Removed",
            Msg::Gossip { .. } => "Gossip",
            Msg::LivenessRequest { .. } => "LivenessRequest",
            Msg::LivenessReply { .. } => "LivenessReply",
            Msg::SyncDigest { .. } => "SyncDigest",
            Msg::SyncIds { .. } => "SyncIds",
            Msg::SyncWant { .. } => "SyncWant",
            Msg::SyncItem { .. } => "SyncItem",
            Msg::Detour { .. } => "Detour",
            Msg::IHave { .. } => "IHave",
            Msg::Graft { .. } => "Graft",
            Msg::Prune => "Prune",
            Msg::TreeRoot { .. } => "TreeRoot",
            Msg::Vote { .. } => "Vote",
            Msg::Sync { .. } => "Sync",
        }
    }

    /// The whole frame (length prefix and body), for queues: a `Gossip`, `SyncItem` or
    /// `Detour` frame keeps the item's own payload (shared, not copied); any other is encoded
    /// into one shared buffer.
    pub fn frame(&self) -> Frame {
        match self {
            Msg::Gossip {
                data_type,
                ttl,
                nonce,
                payload,
            }
            | Msg::SyncItem {
                data_type,
                ttl,
                nonce,
                payload,
            }
            | Msg::Detour {
                data_type,
                ttl,
                nonce,
                payload,
            } => {
                let tag = match self {
                    Msg::Gossip { .. } => tag::GOSSIP,
                    Msg::SyncItem { .. } => tag::SYNC_ITEM,
                    _ => tag::DETOUR,
                };
                let len = (ITEM_HEAD - LEN_PREFIX + payload.len()) as u32;
                let mut head = [0u8; ITEM_HEAD];
                head[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
                head[4] = tag;
                head[5..7].copy_from_slice(&data_type.to_be_bytes());
                head[7] = *ttl;
                head[8..16].copy_from_slice(&nonce.to_be_bytes());
                Frame {
                    head,
                    head_len: ITEM_HEAD as u8,
                    body: payload.clone(),
                }
            }
            _ => Frame::from(self.encode()),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; LEN_PREFIX];
        self.encode_body(&mut out);
        let len = (out.len() - LEN_PREFIX) as u32;
        out[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
        out
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Msg::Challenge {
                min_version,
                max_version,
                difficulty,
                challenge,
                acceptor,
                acceptor_key,
            } => {
                out.push(tag::CHALLENGE);
                out.extend_from_slice(&min_version.to_be_bytes());
                out.extend_from_slice(&max_version.to_be_bytes());
                out.push(*difficulty);
                out.extend_from_slice(challenge);
                put_addr(out, acceptor);
                out.extend_from_slice(acceptor_key);
            }
            Msg::Hello {
                version,
                role,
                addr,
                incarnation,
                challenge,
                key,
                nonce,
                signature,
            } => {
                out.push(tag::HELLO);
                out.extend_from_slice(&version.to_be_bytes());
                out.push(*role as u8);
                put_addr(out, addr);
                out.extend_from_slice(&incarnation.to_be_bytes());
                out.extend_from_slice(challenge);
                out.extend_from_slice(key);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(signature);
            }
            Msg::Welcome { signature } => {
                out.push(tag::WELCOME);
                out.extend_from_slice(signature);
            }
            Msg::Reject { reason } => {
                out.push(tag::REJECT);
                put_str(out, truncate(reason, MAX_TEXT));
            }
            Msg::Register => out.push(tag::REGISTER),
            Msg::Registered {
                incarnation,
                signatures,
            } => {
                out.push(tag::REGISTERED);
                out.extend_from_slice(&incarnation.to_be_bytes());
                put_signatures(out, signatures);
            }
            Msg::GetPeers => out.push(tag::GET_PEERS),
            Msg::PeerList { peers } => {
                out.push(tag::PEER_LIST);
                let peers = &peers[..peers.len().min(MAX_LIST_ENTRIES)];
                out.extend_from_slice(&(peers.len() as u32).to_be_bytes());
                for p in peers {
                    put_member(out, &p.member());
                    out.extend_from_slice(&p.degree.to_be_bytes());
                    put_signatures(out, &p.signatures);
                }
            }
            Msg::Degree { neighbours } => {
                out.push(tag::DEGREE);
                out.extend_from_slice(&neighbours.to_be_bytes());
            }
            Msg::DeadNode { text } => {
                out.push(tag::DEAD_NODE);
                put_str(out, truncate(text, MAX_TEXT));
            }
            Msg::Leave => out.push(tag::LEAVE),
            Msg::Removed { incarnation } => {
                out.push(tag::REMOVED);
                out.extend_from_slice(&incarnation.to_be_bytes());
            }
            Msg::Gossip { .. } | Msg::SyncItem { .. } | Msg::Detour { .. } => {
                // Laid out once, in `frame` (which keeps the payload shared).
                let f = self.frame();
                out.extend_from_slice(&f.head[LEN_PREFIX..usize::from(f.head_len)]);
                out.extend_from_slice(&f.body);
            }
            Msg::LivenessRequest { text } => {
                out.push(tag::LIVENESS_REQUEST);
                put_str(out, truncate(text, MAX_TEXT));
            }
            Msg::LivenessReply { text } => {
                out.push(tag::LIVENESS_REPLY);
                put_str(out, truncate(text, MAX_TEXT));
            }
            Msg::SyncDigest { buckets } => {
                out.push(tag::SYNC_DIGEST);
                let buckets = &buckets[..buckets.len().min(MAX_LIST_ENTRIES)];
                out.extend_from_slice(&(buckets.len() as u32).to_be_bytes());
                for b in buckets {
                    out.extend_from_slice(&b.count.to_be_bytes());
                    out.extend_from_slice(&b.sum.to_be_bytes());
                }
            }
            Msg::SyncIds { ids } | Msg::SyncWant { ids } => {
                out.push(if matches!(self, Msg::SyncIds { .. }) {
                    tag::SYNC_IDS
                } else {
                    tag::SYNC_WANT
                });
                let ids = &ids[..ids.len().min(MAX_LIST_ENTRIES)];
                out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
                for id in ids {
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
            Msg::IHave { ids } | Msg::Graft { ids } => {
                out.push(if matches!(self, Msg::IHave { .. }) {
                    tag::IHAVE
                } else {
                    tag::GRAFT
                });
                let ids = &ids[..ids.len().min(MAX_LIST_ENTRIES)];
                out.extend_from_slice(&(ids.len() as u32).to_be_bytes());
                for id in ids {
                    out.extend_from_slice(id);
                }
            }
            Msg::Prune => out.push(tag::PRUNE),
            Msg::TreeRoot {
                number,
                dist,
                value,
                parent,
                want,
                released,
            } => {
                out.push(tag::TREE_ROOT);
                put_root_number(out, number);
                out.push(*dist);
                out.extend_from_slice(value);
                out.push(u8::from(*parent) | u8::from(*want) << 1 | u8::from(*released) << 2);
            }
            Msg::Vote {
                op,
                member,
                signature,
            } => {
                out.push(tag::VOTE);
                out.push(op.code());
                put_member(out, member);
                out.extend_from_slice(signature);
            }
            Msg::Sync { certs } => {
                out.push(tag::SYNC);
                let certs = &certs[..certs.len().min(MAX_LIST_ENTRIES)];
                out.extend_from_slice(&(certs.len() as u32).to_be_bytes());
                for c in certs {
                    out.push(c.op.code());
                    put_member(out, &c.member);
                    put_signatures(out, &c.signatures);
                }
            }
        }
    }

    /// Decodes one frame body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Msg, WireError> {
        let mut r = Reader { buf: body, pos: 0 };
        let t = r.u8()?;
        let msg = match t {
            tag::CHALLENGE => Msg::Challenge {
                min_version: r.u16()?,
                max_version: r.u16()?,
                difficulty: r.u8()?,
                challenge: r.array32()?,
                acceptor: r.addr()?,
                acceptor_key: r.array32()?,
            },
            tag::HELLO => Msg::Hello {
                version: r.u16()?,
                role: match r.u8()? {
                    1 => Role::Peer,
                    2 => Role::Seed,
                    other => return Err(WireError::BadValue("role", other as u64)),
                },
                addr: r.addr()?,
                incarnation: r.u64()?,
                challenge: r.array32()?,
                key: r.array32()?,
                nonce: r.u64()?,
                signature: r.array64()?,
            },
            tag::WELCOME => Msg::Welcome {
                signature: r.array64()?,
            },
            tag::REJECT => Msg::Reject { reason: r.text()? },
            tag::REGISTER => Msg::Register,
            tag::REGISTERED => Msg::Registered {
                incarnation: r.u64()?,
                signatures: r.signatures()?,
            },
            tag::GET_PEERS => Msg::GetPeers,
            tag::PEER_LIST => {
                let n = r.count()?;
                let mut peers = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    let member = r.member()?;
                    let degree = r.u16()?;
                    peers.push(PeerEntry {
                        addr: member.addr,
                        incarnation: member.incarnation,
                        key: member.key,
                        degree,
                        signatures: r.signatures()?,
                    });
                }
                Msg::PeerList { peers }
            }
            tag::DEGREE => Msg::Degree {
                neighbours: r.u16()?,
            },
            tag::DEAD_NODE => Msg::DeadNode { text: r.text()? },
            tag::LEAVE => Msg::Leave,
            tag::REMOVED => Msg::Removed {
                incarnation: r.u64()?,
            },
            tag::GOSSIP => Msg::Gossip {
                data_type: r.u16()?,
                ttl: r.u8()?,
                nonce: r.u64()?,
                payload: r.rest().into(),
            },
            tag::LIVENESS_REQUEST => Msg::LivenessRequest { text: r.text()? },
            tag::LIVENESS_REPLY => Msg::LivenessReply { text: r.text()? },
            tag::SYNC_DIGEST => {
                let n = r.count()?;
                let mut buckets = Vec::with_capacity(n.min(256));
                for _ in 0..n {
                    buckets.push(Summary {
                        count: r.u32()?,
                        sum: r.u64()?,
                    });
                }
                Msg::SyncDigest { buckets }
            }
            t @ (tag::SYNC_IDS | tag::SYNC_WANT) => {
                let n = r.count()?;
                let mut ids = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    ids.push(r.u64()?);
                }
                if t == tag::SYNC_IDS {
                    Msg::SyncIds { ids }
                } else {
                    Msg::SyncWant { ids }
                }
            }
            t @ (tag::IHAVE | tag::GRAFT) => {
                let n = r.count()?;
                let mut ids = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    ids.push(r.array32()?);
                }
                if t == tag::IHAVE {
                    Msg::IHave { ids }
                } else {
                    Msg::Graft { ids }
                }
            }
            tag::PRUNE => Msg::Prune,
            tag::TREE_ROOT => {
                let number = std::sync::Arc::new(r.root_number()?);
                let (dist, value) = (r.u8()?, r.array32()?);
                let flags = r.u8()?;
                if flags > 0b111 {
                    return Err(WireError::BadValue("TreeRoot flags", flags.into()));
                }
                Msg::TreeRoot {
                    number,
                    dist,
                    value,
                    parent: flags & 1 != 0,
                    want: flags & 2 != 0,
                    released: flags & 4 != 0,
                }
            }
            tag::SYNC_ITEM => Msg::SyncItem {
                data_type: r.u16()?,
                ttl: r.u8()?,
                nonce: r.u64()?,
                payload: r.rest().into(),
            },
            tag::DETOUR => Msg::Detour {
                data_type: r.u16()?,
                ttl: r.u8()?,
                nonce: r.u64()?,
                payload: r.rest().into(),
            },
            tag::VOTE => Msg::Vote {
                op: VoteOp::from_code(r.u8()?)?,
                member: r.member()?,
                signature: r.array64()?,
            },
            tag::SYNC => {
                let n = r.count()?;
                let mut certs = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    let op = VoteOp::from_code(r.u8()?)?;
                    let member = r.member()?;
                    certs.push(Certificate {
                        op,
                        member,
                        signatures: r.signatures()?,
                    });
                }
                Msg::Sync { certs }
            }
            other => return Err(WireError::UnknownTag(other)),
        };
        if r.pos != body.len() {
            return Err(WireError::TrailingBytes(body.len() - r.pos));
        }
        Ok(msg)
    }
}

/// Why bytes from a remote were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The length prefix announces more than the limit; nothing was allocated.
    TooLarge {
        len: usize,
        max: usize,
    },
    /// A zero-length frame has no tag.
    Empty,
    Truncated,
    UnknownTag(u8),
    BadValue(&'static str, u64),
    BadText,
    BadAddress,
    TrailingBytes(usize),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            WireError::Empty => write!(f, "empty frame"),
            WireError::Truncated => write!(f, "truncated message"),
            WireError::UnknownTag(t) => write!(f, "unknown message type 0x{t:02x}"),
            WireError::BadValue(what, v) => write!(f, "bad {what} value {v}"),
            WireError::BadText => write!(f, "text is not UTF-8 or too long"),
            WireError::BadAddress => write!(f, "malformed address"),
            WireError::TrailingBytes(n) => write!(f, "{n} unexpected bytes after the message"),
        }
    }
}

impl std::error::Error for WireError {}

/// Checks a length prefix against the limit: the only place a frame size is trusted.
pub fn check_len(prefix: [u8; LEN_PREFIX], max: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(len)
}

/// Accumulates bytes from a stream and yields complete frames. The buffer never holds more
/// than one frame of at most `max` bytes plus one read's worth. Consumed frames only advance
/// an offset; the buffer is compacted once per `push`, not once per frame (a read can carry
/// hundreds of small frames).
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Where the unconsumed bytes start.
    start: usize,
    max: usize,
}

impl FrameReader {
    pub fn new(max: usize) -> Self {
        FrameReader {
            buf: Vec::with_capacity(4096),
            start: 0,
            max,
        }
    }

    /// Bytes received that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame body, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, WireError> {
        let Some(len) = self.next_len()? else {
            return Ok(None);
        };
        let at = self.start + LEN_PREFIX;
        let body = self.buf[at..at + len].to_vec();
        self.consume(LEN_PREFIX + len);
        Ok(Some(body))
    }

    /// The next complete frame, decoded where it lies in the buffer (no copy of its body),
    /// `Ok(None)` when more bytes are needed.
    pub fn next_msg(&mut self) -> Result<Option<Msg>, WireError> {
        let Some(len) = self.next_len()? else {
            return Ok(None);
        };
        let at = self.start + LEN_PREFIX;
        let msg = Msg::decode(&self.buf[at..at + len])?;
        self.consume(LEN_PREFIX + len);
        Ok(Some(msg))
    }

    /// The body length of the next frame if all of it has arrived.
    fn next_len(&self) -> Result<Option<usize>, WireError> {
        let avail = &self.buf[self.start..];
        if avail.len() < LEN_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; LEN_PREFIX];
        prefix.copy_from_slice(&avail[..LEN_PREFIX]);
        let len = check_len(prefix, self.max)?;
        Ok((avail.len() >= LEN_PREFIX + len).then_some(len))
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    let s = addr.to_string();
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

fn put_member(out: &mut Vec<u8>, m: &Member) {
    put_addr(out, &m.addr);
    out.extend_from_slice(&m.incarnation.to_be_bytes());
    out.extend_from_slice(&m.key);
}

/// A certificate's signatures: `n: u8`, then `n` × (`seed: addr`, `sig`).
fn put_signatures(out: &mut Vec<u8>, sigs: &[(SocketAddr, Signature)]) {
    let sigs = &sigs[..sigs.len().min(u8::MAX as usize)];
    out.push(sigs.len() as u8);
    for (seed, sig) in sigs {
        put_addr(out, seed);
        out.extend_from_slice(sig);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }
    fn array32(&mut self) -> Result<[u8; 32], WireError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn array64(&mut self) -> Result<[u8; 64], WireError> {
        let mut a = [0u8; 64];
        a.copy_from_slice(self.take(64)?);
        Ok(a)
    }
    /// A list length, refused when it exceeds the entry bound or the bytes left.
    fn count(&mut self) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n > MAX_LIST_ENTRIES || n > self.buf.len() - self.pos {
            return Err(WireError::BadValue("list length", n as u64));
        }
        Ok(n)
    }
    fn text(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        if n > MAX_TEXT {
            return Err(WireError::BadText);
        }
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| WireError::BadText)
    }
    fn addr(&mut self) -> Result<SocketAddr, WireError> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(WireError::BadAddress)
    }
    fn member(&mut self) -> Result<Member, WireError> {
        Ok(Member {
            addr: self.addr()?,
            incarnation: self.u64()?,
            key: self.array32()?,
        })
    }

    fn root_number(&mut self) -> Result<RootNumber, WireError> {
        Ok(RootNumber {
            root: self.addr()?,
            incarnation: self.u64()?,
            key: self.array32()?,
            certificate: self.signatures()?,
            seq: self.u32()?,
            anchor: self.array32()?,
            signature: self.array64()?,
        })
    }

    fn signatures(&mut self) -> Result<Vec<(SocketAddr, Signature)>, WireError> {
        let k = self.u8()? as usize;
        let mut signatures = Vec::with_capacity(k.min(8));
        for _ in 0..k {
            signatures.push((self.addr()?, self.array64()?));
        }
        Ok(signatures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn samples() -> Vec<Msg> {
        let m = Member {
            addr: a("127.0.0.1:9101"),
            incarnation: 7,
            key: [8; 32],
        };
        vec![
            Msg::Challenge {
                min_version: 1,
                max_version: 3,
                difficulty: 20,
                challenge: [7; 32],
                acceptor: a("127.0.0.1:9001"),
                acceptor_key: [3; 32],
            },
            Msg::Hello {
                version: 2,
                role: Role::Peer,
                addr: a("[::1]:9101"),
                incarnation: u64::MAX,
                challenge: [9; 32],
                key: [4; 32],
                nonce: 12345,
                signature: [5; 64],
            },
            Msg::Welcome { signature: [6; 64] },
            Msg::Reject {
                reason: "bad nonce".into(),
            },
            Msg::Register,
            Msg::Registered {
                incarnation: 1_764_000_000_000,
                signatures: vec![(a("127.0.0.1:9001"), [8; 64]), (a("[::1]:9002"), [9; 64])],
            },
            Msg::Registered {
                incarnation: 0,
                signatures: vec![],
            },
            Msg::GetPeers,
            Msg::PeerList {
                peers: vec![
                    PeerEntry {
                        addr: a("127.0.0.1:1"),
                        incarnation: 7,
                        key: [1; 32],
                        degree: 3,
                        signatures: vec![
                            (a("127.0.0.1:9001"), [3; 64]),
                            (a("[::1]:9002"), [4; 64]),
                        ],
                    },
                    PeerEntry {
                        addr: a("[::1]:2"),
                        incarnation: 0,
                        key: [2; 32],
                        degree: 0,
                        signatures: vec![],
                    },
                ],
            },
            Msg::PeerList { peers: vec![] },
            Msg::Degree { neighbours: 4 },
            Msg::DeadNode {
                text: "Dead Node:127.0.0.1:9102:1795313883123:127.0.0.1:9101".into(),
            },
            Msg::Leave,
            Msg::Removed { incarnation: 42 },
            Msg::Gossip {
                data_type: 0,
                ttl: 0,
                nonce: 0,
                payload: b"1795313883123:127.0.0.1:9101:3".as_slice().into(),
            },
            Msg::Gossip {
                data_type: 1337,
                ttl: 4,
                nonce: u64::MAX - 1,
                payload: Payload::from([]),
            },
            Msg::LivenessRequest {
                text: "Liveness Request:1:127.0.0.1:9101".into(),
            },
            Msg::LivenessReply {
                text: "Liveness Reply:1:127.0.0.1:9101:127.0.0.1:9102".into(),
            },
            Msg::SyncDigest {
                buckets: vec![
                    Summary { count: 0, sum: 0 },
                    Summary {
                        count: 3,
                        sum: u64::MAX,
                    },
                ],
            },
            Msg::SyncIds {
                ids: vec![1, u64::MAX],
            },
            Msg::SyncWant { ids: vec![] },
            Msg::IHave {
                ids: vec![[1; 32], [2; 32]],
            },
            Msg::Graft { ids: vec![[3; 32]] },
            Msg::Prune,
            Msg::TreeRoot {
                number: std::sync::Arc::new(RootNumber {
                    root: "127.0.0.1:9101".parse().unwrap(),
                    incarnation: 1_795_313_883_123,
                    key: [3; 32],
                    certificate: vec![(a("127.0.0.1:9001"), [4; 64]), (a("[::1]:9002"), [5; 64])],
                    seq: 41,
                    anchor: [6; 32],
                    signature: [7; 64],
                }),
                dist: 3,
                value: [8; 32],
                parent: true,
                want: true,
                released: true,
            },
            Msg::SyncItem {
                data_type: 0,
                ttl: 2,
                nonce: 7,
                payload: b"1795313883123:127.0.0.1:9101:3".as_slice().into(),
            },
            Msg::Detour {
                data_type: 5,
                ttl: 0,
                nonce: 11,
                payload: b"1795313883123:127.0.0.1:9101:4".as_slice().into(),
            },
            Msg::Vote {
                op: VoteOp::Add,
                member: m,
                signature: [1; 64],
            },
            Msg::Vote {
                op: VoteOp::Remove(RemovalReason::Left),
                member: m,
                signature: [2; 64],
            },
            Msg::Sync {
                certs: vec![
                    Certificate {
                        op: VoteOp::Add,
                        member: m,
                        signatures: vec![
                            (a("127.0.0.1:9001"), [3; 64]),
                            (a("[::1]:9002"), [4; 64]),
                        ],
                    },
                    Certificate {
                        op: VoteOp::Remove(RemovalReason::Dead),
                        member: m,
                        signatures: vec![],
                    },
                ],
            },
        ]
    }

    #[test]
    fn a_tree_root_with_two_seeds_signatures_is_349_bytes() {
        // The size README and BENCHMARKS give: a loopback root and seeds, a certificate of
        // two signatures (a majority of three seeds).
        let m = Msg::TreeRoot {
            number: std::sync::Arc::new(RootNumber {
                root: a("127.0.0.1:9101"),
                incarnation: 1_795_313_883_123,
                key: [3; 32],
                certificate: vec![
                    (a("127.0.0.1:9001"), [4; 64]),
                    (a("127.0.0.1:9002"), [5; 64]),
                ],
                seq: 41,
                anchor: [6; 32],
                signature: [7; 64],
            }),
            dist: 3,
            value: [8; 32],
            parent: false,
            want: false,
            released: false,
        };
        assert_eq!(m.encode().len(), LEN_PREFIX + 349);
    }

    #[test]
    fn round_trips() {
        for msg in samples() {
            let frame = msg.encode();
            let mut fr = FrameReader::new(1 << 20);
            fr.push(&frame);
            let body = fr.next_frame().unwrap().unwrap();
            assert_eq!(Msg::decode(&body).unwrap(), msg);
            assert_eq!(fr.pending(), 0);
        }
    }

    #[test]
    fn a_queued_frame_is_the_encoding_and_shares_an_items_payload() {
        for msg in samples() {
            let frame = msg.frame();
            let bytes = msg.encode();
            assert_eq!(frame.to_vec(), bytes, "{}", msg.name());
            assert_eq!(frame.len(), bytes.len());
            for from in 0..=bytes.len() {
                let rest: Vec<u8> = frame.parts(from).flatten().copied().collect();
                assert_eq!(rest, bytes[from..], "{} from {from}", msg.name());
            }
        }
        let payload = Payload::from(vec![7u8; 1000]);
        let msg = Msg::Gossip {
            data_type: 3,
            ttl: 1,
            nonce: 9,
            payload: payload.clone(),
        };
        let frame = msg.frame();
        assert!(frame.parts(0).any(|p| std::ptr::eq(p, &payload[..])));
    }

    #[test]
    fn truncated_bodies_are_refused() {
        for msg in samples() {
            let frame = msg.encode();
            let body = &frame[LEN_PREFIX..];
            for cut in 0..body.len() {
                // Gossip's payload is "the rest", so a cut inside it is a shorter payload.
                if matches!(
                    msg,
                    Msg::Gossip { .. } | Msg::SyncItem { .. } | Msg::Detour { .. }
                ) && cut >= 12
                {
                    continue;
                }
                assert!(Msg::decode(&body[..cut]).is_err(), "{msg:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = Msg::Register.encode()[LEN_PREFIX..].to_vec();
        body.push(0);
        assert_eq!(Msg::decode(&body), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn oversized_prefix_is_refused_before_allocation() {
        let mut fr = FrameReader::new(1024);
        fr.push(&u32::MAX.to_be_bytes());
        assert!(matches!(fr.next_frame(), Err(WireError::TooLarge { .. })));
        let mut fr = FrameReader::new(1024);
        fr.push(&[0, 0, 0, 0]);
        assert_eq!(fr.next_frame(), Err(WireError::Empty));
    }

    #[test]
    fn frames_split_and_back_to_back() {
        let mut all = Vec::new();
        for msg in samples() {
            all.extend(msg.encode());
        }
        let mut fr = FrameReader::new(1 << 20);
        let mut got = Vec::new();
        for chunk in all.chunks(3) {
            fr.push(chunk);
            while let Some(body) = fr.next_frame().unwrap() {
                got.push(Msg::decode(&body).unwrap());
            }
        }
        assert_eq!(got, samples());
        // The same stream decoded in place, in chunks of every size up to a few frames.
        for size in 1..64 {
            let mut fr = FrameReader::new(1 << 20);
            let mut got = Vec::new();
            for chunk in all.chunks(size) {
                fr.push(chunk);
                while let Some(msg) = fr.next_msg().unwrap() {
                    got.push(msg);
                }
            }
            assert_eq!(got, samples(), "chunks of {size}");
            assert_eq!(fr.pending(), 0);
        }
    }

    #[test]
    fn next_msg_refuses_what_next_frame_and_decode_refuse() {
        let mut fr = FrameReader::new(1024);
        fr.push(&u32::MAX.to_be_bytes());
        assert!(matches!(fr.next_msg(), Err(WireError::TooLarge { .. })));
        let mut body = Msg::Register.encode();
        body[3] += 1;
        body.push(0);
        let mut fr = FrameReader::new(1024);
        fr.push(&body);
        assert_eq!(fr.next_msg(), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn huge_list_counts_are_refused_without_allocating() {
        let mut body = vec![tag::PEER_LIST];
        body.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Msg::decode(&body).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..64);
            let mut b = vec![0u8; n];
            rng.fill_bytes(&mut b);
            if !b.is_empty() {
                b[0] = [0x01, 0x02, 0x04, 0x13, 0x15, 0x20, 0x30, 0x31, 0xff][rng.gen_range(0..9)];
            }
            let _ = Msg::decode(&b);
        }
        // Mutations of valid frames.
        for msg in samples() {
            let body = msg.encode()[LEN_PREFIX..].to_vec();
            for _ in 0..500 {
                let mut m = body.clone();
                let i = rng.gen_range(0..m.len());
                m[i] = rng.gen();
                let _ = Msg::decode(&m);
            }
        }
    }
}
