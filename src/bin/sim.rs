//! `sim --peers N [--seeds S] [--messages M] [--rng SEED] [--scenario NAME] [--latency MIN..MAX]
//! [--config seeds.yaml] [--json]`: the real seed and peer cores of a whole network, on virtual
//! time in one process (see `gossipnet::sim`).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gossipnet::config::{parse_duration, Config};
use gossipnet::sim::scenario::{self, Kind, Params};

/// Simulates a gossipnet network: the real seed and peer cores on virtual time, with seeded
/// randomness. Prints a summary of deliveries, redundancy, latency and removals.
#[derive(Parser, Debug)]
#[command(name = "sim", version)]
struct Args {
    /// Peers at the start.
    #[arg(long)]
    peers: usize,
    /// Seeds.
    #[arg(long, default_value_t = 3)]
    seeds: usize,
    /// Items generated in the whole run, by peers drawn at random, 20 ms apart.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Items generated a second network-wide, instead of one every 20 ms.
    #[arg(long)]
    rate: Option<f64>,
    /// Model each connection's batch window (`gossip.batch_window`, `gossip.max_batch_window`):
    /// a busy link holds frames as a real node's queue does. Without it a frame leaves at once.
    #[arg(long)]
    batching: bool,
    /// Model N CPUs shared by every node, as processes share a machine's cores: each frame
    /// read takes one for --frame-cost µs, each send for --send-cost µs.
    #[arg(long)]
    cpus: Option<usize>,
    /// With --cpus: CPU time to read and handle one frame, in µs.
    #[arg(long, default_value_t = 20)]
    frame_cost: u64,
    /// With --cpus: CPU time of one send (a system call and the receiver's wake-up), in µs.
    #[arg(long, default_value_t = 50)]
    send_cost: u64,
    /// Seed of the run's randomness: the same flags give the same summary (wall_s aside).
    #[arg(long, default_value_t = 1)]
    rng: u64,
    /// steady, churn, crash, crash-root, hang, drop, drop-root, partition, late-join or sybil.
    #[arg(long, default_value = "steady")]
    scenario: String,
    /// One-way latency of each frame, drawn uniformly from MIN..MAX (e.g. 1ms..5ms; a bare
    /// number is milliseconds).
    #[arg(long, default_value = "1ms..5ms")]
    latency: String,
    /// Timers and limits (its seed list is replaced by --seeds simulated seeds). Default: the
    /// built-in defaults, as with a seeds.yaml that lists only seeds.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    json: bool,
    /// Count the frames delivered by type (`frame_types` in the summary: `Gossip`, `IHave`,
    /// `TreeRoot`, ...).
    #[arg(long)]
    frame_types: bool,
}

fn duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    match s.parse::<f64>() {
        Ok(ms) if ms >= 0.0 => Some(Duration::from_secs_f64(ms / 1000.0)),
        _ => parse_duration(s),
    }
}

/// The allocator settings the run wants (glibc reads them only at process start): memory
/// advised for transparent huge pages, grown 32 MiB at a time so each growth is worth
/// advising. A large run spends most of its time on cache misses into the peers' state, and
/// with 4 KiB pages each miss also walks the page tables; with 2 MiB pages the run is about
/// a sixth shorter (BENCHMARKS, "Simulator run times"). Freed memory is kept, neither
/// trimmed from the heap's top nor unmapped (allocations under 32 MiB come from the heap):
/// memory given back is zeroed again by the kernel when it is taken again, and a run that did
/// so spent more than a tenth of its time there.
const TUNABLES: &str = "glibc.malloc.hugetlb=1:glibc.malloc.top_pad=33554432:\
                        glibc.malloc.trim_threshold=4294967296:glibc.malloc.mmap_threshold=33554432";

/// Runs this program again with `TUNABLES`, unless the environment already sets glibc
/// tunables (then they are the caller's choice, and this is the second start). Returns only
/// if the program could not be started again; the run then goes on as it is.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn restart_with_huge_pages() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", TUNABLES)
        .exec();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn restart_with_huge_pages() {}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let fail = |msg: String| {
        eprintln!("sim: {msg}");
        ExitCode::from(2)
    };
    let Some(kind) = Kind::parse(&args.scenario) else {
        return fail(format!(
            "--scenario: unknown scenario {:?} (steady, churn, crash, crash-root, hang, drop, drop-root, partition, late-join, sybil)",
            args.scenario
        ));
    };
    let latency = args
        .latency
        .split_once("..")
        .and_then(|(a, b)| Some((duration(a)?, duration(b)?)));
    let Some(latency) = latency.filter(|(a, b)| a <= b) else {
        return fail(format!(
            "--latency: expected MIN..MAX such as 1ms..5ms, got {:?}",
            args.latency
        ));
    };
    let config = match &args.config {
        Some(path) => match Config::load(path) {
            Ok(c) => c,
            Err(e) => return fail(e.to_string()),
        },
        None => Config::parse("seeds: [\"127.0.0.1:9001\"]\n").expect("the built-in config parses"),
    };
    if args.seeds == 0 {
        return fail("--seeds: at least one seed".into());
    }
    restart_with_huge_pages();
    let params = Params {
        peers: args.peers,
        seeds: args.seeds,
        messages: args.messages,
        rate: args.rate,
        batching: args.batching,
        cpus: args
            .cpus
            .map(|n| gossipnet::sim::Cpus::new(n, args.frame_cost, args.send_cost)),
        rng: args.rng,
        kind,
        latency,
        config,
        progress: true,
        frame_types: args.frame_types,
    };
    let summary = scenario::run(&params);
    if args.json {
        println!("{summary}");
    } else if let Some(map) = summary.as_object() {
        for (k, v) in map {
            println!("{k}: {v}");
        }
    }
    ExitCode::SUCCESS
}
