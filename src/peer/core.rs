//! `PeerCore`: the peer's decisions, routed. Events come in, go to the part they concern —
//! joining and the seed sessions (`seeds`), the overlay (`overlay`), gossip (`gossip`),
//! liveness (`liveness`), local applications (`apps`) — and the parts' answers become actions;
//! every line and record written comes from `records`. The rules live in those parts: this
//! file only says which part hears what, and in what order.

use std::net::SocketAddr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

use crate::api::ApiMsg;
use crate::config::Config;
use crate::config::GossipMode;
use crate::keys::Certified;
use crate::node::{Action, CloseReason, ConnId, Core, Event, Now, Purpose, Record, Remote, Timer};
use crate::peer::apps::{LocalApps, Verdict};
use crate::peer::gossip::{next_ttl, Gate, Generator, Item, MessageList, Via};
use crate::peer::history::{short_id, History, MAX_SYNC_IDS};
use crate::peer::liveness::Liveness;
use crate::peer::overlay::{Admit, Joined, LinkKind, Overlay, DUPLICATE_LINK, YOUNG_LINK};
use crate::peer::proof::{Checked, Proofs};
use crate::peer::records;
use crate::peer::rooted::{Place, Rooted, Tell, MAX_DIST};
use crate::peer::seeds::{SeedSessions, REGISTER_RETRY, SPARE_AFTER};
use crate::peer::tree::{Tree, MAX_IDS};
use crate::texts::{self, TEXT_DATA_TYPE};
use crate::wire::{Msg, Payload, PeerEntry, Role};

/// How often a peer that cannot register yet says what it waits for: calm enough not to fill
/// the screen, soon enough that nobody stares at a silent terminal.
const WAITING_NOTE: Duration = Duration::from_secs(5);
/// Dead-node reports held while no seed is reachable, at most.
const MAX_HELD_REPORTS: usize = 256;

/// A count that grew from `before` to `after` is worth a log line when it reaches 1, 1,024,
/// 1,048,576, …: a flood is said at once and then a thousand times less often each time.
fn worth_saying(before: u64, after: u64) -> bool {
    let mut mark = 1u64;
    while mark <= after {
        if mark > before {
            return true;
        }
        mark = mark.saturating_mul(1024);
        if mark == u64::MAX {
            break;
        }
    }
    false
}

/// Which choice of neighbours a list is for.
enum Pick<'a> {
    /// The join's, from the union of the seeds' lists.
    Initial(&'a [PeerEntry]),
    /// A repair's, from one seed's fresh list.
    Repair(Vec<PeerEntry>),
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

/// Its fields in a fixed order: what every gossip frame reads first (the message list, the
/// overlay's link table, the tree mode, `gossip.max_item`), in the first lines of the core, so
/// that a run handling many peers' frames in turn fetches a few adjacent cache lines of the
/// core per frame rather than lines scattered over its 2 KiB.
#[repr(C)]
pub struct PeerCore {
    ml: MessageList,
    overlay: Overlay,
    /// `gossip.mode: tree`: which neighbours are pushed items whole.
    tree: Option<Tree>,
    /// `config.gossip.max_item`.
    max_item: usize,
    /// The burst being handled (`Core::prepare`): for each event, the gossip item it carries,
    /// hashed ahead to ask for the memory its receipt touches; `burst_at` is the next event's
    /// index.
    burst: Vec<Option<Ahead>>,
    burst_at: usize,
    /// Of the burst's items, how many `prefetch` guessed to be first receipts so far, and how
    /// many of those were handled: the difference is how many first receipts come before the
    /// next one guessed.
    burst_fresh: u32,
    burst_fresh_done: u32,
    /// The id of the item of the event being handled, when hashed ahead (from `burst`).
    hashed: Option<[u8; 32]>,
    /// Gossip items dropped for a link's rate: over what a neighbour may send us, or over
    /// what we may forward to one (`stats` field `gossip_dropped`).
    dropped: u64,
    /// What this peer keeps for neighbours that missed it (catch-up).
    history: History,
    me: SocketAddr,
    phase: Phase,
    leaving: bool,
    /// A seed told us we were removed while alive; we registered again as a new incarnation
    /// and say `rejoined` once a seed confirms it.
    rejoining: bool,
    /// Shutting down with no seed connection up: the `Leave` goes to each seed dialed that
    /// answers, until a majority has taken it (or the runtime's wait ends).
    leave_held: bool,
    leave_taken: usize,
    /// Local applications on the API.
    apps: LocalApps,
    gate: Gate,
    generator: Generator,
    config: Config,
    rng: StdRng,
    /// Dead-node reports made while no seed was reachable, sent when one is.
    held_reports: std::collections::VecDeque<String>,
    seeds: SeedSessions,
    liveness: Liveness,
    api_clients: std::collections::BTreeSet<ConnId>,
    /// The certificate of this peer's latest registration (its incarnation and the seeds'
    /// signatures), from `Registered`, checked: proof of its age to peers further away.
    certificate: Option<(u64, Vec<(SocketAddr, crate::wire::Signature)>)>,
    /// The public key this node is known by (`set_key`).
    own_key: Option<crate::wire::PublicKey>,
    /// Signs this peer's numbers when it is the root of the rooted tree.
    signer: Option<std::sync::Arc<crate::keys::NodeKey>>,
    /// Rooted mode: what neighbours said of roots, checked.
    proofs: Proofs,
}

impl PeerCore {
    pub fn new(me: SocketAddr, config: Config, mut rng: StdRng) -> Self {
        let tree = matches!(config.gossip.mode, GossipMode::Tree | GossipMode::Rooted).then(|| {
            let rooted = config.gossip.mode == GossipMode::Rooted;
            Tree::new(config.gossip.graft_timeout, rng.gen(), rooted)
        });
        PeerCore {
            me,
            rng,
            phase: Phase::Joining,
            leaving: false,
            rejoining: false,
            held_reports: std::collections::VecDeque::new(),
            leave_held: false,
            leave_taken: 0,
            seeds: SeedSessions::new(
                config.seeds.clone(),
                config.majority(),
                config.seed_keys.clone(),
            ),
            overlay: Overlay::new(me, &config),
            liveness: Liveness::new(&config.liveness),
            ml: MessageList::new(config.gossip.message_list_capacity),
            tree,
            history: History::new(
                config.gossip.history,
                config.gossip.history_age,
                config.gossip.history_bytes,
            ),
            generator: Generator::new(config.gossip.count, config.gossip.interval),
            gate: Gate::default(),
            dropped: 0,
            max_item: config.gossip.max_item,
            burst: Vec::new(),
            burst_at: 0,
            burst_fresh: 0,
            burst_fresh_done: 0,
            hashed: None,
            apps: LocalApps::new(config.api.max_pending, config.api.validation_timeout),
            api_clients: Default::default(),
            certificate: None,
            own_key: None,
            signer: None,
            proofs: Proofs::default(),
            config,
        }
    }

    /// A cache hint (see [`crate::hint`]) for a gossip frame to come: the lines of this core
    /// that every gossip frame reads (the message list, the link table). The simulator calls
    /// it a few events before the frame, then [`PeerCore::prefetch_link`].
    pub fn prefetch_frame(&self) {
        crate::hint::prefetch_lines(&self.ml, std::mem::size_of::<MessageList>().div_ceil(64));
        self.overlay.prefetch_table();
        crate::hint::prefetch(&self.max_item);
    }

    /// A cache hint for a gossip frame to come on `conn` with the payload at address `payload`
    /// (`Arc::as_ptr`) of item `id`: the first lines of its link, and if the payload is not a
    /// recent one (likely a first receipt, to be recorded and forwarded) the message list's
    /// slot for `id` and what forwarding reads.
    pub fn prefetch_link(&self, conn: ConnId, payload: usize, id: &[u8; 32]) {
        self.overlay.prefetch_link(conn);
        if !self.ml.knows_payload(payload) {
            self.ml.prefetch_first_receipt(id);
            self.overlay.prefetch_forwarding();
            if let Some(t) = &self.tree {
                t.prefetch_fields();
            }
        }
    }

    /// The last cache hint for that frame, a couple of events before it: what the tree's
    /// lines fetched by `prefetch_link` point to.
    pub fn prefetch_tree(&self, payload: usize) {
        if let Some(t) = self
            .tree
            .as_ref()
            .filter(|_| !self.ml.knows_payload(payload))
        {
            t.prefetch_heap();
        }
    }

    /// This peer's key pair: its public key (`set_key`), and what signs its numbers as a
    /// root in rooted mode.
    pub fn set_signer(&mut self, key: std::sync::Arc<crate::keys::NodeKey>) {
        self.set_key(key.public());
        self.signer = Some(key);
    }

    /// The public key this node is known by: written (hex) in its `started` record, compared
    /// by the duplicate-link rule, and the key its registration certificate must name.
    pub fn set_key(&mut self, key: crate::wire::PublicKey) {
        self.own_key = Some(key);
        self.overlay.set_key(key);
    }

    /// How many neighbour links this peer has.
    pub fn neighbour_count(&self) -> usize {
        self.overlay.neighbour_count()
    }

    /// Generates one of the assignment's messages now, outside the `gossip.interval` schedule
    /// (the simulator decides who speaks when).
    pub fn publish(&mut self, now: Now, out: &mut Vec<Action>) {
        let n = self.generator.take_number();
        self.generate(n, now, out);
    }

    pub fn neighbours(&self) -> Vec<SocketAddr> {
        self.overlay.neighbours().map(|(a, _)| a).collect()
    }

    // ------------------------------------------------------------ joining and the seeds

    fn start(&mut self, now: Now, out: &mut Vec<Action>) {
        let key = self.own_key.map(hex::encode);
        out.push(records::started(&self.me, key.as_deref()).into());
        let wait = self.config.pow.timeout * 2;
        for addr in self.seeds.start(&mut self.rng, now.mono, wait) {
            out.push(Action::Dial {
                addr,
                purpose: Purpose::Register,
                key: None,
            });
        }
        out.push(Action::timer(wait, Timer::JoinDeadline));
        out.push(Record::new("joining").line(self.seeds.starting()).into());
        out.push(Action::timer(WAITING_NOTE, Timer::Waiting));
    }

    fn dial_seed(&mut self, addr: SocketAddr, out: &mut Vec<Action>) {
        self.seeds.dialing(addr);
        out.push(Action::Dial {
            addr,
            purpose: Purpose::Register,
            key: None,
        });
    }

    /// Once the seeds' lists are in: the peer list, and dials to the chosen neighbours.
    fn maybe_finish_join(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.phase != Phase::Joining {
            return;
        }
        let Some(union) = self.seeds.join_result(now.mono, &self.me) else {
            return;
        };
        out.push(records::peer_list(&union).into());
        self.phase = Phase::Connecting;
        for (addr, key) in self.pick_certified(Pick::Initial(&union), now, out) {
            out.push(Action::Dial {
                addr,
                purpose: Purpose::Neighbour,
                key: Some(key),
            });
        }
        self.maybe_start_gossip(now, out);
    }

    /// Neighbours chosen from a list, each entry's certificate checked once chosen: one that
    /// fails is left out (and said), and seeds whose keys we lack to check one are linked to,
    /// so their keys are known by the next list.
    fn pick_certified(
        &mut self,
        pick: Pick,
        now: Now,
        out: &mut Vec<Action>,
    ) -> Vec<(SocketAddr, crate::wire::PublicKey)> {
        let mut unknown = std::collections::BTreeSet::new();
        let mut forged = Vec::new();
        let seeds = &self.seeds;
        let mut check = |e: &PeerEntry| match seeds.certified(e) {
            Certified::Yes => true,
            Certified::KeysUnknown(signers) => {
                unknown.extend(signers);
                false
            }
            Certified::No => {
                forged.push(e.addr);
                false
            }
        };
        let chosen = match pick {
            Pick::Initial(union) => self.overlay.pick_initial(union, &mut self.rng, &mut check),
            Pick::Repair(list) => {
                self.overlay
                    .pick_repair(list, now.mono, &mut self.rng, &mut check)
            }
        };
        for addr in forged {
            log::warn!(
                "a seed listed {addr} without a certificate signed by a majority of the seeds: not dialed"
            );
        }
        for seed in unknown {
            if self.seeds.is_unused(&seed) {
                log::info!(
                    "peer list entries are signed by seed {seed}, whose key this peer has not seen: linking to it to learn it (a key in seeds.yaml saves this)"
                );
                self.dial_seed(seed, out);
            }
        }
        chosen
    }

    /// Reconnects lost seeds whose backoff is over and re-sends unconfirmed registrations.
    fn retry_seeds(&mut self, now: Now, out: &mut Vec<Action>) {
        let (redial, register) = self.seeds.due(now.mono);
        for conn in register {
            out.push(Action::send(conn, Msg::Register));
            out.push(Action::timer(REGISTER_RETRY, Timer::SeedRetry));
        }
        for addr in redial {
            self.dial_seed(addr, out);
        }
        if let Some(spare) = self.seeds.unconfirmed_spare(now.mono, &mut self.rng) {
            log::warn!(
                "a seed has left this peer's registration unconfirmed for {SPARE_AFTER:?}: registering with seed {spare} as well"
            );
            self.dial_seed(spare, out);
        }
    }

    fn tell_degree(&self, out: &mut Vec<Action>) {
        let to = self.seeds.conns();
        if !to.is_empty() {
            out.push(Action::Send {
                to,
                msg: Msg::Degree {
                    neighbours: self.overlay.neighbour_count().min(u16::MAX as usize) as u16,
                },
            });
        }
    }

    /// Reports a dead neighbour to every seed we are connected to; with none, the report waits
    /// (at most `MAX_HELD_REPORTS`) until a seed confirms our registration.
    fn report_dead(&mut self, dead: SocketAddr, why: &str, now: Now, out: &mut Vec<Action>) {
        let text = texts::dead_node(&dead, now.unix_ms, &self.me);
        let to = self.seeds.conns();
        if to.is_empty() {
            log::warn!("no seed reachable: the report about {dead} waits for one");
            if self.held_reports.len() >= MAX_HELD_REPORTS {
                self.held_reports.pop_front();
            }
            self.held_reports.push_back(text.clone());
        } else {
            out.push(Action::Send {
                to,
                msg: Msg::DeadNode { text: text.clone() },
            });
        }
        log::info!("reporting {dead} dead: {why}");
        out.push(records::dead_reported(&dead, &text, self.seeds.connected_addrs()).into());
    }

    // ------------------------------------------------------------ the overlay

    fn maybe_start_gossip(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.phase == Phase::Connecting && !self.overlay.dials_pending() {
            self.phase = Phase::Running;
            self.generator.start(now.mono);
            out.push(Action::timer(Duration::ZERO, Timer::Gossip));
            // Liveness rounds also top up a peer that has too few neighbours, even none.
            self.arm_liveness(now, out);
            if !self.config.gossip.sync_interval.is_zero() {
                // A newcomer asks for what it missed at once.
                out.push(Action::timer(Duration::ZERO, Timer::CatchUp));
            }
        }
    }

    fn arm_liveness(&mut self, now: Now, out: &mut Vec<Action>) {
        if let Some(wait) = self.liveness.arm(now.mono) {
            out.push(Action::timer(wait, Timer::LivenessRound));
        }
    }

    fn on_neighbour_link(
        &mut self,
        conn: ConnId,
        (addr, key): (SocketAddr, crate::wire::PublicKey),
        dialed: bool,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        match self.overlay.join(conn, addr, &key, dialed) {
            Joined::New => {
                if let Some(t) = &mut self.tree {
                    t.reset(&addr);
                }
                self.rooted_up(addr, now, out);
                self.liveness.watch(addr);
                out.push(records::neighbour_up(&addr).into());
                self.arm_liveness(now, out);
                self.tell_degree(out);
            }
            Joined::Duplicate {
                loser,
                kept,
                replaced,
                resend,
            } => {
                // The other end may not have seen the link we keep yet: tell it why this one
                // closes, so it does not take the close for a crash.
                out.push(Action::send(
                    loser,
                    Msg::Reject {
                        reason: DUPLICATE_LINK.into(),
                    },
                ));
                out.push(Action::Close { conn: loser });
                if replaced {
                    self.liveness.watch(addr);
                }
                // Our place in a rooted tree may have gone out on the losing link.
                if self.tree.as_ref().is_some_and(|t| t.rooted().is_some()) {
                    self.announce_place(Some(addr), now, out);
                }
                // What went out on the losing link may never have been read: send it again on
                // the link kept (the remote ignores what it already has), as far as the
                // history still holds it.
                let mut again = self.history.offered(&resend.ids);
                again.extend(resend.items);
                for item in again {
                    self.overlay.remember(&[kept], &item);
                    out.push(Action::Forward {
                        to: vec![kept],
                        msg: item.msg(),
                        id: item.id,
                    });
                }
            }
        }
        self.maybe_start_gossip(now, out);
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
        if self.overlay.is_neighbour_link(conn, &addr) {
            self.drop_neighbour(addr, reason, true, now, out);
        } else {
            self.overlay.remove_link(conn);
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
        let Some(conn) = self.overlay.drop_neighbour(&addr, now.mono) else {
            return;
        };
        self.liveness.unwatch(&addr);
        if let Some(t) = &mut self.tree {
            t.reset(&addr);
        }
        self.proofs.forget(&addr);
        if self
            .tree
            .as_mut()
            .is_some_and(|t| t.rooted_down(&addr, now.mono))
        {
            self.announce_place(None, now, out);
        }
        self.send_backfills(out);
        if close {
            out.push(Action::Close { conn });
        }
        out.push(records::neighbour_down(&addr, reason).into());
        self.tell_degree(out);
        self.maybe_repair(out);
    }

    /// Asks a seed for fresh candidates when below the neighbour target (after a loss, and at
    /// every liveness round).
    fn maybe_repair(&mut self, out: &mut Vec<Action>) {
        if self.leaving || self.phase != Phase::Running || !self.overlay.wants_repair() {
            return;
        }
        if let Some(&conn) = self.seeds.conns().first() {
            self.overlay.set_repairing(true);
            out.push(Action::send(conn, Msg::GetPeers));
        }
    }

    fn repair_from(&mut self, list: Vec<PeerEntry>, now: Now, out: &mut Vec<Action>) {
        for (addr, key) in self.pick_certified(Pick::Repair(list), now, out) {
            log::info!("repair: connecting to {addr}");
            out.push(Action::Dial {
                addr,
                purpose: Purpose::Neighbour,
                key: Some(key),
            });
        }
    }

    // ------------------------------------------------------------ gossip

    fn generate(&mut self, n: u32, now: Now, out: &mut Vec<Action>) {
        let text = texts::gossip_text(now.unix_ms, &self.me, n);
        let item = Item::new(TEXT_DATA_TYPE, 0, 0, text.as_bytes().into());
        self.ml.first_receipt(item.id, None);
        out.push(records::gossip_sent(&item.id, &text).into());
        self.forward(item, None, Via::Gossip, now, out);
    }

    /// Sends an item to every neighbour except `from` and records where it went. `via`: how it
    /// came from `from` (see `Via::Detour`).
    fn forward(
        &mut self,
        item: Item,
        from: Option<SocketAddr>,
        via: Via,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        self.history.offer(&item, now.mono);
        if let Some(t) = &mut self.tree {
            // Ids to the lazy neighbours; the sender is eager from now on.
            t.first_receipt(
                item.id,
                from,
                self.overlay.neighbours().map(|(a, _)| a),
                now.mono,
            );
            if let Some(wait) = t.next_wake(now.mono) {
                out.push(Action::timer(wait, Timer::Tree));
            }
        }
        let tree = &self.tree;
        let eager = |a: &SocketAddr| tree.as_ref().is_none_or(|t| t.is_eager(a));
        let (to, neighbours, held) = self.overlay.targets(from, eager, now.mono);
        let neighbours = neighbours.clone();
        let up = from.and_then(|f| self.detour_to(f, via));
        self.push(&item, (to, neighbours, held), up, out);
    }

    /// Rooted: the parent's link, if an item that came from `from` reached this peer around
    /// the parent and goes up to it as a `Detour`: grafted from a neighbour off the tree (or
    /// a late push from one that left it), or a `Detour` from a child. What a child pushes up
    /// as it came (from below) goes as `Gossip`.
    fn detour_to(&self, from: SocketAddr, via: Via) -> Option<ConnId> {
        let rooted = self.tree.as_ref()?.rooted()?;
        let parent = rooted.parent().filter(|p| *p != from)?;
        let from_child = rooted.backbone(&from);
        if from_child && via != Via::Detour {
            return None;
        }
        self.overlay.conn_of(&parent)
    }

    /// Sends `item` whole on the links `targets` chose (`Overlay::targets`: the connections,
    /// the neighbours, how many were held back for their rate).
    fn push(
        &mut self,
        item: &Item,
        (mut to, neighbours, held): (Vec<ConnId>, std::sync::Arc<[SocketAddr]>, u64),
        up: Option<ConnId>,
        out: &mut Vec<Action>,
    ) {
        if held > 0 {
            let before = self.dropped;
            self.dropped += held;
            // Counted always, said now and then: under a flood this runs per item.
            if worth_saying(before, self.dropped) {
                log::info!(
                    "items held back from neighbours over their gossip rate: {} so far",
                    self.dropped
                );
            }
        }
        if to.is_empty() {
            return;
        }
        self.ml.record_sent(&item.id, &neighbours);
        self.overlay.remember(&to, item);
        if let Some(at) = up.and_then(|u| to.iter().position(|c| *c == u)) {
            out.push(Action::Forward {
                to: vec![to.remove(at)],
                msg: item.detour(),
                id: item.id,
            });
            if to.is_empty() {
                return;
            }
        }
        out.push(Action::Forward {
            to,
            msg: item.msg(),
            id: item.id,
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_gossip(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        via: Via,
        data_type: u16,
        ttl: u8,
        nonce: u64,
        payload: Payload,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if payload.len() > self.max_item {
            let reason = format!(
                "gossip item of {} bytes, over gossip.max_item ({})",
                payload.len(),
                self.config.gossip.max_item
            );
            return self.reject(conn, from, reason, now, out);
        }
        let id = match self.hashed.take() {
            Some(id) => {
                debug_assert_eq!(id, texts::message_id(data_type, nonce, &payload));
                id
            }
            None => self
                .ml
                .known_id(data_type, nonce, &payload)
                .unwrap_or_else(|| texts::message_id(data_type, nonce, &payload)),
        };
        // The rate limit counts new items: a neighbour forwards each item at most once, so a
        // receiver that fell behind and reads a backlog at once mostly reads repeats, which
        // have their own, looser bound. Checked before the item is recorded, so an item
        // refused here can still arrive from an honest neighbour.
        let new = !self.ml.contains(&id);
        let Some(link) = self.overlay.link_mut(conn) else {
            return;
        };
        match link.admit_gossip(new, now.mono) {
            Admit::Take => {}
            Admit::Drop => {
                // Dropped at the first honest hop, counted; the item can still come from an
                // honest neighbour (it was not recorded).
                link.dropped += 1;
                self.dropped += 1;
                if worth_saying(link.dropped - 1, link.dropped) {
                    log::info!(
                        "dropping new gossip items from {from} over the rate limit ({} so far)",
                        link.dropped
                    );
                }
                return;
            }
            Admit::Cut => {
                let what = if new {
                    "new gossip items"
                } else {
                    "repeated gossip items"
                };
                let reason = format!("{what} faster than the rate limit");
                return self.reject(conn, from, reason, now, out);
            }
        }
        if !new {
            self.ml.count_repeat();
            // The sender has it: if our copy to it is still held in the batch window, it need
            // not go (the flooding rule is unchanged: it only saves a duplicate).
            out.push(Action::Withdraw { conn, id });
            // Tree mode: a redundant path; the sender sends ids only from now on.
            if self.tree.as_mut().is_some_and(|t| t.repeat(from, now.mono)) {
                out.push(Action::send(conn, Msg::Prune));
            }
            return;
        }
        let item = Item {
            id,
            data_type,
            ttl,
            nonce,
            payload,
        };
        self.first_receipt(item, from, via, now, out);
    }

    /// An item received for the first time, pushed by gossip or pulled by catch-up: recorded,
    /// delivered, and passed on (gossip: forwarded; catch-up: offered to the neighbours' own
    /// catch-up rounds).
    fn first_receipt(
        &mut self,
        item: Item,
        from: SocketAddr,
        via: Via,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let (id, data_type) = (item.id, item.data_type);
        self.ml.first_receipt(id, Some(from));
        self.ml
            .note_payload(&id, data_type, item.nonce, &item.payload);
        self.history.know(&item, now.mono);
        if let Some(t) = &mut self.tree {
            t.arrived(&id);
            if via != Via::Sync && t.received(from, via == Via::Detour, now.mono) {
                // It left its parent for delivering too little: everyone hears the new place.
                self.parent_left(out);
                self.announce_place(None, now, out);
                self.send_backfills(out);
            }
        }
        out.push(records::gossip_received(&id, data_type, &item.payload, &from, via).into());
        let onward = next_ttl(item.ttl);
        if data_type == TEXT_DATA_TYPE {
            // The assignment's messages always spread; local subscribers just hear of them.
            self.notify_local(&item, None, false, now, out);
            if let Some(ttl) = onward {
                self.pass_on(Item { ttl, ..item }, from, via, now, out);
            }
            return;
        }
        // Application items spread only once every local subscriber has validated them.
        if !self.notify_local(&item, None, true, now, out) {
            log::debug!(
                "item {} of type {data_type} stops here: no local subscriber",
                hex::encode(id)
            );
            return;
        }
        if let Some(ttl) = onward {
            self.gate.hold(Item { ttl, ..item }, from, via);
        }
    }

    fn pass_on(&mut self, item: Item, from: SocketAddr, via: Via, now: Now, out: &mut Vec<Action>) {
        match via {
            Via::Gossip | Via::Detour => self.forward(item, Some(from), via, now, out),
            Via::Sync => {
                self.history.offer(&item, now.mono);
                let Some(t) = self.tree.as_mut().filter(|t| t.rooted().is_some()) else {
                    return;
                };
                // Rooted: the tree never pushed it here, so it never went on to the children
                // either (a healed partition; under load, a push still on its way, which
                // will come as a repeat and stop here): pushed to them now, and announced to
                // the parent (see `Tree::caught_up`).
                t.caught_up(item.id, from, now.mono);
                if let Some(wait) = t.next_wake(now.mono) {
                    out.push(Action::timer(wait, Timer::Tree));
                }
                let tree = &self.tree;
                let child = |a: &SocketAddr| tree.as_ref().is_some_and(|t| t.is_child(a));
                let (to, neighbours, held) = self.overlay.targets(Some(from), child, now.mono);
                let neighbours = neighbours.clone();
                self.push(&item, (to, neighbours, held), None, out);
            }
        }
    }

    // ------------------------------------------------------------ tree mode

    /// `IHave`, `Graft`, `Prune` from a neighbour (see `tree`). A flooding peer ignores the
    /// first and last (it pushes everything anyway) and answers grafts.
    fn on_tree(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        msg: Msg,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        match msg {
            Msg::IHave { ids } | Msg::Graft { ids } if ids.len() > MAX_IDS => {
                let reason = format!("{} ids in one frame, over {MAX_IDS}", ids.len());
                self.reject(conn, from, reason, now, out)
            }
            Msg::IHave { ids } => {
                if let Some(t) = &mut self.tree {
                    let ml = &self.ml;
                    // Each id is looked up in the message list, a cache miss each in a busy
                    // peer (the announcements come half a second after the items): the slot
                    // of the id a few places on is fetched while this one is looked up.
                    const AHEAD: usize = 8;
                    ids.iter().take(AHEAD).for_each(|id| ml.prefetch_lookup(id));
                    let next = std::cell::Cell::new(AHEAD);
                    let known = |id: &[u8; 32]| {
                        if let Some(later) = ids.get(next.get()) {
                            ml.prefetch_lookup(later);
                        }
                        next.set(next.get() + 1);
                        ml.contains(id)
                    };
                    t.ihave(from, &ids, known, now.mono);
                    if let Some(wait) = t.next_wake(now.mono) {
                        out.push(Action::timer(wait, Timer::Tree));
                    }
                }
            }
            Msg::Graft { ids } => {
                if let Some(t) = &mut self.tree {
                    t.graft(from);
                }
                // Bounded like catch-up: a neighbour cannot have us send more than
                // `gossip.sync_bytes` a round by grafting.
                let interval = self.config.gossip.sync_interval.max(Duration::from_secs(1));
                let wanted: Vec<u64> = ids.iter().map(short_id).collect();
                // An answer, not a push: it does not count in the link's rate (`outbox`).
                for item in self.serve_from_history(conn, from, &wanted, interval, now) {
                    out.push(Action::send(conn, item.msg()));
                }
            }
            Msg::Prune => {
                if let Some(t) = &mut self.tree {
                    t.prune(from);
                }
            }
            Msg::TreeRoot {
                number,
                dist,
                value,
                parent,
                want,
                released,
            } => {
                let Some(t) = &self.tree else {
                    return;
                };
                let root = (number.incarnation, number.root);
                // This peer's own name: its current one only (an older incarnation's, which a
                // neighbour may still hold for a moment, is no route).
                let me = t.rooted().map(Rooted::me);
                let checked = if number.root == self.me && me != Some(root) {
                    Checked::Unproven
                } else if me.is_some_and(|me| root > me) {
                    // A root younger than this peer itself, which would rather be its own
                    // root than hang from it: that place can never be chosen, so it is not
                    // worth the checks (it is no route either way). A newcomer's place as its
                    // own root, before it hears of the tree, is such a one to every older
                    // neighbour: each would check a certificate and a number for nothing.
                    Checked::Unproven
                } else {
                    let seeds = &self.seeds;
                    self.proofs.check(from, &number, dist, &value, |n| {
                        seeds.certifies(&n.member(), &n.certificate)
                    })
                };
                if checked == Checked::False {
                    // A lie (an honest peer passes on only what checked): cut off, as for a
                    // malformed frame.
                    let reason = format!(
                        "TreeRoot: the proof of root {} (number {}, distance {dist}) does not check",
                        number.root, number.seq
                    );
                    return self.reject(conn, from, reason, now, out);
                }
                let checked = checked == Checked::Holds;
                let Some(t) = &mut self.tree else {
                    return;
                };
                let place = if checked {
                    Place {
                        root,
                        seq: number.seq,
                        dist,
                    }
                } else {
                    // Not proven here (signed by seeds whose keys this peer has not seen yet,
                    // naming this peer under an older incarnation) or not worth checking (a
                    // root younger than this peer): no route (nor a number) from there;
                    // whether it names this peer parent still counts.
                    log::debug!(
                        "{from}'s place under root {} cannot be checked here: taken as no route",
                        number.root
                    );
                    Place {
                        root,
                        seq: 0,
                        dist: MAX_DIST,
                    }
                };
                let want = want && checked;
                let was_child = t.is_child(&from);
                let was_near = t.rooted().is_some_and(|r| r.as_near(&from));
                let tell = t.heard_place(from, place, parent, want, now.mono);
                if released {
                    t.released(from, now.mono);
                }
                if let Some(wait) = t.next_wake(now.mono) {
                    out.push(Action::timer(wait, Timer::Tree));
                }
                // A child that left: told, after every push queued for it, that no more are
                // coming (it grafts what its new parent announced without waiting for them).
                let left = was_child && !t.is_child(&from);
                let parent = t.rooted().and_then(|r| r.parent());
                // A neighbour that was as near the root as this peer heard no refreshes from
                // here (`Rooted::number_only`); now that it is deeper (or lost its route) it
                // is told this peer's place at once, so a newer number than it has may be
                // among its routes without waiting for the next refresh.
                let deeper = was_near && t.rooted().is_some_and(|r| !r.as_near(&from));
                if left {
                    out.extend(self.place_frame(from, conn, true));
                }
                match tell {
                    Tell::All => self.announce_place(None, now, out),
                    Tell::Parent | Tell::Nobody => {
                        if tell == Tell::Parent && parent.is_some() {
                            self.announce_place(parent, now, out);
                        }
                        if deeper && parent != Some(from) {
                            self.announce_place(Some(from), now, out);
                        }
                    }
                }
                // After the place: a new parent takes the ids for its child's once it knows.
                self.send_backfills(out);
            }
            _ => {}
        }
    }

    /// Rooted mode: the record of a parent just left for what it delivered, if one was.
    fn parent_left(&mut self, out: &mut Vec<Action>) {
        let left = self
            .tree
            .as_mut()
            .and_then(|t| t.rooted_mut())
            .and_then(Rooted::take_left);
        if let Some((parent, left_for, first, counted)) = left {
            out.push(records::parent_left(&parent, left_for.as_secs(), first, counted).into());
        }
    }

    /// Rooted shape: the ids owed to neighbours that joined the backbone (`Tree::backfill`).
    fn send_backfills(&mut self, out: &mut Vec<Action>) {
        let Some(t) = &mut self.tree else {
            return;
        };
        for (to, ids) in t.take_backfills() {
            if let Some(conn) = self.overlay.conn_of(&to) {
                for chunk in ids.chunks(MAX_IDS) {
                    out.push(Action::send(
                        conn,
                        Msg::IHave {
                            ids: chunk.to_vec(),
                        },
                    ));
                }
            }
        }
    }

    /// Rooted shape: a neighbour link came up (the first starts this peer's place); the new
    /// neighbour is told the place.
    fn rooted_up(&mut self, addr: SocketAddr, now: Now, out: &mut Vec<Action>) {
        let Some(t) = &mut self.tree else {
            return;
        };
        // Named by its certified incarnation; one not registered yet (no certificate) is no
        // root to anyone else, and the youngest to itself.
        let since = self.certificate.as_ref().map_or(u64::MAX, |c| c.0);
        t.rooted_up(self.me, since, now.mono);
        t.link_up(addr);
        if t.rooted().is_none() {
            return;
        }
        if let Some(wait) = t.next_wake(now.mono) {
            out.push(Action::timer(wait, Timer::Tree));
        }
        self.announce_place(Some(addr), now, out);
    }

    /// `TreeRoot` with this peer's place, for neighbour `to` on `conn`: the root's number as
    /// the root signed it and the chain value for this peer's distance (`proof`). None if
    /// this peer cannot prove it: it is the root but not registered yet or has no key to sign
    /// with, or it no longer knows its root's number (a place is taken only from a number that
    /// checked, and the last few are kept).
    fn place_frame(&mut self, to: SocketAddr, conn: ConnId, released: bool) -> Option<Action> {
        let r = self.tree.as_ref()?.rooted()?;
        let proofs = &mut self.proofs;
        let (place, parent, want) = r.announcement(&to);
        let (number, value) = if r.is_root() {
            let certificate = &self.certificate.as_ref()?.1;
            proofs.own_number(place.root, self.signer.as_deref()?, certificate, place.seq)
        } else {
            // Unreachable, this peer may tell a newer number than the one it passed on last.
            let number = proofs
                .number(place.root, place.seq)
                .or_else(|| proofs.newest(place.root))?;
            let value = match r.parent() {
                Some(p) if place.dist < MAX_DIST => proofs.value_below(&p)?,
                _ => [0; 32],
            };
            (number, value)
        };
        Some(Action::send(
            conn,
            Msg::TreeRoot {
                number,
                dist: place.dist,
                value,
                parent,
                want,
                released,
            },
        ))
    }

    /// Tells one neighbour (or all) this peer's place in the rooted tree; a neighbour told
    /// too recently is told the latest place when its gap has passed (`Rooted::may_tell`).
    fn announce_place(&mut self, only: Option<SocketAddr>, now: Now, out: &mut Vec<Action>) {
        let Some(t) = self.tree.as_mut() else {
            return;
        };
        let Some(r) = t.rooted_mut() else {
            return;
        };
        let number_only = only.is_none() && r.number_only();
        let told: Vec<(SocketAddr, ConnId)> = self
            .overlay
            .neighbours()
            .filter(|&(n, _)| {
                only.is_none_or(|o| o == n)
                    && !(number_only && (r.parent() == Some(n) || r.as_near(&n)))
                    && r.may_tell(n, now.mono)
            })
            .collect();
        let wake = t.next_wake(now.mono);
        for (n, conn) in told {
            out.extend(self.place_frame(n, conn, false));
        }
        if let Some(wait) = wake {
            out.push(Action::timer(wait, Timer::Tree));
        }
    }

    /// The tree's wake-up: announcements due to lazy neighbours, grafts of missing items.
    fn tree_due(&mut self, now: Now, out: &mut Vec<Action>) {
        let Some(t) = &mut self.tree else {
            return;
        };
        let due = t.due(now.mono);
        if let Some(wait) = t.next_wake(now.mono) {
            out.push(Action::timer(wait, Timer::Tree));
        }
        for n in due.tell {
            if let Some(conn) = self.overlay.conn_of(&n) {
                out.extend(self.place_frame(n, conn, false));
            }
        }
        if due.place_changed {
            self.parent_left(out);
            self.announce_place(None, now, out);
        }
        for (to, ids) in due.ihave {
            if let Some(conn) = self.overlay.conn_of(&to) {
                out.push(Action::send(conn, Msg::IHave { ids }));
            }
        }
        for (to, ids) in due.graft {
            if let Some(conn) = self.overlay.conn_of(&to) {
                log::debug!("grafting {} items from {to}", ids.len());
                out.push(Action::send(conn, Msg::Graft { ids }));
            }
        }
    }

    // ------------------------------------------------------------ catch-up

    /// A round: our digest to one neighbour drawn at random.
    fn catch_up_round(&mut self, now: Now, out: &mut Vec<Action>) {
        self.history.expire(now.mono);
        self.history.settle(now.mono);
        let neighbours: Vec<ConnId> = self.overlay.neighbours().map(|(_, c)| c).collect();
        if !neighbours.is_empty() {
            let conn = neighbours[self.rng.gen_range(0..neighbours.len())];
            out.push(Action::send(
                conn,
                Msg::SyncDigest {
                    buckets: self.history.digest(),
                },
            ));
        }
        out.push(Action::timer(
            self.config.gossip.sync_interval,
            Timer::CatchUp,
        ));
    }

    /// The items of `wanted` (short ids) this peer offers, oldest first, within what the link
    /// may still be sent this `interval` (`gossip.sync_bytes`): catch-up wants and tree grafts
    /// share the budget.
    fn serve_from_history(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        wanted: &[u64],
        interval: Duration,
        now: Now,
    ) -> Vec<Item> {
        let per_window = self.config.gossip.sync_bytes;
        let Some(link) = self.overlay.link_mut(conn) else {
            return vec![];
        };
        let budget = link.catch_up.budget(now.mono, interval, per_window);
        if budget == 0 {
            log::debug!("request for old items from {from} over this interval's bytes: not served");
            return vec![];
        }
        let items = self.history.serve(wanted, budget);
        link.catch_up.served += items.iter().map(|i| i.payload.len()).sum::<usize>();
        items
    }

    /// Catch-up frames from a neighbour (steps 2 to 4 of `history`).
    fn on_catch_up(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        msg: Msg,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let interval = self.config.gossip.sync_interval;
        if interval.is_zero() {
            // Catch-up is off here: nothing is answered, nothing was asked for.
            if let Msg::SyncItem { .. } = msg {
                let reason = "catch-up item, but catch-up is off here".to_string();
                return self.reject(conn, from, reason, now, out);
            }
            return;
        }
        match msg {
            Msg::SyncDigest { buckets } => {
                let start = self.rng.gen_range(0..crate::peer::history::BUCKETS);
                let Some(link) = self.overlay.link_mut(conn) else {
                    return;
                };
                if !link.catch_up.may_answer(now.mono, interval) {
                    log::debug!(
                        "catch-up digest from {from} within half an interval: not answered"
                    );
                    return;
                }
                self.history.settle(now.mono);
                let ids = self.history.answer(&buckets, start);
                if !ids.is_empty() {
                    out.push(Action::send(conn, Msg::SyncIds { ids }));
                }
            }
            Msg::SyncIds { ids } | Msg::SyncWant { ids } if ids.len() > MAX_SYNC_IDS => {
                let reason = format!("catch-up list of {} ids, over {MAX_SYNC_IDS}", ids.len());
                self.reject(conn, from, reason, now, out)
            }
            Msg::SyncIds { ids } => {
                let lacking = self.history.lacking(&ids);
                let Some(link) = self.overlay.link_mut(conn) else {
                    return;
                };
                let ask = link.catch_up.ask(lacking, now.mono, interval);
                if !ask.is_empty() {
                    out.push(Action::send(conn, Msg::SyncWant { ids: ask }));
                }
            }
            Msg::SyncWant { ids } => {
                for item in self.serve_from_history(conn, from, &ids, interval, now) {
                    out.push(Action::send(
                        conn,
                        Msg::SyncItem {
                            data_type: item.data_type,
                            ttl: item.ttl,
                            nonce: item.nonce,
                            payload: item.payload,
                        },
                    ));
                }
            }
            Msg::SyncItem {
                data_type,
                ttl,
                nonce,
                payload,
            } => self.on_sync_item(conn, from, data_type, ttl, nonce, payload, now, out),
            _ => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_sync_item(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        data_type: u16,
        ttl: u8,
        nonce: u64,
        payload: Payload,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if payload.len() > self.max_item {
            let reason = format!(
                "catch-up item of {} bytes, over gossip.max_item ({})",
                payload.len(),
                self.config.gossip.max_item
            );
            return self.reject(conn, from, reason, now, out);
        }
        let id = texts::message_id(data_type, nonce, &payload);
        let new = !self.ml.contains(&id);
        let Some(link) = self.overlay.link_mut(conn) else {
            return;
        };
        if link.catch_up.wanted.remove(&short_id(&id)).is_none() {
            // Not asked for (or asked for long ago): metered like gossip, so catch-up is no way
            // around the rate limit.
            match link.admit_gossip(new, now.mono) {
                Admit::Take => {}
                Admit::Drop => {
                    self.dropped += 1;
                    return;
                }
                Admit::Cut => {
                    let reason = "catch-up items not asked for, faster than the rate limit";
                    return self.reject(conn, from, reason.to_string(), now, out);
                }
            }
        }
        if !new {
            self.ml.count_repeat();
            return;
        }
        let item = Item {
            id,
            data_type,
            ttl,
            nonce,
            payload,
        };
        self.first_receipt(item, from, Via::Sync, now, out);
    }

    /// Notifies local subscribers; true if anyone was notified.
    fn notify_local(
        &mut self,
        item: &Item,
        exclude: Option<ConnId>,
        gate: bool,
        now: Now,
        out: &mut Vec<Action>,
    ) -> bool {
        let notified = self.apps.notify(
            item.id,
            item.data_type,
            &item.payload,
            exclude,
            gate,
            now.mono,
        );
        for client in notified.skipped {
            log::info!(
                "api client {client} not notified of item {}: it has {} notifications unanswered",
                hex::encode(item.id),
                self.config.api.max_pending
            );
        }
        let any = !notified.notes.is_empty();
        if any {
            out.push(Action::timer(self.apps.timeout(), Timer::Validations));
            if gate {
                log::info!(
                    "item {} of type {} held back until local subscribers validate it",
                    hex::encode(item.id),
                    item.data_type
                );
            }
        }
        for (to, msg) in notified.notes {
            out.push(Action::SendApi { to, msg });
        }
        any
    }

    fn apply_verdicts(&mut self, verdicts: Vec<Verdict>, now: Now, out: &mut Vec<Action>) {
        for v in verdicts {
            match v {
                Verdict::Forward(id) => {
                    if let Some((item, from, via)) = self.gate.release(&id) {
                        self.pass_on(item, from, via, now, out);
                    }
                }
                Verdict::Drop(id, why) => {
                    self.gate.release(&id);
                    log::info!("item {} not forwarded: {why}", hex::encode(id));
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
                let max = self.config.gossip.max_item;
                if data.len() > max {
                    let why = format!(
                        "ANNOUNCE of {} bytes, over gossip.max_item ({max})",
                        data.len()
                    );
                    return self.reject_client(conn, why, now, out);
                }
                // A nonce of its own: the same data announced twice is two items.
                let nonce = self.rng.gen_range(1..=u64::MAX);
                let item = Item::new(data_type, ttl, nonce, data.into());
                if !self.ml.first_receipt(item.id, None) {
                    return;
                }
                out.push(records::announced(&item.id, data_type, item.payload.len()).into());
                self.notify_local(&item, Some(conn), false, now, out);
                self.forward(item, None, Via::Gossip, now, out);
            }
            ApiMsg::Notify { data_type } => {
                self.apps.subscribe(conn, data_type);
                // A newcomer hears the recent items of its application's type, up to half of
                // what it may leave unanswered (the assignment's own messages only as they
                // come: they are not a conversation).
                let recent = if data_type == TEXT_DATA_TYPE {
                    Vec::new()
                } else {
                    self.history
                        .recent_of_type(data_type, self.config.api.max_pending / 2)
                };
                for item in recent {
                    let notified = self.apps.notify_one(
                        conn,
                        item.id,
                        item.data_type,
                        &item.payload,
                        now.mono,
                    );
                    if !notified.notes.is_empty() {
                        out.push(Action::timer(self.apps.timeout(), Timer::Validations));
                    }
                    for (to, msg) in notified.notes {
                        out.push(Action::SendApi { to, msg });
                    }
                }
            }
            ApiMsg::Validation { message_id, valid } => {
                match self.apps.validation(conn, message_id, valid) {
                    Ok(Some(v)) => self.apply_verdicts(vec![v], now, out),
                    Ok(None) => {}
                    Err(_) => self.reject_client(
                        conn,
                        format!("VALIDATION for unknown message id {message_id}"),
                        now,
                        out,
                    ),
                }
            }
            ApiMsg::Notification { .. } => self.reject_client(
                conn,
                "a client may not send GOSSIP NOTIFICATION".into(),
                now,
                out,
            ),
        }
    }

    fn reject_client(&mut self, conn: ConnId, reason: String, now: Now, out: &mut Vec<Action>) {
        out.push(Record::rejected(format!("api client {conn}"), reason).into());
        out.push(Action::Close { conn });
        self.api_clients.remove(&conn);
        let verdicts = self.apps.disconnect(conn);
        self.apply_verdicts(verdicts, now, out);
    }

    // ------------------------------------------------------------ liveness

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

    fn liveness_round(&mut self, now: Now, out: &mut Vec<Action>) {
        let Some(asked) = self.liveness.round(now.mono, now.unix_ms) else {
            return;
        };
        out.push(Action::timer(
            self.liveness.interval(),
            Timer::LivenessRound,
        ));
        let requests: Vec<ConnId> = self
            .overlay
            .neighbours()
            .filter(|(a, _)| asked.binary_search(a).is_ok())
            .map(|(_, c)| c)
            .collect();
        if !requests.is_empty() {
            out.push(Action::timer(
                self.liveness.reply_timeout(),
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

    /// At a reply deadline: a neighbour whose last `misses` requests went unanswered is
    /// reported and dropped.
    fn liveness_deadlines(&mut self, now: Now, out: &mut Vec<Action>) {
        for (addr, misses) in self.liveness.dead(now.mono) {
            let why = format!("{misses} liveness requests unanswered");
            self.report_dead(addr, &why, now, out);
            if let Some(conn) = self.overlay.conn_of(&addr) {
                // Should it be alive after all (frozen, overloaded), it reads why we closed
                // when it wakes, and does not take our close for our crash.
                let reason = format!("{why}: reported dead");
                out.push(Action::send(conn, Msg::Reject { reason }));
            }
            self.drop_neighbour(addr, &why, true, now, out);
        }
    }

    // ------------------------------------------------------------ frames and links

    fn reject(
        &mut self,
        conn: ConnId,
        addr: SocketAddr,
        reason: String,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        out.push(Record::rejected(addr, &reason).into());
        match self.overlay.link(conn).map(|l| l.kind) {
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
        let Some(link) = self.overlay.link_mut(conn) else {
            return;
        };
        let (addr, kind) = (link.addr, link.kind);
        link.heard = true;
        // Gossip is metered in `on_gossip`, once it is known whether the item is new; items of
        // catch-up were asked for (or are metered as gossip).
        let gossip = matches!(
            msg,
            Msg::Gossip { .. } | Msg::SyncItem { .. } | Msg::Detour { .. }
        );
        // How a pushed item came (see `Via::Detour`).
        let via = if matches!(msg, Msg::Detour { .. }) {
            Via::Detour
        } else {
            Via::Gossip
        };
        if !gossip && !link.allow_control(now.mono) {
            let reason = "control frames faster than the rate limit".to_string();
            return self.reject(conn, addr, reason, now, out);
        }
        if let Some(t) = &mut self.tree {
            t.heard_from(&addr, now.mono);
        }
        match (kind, msg) {
            (
                LinkKind::Neighbour,
                Msg::Gossip {
                    data_type,
                    ttl,
                    nonce,
                    payload,
                }
                | Msg::Detour {
                    data_type,
                    ttl,
                    nonce,
                    payload,
                },
            ) => self.on_gossip(conn, addr, via, data_type, ttl, nonce, payload, now, out),
            (_, Msg::LivenessRequest { text }) => {
                if !self.answer_liveness(conn, addr, &text, out) {
                    let reason = format!("malformed liveness request {text:?}");
                    self.reject(conn, addr, reason, now, out);
                }
            }
            (LinkKind::Neighbour, Msg::LivenessReply { text }) => {
                let matched =
                    texts::parse_liveness_reply(&text).is_some_and(|(ts, sender, replier)| {
                        sender == self.me && replier == addr && self.liveness.on_reply(&addr, ts)
                    });
                if !matched {
                    log::debug!("liveness reply from {addr} does not match a request: {text:?}");
                }
            }
            (
                LinkKind::Neighbour,
                msg @ (Msg::SyncDigest { .. }
                | Msg::SyncIds { .. }
                | Msg::SyncWant { .. }
                | Msg::SyncItem { .. }),
            ) => self.on_catch_up(conn, addr, msg, now, out),
            (
                LinkKind::Neighbour,
                msg @ (Msg::IHave { .. } | Msg::Graft { .. } | Msg::Prune | Msg::TreeRoot { .. }),
            ) => self.on_tree(conn, addr, msg, now, out),
            (LinkKind::Neighbour, Msg::Leave) => self.drop_link(conn, addr, "left", now, out),
            (LinkKind::Neighbour, Msg::Reject { reason }) => {
                // The remote closes this link on purpose (most often the losing one of two
                // simultaneous links): not a crash, so no dead report.
                let why = format!("closed by the remote: {}", records::remote_reason(&reason));
                self.drop_link(conn, addr, &why, now, out);
            }
            (LinkKind::Seed, Msg::Reject { reason }) => {
                // The seed refused us (most often: our address is still registered to another
                // key). Said once, then retried with backoff like any lost seed link.
                log::warn!(
                    "seed {addr} refused us: {} (retrying with backoff)",
                    records::remote_reason(&reason)
                );
                self.on_link_gone(conn, now, out);
                out.push(Action::Close { conn });
            }
            (LinkKind::Seed, Msg::Removed { incarnation }) => {
                self.on_removed(addr, incarnation, now, out)
            }
            (
                LinkKind::Seed,
                Msg::Registered {
                    incarnation,
                    signatures,
                },
            ) => {
                self.keep_certificate(&addr, incarnation, signatures, now, out);
                if self.seeds.registered(&addr) {
                    out.push(records::registered_with(&addr).into());
                    if std::mem::take(&mut self.rejoining) {
                        out.push(records::rejoined(&addr).into());
                    }
                    for text in self.held_reports.drain(..) {
                        log::info!("sending a report held while no seed was reachable: {text}");
                        out.push(Action::send(conn, Msg::DeadNode { text }));
                    }
                    out.push(Action::send(conn, Msg::GetPeers));
                    self.tell_degree(out);
                }
            }
            (LinkKind::Seed, Msg::PeerList { peers }) => {
                if self.phase == Phase::Joining {
                    self.seeds.list(&addr, peers);
                    self.maybe_finish_join(now, out);
                } else if self.overlay.is_repairing()
                    || (self.phase == Phase::Running && self.overlay.wants_repair())
                {
                    // Asked for, or a list short of neighbours can use (a seed linked to
                    // later sends one after `Registered`).
                    self.repair_from(peers, now, out);
                }
            }
            (_, other) => {
                let reason = format!("unexpected {} on a {kind:?} link", other.name());
                self.reject(conn, addr, reason, now, out)
            }
        }
    }

    /// Keeps the certificate a seed sent with `Registered` if it proves this peer's
    /// registration (its address and key, signed by a majority of the configured seeds) and is
    /// of its latest incarnation so far.
    fn keep_certificate(
        &mut self,
        seed: &SocketAddr,
        incarnation: u64,
        signatures: Vec<(SocketAddr, crate::wire::Signature)>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(key) = self.own_key else {
            return;
        };
        if self
            .certificate
            .as_ref()
            .is_some_and(|c| c.0 >= incarnation)
        {
            return;
        }
        let member = crate::wire::Member {
            addr: self.me,
            incarnation,
            key,
        };
        match self.seeds.certifies(&member, &signatures) {
            Certified::Yes => {
                self.certificate = Some((incarnation, signatures));
                // Rooted mode: this peer's name as a root is its certified incarnation.
                if self
                    .tree
                    .as_mut()
                    .is_some_and(|t| t.set_me((incarnation, self.me), now.mono))
                {
                    self.announce_place(None, now, out);
                }
            }
            other => log::warn!(
                "seed {seed} confirmed the registration of incarnation {incarnation} without a certificate this peer can check ({other:?})"
            ),
        }
    }

    /// Rooted mode: how many times this peer left a parent for what it delivered
    /// (`Rooted::received`); 0 in the other modes.
    pub fn parents_left(&self) -> u64 {
        self.tree
            .as_ref()
            .and_then(|t| t.rooted())
            .map_or(0, |r| r.parents_left)
    }

    /// The certificate of this peer's latest registration, if it has one.
    pub fn certificate(&self) -> Option<&(u64, Vec<(SocketAddr, crate::wire::Signature)>)> {
        self.certificate.as_ref()
    }

    /// A seed says this incarnation of us was removed (taken for dead while we were frozen or
    /// cut off): register again, with every seed, as a new incarnation (SWIM's refutation).
    /// Neighbour links stay; the seeds' links carry the old incarnation and are dialed anew.
    fn on_removed(&mut self, seed: SocketAddr, incarnation: u64, now: Now, out: &mut Vec<Action>) {
        if !self.rejoining {
            log::warn!(
                "seed {seed} says this peer (incarnation {incarnation}) was removed from the peer list: registering again"
            );
            out.push(records::removed_notice(&seed).into());
        }
        self.rejoining = true;
        out.push(Action::Reincarnate);
        for conn in self.seeds.conns() {
            self.on_link_gone(conn, now, out);
            out.push(Action::Close { conn });
        }
    }

    fn on_connected(&mut self, conn: ConnId, remote: Remote, now: Now, out: &mut Vec<Action>) {
        let Remote {
            addr,
            role,
            dialed,
            key,
            ..
        } = remote;
        let kind = match (role, dialed) {
            (Role::Seed, Some(_)) => LinkKind::Seed,
            (Role::Seed, None) => LinkKind::SeedProbe,
            (Role::Peer, _) => LinkKind::Neighbour,
        };
        if self.leaving {
            if self.leave_held && kind == LinkKind::Seed {
                // The goodbye that found no seed up at shutdown.
                log::info!("seed {addr} reached: sending the Leave held since shutdown");
                self.leave_taken += 1;
                self.leave_held = self.leave_taken < self.config.majority();
                out.push(Action::send(conn, Msg::Leave));
                return;
            }
            out.push(Action::Close { conn });
            return;
        }
        if addr == self.me {
            // Our own dial come back (a seed listed at our address), or a remote claiming it:
            // never a neighbour or a seed of ours.
            log::warn!("a connection claims this peer's own address {addr}: closed");
            out.push(Action::Close { conn });
            return;
        }
        if kind == LinkKind::Neighbour {
            if let Err(refusal) = self.overlay.admit(&addr, &key, dialed.is_some()) {
                let reason = refusal.to_string();
                out.push(Record::rejected(addr, &reason).into());
                out.push(Action::send(conn, Msg::Reject { reason }));
                out.push(Action::Close { conn });
                if dialed.is_some() {
                    self.overlay.dial_failed(addr, now.mono);
                    self.maybe_start_gossip(now, out);
                    self.maybe_repair(out);
                }
                return;
            }
        }
        self.overlay
            .add_link(conn, addr, key, kind, dialed.is_some(), now.mono);
        match kind {
            LinkKind::Seed => {
                self.seeds.connected(addr, key, conn, now.mono);
                out.push(Action::send(conn, Msg::Register));
                out.push(Action::timer(REGISTER_RETRY, Timer::SeedRetry));
            }
            LinkKind::Neighbour => {
                out.push(Action::timer(YOUNG_LINK, Timer::YoungLinks));
                self.on_neighbour_link(conn, (addr, key), dialed.is_some(), now, out);
            }
            LinkKind::SeedProbe => {}
        }
    }

    /// Bookkeeping when a non-neighbour link ends.
    fn on_link_gone(&mut self, conn: ConnId, now: Now, out: &mut Vec<Action>) {
        let Some(link) = self.overlay.remove_link(conn) else {
            return;
        };
        if link.kind == LinkKind::Seed {
            if let Some(wait) = self.seeds.lost(conn, now.mono) {
                out.push(Action::timer(wait, Timer::SeedRetry));
            }
            self.overlay.set_repairing(false);
            self.maybe_finish_join(now, out);
        }
    }

    fn on_closed(&mut self, conn: ConnId, reason: CloseReason, now: Now, out: &mut Vec<Action>) {
        if self.api_clients.remove(&conn) {
            // Its subscriptions end now, and what it had yet to validate no longer waits on it.
            log::info!("api client {conn} disconnected ({reason})");
            let verdicts = self.apps.disconnect(conn);
            return self.apply_verdicts(verdicts, now, out);
        }
        let Some(link) = self.overlay.link(conn) else {
            return;
        };
        if link.kind != LinkKind::Neighbour {
            return self.on_link_gone(conn, now, out);
        }
        let addr = link.addr;
        if self.leaving {
            self.overlay.forget_neighbour(&addr, conn);
            self.liveness.unwatch(&addr);
            return;
        }
        if !link.dialed && !link.heard {
            // It dialed us and went before saying anything: most often a dialer that gave up
            // on a handshake we answered late (we were frozen or overloaded), not a crash.
            let why = format!("closed before it sent anything ({reason})");
            return self.drop_neighbour(addr, &why, false, now, out);
        }
        if matches!(reason, CloseReason::Malformed(_) | CloseReason::Stalled(_)) {
            // Cut off here for what it sent (and told so): a violation, not a crash.
            let why = format!("cut off: {reason}");
            return self.drop_neighbour(addr, &why, false, now, out);
        }
        // No goodbye: a crash. Report at once; the seeds confirm before removing.
        let why = format!("connection lost without a goodbye ({reason})");
        self.report_dead(addr, &why, now, out);
        self.drop_neighbour(addr, &why, false, now, out);
    }

    fn on_dial_failed(
        &mut self,
        addr: SocketAddr,
        purpose: Purpose,
        reason: crate::node::DialError,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        match purpose {
            Purpose::Register => {
                if self.seeds.first_failure(&addr) {
                    log::warn!("seed {addr} unreachable: {reason} (retrying with backoff)");
                } else {
                    log::debug!("seed {addr} still unreachable: {reason}");
                }
                let joining = self.phase == Phase::Joining;
                let (wait, spare) = self
                    .seeds
                    .dial_failed(&addr, now.mono, joining, &mut self.rng);
                if let Some(wait) = wait {
                    out.push(Action::timer(wait, Timer::SeedRetry));
                }
                // Keep a majority: replace an unreachable seed with one not yet used.
                if let Some(spare) = spare {
                    self.dial_seed(spare, out);
                }
            }
            Purpose::Neighbour => {
                log::info!("neighbour {addr} unreachable: {reason}");
                self.overlay.dial_failed(addr, now.mono);
                use crate::node::DialError;
                if matches!(
                    reason,
                    DialError::Refused | DialError::TimedOut | DialError::Connect(_)
                ) {
                    // A peer the seeds list that cannot be reached: they check it, so a dead
                    // entry does not linger to be handed to every newcomer.
                    self.report_dead(addr, &format!("unreachable: {reason}"), now, out);
                }
                self.maybe_start_gossip(now, out);
                self.maybe_repair(out);
            }
            Purpose::SeedLink | Purpose::Probe => {}
        }
    }

    fn on_timer(&mut self, timer: Timer, now: Now, out: &mut Vec<Action>) {
        if timer == Timer::YoungLinks {
            return self.overlay.expire_young(now.mono);
        }
        if self.leaving {
            return;
        }
        match timer {
            Timer::Validations => {
                let (verdicts, overdue) = self.apps.expire(now.mono);
                self.apply_verdicts(verdicts, now, out);
                let timeout = self.apps.timeout();
                for client in overdue {
                    if self.api_clients.contains(&client) {
                        let why = format!("left a notification unanswered for {timeout:?}");
                        self.reject_client(client, why, now, out);
                    }
                }
            }
            Timer::SeedRetry => self.retry_seeds(now, out),
            Timer::JoinDeadline => self.maybe_finish_join(now, out),
            Timer::Gossip => {
                if let Some((n, next)) = self.generator.due(now.mono) {
                    self.generate(n, now, out);
                    if let Some(wait) = next {
                        out.push(Action::timer(wait, Timer::Gossip));
                    }
                }
            }
            Timer::LivenessRound => self.liveness_round(now, out),
            Timer::CatchUp => self.catch_up_round(now, out),
            Timer::Tree => self.tree_due(now, out),
            Timer::Waiting => {
                if let Some(line) = self.seeds.waiting() {
                    out.push(Record::new("waiting").line(line).into());
                    out.push(Action::timer(WAITING_NOTE, Timer::Waiting));
                }
            }
            Timer::ReplyDeadline => self.liveness_deadlines(now, out),
            Timer::YoungLinks
            | Timer::SeedRedial
            | Timer::ProbeDeadline
            | Timer::Sync
            | Timer::Unlinked => {}
        }
    }

    fn on_shutdown(&mut self, out: &mut Vec<Action>) {
        self.leaving = true;
        if self.seeds.conns().is_empty() {
            // No seed would hear the Leave: dial them all; the first to answer takes it.
            log::warn!("leaving with no seed connection up: dialing the seeds to say so");
            self.leave_held = true;
            for &addr in &self.config.seeds {
                out.push(Action::Dial {
                    addr,
                    purpose: Purpose::Register,
                    key: None,
                });
            }
        }
        let to: Vec<ConnId> = self
            .seeds
            .conns()
            .into_iter()
            .chain(self.overlay.neighbours().map(|(_, c)| c))
            .collect();
        if !to.is_empty() {
            out.push(Action::Send {
                to,
                msg: Msg::Leave,
            });
        }
        out.push(records::leaving().into());
    }
}

/// A gossip frame of the burst being handled, hashed ahead (`Core::prepare`).
#[derive(Debug, Clone, Copy)]
struct Ahead {
    conn: ConnId,
    id: [u8; 32],
    /// Guessed a first receipt (the id is in no slot of the message list): how many of the
    /// burst's items before it were guessed so.
    fresh: Option<u32>,
}

/// Frames between the steps of `Core::prefetch`: the runtime asks for frame `k` while it
/// handles frame `k - 3 * PREFETCH_STEP`, see `net::PREFETCH_AHEAD`.
const PREFETCH_STEP: usize = 2;

impl PeerCore {
    /// The second step of `prefetch` for the burst's frame `j`: its message list slot is in
    /// the cache by now, so the list can tell whether the id is new at the cost of a few
    /// compares; for a new one, ask for its history bucket and for what the full list and
    /// history will forget when it is kept.
    fn guess_fresh(&mut self, j: usize) {
        // (An event handled already, when the hints run less than two steps ahead: a guess
        // would count it ahead of the others for nothing.)
        if j < self.burst_at {
            return;
        }
        let Some(Some(a)) = self.burst.get_mut(j) else {
            return;
        };
        if self.ml.may_hold(&a.id) {
            return;
        }
        let ordinal = self.burst_fresh;
        a.fresh = Some(ordinal);
        self.burst_fresh += 1;
        let ahead = ordinal.saturating_sub(self.burst_fresh_done) as usize;
        let id = a.id;
        // (Its slot was asked for in the first step.)
        self.ml.prefetch_newest();
        self.history.prefetch_bucket(&id);
        self.ml.prefetch_forget(ahead);
        self.history.prefetch_leaving(ahead, false);
    }
}

impl Core for PeerCore {
    fn handle(&mut self, event: Event, now: Now, out: &mut Vec<Action>) {
        self.hashed = None;
        if let Some(ahead) = self.burst.get(self.burst_at) {
            self.hashed = ahead.map(|a| a.id);
            if ahead.is_some_and(|a| a.fresh.is_some()) {
                self.burst_fresh_done += 1;
            }
            self.burst_at += 1;
            if self.burst_at == self.burst.len() {
                self.burst.clear();
                self.burst_at = 0;
            }
        }
        match event {
            Event::Started => self.start(now, out),
            Event::Connected { conn, remote } => self.on_connected(conn, remote, now, out),
            Event::Frame { conn, msg } => self.on_frame(conn, msg, now, out),
            Event::Closed { conn, reason } => self.on_closed(conn, reason, now, out),
            Event::DialFailed {
                addr,
                purpose,
                reason,
            } => self.on_dial_failed(addr, purpose, reason, now, out),
            Event::ApiConnected { conn } => {
                self.api_clients.insert(conn);
            }
            Event::ApiFrame { conn, msg } => self.on_api(conn, msg, now, out),
            Event::Timer(timer) => self.on_timer(timer, now, out),
            Event::Shutdown => self.on_shutdown(out),
        }
    }

    fn prepare(&mut self, burst: &[Event]) {
        self.burst.clear();
        self.burst_at = 0;
        self.burst_fresh = 0;
        self.burst_fresh_done = 0;
        let max_item = self.max_item;
        let hashed = |e: &Event| match e {
            Event::Frame {
                conn,
                msg:
                    Msg::Gossip {
                        data_type,
                        nonce,
                        payload,
                        ..
                    },
            } if payload.len() <= max_item => Some(Ahead {
                conn: *conn,
                id: texts::message_id(*data_type, *nonce, payload),
                fresh: None,
            }),
            _ => None,
        };
        self.burst.extend(burst.iter().map(hashed));
    }

    fn prefetch(&mut self, k: usize) {
        // Three steps, each a couple of frames after the one before, so what a step asks for
        // has arrived when the next step reads it: the message list's slot for the id; then,
        // the slot being in the cache, a guess whether the id is new (a repeat, three frames
        // in four when flooding, needs nothing more), and for a new one its history bucket
        // and what the full list and history will forget; then what the bucket leads to.
        if let Some(Some(a)) = self.burst.get(k) {
            self.ml.prefetch_lookup(&a.id);
            self.overlay.prefetch_link(a.conn);
        }
        if let Some(j) = k.checked_sub(PREFETCH_STEP) {
            self.guess_fresh(j);
        }
        let Some(j) = k.checked_sub(2 * PREFETCH_STEP) else {
            return;
        };
        if let Some(Some(Ahead {
            id,
            fresh: Some(ordinal),
            ..
        })) = self.burst.get(j)
        {
            let ahead = ordinal.saturating_sub(self.burst_fresh_done) as usize;
            self.history.prefetch_column(id);
            self.history.prefetch_leaving(ahead, true);
        }
    }

    fn gossip_duplicates(&self) -> u64 {
        self.ml.duplicates()
    }

    fn gossip_dropped(&self) -> u64 {
        self.dropped
    }

    fn tree_counters(&self) -> Option<[u64; 3]> {
        let t = self.tree.as_ref()?;
        let eager = self
            .overlay
            .neighbours()
            .filter(|(a, _)| t.is_eager(a))
            .count();
        Some([t.prunes_sent, t.ids_grafted, eager as u64])
    }

    fn tree_root(&self) -> Option<(SocketAddr, u8)> {
        self.tree.as_ref()?.root()
    }

    fn tree_children(&self) -> Option<usize> {
        Some(self.tree.as_ref()?.rooted()?.children())
    }

    fn holds_goodbye(&self) -> bool {
        self.leave_held
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
        let (mut p, now) = registered(extra, [0; 32]);
        let mut out = vec![];
        p.handle(
            Event::Frame {
                conn: SEED_CONN,
                msg: Msg::PeerList { peers: vec![] },
            },
            now,
            &mut out,
        );
        for (conn, port) in [(10, 9101), (11, 9102), (12, 9103)] {
            let remote = peer_remote(port, None);
            p.handle(Event::Connected { conn, remote }, now, &mut out);
        }
        assert_eq!(p.neighbours().len(), 3);
        (p, now)
    }

    /// Peer `port` (incarnation 1, the zero key) on a link we accepted (`dialed` None) or
    /// dialed.
    fn peer_remote(port: u16, dialed: Option<Purpose>) -> Remote {
        Remote {
            addr: a(port),
            role: Role::Peer,
            incarnation: 1,
            key: [0; 32],
            dialed,
        }
    }

    /// `msg` from the seed the peer registered with.
    fn seed_says(p: &mut PeerCore, msg: Msg, now: Now, out: &mut Vec<Action>) {
        p.handle(
            Event::Frame {
                conn: SEED_CONN,
                msg,
            },
            now,
            out,
        );
    }

    /// A peer registered through one seed (at 9001, showing `seed_key`), its list not in yet.
    fn registered(extra: &str, seed_key: crate::wire::PublicKey) -> (PeerCore, Now) {
        let now = Now::real();
        let mut p = PeerCore::new(a(ME), config(extra), StdRng::seed_from_u64(1));
        let mut out = vec![];
        p.handle(Event::Started, now, &mut out);
        let seed = Remote {
            addr: a(9001),
            role: Role::Seed,
            incarnation: 0,
            key: seed_key,
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
                msg: Msg::Registered {
                    incarnation: 1,
                    signatures: vec![],
                },
            },
            now,
            &mut out,
        );
        (p, now)
    }

    #[test]
    fn a_peer_keeps_the_certificate_of_its_latest_registration_if_it_checks() {
        use crate::keys::NodeKey;
        use crate::wire::{change_bytes, Member, VoteOp};
        let seed_key = NodeKey::from_secret([9; 32]);
        let other = NodeKey::from_secret([8; 32]);
        let (mut p, now) = registered("", seed_key.public());
        // Not told its key yet (`set_key`): nothing kept, whatever came.
        assert!(p.certificate().is_none());
        let me = [3; 32];
        p.set_key(me);
        let registered = |inc: u64, by: &NodeKey, key: [u8; 32]| {
            let m = Member {
                addr: a(ME),
                incarnation: inc,
                key,
            };
            Msg::Registered {
                incarnation: inc,
                signatures: vec![(a(9001), by.sign(&change_bytes(VoteOp::Add, &m)))],
            }
        };
        let mut out = vec![];
        for msg in [
            // Signed by a key that is not the seed's, or for another key of this address.
            registered(5, &other, me),
            registered(5, &seed_key, [4; 32]),
        ] {
            seed_says(&mut p, msg, now, &mut out);
            assert!(p.certificate().is_none());
        }
        let msg = registered(5, &seed_key, me);
        seed_says(&mut p, msg, now, &mut out);
        assert_eq!(p.certificate().map(|c| c.0), Some(5));
        // An older incarnation's, arriving late, does not replace it; a newer one does.
        let msg = registered(4, &seed_key, me);
        seed_says(&mut p, msg, now, &mut out);
        assert_eq!(p.certificate().map(|c| c.0), Some(5));
        let msg = registered(6, &seed_key, me);
        seed_says(&mut p, msg, now, &mut out);
        assert_eq!(p.certificate().map(|c| c.0), Some(6));
    }

    #[test]
    fn rooted_a_neighbours_place_counts_only_if_its_proof_checks() {
        use crate::keys::NodeKey;
        use crate::peer::proof::chain_step;
        use crate::wire::{change_bytes, root_number_bytes, Member, RootNumber, VoteOp};
        use std::sync::Arc;
        let seed_key = NodeKey::from_secret([9; 32]);
        let (mut p, now) = registered("gossip: { mode: rooted }", seed_key.public());
        let me = Arc::new(NodeKey::from_secret([3; 32]));
        p.set_signer(me.clone());
        let cert = |addr: SocketAddr, incarnation: u64, key: [u8; 32], by: &NodeKey| {
            let m = Member {
                addr,
                incarnation,
                key,
            };
            vec![(a(9001), by.sign(&change_bytes(VoteOp::Add, &m)))]
        };
        let mut out = vec![];
        let signatures = cert(a(ME), 100, me.public(), &seed_key);
        let msg = Msg::Registered {
            incarnation: 100,
            signatures,
        };
        seed_says(&mut p, msg, now, &mut out);
        let msg = Msg::PeerList { peers: vec![] };
        seed_says(&mut p, msg, now, &mut out);
        out.clear();
        let remote = peer_remote(9101, None);
        p.handle(Event::Connected { conn: 10, remote }, now, &mut out);
        // It tells the new neighbour its place: its own root, under its certified
        // incarnation, a number it signed, the chain's start.
        let told = sends(&out)
            .into_iter()
            .find_map(|(to, m)| match m {
                Msg::TreeRoot {
                    number,
                    dist,
                    value,
                    ..
                } if to == vec![10] => Some((number, dist, value)),
                _ => None,
            })
            .expect("a TreeRoot to the new neighbour");
        let (number, dist, value) = told;
        assert_eq!((number.root, number.incarnation, dist), (a(ME), 100, 0));
        assert!(crate::peer::proof::on_chain(&value, 0, &number.anchor));
        let bytes = root_number_bytes(&a(ME), 100, number.seq, &number.anchor);
        assert!(crate::keys::verify(&me.public(), &bytes, &number.signature));
        assert_eq!(p.tree_root(), Some((a(ME), 0)));
        // An older root, 9200 (incarnation 50), and its number 1 with chain start `s`.
        let root_key = NodeKey::from_secret([5; 32]);
        let s = [42; 32];
        let mut anchor = s;
        for _ in 0..MAX_DIST {
            anchor = chain_step(&anchor);
        }
        let number = |certified_by: &NodeKey, signed_by: &NodeKey| {
            Arc::new(RootNumber {
                root: a(9200),
                incarnation: 50,
                key: root_key.public(),
                certificate: cert(a(9200), 50, root_key.public(), certified_by),
                seq: 1,
                anchor,
                signature: signed_by.sign(&root_number_bytes(&a(9200), 50, 1, &anchor)),
            })
        };
        // Told on `conn` (a neighbour link, opened if new): the peer's root and distance after,
        // and whether the link was cut off.
        let tell = |p: &mut PeerCore, conn: ConnId, number, dist: u8, value: [u8; 32]| {
            let mut out = vec![];
            if conn != 10 {
                let remote = peer_remote(9300 + conn as u16, None);
                p.handle(Event::Connected { conn, remote }, now, &mut out);
            }
            let msg = Msg::TreeRoot {
                number,
                dist,
                value,
                parent: false,
                want: false,
                released: false,
            };
            p.handle(Event::Frame { conn, msg }, now, &mut out);
            let cut = out.contains(&Action::Close { conn })
                && sends(&out).iter().any(|(to, m)| {
                    to == &vec![conn]
                        && matches!(m, Msg::Reject { reason } if reason.contains("does not check"))
                });
            (p.tree_root(), cut)
        };
        let other = NodeKey::from_secret([6; 32]);
        let own_root = Some((a(ME), 0));
        // A certificate no seed signed, a number the root did not sign, a place one link
        // nearer than its value proves: lies; the neighbour is cut off, nothing is taken.
        let lie = number(&other, &root_key);
        assert_eq!(tell(&mut p, 11, lie, 1, chain_step(&s)), (own_root, true));
        let lie = number(&seed_key, &other);
        assert_eq!(tell(&mut p, 12, lie, 1, chain_step(&s)), (own_root, true));
        let lie = number(&seed_key, &root_key);
        assert_eq!(tell(&mut p, 13, lie, 0, chain_step(&s)), (own_root, true));
        // The proof that checks: hung from 9200, two links away.
        let real = number(&seed_key, &root_key);
        assert_eq!(
            tell(&mut p, 10, real.clone(), 1, chain_step(&s)),
            (Some((a(9200), 2)), false)
        );
        // A neighbour as near the root (two links) hears no newer number alone from here; once
        // it says it is deeper it is told this peer's place at once.
        let value = |dist: u8| (0..dist).fold(s, |v, _| chain_step(&v));
        assert_eq!(
            tell(&mut p, 14, real.clone(), 2, value(2)),
            (Some((a(9200), 2)), false)
        );
        let msg = Msg::TreeRoot {
            number: real,
            dist: 3,
            value: value(3),
            parent: false,
            want: false,
            released: false,
        };
        let mut out = vec![];
        p.handle(Event::Frame { conn: 14, msg }, now, &mut out);
        let told = sends(&out).into_iter().any(|(to, m)| {
            to == vec![14]
                && matches!(
                    m,
                    Msg::TreeRoot {
                        dist: 2,
                        parent: false,
                        ..
                    }
                )
        });
        assert!(told, "the neighbour gone deeper is told the place: {out:?}");
    }

    #[test]
    fn only_list_entries_certified_by_the_seeds_are_dialed() {
        use crate::keys::NodeKey;
        use crate::wire::{change_bytes, VoteOp};
        let seed_key = NodeKey::from_secret([9; 32]);
        let other = NodeKey::from_secret([8; 32]);
        let (mut p, now) = registered("", seed_key.public());
        let mut out = vec![];
        let entry = |port: u16, by: Option<&NodeKey>| {
            let mut e = PeerEntry {
                addr: a(port),
                incarnation: 1,
                key: [port as u8; 32],
                degree: 0,
                signatures: vec![],
            };
            if let Some(k) = by {
                let sig = k.sign(&change_bytes(VoteOp::Add, &e.member()));
                e.signatures.push((a(9001), sig));
            }
            e
        };
        // Signed by the seed; by nobody; by a key that is not the seed's.
        let peers = vec![
            entry(9101, Some(&seed_key)),
            entry(9102, None),
            entry(9103, Some(&other)),
        ];
        out.clear();
        p.handle(
            Event::Frame {
                conn: SEED_CONN,
                msg: Msg::PeerList { peers },
            },
            now,
            &mut out,
        );
        let dials: Vec<SocketAddr> = out
            .iter()
            .filter_map(|x| match x {
                Action::Dial { addr, .. } => Some(*addr),
                _ => None,
            })
            .collect();
        assert_eq!(dials, vec![a(9101)]);
    }

    fn gossip(text: &str, ttl: u8) -> Msg {
        Msg::Gossip {
            data_type: 0,
            ttl,
            nonce: 0,
            payload: text.as_bytes().into(),
        }
    }

    #[test]
    fn items_sent_on_the_losing_one_of_two_simultaneous_links_are_sent_again_on_the_other() {
        // Sent again from the history; or, where the history may not keep them (here:
        // none), from the items the young link kept.
        for extra in ["", "gossip: { history: 0 }\n"] {
            let (mut p, now) = joined(extra);
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
            p.handle(
                Event::Connected {
                    conn: 20,
                    remote: peer_remote(9101, Some(Purpose::Neighbour)),
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
                    remote: peer_remote(9102, Some(Purpose::Neighbour)),
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
    }

    #[test]
    fn a_connection_claiming_this_peers_own_address_is_closed_and_never_a_neighbour() {
        let (mut p, now) = joined("");
        for dialed in [None, Some(Purpose::Neighbour)] {
            let mut out = vec![];
            let remote = Remote {
                addr: a(ME),
                role: Role::Peer,
                incarnation: 0,
                key: [0; 32],
                dialed,
            };
            p.handle(Event::Connected { conn: 50, remote }, now, &mut out);
            assert_eq!(out, vec![Action::Close { conn: 50 }]);
            assert!(!p.neighbours().contains(&a(ME)));
        }
    }

    #[test]
    fn of_two_simultaneous_links_one_closes_with_a_reason_and_neither_end_reports_a_crash() {
        // 9101 (conn 10, accepted) is larger than ME: both ends keep the link ME dialed.
        let (mut p, now) = joined("");
        let mut out = vec![];
        let dialed = peer_remote(9101, Some(Purpose::Neighbour));
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
                    reason: "duplicate link:\nkeeping the one dialed by the smaller key".into(),
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
            Some(
                "closed by the remote: duplicate link:\\nkeeping the one dialed by the smaller key"
            ),
            "the remote's words on one line, its newline escaped"
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
    fn a_burst_hashed_ahead_is_handled_as_the_same_events_one_by_one() {
        let burst = || -> Vec<Event> {
            let mut b = vec![Event::Timer(Timer::Unlinked)];
            for (n, conn) in [(1, 10), (2, 11), (1, 12), (3, 10)] {
                b.push(Event::Frame {
                    conn,
                    msg: gossip(&format!("{n}:127.0.0.1:9102:1"), 0),
                });
            }
            b.push(Event::Frame {
                conn: 11,
                msg: Msg::Gossip {
                    data_type: 0,
                    ttl: 0,
                    nonce: 0,
                    payload: vec![b'x'; 1 << 20].into(),
                },
            });
            b
        };
        // Prefetched: not at all, all of it first, or as the runtime does (frame k + 6 asked
        // for just before frame k is handled), so every step sees a different list.
        let run = |ahead: Option<usize>| {
            let (mut p, now) = joined("");
            let events = burst();
            let n = events.len();
            let mut out = vec![];
            if let Some(ahead) = ahead {
                p.prepare(&events);
                for k in 0..ahead {
                    p.prefetch(k);
                }
            }
            for (k, e) in events.into_iter().enumerate() {
                if let Some(ahead) = ahead {
                    p.prefetch(k + ahead);
                }
                p.handle(e, now, &mut out);
            }
            assert!(p.burst.is_empty(), "a burst of {n} is over once handled");
            // Nothing is left over for the next event.
            p.handle(
                Event::Frame {
                    conn: 10,
                    msg: gossip("4:127.0.0.1:9102:1", 0),
                },
                now,
                &mut out,
            );
            (format!("{out:?}"), p.gossip_duplicates())
        };
        assert_eq!(run(Some(100)), run(None));
        assert_eq!(run(Some(6)), run(None));
        assert_eq!(run(Some(1)), run(None));
        assert_eq!(run(None).1, 1);
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
        let id = texts::message_id(TEXT_DATA_TYPE, 0, b"1:127.0.0.1:9102:1");
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
        // An inbound link that closes before saying anything is only dropped (a dialer that
        // gave up on a handshake we answered late, not a crash).
        p.handle(
            Event::Closed {
                conn: 12,
                reason: CloseReason::EndOfStream,
            },
            now,
            &mut out,
        );
        let reported = sends(&out)
            .iter()
            .any(|(_, m)| matches!(m, Msg::DeadNode { .. }));
        assert!(!reported, "{:?}", sends(&out));
        assert_eq!(events(&out), vec!["neighbour_down"]);
        // One that has been heard from is a crash.
        let text = texts::liveness_request(now.unix_ms, &a(9102));
        let heard = Msg::LivenessRequest { text };
        p.handle(
            Event::Frame {
                conn: 11,
                msg: heard,
            },
            now,
            &mut out,
        );
        out.clear();
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
        assert_eq!(p.neighbours().len(), 1);
    }

    #[test]
    fn a_link_cut_off_here_for_a_malformed_or_stalled_frame_is_not_reported_dead() {
        for reason in [
            CloseReason::Malformed("bad TreeRoot flags value 4".into()),
            CloseReason::Stalled(Duration::from_secs(1)),
        ] {
            let (mut p, now) = joined("");
            let mut out = vec![];
            let text = texts::liveness_request(now.unix_ms, &a(9102));
            p.handle(
                Event::Frame {
                    conn: 11,
                    msg: Msg::LivenessRequest { text },
                },
                now,
                &mut out,
            );
            out.clear();
            p.handle(Event::Closed { conn: 11, reason }, now, &mut out);
            assert!(
                !sends(&out)
                    .iter()
                    .any(|(_, m)| matches!(m, Msg::DeadNode { .. })),
                "{out:?}"
            );
            assert_eq!(events(&out), vec!["neighbour_down"]);
            assert_eq!(p.neighbours().len(), 2);
        }
    }

    #[test]
    fn a_report_made_with_no_seed_reachable_waits_for_one() {
        let (mut p, now) = joined("");
        let mut out = vec![];
        let closed = |conn| Event::Closed {
            conn,
            reason: CloseReason::Reset,
        };
        p.handle(closed(SEED_CONN), now, &mut out);
        let text = texts::liveness_request(now.unix_ms, &a(9102));
        let heard = Msg::LivenessRequest { text };
        p.handle(
            Event::Frame {
                conn: 11,
                msg: heard,
            },
            now,
            &mut out,
        );
        out.clear();
        p.handle(closed(11), now, &mut out);
        assert!(events(&out).contains(&"dead_reported"));
        assert!(!sends(&out)
            .iter()
            .any(|(_, m)| matches!(m, Msg::DeadNode { .. })));
        // A seed is back and confirms us: the report goes to it.
        out.clear();
        let seed = Remote {
            addr: a(9001),
            role: Role::Seed,
            incarnation: 0,
            key: [0; 32],
            dialed: Some(Purpose::Register),
        };
        p.handle(
            Event::Connected {
                conn: 77,
                remote: seed,
            },
            now,
            &mut out,
        );
        p.handle(
            Event::Frame {
                conn: 77,
                msg: Msg::Registered {
                    incarnation: 1,
                    signatures: vec![],
                },
            },
            now,
            &mut out,
        );
        let reports: Vec<_> = sends(&out)
            .into_iter()
            .filter(|(to, m)| to == &vec![77] && matches!(m, Msg::DeadNode { .. }))
            .collect();
        assert_eq!(reports.len(), 1, "{:?}", sends(&out));
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
    fn a_peer_forwards_no_more_than_a_neighbour_accepts_however_much_it_is_sent() {
        // Two neighbours each send 15 new items at once, within their own limit (10/s, bursts
        // of 20): the third neighbour is forwarded only what its limit takes (a burst of 20 at
        // 90% of the rate); the rest is dropped here and counted, and nobody is cut off.
        let (mut p, now) = joined("limits: { gossip_per_second: 10 }");
        let mut out = vec![];
        for i in 0..30 {
            p.handle(
                Event::Frame {
                    conn: 10 + (i % 2),
                    msg: gossip(&format!("{i}:127.0.0.1:9101:1"), 0),
                },
                now,
                &mut out,
            );
        }
        assert!(!events(&out).contains(&"rejected"), "{out:?}");
        assert_eq!(p.neighbours().len(), 3);
        let to_12 = sends(&out)
            .iter()
            .filter(|(to, m)| to.contains(&12) && matches!(m, Msg::Gossip { .. }))
            .count();
        assert_eq!(to_12, 20);
        // Held back from 12: the other 10 (10 and 11 were forwarded each other's 15).
        assert_eq!(p.gossip_dropped(), 10);
    }

    #[test]
    fn drops_are_said_at_the_first_and_then_every_thousand_fold() {
        assert!(worth_saying(0, 1));
        assert!(!worth_saying(1, 1023));
        assert!(worth_saying(1000, 1030), "1,024 passed");
        assert!(!worth_saying(1030, 1_000_000));
        assert!(worth_saying(1_000_000, 1_100_000));
        assert!(!worth_saying(5, 5));
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
            nonce: 0,
            payload: b"x".as_slice().into(),
        };
        // No subscriber of type 8: stops here.
        p.handle(
            Event::Frame {
                conn: 10,
                msg: Msg::Gossip {
                    data_type: 8,
                    ttl: 0,
                    nonce: 0,
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

    fn frame(p: &mut PeerCore, conn: ConnId, msg: Msg, now: Now) -> Vec<Action> {
        let mut out = vec![];
        p.handle(Event::Frame { conn, msg }, now, &mut out);
        out
    }

    #[test]
    fn catch_up_gives_a_neighbour_what_it_lacks_and_only_that() {
        let (mut old, now) = joined("");
        for n in 1..=5 {
            frame(
                &mut old,
                11,
                gossip(&format!("{n}:127.0.0.1:9102:{n}"), 0),
                now,
            );
        }
        let (mut new, _) = joined("");
        // Items count in digests once they have settled (history::SETTLE).
        let settled = Now {
            mono: now.mono + Duration::from_secs(2),
            ..now
        };
        frame(&mut new, 10, gossip("1:127.0.0.1:9102:1", 0), now);
        // Step 1: the newcomer's digest goes to a neighbour at its round.
        let mut out = vec![];
        new.handle(Event::Timer(Timer::CatchUp), now, &mut out);
        let digest = sends(&out)
            .into_iter()
            .find_map(|(_, m)| matches!(m, Msg::SyncDigest { .. }).then_some(m))
            .expect("a digest");
        // Step 2: the old peer lists what it holds where the digests differ.
        let s = sends(&frame(&mut old, 10, digest.clone(), settled));
        let [(to, ids @ Msg::SyncIds { .. })] = &s[..] else {
            panic!("{s:?}")
        };
        assert_eq!(to, &vec![10]);
        assert!(
            sends(&frame(&mut old, 10, digest, settled)).is_empty(),
            "a second digest within half an interval is not answered"
        );
        // Step 3: the newcomer asks for the four it lacks.
        let s = sends(&frame(&mut new, 10, ids.clone(), now));
        let [(_, want @ Msg::SyncWant { ids: wanted })] = &s[..] else {
            panic!("{s:?}")
        };
        assert_eq!(wanted.len(), 4);
        // Step 4: the old peer sends them; the newcomer records them as caught up and does not
        // flood them.
        let items: Vec<Msg> = sends(&frame(&mut old, 10, want.clone(), now))
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert_eq!(items.len(), 4);
        for m in items {
            assert!(matches!(m, Msg::SyncItem { .. }));
            let out = frame(&mut new, 10, m, now);
            let rec = out
                .iter()
                .find_map(|a| match a {
                    Action::Log(r) if r.event == "gossip_received" => Some(r.clone().expanded()),
                    _ => None,
                })
                .expect("received");
            assert_eq!(rec.get("via").unwrap(), "sync");
            assert!(rec.line.as_ref().unwrap().ends_with("(catch-up)"));
            assert!(sends(&out).is_empty(), "caught-up items are not pushed on");
        }
        // Now both hold the same: a digest gets no answer.
        let mut out = vec![];
        let later = Now {
            mono: now.mono + Duration::from_secs(5),
            ..now
        };
        new.handle(Event::Timer(Timer::CatchUp), later, &mut out);
        let digest = sends(&out)
            .into_iter()
            .find_map(|(_, m)| matches!(m, Msg::SyncDigest { .. }).then_some(m))
            .unwrap();
        assert!(sends(&frame(&mut old, 11, digest, later)).is_empty());
    }

    #[test]
    fn catch_up_items_not_asked_for_are_metered_like_gossip() {
        let (mut p, now) = joined("limits: { gossip_per_second: 10 }");
        let mut cut = false;
        for n in 0..1000 {
            let item = Msg::SyncItem {
                data_type: 0,
                ttl: 0,
                nonce: 0,
                payload: format!("{n}:127.0.0.1:9102:{n}").into_bytes().into(),
            };
            let out = frame(&mut p, 10, item, now);
            if out.iter().any(|a| {
                matches!(
                    a,
                    Action::Send {
                        msg: Msg::Reject { .. },
                        ..
                    }
                )
            }) {
                cut = true;
                break;
            }
        }
        assert!(cut, "an unasked-for flood is cut off");
        assert!(p.gossip_dropped() > 0);
    }
}
