//! The contract between a protocol core and the runtime that drives it: events in, actions out,
//! time passed in.
//!
//! A core (`SeedCore`, `PeerCore`) is a plain struct. The runtime (`net.rs`) turns socket
//! activity and timer ticks into [`Event`]s, calls [`Core::handle`] under a lock, and carries out
//! the [`Action`]s it returns: queue a frame, close a connection, dial an address, write an output
//! record. A core never touches a socket, a clock or a file, so its tests drive it by hand.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::api::ApiMsg;
use crate::wire::{Msg, Role};

/// A connection, numbered by the runtime; never reused within a process.
pub type ConnId = u64;

/// The time of an event: a monotonic instant for timers and Unix milliseconds for texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub unix_ms: u64,
}

impl Now {
    pub fn real() -> Now {
        Now {
            mono: Instant::now(),
            unix_ms: unix_ms(),
        }
    }

    /// `self` moved forward by `d` (both clocks), for tests and simulations.
    pub fn after(self, d: std::time::Duration) -> Now {
        Now {
            mono: self.mono + d,
            unix_ms: self.unix_ms + d.as_millis() as u64,
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why the runtime dials an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Peer → seed: register and ask for the peer list.
    Register,
    /// Peer → peer: a neighbour link.
    Neighbour,
    /// Seed → seed.
    SeedLink,
    /// Seed → peer: a one-off check that a reported peer is alive.
    Probe,
}

/// The other end of an established connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// Its listen address (its identity), as proven in the handshake.
    pub addr: SocketAddr,
    pub role: Role,
    /// The connector's incarnation from `Hello` (0 when we are the connector).
    pub incarnation: u64,
    /// `Some(purpose)` when we dialed it, `None` when it connected to us.
    pub dialed: Option<Purpose>,
}

/// What happens to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The node is listening; dial what you need.
    Started,
    /// A handshake completed.
    Connected { conn: ConnId, remote: Remote },
    /// A frame arrived on an established connection.
    Frame { conn: ConnId, msg: Msg },
    /// A connection ended without the core asking for it.
    Closed { conn: ConnId, reason: String },
    /// A dial did not reach an admitted connection.
    DialFailed {
        addr: SocketAddr,
        purpose: Purpose,
        reason: String,
    },
    /// A local application connected to the API listener.
    ApiConnected { conn: ConnId },
    /// A whole API message from a local application.
    ApiFrame { conn: ConnId, msg: ApiMsg },
    /// Time passed; check deadlines.
    Tick,
    /// SIGINT/SIGTERM: say goodbye.
    Shutdown,
}

/// What a core asks the runtime to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue one message (encoded once) to each of these connections.
    Send {
        to: Vec<ConnId>,
        msg: Msg,
    },
    /// Like `Send`, for a gossip item with this message id: while the frame is still held in
    /// a connection's queue (the batch window), a `Withdraw` can take it back.
    Forward {
        to: Vec<ConnId>,
        msg: Msg,
        id: [u8; 32],
    },
    /// The remote on `conn` has sent us message `id` itself: if our frame of it to that
    /// connection is still queued and unsent, drop it (it would only be a duplicate there).
    Withdraw {
        conn: ConnId,
        id: [u8; 32],
    },
    /// Queue one API message to a local application.
    SendApi {
        to: ConnId,
        msg: ApiMsg,
    },
    /// Close a connection; the core has already done its bookkeeping.
    Close {
        conn: ConnId,
    },
    Dial {
        addr: SocketAddr,
        purpose: Purpose,
    },
    /// Write an output record (`.jsonl`, and the `.txt` line if any).
    Log(Record),
}

impl Action {
    pub fn send(conn: ConnId, msg: Msg) -> Action {
        Action::Send {
            to: vec![conn],
            msg,
        }
    }
}

/// One output record: a `.jsonl` event and, optionally, a line for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub event: &'static str,
    /// In the order they were added; written after `ts_ms`, `node` and `event`.
    pub fields: Vec<(&'static str, Value)>,
    /// Written to the `.txt` file and the screen, after the local time.
    pub line: Option<String>,
}

impl Record {
    pub fn new(event: &'static str) -> Record {
        Record {
            event,
            fields: Vec::new(),
            line: None,
        }
    }

    /// Adds a field; a key given twice keeps the last value.
    pub fn field(mut self, key: &'static str, value: impl Into<Value>) -> Record {
        let value = value.into();
        match self.fields.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((key, value)),
        }
        self
    }

    /// The value of field `key`, if set.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    pub fn line(mut self, line: impl Into<String>) -> Record {
        self.line = Some(line.into());
        self
    }

    /// A `rejected` record: who, and why.
    pub fn rejected(remote: impl ToString, reason: impl ToString) -> Record {
        Record::new("rejected")
            .field("remote", remote.to_string())
            .field("reason", reason.to_string())
    }
}

impl From<Record> for Action {
    fn from(r: Record) -> Action {
        Action::Log(r)
    }
}

/// A protocol core: all decisions, no I/O.
pub trait Core: Send + 'static {
    fn handle(&mut self, event: Event, now: Now, out: &mut Vec<Action>);

    /// Repeated gossip items ignored so far (for `stats`).
    fn gossip_duplicates(&self) -> u64 {
        0
    }
}
