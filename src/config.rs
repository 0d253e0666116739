//! `seeds.yaml`: the schema, the defaults and the validation that turns the file into a
//! [`Config`].
//!
//! Every leaf is read as a YAML scalar with its position and parsed here, so that each error
//! names the key *and* the line (`gossip.interval: bad duration "5x" (line 3)`). Unknown keys
//! are errors. This module reads no sockets and starts nothing: a config that fails here
//! leaves nothing half-started.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A configuration error: one line a user can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// How a peer picks its neighbours from the union of the seeds' peer lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Uniformly at random.
    Random,
    /// Preferential attachment: a peer with more neighbours is more likely to be chosen.
    PowerLaw,
}

/// `gossip.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GossipMode {
    /// Every neighbour but the sender gets every new item (the assignment's rule).
    Flood,
    /// Whole items along a spanning tree, ids to the other neighbours (`peer::tree`).
    Tree,
    /// Tree mode whose tree hangs from the oldest peer, each peer by its nearest neighbour
    /// (`peer::tree`, the rooted shape): the same for every origin, not shaped by prunes.
    Rooted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipConfig {
    /// Time between two messages a peer generates.
    pub interval: Duration,
    /// How many messages each peer generates.
    pub count: u32,
    /// Bound on the message list (ids remembered for de-duplication); oldest forgotten first.
    pub message_list_capacity: usize,
    /// Largest payload of a gossip item, in bytes: a neighbour that sends a larger one is cut
    /// off, a local client that announces one is closed.
    pub max_item: usize,
    /// Frames for a connection that sent less than a window ago wait and go out together
    /// when the window ends: a busy link sends one segment per window instead of one per
    /// frame, an idle one sends at once. The window is at least this long (default zero:
    /// natural batching, nothing held on a quiet link) and grows with the link's rate of
    /// pushes (see `outbox::Batching`) up to `max_batch_window`. Zero (both) never holds.
    pub batch_window: Duration,
    pub max_batch_window: Duration,
    /// How items spread: the assignment's flooding, Plumtree's tree push, or a tree push
    /// along a tree rooted at the oldest peer.
    pub mode: GossipMode,
    /// Tree mode: how long an id announced by a lazy neighbour may stay missing before it is
    /// grafted.
    pub graft_timeout: Duration,
    /// Time between two catch-up rounds (each with one random neighbour); zero: no catch-up.
    pub sync_interval: Duration,
    /// Items kept for catch-up: at most this many, this old, and this many payload bytes.
    pub history: usize,
    pub history_age: Duration,
    pub history_bytes: usize,
    /// Payload bytes one catch-up round sends one neighbour at most.
    pub sync_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Time between two liveness requests to each neighbour.
    pub interval: Duration,
    /// Consecutive unanswered requests after which a neighbour is reported dead.
    pub misses: u32,
    /// How long a seed waits for a reported peer to answer its own probe.
    pub probe_timeout: Duration,
    /// A liveness request still unanswered this long after it was sent is a miss.
    pub reply_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Neighbours a peer connects to itself (inbound links may add more).
    pub max_neighbours: usize,
    pub selection: Selection,
    /// Most neighbour links others opened to us (`peer.max_inbound`, default four times
    /// `max_neighbours`: at twice, well-connected peers fill up and newcomers end up linked
    /// only to each other, out of reach of the history: BENCHMARKS, "Inbound neighbour cap"); more are refused with
    /// `Reject`.
    pub max_inbound: usize,
    /// Most neighbours from one /24 (IPv4) or /48 (IPv6) subnet, dialed or accepted; loopback
    /// is exempt while `limits.loopback_exempt` is true.
    pub max_per_subnet: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowConfig {
    /// Leading zero bits the connector's hash must have (when calm).
    pub difficulty: u8,
    /// Deadline for the whole handshake, solving included.
    pub timeout: Duration,
    /// The difficulty rises one step per second in which more than this many handshakes
    /// started, and falls one step per calm second.
    pub flood_threshold: u32,
    /// Highest difficulty a flood can drive it to.
    pub max_difficulty: u8,
}

/// Bounds on what a remote can make a node hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body accepted; checked before anything is allocated.
    pub max_frame: usize,
    /// Open connections in total (all roles).
    pub max_connections: usize,
    /// Open connections from one remote IP. Loopback is exempt so one host can run a
    /// demo of hundreds of peers.
    pub max_connections_per_ip: usize,
    /// Connections still in the proof-of-work handshake.
    pub max_pending_handshakes: usize,
    /// Frames queued for one connection's writer; a remote that does not read is dropped
    /// when its queue is full instead of stalling everyone else.
    pub outbound_queue: usize,
    /// Bytes queued for one connection, at most: with large items a frame count alone would
    /// let a few remotes that do not read hold gigabytes.
    pub max_queue_bytes: usize,
    /// A frame that has started must be complete within this time.
    pub read_timeout: Duration,
    /// A blocked write fails after this time and closes the connection.
    pub write_timeout: Duration,
    /// New gossip items one neighbour may send per second (bursts of twice that); repeats of
    /// items already seen may come four times faster. A neighbour flooding faster is
    /// disconnected.
    pub gossip_per_second: u32,
    /// Other frames (liveness, reports, list requests) one connection may send per second
    /// (bursts of twice that).
    pub control_per_second: u32,
    /// Stack of every thread a node starts, in KiB.
    pub thread_stack_kib: usize,
    /// Whether loopback addresses are exempt from `max_connections_per_ip` and from the check
    /// that a node's claimed address is on the IP it connects from.
    pub loopback_exempt: bool,
    /// Most listed peers on one IP address (loopback exempt while `loopback_exempt`).
    pub registrations_per_ip: usize,
    /// Most listed peers in one public /24 (IPv4) or /48 (IPv6); private ranges are exempt.
    pub registrations_per_subnet: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedConfig {
    /// How often seeds exchange their full peer lists (anti-entropy), so a seed that
    /// missed a vote or was down catches up.
    pub sync_interval: Duration,
    /// Most entries in one peer list sent to a peer: a random sample when more are registered.
    pub max_peer_list: usize,
    /// How long a vote that has not reached a majority stays open. A seed whose own removal
    /// vote expires while the peer is still listed checks the peer again.
    pub vote_ttl: Duration,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub seeds: Vec<SocketAddr>,
    /// The keys `seeds.yaml` gives for seeds (those listed without one are pinned on first
    /// use).
    pub seed_keys: BTreeMap<SocketAddr, crate::wire::PublicKey>,
    pub gossip: GossipConfig,
    pub liveness: LivenessConfig,
    pub peer: PeerConfig,
    pub pow: PowConfig,
    pub limits: Limits,
    pub seed: SeedConfig,
    /// How often each node writes a `stats` event.
    pub stats_interval: Duration,
    /// Where a peer serves the application API (`--api-addr` overrides). Meant for a config
    /// file used by one peer: two peers on one host cannot share the address.
    pub api_addr: Option<SocketAddr>,
    pub api: ApiLimits,
}

/// The application API's own budget: it never takes from the P2P connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLimits {
    /// Local clients connected at once.
    pub max_clients: usize,
    /// Notifications one client may leave unanswered; past that it is sent no more.
    pub max_pending: usize,
    /// A client that leaves a notification unanswered this long is disconnected.
    pub validation_timeout: Duration,
}

impl Config {
    /// ⌊n/2⌋+1 of all configured seeds.
    pub fn majority(&self) -> usize {
        self.seeds.len() / 2 + 1
    }

    /// Reads and validates a file. Errors name the file, the key and the line.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        Config::parse(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses and validates YAML text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| {
            // The first line of saphyr's message is "error: line L column C: what"; the rest
            // is a source snippet, which does not fit a one-line error.
            let first = e.to_string();
            let first = first.lines().next().unwrap_or("invalid YAML").to_string();
            let first = first.trim_start_matches("error: ");
            // An entry of `seeds` that is neither form: say what the forms are.
            if let Some(at) = first.strip_suffix("data did not match any variant of untagged enum RawSeedEntry") {
                return ConfigError(format!(
                    "seeds: an entry must be \"IP:PORT\" or {{ addr: \"IP:PORT\", key: \"<64 hex characters>\" }} ({})",
                    at.trim().trim_end_matches(':')
                ));
            }
            ConfigError(first.to_string())
        })?;
        raw.validate()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::parse("seeds: [\"127.0.0.1:9001\"]").expect("the defaults are valid")
    }
}

type Leaf = Option<Spanned<String>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    seeds: Option<Spanned<Vec<Spanned<RawSeedEntry>>>>,
    gossip: Option<RawGossip>,
    liveness: Option<RawLiveness>,
    peer: Option<RawPeer>,
    pow: Option<RawPow>,
    limits: Option<RawLimits>,
    seed: Option<RawSeed>,
    stats: Option<RawStats>,
    api: Option<RawApi>,
}

/// A seed as `"ip:port"` or as `{ addr: "ip:port", key: "<hex>" }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSeedEntry {
    Addr(String),
    Keyed(RawKeyedSeed),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyedSeed {
    addr: String,
    key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApi {
    addr: Leaf,
    max_clients: Leaf,
    max_pending: Leaf,
    validation_timeout: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawGossip {
    interval: Leaf,
    count: Leaf,
    message_list_capacity: Leaf,
    max_item: Leaf,
    batch_window: Leaf,
    max_batch_window: Leaf,
    mode: Leaf,
    graft_timeout: Leaf,
    sync_interval: Leaf,
    history: Leaf,
    history_age: Leaf,
    history_bytes: Leaf,
    sync_bytes: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLiveness {
    interval: Leaf,
    misses: Leaf,
    probe_timeout: Leaf,
    reply_timeout: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    max_neighbours: Leaf,
    selection: Leaf,
    max_inbound: Leaf,
    max_per_subnet: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPow {
    difficulty: Leaf,
    timeout: Leaf,
    flood_threshold: Leaf,
    max_difficulty: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_frame: Leaf,
    max_connections: Leaf,
    max_connections_per_ip: Leaf,
    max_pending_handshakes: Leaf,
    outbound_queue: Leaf,
    max_queue_bytes: Leaf,
    read_timeout: Leaf,
    write_timeout: Leaf,
    gossip_per_second: Leaf,
    control_per_second: Leaf,
    thread_stack_kib: Leaf,
    loopback_exempt: Leaf,
    registrations_per_ip: Leaf,
    registrations_per_subnet: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSeed {
    sync_interval: Leaf,
    max_peer_list: Leaf,
    vote_ttl: Leaf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStats {
    interval: Leaf,
}

/// Defaults, each with the reason for its value.
pub mod defaults {
    /// Local API clients at once: a handful of applications per peer is the use; 64 leaves
    /// room and keeps their threads (two each) far below the P2P budget.
    pub const API_MAX_CLIENTS: usize = 64;
    /// A client that answers promptly never holds more than a few; 256 absorbs a burst.
    pub const API_MAX_PENDING: usize = 256;
    /// A validation is a local check: seconds are plenty, and an item waits no longer.
    pub const API_VALIDATION_TIMEOUT: Duration = Duration::from_secs(5);
    use std::time::Duration;
    /// The assignment's 5 s between generated messages.
    pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(5);
    /// The assignment's 10 messages per peer.
    pub const GOSSIP_COUNT: u32 = 10;
    /// Ten minutes of default traffic from 1,000 peers is 10 × 1,000 = 10,000 ids; twice that
    /// leaves room for application items. About 100 bytes an entry: ~2 MiB at most.
    pub const MESSAGE_LIST_CAPACITY: usize = 20_000;
    /// The largest item an API client can announce (a 16-bit message size) fits; a megabyte
    /// item would cost every peer a megabyte per neighbour.
    pub const GOSSIP_MAX_ITEM: usize = 64 * 1024;
    /// Natural batching: a quiet link holds nothing (a frame goes at once when nothing is
    /// being written), and the window grows from zero with the square of the link's frame
    /// rate, so only a busy link holds its frames (see BENCHMARKS.md, "Natural batching").
    pub const BATCH_WINDOW: Duration = Duration::ZERO;
    /// The window a busy link grows to (see `outbox::Batching` and BENCHMARKS.md, section
    /// 4): at 1,000 messages/s in a 100-peer network a link carries about 550 frames/s, a
    /// hundred per window.
    pub const BUSY_BATCH_WINDOW: Duration = Duration::from_millis(200);
    /// Catch-up: a round every 2 s with one neighbour; a newcomer holds the last 10,000 items
    /// (or 10 minutes) within seconds.
    /// Tree mode: a push path takes milliseconds on a LAN; 100 ms before grafting leaves room
    /// for a busy machine without making a repair slow.
    pub const GRAFT_TIMEOUT: Duration = Duration::from_millis(100);
    pub const SYNC_INTERVAL: Duration = Duration::from_secs(2);
    pub const HISTORY: usize = 10_000;
    pub const HISTORY_AGE: Duration = Duration::from_secs(600);
    /// 10,000 items of the assignment are under 1 MiB; 64 MiB leaves room for application
    /// items and bounds what large ones can cost.
    pub const HISTORY_BYTES: usize = 64 << 20;
    /// A round sends at most 256 KiB to one neighbour: a few thousand small items.
    pub const SYNC_BYTES: usize = 256 << 10;
    /// Upper bound on either window key.
    pub const MAX_BATCH_WINDOW: Duration = Duration::from_secs(1);
    /// The assignment's 13 s.
    pub const LIVENESS_INTERVAL: Duration = Duration::from_secs(13);
    /// The assignment's three misses.
    pub const LIVENESS_MISSES: u32 = 3;
    /// A live peer answers a seed's probe in milliseconds; 3 s tolerates a busy machine.
    pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
    /// Same reasoning as the probe: a live neighbour answers in milliseconds.
    pub const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
    pub const MAX_NEIGHBOURS: usize = 4;
    /// About a million hashes: a fraction of a second for an honest joiner, a real cost for
    /// someone opening thousands of connections (see README for the measured time).
    pub const POW_DIFFICULTY: u8 = 20;
    pub const POW_TIMEOUT: Duration = Duration::from_secs(10);
    /// Room for a peer list of thousands of peers and a 64 KiB application item.
    pub const MAX_FRAME: usize = 1 << 20;
    pub const MAX_CONNECTIONS: usize = 1024;
    pub const MAX_CONNECTIONS_PER_IP: usize = 32;
    pub const MAX_PENDING_HANDSHAKES: usize = 64;
    /// Enough to absorb a burst of gossip; a neighbour that falls this far behind is dropped.
    pub const OUTBOUND_QUEUE: usize = 4096;
    /// Room for 64 of the largest items, or the frame bound's worth of small ones.
    pub const MAX_QUEUE_BYTES: usize = 4 << 20;
    pub const READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const SEED_SYNC_INTERVAL: Duration = Duration::from_secs(2);
    pub const SEED_VOTE_TTL: Duration = Duration::from_secs(120);
    /// A joining peer picks 4 neighbours: a sample of 256 gives it a wide choice, keeps the
    /// list frame near 6 KiB however large the network, and keeps the seeds' work per join
    /// from growing with the network (a full list made joining quadratic).
    pub const SEED_MAX_PEER_LIST: usize = 256;
    /// Far above what default traffic needs (a message every 5 s per peer) and above the
    /// 3,000 new items a second a 100-peer network is benchmarked at in tree mode (a link of
    /// the tree carries every item; the egress budget is 90% of this).
    pub const GOSSIP_PER_SECOND: u32 = 5000;
    /// An honest connection sends a liveness request every interval and rare reports.
    pub const CONTROL_PER_SECOND: u32 = 50;
    /// Threads run small loops; 256 KiB keeps hundreds of local peers cheap.
    pub const THREAD_STACK_KIB: usize = 256;
    /// 500 local peers joining in ten seconds make about 100 handshakes per second in all,
    /// spread over the seeds; a flood is well above that.
    pub const POW_FLOOD_THRESHOLD: u32 = 100;
    /// 2^6 = 64 times the default cost: seconds per connection for a flooder.
    pub const POW_MAX_DIFFICULTY: u8 = 26;
    pub const STATS_INTERVAL: Duration = Duration::from_secs(10);
}

fn at(leaf: &Spanned<String>) -> String {
    format!("(line {})", leaf.referenced.line())
}

fn duration(key: &str, leaf: &Leaf, default: Duration) -> Result<Duration, ConfigError> {
    let d = duration_or_zero(key, leaf, default)?;
    match leaf {
        Some(leaf) if d.is_zero() => Err(ConfigError(format!(
            "{key}: must be greater than zero, got \"{}\" {}",
            leaf.value,
            at(leaf)
        ))),
        _ => Ok(d),
    }
}

/// Refuses a duration above `max` (a window that long would hold every frame, liveness
/// replies included, for ages).
fn at_most(key: &str, leaf: &Leaf, d: Duration, max: Duration) -> Result<Duration, ConfigError> {
    match leaf {
        Some(leaf) if d > max => Err(ConfigError(format!(
            "{key}: at most {max:?}, got \"{}\" {}",
            leaf.value,
            at(leaf)
        ))),
        _ => Ok(d),
    }
}

fn duration_or_zero(key: &str, leaf: &Leaf, default: Duration) -> Result<Duration, ConfigError> {
    let Some(leaf) = leaf else { return Ok(default) };
    match parse_duration(leaf.value.trim()) {
        Some(d) => Ok(d),
        None => Err(ConfigError(format!(
            "{key}: bad duration \"{}\", expected a number with a unit such as 5s, 200ms, 2m {}",
            leaf.value,
            at(leaf)
        ))),
    }
}

/// `200ms`, `5s`, `2m`, `1h`; whole numbers only.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

fn number<T>(key: &str, leaf: &Leaf, default: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let Some(leaf) = leaf else { return Ok(default) };
    match leaf.value.trim().parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(ConfigError(format!(
            "{key}: expected a whole number from {min} to {max}, got \"{}\" {}",
            leaf.value,
            at(leaf)
        ))),
    }
}

fn socket_addr(key: &str, leaf: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
    leaf.value.trim().parse().map_err(|_| {
        ConfigError(format!(
            "{key}: malformed address \"{}\", expected IP:PORT such as 127.0.0.1:9001 or [::1]:9001 {}",
            leaf.value,
            at(leaf)
        ))
    })
}

/// A seed as `IP:PORT`, or as `HOST:PORT` resolved now (an IPv4 address first if the name has
/// one). A name that does not resolve is an error naming it: a network cannot start with a
/// seed nobody can find.
fn seed_addr(leaf: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
    let text = leaf.value.trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    let name_and_port = text.rsplit_once(':').filter(|(host, port)| {
        !host.is_empty()
            && port.parse::<u16>().is_ok()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    });
    let Some((host, port)) = name_and_port else {
        return socket_addr("seeds", leaf);
    };
    let port: u16 = port.parse().expect("checked above");
    let found: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map(|it| it.collect())
        .unwrap_or_default();
    found
        .iter()
        .find(|a| a.is_ipv4())
        .or(found.first())
        .copied()
        .ok_or_else(|| {
            ConfigError(format!(
                "seeds: host name \"{host}\" in \"{}\" does not resolve {}",
                leaf.value,
                at(leaf)
            ))
        })
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        use defaults::*;
        let Some(seed_list) = self.seeds else {
            return Err(ConfigError(
                "seeds: missing; list at least one seed as IP:PORT".into(),
            ));
        };
        if seed_list.value.is_empty() {
            return Err(ConfigError(format!(
                "seeds: the list is empty; give at least one seed {}",
                at(&Spanned::new(
                    String::new(),
                    seed_list.referenced,
                    seed_list.defined
                ))
            )));
        }
        let mut seeds = Vec::with_capacity(seed_list.value.len());
        let mut seed_keys = BTreeMap::new();
        for entry in &seed_list.value {
            let (text, key) = match &entry.value {
                RawSeedEntry::Addr(a) => (a.clone(), None),
                RawSeedEntry::Keyed(k) => (k.addr.clone(), k.key.clone()),
            };
            let leaf = &Spanned::new(text, entry.referenced, entry.defined);
            let addr = seed_addr(leaf)?;
            if let Some(key) = key {
                let key = crate::keys::parse_public(&key).ok_or_else(|| {
                    ConfigError(format!(
                        "seeds: the key of \"{}\" must be an Ed25519 public key, 64 hex characters as `seed --print-key` prints them, got \"{key}\" {}",
                        leaf.value,
                        at(leaf)
                    ))
                })?;
                seed_keys.insert(addr, key);
            }
            if addr.port() == 0 {
                return Err(ConfigError(format!(
                    "seeds: port 0 is not a reachable address: \"{}\" {}",
                    leaf.value,
                    at(leaf)
                )));
            }
            if seeds.contains(&addr) {
                return Err(ConfigError(format!(
                    "seeds: \"{}\" is listed twice {}",
                    leaf.value,
                    at(leaf)
                )));
            }
            seeds.push(addr);
        }

        let g = self.gossip.unwrap_or_default();
        let batch_window = at_most(
            "gossip.batch_window",
            &g.batch_window,
            duration_or_zero("gossip.batch_window", &g.batch_window, BATCH_WINDOW)?,
            MAX_BATCH_WINDOW,
        )?;
        // Unset, it is at least the quiet window; set below it, it is an error.
        let max_batch_window = at_most(
            "gossip.max_batch_window",
            &g.max_batch_window,
            duration_or_zero(
                "gossip.max_batch_window",
                &g.max_batch_window,
                BUSY_BATCH_WINDOW.max(batch_window),
            )?,
            MAX_BATCH_WINDOW,
        )?;
        if let Some(leaf) = &g.max_batch_window {
            if max_batch_window < batch_window {
                return Err(ConfigError(format!(
                    "gossip.max_batch_window: at least gossip.batch_window ({batch_window:?}), got \"{}\" {}",
                    leaf.value,
                    at(leaf)
                )));
            }
        }
        let gossip = GossipConfig {
            interval: duration("gossip.interval", &g.interval, GOSSIP_INTERVAL)?,
            count: number("gossip.count", &g.count, GOSSIP_COUNT, 0, 1_000_000)?,
            message_list_capacity: number(
                "gossip.message_list_capacity",
                &g.message_list_capacity,
                MESSAGE_LIST_CAPACITY,
                16,
                10_000_000,
            )?,
            max_item: number("gossip.max_item", &g.max_item, GOSSIP_MAX_ITEM, 1, 1 << 20)?,
            batch_window,
            max_batch_window,
            mode: match &g.mode {
                None => GossipMode::Flood,
                Some(leaf) => match leaf.value.trim() {
                    "flood" => GossipMode::Flood,
                    "tree" => GossipMode::Tree,
                    "rooted" => GossipMode::Rooted,
                    other => {
                        return Err(ConfigError(format!(
                            "gossip.mode: expected \"flood\", \"tree\" or \"rooted\", got \"{other}\" {}",
                            at(leaf)
                        )))
                    }
                },
            },
            graft_timeout: duration("gossip.graft_timeout", &g.graft_timeout, GRAFT_TIMEOUT)?,
            sync_interval: duration_or_zero(
                "gossip.sync_interval",
                &g.sync_interval,
                SYNC_INTERVAL,
            )?,
            history: number("gossip.history", &g.history, HISTORY, 0, 1_000_000)?,
            history_age: duration("gossip.history_age", &g.history_age, HISTORY_AGE)?,
            history_bytes: number(
                "gossip.history_bytes",
                &g.history_bytes,
                HISTORY_BYTES,
                0,
                1 << 34,
            )?,
            sync_bytes: number("gossip.sync_bytes", &g.sync_bytes, SYNC_BYTES, 1, 1 << 30)?,
        };
        let l = self.liveness.unwrap_or_default();
        let liveness = LivenessConfig {
            interval: duration("liveness.interval", &l.interval, LIVENESS_INTERVAL)?,
            misses: number("liveness.misses", &l.misses, LIVENESS_MISSES, 1, 1000)?,
            probe_timeout: duration("liveness.probe_timeout", &l.probe_timeout, PROBE_TIMEOUT)?,
            reply_timeout: duration("liveness.reply_timeout", &l.reply_timeout, REPLY_TIMEOUT)?,
        };
        let p = self.peer.unwrap_or_default();
        let selection = match &p.selection {
            None => Selection::Random,
            Some(leaf) => match leaf.value.trim() {
                "random" => Selection::Random,
                "power-law" => Selection::PowerLaw,
                other => {
                    return Err(ConfigError(format!(
                        "peer.selection: expected \"random\" or \"power-law\", got \"{other}\" {}",
                        at(leaf)
                    )))
                }
            },
        };
        let peer = PeerConfig {
            max_neighbours: number(
                "peer.max_neighbours",
                &p.max_neighbours,
                MAX_NEIGHBOURS,
                1,
                64,
            )?,
            selection,
            max_inbound: 0,
            max_per_subnet: number("peer.max_per_subnet", &p.max_per_subnet, 2, 1, 1024)?,
        };
        let peer = PeerConfig {
            max_inbound: number(
                "peer.max_inbound",
                &p.max_inbound,
                4 * peer.max_neighbours,
                0,
                1024,
            )?,
            ..peer
        };
        let w = self.pow.unwrap_or_default();
        let difficulty = number("pow.difficulty", &w.difficulty, POW_DIFFICULTY, 0, 32)?;
        let pow = PowConfig {
            difficulty,
            timeout: duration("pow.timeout", &w.timeout, POW_TIMEOUT)?,
            flood_threshold: number(
                "pow.flood_threshold",
                &w.flood_threshold,
                POW_FLOOD_THRESHOLD,
                1,
                1_000_000,
            )?,
            max_difficulty: number(
                "pow.max_difficulty",
                &w.max_difficulty,
                POW_MAX_DIFFICULTY.max(difficulty),
                difficulty,
                32,
            )?,
        };
        let m = self.limits.unwrap_or_default();
        let registrations_per_ip = number(
            "limits.registrations_per_ip",
            &m.registrations_per_ip,
            16,
            1,
            1_000_000,
        )?;
        let registrations_per_subnet = number(
            "limits.registrations_per_subnet",
            &m.registrations_per_subnet,
            64,
            1,
            1_000_000,
        )?;
        let limits = Limits {
            registrations_per_ip,
            registrations_per_subnet,
            max_frame: number("limits.max_frame", &m.max_frame, MAX_FRAME, 1024, 16 << 20)?,
            max_connections: number(
                "limits.max_connections",
                &m.max_connections,
                MAX_CONNECTIONS,
                4,
                100_000,
            )?,
            max_connections_per_ip: number(
                "limits.max_connections_per_ip",
                &m.max_connections_per_ip,
                MAX_CONNECTIONS_PER_IP,
                1,
                100_000,
            )?,
            max_pending_handshakes: number(
                "limits.max_pending_handshakes",
                &m.max_pending_handshakes,
                MAX_PENDING_HANDSHAKES,
                1,
                100_000,
            )?,
            outbound_queue: number(
                "limits.outbound_queue",
                &m.outbound_queue,
                OUTBOUND_QUEUE,
                8,
                1_000_000,
            )?,
            max_queue_bytes: number(
                "limits.max_queue_bytes",
                &m.max_queue_bytes,
                MAX_QUEUE_BYTES,
                64 * 1024,
                1 << 30,
            )?,
            read_timeout: duration("limits.read_timeout", &m.read_timeout, READ_TIMEOUT)?,
            write_timeout: duration("limits.write_timeout", &m.write_timeout, WRITE_TIMEOUT)?,
            gossip_per_second: number(
                "limits.gossip_per_second",
                &m.gossip_per_second,
                GOSSIP_PER_SECOND,
                1,
                10_000_000,
            )?,
            control_per_second: number(
                "limits.control_per_second",
                &m.control_per_second,
                CONTROL_PER_SECOND,
                1,
                1_000_000,
            )?,
            thread_stack_kib: number(
                "limits.thread_stack_kib",
                &m.thread_stack_kib,
                THREAD_STACK_KIB,
                64,
                65_536,
            )?,
            loopback_exempt: match &m.loopback_exempt {
                None => true,
                Some(leaf) => match leaf.value.trim() {
                    "true" => true,
                    "false" => false,
                    other => {
                        return Err(ConfigError(format!(
                            "limits.loopback_exempt: expected true or false, got \"{other}\" {}",
                            at(leaf)
                        )))
                    }
                },
            },
        };
        let s = self.seed.unwrap_or_default();
        let seed = SeedConfig {
            sync_interval: duration("seed.sync_interval", &s.sync_interval, SEED_SYNC_INTERVAL)?,
            max_peer_list: number(
                "seed.max_peer_list",
                &s.max_peer_list,
                SEED_MAX_PEER_LIST,
                1,
                10_000,
            )?,
            vote_ttl: duration("seed.vote_ttl", &s.vote_ttl, SEED_VOTE_TTL)?,
        };
        let st = self.stats.unwrap_or_default();
        let stats_interval = duration("stats.interval", &st.interval, STATS_INTERVAL)?;
        let raw_api = self.api.unwrap_or_default();
        let api_addr = match raw_api.addr {
            Some(leaf) => Some(socket_addr("api.addr", &leaf)?),
            None => None,
        };
        let api = ApiLimits {
            max_clients: number(
                "api.max_clients",
                &raw_api.max_clients,
                API_MAX_CLIENTS,
                1,
                4096,
            )?,
            max_pending: number(
                "api.max_pending",
                &raw_api.max_pending,
                API_MAX_PENDING,
                1,
                16_384,
            )?,
            validation_timeout: duration(
                "api.validation_timeout",
                &raw_api.validation_timeout,
                API_VALIDATION_TIMEOUT,
            )?,
        };

        Ok(Config {
            seeds,
            seed_keys,
            gossip,
            liveness,
            peer,
            pow,
            limits,
            seed,
            stats_interval,
            api_addr,
            api,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_assignment() {
        let c =
            Config::parse("seeds: [\"127.0.0.1:9001\", \"127.0.0.1:9002\", \"127.0.0.1:9003\"]\n")
                .unwrap();
        assert_eq!(c.seeds.len(), 3);
        assert_eq!(c.majority(), 2);
        assert_eq!(c.gossip.interval, Duration::from_secs(5));
        assert_eq!(c.gossip.count, 10);
        assert_eq!(c.liveness.interval, Duration::from_secs(13));
        assert_eq!(c.liveness.misses, 3);
        assert_eq!(c.peer.max_neighbours, 4);
        assert_eq!(c.peer.selection, Selection::Random);
        assert_eq!(c.pow.difficulty, 20);
        assert_eq!(c.pow.timeout, Duration::from_secs(10));
    }

    #[test]
    fn the_shipped_seeds_yaml_is_valid() {
        let text = include_str!("../seeds.yaml");
        let c = Config::parse(text).unwrap();
        assert_eq!(c.seeds.len(), 3);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms"), Some(Duration::from_millis(200)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("-5s"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
    }

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().0
    }

    #[test]
    fn seeds_may_carry_their_keys() {
        let key = crate::keys::NodeKey::from_secret([1; 32]).public_hex();
        let c = Config::parse(&format!(
            "seeds:\n  - {{ addr: \"127.0.0.1:9001\", key: \"{key}\" }}\n  - \"127.0.0.1:9002\"\n  - addr: \"127.0.0.1:9003\"\n"
        ))
        .unwrap();
        assert_eq!(c.seeds.len(), 3);
        assert_eq!(c.seed_keys.len(), 1);
        assert_eq!(
            hex::encode(c.seed_keys[&"127.0.0.1:9001".parse().unwrap()]),
            key
        );
        let e =
            err("seeds:\n  - \"127.0.0.1:9002\"\n  - { addr: \"127.0.0.1:9001\", key: \"abc\" }\n");
        assert!(
            e.contains("seeds") && e.contains("64 hex") && e.contains("line 3"),
            "{e}"
        );
        let e = err("seeds:\n  - { addr: \"127.0.0.1:9001\", kee: \"abc\" }\n");
        assert!(e.contains("seeds") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn seeds_may_be_host_names_resolved_at_start() {
        let c = Config::parse("seeds: [\"localhost:9001\", \"127.0.0.1:9002\", \"[::1]:9003\"]\n")
            .unwrap();
        assert_eq!(c.seeds[0], "127.0.0.1:9001".parse().unwrap());
        assert_eq!(c.seeds[2], "[::1]:9003".parse().unwrap());
        // A name that does not resolve (the .invalid domain never does) names itself and its line.
        let e = err("seeds: [\"127.0.0.1:9001\",\n  \"no-such-seed.invalid:9002\"]\n");
        assert!(
            e.contains("no-such-seed.invalid")
                && e.contains("does not resolve")
                && e.contains("line 2"),
            "{e}"
        );
        // Not a name: still a malformed address.
        let e = err("seeds: [\"127.0.0.1:99999\"]\n");
        assert!(e.contains("malformed address"), "{e}");
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let e = err("seeds: [\"127.0.0.1:9001\"]\ngossip:\n  interval: 5x\n");
        assert!(e.contains("gossip.interval") && e.contains("line 3"), "{e}");
        let e = err("seeds: [\"127.0.0.1:9001\"]\npow: { difficulty: 99 }\n");
        assert!(e.contains("pow.difficulty") && e.contains("line 2"), "{e}");
        let e = err("seeds: [\"127.0.0.1:9001\", \"nonsense\"]\n");
        assert!(
            e.contains("seeds") && e.contains("nonsense") && e.contains("line 1"),
            "{e}"
        );
        let e = err("seeds: [\"127.0.0.1:9001\"]\ngossip:\n  intervall: 5s\n");
        assert!(e.contains("intervall") && e.contains("line 3"), "{e}");
        let e = err("seeds: [\"127.0.0.1:9001\"]\npeer: { selection: best }\n");
        assert!(e.contains("peer.selection") && e.contains("best"), "{e}");
        let e = err("gossip: { count: 3 }\n");
        assert!(e.contains("seeds"), "{e}");
        let e = err("seeds: []\n");
        assert!(e.contains("seeds"), "{e}");
        let e = err("seeds: [\"127.0.0.1:9001\"]\nliveness: { interval: 0s }\n");
        assert!(e.contains("liveness.interval"), "{e}");
        let e = err("seeds: [\"127.0.0.1:9001\", \"127.0.0.1:9001\"]\n");
        assert!(e.contains("twice"), "{e}");
        for text in ["{{{", "seeds: [", "seeds:\n  - a\n - b\n", "\u{0}"] {
            let e = err(text);
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn the_api_has_its_own_budget() {
        let seeds = "seeds: [\"127.0.0.1:9001\"]\n";
        let c = Config::parse(seeds).unwrap();
        assert_eq!(c.api.max_clients, 64);
        assert_eq!(c.api.max_pending, 256);
        assert_eq!(c.api.validation_timeout, Duration::from_secs(5));
        let c = Config::parse(&format!(
            "{seeds}api: {{ max_clients: 2, max_pending: 8, validation_timeout: 500ms }}\n"
        ))
        .unwrap();
        assert_eq!(
            (c.api.max_clients, c.api.max_pending),
            (2, 8),
            "{:?}",
            c.api
        );
        let e = err(&format!("{seeds}api: {{ max_clients: 0 }}\n"));
        assert!(e.contains("api.max_clients") && e.contains("line 2"), "{e}");
        let e = err(&format!("{seeds}api: {{ validation_timeout: 0s }}\n"));
        assert!(e.contains("api.validation_timeout"), "{e}");
    }

    #[test]
    fn batch_window_may_be_zero_but_not_long_and_reply_timeout_must_be_positive() {
        let seeds = "seeds: [\"127.0.0.1:9001\"]\n";
        let c = Config::parse(seeds).unwrap();
        assert_eq!(c.gossip.batch_window, Duration::ZERO);
        assert_eq!(c.liveness.reply_timeout, Duration::from_secs(3));
        let c = Config::parse(&format!("{seeds}gossip: {{ batch_window: 0ms }}\n")).unwrap();
        assert_eq!(c.gossip.batch_window, Duration::ZERO);
        let c = Config::parse(&format!("{seeds}liveness: {{ reply_timeout: 500ms }}\n")).unwrap();
        assert_eq!(c.liveness.reply_timeout, Duration::from_millis(500));
        let e = err(&format!("{seeds}gossip: {{ batch_window: 5s }}\n"));
        assert!(
            e.contains("gossip.batch_window") && e.contains("line 2"),
            "{e}"
        );
        let e = err(&format!("{seeds}gossip: {{ batch_window: soon }}\n"));
        assert!(e.contains("gossip.batch_window"), "{e}");
        // The busy window: 200 ms unless set; never below the quiet one.
        assert_eq!(c.gossip.max_batch_window, Duration::from_millis(200));
        let c = Config::parse(&format!("{seeds}gossip: {{ batch_window: 300ms }}\n")).unwrap();
        assert_eq!(c.gossip.max_batch_window, Duration::from_millis(300));
        let c = Config::parse(&format!(
            "{seeds}gossip: {{ batch_window: 0ms, max_batch_window: 0ms }}\n"
        ))
        .unwrap();
        assert_eq!(c.gossip.max_batch_window, Duration::ZERO);
        let e = err(&format!(
            "{seeds}gossip: {{ batch_window: 5ms, max_batch_window: 1ms }}\n"
        ));
        assert!(
            e.contains("gossip.max_batch_window") && e.contains("line 2"),
            "{e}"
        );
        let e = err(&format!("{seeds}gossip: {{ max_batch_window: 2s }}\n"));
        assert!(e.contains("gossip.max_batch_window"), "{e}");
        let e = err(&format!("{seeds}liveness: {{ reply_timeout: 0s }}\n"));
        assert!(
            e.contains("liveness.reply_timeout") && e.contains("line 2"),
            "{e}"
        );
    }

    #[test]
    fn ipv6_seeds() {
        let c = Config::parse("seeds: [\"[::1]:9001\"]").unwrap();
        assert!(c.seeds[0].is_ipv6());
    }
}
