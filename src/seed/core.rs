//! The seed's decisions: registrations, peer lists, dead-node reports and their probes, votes
//! and the links to the other seeds. Events in, actions out; no sockets, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;

use crate::backoff::Backoff;
use crate::config::Config;
use crate::keys::{short, verify, NodeKey};
use crate::limits::RateLimiter;
use crate::node::{Action, ConnId, Core, DialError, Event, Now, Purpose, Record, Remote, Timer};
use crate::seed::registry::{Change, Registry};
use crate::texts;
use crate::wire::{
    change_bytes, Member, Msg, PeerEntry, PublicKey, RemovalReason, Role, VoteOp, SYNC_CHUNK,
};

/// A connect error on this seed's own side: its network is down or has no route, or it has
/// no local address or port to dial from. Such a failure says nothing about the peer dialed.
fn own_failure(kind: &std::io::ErrorKind) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        kind,
        NetworkDown | NetworkUnreachable | AddrNotAvailable | AddrInUse | OutOfMemory
    )
}

/// How often a seed without enough other seeds to commit anything says so.
/// How far a new registration's incarnation (the peer's start, Unix ms) may be from a seed's
/// clock: peers take a certified incarnation as the peer's age (the rooted tree hangs from
/// the oldest), so none may claim one much older than its registration; clocks on the hosts
/// must agree within this.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(600);

#[derive(Debug, PartialEq, Eq)]
enum Skew {
    Fine,
    Old(std::time::Duration),
    Ahead(std::time::Duration),
}

fn incarnation_skew(incarnation: u64, now_ms: u64) -> Skew {
    let max = MAX_CLOCK_SKEW.as_millis() as u64;
    if incarnation.saturating_add(max) < now_ms {
        Skew::Old(std::time::Duration::from_millis(now_ms - incarnation))
    } else if incarnation > now_ms.saturating_add(max) {
        Skew::Ahead(std::time::Duration::from_millis(incarnation - now_ms))
    } else {
        Skew::Fine
    }
}

const WAITING_NOTE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkKind {
    /// Another seed.
    Seed,
    /// A peer's own connection to us (registration, reports, leave).
    Peer,
}

#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    kind: LinkKind,
    incarnation: u64,
    /// The key the remote proved in the handshake.
    key: PublicKey,
    /// A peer that said goodbye: its connection ending is not a failure.
    left: bool,
    /// What a peer may send (seeds, configured and few, are not limited).
    rate: RateLimiter,
}

/// A check, by this seed itself, that a reported peer is alive.
#[derive(Debug)]
struct Probe {
    member: Member,
    /// When the next step is due: the link's answer, a dial's outcome, or the next dial.
    deadline: Instant,
    /// The liveness request text sent over the peer's own connection, if any (an answer to it
    /// counts whenever it comes).
    request: Option<String>,
    /// Until when the answer over the link is waited for; `None`: no link, or it failed.
    link_until: Option<Instant>,
    reporters: Vec<SocketAddr>,
    started: Instant,
    /// A fresh dial is out.
    dialing: bool,
    /// The fresh dial failed for good (nothing listens, or no handshake within `pow.timeout`).
    dial_failed: bool,
    /// A dial that failed on the way (no route, reset) is made again at `deadline`.
    redial: bool,
    /// Dials made so far.
    dials: u32,
    /// The last dial failed on this seed's side (its network down or unreachable, no local
    /// address or port): a failure that says nothing about the peer.
    own_failure: bool,
}

#[derive(Debug)]
struct Redial {
    at: Instant,
    backoff: Backoff,
}

pub struct SeedCore {
    me: SocketAddr,
    config: Config,
    /// Draws the sample of the peer list a peer is sent.
    rng: StdRng,
    /// This seed's key: it signs its votes.
    key: Arc<NodeKey>,
    /// The configured seeds' keys (listed in `seeds.yaml`, or proven on a link to them):
    /// what certificates are checked against.
    seed_keys: BTreeMap<SocketAddr, PublicKey>,
    registry: Registry,
    links: BTreeMap<ConnId, Link>,
    /// Live links to other seeds.
    seed_links: BTreeMap<SocketAddr, ConnId>,
    /// Seeds this one dials (those with a larger address) and when to try next.
    redial: BTreeMap<SocketAddr, Redial>,
    dialing: BTreeSet<SocketAddr>,
    /// Each registered peer's own connection.
    peer_conns: BTreeMap<SocketAddr, ConnId>,
    degrees: BTreeMap<SocketAddr, u16>,
    probes: BTreeMap<SocketAddr, Probe>,
    /// Registrations waiting for their dial-back (the seed dials the address and must find
    /// the registering key there before it votes): the registering connection and member.
    dial_backs: BTreeMap<SocketAddr, (ConnId, Member)>,
    next_sync: Option<Instant>,
    /// Members this seed learned from another seed's `Sync` (not by votes it heard) since it
    /// started: it was down when they registered, or missed it. Each is checked once, a while
    /// after the first arrives, unless it has linked to this seed by then: a peer whose seed
    /// links all went while its seeds were down (and which died meanwhile) would otherwise
    /// stay listed, since no seed saw its link close. `None` once checked.
    caught_up: Option<BTreeSet<SocketAddr>>,
    /// Members whose check this seed abstained from (its own dialing or scheduling failed
    /// during it): checked again at the next sync tick.
    recheck: BTreeSet<SocketAddr>,
}

impl SeedCore {
    pub fn new(me: SocketAddr, config: Config, rng: StdRng, key: Arc<NodeKey>) -> Self {
        let mut seed_keys = config.seed_keys.clone();
        seed_keys.insert(me, key.public());
        SeedCore {
            me,
            rng,
            key,
            seed_keys,
            registry: Registry::new(config.seeds.len(), config.seed.vote_ttl),
            config,
            links: BTreeMap::new(),
            seed_links: BTreeMap::new(),
            redial: BTreeMap::new(),
            dialing: BTreeSet::new(),
            peer_conns: BTreeMap::new(),
            degrees: BTreeMap::new(),
            probes: BTreeMap::new(),
            dial_backs: BTreeMap::new(),
            next_sync: None,
            caught_up: Some(BTreeSet::new()),
            recheck: BTreeSet::new(),
        }
    }

    /// What this seed waits for before it can commit anything, in words for people: a
    /// majority of the configured seeds must be up and linked.
    fn waiting(&self) -> Option<String> {
        let up = self.seed_links.len() + 1;
        let need = self.registry.majority();
        (up < need).then(|| {
            let n = self.config.seeds.len();
            format!(
                "Waiting for seeds: {up} of {n} up (this one included), {need} needed before registrations and removals can be agreed"
            )
        })
    }

    /// The committed peer list.
    pub fn members(&self) -> Vec<Member> {
        self.registry.members()
    }

    /// Other seeds this seed dials; the one with the smaller address dials, so each pair has
    /// one link.
    fn dials(&self, other: &SocketAddr) -> bool {
        self.me < *other
    }

    /// The certificates of the committed list, in frames of at most `SYNC_CHUNK`.
    fn sync_msgs(&self) -> Vec<Msg> {
        let mut rest = self.registry.certificates();
        let mut msgs = Vec::with_capacity(rest.len() / SYNC_CHUNK + 1);
        loop {
            let tail = rest.split_off(rest.len().min(SYNC_CHUNK));
            msgs.push(Msg::Sync { certs: rest });
            if tail.is_empty() {
                return msgs;
            }
            rest = tail;
        }
    }

    /// Does `sig` sign `bytes` under the key of configured seed `voter`?
    fn seed_signed(
        keys: &BTreeMap<SocketAddr, PublicKey>,
        voter: &SocketAddr,
        bytes: &[u8],
        sig: &crate::wire::Signature,
    ) -> bool {
        keys.get(voter).is_some_and(|k| verify(k, bytes, sig))
    }

    /// `Registered` for a committed member, with its certificate.
    fn registered(&self, m: &Member) -> Msg {
        Msg::Registered {
            incarnation: m.incarnation,
            signatures: self
                .registry
                .certificate(&m.addr)
                .filter(|c| c.member == *m)
                .map(|c| c.signatures.clone())
                .unwrap_or_default(),
        }
    }

    fn seed_conns(&self) -> Vec<ConnId> {
        self.seed_links.values().copied().collect()
    }

    /// Casts this seed's vote, tells the other seeds, and applies a commit if it completes one.
    fn cast_vote(&mut self, op: VoteOp, member: Member, now: Now, out: &mut Vec<Action>) {
        let signature = self.key.sign(&change_bytes(op, &member));
        let to = self.seed_conns();
        if !to.is_empty() {
            out.push(Action::Send {
                to,
                msg: Msg::Vote {
                    op,
                    member,
                    signature,
                },
            });
        }
        if let Some(change) = self.registry.vote(self.me, op, member, signature, now.mono) {
            self.apply(change, out);
        }
    }

    fn apply(&mut self, change: Change, out: &mut Vec<Action>) {
        match change {
            Change::Added(m) => {
                out.push(
                    Record::new("registered")
                        .field("peer", m.addr.to_string())
                        .line(format!(
                            "Registered peer {} (agreed by a majority of seeds)",
                            m.addr
                        ))
                        .into(),
                );
                if let Some(&conn) = self.peer_conns.get(&m.addr) {
                    if self
                        .links
                        .get(&conn)
                        .is_some_and(|l| l.incarnation == m.incarnation)
                    {
                        out.push(Action::send(conn, self.registered(&m)));
                    }
                }
            }
            Change::Removed(m, reason) => {
                out.push(
                    Record::new("removed")
                        .field("peer", m.addr.to_string())
                        .field("reason", reason.as_str())
                        .line(format!("Removed peer {} ({})", m.addr, reason.as_str()))
                        .into(),
                );
                self.degrees.remove(&m.addr);
                self.probes.remove(&m.addr);
                if reason == RemovalReason::Dead {
                    // A peer removed as dead that still holds a connection (hung) loses it,
                    // told why first: should it wake up, it registers again.
                    if let Some(conn) = self.peer_conns.remove(&m.addr) {
                        if let Some(link) = self.links.remove(&conn) {
                            if link.incarnation == m.incarnation {
                                let incarnation = m.incarnation;
                                out.push(Action::send(conn, Msg::Removed { incarnation }));
                            }
                        }
                        out.push(Action::Close { conn });
                    }
                }
            }
        }
    }

    /// Starts this seed's own check of `member` unless one is running or it already voted.
    fn start_probe(
        &mut self,
        member: Member,
        reporter: Option<SocketAddr>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        if let Some(p) = self.probes.get_mut(&member.addr) {
            p.reporters.extend(reporter);
            return;
        }
        if self.registry.has_voted_remove(&self.me, &member) {
            return;
        }
        let deadline = now.mono + self.config.liveness.probe_timeout;
        out.push(Action::timer(
            self.config.liveness.probe_timeout,
            Timer::ProbeDeadline,
        ));
        let mut probe = Probe {
            member,
            deadline,
            request: None,
            link_until: None,
            reporters: reporter.into_iter().collect(),
            started: now.mono,
            dialing: false,
            dial_failed: false,
            redial: false,
            dials: 0,
            own_failure: false,
        };
        // Over the peer's own link and over a fresh dial at once: either answer will do.
        if let Some(&conn) = self.peer_conns.get(&member.addr) {
            let text = texts::liveness_request(now.unix_ms, &self.me);
            out.push(Action::send(
                conn,
                Msg::LivenessRequest { text: text.clone() },
            ));
            probe.request = Some(text);
            probe.link_until = Some(deadline);
        }
        Self::probe_dial(&mut probe, now, &self.config, out);
        self.probes.insert(member.addr, probe);
    }

    /// A fresh dial of the probed peer, expecting its key; its outcome (or the deadline, a
    /// safety net past `pow.timeout`) decides the step.
    fn probe_dial(probe: &mut Probe, now: Now, config: &Config, out: &mut Vec<Action>) {
        probe.dialing = true;
        probe.redial = false;
        probe.dials += 1;
        let wait = config.pow.timeout + config.liveness.probe_timeout;
        probe.deadline = now.mono + wait;
        out.push(Action::timer(wait, Timer::ProbeDeadline));
        out.push(Action::Dial {
            addr: probe.member.addr,
            purpose: Purpose::Probe,
            key: Some(probe.member.key),
        });
    }

    /// The fresh dial failed (`why`). One that failed on the way (`transient`: no route, a
    /// reset, or this seed's `own` failure) is made again after a pause while
    /// `liveness.misses × liveness.interval` since the probe began has not passed; nothing
    /// listening, or no handshake within `pow.timeout`, is final. The peer is dead once the
    /// dial has failed for good and its link (if any) has not answered either; a dial that
    /// still fails on this seed's side makes it abstain instead.
    fn probe_dial_failed(
        &mut self,
        addr: SocketAddr,
        why: &str,
        (transient, own): (bool, bool),
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let lv = &self.config.liveness;
        let window = lv.interval * lv.misses;
        let pause = lv.probe_timeout;
        let Some(p) = self.probes.get_mut(&addr) else {
            return;
        };
        p.dialing = false;
        p.own_failure = own;
        if transient && now.mono + pause < p.started + window {
            log::info!("probe: dialing {addr} failed ({why}); dialing it again");
            p.redial = true;
            p.deadline = now.mono + pause;
            out.push(Action::timer(pause, Timer::ProbeDeadline));
            return;
        }
        p.dial_failed = true;
        self.probe_verdict(addr, why, now, out);
    }

    /// Votes "dead" if both ways to the peer have failed: the dial for good, and the link
    /// (none, closed, or no answer in time).
    fn probe_verdict(&mut self, addr: SocketAddr, why: &str, now: Now, out: &mut Vec<Action>) {
        let Some(p) = self.probes.get(&addr) else {
            return;
        };
        if !p.dial_failed || p.link_until.is_some() {
            return;
        }
        if p.own_failure {
            return self.abstain(
                addr,
                &format!("dialing it fails on this seed's side ({why})"),
            );
        }
        let why = format!("{why}; no answer over its link either, {} dial(s)", p.dials);
        self.probe_result(addr, false, &why, now, out);
    }

    /// Drops a check whose failure may be this seed's own, without a vote: a seed whose own
    /// dialing fails, or that was stalled past the check's deadlines (overloaded, stopped),
    /// cannot tell a dead peer from its own trouble. Other seeds' checks go on, and this one
    /// checks again at its next sync tick.
    fn abstain(&mut self, addr: SocketAddr, why: &str) {
        if self.probes.remove(&addr).is_some() {
            log::warn!("probe: abstaining from a verdict on {addr}: {why}; checking again later");
            self.recheck.insert(addr);
        }
    }

    fn probe_result(
        &mut self,
        addr: SocketAddr,
        alive: bool,
        why: &str,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let Some(probe) = self.probes.remove(&addr) else {
            return;
        };
        if alive {
            for r in &probe.reporters {
                out.push(
                    Record::rejected(
                        r,
                        format!("false dead report: {addr} answered the seed's probe"),
                    )
                    .line(format!(
                        "Dead Node report about {addr} from {r} refused: it is alive"
                    ))
                    .into(),
                );
            }
            log::info!("probe: {addr} is alive ({why})");
        } else {
            log::info!("probe: {addr} is dead ({why}); voting to remove it");
            self.cast_vote(VoteOp::Remove(RemovalReason::Dead), probe.member, now, out);
        }
    }

    fn on_connected(&mut self, conn: ConnId, remote: Remote, now: Now, out: &mut Vec<Action>) {
        match (remote.role, remote.dialed) {
            (Role::Seed, _) => {
                if let Some(old) = self.seed_links.insert(remote.addr, conn) {
                    self.links.remove(&old);
                    out.push(Action::Close { conn: old });
                }
                self.dialing.remove(&remote.addr);
                if let Some(r) = self.redial.get_mut(&remote.addr) {
                    r.backoff.reset();
                }
                self.links.insert(
                    conn,
                    Link {
                        addr: remote.addr,
                        kind: LinkKind::Seed,
                        incarnation: 0,
                        key: remote.key,
                        left: false,
                        rate: self.control_limiter(now),
                    },
                );
                log::info!("seed link up: {}", remote.addr);
                // The runtime checked its key against the configured or pinned one.
                self.seed_keys.insert(remote.addr, remote.key);
                for msg in self.sync_msgs() {
                    out.push(Action::send(conn, msg));
                }
                for (op, member, signature) in self.registry.open_votes_of(&self.me) {
                    let vote = Msg::Vote {
                        op,
                        member,
                        signature,
                    };
                    out.push(Action::send(conn, vote));
                }
            }
            (Role::Peer, Some(Purpose::Probe)) => {
                // It completed a handshake, showing the key we expected: the process is
                // running and answering there.
                out.push(Action::Close { conn });
                if let Some((registering, member)) = self.dial_backs.remove(&remote.addr) {
                    if member.key == remote.key && self.links.contains_key(&registering) {
                        self.cast_vote(VoteOp::Add, member, now, out);
                    }
                }
                self.probe_result(remote.addr, true, "handshake completed", now, out);
            }
            (Role::Peer, _) => {
                let member = Member {
                    addr: remote.addr,
                    incarnation: remote.incarnation,
                    key: remote.key,
                };
                // A connection from another key at a registered peer's address is not that
                // peer's: it does not replace the peer's own connection (probes go there).
                match self.registry.held_by_other(&member) {
                    Some(holder) => log::info!(
                        "{} connected with key {} but the address is registered to key {}",
                        remote.addr,
                        short(&remote.key),
                        short(&holder.key)
                    ),
                    None => {
                        if let Some(old) = self.peer_conns.insert(remote.addr, conn) {
                            self.links.remove(&old);
                            out.push(Action::Close { conn: old });
                        }
                    }
                }
                let rate = self.control_limiter(now);
                self.links.insert(
                    conn,
                    Link {
                        addr: remote.addr,
                        kind: LinkKind::Peer,
                        incarnation: remote.incarnation,
                        key: remote.key,
                        left: false,
                        rate,
                    },
                );
            }
        }
    }

    /// Why a new registration at `addr` would pass `limits.registrations_per_ip` or
    /// `_per_subnet` (an address already listed, a newer incarnation, counts as itself).
    fn over_caps(&self, addr: &SocketAddr) -> Option<String> {
        let limits = &self.config.limits;
        if limits.loopback_exempt && addr.ip().is_loopback() {
            return None;
        }
        let (listed_ip, listed_net) = self.registry.listed_near(addr);
        let (adding_ip, adding_net) = self.registry.adding_near(addr);
        let net_of = crate::peer::overlay::subnet(addr);
        let (mut dialing_ip, mut dialing_net) = (0, 0);
        for a in self.dial_backs.keys().filter(|a| *a != addr) {
            if crate::peer::overlay::subnet(a) == net_of {
                dialing_net += 1;
                dialing_ip += usize::from(a.ip() == addr.ip());
            }
        }
        // Listed, being voted in, or being dialed back: a burst of registrations from one
        // place meets the cap as it goes, not once the first ones are listed.
        let ip = listed_ip + adding_ip + dialing_ip;
        let net = listed_net + adding_net + dialing_net;
        let here = usize::from(self.registry.member(addr).is_some());
        if ip - here >= limits.registrations_per_ip {
            return Some(format!(
                "{} peers are registered from {} already (limits.registrations_per_ip)",
                ip,
                addr.ip()
            ));
        }
        let public = !crate::peer::overlay::is_private(addr);
        if public && net - here >= limits.registrations_per_subnet {
            return Some(format!(
                "{net} peers are registered from the subnet of {} already (limits.registrations_per_subnet)",
                addr.ip()
            ));
        }
        None
    }

    fn control_limiter(&self, now: Now) -> RateLimiter {
        let per_s = self.config.limits.control_per_second;
        RateLimiter::new(per_s, per_s * 2, now.mono)
    }

    /// Like `reject`, telling the peer why first (a `Reject` it logs), so it does not take the
    /// close for a crash and retries with backoff.
    fn refuse(&mut self, conn: ConnId, addr: SocketAddr, reason: String, out: &mut Vec<Action>) {
        let told = Msg::Reject {
            reason: reason.clone(),
        };
        out.push(Action::send(conn, told));
        self.reject(conn, addr, reason, out);
    }

    fn reject(&mut self, conn: ConnId, addr: SocketAddr, reason: String, out: &mut Vec<Action>) {
        out.push(Record::rejected(addr, reason).into());
        self.forget(conn);
        out.push(Action::Close { conn });
    }

    fn forget(&mut self, conn: ConnId) -> Option<Link> {
        let link = self.links.remove(&conn)?;
        match link.kind {
            LinkKind::Seed => {
                if self.seed_links.get(&link.addr) == Some(&conn) {
                    self.seed_links.remove(&link.addr);
                }
            }
            LinkKind::Peer => {
                if self.peer_conns.get(&link.addr) == Some(&conn) {
                    self.peer_conns.remove(&link.addr);
                }
            }
        }
        Some(link)
    }

    /// A `Register` from `member` (`holder`: the member listed at its address under another
    /// key, if any): refused if the address is held or a cap is reached; otherwise confirmed
    /// if listed, or dialed back before this seed votes.
    fn on_register(
        &mut self,
        conn: ConnId,
        member: Member,
        holder: Option<Member>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let addr = member.addr;
        if let Some(holder) = holder {
            // The holder may be gone (a peer that lost its key file and came back with a new
            // one): check, so the address frees up if it is.
            self.start_probe(holder, None, now, out);
            let reason = format!(
                "{addr} is registered to another key ({}); it is being checked, try again once it is removed",
                short(&holder.key)
            );
            return self.refuse(conn, addr, reason, out);
        }
        if self.registry.contains(&member) {
            return out.push(Action::send(conn, self.registered(&member)));
        }
        // A new registration: its incarnation is when the peer started (Unix ms), which
        // peers take as its age. No older than this seed's clock allows: one too old gets
        // `Removed`, so the peer registers again as a new incarnation (one that ran long
        // and is listed nowhere any more, say after every seed restarted); one from the
        // future is refused.
        match incarnation_skew(member.incarnation, now.unix_ms) {
            Skew::Fine => {}
            Skew::Old(by) => {
                log::info!(
                    "{addr} registers incarnation {} ({by:?} before this seed's clock): telling it to register anew",
                    member.incarnation
                );
                out.push(Action::send(
                    conn,
                    Msg::Removed {
                        incarnation: member.incarnation,
                    },
                ));
                self.forget(conn);
                return out.push(Action::Close { conn });
            }
            Skew::Ahead(by) => {
                let reason = format!(
                    "incarnation {} is {by:?} ahead of this seed's clock (at most {MAX_CLOCK_SKEW:?}): check the clock",
                    member.incarnation
                );
                return self.refuse(conn, addr, reason, out);
            }
        }
        if let Some(reason) = self.over_caps(&addr) {
            return self.refuse(conn, addr, reason, out);
        }
        if self.dial_backs.get(&addr).is_none_or(|(_, m)| *m != member) {
            // Reachable, and by this key? Dial the address back before voting (the peer
            // repeats `Register` meanwhile; one dial-back at a time per address).
            self.dial_backs.insert(addr, (conn, member));
            out.push(Action::Dial {
                addr,
                purpose: Purpose::Probe,
                key: Some(member.key),
            });
        }
    }

    fn on_peer_frame(
        &mut self,
        conn: ConnId,
        member: Member,
        msg: Msg,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let addr = member.addr;
        let holder = self.registry.held_by_other(&member);
        let asks = matches!(
            msg,
            Msg::Register | Msg::GetPeers | Msg::Degree { .. } | Msg::DeadNode { .. }
        );
        if asks && holder.is_none() && self.registry.is_removed(&member) {
            // Taken for dead while alive (frozen, cut off): say so, so it registers again.
            log::info!(
                "{addr} (incarnation {}) was removed: telling it so",
                member.incarnation
            );
            let incarnation = member.incarnation;
            out.push(Action::send(conn, Msg::Removed { incarnation }));
            self.forget(conn);
            out.push(Action::Close { conn });
            return;
        }
        match msg {
            Msg::Register => self.on_register(conn, member, holder, now, out),
            Msg::DeadNode { .. } | Msg::Leave if holder.is_some() => {
                let reason = format!(
                    "{} from {addr} with key {}, which does not hold that address",
                    msg.name(),
                    short(&member.key)
                );
                self.reject(conn, addr, reason, out);
            }
            Msg::GetPeers => {
                // All of it while it is small; beyond that a uniform sample, in address order.
                let k = self.config.seed.max_peer_list;
                let peers = self
                    .registry
                    .sample(&mut self.rng, k, &addr)
                    .into_iter()
                    .map(|m| PeerEntry {
                        addr: m.addr,
                        incarnation: m.incarnation,
                        key: m.key,
                        degree: self.degrees.get(&m.addr).copied().unwrap_or(0),
                        // The peer trusts an entry only with its certificate.
                        signatures: self
                            .registry
                            .certificate(&m.addr)
                            .map(|c| c.signatures.clone())
                            .unwrap_or_default(),
                    })
                    .collect();
                out.push(Action::send(conn, Msg::PeerList { peers }));
            }
            Msg::Degree { neighbours } => {
                if self.registry.contains(&member) {
                    self.degrees.insert(addr, neighbours);
                }
            }
            Msg::DeadNode { text } => {
                let Some(report) = texts::parse_dead_node(&text) else {
                    return self.reject(
                        conn,
                        addr,
                        format!("malformed dead-node report {text:?}"),
                        out,
                    );
                };
                if report.reporter != addr {
                    return self.reject(
                        conn,
                        addr,
                        format!("dead-node report signed {} sent by {addr}", report.reporter),
                        out,
                    );
                }
                out.push(
                    Record::new("dead_report")
                        .field("dead", report.dead.to_string())
                        .field("reporter", addr.to_string())
                        .field("text", text.clone())
                        .line(format!("Received {text}"))
                        .into(),
                );
                match self.registry.member(&report.dead) {
                    Some(dead) => self.start_probe(dead, Some(addr), now, out),
                    None => log::debug!("report about {} which is not listed: no-op", report.dead),
                }
            }
            Msg::Leave => {
                if let Some(l) = self.links.get_mut(&conn) {
                    l.left = true;
                }
                if self.registry.contains(&member) {
                    log::info!("{addr} is leaving: voting to remove it (left)");
                    self.cast_vote(VoteOp::Remove(RemovalReason::Left), member, now, out);
                }
            }
            Msg::LivenessReply { text } => {
                let answered = self.probes.get(&addr).is_some_and(|p| {
                    p.request.as_deref().and_then(texts::parse_liveness_request)
                        == texts::parse_liveness_reply(&text)
                            .and_then(|(ts, s, r)| (r == addr).then_some((ts, s)))
                });
                if answered {
                    self.probe_result(addr, true, "answered a liveness request", now, out);
                }
            }
            Msg::LivenessRequest { text } => {
                // Answer like a peer would; harmless and keeps the protocol symmetric.
                if let Some((ts, sender)) = texts::parse_liveness_request(&text) {
                    let text = texts::liveness_reply(ts, &sender, &self.me);
                    out.push(Action::send(conn, Msg::LivenessReply { text }));
                }
            }
            other => self.reject(
                conn,
                addr,
                format!("unexpected {} from a peer", other.name()),
                out,
            ),
        }
    }

    fn on_seed_frame(
        &mut self,
        conn: ConnId,
        from: SocketAddr,
        msg: Msg,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        match msg {
            Msg::Vote {
                op,
                member,
                signature,
            } => {
                // The signature makes the vote part of a certificate any seed can check.
                if !Self::seed_signed(
                    &self.seed_keys,
                    &from,
                    &change_bytes(op, &member),
                    &signature,
                ) {
                    let reason = format!("a vote from {from} not signed by its key");
                    return self.reject(conn, from, reason, out);
                }
                if op == VoteOp::Remove(RemovalReason::Dead) && self.registry.contains(&member) {
                    // Do not take another seed's word for it either: check for ourselves.
                    self.start_probe(member, None, now, out);
                }
                if let Some(change) = self.registry.vote(from, op, member, signature, now.mono) {
                    self.apply(change, out);
                }
            }
            Msg::Sync { certs } => {
                let keys = &self.seed_keys;
                let mut check = |voter: &SocketAddr, bytes: &[u8], sig: &crate::wire::Signature| {
                    Self::seed_signed(keys, voter, bytes, sig)
                };
                let (changes, bad) = self.registry.merge(certs, &mut check);
                self.note_caught_up(&changes, out);
                if bad > 0 {
                    out.push(
                        Record::rejected(
                            from,
                            format!("{bad} certificates in a Sync did not verify (ignored)"),
                        )
                        .into(),
                    );
                }
                for change in changes {
                    self.apply(change, out);
                }
            }
            Msg::LivenessRequest { text } => {
                if let Some((ts, sender)) = texts::parse_liveness_request(&text) {
                    let text = texts::liveness_reply(ts, &sender, &self.me);
                    out.push(Action::send(conn, Msg::LivenessReply { text }));
                }
            }
            Msg::LivenessReply { .. } => {}
            other => self.reject(
                conn,
                from,
                format!("unexpected {} from a seed", other.name()),
                out,
            ),
        }
    }

    fn schedule_redial(&mut self, addr: SocketAddr, now: Now, out: &mut Vec<Action>) {
        let r = self.redial.entry(addr).or_insert(Redial {
            at: now.mono,
            backoff: Backoff::default(),
        });
        let wait = r.backoff.next_wait();
        r.at = now.mono + wait;
        out.push(Action::timer(wait, Timer::SeedRedial));
    }

    /// Dials the seeds that are down and due for another try.
    fn redial_due(&mut self, now: Now, out: &mut Vec<Action>) {
        let due: Vec<SocketAddr> = self
            .redial
            .iter()
            .filter(|(a, r)| {
                r.at <= now.mono && !self.seed_links.contains_key(a) && !self.dialing.contains(a)
            })
            .map(|(a, _)| *a)
            .collect();
        for addr in due {
            self.dialing.insert(addr);
            out.push(Action::Dial {
                addr,
                purpose: Purpose::SeedLink,
                key: None,
            });
        }
    }

    /// Probes whose time is up find their peer dead.
    /// Probes whose steps are due: a link that did not answer in time has failed, a dial
    /// with no outcome in time has failed for good, a dial to be made again is made.
    fn expire_probes(&mut self, now: Now, out: &mut Vec<Action>) {
        let addrs: Vec<SocketAddr> = self.probes.keys().copied().collect();
        for addr in addrs {
            let Some(p) = self.probes.get_mut(&addr) else {
                continue;
            };
            // A deadline seen more than a handshake's time late (`pow.timeout`, and at least a
            // probe timeout): this seed was stalled (stopped, or starved of CPU for that long),
            // so the silence it finds may be its own. A merely busy seed is late by far less.
            let stall = self
                .config
                .pow
                .timeout
                .max(self.config.liveness.probe_timeout);
            let late = [p.link_until, Some(p.deadline)]
                .into_iter()
                .flatten()
                .filter(|t| *t <= now.mono)
                .map(|t| now.mono - t)
                .max();
            if late.is_some_and(|l| l > stall) {
                let late = late.unwrap_or_default();
                self.abstain(
                    addr,
                    &format!("this seed was stalled {late:?} past the check's deadline"),
                );
                continue;
            }
            if p.link_until.is_some_and(|t| t <= now.mono) {
                p.link_until = None;
                self.probe_verdict(addr, "no answer over its link in time", now, out);
            }
            let Some(p) = self.probes.get_mut(&addr) else {
                continue;
            };
            if p.deadline > now.mono {
                continue;
            }
            if p.redial {
                Self::probe_dial(p, now, &self.config, out);
            } else if p.dialing {
                self.probe_dial_failed(addr, "no handshake in time", (false, false), now, out);
            }
        }
    }

    /// Members added by a merge are checked `liveness.misses × liveness.interval` after the
    /// first of them arrives (time for their links to reach this seed, if they are alive and
    /// registered with it).
    fn note_caught_up(&mut self, changes: &[Change], out: &mut Vec<Action>) {
        let Some(caught_up) = &mut self.caught_up else {
            return;
        };
        let first = caught_up.is_empty();
        caught_up.extend(changes.iter().filter_map(|c| match c {
            Change::Added(m) => Some(m.addr),
            Change::Removed(..) => None,
        }));
        if first && !caught_up.is_empty() {
            let lv = &self.config.liveness;
            out.push(Action::timer(lv.interval * lv.misses, Timer::Unlinked));
        }
    }

    /// The members learned from other seeds that have no link to this seed are checked (a
    /// live one answers the dial; a dead one is voted out, as after a report).
    fn check_unlinked(&mut self, now: Now, out: &mut Vec<Action>) {
        let Some(caught_up) = self.caught_up.take() else {
            return;
        };
        let unlinked: Vec<Member> = caught_up
            .iter()
            .filter(|a| !self.peer_conns.contains_key(a))
            .filter_map(|a| self.registry.member(a))
            .collect();
        if !unlinked.is_empty() {
            log::info!(
                "checking {} of {} members learned from other seeds that have no link here",
                unlinked.len(),
                caught_up.len()
            );
        }
        for m in unlinked {
            self.start_probe(m, None, now, out);
        }
    }

    /// Sends the peer list to the other seeds and expires old votes, every `seed.sync_interval`.
    fn sync(&mut self, now: Now, out: &mut Vec<Action>) {
        if self.next_sync.is_some_and(|t| t > now.mono) {
            return;
        }
        let every = self.config.seed.sync_interval;
        self.next_sync = Some(now.mono + every);
        out.push(Action::timer(every, Timer::Sync));
        let to = self.seed_conns();
        if !to.is_empty() {
            for msg in self.sync_msgs() {
                let to = to.clone();
                out.push(Action::Send { to, msg });
            }
        }
        for addr in std::mem::take(&mut self.recheck) {
            if let Some(member) = self.registry.member(&addr) {
                self.start_probe(member, None, now, out);
            }
        }
        for member in self.registry.expire(now.mono, &self.me) {
            // Our vote to remove it found no majority in time (seeds down): it is still
            // listed, so check it again rather than let it linger.
            log::info!(
                "removal vote for {} expired without a majority: checking it again",
                member.addr
            );
            self.start_probe(member, None, now, out);
        }
    }
}

impl Core for SeedCore {
    fn handle(&mut self, event: Event, now: Now, out: &mut Vec<Action>) {
        match event {
            Event::Started => {
                let started = Record::new("started")
                    .field("role", "seed")
                    .field("key", self.key.public_hex())
                    .line(format!(
                        "Seed {} listening ({} seeds configured, majority {})",
                        self.me,
                        self.config.seeds.len(),
                        self.registry.majority()
                    ));
                out.push(started.into());
                let others: Vec<SocketAddr> = self
                    .config
                    .seeds
                    .iter()
                    .copied()
                    .filter(|s| *s != self.me && self.dials(s))
                    .collect();
                for addr in others {
                    self.redial.insert(
                        addr,
                        Redial {
                            at: now.mono,
                            backoff: Backoff::default(),
                        },
                    );
                }
                self.redial_due(now, out);
                self.sync(now, out);
                out.push(Action::timer(WAITING_NOTE, Timer::Waiting));
            }
            Event::Connected { conn, remote } => self.on_connected(conn, remote, now, out),
            Event::Frame { conn, msg } => {
                let Some(link) = self.links.get_mut(&conn) else {
                    return;
                };
                let (addr, kind) = (link.addr, link.kind);
                let member = Member {
                    addr,
                    incarnation: link.incarnation,
                    key: link.key,
                };
                if kind == LinkKind::Peer && !link.rate.allow(now.mono) {
                    let reason = "frames faster than the rate limit".to_string();
                    return self.reject(conn, addr, reason, out);
                }
                match kind {
                    LinkKind::Seed => self.on_seed_frame(conn, addr, msg, now, out),
                    LinkKind::Peer => self.on_peer_frame(conn, member, msg, now, out),
                }
            }
            Event::Closed { conn, reason } => {
                let Some(link) = self.forget(conn) else {
                    return;
                };
                match link.kind {
                    LinkKind::Seed => {
                        log::info!("seed link to {} down: {reason}", link.addr);
                        if self.dials(&link.addr) {
                            self.schedule_redial(link.addr, now, out);
                        }
                    }
                    LinkKind::Peer => {
                        let member = Member {
                            addr: link.addr,
                            incarnation: link.incarnation,
                            key: link.key,
                        };
                        if let Some(p) = self.probes.get_mut(&link.addr) {
                            // The probe's link is gone: the fresh dial decides.
                            p.link_until = None;
                            self.probe_verdict(link.addr, "its link closed", now, out);
                        } else if !link.left && self.registry.contains(&member) {
                            // A registered peer dropped its connection without a goodbye: find
                            // out ourselves whether it is still alive.
                            self.start_probe(member, None, now, out);
                        }
                    }
                }
            }
            Event::DialFailed {
                addr,
                purpose,
                reason,
            } => match purpose {
                Purpose::SeedLink => {
                    self.dialing.remove(&addr);
                    log::debug!("seed {addr} unreachable: {reason}");
                    self.schedule_redial(addr, now, out);
                }
                Purpose::Probe => {
                    if let Some((registering, _)) = self.dial_backs.remove(&addr) {
                        if self.links.contains_key(&registering) {
                            let why = format!(
                                "dial-back to {addr} failed ({reason}): register an address this peer listens on"
                            );
                            self.refuse(registering, addr, why, out);
                        }
                    }
                    let transient = matches!(reason, DialError::Connect(_));
                    let own = matches!(&reason, DialError::Connect(kind) if own_failure(kind));
                    let why = reason.to_string();
                    self.probe_dial_failed(addr, &why, (transient, own), now, out)
                }
                Purpose::Register | Purpose::Neighbour => {}
            },
            Event::Timer(Timer::SeedRedial) => self.redial_due(now, out),
            Event::Timer(Timer::ProbeDeadline) => self.expire_probes(now, out),
            Event::Timer(Timer::Sync) => self.sync(now, out),
            Event::Timer(Timer::Unlinked) => self.check_unlinked(now, out),
            Event::Timer(Timer::Waiting) => {
                if let Some(line) = self.waiting() {
                    out.push(Record::new("waiting").line(line).into());
                    out.push(Action::timer(WAITING_NOTE, Timer::Waiting));
                }
            }
            Event::Timer(_) => {}
            // Seeds offer no application API.
            Event::ApiConnected { .. } | Event::ApiFrame { .. } | Event::Shutdown => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    fn config() -> Config {
        Config::parse(
            "seeds: [\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9003\"]\nliveness: { probe_timeout: 1s }\n",
        )
        .unwrap()
    }

    fn peer(addr: SocketAddr, inc: u64) -> Remote {
        Remote {
            addr,
            role: Role::Peer,
            incarnation: inc,
            key: [0; 32],
            dialed: None,
        }
    }

    fn seed_key(port: u16) -> Arc<NodeKey> {
        let mut secret = [7; 32];
        secret[..2].copy_from_slice(&port.to_be_bytes());
        Arc::new(NodeKey::from_secret(secret))
    }

    /// Now, on a clock that started at the Unix epoch: the test peers' small incarnations
    /// are recent on it.
    fn test_now() -> Now {
        Now {
            mono: std::time::Instant::now(),
            unix_ms: 1_000,
        }
    }

    fn new_seed(port: u16) -> SeedCore {
        let rng = rand::SeedableRng::seed_from_u64(1);
        SeedCore::new(a(port), config(), rng, seed_key(port))
    }

    /// Seed `from`'s signed vote.
    fn vote(from: u16, op: VoteOp, member: Member) -> Msg {
        let signature = seed_key(from).sign(&change_bytes(op, &member));
        Msg::Vote {
            op,
            member,
            signature,
        }
    }

    /// The peer on `conn` sends `Register` and answers the seed's dial-back.
    /// A seed of `seeds` (the first is it) with `limits.registrations_per_ip: per_ip` and
    /// loopback counted.
    fn capped_seed(seeds: &[u16], per_ip: usize) -> SeedCore {
        let list: Vec<String> = seeds.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let capped = Config::parse(&format!(
            "seeds: [{}]\nlimits: {{ loopback_exempt: false, registrations_per_ip: {per_ip} }}\n",
            list.join(", ")
        ))
        .unwrap();
        let rng = rand::SeedableRng::seed_from_u64(1);
        SeedCore::new(a(seeds[0]), capped, rng, seed_key(seeds[0]))
    }

    /// Peer `port` (incarnation 1) connects on `conn`.
    fn connect_peer(s: &mut SeedCore, conn: ConnId, port: u16, now: Now, out: &mut Vec<Action>) {
        let remote = peer(a(port), 1);
        s.handle(Event::Connected { conn, remote }, now, out);
    }

    /// A `Register` on `conn`, and nothing more; `out` holds what it did.
    fn ask_register(s: &mut SeedCore, conn: ConnId, now: Now, out: &mut Vec<Action>) {
        out.clear();
        let msg = Msg::Register;
        s.handle(Event::Frame { conn, msg }, now, out);
    }

    fn register(s: &mut SeedCore, conn: ConnId, now: Now, out: &mut Vec<Action>) {
        s.handle(
            Event::Frame {
                conn,
                msg: Msg::Register,
            },
            now,
            out,
        );
        let link = &s.links[&conn];
        let dialed = out.iter().any(|x| {
            matches!(x, Action::Dial { addr, purpose: Purpose::Probe, key: Some(k) }
                if *addr == link.addr && *k == link.key)
        });
        let back = Remote {
            addr: link.addr,
            role: Role::Peer,
            incarnation: 0,
            key: link.key,
            dialed: Some(Purpose::Probe),
        };
        if dialed {
            s.handle(
                Event::Connected {
                    conn: 1000 + conn,
                    remote: back,
                },
                now,
                out,
            );
        }
    }

    /// Seed 9001 linked to seed 9002 (conn 1), peer 9101 (incarnation 7) connected on conn 2.
    fn seed_with_a_peer() -> (SeedCore, Now) {
        let now = test_now();
        let mut s = new_seed(9001);
        let mut out = vec![];
        let link = Event::Connected {
            conn: 1,
            remote: seed(a(9002)),
        };
        s.handle(link, now, &mut out);
        let p = Event::Connected {
            conn: 2,
            remote: peer(a(9101), 7),
        };
        s.handle(p, now, &mut out);
        (s, now)
    }

    fn seed(addr: SocketAddr) -> Remote {
        Remote {
            addr,
            role: Role::Seed,
            incarnation: 0,
            key: seed_key(addr.port()).public(),
            dialed: None,
        }
    }

    fn events(out: &[Action]) -> Vec<&'static str> {
        out.iter()
            .filter_map(|a| match a {
                Action::Log(r) => Some(r.event),
                _ => None,
            })
            .collect()
    }

    fn sent_to(out: &[Action], conn: ConnId) -> Vec<Msg> {
        out.iter()
            .filter_map(|a| match a {
                Action::Send { to, msg } if to.contains(&conn) => Some(msg.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_smaller_address_dials() {
        let now = test_now();
        let mut s = new_seed(9002);
        let mut out = vec![];
        s.handle(Event::Started, now, &mut out);
        let dials: Vec<_> = out
            .iter()
            .filter_map(|x| match x {
                Action::Dial { addr, .. } => Some(*addr),
                _ => None,
            })
            .collect();
        assert_eq!(dials, vec![a(9003)]);
    }

    #[test]
    fn a_new_registration_must_be_near_the_seeds_clock() {
        let skew = MAX_CLOCK_SKEW.as_millis() as u64;
        let mut s = new_seed(9001);
        let mut out = vec![];
        let mut now = test_now();
        now.unix_ms = 1 + skew + 1;
        let voted_or_dialed = |out: &[Action]| {
            out.iter().any(|x| {
                matches!(
                    x,
                    Action::Dial { .. }
                        | Action::Send {
                            msg: Msg::Vote { .. },
                            ..
                        }
                )
            })
        };
        // Started long before this seed's clock (incarnation 1): told to register anew.
        connect_peer(&mut s, 2, 9101, now, &mut out);
        ask_register(&mut s, 2, now, &mut out);
        assert_eq!(sent_to(&out, 2), vec![Msg::Removed { incarnation: 1 }]);
        assert!(out.contains(&Action::Close { conn: 2 }));
        assert!(!voted_or_dialed(&out));
        // From the future: refused, naming the clock.
        let remote = peer(a(9102), now.unix_ms + skew + 1);
        s.handle(Event::Connected { conn: 3, remote }, now, &mut out);
        ask_register(&mut s, 3, now, &mut out);
        assert!(matches!(&sent_to(&out, 3)[..],
            [Msg::Reject { reason }] if reason.contains("clock")));
        assert!(!voted_or_dialed(&out));
        // Within the skew either way: dialed back, as any registration.
        for (conn, port, inc) in [(4, 9103, now.unix_ms - skew), (5, 9104, now.unix_ms + skew)] {
            let remote = peer(a(port), inc);
            s.handle(Event::Connected { conn, remote }, now, &mut out);
            ask_register(&mut s, conn, now, &mut out);
            assert!(voted_or_dialed(&out), "{port}");
        }
    }

    #[test]
    fn a_listed_member_registers_again_whatever_its_age() {
        let (mut s, mut now) = registered_seed();
        // A day on: peer 9101 (incarnation 1) is listed, so its `Register` (a new link to
        // this seed) is confirmed, with its certificate.
        now.unix_ms += 86_400_000;
        let mut out = vec![];
        ask_register(&mut s, 2, now, &mut out);
        assert!(matches!(&sent_to(&out, 2)[..],
            [Msg::Registered { incarnation: 1, signatures }] if signatures.len() == 2));
    }

    #[test]
    fn registration_commits_only_with_a_second_seed() {
        let (mut s, now) = seed_with_a_peer();
        let mut out = vec![];
        register(&mut s, 2, now, &mut out);
        // Our vote goes to the other seed; nothing is committed yet.
        assert_eq!(
            sent_to(&out, 1),
            vec![vote(
                9001,
                VoteOp::Add,
                Member {
                    addr: a(9101),
                    incarnation: 7,
                    key: [0; 32],
                }
            )]
        );
        assert!(events(&out).is_empty());
        assert!(s.members().is_empty());
        out.clear();
        s.handle(
            Event::Frame {
                conn: 1,
                msg: vote(
                    9002,
                    VoteOp::Add,
                    Member {
                        addr: a(9101),
                        incarnation: 7,
                        key: [0; 32],
                    },
                ),
            },
            now,
            &mut out,
        );
        assert_eq!(events(&out), vec!["registered"]);
        // With the certificate: both seeds' signatures.
        assert!(matches!(&sent_to(&out, 2)[..],
            [Msg::Registered { incarnation, signatures }]
                if *incarnation == 7 && signatures.len() == 2));
        assert_eq!(s.members().len(), 1);
    }

    fn registered_seed() -> (SeedCore, Now) {
        let now = test_now();
        let mut s = new_seed(9001);
        let mut out = vec![];
        s.handle(
            Event::Connected {
                conn: 1,
                remote: seed(a(9002)),
            },
            now,
            &mut out,
        );
        for (conn, p) in [(2, 9101), (3, 9102)] {
            s.handle(
                Event::Connected {
                    conn,
                    remote: peer(a(p), 1),
                },
                now,
                &mut out,
            );
            let member = Member {
                addr: a(p),
                incarnation: 1,
                key: [0; 32],
            };
            s.handle(
                Event::Frame {
                    conn: 1,
                    msg: vote(9002, VoteOp::Add, member),
                },
                now,
                &mut out,
            );
            register(&mut s, conn, now, &mut out);
        }
        assert_eq!(s.members().len(), 2);
        (s, now)
    }

    #[test]
    fn a_report_about_a_live_peer_is_refused() {
        let (mut s, now) = registered_seed();
        let mut out = vec![];
        let text = texts::dead_node(&a(9102), now.unix_ms, &a(9101));
        s.handle(
            Event::Frame {
                conn: 2,
                msg: Msg::DeadNode { text },
            },
            now,
            &mut out,
        );
        assert_eq!(events(&out), vec!["dead_report"]);
        // The seed asks the reported peer itself, over its own connection.
        let probe = sent_to(&out, 3);
        let Some(Msg::LivenessRequest { text }) = probe.first() else {
            panic!("{probe:?}")
        };
        let (ts, sender) = texts::parse_liveness_request(text).unwrap();
        out.clear();
        let reply = texts::liveness_reply(ts, &sender, &a(9102));
        s.handle(
            Event::Frame {
                conn: 3,
                msg: Msg::LivenessReply { text: reply },
            },
            now,
            &mut out,
        );
        assert_eq!(events(&out), vec!["rejected"]);
        out.clear();
        // No vote was cast, even after the probe deadline.
        s.handle(
            Event::Timer(Timer::ProbeDeadline),
            now.after(Duration::from_secs(5)),
            &mut out,
        );
        assert!(!out.iter().any(|x| matches!(
            x,
            Action::Send {
                msg: Msg::Vote { .. },
                ..
            }
        )));
        assert_eq!(s.members().len(), 2);
    }

    #[test]
    fn a_probe_dials_again_within_misses_times_interval_before_it_votes() {
        let (mut s, now) = registered_seed();
        let mut out = vec![];
        let report = || Event::Frame {
            conn: 2,
            msg: Msg::DeadNode {
                text: texts::dead_node(&a(9102), now.unix_ms, &a(9101)),
            },
        };
        s.handle(report(), now, &mut out);
        let at = |secs: u64| now.after(Duration::from_secs(secs));
        let failed = |reason| Event::DialFailed {
            addr: a(9102),
            purpose: Purpose::Probe,
            reason,
        };
        let no_route = || failed(DialError::Connect(std::io::ErrorKind::HostUnreachable));
        let voted = |out: &[Action]| {
            sent_to(out, 1).iter().any(|m| {
                matches!(
                    m,
                    Msg::Vote {
                        op: VoteOp::Remove(RemovalReason::Dead),
                        ..
                    }
                )
            })
        };
        // The link does not answer (1 s); the dial fails on the way: a pause, another dial.
        s.handle(Event::Timer(Timer::ProbeDeadline), at(2), &mut out);
        s.handle(no_route(), at(3), &mut out);
        assert!(!voted(&out));
        out.clear();
        s.handle(Event::Timer(Timer::ProbeDeadline), at(4), &mut out);
        assert_eq!(dials_to(&out, a(9102)), 1, "dialed again");
        // Still within 3 × 13 s of the start: again.
        s.handle(no_route(), at(20), &mut out);
        assert!(!voted(&out), "no vote within the window");
        s.handle(Event::Timer(Timer::ProbeDeadline), at(21), &mut out);
        // Past the window the next failure is the verdict.
        out.clear();
        s.handle(no_route(), at(40), &mut out);
        assert!(voted(&out));
        // A dial with no handshake within pow.timeout is final at once.
        let (mut s, _) = registered_seed();
        s.handle(report(), now, &mut out);
        s.handle(Event::Timer(Timer::ProbeDeadline), at(2), &mut out);
        out.clear();
        s.handle(failed(DialError::TimedOut), at(10), &mut out);
        assert!(voted(&out));
        // And a peer whose link does not answer but whose fresh dial does is alive.
        let (mut s, _) = registered_seed();
        s.handle(report(), now, &mut out);
        s.handle(Event::Timer(Timer::ProbeDeadline), at(2), &mut out);
        out.clear();
        s.handle(
            Event::Connected {
                conn: 9,
                remote: Remote {
                    dialed: Some(Purpose::Probe),
                    ..peer(a(9102), 1)
                },
            },
            at(3),
            &mut out,
        );
        assert!(!voted(&out));
        assert!(events(&out).contains(&"rejected"), "the report is refused");
    }

    #[test]
    fn a_seed_whose_own_dialing_or_scheduling_fails_abstains_and_checks_again() {
        let (mut s, now) = registered_seed();
        let mut out = vec![];
        let at = |secs: u64| now.after(Duration::from_secs(secs));
        let report = |s: &mut SeedCore, out: &mut Vec<Action>| {
            let text = texts::dead_node(&a(9102), now.unix_ms, &a(9101));
            let msg = Msg::DeadNode { text };
            s.handle(Event::Frame { conn: 2, msg }, now, out);
        };
        let voted = |out: &[Action]| {
            sent_to(out, 1)
                .iter()
                .any(|m| matches!(m, Msg::Vote { .. }))
        };
        // This seed's network is down: every dial fails here, past the whole window.
        report(&mut s, &mut out);
        s.handle(Event::Timer(Timer::ProbeDeadline), at(2), &mut out);
        let down = || Event::DialFailed {
            addr: a(9102),
            purpose: Purpose::Probe,
            reason: DialError::Connect(std::io::ErrorKind::NetworkDown),
        };
        s.handle(down(), at(40), &mut out);
        assert!(!voted(&out), "no vote on its own failure");
        // It checks again at its next sync tick, and votes once its dial fails for the peer's
        // reason.
        out.clear();
        s.handle(Event::Timer(Timer::Sync), at(45), &mut out);
        assert_eq!(dials_to(&out, a(9102)), 1, "checked again");
        let later = now.after(Duration::from_secs(47));
        s.handle(Event::Timer(Timer::ProbeDeadline), later, &mut out);
        let refused = Event::DialFailed {
            addr: a(9102),
            purpose: Purpose::Probe,
            reason: DialError::Refused,
        };
        s.handle(refused, later, &mut out);
        assert!(voted(&out));

        // A seed stalled (stopped, overloaded) far past a check's deadline abstains too.
        let (mut s, _) = registered_seed();
        report(&mut s, &mut out);
        out.clear();
        s.handle(Event::Timer(Timer::ProbeDeadline), at(30), &mut out);
        assert!(!voted(&out), "no vote after a stall");
        assert_eq!(dials_to(&out, a(9102)), 0);
    }

    fn dials_to(out: &[Action], to: SocketAddr) -> usize {
        out.iter()
            .filter(
                |x| matches!(x, Action::Dial { addr, purpose: Purpose::Probe, .. } if *addr == to),
            )
            .count()
    }

    #[test]
    fn a_silent_peer_is_voted_out_with_a_second_seed() {
        let (mut s, now) = registered_seed();
        let mut out = vec![];
        let text = texts::dead_node(&a(9102), now.unix_ms, &a(9101));
        s.handle(
            Event::Frame {
                conn: 2,
                msg: Msg::DeadNode { text },
            },
            now,
            &mut out,
        );
        // Checked over its link and by a fresh dial at once.
        assert_eq!(dials_to(&out, a(9102)), 1);
        assert!(sent_to(&out, 3)
            .iter()
            .any(|m| matches!(m, Msg::LivenessRequest { .. })));
        out.clear();
        // No answer over its link: no vote while the dial is out.
        s.handle(
            Event::Timer(Timer::ProbeDeadline),
            now.after(Duration::from_secs(2)),
            &mut out,
        );
        assert!(sent_to(&out, 1).is_empty(), "no vote yet");
        out.clear();
        // Nothing listens there: dead, no second try.
        s.handle(
            Event::DialFailed {
                addr: a(9102),
                purpose: Purpose::Probe,
                reason: DialError::Refused,
            },
            now.after(Duration::from_secs(2)),
            &mut out,
        );
        let dead = Member {
            addr: a(9102),
            incarnation: 1,
            key: [0; 32],
        };
        let votes: Vec<Msg> = sent_to(&out, 1)
            .into_iter()
            .filter(|m| matches!(m, Msg::Vote { .. }))
            .collect();
        assert_eq!(
            votes,
            vec![vote(9001, VoteOp::Remove(RemovalReason::Dead), dead)]
        );
        assert_eq!(s.members().len(), 2, "one seed alone removes nothing");
        out.clear();
        s.handle(
            Event::Frame {
                conn: 1,
                msg: vote(9002, VoteOp::Remove(RemovalReason::Dead), dead),
            },
            now.after(Duration::from_secs(2)),
            &mut out,
        );
        assert_eq!(events(&out), vec!["removed"]);
        assert_eq!(s.members().len(), 1);
        // A later report of the same death is a no-op.
        out.clear();
        let text = texts::dead_node(&a(9102), now.unix_ms, &a(9101));
        s.handle(
            Event::Frame {
                conn: 2,
                msg: Msg::DeadNode { text },
            },
            now,
            &mut out,
        );
        assert_eq!(events(&out), vec!["dead_report"]);
        assert!(!out
            .iter()
            .any(|x| matches!(x, Action::Dial { .. } | Action::Send { .. })));
    }

    #[test]
    fn forged_and_malformed_reports_close_the_connection() {
        let (mut s, now) = registered_seed();
        let mut out = vec![];
        let text = texts::dead_node(&a(9102), now.unix_ms, &a(9999));
        s.handle(
            Event::Frame {
                conn: 2,
                msg: Msg::DeadNode { text },
            },
            now,
            &mut out,
        );
        assert_eq!(events(&out), vec!["rejected"]);
        assert!(out.contains(&Action::Close { conn: 2 }));
        out.clear();
        s.handle(
            Event::Frame {
                conn: 3,
                msg: Msg::DeadNode {
                    text: "Dead Node:junk".into(),
                },
            },
            now,
            &mut out,
        );
        assert!(out.contains(&Action::Close { conn: 3 }));
    }

    #[test]
    fn a_leave_is_a_vote_with_reason_left() {
        let (mut s, now) = registered_seed();
        let mut out = vec![];
        s.handle(
            Event::Frame {
                conn: 2,
                msg: Msg::Leave,
            },
            now,
            &mut out,
        );
        let m = Member {
            addr: a(9101),
            incarnation: 1,
            key: [0; 32],
        };
        assert_eq!(
            sent_to(&out, 1),
            vec![vote(9001, VoteOp::Remove(RemovalReason::Left), m)]
        );
        out.clear();
        s.handle(
            Event::Frame {
                conn: 1,
                msg: vote(9002, VoteOp::Remove(RemovalReason::Left), m),
            },
            now,
            &mut out,
        );
        let Some(Action::Log(r)) = out.iter().find(|x| matches!(x, Action::Log(_))) else {
            panic!()
        };
        assert_eq!(r.event, "removed");
        assert_eq!(r.get("reason").unwrap(), "left");
        // Its connection closing afterwards starts no probe.
        out.clear();
        s.handle(
            Event::Closed {
                conn: 2,
                reason: crate::node::CloseReason::EndOfStream,
            },
            now,
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn a_new_seed_link_gets_the_list_and_open_votes() {
        let (mut s, now) = registered_seed();
        let mut out = vec![];
        s.handle(
            Event::Connected {
                conn: 4,
                remote: peer(a(9103), 1),
            },
            now,
            &mut out,
        );
        register(&mut s, 4, now, &mut out);
        out.clear();
        s.handle(
            Event::Connected {
                conn: 5,
                remote: seed(a(9003)),
            },
            now,
            &mut out,
        );
        let msgs = sent_to(&out, 5);
        assert!(matches!(&msgs[0], Msg::Sync { certs } if certs.len() == 2));
        let open = Member {
            addr: a(9103),
            incarnation: 1,
            key: [0; 32],
        };
        assert!(msgs.contains(&vote(9001, VoteOp::Add, open)));
    }

    #[test]
    fn another_key_at_a_registered_address_cannot_register_leave_or_take_its_connection() {
        let now = test_now();
        let mut s = new_seed(9001);
        let mut out = vec![];
        let connected = |conn, remote| Event::Connected { conn, remote };
        let frame = |conn, msg| Event::Frame { conn, msg };
        s.handle(connected(1, seed(a(9002))), now, &mut out);
        s.handle(connected(2, peer(a(9101), 1)), now, &mut out);
        register(&mut s, 2, now, &mut out);
        let holder = Member {
            addr: a(9101),
            incarnation: 1,
            key: [0; 32],
        };
        let op = VoteOp::Add;
        s.handle(frame(1, vote(9002, op, holder)), now, &mut out);
        assert_eq!(s.members(), vec![holder]);
        out.clear();

        // Another key claims the address, with a newer incarnation.
        let thief = || Remote {
            key: [9; 32],
            ..peer(a(9101), 5)
        };
        s.handle(connected(3, thief()), now, &mut out);
        assert!(
            !out.iter().any(|x| matches!(x, Action::Close { conn: 2 })),
            "the holder keeps its own connection"
        );
        s.handle(frame(3, Msg::Leave), now, &mut out);
        assert!(out.iter().any(|x| matches!(x, Action::Close { conn: 3 })));
        s.handle(connected(4, thief()), now, &mut out);
        s.handle(frame(4, Msg::Register), now, &mut out);
        assert!(
            matches!(&sent_to(&out, 4)[..], [Msg::Reject { reason }] if reason.contains("another key"))
        );
        assert!(
            sent_to(&out, 1).is_empty(),
            "no vote about the address, for either key"
        );
        // The holder is checked over its own connection, in case it is the one that is gone.
        assert!(sent_to(&out, 2)
            .iter()
            .any(|m| matches!(m, Msg::LivenessRequest { .. })));
        assert_eq!(s.members(), vec![holder]);
    }

    #[test]
    fn a_sync_needs_certificates_signed_by_a_majority() {
        let now = test_now();
        let mut s = new_seed(9001);
        let mut out = vec![];
        s.handle(
            Event::Connected {
                conn: 1,
                remote: seed(a(9002)),
            },
            now,
            &mut out,
        );
        let made_up = Member {
            addr: a(9199),
            incarnation: 1,
            key: [5; 32],
        };
        let signed_by = |ports: &[u16]| crate::wire::Certificate {
            op: VoteOp::Add,
            member: made_up,
            signatures: ports
                .iter()
                .map(|p| {
                    (
                        a(*p),
                        seed_key(*p).sign(&change_bytes(VoteOp::Add, &made_up)),
                    )
                })
                .collect(),
        };
        // Seed 9002 alone, even naming itself twice, or with a signature it forged for 9003.
        let mut forged = signed_by(&[9002]);
        forged.signatures.push((a(9003), [1; 64]));
        for cert in [signed_by(&[9002]), signed_by(&[9002, 9002]), forged] {
            out.clear();
            let sync = Msg::Sync { certs: vec![cert] };
            s.handle(Event::Frame { conn: 1, msg: sync }, now, &mut out);
            assert!(s.members().is_empty());
            assert_eq!(events(&out), vec!["rejected"]);
        }
        // Signed by 9002 and by us (we never voted, but our key signed it): a majority.
        out.clear();
        let cert = signed_by(&[9001, 9002]);
        s.handle(
            Event::Frame {
                conn: 1,
                msg: Msg::Sync { certs: vec![cert] },
            },
            now,
            &mut out,
        );
        assert_eq!(s.members(), vec![made_up]);
        assert_eq!(events(&out), vec!["registered"]);
    }

    #[test]
    fn members_learned_from_other_seeds_without_a_link_here_are_checked_once() {
        let now = test_now();
        let mut s = new_seed(9001);
        let mut out = vec![];
        let remote = seed(a(9002));
        s.handle(Event::Connected { conn: 1, remote }, now, &mut out);
        let member = |port: u16| Member {
            addr: a(port),
            incarnation: 1,
            key: [port as u8; 32],
        };
        let cert = |m: Member| crate::wire::Certificate {
            op: VoteOp::Add,
            member: m,
            signatures: [9001, 9002]
                .iter()
                .map(|p| (a(*p), seed_key(*p).sign(&change_bytes(VoteOp::Add, &m))))
                .collect(),
        };
        // Two members registered while this seed was down arrive in a Sync; the timer to
        // check them is set once.
        out.clear();
        let certs = vec![cert(member(9101)), cert(member(9102))];
        s.handle(
            Event::Frame {
                conn: 1,
                msg: Msg::Sync { certs },
            },
            now,
            &mut out,
        );
        let timers = |out: &[Action]| {
            out.iter()
                .filter(|x| {
                    matches!(
                        x,
                        Action::SetTimer {
                            timer: Timer::Unlinked,
                            ..
                        }
                    )
                })
                .count()
        };
        assert_eq!(timers(&out), 1);
        // One of them links to this seed meanwhile.
        out.clear();
        let mut remote = peer(a(9102), 1);
        remote.key = member(9102).key;
        s.handle(Event::Connected { conn: 2, remote }, now, &mut out);
        s.handle(
            Event::Frame {
                conn: 2,
                msg: Msg::Register,
            },
            now,
            &mut out,
        );
        assert_eq!(dials_to(&out, a(9102)), 0, "its own registration, no check");
        // Time is up: the one with no link here is checked, the other is not.
        out.clear();
        s.handle(Event::Timer(Timer::Unlinked), now, &mut out);
        assert_eq!(dials_to(&out, a(9101)), 1);
        assert_eq!(dials_to(&out, a(9102)), 0);
        // Once only: later merges do not start another round.
        out.clear();
        let certs = vec![cert(member(9103))];
        s.handle(
            Event::Frame {
                conn: 1,
                msg: Msg::Sync { certs },
            },
            now,
            &mut out,
        );
        assert_eq!(timers(&out), 0);
        s.handle(Event::Timer(Timer::Unlinked), now, &mut out);
        assert_eq!(dials_to(&out, a(9103)), 0);
    }

    #[test]
    fn a_registration_is_voted_only_once_the_dial_back_finds_the_peer() {
        let (mut s, now) = seed_with_a_peer();
        let mut out = vec![];
        s.handle(
            Event::Frame {
                conn: 2,
                msg: Msg::Register,
            },
            now,
            &mut out,
        );
        assert!(sent_to(&out, 1).is_empty(), "no vote before the dial-back");
        assert!(out.iter().any(|x| matches!(x,
            Action::Dial { addr, purpose: Purpose::Probe, key: Some(_) } if *addr == a(9101))));
        // The repeated Register does not dial again.
        out.clear();
        s.handle(
            Event::Frame {
                conn: 2,
                msg: Msg::Register,
            },
            now,
            &mut out,
        );
        assert!(!out.iter().any(|x| matches!(x, Action::Dial { .. })));
        // Nobody answers there: refused, with the reason, and no vote.
        let failed = Event::DialFailed {
            addr: a(9101),
            purpose: Purpose::Probe,
            reason: crate::node::DialError::Refused,
        };
        s.handle(failed, now, &mut out);
        assert!(
            matches!(&sent_to(&out, 2)[..], [Msg::Reject { reason }] if reason.contains("dial-back"))
        );
        assert!(out.contains(&Action::Close { conn: 2 }));
        assert!(sent_to(&out, 1).is_empty());
        assert!(s.members().is_empty());
    }

    #[test]
    fn registrations_per_ip_are_capped_unless_loopback_is_exempt() {
        let now = test_now();
        let mut s = capped_seed(&[9001], 1);
        let mut out = vec![];
        connect_peer(&mut s, 2, 9101, now, &mut out);
        register(&mut s, 2, now, &mut out);
        assert_eq!(s.members().len(), 1, "one seed of one: committed");
        // A second address on the same IP is refused; the first may register again.
        connect_peer(&mut s, 3, 9102, now, &mut out);
        ask_register(&mut s, 3, now, &mut out);
        assert!(matches!(&sent_to(&out, 3)[..],
            [Msg::Reject { reason }] if reason.contains("registrations_per_ip")));
        ask_register(&mut s, 2, now, &mut out);
        assert!(matches!(&sent_to(&out, 2)[..], [Msg::Registered { .. }]));
        assert_eq!(s.members().len(), 1);
    }

    #[test]
    fn registrations_in_flight_count_against_the_caps() {
        // Three seeds, so nothing commits on this seed's vote alone.
        let now = test_now();
        let mut s = capped_seed(&[9001, 9002, 9003], 1);
        let mut out = vec![];
        connect_peer(&mut s, 2, 9101, now, &mut out);
        connect_peer(&mut s, 3, 9102, now, &mut out);
        // The first is being dialed back: the second, from the same IP, is refused.
        ask_register(&mut s, 2, now, &mut out);
        assert!(out
            .iter()
            .any(|x| matches!(x, Action::Dial { addr, .. } if *addr == a(9101))));
        ask_register(&mut s, 3, now, &mut out);
        assert!(matches!(&sent_to(&out, 3)[..],
            [Msg::Reject { reason }] if reason.contains("registrations_per_ip")));
        // The first answers its dial-back: this seed votes for it (not listed yet, one vote
        // of three), and the second is still refused.
        s.handle(
            Event::Connected {
                conn: 4,
                remote: Remote {
                    dialed: Some(Purpose::Probe),
                    ..peer(a(9101), 1)
                },
            },
            now,
            &mut out,
        );
        assert!(s.members().is_empty());
        // (The refusal closed the second's connection: it connects again.)
        connect_peer(&mut s, 5, 9102, now, &mut out);
        ask_register(&mut s, 5, now, &mut out);
        assert!(matches!(&sent_to(&out, 5)[..],
            [Msg::Reject { reason }] if reason.contains("registrations_per_ip")));
    }
}
