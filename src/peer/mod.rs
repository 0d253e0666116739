//! The peer: the gossip rule and message list (`gossip`), the liveness rule (`liveness`),
//! neighbour selection (`selection`), and the peer's decisions around them (`core`).

pub mod apps;
pub mod core;
pub mod gossip;
pub mod liveness;
pub mod selection;

pub use self::core::PeerCore;
