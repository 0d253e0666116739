//! The simulator: the real [`SeedCore`] and [`PeerCore`] of many nodes in one process, on
//! virtual time, with seeded randomness, so a network of ten thousand peers can be studied on a
//! laptop. It is the second runtime of the contract in [`crate::node`]: it carries out the same
//! actions as the TCP runtime, with a discrete-event queue instead of sockets and threads.
//!
//! What it models: one-way latency drawn per frame from a range, frames on one connection in
//! order, a dial that takes two round trips (TCP, then the handshake) and fails at once on a
//! crashed node or after `pow.timeout` on a hung one, a crash (every link of the node resets), a
//! hang (the node stops reading and answering, its links stay open), and a cut between two sets
//! of peers (frames across it are lost, dials across it time out), and with `--batching` the
//! batch window of each connection's queue (a busy link holds frames as a real node's does,
//! see [`World::model_batching`]), and with `--cpus` a pool of CPUs every node shares, as the
//! processes of a local network share a machine ([`Cpus`]). What it does not model: proof of
//! work (admission is free), bandwidth, a queue's bounds (no queue fills up; `Withdraw` is a
//! no-op), the API.
//!
//! Everything is deterministic: one RNG seeded from `--rng` draws latencies and the scenario,
//! each core gets its own RNG seeded from it, every map whose order reaches an action is
//! ordered, and virtual time starts at a fixed Unix time. Same flags, same run.

pub mod scenario;

use std::collections::{BTreeMap, BinaryHeap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::node::{
    Action, CloseReason, ConnId, Core, DialError, Event, Now, Purpose, Remote, Timer,
};
use crate::outbox::{Batching, FrameRate};
use crate::peer::PeerCore;
use crate::seed::SeedCore;
use crate::wire::{Msg, PublicKey, Role};

/// Virtual time in microseconds since the start of the run.
pub type Micros = u64;
/// A node, numbered in the order it was created; never reused.
pub type NodeId = usize;

/// The timing wheel's span: events due within this many microseconds of the present wait in
/// its buckets (one per microsecond), later ones in the far heap. Frames take milliseconds, so
/// nearly every event goes straight into a bucket and comes out in order without a heap.
const WHEEL: usize = 1 << 17;

/// How far ahead the event loop starts fetching what a gossip frame will touch (see
/// `World::prefetch`), in events: the connection end at `3 * AHEAD`, the receiving node at
/// `2 * AHEAD`, its core's hot lines at `AHEAD`, its link at `AHEAD / 2`, what its tree
/// points to at `AHEAD / 4`.
const AHEAD: usize = 8;
/// The ring of connections predicted ahead: a power of two above `3 * AHEAD`.
const AHEAD_RING: usize = 32;

/// The Unix time at which every run starts (texts and message ids depend on it).
const EPOCH_UNIX_MS: u64 = 1_800_000_000_000;

pub fn micros(d: Duration) -> Micros {
    d.as_micros() as Micros
}

/// A node's core.
pub enum NodeCore {
    Seed(Box<SeedCore>),
    Peer(Box<PeerCore>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Created, not started yet.
    Waiting,
    Running,
    /// Crashed: gone, its links reset.
    Crashed,
    /// Hung: its process stopped; its links stay open but nothing is read or answered.
    Hung,
}

pub struct Node {
    pub addr: SocketAddr,
    pub role: Role,
    pub core: NodeCore,
    pub state: NodeState,
    /// Which side of a cut the node is on (peers only; seeds are reachable from both).
    pub side: u8,
    /// When the node crashed or hung.
    pub fault_at: Option<Micros>,
    /// Its connection ends, open or not.
    conns: Vec<ConnId>,
    /// Bytes of the frames it was sent, as encoded on the wire, when counted (late joiners;
    /// see [`World::count_bytes_in`]).
    pub bytes_in: Option<u64>,
    /// What its `Hello` carries; raised by [`Action::Reincarnate`].
    incarnation: u64,
    /// The key it shows in a handshake.
    pub key: PublicKey,
    /// It drops every item it should push on (`Action::Forward`): a neighbour that keeps its
    /// place in the tree but passes nothing along it.
    pub drops: bool,
}

/// One end of a connection.
struct ConnEnd {
    node: NodeId,
    /// The other end.
    other: ConnId,
    open: bool,
    /// The latest delivery scheduled to this end: later ones are scheduled after it, so a
    /// connection delivers in order.
    last_at: Micros,
}

/// What the event queue holds. Kept small (events are moved in and out of the queue's buckets,
/// tens of millions of them in a large run): a gossip frame, nearly every event, has its own
/// variant with the frame's fields; other events (an `Event` holds the largest `Msg`, a
/// `Hello`, some 200 bytes) are boxed.
enum Pending {
    /// An event for a node's core.
    Deliver {
        node: NodeId,
        event: Box<Event>,
    },
    /// An event arriving on a connection end (a frame, or the remote's close); dropped if that
    /// end was closed meanwhile.
    OnConn {
        conn: ConnId,
        event: Box<Event>,
    },
    /// A `Msg::Gossip` frame arriving on a connection end, as `OnConn` would carry it.
    Gossip {
        conn: ConnId,
        data_type: u16,
        ttl: u8,
        nonce: u64,
        payload: crate::wire::Payload,
    },
    /// A frame (`OnConn` or `Gossip`) that waited for a CPU and has one now (see `Cpus`).
    Reserved(Box<Pending>),
    /// A dial reaches the acceptor.
    Accept {
        from: NodeId,
        to: NodeId,
        purpose: Purpose,
    },
    Timer {
        node: NodeId,
        timer: Timer,
    },
    /// A step of the scenario.
    Step(Box<scenario::Step>),
}

/// An event due beyond the wheel, ordered for the far heap: earliest first, then in the order
/// of scheduling.
struct Far {
    at: Micros,
    seq: u64,
    what: Pending,
}

impl PartialEq for Far {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Far {}

impl PartialOrd for Far {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Far {
    /// Reversed, so the max-heap pops the earliest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A gossip frame predicted to come (see `World::prefetch`).
#[derive(Clone, Copy, Default)]
struct Ahead {
    /// 0: none.
    conn: ConnId,
    /// Its payload's address (`Arc::as_ptr`).
    payload: usize,
    /// Its item's id, for the receiver's message list to fetch the slot it will probe (when
    /// the frame is likely the first receipt there).
    id: [u8; 32],
}

/// Something a core wrote to its output, as the simulator's observers see it.
pub struct Observed<'a> {
    pub at: Micros,
    pub node: NodeId,
    pub record: &'a crate::node::Record,
}

/// The simulated network.
pub struct World {
    pub config: Config,
    pub now: Micros,
    base: Instant,
    /// What is due, in the order of (time, order of scheduling). `wheel` holds what is due
    /// within `WHEEL` of `now`, a bucket per microsecond (bucket `t % WHEEL` holds time `t`),
    /// each in the order it was scheduled; `occupied` marks the non-empty buckets. The bucket
    /// of `now` is taken whole into `current` and handed out from there (what is scheduled for
    /// `now` meanwhile goes into the bucket again, behind it). `far` holds the rest (timers,
    /// seconds away) by time and a tie-breaking sequence number, and feeds the wheel as the
    /// clock comes within `WHEEL` of them: before anything else can be scheduled at their
    /// time, so a bucket stays in the order of scheduling.
    wheel: Vec<Vec<Pending>>,
    occupied: Vec<u64>,
    in_wheel: usize,
    /// The bucket being handed out, reversed (the next event last).
    current: Vec<Pending>,
    /// Emptied buckets, kept for reuse: a bucket is filled and emptied every microsecond of a
    /// busy run, and allocating each anew cost more than the queue's own work.
    spare: Vec<Vec<Pending>>,
    far: BinaryHeap<Far>,
    seq: u64,
    pub rng: StdRng,
    rng_seed: u64,
    pub nodes: Vec<Node>,
    by_addr: BTreeMap<SocketAddr, NodeId>,
    conns: Vec<ConnEnd>,
    latency: (Micros, Micros),
    /// Frames across the cut are lost while it holds.
    pub cut: bool,
    /// Events handed to cores, and frames among them.
    pub events: u64,
    pub frames: u64,
    /// Each node's frames sent, those lost across a cut too, as `frames` counts them (a hot
    /// spot of a tree shows here); apart from `nodes`, so counting one is no cache miss in a
    /// large run.
    pub frames_out: Vec<u64>,
    /// Frames delivered by type, when counted (`count_frame_types`; off, a large run pays
    /// nothing for it).
    pub frame_types: Option<std::collections::BTreeMap<&'static str, u64>>,
    actions: Vec<Action>,
    /// Whether any node counts the bytes it is sent: if none does, a frame sent need not look
    /// at its receiver (one cache miss fewer per frame in a large run).
    counting_bytes: bool,
    /// The connections of the gossip frames predicted to come next (0: none), by the number of
    /// events taken (`taken`) at which each is due; see `prefetch`.
    ahead: [Ahead; AHEAD_RING],
    taken: usize,
    /// The ids of the last few payloads seen ahead (see `Ahead::id`), by the payload's address,
    /// type and nonce, the next to replace at `ids_next`.
    ids: [(usize, u16, u64, [u8; 32]); 4],
    ids_next: usize,
    /// When set, every action every core returns, in order, with its time and node: two runs
    /// with the same parameters must produce the same trace.
    pub trace: Option<Vec<String>>,
    /// The batch window modelled on every connection (`model_batching`), and each
    /// connection end's queue state, by the end frames arrive at.
    batching: Option<Batching>,
    queues: Vec<Queue>,
    /// The CPUs modelled (`model_cpus`), if any.
    cpus: Option<Cpus>,
}

/// A pool of CPUs every node shares, as a hundred processes share the cores of one machine:
/// a frame is read when a CPU is free and takes it for `frame` µs; each send (a frame that
/// leaves at once, or a batch at the end of its window) takes one for `send` µs.
#[derive(Debug, Clone)]
pub struct Cpus {
    /// When each CPU is next free.
    free: Vec<Micros>,
    pub frame: Micros,
    pub send: Micros,
}

impl Cpus {
    pub fn new(n: usize, frame: Micros, send: Micros) -> Cpus {
        Cpus {
            free: vec![0; n.max(1)],
            frame,
            send,
        }
    }

    /// The CPU free first, and when.
    fn first_free(&self) -> (usize, Micros) {
        let mut best = (0, self.free[0]);
        for (i, f) in self.free.iter().enumerate() {
            if *f < best.1 {
                best = (i, *f);
            }
        }
        best
    }

    /// Takes the first free CPU for `cost` from `at` (or from when it is free); when the
    /// work starts.
    fn take(&mut self, at: Micros, cost: Micros) -> Micros {
        let (i, f) = self.first_free();
        let start = f.max(at);
        self.free[i] = start + cost;
        start
    }
}

/// What the model of a connection's send queue keeps (see `World::depart`).
#[derive(Debug, Clone, Copy, Default)]
struct Queue {
    /// When frames last went out, if ever.
    last_send: Option<Micros>,
    /// The end of the window frames are held for now, if any.
    flush_at: Option<Micros>,
    /// Pushes a second (gossip items forwarded), as the real queue counts them, and when
    /// last updated.
    rate: FrameRate,
    rate_at: Option<Micros>,
}

impl World {
    /// A world with the seeds of `config` (addresses replaced by `seeds` simulated ones).
    pub fn new(mut config: Config, seeds: usize, latency: (Duration, Duration), rng: u64) -> World {
        config.seeds = (0..seeds)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 9001 + i as u16)))
            .collect();
        // Every node runs on this thread and checks the same few seeds' signatures: each is
        // verified once.
        crate::keys::remember_verifications();
        // One payload allocation reaches every peer: a repeat sharing it is known without
        // hashing it again.
        crate::peer::gossip::share_payloads();
        let mut w = World {
            config,
            now: 0,
            base: Instant::now(),
            wheel: (0..WHEEL).map(|_| Vec::new()).collect(),
            occupied: vec![0; WHEEL / 64],
            in_wheel: 0,
            current: Vec::new(),
            spare: Vec::new(),
            far: BinaryHeap::new(),
            seq: 0,
            rng: StdRng::seed_from_u64(rng),
            rng_seed: rng,
            nodes: Vec::new(),
            by_addr: BTreeMap::new(),
            conns: vec![ConnEnd {
                node: usize::MAX,
                other: 0,
                open: false,
                last_at: 0,
            }],
            latency: (micros(latency.0), micros(latency.1.max(latency.0))),
            cut: false,
            events: 0,
            frames: 0,
            frame_types: None,
            frames_out: Vec::new(),
            actions: Vec::new(),
            counting_bytes: false,
            ahead: [Ahead::default(); AHEAD_RING],
            taken: 0,
            ids: [(0, 0, 0, [0; 32]); 4],
            ids_next: 0,
            trace: None,
            batching: None,
            queues: Vec::new(),
            cpus: None,
        };
        // The seeds' keys are in the config, as the demo writes them into `seeds.yaml`: peers
        // check the certificates in the seeds' lists with them.
        for addr in w.config.seeds.clone() {
            let key = crate::keys::NodeKey::from_secret(sim_key(&addr));
            w.config.seed_keys.insert(addr, key.public());
        }
        for (i, addr) in w.config.seeds.clone().into_iter().enumerate() {
            let rng = StdRng::seed_from_u64(rng ^ 0x5eed_0000_0000_0000 ^ i as u64);
            // Seeds sign their votes, so theirs are real keys (derived from the address).
            let key = std::sync::Arc::new(crate::keys::NodeKey::from_secret(sim_key(&addr)));
            let core = SeedCore::new(addr, w.config.clone(), rng, key.clone());
            let id = w.add(addr, Role::Seed, NodeCore::Seed(Box::new(core)));
            w.nodes[id].key = key.public();
        }
        w
    }

    fn add(&mut self, addr: SocketAddr, role: Role, core: NodeCore) -> NodeId {
        let id = self.nodes.len();
        self.frames_out.push(0);
        self.nodes.push(Node {
            addr,
            role,
            core,
            state: NodeState::Waiting,
            side: 0,
            fault_at: None,
            conns: Vec::new(),
            bytes_in: None,
            incarnation: 1,
            key: sim_key(&addr),
            drops: false,
        });
        self.by_addr.insert(addr, id);
        id
    }

    /// Creates a peer, not yet started. Its address is derived from its node id
    /// ([`peer_addr`]), so records name nodes without a lookup.
    pub fn add_peer(&mut self) -> NodeId {
        self.add_peer_at(peer_addr(self.nodes.len()))
    }

    /// Creates a peer at `addr`, not yet started (a Sybil's identities share one host).
    pub fn add_peer_at(&mut self, addr: SocketAddr) -> NodeId {
        let i = self.nodes.len();
        let rng = StdRng::seed_from_u64(
            self.rng_seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1),
        );
        let mut core = PeerCore::new(addr, self.config.clone(), rng);
        // The key pair it shows in handshakes (the duplicate-link rule compares keys) and
        // signs its numbers with as a root in rooted mode.
        let key = std::sync::Arc::new(crate::keys::NodeKey::from_secret(sim_key(&addr)));
        let public = key.public();
        core.set_signer(key);
        let id = self.add(addr, Role::Peer, NodeCore::Peer(Box::new(core)));
        self.nodes[id].key = public;
        id
    }

    fn at_now(&self) -> Now {
        Now {
            mono: self.base + Duration::from_micros(self.now),
            unix_ms: EPOCH_UNIX_MS + self.now / 1000,
        }
    }

    fn push(&mut self, at: Micros, what: Pending) {
        self.seq += 1;
        // Nothing is scheduled in the past; were it, it would be due at once.
        let at = at.max(self.now);
        if at < self.now + WHEEL as Micros {
            self.put_in_bucket(at, what);
        } else {
            self.far.push(Far {
                at,
                seq: self.seq,
                what,
            });
        }
    }

    fn put_in_bucket(&mut self, at: Micros, what: Pending) {
        let b = at as usize % WHEEL;
        if self.wheel[b].capacity() == 0 {
            if let Some(v) = self.spare.pop() {
                self.wheel[b] = v;
            }
        }
        self.wheel[b].push(what);
        self.occupied[b / 64] |= 1 << (b % 64);
        self.in_wheel += 1;
    }

    /// Moves the clock to `t` (no earlier than now, nothing due in between): far entries now
    /// within `WHEEL` go into their buckets, behind nothing (nothing could be scheduled at
    /// their time while they were beyond the wheel).
    fn advance(&mut self, t: Micros) {
        if t == self.now {
            return;
        }
        self.now = t;
        while self.far.peek().is_some_and(|f| f.at < t + WHEEL as Micros) {
            let f = self.far.pop().expect("peeked");
            self.put_in_bucket(f.at, f.what);
        }
    }

    /// The time of the first non-empty bucket after now's (the wheel is not empty).
    fn next_in_wheel(&self) -> Micros {
        let start = (self.now as usize + 1) % WHEEL;
        let mut w = start / 64;
        let mut bits = self.occupied[w] & (u64::MAX << (start % 64));
        loop {
            if bits != 0 {
                let b = w * 64 + bits.trailing_zeros() as usize;
                let ahead = (b + WHEEL - start) % WHEEL + 1;
                return self.now + ahead as Micros;
            }
            w = (w + 1) % self.occupied.len();
            bits = self.occupied[w];
        }
    }

    /// Takes the next event due no later than `until`, moving the clock to its time.
    fn next_due(&mut self, until: Micros) -> Option<Pending> {
        loop {
            if self.now > until {
                return None;
            }
            if let Some(what) = self.current.pop() {
                return Some(what);
            }
            let b = self.now as usize % WHEEL;
            if !self.wheel[b].is_empty() {
                let mut bucket = std::mem::take(&mut self.wheel[b]);
                self.in_wheel -= bucket.len();
                self.occupied[b / 64] &= !(1 << (b % 64));
                bucket.reverse();
                let emptied = std::mem::replace(&mut self.current, bucket);
                if emptied.capacity() > 0 {
                    self.spare.push(emptied);
                }
                continue;
            }
            let next = if self.in_wheel > 0 {
                self.next_in_wheel()
            } else {
                self.far.peek()?.at
            };
            if next > until {
                return None;
            }
            self.advance(next);
        }
    }

    /// The event `k` places behind the next one, as the queue stands now (events scheduled
    /// meanwhile may come before it), if it is due within about a millisecond.
    fn ahead(&self, k: usize) -> Option<&Pending> {
        let n = self.current.len();
        if k < n {
            return Some(&self.current[n - 1 - k]);
        }
        let mut rest = k - n;
        let start = (self.now as usize + 1) % WHEEL;
        let mut w = start / 64;
        let mut bits = self.occupied[w] & (u64::MAX << (start % 64));
        for _ in 0..16 {
            while bits != 0 {
                let bucket = &self.wheel[w * 64 + bits.trailing_zeros() as usize];
                if rest < bucket.len() {
                    return Some(&bucket[rest]);
                }
                rest -= bucket.len();
                bits &= bits - 1;
            }
            w = (w + 1) % self.occupied.len();
            bits = self.occupied[w];
        }
        None
    }

    /// Cache hints for the gossip frames to come, called as each event is taken: nearly every
    /// event is a frame to a random peer whose state is out of the cache, and the queue knows
    /// them before they run. Each is fetched in stages, one dependent step per stage (its
    /// connection end, its node, its core, its link), a few events apart, so a frame finds
    /// what it touches in the cache. Hints only: nothing here changes what happens.
    fn prefetch(&mut self) {
        self.taken = self.taken.wrapping_add(1);
        let mut far = Ahead::default();
        let mut new_id = None;
        if let Some(Pending::Gossip {
            conn,
            data_type,
            nonce,
            payload,
            ..
        }) = self.ahead(3 * AHEAD)
        {
            let at = Arc::as_ptr(payload) as *const u8 as usize;
            let known = self
                .ids
                .iter()
                .find(|k| (k.0, k.1, k.2) == (at, *data_type, *nonce));
            let id = match known {
                Some(k) => k.3,
                None => {
                    let id = crate::texts::message_id(*data_type, *nonce, payload);
                    new_id = Some((at, *data_type, *nonce, id));
                    id
                }
            };
            far = Ahead {
                conn: *conn,
                payload: at,
                id,
            };
        }
        if let Some(k) = new_id {
            self.ids[self.ids_next] = k;
            self.ids_next = (self.ids_next + 1) % self.ids.len();
        }
        let slot = |d: usize| (self.taken + d) % AHEAD_RING;
        self.ahead[slot(3 * AHEAD)] = far;
        if let Some(end) = self.conns.get(far.conn as usize) {
            crate::hint::prefetch(end);
        }
        let node_of = |conn: ConnId| self.conns.get(conn as usize).map(|e| e.node);
        if let Some(node) =
            node_of(self.ahead[slot(2 * AHEAD)].conn).and_then(|n| self.nodes.get(n))
        {
            crate::hint::prefetch_lines(node, 2);
        }
        let core_of = |conn: ConnId| match node_of(conn).and_then(|n| self.nodes.get(n)) {
            Some(Node {
                core: NodeCore::Peer(p),
                ..
            }) => Some(p),
            _ => None,
        };
        if let Some(core) = core_of(self.ahead[slot(AHEAD)].conn) {
            core.prefetch_frame();
        }
        let next = &self.ahead[slot(AHEAD / 2)];
        if let Some(core) = core_of(next.conn) {
            core.prefetch_link(next.conn, next.payload, &next.id);
        }
        let nearest = &self.ahead[slot(AHEAD / 4)];
        if let Some(core) = core_of(nearest.conn) {
            core.prefetch_tree(nearest.payload);
        }
    }

    pub fn schedule(&mut self, at: Micros, step: scenario::Step) {
        self.push(at, Pending::Step(Box::new(step)));
    }

    /// Starts node `id` at `at`.
    pub fn start_at(&mut self, at: Micros, id: NodeId) {
        self.push(
            at,
            Pending::Deliver {
                node: id,
                event: Box::new(Event::Started),
            },
        );
    }

    fn latency(&mut self) -> Micros {
        let (lo, hi) = self.latency;
        if hi > lo {
            self.rng.gen_range(lo..=hi)
        } else {
            lo
        }
    }

    /// Schedules `event` to arrive at connection end `conn`, in order after what is already on
    /// its way there.
    fn send_on(&mut self, conn: ConnId, event: Event) {
        let event = Box::new(event);
        self.send_pending(conn, Pending::OnConn { conn, event }, false);
    }

    /// Holds frames on busy connections as a real node's queue does (`outbox::Batching`
    /// with the config's `gossip.batch_window` and `gossip.max_batch_window`): a frame queued
    /// less than a window after the last send leaves at the window's end, with every other
    /// frame queued meanwhile. What it leaves out: a queue's bounds and its half-full rule
    /// (sends at once) and the writer thread; the time nodes spend is `model_cpus`'.
    pub fn model_batching(&mut self) {
        self.batching = Some(Batching {
            min: self.config.gossip.batch_window,
            max: self.config.gossip.max_batch_window,
        });
    }

    /// Models CPUs shared by every node (see [`Cpus`]).
    pub fn model_cpus(&mut self, cpus: Cpus) {
        self.cpus = Some(cpus);
    }

    /// With CPUs modelled, for a frame (or a close) that arrived now and has no CPU yet (not
    /// `reserved`): the first free CPU is taken for reading it, and if that is later than now,
    /// when (it waits until then; waits end in the order frames arrived, as first-free times
    /// only grow).
    fn cpu_wait(&mut self, reserved: bool) -> Option<Micros> {
        if reserved {
            return None;
        }
        let now = self.now;
        let cpus = self.cpus.as_mut()?;
        let start = cpus.take(now, cpus.frame);
        (start > now).then_some(start)
    }

    fn charge_send(&mut self, at: Micros) {
        if let Some(c) = &mut self.cpus {
            c.take(at, c.send);
        }
    }

    /// When a frame queued now for connection end `conn` leaves the sender.
    fn depart(&mut self, conn: ConnId, push: bool) -> Micros {
        let now = self.now;
        let Some(batching) = self.batching else {
            self.charge_send(now);
            return now;
        };
        let i = conn as usize;
        if self.queues.len() <= i {
            self.queues.resize(i + 1, Queue::default());
        }
        let q = &mut self.queues[i];
        if push {
            q.rate.count();
        }
        let dt = q
            .rate_at
            .map(|since| now.saturating_sub(since) as f64 / 1e6);
        if q.rate.update_since(dt) {
            q.rate_at = Some(now);
        }
        if let Some(at) = q.flush_at {
            if at >= now {
                return at;
            }
            q.last_send = Some(at);
            q.flush_at = None;
        }
        let window = micros(batching.window(q.rate.rate));
        let at = match q.last_send {
            Some(t) if now < t + window => {
                q.flush_at = Some(t + window);
                t + window
            }
            _ => {
                q.last_send = Some(now);
                now
            }
        };
        // A send held for the window's end is charged now: a CPU taken from now until then
        // would model a machine idle in between.
        self.charge_send(now);
        at
    }

    /// Schedules `what` (arriving at connection end `conn`) as `send_on` does.
    fn send_pending(&mut self, conn: ConnId, what: Pending, push: bool) {
        let depart = self.depart(conn, push);
        let at = (depart + self.latency()).max(self.conns[conn as usize].last_at);
        self.conns[conn as usize].last_at = at;
        self.push(at, what);
    }

    /// Is the path between two nodes cut?
    fn blocked(&self, a: NodeId, b: NodeId) -> bool {
        self.cut
            && self.nodes[a].role == Role::Peer
            && self.nodes[b].role == Role::Peer
            && self.nodes[a].side != self.nodes[b].side
    }

    /// Runs events until virtual time `until` (inclusive), calling `observe` for every record a
    /// core writes. Returns early with the next scenario step that comes due, for the caller to
    /// carry out (the clock stands at its time); `None` once `until` is reached.
    pub fn run_until(
        &mut self,
        until: Micros,
        observe: &mut dyn FnMut(&Observed),
    ) -> Option<scenario::Step> {
        while let Some(what) = self.next_due(until) {
            self.prefetch();
            let (what, reserved) = match what {
                Pending::Reserved(what) => (*what, true),
                what => (what, false),
            };
            match what {
                Pending::Deliver { node, event } => self.deliver(node, *event, observe),
                Pending::Timer { node, timer } => {
                    if self.nodes[node].state == NodeState::Running {
                        self.deliver(node, Event::Timer(timer), observe);
                    }
                }
                Pending::OnConn { conn, event } => {
                    let end = &self.conns[conn as usize];
                    if !end.open {
                        continue;
                    }
                    let node = end.node;
                    // A close waits for a CPU too: it must not overtake the frames before it.
                    if let Some(at) = self.cpu_wait(reserved) {
                        let what = Pending::OnConn { conn, event };
                        self.push(at, Pending::Reserved(Box::new(what)));
                        continue;
                    }
                    if matches!(*event, Event::Closed { .. }) {
                        self.conns[conn as usize].open = false;
                    }
                    if matches!(*event, Event::Frame { .. }) {
                        self.frames += 1;
                        let from = self.conns[self.conns[conn as usize].other as usize].node;
                        self.frames_out[from] += 1;
                        if self.blocked(node, from) {
                            continue;
                        }
                    }
                    self.deliver(node, *event, observe);
                }
                Pending::Gossip {
                    conn,
                    data_type,
                    ttl,
                    nonce,
                    payload,
                } => {
                    if !self.conns[conn as usize].open {
                        continue;
                    }
                    if let Some(at) = self.cpu_wait(reserved) {
                        let what = Pending::Gossip {
                            conn,
                            data_type,
                            ttl,
                            nonce,
                            payload,
                        };
                        self.push(at, Pending::Reserved(Box::new(what)));
                        continue;
                    }
                    let end = &self.conns[conn as usize];
                    let node = end.node;
                    let from = self.conns[end.other as usize].node;
                    self.frames += 1;
                    self.frames_out[from] += 1;
                    if self.blocked(node, from) {
                        continue;
                    }
                    let msg = Msg::Gossip {
                        data_type,
                        ttl,
                        nonce,
                        payload,
                    };
                    self.deliver(node, Event::Frame { conn, msg }, observe);
                }
                Pending::Accept { from, to, purpose } => self.accept(from, to, purpose, observe),
                Pending::Step(st) => return Some(*st),
                // Unwrapped above; a frame is reserved once.
                Pending::Reserved(_) => {}
            }
        }
        self.advance(self.now.max(until));
        None
    }

    /// Counts the frames delivered from now on by type (`frame_types`).
    pub fn count_frame_types(&mut self) {
        self.frame_types.get_or_insert_with(Default::default);
    }

    /// Hands one event to a node's core and carries out its actions.
    fn deliver(&mut self, node: NodeId, event: Event, observe: &mut dyn FnMut(&Observed)) {
        if let (Some(types), Event::Frame { msg, .. }) = (&mut self.frame_types, &event) {
            *types.entry(msg.name()).or_insert(0) += 1;
        }
        match self.nodes[node].state {
            NodeState::Running => {}
            NodeState::Waiting if event == Event::Started => {
                self.nodes[node].state = NodeState::Running;
                // Its start in Unix ms, as a real node's (seeds check it against their clock).
                self.nodes[node].incarnation = self.at_now().unix_ms;
            }
            // A crashed node's links were reset when it crashed; a hung one reads nothing.
            _ => return,
        }
        self.run_core(node, observe, |core, now, out| match core {
            NodeCore::Seed(c) => c.handle(event, now, out),
            NodeCore::Peer(c) => c.handle(event, now, out),
        });
    }

    /// Lets node `node`'s core act now (`f` calls it) and carries out what it decided.
    fn run_core(
        &mut self,
        node: NodeId,
        observe: &mut dyn FnMut(&Observed),
        f: impl FnOnce(&mut NodeCore, Now, &mut Vec<Action>),
    ) {
        self.events += 1;
        let now = self.at_now();
        let mut actions = std::mem::take(&mut self.actions);
        f(&mut self.nodes[node].core, now, &mut actions);
        self.execute(node, &mut actions, observe);
        self.actions = actions;
    }

    fn execute(
        &mut self,
        node: NodeId,
        actions: &mut Vec<Action>,
        observe: &mut dyn FnMut(&Observed),
    ) {
        if let Some(trace) = &mut self.trace {
            for a in actions.iter() {
                trace.push(format!("{} {node} {a:?}", self.now));
            }
        }
        for action in actions.drain(..) {
            // Forwarded items are what a link's batch window grows with (as in `outbox`),
            // answers and control frames are not.
            let push = matches!(action, Action::Forward { .. });
            if push && self.nodes[node].drops {
                continue;
            }
            match action {
                Action::Send { to, msg } | Action::Forward { to, msg, .. } => {
                    // The last link takes the frame itself: one reference count less to touch.
                    if let Some((&last, rest)) = to.split_last() {
                        for &conn in rest {
                            self.send_frame(node, conn, msg.clone(), push);
                        }
                        self.send_frame(node, last, msg, push);
                    }
                }
                Action::Withdraw { .. } | Action::SendApi { .. } => {}
                Action::Reincarnate => {
                    let now_ms = self.at_now().unix_ms;
                    let n = &mut self.nodes[node];
                    n.incarnation = (n.incarnation + 1).max(now_ms);
                }
                Action::Close { conn } => self.close(node, conn, CloseReason::EndOfStream),
                Action::Dial { addr, purpose, key } => self.dial(node, addr, purpose, key),
                Action::SetTimer { after, timer } => {
                    // Rounded up: a timer never fires before its deadline (a core that
                    // finds nothing due yet would ask again for the same instant).
                    let at = self.now + micros(after + Duration::from_nanos(999));
                    self.push(at, Pending::Timer { node, timer });
                }
                Action::Log(record) => observe(&Observed {
                    at: self.now,
                    node,
                    record: &record,
                }),
            }
        }
    }

    fn send_frame(&mut self, node: NodeId, conn: ConnId, msg: Msg, push: bool) {
        let Some(end) = self.conns.get(conn as usize) else {
            return;
        };
        if !end.open || end.node != node {
            return;
        }
        let other = end.other;
        if self.counting_bytes {
            let to = self.conns[other as usize].node;
            if let Some(bytes) = &mut self.nodes[to].bytes_in {
                *bytes += msg.encode().len() as u64;
            }
        }
        let what = match msg {
            Msg::Gossip {
                data_type,
                ttl,
                nonce,
                payload,
            } => Pending::Gossip {
                conn: other,
                data_type,
                ttl,
                nonce,
                payload,
            },
            msg => Pending::OnConn {
                conn: other,
                event: Box::new(Event::Frame { conn: other, msg }),
            },
        };
        self.send_pending(other, what, push);
    }

    /// Closes one end; the other end hears `reason` after the frames already on their way.
    fn close(&mut self, node: NodeId, conn: ConnId, reason: CloseReason) {
        let Some(end) = self.conns.get_mut(conn as usize) else {
            return;
        };
        if !end.open || end.node != node {
            return;
        }
        end.open = false;
        let other = end.other;
        self.send_on(
            other,
            Event::Closed {
                conn: other,
                reason,
            },
        );
    }

    /// Tells `from` its dial of `addr` failed, `after` from now.
    fn dial_failed(
        &mut self,
        from: NodeId,
        addr: SocketAddr,
        purpose: Purpose,
        after: Micros,
        reason: DialError,
    ) {
        let at = self.now + after;
        let event = Event::DialFailed {
            addr,
            purpose,
            reason,
        };
        let event = Box::new(event);
        self.push(at, Pending::Deliver { node: from, event });
    }

    fn dial(&mut self, from: NodeId, addr: SocketAddr, purpose: Purpose, key: Option<PublicKey>) {
        let rtt = 2 * self.latency();
        let target = self.by_addr.get(&addr).copied();
        if key.is_some_and(|k| target.is_some_and(|t| k != self.nodes[t].key)) {
            // Someone else's key listens there: the connector refuses the Challenge.
            let why = DialError::Handshake(format!("{addr} showed another key"));
            return self.dial_failed(from, addr, purpose, rtt, why);
        }
        match target.map(|t| (t, self.nodes[t].state)) {
            Some((to, NodeState::Running)) if !self.blocked(from, to) => {
                // TCP's round trip, then the challenge: the acceptor takes the link when the
                // connector's answer arrives, a round trip and a half after the dial.
                let at = self.now + rtt + rtt / 2;
                self.push(at, Pending::Accept { from, to, purpose });
            }
            Some((_, NodeState::Hung)) | Some((_, NodeState::Running)) => {
                let timeout = micros(self.config.pow.timeout);
                self.dial_failed(from, addr, purpose, timeout, DialError::TimedOut)
            }
            _ => self.dial_failed(from, addr, purpose, rtt, DialError::Refused),
        }
    }

    /// The acceptor takes the link; the connector hears of it (the `Welcome`) one hop later.
    fn accept(
        &mut self,
        from: NodeId,
        to: NodeId,
        purpose: Purpose,
        observe: &mut dyn FnMut(&Observed),
    ) {
        let addr = self.nodes[to].addr;
        if self.nodes[to].state != NodeState::Running
            || self.nodes[from].state != NodeState::Running
        {
            let reason = if self.nodes[to].state == NodeState::Hung {
                DialError::TimedOut
            } else {
                DialError::Refused
            };
            let after = self.latency();
            self.dial_failed(from, addr, purpose, after, reason);
            return;
        }
        let a = self.conns.len() as ConnId;
        let b = a + 1;
        self.nodes[from].conns.push(a);
        self.nodes[to].conns.push(b);
        let now = self.now;
        self.conns.push(ConnEnd {
            node: from,
            other: b,
            open: true,
            last_at: now,
        });
        self.conns.push(ConnEnd {
            node: to,
            other: a,
            open: true,
            last_at: now,
        });
        let connector = Remote {
            addr: self.nodes[from].addr,
            role: self.nodes[from].role,
            incarnation: self.nodes[from].incarnation,
            key: self.nodes[from].key,
            dialed: None,
        };
        let acceptor = Remote {
            addr,
            role: self.nodes[to].role,
            incarnation: 0,
            key: self.nodes[to].key,
            dialed: Some(purpose),
        };
        // The `Welcome` goes on the connector's end first, so whatever the acceptor's core
        // sends or does on hearing of the link (a `Reject` and a close, say) reaches the
        // connector after it: Welcome first, as over TCP. (Queued the other way round, an
        // acceptor that refused at once made the connector hear the close before the link and
        // never hear of the link, its dial pending for good.)
        self.send_on(
            a,
            Event::Connected {
                conn: a,
                remote: acceptor,
            },
        );
        self.deliver(
            to,
            Event::Connected {
                conn: b,
                remote: connector,
            },
            observe,
        );
    }

    /// The node's process dies: every link it has resets at the other end.
    pub fn crash(&mut self, node: NodeId) {
        if !matches!(self.nodes[node].state, NodeState::Running | NodeState::Hung) {
            return;
        }
        self.nodes[node].state = NodeState::Crashed;
        self.nodes[node].fault_at.get_or_insert(self.now);
        for conn in std::mem::take(&mut self.nodes[node].conns) {
            self.close(node, conn, CloseReason::Reset);
        }
    }

    /// The node's process stops: it reads and answers nothing, its links stay open.
    pub fn hang(&mut self, node: NodeId) {
        if self.nodes[node].state == NodeState::Running {
            self.nodes[node].state = NodeState::Hung;
            self.nodes[node].fault_at = Some(self.now);
        }
    }

    /// From now on, node `node` counts the bytes of the frames it is sent (`Node::bytes_in`).
    pub fn count_bytes_in(&mut self, node: NodeId) {
        self.nodes[node].bytes_in.get_or_insert(0);
        self.counting_bytes = true;
    }

    pub fn peer(&self, node: NodeId) -> Option<&PeerCore> {
        match &self.nodes[node].core {
            NodeCore::Peer(p) => Some(p),
            NodeCore::Seed(_) => None,
        }
    }

    /// Lets a peer generate a message now.
    pub fn publish(&mut self, node: NodeId, observe: &mut dyn FnMut(&Observed)) {
        if self.nodes[node].state != NodeState::Running {
            return;
        }
        self.run_core(node, observe, |core, now, out| {
            if let NodeCore::Peer(p) = core {
                p.publish(now, out);
            }
        });
    }
}

/// The address of simulated node `id`: distinct hosts in 127.0.0.0/8 (a simulated peer is its
/// own host), port 9000. Seeds are 127.0.0.1:9001 and up.
pub fn peer_addr(id: NodeId) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 1 + (id >> 16) as u8, (id >> 8) as u8, id as u8);
    SocketAddr::from((ip, 9000))
}

/// The node id behind a peer address made by [`peer_addr`].
pub fn peer_id(addr: &SocketAddr) -> Option<NodeId> {
    match addr {
        SocketAddr::V4(a) if a.port() == 9000 => {
            let [_, b, c, d] = a.ip().octets();
            Some(((b as usize).checked_sub(1)? << 16) | (c as usize) << 8 | d as usize)
        }
        _ => None,
    }
}

/// A peer's key in the simulator (and a seed's secret): the handshake is not simulated (its
/// checks are unit-tested in `handshake.rs`), so a key stands for the address it is derived
/// from.
pub fn sim_key(addr: &SocketAddr) -> PublicKey {
    use sha2::{Digest, Sha256};
    Sha256::digest(addr.to_string().as_bytes()).into()
}
