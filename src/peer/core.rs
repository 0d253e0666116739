//! The peer's decisions: joining through the seeds, keeping neighbours, generating and
//! forwarding gossip, checking liveness, reporting the dead and repairing the overlay.
//! Events in, actions out; the rules themselves live in `gossip`, `liveness` and `selection`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::api::ApiMsg;
use crate::config::Config;
use crate::limits::RateLimiter;
use crate::node::{Action, CloseReason, ConnId, Core, Event, Now, Purpose, Record, Remote, Timer};
use crate::peer::apps::{LocalApps, Verdict, VALIDATION_TIMEOUT};
use crate::peer::gossip::{forward_targets, next_ttl, MessageList};
use crate::peer::liveness::LivenessTracker;
use crate::peer::selection;
use crate::texts::{self, TEXT_DATA_TYPE};
use crate::wire::{Msg, Payload, PeerEntry, Role};

/// Resend `Register` to a seed that has not confirmed within this time (its vote may have been
/// lost while the seeds were still linking up).
const REGISTER_RETRY: Duration = Duration::from_secs(2);
/// First wait before reconnecting to a seed we lost; doubles up to the cap.
const SEED_BACKOFF_MIN: Duration = Duration::from_millis(200);
const SEED_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Why the losing one of two simultaneous links is closed (sent in a `Reject`).
const DUPLICATE_LINK: &str = "duplicate link: keeping the one dialed by the smaller address";
/// A new neighbour link remembers the items forwarded on it for this long (and at most
/// `YOUNG_LINK_ITEMS` of them): if it turns out to be the losing one of two simultaneous
/// links, they are sent again on the link kept, since the remote may have closed its end
/// before reading them. Two simultaneous links meet within a handshake (`pow.timeout`).
const YOUNG_LINK: Duration = Duration::from_secs(10);
const YOUNG_LINK_ITEMS: usize = 1024;
/// Repeats of known gossip items may come this many times faster than new ones.
const REPEAT_RATE_FACTOR: u32 = 4;
/// How much of a remote's reason for closing a link goes into the log.
const MAX_REMOTE_REASON: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    /// Our connection to a seed.
    Seed,
    Neighbour,
    /// A seed's one-off probe connection to us.
    SeedProbe,
}

#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    kind: LinkKind,
    /// Whether we dialed this connection (used to pick one of two simultaneous links).
    dialed: bool,
    /// What this remote may send: new gossip items (first receipts), repeats, everything else.
    gossip_rate: RateLimiter,
    /// Repeats are cheap to drop, so they have a looser bound.
    repeat_rate: RateLimiter,
    control_rate: RateLimiter,
    /// While the link is young: the items forwarded on it (see `YOUNG_LINK`).
    young: Option<(Instant, Vec<Forwarded>)>,
}

/// An item as it was forwarded: enough to forward it again.
#[derive(Debug, Clone)]
struct Forwarded {
    id: [u8; 32],
    data_type: u16,
    ttl: u8,
    payload: Payload,
}

#[derive(Debug)]
struct Neighbour {
    conn: ConnId,
    liveness: LivenessTracker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Registering with the seeds and collecting their lists.
    Joining,
    /// Dialing the selected neighbours.
    Connecting,
    /// Gossiping.
    Running,
}

#[derive(Debug, Default)]
struct SeedState {
    conn: Option<ConnId>,
    dialing: bool,
    registered: bool,
    last_register: Option<Instant>,
    /// When to reconnect after losing it.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The list it sent during the join.
    list: Option<Vec<PeerEntry>>,
}

pub struct PeerCore {
    me: SocketAddr,
    config: Config,
    rng: StdRng,
    phase: Phase,
    join_deadline: Option<Instant>,
    links: BTreeMap<ConnId, Link>,
    /// The seeds we registered with (a random majority, topped up when one is unreachable).
    seeds: BTreeMap<SocketAddr, SeedState>,
    neighbours: BTreeMap<SocketAddr, Neighbour>,
    dialing: BTreeSet<SocketAddr>,
    /// Neighbours lost recently, not to be picked again while the seeds may still list them.
    lost: BTreeMap<SocketAddr, Instant>,
    ml: MessageList,
    generated: u32,
    next_gossip: Option<Instant>,
    next_liveness: Option<Instant>,
    /// A repair asked the seeds for a list and waits for it.
    repairing: bool,
    leaving: bool,
    /// Local applications on the API.
    apps: LocalApps,
    api_clients: BTreeSet<ConnId>,
    /// Network items waiting for their local validations before being forwarded.
    gated: BTreeMap<[u8; 32], GatedItem>,
}

#[derive(Debug)]
struct GatedItem {
    data_type: u16,
    /// The TTL to forward with.
    ttl: u8,
    payload: Payload,
    from: SocketAddr,
}

impl PeerCore {
    pub fn new(me: SocketAddr, config: Config, rng: StdRng) -> Self {
        PeerCore {
            me,
            ml: MessageList::new(config.gossip.message_list_capacity),
            config,
            rng,
            phase: Phase::Joining,
            join_deadline: None,
            links: BTreeMap::new(),
            seeds: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            dialing: BTreeSet::new(),
            lost: BTreeMap::new(),
            generated: 0,
            next_gossip: None,
            next_liveness: None,
            repairing: false,
            leaving: false,
            apps: LocalApps::default(),
            api_clients: BTreeSet::new(),
            gated: BTreeMap::new(),
        }
    }

    /// How many neighbour links this peer has.
    pub fn neighbour_count(&self) -> usize {
        self.neighbours.len()
    }

    /// Generates one of the assignment's messages now, outside the `gossip.interval` schedule
    /// (the simulator decides who speaks when).
    pub fn publish(&mut self, now: Now, out: &mut Vec<Action>) {
        self.generate(now, out);
    }

    pub fn neighbours(&self) -> Vec<SocketAddr> {
        let mut v: Vec<_> = self.neighbours.keys().copied().collect();
        v.sort();
        v
    }

    /// How long a lost neighbour stays excluded from repair: long enough for the seeds to
    /// confirm and remove it.
    fn lost_memory(&self) -> Duration {
        self.config.liveness.interval * (self.config.liveness.misses + 1)
            + self.config.liveness.probe_timeout * 2
    }

    fn seed_conns(&self) -> Vec<ConnId> {
        self.seeds.values().filter_map(|s| s.conn).collect()
    }

    fn seed_addrs_connected(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .seeds
            .iter()
            .filter(|(_, s)| s.conn.is_some())
            .map(|(a, _)| a.to_string())
            .collect();
        v.sort();
        v
    }

    fn dial_seed(&mut self, addr: SocketAddr, out: &mut Vec<Action>) {
        let s = self.seeds.entry(addr).or_default();
        s.dialing = true;
        s.retry_at = None;
        out.push(Action::Dial {
            addr,
            purpose: Purpose::Register,
        });
    }

    /// A seed we have not used yet, to replace one that is unreachable.
    fn spare_seed(&mut self) -> Option<SocketAddr> {
        let mut spare: Vec<SocketAddr> = self
            .config
            .seeds
            .iter()
            .copied()
            .filter(|s| !self.seeds.contains_key(s))
            .collect();
        spare.shuffle(&mut self.rng);
        spare.pop()
    }

    fn start(&mut self, now: Now, out: &mut Vec<Action>) {
        out.push(
            Record::new("started")
                .field("role", "peer")
                .line(format!("Peer {} listening", self.me))
                .into(),
        );
        let mut chosen = self.config.seeds.clone();
        chosen.shuffle(&mut self.rng);
        chosen.truncate(self.config.majority());
        for s in chosen {
            self.dial_seed(s, out);
        }
        let wait = self.config.pow.timeout * 2;
        self.join_deadline = Some(now.mono + wait);
        out.push(Action::timer(wait, Timer::JoinDeadline));
    }

    /// All seeds we are connected to have confirmed and sent their list, or time is up.
    fn maybe_finish_join(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.phase != Phase::Joining {
            return;
        }
        let connected: Vec<&SeedState> = self.seeds.values().filter(|s| s.conn.is_some()).collect();
        let lists = connected.iter().filter(|s| s.list.is_some()).count();
        let all_in = connected.len() >= self.config.majority() && lists == connected.len();
        let timed_out = self.join_deadline.is_some_and(|d| now.mono >= d) && lists > 0;
        if !(all_in || timed_out) {
            return;
        }
        let union = selection::union(
            self.seeds.values().filter_map(|s| s.list.as_deref()),
            &self.me,
        );
        let peers: Vec<String> = union.iter().map(|p| p.addr.to_string()).collect();
        out.push(
            Record::new("peer_list")
                .field("peers", peers.clone())
                .line(if peers.is_empty() {
                    "Peer list from the seeds: (empty, this is the first peer)".to_string()
                } else {
                    format!("Peer list from the seeds: {}", peers.join(", "))
                })
                .into(),
        );
        for s in self.seeds.values_mut() {
            s.list = None;
        }
        self.phase = Phase::Connecting;
        let chosen = selection::select(
            &union,
            self.config.peer.max_neighbours,
            self.config.peer.selection,
            &mut self.rng,
        );
        for addr in chosen {
            if !self.neighbours.contains_key(&addr) {
                self.dialing.insert(addr);
                out.push(Action::Dial {
                    addr,
                    purpose: Purpose::Neighbour,
                });
            }
        }
        self.maybe_start_gossip(now, out);
    }

    fn maybe_start_gossip(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.phase == Phase::Connecting && self.dialing.is_empty() {
            self.phase = Phase::Running;
            self.next_gossip = Some(now.mono);
            out.push(Action::timer(Duration::ZERO, Timer::Gossip));
            // Liveness rounds also top up a peer that has too few neighbours, even none.
            self.arm_liveness(now, out);
        }
    }

    /// Schedules the first liveness round, unless rounds are already running.
    fn arm_liveness(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.next_liveness.is_none() {
            let every = self.config.liveness.interval;
            self.next_liveness = Some(now.mono + every);
            out.push(Action::timer(every, Timer::LivenessRound));
        }
    }

    fn add_neighbour(
        &mut self,
        conn: ConnId,
        addr: SocketAddr,
        dialed: bool,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if let Some(existing) = self.neighbours.get(&addr) {
            // Both ends dialed each other at once. Both keep the link dialed by the smaller
            // address, so the two ends agree without talking.
            // The other end may not have seen the link we keep yet: tell it why this one
            // closes, so it does not take the close for a crash.
            let keep_new = (self.me < addr) == dialed;
            let (loser, kept) = if keep_new {
                (existing.conn, conn)
            } else {
                (conn, existing.conn)
            };
            let sent = self
                .links
                .remove(&loser)
                .and_then(|l| l.young)
                .map(|(_, items)| items)
                .unwrap_or_default();
            out.push(Action::send(
                loser,
                Msg::Reject {
                    reason: DUPLICATE_LINK.into(),
                },
            ));
            out.push(Action::Close { conn: loser });
            if keep_new {
                self.neighbours.insert(
                    addr,
                    Neighbour {
                        conn,
                        liveness: self.new_tracker(),
                    },
                );
            }
            // What went out on the losing link may never have been read: send it again on
            // the link kept (the remote ignores what it already has).
            for item in sent {
                if let Some((_, items)) = self.links.get_mut(&kept).and_then(|l| l.young.as_mut()) {
                    if items.len() < YOUNG_LINK_ITEMS {
                        items.push(item.clone());
                    }
                }
                out.push(Action::Forward {
                    to: vec![kept],
                    msg: Msg::Gossip {
                        data_type: item.data_type,
                        ttl: item.ttl,
                        payload: item.payload,
                    },
                    id: item.id,
                });
            }
            return;
        }
        self.neighbours.insert(
            addr,
            Neighbour {
                conn,
                liveness: self.new_tracker(),
            },
        );
        out.push(
            Record::new("neighbour_up")
                .field("peer", addr.to_string())
                .line(format!("Connected to neighbour {addr}"))
                .into(),
        );
        self.arm_liveness(now, out);
        self.tell_degree(out);
    }

    fn tell_degree(&self, out: &mut Vec<Action>) {
        let to = self.seed_conns();
        if !to.is_empty() {
            out.push(Action::Send {
                to,
                msg: Msg::Degree {
                    neighbours: self.neighbours.len().min(u16::MAX as usize) as u16,
                },
            });
        }
    }

    fn new_tracker(&self) -> LivenessTracker {
        LivenessTracker::new(
            self.config.liveness.misses,
            self.config.liveness.reply_timeout,
        )
    }

    /// Closes one neighbour link. If it is the link the neighbour is known by, the neighbour
    /// is lost; if it is a second, simultaneous link, only that link goes.
    fn drop_link(
        &mut self,
        conn: ConnId,
        addr: SocketAddr,
        reason: &str,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if self.neighbours.get(&addr).is_some_and(|n| n.conn == conn) {
            self.drop_neighbour(addr, reason, true, now, out);
        } else {
            self.links.remove(&conn);
            out.push(Action::Close { conn });
        }
    }

    /// Drops a neighbour: close, log, and repair if we are now short of neighbours.
    fn drop_neighbour(
        &mut self,
        addr: SocketAddr,
        reason: &str,
        close: bool,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(n) = self.neighbours.remove(&addr) else {
            return;
        };
        self.links.remove(&n.conn);
        if close {
            out.push(Action::Close { conn: n.conn });
        }
        out.push(
            Record::new("neighbour_down")
                .field("peer", addr.to_string())
                .field("reason", reason)
                .line(format!("Lost neighbour {addr}: {reason}"))
                .into(),
        );
        self.lost.insert(addr, now.mono);
        self.tell_degree(out);
        self.maybe_repair(out);
    }

    /// Asks a seed for fresh candidates when below the neighbour target (after a loss, and at
    /// every liveness round).
    fn maybe_repair(&mut self, out: &mut Vec<Action>) {
        if self.leaving || self.phase != Phase::Running || self.repairing {
            return;
        }
        if self.neighbours.len() + self.dialing.len() >= self.config.peer.max_neighbours {
            return;
        }
        let to = self.seed_conns();
        if let Some(&conn) = to.first() {
            self.repairing = true;
            out.push(Action::send(conn, Msg::GetPeers));
        }
    }

    fn repair_from(&mut self, list: Vec<PeerEntry>, now: Now, out: &mut Vec<Action>) {
        self.repairing = false;
        let memory = self.lost_memory();
        self.lost
            .retain(|_, t| now.mono.saturating_duration_since(*t) < memory);
        let candidates: Vec<PeerEntry> = list
            .into_iter()
            .filter(|p| {
                p.addr != self.me
                    && !self.neighbours.contains_key(&p.addr)
                    && !self.dialing.contains(&p.addr)
                    && !self.lost.contains_key(&p.addr)
            })
            .collect();
        let want = self
            .config
            .peer
            .max_neighbours
            .saturating_sub(self.neighbours.len() + self.dialing.len());
        for addr in selection::select(&candidates, want, self.config.peer.selection, &mut self.rng)
        {
            log::info!("repair: connecting to {addr}");
            self.dialing.insert(addr);
            out.push(Action::Dial {
                addr,
                purpose: Purpose::Neighbour,
            });
        }
    }

    /// Reports a dead neighbour to every seed we are connected to.
    fn report_dead(&mut self, dead: SocketAddr, why: &str, now: Now, out: &mut Vec<Action>) {
        let text = texts::dead_node(&dead, now.unix_ms, &self.me);
        let to = self.seed_conns();
        if !to.is_empty() {
            out.push(Action::Send {
                to,
                msg: Msg::DeadNode { text: text.clone() },
            });
        }
        log::info!("reporting {dead} dead: {why}");
        out.push(
            Record::new("dead_reported")
                .field("dead", dead.to_string())
                .field("text", text.clone())
                .field("seeds", self.seed_addrs_connected())
                .line(text)
                .into(),
        );
    }

    fn generate(&mut self, now: Now, out: &mut Vec<Action>) {
        self.generated += 1;
        let text = texts::gossip_text(now.unix_ms, &self.me, self.generated);
        let payload: Payload = text.as_bytes().into();
        let id = texts::message_id(TEXT_DATA_TYPE, &payload);
        self.ml.first_receipt(id, None);
        out.push(
            Record::new("gossip_sent")
                .field("id", hex::encode(id))
                .field("text", text.clone())
                .line(format!("Generated {text}"))
                .into(),
        );
        self.forward(id, TEXT_DATA_TYPE, 0, payload, None, out);
    }

    /// Sends an item to every neighbour except `from` and records where it went.
    fn forward(
        &mut self,
        id: [u8; 32],
        data_type: u16,
        ttl: u8,
        payload: Payload,
        from: Option<SocketAddr>,
        out: &mut Vec<Action>,
    ) {
        let targets = forward_targets(self.neighbours.keys(), from);
        if targets.is_empty() {
            return;
        }
        let to: Vec<ConnId> = targets.iter().map(|a| self.neighbours[a].conn).collect();
        for conn in &to {
            if let Some((_, items)) = self.links.get_mut(conn).and_then(|l| l.young.as_mut()) {
                if items.len() < YOUNG_LINK_ITEMS {
                    items.push(Forwarded {
                        id,
                        data_type,
                        ttl,
                        payload: payload.clone(),
                    });
                }
            }
        }
        self.ml.record_sent(&id, &targets);
        out.push(Action::Forward {
            to,
            msg: Msg::Gossip {
                data_type,
                ttl,
                payload,
            },
            id,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_gossip(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        data_type: u16,
        ttl: u8,
        payload: Payload,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let id = texts::message_id(data_type, &payload);
        // The rate limit counts new items: a neighbour forwards each item at most once, so a
        // receiver that fell behind and reads a backlog at once mostly reads repeats, which
        // have their own, looser bound. Checked before the item is recorded, so an item
        // refused here can still arrive from an honest neighbour.
        let new = self.ml.get(&id).is_none();
        let allowed = self.links.get_mut(&conn).is_some_and(|l| {
            if new {
                l.gossip_rate.allow(now.mono)
            } else {
                l.repeat_rate.allow(now.mono)
            }
        });
        if !allowed {
            let what = if new {
                "new gossip items"
            } else {
                "repeated gossip items"
            };
            let reason = format!("{what} faster than the rate limit");
            return self.reject(conn, from, reason, now, out);
        }
        if !new {
            self.ml.count_repeat();
            // The sender has it: if our copy to it is still held in the batch window, it need
            // not go (the flooding rule is unchanged: it only saves a duplicate).
            out.push(Action::Withdraw { conn, id });
            return;
        }
        self.ml.first_receipt(id, Some(from));
        let mut rec = Record::new("gossip_received").field("id", hex::encode(id));
        if data_type == TEXT_DATA_TYPE {
            let text = String::from_utf8_lossy(&payload);
            let from = from.to_string();
            rec = rec
                .line(format!("Received {text} from {from}"))
                .field("text", text.into_owned())
                .field("from", from);
        } else {
            rec = rec
                .field("from", from.to_string())
                .field("data_type", data_type)
                .field("bytes", payload.len());
        }
        out.push(rec.into());
        if data_type == TEXT_DATA_TYPE {
            // The assignment's messages always spread; local subscribers just hear of them.
            self.notify_local(id, data_type, &payload, None, false, now, out);
            if let Some(ttl) = next_ttl(ttl) {
                self.forward(id, data_type, ttl, payload, Some(from), out);
            }
            return;
        }
        // Application items spread only once every local subscriber has validated them.
        if !self.notify_local(id, data_type, &payload, None, true, now, out) {
            log::debug!(
                "item {} of type {data_type} stops here: no local subscriber",
                hex::encode(id)
            );
            return;
        }
        if let Some(ttl) = next_ttl(ttl) {
            self.gated.insert(
                id,
                GatedItem {
                    data_type,
                    ttl,
                    payload,
                    from,
                },
            );
        }
    }

    /// Notifies local subscribers; true if anyone was notified.
    #[allow(clippy::too_many_arguments)]
    fn notify_local(
        &mut self,
        id: [u8; 32],
        data_type: u16,
        data: &[u8],
        exclude: Option<ConnId>,
        gate: bool,
        now: Now,
        out: &mut Vec<Action>,
    ) -> bool {
        let notes = self
            .apps
            .notify(id, data_type, data, exclude, gate, now.mono);
        let any = !notes.is_empty();
        if any {
            out.push(Action::timer(VALIDATION_TIMEOUT, Timer::Validations));
        }
        for (to, msg) in notes {
            out.push(Action::SendApi { to, msg });
        }
        any
    }

    fn apply_verdicts(&mut self, verdicts: Vec<Verdict>, out: &mut Vec<Action>) {
        for v in verdicts {
            match v {
                Verdict::Forward(id) => {
                    if let Some(item) = self.gated.remove(&id) {
                        self.forward(
                            id,
                            item.data_type,
                            item.ttl,
                            item.payload,
                            Some(item.from),
                            out,
                        );
                    }
                }
                Verdict::Drop(id, why) => {
                    self.gated.remove(&id);
                    log::debug!("item {} not forwarded: {why}", hex::encode(id));
                }
            }
        }
    }

    fn on_api(&mut self, conn: ConnId, msg: ApiMsg, now: Now, out: &mut Vec<Action>) {
        if !self.api_clients.contains(&conn) {
            return;
        }
        match msg {
            ApiMsg::Announce {
                ttl,
                data_type,
                data,
            } => {
                let id = texts::message_id(data_type, &data);
                if !self.ml.first_receipt(id, None) {
                    return;
                }
                out.push(
                    Record::new("announced")
                        .field("id", hex::encode(id))
                        .field("data_type", data_type)
                        .field("bytes", data.len())
                        .into(),
                );
                self.notify_local(id, data_type, &data, Some(conn), false, now, out);
                self.forward(id, data_type, ttl, data.into(), None, out);
            }
            ApiMsg::Notify { data_type } => self.apps.subscribe(conn, data_type),
            ApiMsg::Validation { message_id, valid } => {
                match self.apps.validation(conn, message_id, valid) {
                    Ok(Some(v)) => self.apply_verdicts(vec![v], out),
                    Ok(None) => {}
                    Err(_) => self.reject_client(
                        conn,
                        format!("VALIDATION for unknown message id {message_id}"),
                        out,
                    ),
                }
            }
            ApiMsg::Notification { .. } => self.reject_client(
                conn,
                "a client may not send GOSSIP NOTIFICATION".into(),
                out,
            ),
        }
    }

    fn reject_client(&mut self, conn: ConnId, reason: String, out: &mut Vec<Action>) {
        out.push(Record::rejected(format!("api client {conn}"), reason).into());
        out.push(Action::Close { conn });
        self.api_clients.remove(&conn);
        let verdicts = self.apps.disconnect(conn);
        self.apply_verdicts(verdicts, out);
    }

    fn answer_liveness(
        &self,
        conn: ConnId,
        from: SocketAddr,
        text: &str,
        out: &mut Vec<Action>,
    ) -> bool {
        match texts::parse_liveness_request(text) {
            Some((ts, sender)) if sender == from => {
                let text = texts::liveness_reply(ts, &sender, &self.me);
                out.push(Action::send(conn, Msg::LivenessReply { text }));
                true
            }
            _ => false,
        }
    }

    fn reject(
        &mut self,
        conn: ConnId,
        addr: SocketAddr,
        reason: String,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        out.push(Record::rejected(addr, &reason).into());
        match self.links.get(&conn).map(|l| l.kind) {
            Some(LinkKind::Neighbour) => {
                // Said before the close, so the neighbour knows it was cut off on purpose and
                // does not report us as dead.
                out.push(Action::send(
                    conn,
                    Msg::Reject {
                        reason: reason.clone(),
                    },
                ));
                self.drop_link(conn, addr, &reason, now, out)
            }
            _ => {
                self.on_link_gone(conn, now, out);
                out.push(Action::Close { conn });
            }
        }
    }

    fn on_frame(&mut self, conn: ConnId, msg: Msg, now: Now, out: &mut Vec<Action>) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        let (addr, kind) = (link.addr, link.kind);
        // Gossip is metered in `on_gossip`, once it is known whether the item is new.
        let gossip = matches!(msg, Msg::Gossip { .. });
        if !gossip && !link.control_rate.allow(now.mono) {
            let reason = "control frames faster than the rate limit".to_string();
            return self.reject(conn, addr, reason, now, out);
        }
        match (kind, msg) {
            (
                LinkKind::Neighbour,
                Msg::Gossip {
                    data_type,
                    ttl,
                    payload,
                },
            ) => self.on_gossip(conn, addr, data_type, ttl, payload, now, out),
            (LinkKind::Neighbour, Msg::LivenessRequest { text })
            | (LinkKind::Seed | LinkKind::SeedProbe, Msg::LivenessRequest { text }) => {
                if !self.answer_liveness(conn, addr, &text, out) {
                    self.reject(
                        conn,
                        addr,
                        format!("malformed liveness request {text:?}"),
                        now,
                        out,
                    );
                }
            }
            (LinkKind::Neighbour, Msg::LivenessReply { text }) => {
                let matched =
                    texts::parse_liveness_reply(&text).is_some_and(|(ts, sender, replier)| {
                        sender == self.me
                            && replier == addr
                            && self
                                .neighbours
                                .get_mut(&addr)
                                .is_some_and(|n| n.liveness.on_reply(ts))
                    });
                if !matched {
                    log::debug!("liveness reply from {addr} does not match a request: {text:?}");
                }
            }
            (LinkKind::Neighbour, Msg::Leave) => self.drop_link(conn, addr, "left", now, out),
            (LinkKind::Neighbour, Msg::Reject { reason }) => {
                // The remote closes this link on purpose (most often the losing one of two
                // simultaneous links): not a crash, so no dead report. Its words are cut
                // short and kept on one line for the log.
                let reason: String = reason
                    .chars()
                    .take(MAX_REMOTE_REASON)
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let why = format!("closed by the remote: {reason}");
                self.drop_link(conn, addr, &why, now, out);
            }
            (LinkKind::Seed, Msg::Registered) => {
                let Some(s) = self.seeds.get_mut(&addr) else {
                    return;
                };
                if s.registered {
                    return;
                }
                s.registered = true;
                out.push(
                    Record::new("registered_with")
                        .field("seed", addr.to_string())
                        .line(format!("Registered with seed {addr}"))
                        .into(),
                );
                out.push(Action::send(conn, Msg::GetPeers));
                self.tell_degree(out);
            }
            (LinkKind::Seed, Msg::PeerList { peers }) => {
                if self.phase == Phase::Joining {
                    if let Some(s) = self.seeds.get_mut(&addr) {
                        s.list = Some(peers);
                    }
                    self.maybe_finish_join(now, out);
                } else if self.repairing {
                    self.repair_from(peers, now, out);
                }
            }
            (_, other) => self.reject(
                conn,
                addr,
                format!("unexpected {} on a {kind:?} link", other.name()),
                now,
                out,
            ),
        }
    }

    /// Bookkeeping when a non-neighbour link ends.
    fn on_link_gone(&mut self, conn: ConnId, now: Now, out: &mut Vec<Action>) {
        let Some(link) = self.links.remove(&conn) else {
            return;
        };
        if link.kind == LinkKind::Seed {
            if let Some(s) = self.seeds.get_mut(&link.addr) {
                if s.conn == Some(conn) {
                    s.conn = None;
                    s.registered = false;
                    s.list = None;
                    s.backoff = if s.backoff.is_zero() {
                        SEED_BACKOFF_MIN
                    } else {
                        (s.backoff * 2).min(SEED_BACKOFF_MAX)
                    };
                    s.retry_at = Some(now.mono + s.backoff);
                    out.push(Action::timer(s.backoff, Timer::SeedRetry));
                }
            }
            self.repairing = false;
            self.maybe_finish_join(now, out);
        }
    }

    fn on_timer(&mut self, timer: Timer, now: Now, out: &mut Vec<Action>) {
        if timer == Timer::YoungLinks {
            for link in self.links.values_mut() {
                if link
                    .young
                    .as_ref()
                    .is_some_and(|(until, _)| now.mono >= *until)
                {
                    link.young = None;
                }
            }
            return;
        }
        if self.leaving {
            return;
        }
        match timer {
            Timer::Validations => {
                let verdicts = self.apps.expire(now.mono);
                self.apply_verdicts(verdicts, out);
            }
            Timer::SeedRetry => self.retry_seeds(now, out),
            Timer::JoinDeadline => self.maybe_finish_join(now, out),
            Timer::Gossip => {
                let Some(at) = self.next_gossip else { return };
                if now.mono < at || self.generated >= self.config.gossip.count {
                    return;
                }
                self.generate(now, out);
                // On the schedule set at the start; slots missed while the process was not
                // running (frozen, overloaded) are skipped, not made up in a burst.
                let every = self.config.gossip.interval.max(Duration::from_millis(1));
                let mut next = at + every;
                while next <= now.mono {
                    next += every;
                }
                self.next_gossip = Some(next);
                out.push(Action::timer(next - now.mono, Timer::Gossip));
            }
            Timer::LivenessRound => {
                if self.next_liveness.is_some_and(|at| now.mono >= at) {
                    let every = self.config.liveness.interval;
                    self.next_liveness = Some(now.mono + every);
                    out.push(Action::timer(every, Timer::LivenessRound));
                    self.liveness_round(now, out);
                }
            }
            Timer::ReplyDeadline => self.liveness_deadlines(now, out),
            Timer::YoungLinks | Timer::SeedRedial | Timer::ProbeDeadline | Timer::Sync => {}
        }
    }

    /// Reconnects lost seeds whose backoff is over and re-sends unconfirmed registrations.
    fn retry_seeds(&mut self, now: Now, out: &mut Vec<Action>) {
        let mut redial = Vec::new();
        for (addr, s) in self.seeds.iter_mut() {
            if s.conn.is_none() && !s.dialing && s.retry_at.is_some_and(|t| t <= now.mono) {
                redial.push(*addr);
            }
            if let Some(conn) = s.conn {
                if !s.registered
                    && s.last_register
                        .is_some_and(|t| now.mono >= t + REGISTER_RETRY)
                {
                    s.last_register = Some(now.mono);
                    out.push(Action::send(conn, Msg::Register));
                    out.push(Action::timer(REGISTER_RETRY, Timer::SeedRetry));
                }
            }
        }
        for addr in redial {
            self.dial_seed(addr, out);
        }
    }

    /// At a reply deadline: a neighbour whose last `misses` requests passed their reply deadline
    /// unanswered is reported and dropped.
    fn liveness_deadlines(&mut self, now: Now, out: &mut Vec<Action>) {
        let mut dead: Vec<(SocketAddr, u32)> = self
            .neighbours
            .iter_mut()
            .filter_map(|(addr, n)| n.liveness.check(now.mono).map(|m| (*addr, m)))
            .collect();
        dead.sort();
        for (addr, misses) in dead {
            let why = format!("{misses} liveness requests unanswered");
            self.report_dead(addr, &why, now, out);
            self.drop_neighbour(addr, &why, true, now, out);
        }
    }

    fn liveness_round(&mut self, now: Now, out: &mut Vec<Action>) {
        let mut requests = Vec::new();
        let mut addrs: Vec<SocketAddr> = self.neighbours.keys().copied().collect();
        addrs.sort();
        for addr in addrs {
            let n = self.neighbours.get_mut(&addr).expect("listed above");
            n.liveness.on_request(now.unix_ms, now.mono);
            requests.push(n.conn);
        }
        if !requests.is_empty() {
            out.push(Action::timer(
                self.config.liveness.reply_timeout,
                Timer::ReplyDeadline,
            ));
            out.push(Action::Send {
                to: requests,
                msg: Msg::LivenessRequest {
                    text: texts::liveness_request(now.unix_ms, &self.me),
                },
            });
        }
        // A peer that joined with a short list (early in the network's life, or while other
        // registrations were still being committed) tops up to its target, which also joins
        // overlay pieces that formed apart.
        self.maybe_repair(out);
    }

    fn on_closed(&mut self, conn: ConnId, reason: CloseReason, now: Now, out: &mut Vec<Action>) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        if link.kind == LinkKind::Neighbour {
            let addr = link.addr;
            if self.leaving {
                self.neighbours.remove(&addr);
                self.links.remove(&conn);
                return;
            }
            // No goodbye: a crash. Report at once; the seeds confirm before removing.
            let why = format!("connection lost without a goodbye ({reason})");
            self.report_dead(addr, &why, now, out);
            self.drop_neighbour(addr, &why, false, now, out);
        } else {
            self.on_link_gone(conn, now, out);
        }
    }

    fn on_shutdown(&mut self, out: &mut Vec<Action>) {
        self.leaving = true;
        let to: Vec<ConnId> = self
            .seed_conns()
            .into_iter()
            .chain(self.neighbours.values().map(|n| n.conn))
            .collect();
        if !to.is_empty() {
            out.push(Action::Send {
                to,
                msg: Msg::Leave,
            });
        }
        out.push(
            Record::new("leaving")
                .line("Leaving: told seeds and neighbours")
                .into(),
        );
    }
}

impl Core for PeerCore {
    fn handle(&mut self, event: Event, now: Now, out: &mut Vec<Action>) {
        match event {
            Event::Started => self.start(now, out),
            Event::Connected { conn, remote } => {
                let Remote {
                    addr, role, dialed, ..
                } = remote;
                let kind = match (role, dialed) {
                    (Role::Seed, Some(_)) => LinkKind::Seed,
                    (Role::Seed, None) => LinkKind::SeedProbe,
                    (Role::Peer, _) => LinkKind::Neighbour,
                };
                if self.leaving {
                    out.push(Action::Close { conn });
                    return;
                }
                let l = &self.config.limits;
                self.links.insert(
                    conn,
                    Link {
                        addr,
                        kind,
                        dialed: dialed.is_some(),
                        gossip_rate: RateLimiter::new(
                            l.gossip_per_second,
                            l.gossip_per_second.saturating_mul(2),
                            now.mono,
                        ),
                        repeat_rate: RateLimiter::new(
                            l.gossip_per_second.saturating_mul(REPEAT_RATE_FACTOR),
                            l.gossip_per_second.saturating_mul(2 * REPEAT_RATE_FACTOR),
                            now.mono,
                        ),
                        control_rate: RateLimiter::new(
                            l.control_per_second,
                            l.control_per_second * 2,
                            now.mono,
                        ),
                        young: (kind == LinkKind::Neighbour)
                            .then(|| (now.mono + YOUNG_LINK, Vec::new())),
                    },
                );
                if kind == LinkKind::Neighbour {
                    out.push(Action::timer(YOUNG_LINK, Timer::YoungLinks));
                }
                match kind {
                    LinkKind::Seed => {
                        let s = self.seeds.entry(addr).or_default();
                        s.conn = Some(conn);
                        s.dialing = false;
                        s.backoff = Duration::ZERO;
                        s.last_register = Some(now.mono);
                        out.push(Action::send(conn, Msg::Register));
                        out.push(Action::timer(REGISTER_RETRY, Timer::SeedRetry));
                    }
                    LinkKind::Neighbour => {
                        self.dialing.remove(&addr);
                        let dialed = self.links[&conn].dialed;
                        self.add_neighbour(conn, addr, dialed, now, out);
                        self.maybe_start_gossip(now, out);
                    }
                    LinkKind::SeedProbe => {}
                }
            }
            Event::Frame { conn, msg } => self.on_frame(conn, msg, now, out),
            Event::Closed { conn, reason } => self.on_closed(conn, reason, now, out),
            Event::DialFailed {
                addr,
                purpose,
                reason,
            } => match purpose {
                Purpose::Register => {
                    log::warn!("seed {addr} unreachable: {reason}");
                    let registering = self.phase == Phase::Joining;
                    if let Some(s) = self.seeds.get_mut(&addr) {
                        s.dialing = false;
                        s.backoff = (s.backoff * 2).clamp(SEED_BACKOFF_MIN, SEED_BACKOFF_MAX);
                        s.retry_at = Some(now.mono + s.backoff);
                        out.push(Action::timer(s.backoff, Timer::SeedRetry));
                    }
                    // Keep a majority: replace an unreachable seed with one not yet used.
                    let live = self
                        .seeds
                        .values()
                        .filter(|s| s.conn.is_some() || s.dialing)
                        .count();
                    if registering && live < self.config.majority() {
                        if let Some(spare) = self.spare_seed() {
                            self.dial_seed(spare, out);
                        }
                    }
                }
                Purpose::Neighbour => {
                    log::info!("neighbour {addr} unreachable: {reason}");
                    self.dialing.remove(&addr);
                    self.lost.insert(addr, now.mono);
                    self.maybe_start_gossip(now, out);
                    self.maybe_repair(out);
                }
                Purpose::SeedLink | Purpose::Probe => {}
            },
            Event::ApiConnected { conn } => {
                self.api_clients.insert(conn);
            }
            Event::ApiFrame { conn, msg } => self.on_api(conn, msg, now, out),
            Event::Timer(timer) => self.on_timer(timer, now, out),
            Event::Shutdown => self.on_shutdown(out),
        }
    }

    fn gossip_duplicates(&self) -> u64 {
        self.ml.duplicates()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    const ME: u16 = 9100;
    const SEED_CONN: ConnId = 1;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "seeds: [\"127.0.0.1:9001\"]\nliveness: {{ interval: 1s, misses: 3, reply_timeout: 500ms }}\n{extra}"
        ))
        .unwrap()
    }

    fn sends(out: &[Action]) -> Vec<(Vec<ConnId>, Msg)> {
        out.iter()
            .filter_map(|x| match x {
                Action::Send { to, msg } | Action::Forward { to, msg, .. } => {
                    Some((to.clone(), msg.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn events(out: &[Action]) -> Vec<&'static str> {
        out.iter()
            .filter_map(|x| match x {
                Action::Log(r) => Some(r.event),
                _ => None,
            })
            .collect()
    }

    /// A peer that has joined through one seed and has neighbours on conns 10, 11, 12
    /// (ports 9101..9103).
    fn joined(extra: &str) -> (PeerCore, Now) {
        let now = Now::real();
        let mut p = PeerCore::new(a(ME), config(extra), StdRng::seed_from_u64(1));
        let mut out = vec![];
        p.handle(Event::Started, now, &mut out);
        let seed = Remote {
            addr: a(9001),
            role: Role::Seed,
            incarnation: 0,
            dialed: Some(Purpose::Register),
        };
        p.handle(
            Event::Connected {
                conn: SEED_CONN,
                remote: seed,
            },
            now,
            &mut out,
        );
        p.handle(
            Event::Frame {
                conn: SEED_CONN,
                msg: Msg::Registered,
            },
            now,
            &mut out,
        );
        p.handle(
            Event::Frame {
                conn: SEED_CONN,
                msg: Msg::PeerList { peers: vec![] },
            },
            now,
            &mut out,
        );
        for (conn, port) in [(10, 9101), (11, 9102), (12, 9103)] {
            let r = Remote {
                addr: a(port),
                role: Role::Peer,
                incarnation: 1,
                dialed: None,
            };
            p.handle(Event::Connected { conn, remote: r }, now, &mut out);
        }
        assert_eq!(p.neighbours().len(), 3);
        (p, now)
    }

    fn gossip(text: &str, ttl: u8) -> Msg {
        Msg::Gossip {
            data_type: 0,
            ttl,
            payload: text.as_bytes().into(),
        }
    }

    #[test]
    fn items_sent_on_the_losing_one_of_two_simultaneous_links_are_sent_again_on_the_other() {
        let (mut p, now) = joined("");
        let mut out = vec![];
        // An item from 9102 goes out on every other link, 9101's accepted conn 10 included.
        p.handle(
            Event::Frame {
                conn: 11,
                msg: gossip("1795313883123:127.0.0.1:9102:1", 0),
            },
            now,
            &mut out,
        );
        assert!(sends(&out).iter().any(|(to, _)| to.contains(&10)));
        // Then the link ME dialed to 9101 arrives: it is kept (ME is the smaller address) and
        // conn 10 closes, so the item goes again on conn 20.
        out.clear();
        let dialed = Remote {
            addr: a(9101),
            role: Role::Peer,
            incarnation: 1,
            dialed: Some(Purpose::Neighbour),
        };
        p.handle(
            Event::Connected {
                conn: 20,
                remote: dialed.clone(),
            },
            now,
            &mut out,
        );
        assert!(out.contains(&Action::Close { conn: 10 }));
        let again: Vec<_> = sends(&out)
            .into_iter()
            .filter(|(to, _)| to == &vec![20])
            .collect();
        assert_eq!(
            again,
            vec![(vec![20], gossip("1795313883123:127.0.0.1:9102:1", 0))]
        );
        // A link past its first seconds no longer keeps what it sent: the same race later,
        // on 9102's accepted conn 11, sends nothing again (and the list is gone from memory).
        let later = now.after(YOUNG_LINK);
        p.handle(Event::Timer(Timer::YoungLinks), later, &mut out);
        p.handle(
            Event::Frame {
                conn: 12,
                msg: gossip("1795313883123:127.0.0.1:9103:1", 0),
            },
            later,
            &mut out,
        );
        out.clear();
        p.handle(
            Event::Connected {
                conn: 40,
                remote: Remote {
                    addr: a(9102),
                    ..dialed
                },
            },
            later,
            &mut out,
        );
        assert!(out.contains(&Action::Close { conn: 11 }));
        assert!(
            !sends(&out)
                .iter()
                .any(|(_, m)| matches!(m, Msg::Gossip { .. })),
            "{out:?}"
        );
    }

    #[test]
    fn of_two_simultaneous_links_one_closes_with_a_reason_and_neither_end_reports_a_crash() {
        // 9101 (conn 10, accepted) is larger than ME: both ends keep the link ME dialed.
        let (mut p, now) = joined("");
        let mut out = vec![];
        let dialed = Remote {
            addr: a(9101),
            role: Role::Peer,
            incarnation: 1,
            dialed: Some(Purpose::Neighbour),
        };
        p.handle(
            Event::Connected {
                conn: 20,
                remote: dialed,
            },
            now,
            &mut out,
        );
        let s = sends(&out);
        assert!(
            s.iter()
                .any(|(to, m)| to == &vec![10] && matches!(m, Msg::Reject { .. })),
            "the losing link is told why: {s:?}"
        );
        assert!(out.contains(&Action::Close { conn: 10 }));
        assert!(events(&out).is_empty(), "still the same neighbour");
        assert_eq!(p.neighbours().len(), 3);
        // Its close is not a crash.
        out.clear();
        p.handle(
            Event::Closed {
                conn: 10,
                reason: CloseReason::EndOfStream,
            },
            now,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(p.neighbours().len(), 3);

        // The other end: the remote closes our only link to it with a reason before we have
        // seen the link it keeps. We lose the neighbour for now, without a dead report.
        out.clear();
        p.handle(
            Event::Frame {
                conn: 11,
                msg: Msg::Reject {
                    reason: "duplicate link:\nkeeping the one dialed by the smaller address".into(),
                },
            },
            now,
            &mut out,
        );
        assert_eq!(events(&out), vec!["neighbour_down"]);
        let logged = out.iter().find_map(|x| match x {
            Action::Log(r) => r
                .get("reason")
                .and_then(serde_json::Value::as_str)
                .map(str::to_string),
            _ => None,
        });
        assert_eq!(
            logged.as_deref(),
            Some("closed by the remote: duplicate link: keeping the one dialed by the smaller address"),
            "the remote's words on one line"
        );
        assert!(!sends(&out)
            .iter()
            .any(|(_, m)| matches!(m, Msg::DeadNode { .. })));
        assert!(out.contains(&Action::Close { conn: 11 }));
        out.clear();
        p.handle(
            Event::Closed {
                conn: 11,
                reason: CloseReason::EndOfStream,
            },
            now,
            &mut out,
        );
        assert!(!events(&out).contains(&"dead_reported"), "{out:?}");
    }

    #[test]
    fn first_receipt_goes_to_every_other_neighbour_and_repeats_are_dropped() {
        let (mut p, now) = joined("");
        let mut out = vec![];
        p.handle(
            Event::Frame {
                conn: 11,
                msg: gossip("1:127.0.0.1:9102:1", 0),
            },
            now,
            &mut out,
        );
        assert_eq!(events(&out), vec!["gossip_received"]);
        let s = sends(&out);
        assert_eq!(s.len(), 1);
        let mut to = s[0].0.clone();
        to.sort();
        assert_eq!(to, vec![10, 12], "never back to the sender");
        out.clear();
        p.handle(
            Event::Frame {
                conn: 12,
                msg: gossip("1:127.0.0.1:9102:1", 0),
            },
            now,
            &mut out,
        );
        // A repeat only takes back our copy to its sender, if that is still held.
        let id = texts::message_id(TEXT_DATA_TYPE, b"1:127.0.0.1:9102:1");
        assert_eq!(out, vec![Action::Withdraw { conn: 12, id }]);
        assert_eq!(p.gossip_duplicates(), 1);
        // TTL 1: delivered here, forwarded nowhere.
        out.clear();
        p.handle(
            Event::Frame {
                conn: 10,
                msg: gossip("2:127.0.0.1:9101:1", 1),
            },
            now,
            &mut out,
        );
        assert_eq!(events(&out), vec!["gossip_received"]);
        assert!(sends(&out).is_empty());
    }

    #[test]
    fn a_broken_link_is_reported_at_once_with_the_exact_text() {
        let (mut p, now) = joined("");
        let mut out = vec![];
        p.handle(
            Event::Closed {
                conn: 11,
                reason: CloseReason::Reset,
            },
            now,
            &mut out,
        );
        let s = sends(&out);
        let (to, Msg::DeadNode { text }) = &s[0] else {
            panic!("{s:?}")
        };
        assert_eq!(to, &vec![SEED_CONN]);
        assert_eq!(
            *text,
            format!("Dead Node:127.0.0.1:9102:{}:127.0.0.1:{ME}", now.unix_ms)
        );
        assert!(events(&out).contains(&"dead_reported"));
        assert!(events(&out).contains(&"neighbour_down"));
        assert_eq!(p.neighbours().len(), 2);
    }

    #[test]
    fn three_unanswered_liveness_rounds_report_the_neighbour() {
        let (mut p, now) = joined("");
        let mut reported = vec![];
        for ms in [1010, 2010, 3010, 3400, 3520, 4010, 5010] {
            let mut out = vec![];
            let t = now.after(Duration::from_millis(ms));
            // Both timers fire at every step: one that is not due yet changes nothing.
            p.handle(Event::Timer(Timer::LivenessRound), t, &mut out);
            p.handle(Event::Timer(Timer::ReplyDeadline), t, &mut out);
            // Neighbours on 10 and 12 answer; 11 never does.
            for (to, msg) in sends(&out) {
                if let Msg::LivenessRequest { text } = msg {
                    let (ts, sender) = texts::parse_liveness_request(&text).unwrap();
                    for conn in to.into_iter().filter(|c| *c != 11) {
                        let replier = a(9101 + (conn - 10) as u16);
                        let text = texts::liveness_reply(ts, &sender, &replier);
                        p.handle(
                            Event::Frame {
                                conn,
                                msg: Msg::LivenessReply { text },
                            },
                            t,
                            &mut vec![],
                        );
                    }
                }
            }
            if events(&out).contains(&"dead_reported") {
                reported.push(ms);
            }
        }
        assert_eq!(
            reported,
            vec![3520],
            "requests at 1, 2, 3 s unanswered: dead at the third one's reply deadline (3.01 + 0.5 s)"
        );
        assert_eq!(p.neighbours(), vec![a(9101), a(9103)]);
    }

    #[test]
    fn a_gossip_flood_from_one_neighbour_is_cut_off() {
        let (mut p, now) = joined("limits: { gossip_per_second: 10 }");
        let mut out = vec![];
        for i in 0..100 {
            p.handle(
                Event::Frame {
                    conn: 10,
                    msg: gossip(&format!("{i}:127.0.0.1:9101:1"), 0),
                },
                now,
                &mut out,
            );
        }
        assert!(events(&out).contains(&"rejected"));
        // Told why, then closed: the neighbour does not take it for our crash.
        let told = out.iter().position(|x| {
            matches!(x, Action::Send { to, msg: Msg::Reject { reason } }
                if to == &vec![10] && reason.contains("rate limit"))
        });
        let closed = out.iter().position(|x| x == &Action::Close { conn: 10 });
        assert!(told.is_some() && told < closed, "{out:?}");
        assert!(!p.neighbours().contains(&a(9101)));
        // Bursts up to twice the rate were accepted before the cut.
        assert_eq!(
            events(&out)
                .iter()
                .filter(|e| **e == "gossip_received")
                .count(),
            20
        );
    }

    #[test]
    fn repeats_are_metered_apart_from_new_items_and_more_loosely() {
        // A receiver reading a backlog at once sees mostly repeats: 70 at once, over three
        // times the burst of new items (20), still pass; only past their own burst (80) is a
        // neighbour cut off.
        let (mut p, now) = joined("limits: { gossip_per_second: 10 }");
        let mut out = vec![];
        let item = gossip("1:127.0.0.1:9102:1", 0);
        let receive = |p: &mut PeerCore, conn: ConnId, times: usize, out: &mut Vec<Action>| {
            for _ in 0..times {
                let msg = item.clone();
                p.handle(Event::Frame { conn, msg }, now, out);
            }
        };
        receive(&mut p, 11, 1, &mut out);
        receive(&mut p, 10, 70, &mut out);
        assert!(!events(&out).contains(&"rejected"), "{out:?}");
        assert!(p.neighbours().contains(&a(9101)));
        // Bursts of repeats: 2 × 4 × the rate.
        receive(&mut p, 10, 20, &mut out);
        assert!(events(&out).contains(&"rejected"));
        assert!(!p.neighbours().contains(&a(9101)));
    }

    #[test]
    fn application_items_wait_for_local_validation() {
        let (mut p, now) = joined("");
        let mut out = vec![];
        p.handle(Event::ApiConnected { conn: 50 }, now, &mut out);
        p.handle(
            Event::ApiFrame {
                conn: 50,
                msg: ApiMsg::Notify { data_type: 7 },
            },
            now,
            &mut out,
        );
        let item = Msg::Gossip {
            data_type: 7,
            ttl: 0,
            payload: b"x".as_slice().into(),
        };
        // No subscriber of type 8: stops here.
        p.handle(
            Event::Frame {
                conn: 10,
                msg: Msg::Gossip {
                    data_type: 8,
                    ttl: 0,
                    payload: b"y".as_slice().into(),
                },
            },
            now,
            &mut out,
        );
        assert!(sends(&out).is_empty());
        out.clear();
        p.handle(
            Event::Frame {
                conn: 10,
                msg: item,
            },
            now,
            &mut out,
        );
        assert!(sends(&out).is_empty(), "not forwarded before validation");
        let Some(Action::SendApi {
            to: 50,
            msg: ApiMsg::Notification { message_id, .. },
        }) = out
            .iter()
            .find(|x| matches!(x, Action::SendApi { .. }))
            .cloned()
        else {
            panic!("{out:?}")
        };
        out.clear();
        p.handle(
            Event::ApiFrame {
                conn: 50,
                msg: ApiMsg::Validation {
                    message_id,
                    valid: true,
                },
            },
            now,
            &mut out,
        );
        let s = sends(&out);
        assert_eq!(s.len(), 1);
        assert!(!s[0].0.contains(&10));
    }
}
