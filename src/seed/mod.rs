//! The seed: the registry of peers and the votes that change it (`registry`), and the seed's
//! decisions around it (`core`).

pub mod core;
pub mod registry;

pub use self::core::SeedCore;
