//! The peer, in parts, each a plain struct with its own tests:
//! - `seeds`: joining and the sessions with the seeds (registration, retries, backoff, the
//!   union of their lists);
//! - `overlay`: links, neighbours, dialing, the duplicate-link rule, repair (`selection` picks);
//! - `gossip`: the gossip rule, items, the message list, generation, the API gate (`apps` holds
//!   the local applications and their validations);
//! - `history`: the items kept for catch-up and the digest comparison neighbours run;
//! - `tree`: `gossip.mode: tree` (Plumtree: eager and lazy neighbours, grafts, prunes) and
//!   `rooted` (pushes along a tree rooted at the oldest peer; `rooted` finds the tree, `proof`
//!   checks what neighbours say of it);
//! - `liveness`: the liveness rule and its round timer;
//! - `records`: the lines and records written for people and tools;
//! - `core`: `PeerCore`, which routes events between them and turns their answers into actions.

pub mod apps;
pub mod core;
pub mod gossip;
pub mod history;
pub mod liveness;
pub mod overlay;
pub mod proof;
pub mod records;
pub mod rooted;
pub mod seeds;
pub mod selection;
pub mod tree;

pub use self::core::PeerCore;
