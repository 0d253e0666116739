//! The contract between a protocol core and the runtime that drives it: events in, actions out,
//! time passed in.
//!
//! A core (`SeedCore`, `PeerCore`) is a plain struct. A runtime turns socket activity and expired
//! timers into [`Event`]s, calls [`Core::handle`] with the time, and carries out the [`Action`]s
//! it returns: queue a frame, close a connection, dial an address, wake the core later, write an
//! output record. A core never touches a socket, a clock or a file, so its tests drive it by
//! hand. Two runtimes honour this contract: the TCP runtime (`net.rs`, real sockets and threads)
//! and the simulator (`sim`, many cores on virtual time).
//!
//! ## The runtime's contract
//!
//! - **Order.** Actions are carried out in the order returned. Frames queued to one connection
//!   reach the remote in that order; frames to different connections have no order.
//! - **Send, then Close.** Frames queued to a connection before a `Close` of it are handed to
//!   the socket first if it has room (a `Reject` with a reason, a goodbye), then the connection
//!   closes. The core hears nothing more of a connection it closed: no `Closed` event.
//! - **Closed.** A connection that ends without the core asking (end of stream, reset, a read or
//!   write error, a malformed frame, a full queue) produces exactly one [`Event::Closed`] with a
//!   typed [`CloseReason`], after every frame that arrived before the end.
//! - **Full queue.** Queuing never blocks. A gossip frame (`Forward`) that does not fit in a
//!   connection's outbound queue is left out for that connection, which stays: its remote reads
//!   slower than we forward, and its other neighbours or catch-up bring it the item. Any other
//!   frame that does not fit closes the connection with [`CloseReason::QueueFull`]. A remote
//!   that reads nothing for `limits.write_timeout` is closed with
//!   [`CloseReason::WriteFailed`]; the others go on.
//! - **Dial.** A `Dial` ends in exactly one of [`Event::Connected`] (with `dialed: Some(purpose)`)
//!   or [`Event::DialFailed`] with a typed [`DialError`].
//! - **Welcome first.** On an accepted connection the core hears `Connected` before the
//!   connector does: by the time the connector's core sees the link, the acceptor's core has
//!   taken it, so frames either side sends after its `Connected` are read in order by the other.
//! - **Timers.** `SetTimer { after, timer }` delivers `Event::Timer(timer)` once, `after` from
//!   the time of the event that asked for it. Timers are not deduplicated or cancelled: a core
//!   checks its own state when one fires, so a stale or repeated timer is harmless.
//! - **Time.** `Now` is taken once per batch of events; nothing in a core reads a clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::api::ApiMsg;
use crate::wire::{Msg, Payload, Role};

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
    /// Its public key, as proven by its signature in the handshake.
    pub key: crate::wire::PublicKey,
    /// `Some(purpose)` when we dialed it, `None` when it connected to us.
    pub dialed: Option<Purpose>,
}

/// A wake-up a core asked for with [`Action::SetTimer`]. One-shot; when it fires the core
/// checks which of its deadlines are due, so one timer kind serves many deadlines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Peer: the join waited long enough for the seeds' lists.
    JoinDeadline,
    /// Peer: reconnect lost seeds and re-send unconfirmed registrations.
    SeedRetry,
    /// Peer: generate the next message.
    Gossip,
    /// Peer: send the next round of liveness requests.
    LivenessRound,
    /// Peer: a liveness request's reply deadline.
    ReplyDeadline,
    /// Peer: new links stop remembering what was forwarded on them.
    YoungLinks,
    /// Peer: the next catch-up round.
    CatchUp,
    /// Peer (tree mode): announcements to lazy neighbours, grafts of missing items.
    Tree,
    /// Peer: local applications' validations that are overdue.
    Validations,
    /// Peer or seed: say what it still waits for (seeds to register with, other seeds).
    Waiting,
    /// Seed: redial seeds that are down.
    SeedRedial,
    /// Seed: a probe of a reported peer is out of time.
    ProbeDeadline,
    /// Seed: send the peer list to the other seeds, expire old votes.
    Sync,
    /// Seed: check the members it learned from other seeds that have no link to it.
    Unlinked,
}

/// Why a connection ended without the core asking for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The remote closed its side.
    EndOfStream,
    /// The connection was reset (the remote's process died, or it aborted the connection).
    Reset,
    /// Reading failed for another reason.
    ReadFailed(ErrorKind),
    /// Writing failed (or did not complete within `limits.write_timeout`).
    WriteFailed(ErrorKind),
    /// A frame started arriving and did not complete within `limits.read_timeout`.
    Stalled(Duration),
    /// A frame that does not decode.
    Malformed(String),
    /// The outbound queue filled up: the remote does not read.
    QueueFull,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::EndOfStream => write!(f, "connection closed by remote"),
            CloseReason::Reset => write!(f, "connection reset"),
            CloseReason::ReadFailed(k) => write!(f, "read failed: {k}"),
            CloseReason::WriteFailed(ErrorKind::WouldBlock | ErrorKind::TimedOut) => write!(
                f,
                "remote not reading (a write made no progress within limits.write_timeout)"
            ),
            CloseReason::WriteFailed(k) => write!(f, "write failed: {k}"),
            CloseReason::Stalled(t) => write!(f, "incomplete frame for more than {t:?}"),
            CloseReason::Malformed(e) => write!(f, "malformed frame: {e}"),
            CloseReason::QueueFull => write!(f, "outbound queue full (remote not reading)"),
        }
    }
}

impl CloseReason {
    /// The reason for a failed read.
    pub fn read(kind: ErrorKind) -> CloseReason {
        match kind {
            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => CloseReason::Reset,
            kind => CloseReason::ReadFailed(kind),
        }
    }
}

/// Why a dial did not reach an admitted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// Nothing listens there (connection refused).
    Refused,
    /// The TCP connection or the handshake did not complete in time (`pow.timeout`).
    TimedOut,
    /// Connecting failed for another reason (no route, …).
    Connect(ErrorKind),
    /// The remote refused us in the handshake, with its reason.
    Rejected(String),
    /// The handshake went wrong: a malformed or unexpected frame, the wrong identity, a
    /// challenge harder than we accept.
    Handshake(String),
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DialError::Refused => write!(f, "connection refused"),
            DialError::TimedOut => write!(f, "timed out"),
            DialError::Connect(k) => write!(f, "connect failed: {k}"),
            DialError::Rejected(r) => write!(f, "refused by the remote: {r}"),
            DialError::Handshake(e) => write!(f, "handshake failed: {e}"),
        }
    }
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
    Closed { conn: ConnId, reason: CloseReason },
    /// A dial did not reach an admitted connection.
    DialFailed {
        addr: SocketAddr,
        purpose: Purpose,
        reason: DialError,
    },
    /// A local application connected to the API listener.
    ApiConnected { conn: ConnId },
    /// A whole API message from a local application.
    ApiFrame { conn: ConnId, msg: ApiMsg },
    /// A timer the core set is due.
    Timer(Timer),
    /// SIGINT/SIGTERM: say goodbye.
    Shutdown,
}

/// What a core asks the runtime to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Queue one message (encoded once) to each of these connections.
    Send { to: Vec<ConnId>, msg: Msg },
    /// Like `Send`, for a gossip item pushed as it spreads, with this message id: while the
    /// frame is still held in a connection's queue (the batch window), a `Withdraw` can take
    /// it back. These pushes are what a link's batch window grows with (`outbox`); an item
    /// sent as an answer (catch-up, a graft) goes by `Send`.
    Forward {
        to: Vec<ConnId>,
        msg: Msg,
        id: [u8; 32],
    },
    /// The remote on `conn` has sent us message `id` itself: if our frame of it to that
    /// connection is still queued and unsent, drop it (it would only be a duplicate there).
    Withdraw { conn: ConnId, id: [u8; 32] },
    /// Queue one API message to a local application.
    SendApi { to: ConnId, msg: ApiMsg },
    /// Close a connection; the core has already done its bookkeeping.
    Close { conn: ConnId },
    Dial {
        addr: SocketAddr,
        purpose: Purpose,
        /// The key the remote must show (a listed peer's); `None`: a seed's key, which the
        /// runtime knows from the configuration or its pins, or any key.
        key: Option<crate::wire::PublicKey>,
    },
    /// Deliver `Event::Timer(timer)` once, `after` from now.
    SetTimer { after: Duration, timer: Timer },
    /// Peer: this node was removed from the peer list while alive. Connections dialed from
    /// now on (the `Hello`) carry a new incarnation, higher than every earlier one.
    Reincarnate,
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

    pub fn timer(after: Duration, timer: Timer) -> Action {
        Action::SetTimer { after, timer }
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
    /// A `gossip_received` record kept raw until it is written (`expanded`): then `fields`
    /// and `line` are empty.
    pub receipt: Option<Receipt>,
}

/// The first receipt of a gossip item, as a record keeps it until it is written. It is the
/// record of every delivery: its words (the id in hex, the text made printable, the sender's
/// address) were made in the core, before the frames it decided went out, with half a dozen
/// allocations; now they are made when the record is written, after the sends and outside
/// the core's lock, and the simulator, which reads the record and writes nothing, never
/// makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub id: [u8; 32],
    pub data_type: u16,
    pub payload: Payload,
    pub from: SocketAddr,
    /// Pulled by catch-up (`via: "sync"`), not pushed by gossip.
    pub caught_up: bool,
}

impl Record {
    pub fn new(event: &'static str) -> Record {
        Record {
            event,
            fields: Vec::new(),
            line: None,
            receipt: None,
        }
    }

    /// A `gossip_received` record, its words made when it is written.
    pub fn received(receipt: Receipt) -> Record {
        Record {
            receipt: Some(receipt),
            ..Record::new("gossip_received")
        }
    }

    /// The record with its words: fields and line (what a raw receipt leaves to the writer).
    pub fn expanded(self) -> Record {
        match &self.receipt {
            Some(r) => crate::peer::records::receipt_words(r),
            None => self,
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

    /// A `rejected` record: who, and why (which may quote what the remote sent: it is kept to
    /// one line and cut short).
    pub fn rejected(remote: impl ToString, reason: impl ToString) -> Record {
        let reason = crate::texts::printable(&reason.to_string(), 2 * crate::texts::MAX_SHOWN);
        Record::new("rejected")
            .field("remote", remote.to_string())
            .field("reason", reason)
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

    /// A burst of events about to be handled in this order, one `handle` each, with nothing
    /// handled in between (one read's frames): the core may look at them first, to ask for
    /// the memory they will need ([`Core::prefetch`]). Changes no behaviour.
    fn prepare(&mut self, _burst: &[Event]) {}

    /// A cache hint for the burst's event `k`, to be handled soon (see [`crate::hint`]). It may
    /// keep what it learned for its later hints (`&mut`), never anything `handle` decides by.
    fn prefetch(&mut self, _k: usize) {}

    /// Repeated gossip items ignored so far (for `stats`).
    fn gossip_duplicates(&self) -> u64 {
        0
    }

    /// Gossip items dropped for a link's rate so far (for `stats`).
    fn gossip_dropped(&self) -> u64 {
        0
    }

    /// Tree mode (for `stats`): `Prune` frames sent and ids grafted so far, and the
    /// neighbours pushed items whole now. `None` in flood mode and for seeds.
    fn tree_counters(&self) -> Option<[u64; 3]> {
        None
    }

    /// Rooted mode: the root this peer's tree hangs from and its distance to it in links.
    /// `None` in the other modes, before a peer's first neighbour, and for seeds.
    fn tree_root(&self) -> Option<(SocketAddr, u8)> {
        None
    }

    /// Rooted mode: how many neighbours name this peer parent (`None` as for `tree_root`).
    fn tree_children(&self) -> Option<usize> {
        None
    }

    /// After `Event::Shutdown`: a goodbye the core could not send yet (a peer's `Leave` with
    /// no seed connection up) and is dialing for. The runtime keeps serving events for a
    /// bounded while (`pow.timeout`) until this is false, then stops.
    fn holds_goodbye(&self) -> bool {
        false
    }
}

/// Timers a core asked for, earliest first: the TCP runtime keeps one, and so can a test that
/// drives a core by hand.
#[derive(Debug, Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<(Instant, u64, Timer)>>,
    /// Breaks ties between equal deadlines in the order they were set.
    seq: u64,
}

impl TimerQueue {
    pub fn set(&mut self, at: Instant, timer: Timer) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, timer)));
    }

    /// Takes every `SetTimer` in `actions`, asked for at `now`.
    pub fn take_from(&mut self, actions: &[Action], now: Instant) {
        for a in actions {
            if let Action::SetTimer { after, timer } = a {
                self.set(now + *after, *timer);
            }
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The earliest timer due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(t)| t.2),
            _ => None,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_fire_in_deadline_order_and_ties_in_the_order_set() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.take_from(
            &[
                Action::timer(Duration::from_secs(2), Timer::Gossip),
                Action::timer(Duration::from_secs(1), Timer::Sync),
                Action::timer(Duration::from_secs(1), Timer::SeedRetry),
            ],
            t0,
        );
        assert_eq!(q.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop_due(t0), None);
        let t = t0 + Duration::from_secs(1);
        assert_eq!(q.pop_due(t), Some(Timer::Sync));
        assert_eq!(q.pop_due(t), Some(Timer::SeedRetry));
        assert_eq!(q.pop_due(t), None);
        assert_eq!(q.pop_due(t0 + Duration::from_secs(5)), Some(Timer::Gossip));
        assert!(q.is_empty());
    }
}
