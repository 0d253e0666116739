//! # gossipnet
//!
//! A peer-to-peer gossip network. Seeds are entry points that hold the peer list; peers
//! register with a majority of seeds, connect to a few neighbours, spread messages by gossip,
//! check their neighbours' liveness and report the dead; the seeds confirm a death themselves
//! and remove a peer only when a majority agrees. Every connection is admitted by proof of work.
//!
//! ## Architecture
//!
//! Protocol decisions live in plain structs that take events and return actions, with time
//! passed in ([`node::Core`]): [`seed::SeedCore`] (with the voting rule in
//! [`seed::registry`]) and [`peer::PeerCore`] (with the gossip rule in [`peer::gossip`], the
//! liveness rule in [`peer::liveness`] and neighbour selection in [`peer::selection`]). They
//! own no socket, clock or thread, so unit tests drive them by hand.
//!
//! [`net::Runtime`] is the blocking, thread-per-connection driver shared by both: it admits
//! connections ([`handshake`], [`pow`]), frames bytes ([`wire`]), feeds events to the core
//! under a lock and carries out its actions. [`output`] writes the per-node `.txt` and `.jsonl`
//! files; [`config`] reads `seeds.yaml`; [`texts`] formats and parses the assignment's texts.
//! [`cli`] holds what the two binaries share.
// `deny`, not `forbid`: the one exception is `hint::prefetch` (a cache hint, which reads
// nothing and cannot fault), allowed where it stands; the binaries forbid unsafe code.
#![deny(unsafe_code)]

pub mod api;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod executor;
pub mod handshake;
pub mod hint;
pub mod idhash;
pub mod keys;
pub mod limits;
pub mod net;
pub mod node;
pub mod outbox;
pub mod output;
pub mod peer;
pub mod pow;
pub mod report;
pub mod seed;
pub mod sim;
pub mod texts;
pub mod wire;
