//! The thread-per-connection runtime shared by seeds and peers. It owns the sockets and
//! threads and makes no protocol decision: it admits connections (limits, then the proof-of-work
//! handshake), reads frames and hands them to the core as [`Event`]s, and carries out the
//! [`Action`]s the core returns.
//!
//! Threads: one accept thread, one timer thread (it sleeps until the earliest deadline the core
//! asked for with `SetTimer`, or the next `stats` record), and per connection one reader (which also ran the
//! handshake) and one writer. A reader hands every frame of one `read` to the core in one go
//! (one lock, one timestamp); the frames the core decides are appended to each connection's
//! [`Outbox`] under the core lock, then sent by the reader itself with non-blocking sends, one
//! per connection (or, on a link that sent within `gossip.batch_window`, by the flusher thread
//! when the window ends). A connection's writer thread wakes only when its socket is full. No lock is
//! ever held across a blocking read or write, so a remote that stops reading cannot stall
//! anyone else: when its bounded outbox is full it is dropped.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::MsgFlags;
use parking_lot::{Condvar, Mutex};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::api::ApiReader;
use crate::config::Config;
use crate::executor::{execute, Queue};
use crate::handshake::{AcceptorHandshake, Admission, Connector, HandshakeError};
use crate::keys::{NodeKey, SeedKeys};
use crate::limits::{DifficultyChange, DifficultyController};
use crate::node::{
    Action, CloseReason, ConnId, Core, DialError, Event, Now, Purpose, Record, Remote, TimerQueue,
};
use crate::outbox::{Batch, Batching, Flushed, Outbox, When};
use crate::output::Output;
use crate::wire::{Frame, FrameReader, Msg, PublicKey, Role};

/// Bytes read per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// A thread keeps its action buffer between dispatches up to this many actions (60 KiB);
/// a larger one, from a burst, goes.
const KEPT_ACTIONS: usize = 256;

thread_local! {
    static ACTIONS: std::cell::RefCell<Vec<Action>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// How often a blocked reader wakes while part of a frame is waiting for the rest (to cut off
/// a remote that stalls mid-frame, `limits.read_timeout`).
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// How often a reader wakes on a quiet socket with no partial frame, and the timer thread with
/// no timer due sooner. Neither need: a close (the core's, or shutdown's) shuts the socket
/// down, which ends the blocked read at once, and shutdown wakes the timer thread; this is
/// only a safety net. Waking every `IDLE_WAKE` instead cost 200 idle peers with ten links
/// each 4,000 wake-ups a second between them.
const QUIET_WAKE: Duration = Duration::from_secs(30);
/// Longest wait at shutdown for queued goodbyes to be written, and then again for the remotes
/// to close their side (so no unread data turns our close into a reset that could discard
/// the goodbye at the other end).
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// How many frames of a burst ahead of the one handled its memory is asked for (see
/// `dispatch_all`; the peer's core asks in three steps two frames apart).
const PREFETCH_AHEAD: usize = 6;

/// Thread names, for what each thread does most (a profile of a busy peer reads per thread
/// name): one that dials and after the handshake reads the link, and the reader of an
/// accepted link (which first runs its handshake).
const DIALER: &str = "dial-then-read";
const ACCEPTED_READER: &str = "read-accepted";

/// Counters for the `stats` event.
#[derive(Default)]
pub struct Counters {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub connections: AtomicUsize,
    pub threads: AtomicUsize,
    pub pending_handshakes: AtomicUsize,
    /// Local API clients connected (their own budget, `api.max_clients`).
    pub api_clients: AtomicUsize,
    /// Gossip frames taken back before they were sent: the remote had sent us the message.
    pub withdrawn: AtomicU64,
    /// Gossip frames left out for a connection whose queue was full.
    pub skipped: AtomicU64,
    /// `read` calls that returned bytes, and `send`/`write` calls that took bytes: with
    /// `frames_in`/`frames_out`, how many frames each system call carries.
    pub reads: AtomicU64,
    pub writes: AtomicU64,
}

#[derive(Clone)]
struct ConnHandle {
    outbox: Arc<Outbox>,
    stream: Arc<TcpStream>,
}

impl Queue for ConnHandle {
    fn push(&self, frame: &Frame) -> bool {
        self.outbox.push(frame.clone())
    }
    fn push_item(&self, frame: &Frame, id: Option<[u8; 32]>) -> bool {
        self.outbox.push_item(frame.clone(), id)
    }
    fn withdraw(&self, id: &[u8; 32]) -> bool {
        self.outbox.withdraw(id)
    }
    fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.outbox, &other.outbox)
    }
}

impl ConnHandle {
    /// Stops the writer and closes the socket both ways (queued bytes are dropped).
    fn close(&self) {
        self.outbox.close();
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

/// A connection's queued bytes and the socket they go to.
type Conn = (Arc<Outbox>, Arc<TcpStream>);

/// Flushes due at the end of their connection's batch window.
#[derive(Default)]
struct Flusher {
    due: Mutex<Vec<(Instant, Conn)>>,
    wake: Condvar,
}

#[derive(Default)]
struct ConnTable {
    /// Looked up for every frame queued (`execute`): hashed by `IdHash`, not SipHash.
    by_id: HashMap<ConnId, ConnHandle, crate::idhash::IdHash>,
}

/// Who this node is.
pub struct Identity {
    pub role: Role,
    pub addr: SocketAddr,
    /// The start time in Unix ms; raised by [`Action::Reincarnate`].
    pub incarnation: AtomicU64,
    pub key: Arc<NodeKey>,
}

pub struct Runtime<C: Core> {
    core: Mutex<C>,
    conns: Mutex<ConnTable>,
    /// Open sockets per remote IP (accepted ones), for the per-IP cap.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    pub output: Output,
    pub config: Config,
    pub identity: Identity,
    pub counters: Counters,
    next_conn: AtomicU64,
    stopping: AtomicBool,
    rng: Mutex<StdRng>,
    /// Admission difficulty, raised while flooded with handshakes.
    difficulty: Mutex<DifficultyController>,
    /// The configured seeds' keys, given or pinned on first use.
    seed_keys: Mutex<SeedKeys>,
    flusher: Flusher,
    /// The core's timers, and a condition variable that wakes the timer thread when one is set
    /// earlier than it sleeps.
    timers: Mutex<TimerQueue>,
    timers_changed: Condvar,
}

/// Decrements a counter when dropped, so every exit path releases its slot.
struct CountGuard<'a>(&'a AtomicUsize);

impl Drop for CountGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<C: Core> Runtime<C> {
    /// Starts the accept thread and the ticker, then tells the core it has started.
    pub fn start(
        core: C,
        listener: TcpListener,
        identity: Identity,
        seed_keys: SeedKeys,
        config: Config,
        output: Output,
    ) -> Arc<Self> {
        let rt = Arc::new(Runtime {
            core: Mutex::new(core),
            conns: Mutex::new(ConnTable::default()),
            per_ip: Mutex::new(HashMap::new()),
            output,
            identity,
            counters: Counters::default(),
            next_conn: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
            rng: Mutex::new(StdRng::from_entropy()),
            difficulty: Mutex::new(DifficultyController::new(
                config.pow.difficulty,
                config.pow.max_difficulty,
                config.pow.flood_threshold,
                Duration::from_secs(1),
                Instant::now(),
            )),
            seed_keys: Mutex::new(seed_keys),
            flusher: Flusher::default(),
            timers: Mutex::new(TimerQueue::default()),
            timers_changed: Condvar::new(),
            config,
        });
        // The main thread counts too.
        rt.counters.threads.store(1, Ordering::Relaxed);
        let r = rt.clone();
        rt.spawn("accept", move || r.accept_loop(listener));
        let r = rt.clone();
        rt.spawn("timers", move || r.timer_loop());
        let r = rt.clone();
        rt.spawn("flusher", move || r.flush_loop());
        rt.dispatch(Event::Started);
        rt
    }

    fn spawn(self: &Arc<Self>, name: &str, f: impl FnOnce() + Send + 'static) {
        let threads = self.clone();
        threads.counters.threads.fetch_add(1, Ordering::Relaxed);
        let res = std::thread::Builder::new()
            .name(name.to_string())
            .stack_size(self.config.limits.thread_stack_kib * 1024)
            .spawn(move || {
                let _g = CountGuard(&threads.counters.threads);
                f();
            });
        if let Err(e) = res {
            self.counters.threads.fetch_sub(1, Ordering::Relaxed);
            log::error!("cannot spawn thread {name}: {e}");
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Feeds one event to the core and carries out its actions.
    pub fn dispatch(self: &Arc<Self>, event: Event) {
        self.dispatch_all(&mut vec![event], crate::output::unix_us());
    }

    /// Feeds events to the core under one lock and carries out their actions. The records
    /// they produce are stamped `at_us`, the moment the events were taken in (a read's
    /// arrival, a message's creation), not the later moment they are written after the frames
    /// went out.
    ///
    /// `events` is left empty, its buffer kept for the caller's next read.
    fn dispatch_all(self: &Arc<Self>, events: &mut Vec<Event>, at_us: u64) {
        let now = Now::real();
        // The thread's action buffer from its last dispatch (taken, so a dispatch nested in
        // this one gets a fresh one): an action is 240 bytes, so a new buffer per dispatch
        // was a request of a kilobyte or more every time, which makes glibc's `malloc` sweep
        // its small free chunks first.
        let mut actions = ACTIONS.with(|a| std::mem::take(&mut *a.borrow_mut()));
        let single = events.len() == 1;
        actions.reserve(events.len() + 4);
        let (done, logged) = {
            let mut core = self.core.lock();
            // A read brings tens of frames under load, each a first receipt whose message
            // list slot, history bucket and the like are far out of the cache in a network of
            // processes on one machine: their memory is asked for a few frames ahead.
            if events.len() > 1 {
                core.prepare(events);
                for k in 0..PREFETCH_AHEAD {
                    core.prefetch(k);
                }
            }
            for (k, event) in events.drain(..).enumerate() {
                core.prefetch(k + PREFETCH_AHEAD);
                core.handle(event, now, &mut actions);
            }
            // Queue frames and close connections while still holding the core lock, so each
            // connection sees frames in the order the core decided them. Queuing never
            // blocks.
            let mut conns = self.conns.lock();
            let done = execute(&actions, &mut conns.by_id);
            for (_, h) in &done.overflowed {
                h.close();
            }
            // The records, in the order the core decided them: they are written after the
            // lock, but queued now, so a thread that took the lock later cannot write its
            // records first (a `removed` above the `registered` it follows).
            let records: Vec<Record> = actions
                .iter_mut()
                .filter_map(|a| match a {
                    Action::Log(rec) => Some(std::mem::replace(rec, Record::new(""))),
                    _ => None,
                })
                .collect();
            let logged = !records.is_empty();
            self.output.enqueue(records, at_us);
            (done, logged)
        };
        // A connection the core closed is out of the table already, so nothing more can be
        // queued on it: what was queued goes out (if the socket takes it) after the locks,
        // where waiting for another thread's send in progress holds up nobody else.
        for h in &done.closing {
            self.flush_before_close(&h.outbox, &h.stream);
            h.close();
        }
        if done.withdrawn > 0 {
            self.counters
                .withdrawn
                .fetch_add(done.withdrawn, Ordering::Relaxed);
        }
        if !done.skipped.is_empty() {
            self.counters
                .skipped
                .fetch_add(done.skipped.len() as u64, Ordering::Relaxed);
            for (conn, h) in &done.skipped {
                // Said at the first, second, fourth, … frame left out on each connection.
                let n = h.outbox.skipped();
                if n.is_power_of_two() {
                    log::warn!(
                        "connection {conn}: outbound queue full, gossip left out for it ({n} \
                         items so far): the remote reads slower than we forward"
                    );
                }
            }
        }
        let batching = self.batching();
        let mut sent = false;
        for h in done.touched {
            match h.outbox.when(now.mono, batching) {
                When::Now => sent |= self.flush(&h.outbox, &h.stream),
                When::At(t) => self.schedule(t, h.outbox, h.stream),
                When::Scheduled => {}
            }
        }
        if sent || (single && logged) {
            // Linux wakes a socket's reader on the sender's own CPU when it can, expecting the
            // sender to sleep soon; the neighbour we just woke would wait for everything below
            // (the records above all). Yielding lets it go on with the item first: a link's
            // delay on first arrival fell from about 2.5 to 0.4 ms at the median in a network
            // of 200 (BENCHMARKS.md, "One hop at a light load").
            //
            // A lone event's records wait behind whoever is ready to run even when nothing
            // was sent (a leaf of the tree, a duplicate): at a light load an item's spread
            // runs peer after peer on one vCPU, and the records are about a quarter of each
            // peer's turn (the time to reach all about 10% shorter at N = 10 and 200). A read
            // of many frames means the peer is behind, where the extra switches cost more
            // than the order gains (about 5% more CPU per delivery), so it does not yield.
            std::thread::yield_now();
        }
        for action in actions.drain(..) {
            match action {
                Action::Dial { addr, purpose, key } => self.dial(addr, purpose, key),
                Action::Log(_) => {}
                Action::Reincarnate => {
                    let old = self.identity.incarnation.load(Ordering::Relaxed);
                    let new = crate::node::unix_ms().max(old + 1);
                    self.identity.incarnation.store(new, Ordering::Relaxed);
                    log::info!("incarnation {old} -> {new}");
                }
                Action::SetTimer { after, timer } => {
                    let at = now.mono + after;
                    let mut timers = self.timers.lock();
                    if timers.next().is_none_or(|t| at < t) {
                        self.timers_changed.notify_one();
                    }
                    timers.set(at, timer);
                }
                Action::Send { .. }
                | Action::Forward { .. }
                | Action::Withdraw { .. }
                | Action::SendApi { .. }
                | Action::Close { .. } => {}
            }
        }
        if actions.capacity() <= KEPT_ACTIONS {
            ACTIONS.with(|a| *a.borrow_mut() = actions);
        }
        self.output.write_pending();
        for (conn, _) in done.overflowed {
            self.dispatch(Event::Closed {
                conn,
                reason: CloseReason::QueueFull,
            });
        }
    }

    fn batching(&self) -> Batching {
        Batching {
            min: self.config.gossip.batch_window,
            max: self.config.gossip.max_batch_window,
        }
    }

    /// Hands a connection's queued bytes to its socket without blocking; the writer thread
    /// takes over whatever does not fit. True if it sent anything.
    fn flush(&self, outbox: &Outbox, stream: &TcpStream) -> bool {
        let fd = stream.as_raw_fd();
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let mut writes = 0;
        let done = outbox.flush(Instant::now(), |slices| {
            let sent = nix::sys::socket::sendmsg::<()>(fd, slices, &[], flags, None)
                .map_err(io::Error::from);
            if matches!(sent, Ok(n) if n > 0) {
                writes += 1;
            }
            sent
        });
        if writes > 0 {
            self.counters.writes.fetch_add(writes, Ordering::Relaxed);
        }
        self.count_out(done);
        writes > 0
    }

    /// What the core queued on a link before deciding to close it (a `Reject` with its reason,
    /// a goodbye) goes out if the socket has room. Another thread may be in the middle of a
    /// send on that link (the core decided on another connection's thread: a seed refusing a
    /// registration when the dial-back failed, say); that send goes on with what was queued
    /// meanwhile, and closing under it dropped those frames (a client saw the link close
    /// without the `Reject`). So the close waits for it, at most 20 ms (a non-blocking send
    /// takes microseconds; a remote that does not read gets the link taken over by its
    /// writer thread, and is closed without waiting). Called with no lock held.
    fn flush_before_close(&self, outbox: &Outbox, stream: &TcpStream) {
        let give_up = Instant::now() + Duration::from_millis(20);
        loop {
            self.flush(outbox, stream);
            if !outbox.is_sending() || Instant::now() >= give_up {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn schedule(&self, at: Instant, outbox: Arc<Outbox>, stream: Arc<TcpStream>) {
        let mut due = self.flusher.due.lock();
        // The flusher sleeps until the earliest flush due; wake it only if this one is earlier.
        let earliest = due.iter().map(|d| d.0).min();
        due.push((at, (outbox, stream)));
        if earliest.is_none_or(|e| at < e) {
            self.flusher.wake.notify_one();
        }
    }

    /// Sends held frames when their batch window ends. Flushes due within half a window of
    /// the earliest go out together, so the flusher wakes at most about twice per window
    /// however many connections are busy.
    fn flush_loop(self: &Arc<Self>) {
        let slack = self.config.gossip.batch_window / 2;
        let mut now_due = Vec::new();
        loop {
            {
                let mut due = self.flusher.due.lock();
                let Some(earliest) = due.iter().map(|d| d.0).min() else {
                    self.flusher.wake.wait(&mut due);
                    continue;
                };
                let now = Instant::now();
                if earliest > now {
                    self.flusher.wake.wait_until(&mut due, earliest);
                    continue;
                }
                let mut i = 0;
                while i < due.len() {
                    if due[i].0 <= now + slack {
                        now_due.push(due.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
            for (_, (outbox, stream)) in now_due.drain(..) {
                self.flush(&outbox, &stream);
            }
        }
    }

    fn count_out(&self, done: Flushed) {
        if done.frames > 0 {
            self.counters
                .frames_out
                .fetch_add(done.frames, Ordering::Relaxed);
        }
        if done.bytes > 0 {
            self.counters
                .bytes_out
                .fetch_add(done.bytes, Ordering::Relaxed);
        }
    }

    /// Removes a connection; true if it was still registered (the caller then reports it).
    fn forget(&self, conn: ConnId) -> bool {
        let mut conns = self.conns.lock();
        match conns.by_id.remove(&conn) {
            Some(h) => {
                h.close();
                true
            }
            None => false,
        }
    }

    fn reject(&self, remote: impl ToString, reason: impl ToString) {
        let reason = reason.to_string();
        let remote = remote.to_string();
        log::info!("rejected {remote}: {reason}");
        self.output.record(Record::rejected(remote, reason));
    }

    /// Before closing a connection for what it sent: a `Reject` with the reason, queued after
    /// whatever the core queued and flushed if the socket has room, so the remote knows it was
    /// cut off on purpose (and does not take the close for a crash).
    fn tell_reject(&self, conn: ConnId, reason: &CloseReason) {
        let handle = self
            .conns
            .lock()
            .by_id
            .get(&conn)
            .map(|h| (h.outbox.clone(), h.stream.clone()));
        if let Some((outbox, stream)) = handle {
            let msg = Msg::Reject {
                reason: reason.to_string(),
            };
            if outbox.push(Frame::from(msg.encode())) {
                self.flush(&outbox, &stream);
            }
        }
    }

    // ---------------------------------------------------------------- accepting

    /// Accepts until shutdown, handing each connection and its remote address to `serve`.
    fn accept_each(&self, listener: TcpListener, mut serve: impl FnMut(TcpStream, SocketAddr)) {
        for stream in listener.incoming() {
            if self.is_stopping() {
                break;
            }
            let stream = match stream {
                Ok(stream) => stream,
                // A connection reset or aborted before we took it is that connection's
                // problem: go straight on to the next one.
                Err(e) if is_per_connection(&e) => {
                    log::debug!("accept: {e}");
                    continue;
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    log::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            match stream.peer_addr() {
                Ok(remote) => serve(stream, remote),
                // Reset between accept and here (ENOTCONN): nothing to serve, nothing to wait
                // for. Sleeping here let a reset flood stall every honest connector.
                Err(e) => log::debug!("accepted a connection already gone: {e}"),
            }
        }
    }

    fn accept_loop(self: &Arc<Self>, listener: TcpListener) {
        self.accept_each(listener, |stream, remote| {
            if let Err(reason) = self.admit(remote.ip()) {
                self.reject(remote, reason);
                return;
            }
            let r = self.clone();
            self.spawn(ACCEPTED_READER, move || r.serve_inbound(stream, remote));
        });
    }

    /// Checks the connection limits and takes a slot (released in `serve_inbound`).
    fn admit(&self, ip: IpAddr) -> Result<(), String> {
        let limits = &self.config.limits;
        let c = &self.counters;
        if c.connections.load(Ordering::Relaxed) >= limits.max_connections {
            return Err(format!(
                "connection limit ({}) reached",
                limits.max_connections
            ));
        }
        if c.pending_handshakes.load(Ordering::Relaxed) >= limits.max_pending_handshakes {
            return Err(format!(
                "pending handshake limit ({}) reached",
                limits.max_pending_handshakes
            ));
        }
        let mut per_ip = self.per_ip.lock();
        let n = per_ip.entry(ip).or_insert(0);
        let exempt = ip.is_loopback() && limits.loopback_exempt;
        if !exempt && *n >= limits.max_connections_per_ip {
            return Err(format!(
                "per-IP connection limit ({}) reached",
                limits.max_connections_per_ip
            ));
        }
        *n += 1;
        c.connections.fetch_add(1, Ordering::Relaxed);
        c.pending_handshakes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn release_ip(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock();
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    fn serve_inbound(self: &Arc<Self>, stream: TcpStream, remote: SocketAddr) {
        let _conn_slot = CountGuard(&self.counters.connections);
        let mut pending = Some(CountGuard(&self.counters.pending_handshakes));
        let result = self.accept_handshake(&stream, remote.ip());
        drop(pending.take());
        match result {
            Ok((admitted, reader)) => {
                let welcome = AcceptorHandshake::welcome(&self.identity.key, &admitted);
                let remote = Remote {
                    addr: admitted.addr,
                    role: admitted.role,
                    incarnation: admitted.incarnation,
                    key: admitted.key,
                    dialed: None,
                };
                // `Welcome` goes out as the first queued frame, after the core has taken the
                // link: by the time the connector sees it, this side already forwards to it.
                self.run_connection(stream, reader, Some(welcome), remote.addr, move |conn| {
                    Event::Connected { conn, remote }
                });
            }
            Err(reason) => {
                // Logged before the close, so whoever sees the close can find the reason.
                self.reject(remote, &reason);
                let _ = write_frame(&stream, &Msg::Reject { reason });
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        self.release_ip(remote.ip());
    }

    fn accept_handshake(
        &self,
        stream: &TcpStream,
        from: IpAddr,
    ) -> Result<(crate::handshake::Admitted, FrameReader), String> {
        let _ = stream.set_nodelay(true);
        let timeout = self.config.pow.timeout;
        let _ = stream.set_write_timeout(Some(timeout));
        let deadline = Instant::now() + timeout;
        let (difficulty, change) = self.difficulty.lock().on_handshake(Instant::now());
        if let Some(change) = change {
            self.log_difficulty(change);
        }
        let hs = {
            let mut rng = self.rng.lock();
            AcceptorHandshake::new(
                &mut *rng,
                difficulty,
                self.identity.addr,
                self.identity.key.public(),
                deadline,
            )
        };
        write_frame(stream, &hs.challenge_msg()).map_err(|e| format!("write failed: {e}"))?;
        let mut reader = FrameReader::new(self.config.limits.max_frame);
        let msg =
            read_frame_until(stream, &mut reader, deadline, &self.counters).map_err(
                |e| match e {
                    DialError::TimedOut => HandshakeError::DeadlinePassed.to_string(),
                    DialError::Handshake(e) => e,
                    e => e.to_string(),
                },
            )?;
        let admitted = {
            let seed_keys = self.seed_keys.lock();
            let ctx = Admission {
                seeds: &self.config.seeds,
                seed_keys: &seed_keys,
                from,
                loopback_exempt: self.config.limits.loopback_exempt,
            };
            hs.on_hello(msg, Instant::now(), &ctx)
                .map_err(|e| e.to_string())?
        };
        if admitted.pin {
            self.pin_seed_key(admitted.addr, admitted.key)
                .map_err(|e| e.to_string())?;
        }
        Ok((admitted, reader))
    }

    /// Trust on first use: pins the key a seed listed without one showed in a completed
    /// handshake, with a warning. Refuses the key if another node sharing the pin file
    /// pinned a different one first.
    fn pin_seed_key(
        &self,
        addr: SocketAddr,
        key: crate::wire::PublicKey,
    ) -> Result<(), HandshakeError> {
        let standing =
            self.seed_keys.lock().pin(addr, key).map_err(|e| {
                HandshakeError::Refused(format!("cannot pin the key of {addr}: {e}"))
            })?;
        if standing != key {
            return Err(HandshakeError::WrongKey {
                addr,
                expected: standing,
                shown: key,
            });
        }
        let hex = hex::encode(key);
        log::warn!(
            "seed {addr} is listed without a key: trusting the key it showed, {hex}, from now on (pinned); list it in seeds.yaml as {{ addr: \"{addr}\", key: \"{hex}\" }}"
        );
        self.output.record(
            Record::new("key_pinned")
                .field("seed", addr.to_string())
                .field("key", hex.clone())
                .line(format!(
                    "Seed {addr} listed without a key: pinned the key it showed, {hex}"
                )),
        );
        Ok(())
    }

    // ---------------------------------------------------------------- dialing

    fn dial(self: &Arc<Self>, addr: SocketAddr, purpose: Purpose, key: Option<PublicKey>) {
        let r = self.clone();
        self.spawn(DIALER, move || match r.connect(addr, purpose, key) {
            Ok((stream, reader, key)) => {
                let _slot = {
                    r.counters.connections.fetch_add(1, Ordering::Relaxed);
                    CountGuard(&r.counters.connections)
                };
                let role = match purpose {
                    Purpose::Register | Purpose::SeedLink => Role::Seed,
                    Purpose::Neighbour | Purpose::Probe => Role::Peer,
                };
                let remote = Remote {
                    addr,
                    role,
                    incarnation: 0,
                    key,
                    dialed: Some(purpose),
                };
                r.run_connection(stream, reader, None, addr, move |conn| Event::Connected {
                    conn,
                    remote,
                });
            }
            Err(reason) => {
                log::debug!("dial {addr} ({purpose:?}) failed: {reason}");
                r.dispatch(Event::DialFailed {
                    addr,
                    purpose,
                    reason,
                })
            }
        });
    }

    /// Dials `addr` and completes the handshake as the connector (solving on this thread).
    /// The remote must show `key` if given; a seed its configured or pinned key (or is pinned
    /// now, on first use). Returns the remote's proven key.
    fn connect(
        &self,
        addr: SocketAddr,
        purpose: Purpose,
        key: Option<PublicKey>,
    ) -> Result<(TcpStream, FrameReader, PublicKey), DialError> {
        let timeout = self.config.pow.timeout;
        let deadline = Instant::now() + timeout;
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| match e.kind() {
            ErrorKind::ConnectionRefused => DialError::Refused,
            ErrorKind::TimedOut | ErrorKind::WouldBlock => DialError::TimedOut,
            kind => DialError::Connect(kind),
        })?;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(timeout));
        let mut reader = FrameReader::new(self.config.limits.max_frame);
        let me = Connector {
            role: self.identity.role,
            addr: self.identity.addr,
            incarnation: self.identity.incarnation.load(Ordering::Relaxed),
            key: &self.identity.key,
            max_difficulty: self.config.pow.max_difficulty,
        };
        let to_seed = matches!(purpose, Purpose::Register | Purpose::SeedLink);
        let expected = if to_seed {
            self.seed_keys.lock().expected(&addr)
        } else {
            key
        };
        let msg = read_frame_until(&stream, &mut reader, deadline, &self.counters)?;
        let puzzle = me.on_challenge(msg, addr, expected).map_err(|e| match e {
            HandshakeError::Refused(reason) => DialError::Rejected(reason),
            e => DialError::Handshake(e.to_string()),
        })?;
        let start = self.rng.lock().gen::<u64>();
        let answer = me
            .solve(&puzzle, start, deadline)
            .ok_or(DialError::TimedOut)?;
        write_frame(&stream, &answer.hello)
            .map_err(|e| DialError::Handshake(format!("write failed: {e}")))?;
        let last = read_frame_until(&stream, &mut reader, deadline, &self.counters)?;
        me.on_welcome(last, &puzzle, &answer).map_err(|e| match e {
            HandshakeError::Refused(reason) => DialError::Rejected(reason),
            e => DialError::Handshake(e.to_string()),
        })?;
        if to_seed && expected.is_none() {
            self.pin_seed_key(addr, puzzle.acceptor_key)
                .map_err(|e| DialError::Handshake(e.to_string()))?;
        }
        Ok((stream, reader, puzzle.acceptor_key))
    }

    // ---------------------------------------------------------------- established

    /// Registers an admitted connection, starts its writer, and reads frames until it ends.
    /// `first` is queued before anything the core sends; `connected` is the event that tells
    /// the core about the new connection.
    fn run_connection<D: Deframe>(
        self: &Arc<Self>,
        stream: TcpStream,
        reader: D,
        first: Option<Msg>,
        peer: SocketAddr,
        connected: impl FnOnce(ConnId) -> Event,
    ) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let limits = &self.config.limits;
        let outbox = Arc::new(Outbox::new(limits.outbound_queue, limits.max_queue_bytes));
        if let Some(msg) = first {
            outbox.push(msg.frame());
        }
        let (Ok(write_half), Ok(table_half)) = (stream.try_clone(), stream.try_clone()) else {
            return;
        };
        let _ = write_half.set_write_timeout(Some(self.config.limits.write_timeout));
        let table_half = Arc::new(table_half);
        self.conns.lock().by_id.insert(
            conn,
            ConnHandle {
                outbox: outbox.clone(),
                stream: table_half.clone(),
            },
        );
        let r = self.clone();
        let w = outbox.clone();
        self.spawn("writer", move || r.write_loop(conn, write_half, &w));
        self.dispatch(connected(conn));
        // `first` goes out now even if the core queued nothing more.
        self.flush(&outbox, &table_half);
        let reason = self.read_loop(conn, &stream, reader, peer);
        if self.forget(conn) {
            self.dispatch(Event::Closed { conn, reason });
        }
    }

    fn read_loop<D: Deframe>(
        self: &Arc<Self>,
        conn: ConnId,
        mut stream: &TcpStream,
        mut reader: D,
        peer: SocketAddr,
    ) -> CloseReason {
        let read_timeout = self.config.limits.read_timeout;
        let _ = stream.set_read_timeout(Some(IDLE_WAKE));
        // The read timeout set now: `IDLE_WAKE`, or `QUIET_WAKE` once a wake-up found no
        // partial frame (changed only then, so a busy link makes no extra system calls).
        let mut quiet = false;
        let mut buf = vec![0u8; READ_CHUNK];
        // When the oldest incomplete frame started arriving.
        let mut partial_since: Option<Instant> = None;
        let mut events = Vec::new();
        let mut arrived_us = crate::output::unix_us();
        loop {
            // Frames that arrived together with the handshake, or in the last read: all of
            // them go to the core in one dispatch.
            let malformed = loop {
                match reader.next_event(conn) {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => break None,
                    Err(e) => break Some(e),
                }
            };
            if !events.is_empty() {
                self.counters
                    .frames_in
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                self.dispatch_all(&mut events, arrived_us);
            }
            if let Some(e) = malformed {
                let reason = CloseReason::Malformed(e);
                self.reject(peer, &reason);
                self.tell_reject(conn, &reason);
                return reason;
            }
            partial_since = if reader.pending() == 0 {
                None
            } else {
                if quiet {
                    let _ = stream.set_read_timeout(Some(IDLE_WAKE));
                    quiet = false;
                }
                partial_since.or(Some(Instant::now()))
            };
            match stream.read(&mut buf) {
                Ok(0) => return CloseReason::EndOfStream,
                Ok(n) => {
                    arrived_us = crate::output::unix_us();
                    self.counters
                        .bytes_in
                        .fetch_add(n as u64, Ordering::Relaxed);
                    self.counters.reads.fetch_add(1, Ordering::Relaxed);
                    reader.push(&buf[..n]);
                }
                Err(e) if is_timeout(&e) => {
                    if !self.conns.lock().by_id.contains_key(&conn) {
                        // Closed by the core: nobody is told.
                        return CloseReason::EndOfStream;
                    }
                    match partial_since {
                        Some(t) if t.elapsed() > read_timeout => {
                            let reason = CloseReason::Stalled(read_timeout);
                            self.reject(peer, &reason);
                            self.tell_reject(conn, &reason);
                            return reason;
                        }
                        Some(_) => {}
                        None if !quiet => {
                            let _ = stream.set_read_timeout(Some(QUIET_WAKE));
                            quiet = true;
                        }
                        None => {}
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return CloseReason::read(e.kind()),
            }
        }
    }

    // ---------------------------------------------------------------- application API

    /// Serves local applications on `listener` (no proof of work: bind it to a local address).
    pub fn serve_api(self: &Arc<Self>, listener: TcpListener) {
        let r = self.clone();
        self.spawn("api-accept", move || {
            r.accept_each(listener, |stream, client| {
                // The API's own budget: local clients never take the P2P connections' room.
                let max = r.config.api.max_clients;
                if r.counters.api_clients.load(Ordering::Relaxed) >= max {
                    r.reject(client, format!("api.max_clients ({max}) reached"));
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                r.counters.api_clients.fetch_add(1, Ordering::Relaxed);
                let rr = r.clone();
                r.spawn("api-client", move || {
                    let _slot = CountGuard(&rr.counters.api_clients);
                    let _ = stream.set_nodelay(true);
                    rr.run_connection(stream, ApiReader::default(), None, client, |conn| {
                        Event::ApiConnected { conn }
                    });
                });
            })
        });
    }

    /// Writes what the dispatching threads could not hand to a full socket, blocking (up to
    /// `limits.write_timeout`) until the remote reads it. Asleep otherwise.
    fn write_loop(self: &Arc<Self>, conn: ConnId, mut stream: TcpStream, outbox: &Outbox) {
        let mut batch = Batch::default();
        let batching = self.batching();
        while let Some(frames) = outbox.take_for_writer(&mut batch, batching) {
            let result = batch.write_all(&mut stream);
            outbox.written();
            match result {
                Ok(()) => {
                    self.counters.writes.fetch_add(1, Ordering::Relaxed);
                    self.count_out(Flushed {
                        frames: frames as u64,
                        bytes: batch.len() as u64,
                    })
                }
                Err(e)
                    if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) =>
                {
                    // The remote closed. What it said before closing (a `Reject` with its
                    // reason, say) may still wait unread in our receive buffer: leave the
                    // connection to the reader, which reads that and then the end of stream.
                    // Nobody writes any more: the write side stays the writer's.
                    log::debug!("connection {conn}: write failed: {e}; the reader closes it");
                    return;
                }
                Err(e) => {
                    if self.forget(conn) {
                        self.dispatch(Event::Closed {
                            conn,
                            reason: CloseReason::WriteFailed(e.kind()),
                        });
                    }
                    return;
                }
            }
        }
    }

    // ---------------------------------------------------------------- time and shutdown

    /// Sleeps until the earliest of: a core timer, the next `stats` record, and (while the
    /// admission difficulty is raised) the next second, when it may come down. Idle, a node
    /// wakes only for its own timers.
    fn timer_loop(self: &Arc<Self>) {
        let mut next_stats = Instant::now() + self.config.stats_interval;
        let mut due = Vec::new();
        while !self.is_stopping() {
            {
                let mut timers = self.timers.lock();
                let now = Instant::now();
                while let Some(t) = timers.pop_due(now) {
                    due.push(Event::Timer(t));
                }
                if due.is_empty() && now < next_stats {
                    if self.is_stopping() {
                        break;
                    }
                    let raised = {
                        let d = self.difficulty.lock();
                        d.current() > self.config.pow.difficulty
                    };
                    let mut until = timers.next().map_or(next_stats, |t| t.min(next_stats));
                    if raised {
                        until = until.min(now + Duration::from_secs(1));
                    }
                    // Woken early when a timer is set before `until`, and at shutdown.
                    let until = until.min(now + QUIET_WAKE);
                    self.timers_changed.wait_until(&mut timers, until);
                    drop(timers);
                    let calmer = self.difficulty.lock().roll(Instant::now());
                    if let Some(change) = calmer {
                        self.log_difficulty(change);
                    }
                    continue;
                }
            }
            if self.is_stopping() {
                break;
            }
            if !due.is_empty() {
                self.dispatch_all(&mut due, crate::output::unix_us());
            }
            if Instant::now() >= next_stats {
                next_stats += self.config.stats_interval;
                self.write_stats();
            }
        }
    }

    fn log_difficulty(&self, c: DifficultyChange) {
        let why = if c.to > c.from {
            format!("{} handshakes in the last second", c.rate)
        } else {
            "calm again".to_string()
        };
        log::warn!("proof-of-work difficulty {} -> {} ({why})", c.from, c.to);
        self.output.record(
            Record::new("difficulty")
                .field("from", c.from)
                .field("to", c.to)
                .field("handshakes_per_s", c.rate)
                .line(format!(
                    "Proof-of-work difficulty {} -> {} ({why})",
                    c.from, c.to
                )),
        );
    }

    pub fn write_stats(&self) {
        let c = &self.counters;
        let (dups, dropped, tree, root, children) = {
            let core = self.core.lock();
            (
                core.gossip_duplicates(),
                core.gossip_dropped(),
                core.tree_counters(),
                core.tree_root(),
                core.tree_children(),
            )
        };
        let mut rec = Record::new("stats")
            .field("frames_in", c.frames_in.load(Ordering::Relaxed))
            .field("frames_out", c.frames_out.load(Ordering::Relaxed))
            .field("bytes_in", c.bytes_in.load(Ordering::Relaxed))
            .field("bytes_out", c.bytes_out.load(Ordering::Relaxed))
            .field("gossip_duplicates", dups)
            .field("gossip_withdrawn", c.withdrawn.load(Ordering::Relaxed))
            .field("gossip_skipped", c.skipped.load(Ordering::Relaxed))
            .field("gossip_dropped", dropped)
            .field("reads", c.reads.load(Ordering::Relaxed))
            .field("writes", c.writes.load(Ordering::Relaxed))
            .field("connections", c.connections.load(Ordering::Relaxed) as u64)
            .field("threads", c.threads.load(Ordering::Relaxed) as u64);
        if let Some([prunes, grafted, eager]) = tree {
            rec = rec
                .field("tree_prunes", prunes)
                .field("tree_grafted", grafted)
                .field("tree_eager", eager);
        }
        if let Some((root, dist)) = root {
            rec = rec
                .field("tree_root", root.to_string())
                .field("tree_dist", dist)
                .field("tree_children", children.unwrap_or(0));
        }
        self.output.record(rec);
    }

    /// Clean shutdown: stop accepting work, let the core say goodbye, wait until the goodbyes
    /// are written, half-close every connection and give the remotes a moment to close theirs,
    /// then close everything and write the last stats and `stopped`.
    pub fn shutdown(self: &Arc<Self>) {
        self.stopping.store(true, Ordering::Relaxed);
        {
            // Under the timers' lock: the timer thread looks at `stopping` under it before it
            // waits, so it either sees it or is already waiting when told.
            let _timers = self.timers.lock();
            self.timers_changed.notify_all();
        }
        self.dispatch(Event::Shutdown);
        // A goodbye waiting for a connection (a `Leave` with no seed up): dials and their
        // `Connected` events go on meanwhile, for at most one handshake's time.
        let until = Instant::now() + self.config.pow.timeout;
        while self.core.lock().holds_goodbye() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let wait = |done: &dyn Fn(&ConnTable) -> bool| {
            let until = Instant::now() + SHUTDOWN_FLUSH;
            while Instant::now() < until && !done(&self.conns.lock()) {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait(&|t| t.by_id.values().all(|h| h.outbox.is_idle()));
        for h in self.conns.lock().by_id.values() {
            let _ = h.stream.shutdown(Shutdown::Write);
        }
        // Readers remove their connection when the remote closes its side.
        wait(&|t| t.by_id.is_empty());
        let handles: Vec<ConnHandle> = self.conns.lock().by_id.drain().map(|(_, h)| h).collect();
        for h in handles {
            h.close();
        }
        self.write_stats();
        self.output.record(Record::new("stopped").line("stopped"));
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// An `accept` error that concerns only the connection being accepted (it was reset or aborted
/// before we took it), not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::NotConnected
    )
}
fn write_frame(mut stream: &TcpStream, msg: &Msg) -> io::Result<()> {
    stream.write_all(&msg.encode())
}

/// Reads one frame before `deadline` (used during the handshake, before the reader loop).
fn read_frame_until(
    mut stream: &TcpStream,
    reader: &mut FrameReader,
    deadline: Instant,
    counters: &Counters,
) -> Result<Msg, DialError> {
    let mut buf = [0u8; 1024];
    loop {
        match reader.next_frame() {
            Ok(Some(body)) => {
                counters.frames_in.fetch_add(1, Ordering::Relaxed);
                return Msg::decode(&body)
                    .map_err(|e| DialError::Handshake(format!("malformed frame: {e}")));
            }
            Ok(None) => {}
            Err(e) => return Err(DialError::Handshake(format!("malformed frame: {e}"))),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DialError::TimedOut);
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => {
                return Err(DialError::Handshake(
                    "connection closed during handshake".into(),
                ))
            }
            Ok(n) => {
                counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                reader.push(&buf[..n]);
            }
            Err(e) if is_timeout(&e) => return Err(DialError::TimedOut),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(DialError::Handshake(format!("read failed: {e}"))),
        }
    }
}

/// Turns a byte stream into events: node frames or API messages.
trait Deframe {
    fn push(&mut self, bytes: &[u8]);
    /// Bytes held that do not yet make a whole frame.
    fn pending(&self) -> usize;
    fn next_event(&mut self, conn: ConnId) -> Result<Option<Event>, String>;
}

impl Deframe for FrameReader {
    fn push(&mut self, bytes: &[u8]) {
        FrameReader::push(self, bytes)
    }
    fn pending(&self) -> usize {
        FrameReader::pending(self)
    }
    fn next_event(&mut self, conn: ConnId) -> Result<Option<Event>, String> {
        Ok(self
            .next_msg()
            .map_err(|e| e.to_string())?
            .map(|msg| Event::Frame { conn, msg }))
    }
}

impl Deframe for ApiReader {
    fn push(&mut self, bytes: &[u8]) {
        ApiReader::push(self, bytes)
    }
    fn pending(&self) -> usize {
        ApiReader::pending(self)
    }
    fn next_event(&mut self, conn: ConnId) -> Result<Option<Event>, String> {
        Ok(self
            .next_msg()
            .map_err(|e| e.to_string())?
            .map(|msg| Event::ApiFrame { conn, msg }))
    }
}
