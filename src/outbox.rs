//! One connection's outbound bytes, and who writes them.
//!
//! Frames are appended under the core lock, in the order the core decided them. Whoever
//! dispatched them then hands the queued bytes to the socket at once with a non-blocking send,
//! on its own thread: in the common case (the remote keeps up) no other thread is woken and a
//! burst of frames for one connection goes out in one system call. Only when the socket will
//! not take everything does the connection's writer thread take over the rest and block on it;
//! until it has written everything, nobody else writes, so the bytes stay in order.
//!
//! Batching: a connection that sent less than a batch window ago holds new frames until the
//! window ends, and a flusher sends them together. An idle link therefore sends a frame at once;
//! a busy one sends one segment per window, however many frames it carries. The window grows
//! with the link's rate of pushes, the gossip items forwarded on it ([`Batching`]): on a loaded
//! machine the system calls and thread wake-ups per segment, not the frames, are what a node
//! spends its CPU on. Answers (catch-up and grafted items) and control frames do not count:
//! they come in bursts, and a burst is not a busy link (counted, a newcomer's catch-up held
//! the pushes on its link for up to 200 ms for a quarter of a second after it).
//!
//! The queue is bounded in frames and in bytes: a remote that stops reading fills it and is
//! dropped instead of growing this node's memory.

use std::collections::HashMap;
use std::io::{self, ErrorKind, IoSlice, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::idhash::IdHash;
use crate::wire::Frame;

#[derive(Debug, Default)]
struct State {
    /// Frames queued and not yet taken by a flush or the writer, in order.
    queue: Vec<Entry>,
    /// Bytes of the first frame in `queue` already written (by a send that stopped short).
    sent: usize,
    /// Frames in `queue`, withdrawn ones not counted.
    frames: usize,
    /// Bytes in `queue` still to be written, withdrawn frames not counted.
    bytes: usize,
    /// The writer thread owns the write side until it has written everything queued.
    writer_owns: bool,
    /// The writer is in the middle of a blocking write of frames it took out of `queue`.
    writing: bool,
    closed: bool,
    /// When bytes last went to the socket.
    last_send: Option<Instant>,
    /// A flush is scheduled for the end of the batch window.
    scheduled: bool,
    /// A `flush` is handing frames it took out of `queue` to the socket.
    sending: bool,
    /// An empty queue kept for the next `flush` to swap in, so none is allocated per send.
    spare: Vec<Entry>,
    /// Gossip frames in `queue` that may still be withdrawn, by the first eight bytes of the
    /// id (ids are SHA-256 digests): their index in `queue`.
    held_by_id: HashMap<u64, usize, IdHash>,
    /// Withdrawn frames still in `queue`: left out (all in one pass) just before the frames go
    /// to the socket, so a withdrawal costs a lookup, not a move of the queue behind it.
    gone: usize,
    /// Frames queued per second, and when that was last updated.
    rate: FrameRate,
    rate_at: Option<Instant>,
}

/// One queued frame. Its bytes are shared with every other queue holding the same frame
/// (see [`Frame`]): a queue costs a few words per frame, not a copy of its payload.
#[derive(Debug)]
struct Entry {
    frame: Frame,
    /// A gossip item's id, while its frame may still be withdrawn.
    id: Option<[u8; 32]>,
    gone: bool,
}

fn id_key(id: &[u8; 32]) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&id[..8]);
    u64::from_le_bytes(head)
}

/// The rate is updated at most this often (seconds) ...
const RATE_SAMPLE: f64 = 0.01;
/// ... and smoothed over about this long (seconds).
const RATE_TAU: f64 = 0.25;

/// Pushes a second on a link (gossip items forwarded on it), smoothed over about
/// [`RATE_TAU`]: what its batch window grows with. The time of the last update is the
/// caller's (an `Instant` here, virtual time in the simulator, which models these queues).
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameRate {
    pub rate: f64,
    /// Frames counted since the last update.
    counted: u32,
}

impl FrameRate {
    pub fn count(&mut self) {
        self.counted += 1;
    }

    /// `dt` seconds after the last update: true when updated (the update time is now), false
    /// when that was less than [`RATE_SAMPLE`] ago.
    pub fn update(&mut self, dt: f64) -> bool {
        if dt < RATE_SAMPLE {
            return false;
        }
        let sample = f64::from(self.counted) / dt;
        self.rate += (1.0 - (-dt / RATE_TAU).exp()) * (sample - self.rate);
        self.counted = 0;
        true
    }

    /// As `update`, `dt` seconds after the last update if there was one; true when the
    /// caller is to take now as the time of the last update (always at the first).
    pub fn update_since(&mut self, dt: Option<f64>) -> bool {
        dt.is_none_or(|dt| self.update(dt))
    }
}

impl State {
    /// Leaves withdrawn frames out of `queue` and forgets which frames could be withdrawn:
    /// the frames are about to go to the socket (or to the writer).
    fn seal(&mut self) {
        if self.gone > 0 {
            self.queue.retain(|e| !e.gone);
            self.gone = 0;
        }
        for e in &mut self.queue {
            e.id = None;
        }
        self.held_by_id.clear();
    }

    /// Takes everything queued (sealed) into `batch`, leaving `batch`'s old buffer in its place.
    fn take(&mut self, batch: &mut Batch) {
        self.seal();
        batch.entries.clear();
        std::mem::swap(&mut batch.entries, &mut self.queue);
        batch.from = std::mem::take(&mut self.sent);
        self.bytes = 0;
    }

    fn update_rate(&mut self, now: Instant) {
        let dt = self
            .rate_at
            .map(|since| now.saturating_duration_since(since).as_secs_f64());
        if self.rate.update_since(dt) {
            self.rate_at = Some(now);
        }
    }
}

/// Gossip items may fill a queue to this many eighths of its bounds: the rest is kept for the
/// frames a link cannot do without (liveness, catch-up digests, a `Reject`), so a slow
/// reader's queue full of items leaves items out instead of closing the link.
const ITEM_SHARE: usize = 7;

/// Pushes a second from which a link holds its frames for the whole `max` window. Below it
/// the window shrinks with the square of the rate: a link with `r` pushes a second holds
/// them for `max × (r / 500)²` (at least `min`). With the defaults (0, 200 ms) a link at 50
/// pushes a second holds them 2 ms and a quieter one less (nothing at the first frame after a
/// pause), so a light load keeps its latency, while a link at 500 a second sends five
/// segments of a hundred frames a second. No
/// link sends more than about `(BUSY_RATE² / max)^⅓` times a second (about 100).
pub const BUSY_RATE: f64 = 500.0;

/// The batch window's bounds (`gossip.batch_window`, `gossip.max_batch_window`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub min: Duration,
    pub max: Duration,
}

impl Batching {
    /// The window for a link with `rate` pushes a second.
    pub fn window(&self, rate: f64) -> Duration {
        let share = (rate / BUSY_RATE).powi(2);
        // `as` saturates (and maps NaN to 0).
        let grown = Duration::from_micros((share * self.max.as_micros() as f64) as u64);
        grown.clamp(self.min, self.max.max(self.min))
    }
}

/// Whether queued bytes go out now or at the end of the batch window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Now,
    /// The caller schedules a flush at this moment.
    At(Instant),
    /// A flush is already scheduled.
    Scheduled,
}

#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Gossip frames left out because the queue was full (see `skipped`).
    skipped: AtomicU64,
    wake: Condvar,
    max_frames: usize,
    max_bytes: usize,
}

/// What a non-blocking flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Frames whose last byte was handed to the socket.
    pub frames: u64,
    pub bytes: u64,
}

/// Frames taken out of the queue to be written, in order: the writer thread's, and a flush's.
#[derive(Debug, Default)]
pub struct Batch {
    entries: Vec<Entry>,
    /// Bytes of the first frame written already.
    from: usize,
}

/// At most this many slices go to one vectored write (Linux's `IOV_MAX` is 1,024).
const MAX_SLICES: usize = 512;

/// How far a write of a batch got.
struct Progress {
    /// Frames written whole, and bytes of the next one.
    frames: usize,
    at: usize,
    bytes: usize,
    /// Why it stopped before the end: `Ok(0)` from `send`, or an error other than `Interrupted`.
    stopped: Option<io::Result<usize>>,
}

/// Writes `entries` (the first from byte `from`) with vectored `send`s until they are all
/// written or a `send` takes nothing or fails.
fn write_entries(
    entries: &[Entry],
    from: usize,
    send: &mut impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
) -> Progress {
    let mut p = Progress {
        frames: 0,
        at: from,
        bytes: 0,
        stopped: None,
    };
    // Two slices a frame at most: sized to the batch, so a quiet link's flush of one frame
    // asks for a few dozen bytes, not `MAX_SLICES` slices' 8 KiB.
    let mut slices = Vec::with_capacity((2 * entries.len() + 2).min(MAX_SLICES));
    while p.frames < entries.len() {
        slices.clear();
        let mut skip = p.at;
        for e in &entries[p.frames..] {
            slices.extend(e.frame.parts(skip).map(IoSlice::new));
            skip = 0;
            if slices.len() + 2 > MAX_SLICES {
                break;
            }
        }
        let mut n = match send(&slices) {
            Ok(0) => {
                p.stopped = Some(Ok(0));
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                p.stopped = Some(Err(e));
                break;
            }
        };
        p.bytes += n;
        while n > 0 {
            let left = entries[p.frames].frame.len() - p.at;
            if n < left {
                p.at += n;
                break;
            }
            n -= left;
            p.frames += 1;
            p.at = 0;
        }
    }
    p
}

impl Batch {
    /// Writes the whole batch to a blocking writer.
    pub fn write_all(&self, w: &mut impl Write) -> io::Result<()> {
        let p = write_entries(&self.entries, self.from, &mut |s| w.write_vectored(s));
        match p.stopped {
            None => Ok(()),
            Some(Ok(_)) => Err(io::Error::from(ErrorKind::WriteZero)),
            Some(Err(e)) => Err(e),
        }
    }

    /// Bytes left to write.
    pub fn len(&self) -> usize {
        self.entries.iter().map(|e| e.frame.len()).sum::<usize>() - self.from
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes left to write, in one buffer (a copy).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        let mut skip = self.from;
        for e in &self.entries {
            out.extend(e.frame.parts(skip).flatten());
            skip = 0;
        }
        out
    }
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            skipped: AtomicU64::new(0),
            wake: Condvar::new(),
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    /// No room for `len` more bytes (or closed). Items may fill only `ITEM_SHARE` of it.
    fn full(&self, s: &State, len: usize, item: bool) -> bool {
        let (frames, bytes) = if item {
            (
                self.max_frames * ITEM_SHARE / 8,
                self.max_bytes * ITEM_SHARE / 8,
            )
        } else {
            (self.max_frames, self.max_bytes)
        };
        s.closed || s.frames >= frames.max(1) || s.bytes + len > bytes
    }

    /// Queues one frame. False if the queue is full (or closed): the caller drops the
    /// connection.
    pub fn push(&self, frame: Frame) -> bool {
        self.queue(frame, false, None)
    }

    /// Queues the frame of a gossip item, if the items' share of the queue has room for it;
    /// with the item's `id` (a push, `Action::Forward`), `withdraw` can take it back until it
    /// is handed to the socket, and it counts in the link's rate (see [`Batching`]); an item
    /// sent as an answer comes without one. False if there is no room: the caller leaves the
    /// item out for this connection.
    pub fn push_item(&self, frame: Frame, id: Option<[u8; 32]>) -> bool {
        self.queue(frame, true, id)
    }

    fn queue(&self, frame: Frame, item: bool, id: Option<[u8; 32]>) -> bool {
        let mut s = self.state.lock();
        if self.full(&s, frame.len(), item) {
            return false;
        }
        if let Some(id) = &id {
            let i = s.queue.len();
            s.held_by_id.insert(id_key(id), i);
        }
        s.bytes += frame.len();
        s.queue.push(Entry {
            frame,
            id,
            gone: false,
        });
        s.frames += 1;
        if id.is_some() {
            s.rate.count();
        }
        self.wake_if_half_full(&s);
        true
    }

    /// Counts a gossip frame left out for want of room; returns how many so far.
    pub fn skipped(&self) -> u64 {
        self.skipped.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn half_full(&self, s: &State) -> bool {
        s.frames * 2 >= self.max_frames || s.bytes * 2 >= self.max_bytes
    }

    /// A writer waiting out its window stops waiting once the queue is half full.
    fn wake_if_half_full(&self, s: &State) {
        if s.writer_owns && s.frames * 2 == self.max_frames {
            self.wake.notify_one();
        }
    }

    /// Drops the queued, unsent frame of message `id`, if there is one. True if it did.
    pub fn withdraw(&self, id: &[u8; 32]) -> bool {
        let mut s = self.state.lock();
        let Some(&i) = s.held_by_id.get(&id_key(id)) else {
            return false;
        };
        let e = &mut s.queue[i];
        // (Another id with the same first eight bytes: not ours to withdraw.)
        if e.gone || e.id.as_ref() != Some(id) {
            return false;
        }
        e.gone = true;
        let len = e.frame.len();
        s.frames -= 1;
        s.bytes -= len;
        s.gone += 1;
        true
    }

    /// Decides when the frames just queued go out: now if nothing was sent within the link's
    /// window (see [`Batching`]), else at the end of the window (the first caller to be told
    /// `At` schedules it).
    pub fn when(&self, now: Instant, batching: Batching) -> When {
        let mut s = self.state.lock();
        s.update_rate(now);
        // A window never holds more than half the queue: at rates where it would, the frames
        // go now, so a fast link is never dropped for a full queue while waiting for its
        // own window.
        if self.half_full(&s) {
            return When::Now;
        }
        if s.scheduled {
            return When::Scheduled;
        }
        let window = batching.window(s.rate.rate);
        match s.last_send {
            Some(t) if now < t + window => {
                s.scheduled = true;
                When::At(t + window)
            }
            _ => When::Now,
        }
    }

    /// Hands queued frames to `send`, a vectored send that must not block (it returns
    /// `WouldBlock` or a short count when the socket is full). Whatever it does not take goes
    /// to the writer thread, and so does an error, which the writer's own write then meets
    /// (see `Runtime::write_loop`).
    ///
    /// The lock is not held across `send`: a send on loopback runs the receiver's side of TCP
    /// and can be preempted, and the threads queuing frames hold the node's core lock while
    /// they wait for this one. Frames queued meanwhile are sent by this same call, after the
    /// ones in flight, so a concurrent flush finds the socket taken and leaves them to it.
    pub fn flush(
        &self,
        now: Instant,
        mut send: impl FnMut(&[IoSlice<'_>]) -> io::Result<usize>,
    ) -> Flushed {
        let mut s = self.state.lock();
        s.scheduled = false;
        s.last_send = Some(now);
        if s.sending || s.writer_owns || s.closed || s.frames == 0 {
            return Flushed::default();
        }
        s.sending = true;
        let mut done = Flushed::default();
        loop {
            let mut batch = Batch {
                entries: std::mem::take(&mut s.spare),
                from: 0,
            };
            s.take(&mut batch);
            let frames = std::mem::take(&mut s.frames);
            let p = MutexGuard::unlocked(&mut s, || {
                write_entries(&batch.entries, batch.from, &mut send)
            });
            done.bytes += p.bytes as u64;
            done.frames += p.frames as u64;
            if s.closed {
                s.sending = false;
                return done;
            }
            if p.frames < batch.entries.len() {
                // The rest, then whatever was queued meanwhile, goes to the writer.
                let left = batch.len() - p.bytes;
                batch.entries.drain(..p.frames);
                s.seal();
                batch.entries.append(&mut s.queue);
                s.queue = batch.entries;
                s.sent = p.at;
                s.frames += frames - p.frames;
                s.bytes += left;
                s.sending = false;
                s.writer_owns = true;
                self.wake.notify_one();
                return done;
            }
            batch.entries.clear();
            s.spare = batch.entries;
            if s.frames == 0 {
                s.sending = false;
                return done;
            }
        }
    }

    /// The writer thread's wait: fills `batch` with the frames it must write (swapping
    /// buffers, so none is allocated per write) and returns how many, or `None` once closed.
    ///
    /// The writer keeps the link's batch window too: it takes what has queued only once the
    /// window since the last write has ended. It owns the link when the remote reads slower
    /// than we send, which is when the machine is busiest; writing every frame the moment
    /// the last write finished would then multiply the system calls and wake-ups on both ends
    /// just when there is least CPU for them.
    pub fn take_for_writer(&self, batch: &mut Batch, batching: Batching) -> Option<usize> {
        let mut s = self.state.lock();
        loop {
            if s.closed {
                return None;
            }
            if s.writer_owns {
                if s.frames == 0 {
                    s.writer_owns = false;
                } else {
                    let now = Instant::now();
                    s.update_rate(now);
                    let window = batching.window(s.rate.rate);
                    let ends = s.last_send.map(|t| t + window).filter(|e| *e > now);
                    if let Some(ends) = ends.filter(|_| !self.half_full(&s)) {
                        self.wake.wait_until(&mut s, ends);
                        continue;
                    }
                    s.take(batch);
                    s.writing = true;
                    s.last_send = Some(now);
                    return Some(std::mem::take(&mut s.frames));
                }
            }
            self.wake.wait(&mut s);
        }
    }

    /// The writer finished the frames `take_for_writer` gave it.
    pub fn written(&self) {
        self.state.lock().writing = false;
    }

    /// Another thread's non-blocking send (`flush`) is handing frames to the socket; it sends
    /// what was queued meanwhile too before it stops.
    pub fn is_sending(&self) -> bool {
        self.state.lock().sending
    }

    /// Nothing queued and nothing being written.
    pub fn is_idle(&self) -> bool {
        let s = self.state.lock();
        s.frames == 0 && !s.writing && !s.writer_owns && !s.sending
    }

    /// Stops the writer thread; queued frames are dropped.
    pub fn close(&self) {
        let mut s = self.state.lock();
        s.closed = true;
        s.queue = Vec::new();
        s.spare = Vec::new();
        s.sent = 0;
        s.held_by_id = HashMap::default();
        s.gone = 0;
        s.frames = 0;
        s.bytes = 0;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn fr(bytes: &[u8]) -> Frame {
        Frame::from(bytes)
    }

    /// The bytes a vectored send was given, and how many.
    fn cat(slices: &[IoSlice<'_>]) -> Vec<u8> {
        slices.iter().flat_map(|s| s.iter().copied()).collect()
    }

    fn total(slices: &[IoSlice<'_>]) -> usize {
        slices.iter().map(|s| s.len()).sum()
    }

    fn would_block() -> io::Error {
        io::Error::from(ErrorKind::WouldBlock)
    }

    #[test]
    fn a_burst_goes_out_in_one_send_when_the_socket_takes_it() {
        let ob = Outbox::new(10, 1 << 20);
        assert!(ob.push(fr(b"aa")));
        assert!(ob.push(fr(b"bbb")));
        let mut calls = Vec::new();
        let done = ob.flush(Instant::now(), |b| {
            calls.push(cat(b));
            Ok(total(b))
        });
        assert_eq!(calls, vec![b"aabbb".to_vec()]);
        assert_eq!(
            done,
            Flushed {
                frames: 2,
                bytes: 5
            }
        );
        assert!(ob.is_idle());
    }

    #[test]
    fn what_the_socket_does_not_take_goes_to_the_writer_in_order() {
        let ob = Arc::new(Outbox::new(10, 1 << 20));
        ob.push(fr(b"hello"));
        // Short sends are retried until the socket says it is full.
        let done = ob.flush(Instant::now(), |b| Ok(total(b).min(2)));
        assert_eq!(done.bytes, 5);
        ob.push(fr(b"hello"));
        let mut first = true;
        let done = ob.flush(Instant::now(), |_| {
            if first {
                first = false;
                Ok(2)
            } else {
                Err(would_block())
            }
        });
        assert_eq!(
            done,
            Flushed {
                frames: 0,
                bytes: 2
            }
        );
        assert!(!ob.is_idle());
        // While the writer owns the write side, a later frame queues behind and no flush
        // writes it out of order.
        ob.push(fr(b"!"));
        let done = ob.flush(Instant::now(), |_| {
            panic!("must not write while the writer owns the socket")
        });
        assert_eq!(done, Flushed::default());
        let mut spare = Batch::default();
        assert_eq!(
            ob.take_for_writer(&mut spare, fixed(Duration::ZERO)),
            Some(2)
        );
        assert_eq!(spare.to_vec(), b"llo!");
        assert!(!ob.is_idle());
        ob.written();
        // Nothing more queued: the writer gives the write side back and waits.
        let w = ob.clone();
        let writer = std::thread::spawn(move || {
            let mut spare = Batch::default();
            let got = w.take_for_writer(&mut spare, fixed(Duration::ZERO));
            (got, spare)
        });
        while !ob.is_idle() {
            std::thread::yield_now();
        }
        ob.push(fr(b"x"));
        let mut sent = Vec::new();
        ob.flush(Instant::now(), |b| {
            sent.extend(cat(b));
            Ok(total(b))
        });
        assert_eq!(sent, b"x");
        ob.close();
        assert_eq!(writer.join().unwrap().0, None);
    }

    #[test]
    fn an_items_payload_is_queued_by_reference_and_sent_from_where_a_short_send_stopped() {
        use crate::wire::{Msg, Payload};
        let payload = Payload::from(vec![5u8; 10_000]);
        let item = Msg::Gossip {
            data_type: 0,
            ttl: 0,
            nonce: 1,
            payload: payload.clone(),
        };
        let expect = item.encode();
        let queues: Vec<Outbox> = (0..3).map(|_| Outbox::new(10, 1 << 20)).collect();
        for ob in &queues {
            assert!(ob.push_item(item.frame(), Some([1; 32])));
            assert!(ob.push(fr(b"!")));
        }
        // One payload, held here, by the message and by each queue: nothing was copied.
        assert_eq!(std::sync::Arc::strong_count(&payload), 5);
        // Each queue's socket takes a different amount at a time, cutting the frame in the
        // header, in the payload, and between frames.
        for (ob, step) in queues.iter().zip([3, 4_999, 10_008]) {
            let mut sent: Vec<u8> = Vec::new();
            let done = ob.flush(Instant::now(), |b| {
                let n = total(b).min(step);
                sent.extend_from_slice(&cat(b)[..n]);
                Ok(n)
            });
            assert_eq!(sent.len(), expect.len() + 1);
            assert_eq!(sent[..expect.len()], expect[..]);
            assert_eq!(done.frames, 2);
            assert!(ob.is_idle());
        }
        assert_eq!(
            std::sync::Arc::strong_count(&payload),
            2,
            "sent queues hold nothing"
        );
    }

    #[test]
    fn frames_queued_during_a_send_follow_it_from_the_same_flush() {
        let ob = Outbox::new(10, 1 << 20);
        ob.push(fr(b"a"));
        let mut calls = Vec::new();
        let done = ob.flush(Instant::now(), |b| {
            if calls.is_empty() {
                // The lock is free during the send: another thread queues and flushes, and
                // its flush leaves the socket to the one in progress.
                assert!(ob.push(fr(b"bc")));
                let inner = ob.flush(Instant::now(), |_| panic!("two senders on one socket"));
                assert_eq!(inner, Flushed::default());
                assert!(!ob.is_idle());
            }
            calls.push(cat(b));
            Ok(total(b))
        });
        assert_eq!(calls, vec![b"a".to_vec(), b"bc".to_vec()]);
        assert_eq!(
            done,
            Flushed {
                frames: 2,
                bytes: 3
            }
        );
        assert!(ob.is_idle());
    }

    #[test]
    fn a_held_gossip_frame_can_be_withdrawn_until_it_is_sent() {
        let ob = Outbox::new(10, 1 << 20);
        let (x, y, z) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        assert!(ob.push(fr(b"<hello>")));
        assert!(ob.push_item(fr(b"<x>"), Some(x)));
        assert!(ob.push_item(fr(b"<yy>"), Some(y)));
        assert!(ob.push_item(fr(b"<zzz>"), Some(z)));
        assert!(ob.withdraw(&y));
        assert!(!ob.withdraw(&y), "only once");
        assert!(!ob.withdraw(&[9u8; 32]), "never queued");
        // Same first eight bytes as y, another id: not withdrawn.
        let mut y2 = y;
        y2[31] = 7;
        assert!(!ob.withdraw(&y2));
        assert!(ob.withdraw(&z));
        let mut sent = Vec::new();
        let done = ob.flush(Instant::now(), |b| {
            sent.extend(cat(b));
            Ok(total(b))
        });
        assert_eq!(sent, b"<hello><x>");
        assert_eq!(done.frames, 2);
        // Sent: too late to withdraw.
        assert!(!ob.withdraw(&x));
        assert!(ob.is_idle());
    }

    #[test]
    fn withdrawn_frames_are_cut_out_wherever_they_are() {
        // Every subset of five queued gossip frames (between two plain frames), withdrawn
        // in any order: what goes out is exactly the rest, in order.
        let ids: Vec<[u8; 32]> = (0..5u8).map(|i| [i + 1; 32]).collect();
        for mask in 0..32u32 {
            for reversed in [false, true] {
                let ob = Outbox::new(100, 1 << 20);
                ob.push(fr(b"["));
                for (i, id) in ids.iter().enumerate() {
                    ob.push_item(fr(format!("<{}>", "x".repeat(i + 1)).as_bytes()), Some(*id));
                }
                ob.push(fr(b"]"));
                let mut order: Vec<usize> = (0..5).filter(|i| mask & (1 << i) != 0).collect();
                if reversed {
                    order.reverse();
                }
                for i in &order {
                    assert!(ob.withdraw(&ids[*i]));
                }
                let mut sent = Vec::new();
                let done = ob.flush(Instant::now(), |b| {
                    sent.extend(cat(b));
                    Ok(total(b))
                });
                let mut expect = b"[".to_vec();
                for i in (0..5).filter(|i| mask & (1 << i) == 0) {
                    expect.extend_from_slice(format!("<{}>", "x".repeat(i + 1)).as_bytes());
                }
                expect.extend_from_slice(b"]");
                assert_eq!(sent, expect, "mask {mask:05b}");
                assert_eq!(done.frames as usize, 2 + 5 - order.len());
                assert!(ob.is_idle());
            }
        }
    }

    #[test]
    fn an_error_hands_the_bytes_to_the_writer() {
        let ob = Outbox::new(10, 1 << 20);
        ob.push(fr(b"abc"));
        let done = ob.flush(Instant::now(), |_| {
            Err(io::Error::from(ErrorKind::BrokenPipe))
        });
        assert_eq!(done.bytes, 0);
        let mut spare = Batch::default();
        assert_eq!(
            ob.take_for_writer(&mut spare, fixed(Duration::ZERO)),
            Some(1)
        );
        assert_eq!(spare.to_vec(), b"abc");
    }

    fn fixed(w: Duration) -> Batching {
        Batching { min: w, max: w }
    }

    #[test]
    fn a_link_that_just_sent_holds_new_frames_until_its_window_ends() {
        let ob = Outbox::new(10, 1 << 20);
        let t0 = Instant::now();
        let w = Duration::from_millis(2);
        ob.push(fr(b"a"));
        assert_eq!(ob.when(t0, fixed(w)), When::Now);
        ob.flush(t0, |b| Ok(total(b)));
        ob.push(fr(b"b"));
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(ob.when(t1, fixed(w)), When::At(t0 + w));
        ob.push(fr(b"c"));
        assert_eq!(ob.when(t1, fixed(w)), When::Scheduled);
        let mut sent = Vec::new();
        ob.flush(t0 + w, |b| {
            sent.extend(cat(b));
            Ok(total(b))
        });
        assert_eq!(sent, b"bc");
        // After a quiet window the next frame goes at once; a zero window never holds.
        ob.push(fr(b"d"));
        assert_eq!(ob.when(t0 + 3 * w, fixed(w)), When::Now);
        assert_eq!(ob.when(t0 + w, fixed(Duration::ZERO)), When::Now);
    }

    #[test]
    fn the_writer_keeps_the_window_too() {
        let ob = Outbox::new(10, 1 << 20);
        ob.push(fr(b"a"));
        // The socket takes nothing: the writer owns the link from now on.
        let sent_at = Instant::now();
        ob.flush(sent_at, |_| Err(would_block()));
        let w = Duration::from_millis(50);
        let mut spare = Batch::default();
        assert_eq!(ob.take_for_writer(&mut spare, fixed(w)), Some(1));
        assert!(sent_at.elapsed() >= w, "took the bytes inside the window");
        ob.written();
        ob.push(fr(b"b"));
        let t = Instant::now();
        assert_eq!(ob.take_for_writer(&mut spare, fixed(w)), Some(1));
        assert_eq!(spare.to_vec(), b"b");
        assert!(
            t.elapsed() >= w - Duration::from_millis(1),
            "no window after a write"
        );
    }

    #[test]
    fn a_window_never_holds_more_than_half_the_queue() {
        let ob = Arc::new(Outbox::new(8, 1 << 20));
        let t0 = Instant::now();
        let w = fixed(Duration::from_millis(200));
        ob.push(fr(b"a"));
        assert_eq!(ob.when(t0, w), When::Now);
        ob.flush(t0, |b| Ok(total(b)));
        let t1 = t0 + Duration::from_millis(1);
        for (i, f) in [b"b", b"c", b"d"].iter().enumerate() {
            ob.push(fr(*f));
            let expect = if i == 0 {
                When::At(t0 + Duration::from_millis(200))
            } else {
                When::Scheduled
            };
            assert_eq!(ob.when(t1, w), expect);
        }
        // The fourth frame makes the queue half full: out now, inside the window.
        ob.push(fr(b"e"));
        assert_eq!(ob.when(t1, w), When::Now);
        let mut sent = Vec::new();
        ob.flush(t1, |b| {
            sent.extend(cat(b));
            Ok(total(b))
        });
        assert_eq!(sent, b"bcde");
        // The writer, waiting out its window, is woken when the queue reaches half.
        ob.push(fr(b"f"));
        ob.flush(t1, |_| Err(would_block()));
        let w2 = ob.clone();
        let started = Instant::now();
        let writer = std::thread::spawn(move || {
            let mut spare = Batch::default();
            let got = w2.take_for_writer(&mut spare, w);
            (got, spare)
        });
        std::thread::sleep(Duration::from_millis(20));
        for f in [b"g", b"h", b"i"] {
            ob.push(fr(f));
        }
        let (got, bytes) = writer.join().unwrap();
        assert_eq!((got, bytes.to_vec()), (Some(4), b"fghi".to_vec()));
        assert!(
            started.elapsed() < Duration::from_millis(150),
            "waited out the window"
        );
    }

    #[test]
    fn the_window_grows_with_the_links_rate_within_its_bounds() {
        let b = Batching {
            min: Duration::from_millis(2),
            max: Duration::from_millis(200),
        };
        assert_eq!(b.window(0.0), Duration::from_millis(2));
        assert_eq!(b.window(50.0), Duration::from_millis(2));
        assert_eq!(b.window(100.0), Duration::from_millis(8));
        assert_eq!(b.window(250.0), Duration::from_millis(50));
        assert_eq!(b.window(500.0), Duration::from_millis(200));
        assert_eq!(b.window(1e9), Duration::from_millis(200));
        assert_eq!(b.window(f64::NAN), Duration::from_millis(2));
        assert_eq!(fixed(Duration::ZERO).window(1e6), Duration::ZERO);
    }

    #[test]
    fn answers_do_not_count_in_the_links_rate_pushes_do() {
        // A late joiner's catch-up: a thousand items queued as one answer. Counted, they made
        // the link's rate look like thousands a second, and its next pushes waited out a
        // 200 ms window for a quarter of a second after the burst.
        let b = Batching {
            min: Duration::from_millis(2),
            max: Duration::from_millis(200),
        };
        let ob = Outbox::new(1 << 20, 1 << 30);
        let t0 = Instant::now();
        for _ in 0..1000 {
            ob.push(fr(b"x"));
        }
        assert_eq!(ob.when(t0, b), When::Now);
        ob.flush(t0, |b| Ok(total(b)));
        // 20 ms later, one frame: the link sent 20 ms ago, its window is the minimum.
        let t1 = t0 + Duration::from_millis(20);
        ob.push(fr(b"y"));
        assert_eq!(ob.when(t1, b), When::Now);
        ob.flush(t1, |b| Ok(total(b)));
        // A thousand pushes in 20 ms: a busy link, which holds the next ones.
        for k in 0..1000u32 {
            let mut id = [1u8; 32];
            id[..4].copy_from_slice(&k.to_le_bytes());
            ob.push_item(fr(b"z"), Some(id));
        }
        let t2 = t1 + Duration::from_millis(20);
        assert!(matches!(ob.when(t2, b), When::At(_)));
    }

    /// Feeds `per_second` pushes a second for `secs` seconds, flushing whenever `when` says
    /// so (at once, or when the window it named ends); returns the sends of the last second.
    fn sends_in_last_second(per_second: u32, secs: u32) -> (u32, u32) {
        let b = Batching {
            min: Duration::from_millis(2),
            max: Duration::from_millis(200),
        };
        let ob = Outbox::new(1 << 20, 1 << 30);
        let t0 = Instant::now();
        let gap = Duration::from_secs(1) / per_second;
        let (mut sends, mut frames, mut due) = (0, 0, None);
        let last = t0 + Duration::from_secs(u64::from(secs - 1));
        for i in 0..per_second * secs {
            let now = t0 + gap * i;
            if let Some(at) = due.filter(|at| *at <= now) {
                let done = ob.flush(at, |b| Ok(total(b)));
                if at >= last {
                    sends += 1;
                    frames += done.frames as u32;
                }
                due = None;
            }
            let mut id = [1u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            ob.push_item(fr(b"x"), Some(id));
            match ob.when(now, b) {
                When::Now => {
                    let done = ob.flush(now, |b| Ok(total(b)));
                    if now >= last {
                        sends += 1;
                        frames += done.frames as u32;
                    }
                }
                When::At(at) => due = Some(at),
                When::Scheduled => {}
            }
        }
        (sends, frames)
    }

    #[test]
    fn a_quiet_link_sends_each_frame_at_once_a_busy_one_a_few_segments() {
        // 40 frames a second: each alone, at once.
        let (sends, frames) = sends_in_last_second(40, 3);
        assert_eq!((sends, frames), (40, 40));
        // 1,000 a second: the window grows to its 200 ms bound, about five sends a second.
        let (sends, frames) = sends_in_last_second(1000, 3);
        assert!((4..=7).contains(&sends), "{sends} sends");
        assert!(frames >= 800, "{frames} frames");
        // 250 a second: a 50 ms window, about 20 sends.
        let (sends, _) = sends_in_last_second(250, 3);
        assert!((15..=25).contains(&sends), "{sends} sends");
    }

    #[test]
    fn the_queue_is_bounded_in_frames_and_closing_drops_it() {
        let ob = Outbox::new(2, 1 << 20);
        assert!(ob.push(fr(b"1")));
        assert!(ob.push(fr(b"2")));
        assert!(!ob.push(fr(b"3")));
        ob.close();
        assert!(!ob.push(fr(b"4")));
        assert!(ob.is_idle());
        let mut spare = Batch::default();
        assert_eq!(ob.take_for_writer(&mut spare, fixed(Duration::ZERO)), None);
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let ob = Outbox::new(1000, 1000);
        assert!(ob.push(fr(&[0u8; 600])));
        assert!(!ob.push(fr(&[0u8; 401])), "1,001 bytes queued");
        assert!(ob.push(fr(&[0u8; 400])));
        assert!(!ob.push_item(fr(&[0u8; 1]), Some([3; 32])));
    }

    #[test]
    fn items_leave_room_for_the_frames_a_link_cannot_do_without() {
        let ob = Outbox::new(8, 800);
        for _ in 0..7 {
            assert!(ob.push_item(fr(&[1u8; 10]), None));
        }
        assert!(
            !ob.push_item(fr(&[1u8; 10]), None),
            "items fill 7/8 of the frames"
        );
        assert!(ob.push(fr(b"liveness")), "a control frame still fits");
        let ob = Outbox::new(100, 800);
        assert!(ob.push_item(fr(&[1u8; 690]), None));
        assert!(
            !ob.push_item(fr(&[1u8; 11]), None),
            "items fill 7/8 of the bytes"
        );
        assert!(ob.push(fr(&[2u8; 100])));
    }
}
