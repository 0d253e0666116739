//! What the `seed` and `peer` binaries share: flags, logging, loading the config, binding,
//! signals, and mapping every failure to one line on stderr and an exit code
//! (0 clean shutdown, 1 runtime failure, 2 usage or configuration error).

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use log::{Level, LevelFilter};
use rand::SeedableRng;

use crate::config::Config;
use crate::keys::{NodeKey, SeedKeys};
use crate::net::{Identity, Runtime};
use crate::node::{unix_ms, Core};
use crate::output::Output;
use crate::peer::PeerCore;
use crate::seed::SeedCore;
use crate::wire::Role;

/// Flags common to both binaries.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Address to listen on, IP:PORT (IPv6 as [IP]:PORT). Unless --advertise is given it is
    /// also the address other nodes dial, the node's name and its output files' name. A peer
    /// may use port 0 to take a free port. 0.0.0.0:PORT or [::]:PORT binds every interface
    /// and needs --advertise.
    #[arg(long, value_name = "IP:PORT")]
    pub addr: SocketAddr,
    /// The address other nodes dial to reach this one (its name in every text and file), when
    /// it differs from --addr: behind a wildcard bind or a port forward. Port 0 means the port
    /// bound.
    #[arg(long, value_name = "IP:PORT")]
    pub advertise: Option<SocketAddr>,
    /// This node's Ed25519 key pair, created (mode 0600) if missing. Default:
    /// keys/<role>-<ip>-<port>.key under the working directory.
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Print this node's public key (64 hex characters) and exit, creating the key file if
    /// needed.
    #[arg(long)]
    pub print_key: bool,
    /// The network's configuration: the seed list and every timer and limit.
    #[arg(long, value_name = "FILE", default_value = "seeds.yaml")]
    pub config: PathBuf,
    /// Directory for this node's output files (<role>-<ip>-<port>.txt and .jsonl); created if
    /// missing.
    #[arg(long, value_name = "DIR", default_value = "out")]
    pub out_dir: PathBuf,
    /// Log debug detail (the default level is info).
    #[arg(short, long)]
    pub verbose: bool,
    /// Write the log to this file instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// `seed`: an entry point of a gossipnet network. It registers peers when a majority of the
/// seeds agree, hands out the peer list, and removes dead peers after checking them itself.
#[derive(Parser, Debug)]
#[command(name = "seed", version)]
pub struct SeedArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `peer`: a member of a gossipnet network. It registers with a majority of the seeds,
/// connects to a few neighbours, gossips messages, checks its neighbours' liveness and reports
/// the dead ones.
#[derive(Parser, Debug)]
#[command(name = "peer", version)]
pub struct PeerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Serve the application API (the VoidPhone gossip API: ANNOUNCE, NOTIFY, NOTIFICATION,
    /// VALIDATION) to local programs on this address. No proof of work is asked there, so bind
    /// it to a local address such as 127.0.0.1:7001. Overrides `api.addr` in the config.
    #[arg(long, value_name = "IP:PORT")]
    pub api_addr: Option<SocketAddr>,
}

/// A failure with its exit code.
#[derive(Debug)]
pub enum Failure {
    /// Usage or configuration: exit 2.
    Usage(String),
    /// Runtime (address in use, cannot write output): exit 1.
    Runtime(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Runtime(m) => f.write_str(m),
        }
    }
}

impl Failure {
    pub fn exit(self, program: &str) -> ExitCode {
        eprintln!("{program}: error: {self}");
        match self {
            Failure::Usage(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::from(1),
        }
    }
}

/// Parses flags. A usage error prints clap's whole message (what is wrong, which required
/// arguments are missing, the "similar argument" tip, the usage line) and exits 2; `--help`
/// and `--version` exit 0. Configuration errors, found later, stay one line (see [`Failure`]).
pub fn parse_args<T: Parser>() -> Result<T, ExitCode> {
    T::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        // Cutting the message to its first line loses the list of missing arguments and the
        // tip, which is the part that says how to fix the command.
        let _ = e.print();
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        }
    })
}

/// Where log lines go: stderr, or the `--log-file`.
enum Sink {
    Stderr,
    File(parking_lot::Mutex<std::fs::File>),
}

/// The node's notes for people who watch it (warnings, progress, with `-v` debug detail) in
/// the format of the `.txt` lines, so the screen shows one format whichever stream a line
/// came from: `<local stamp>  <text>`, with `warning:` / `error:` / `debug:` before the text
/// of lines that are not plain information.
struct Logger {
    level: LevelFilter,
    sink: Sink,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        // Our crate's lines only: dependencies' chatter is not the node's story.
        m.level() <= self.level && m.target().starts_with("gossipnet")
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let tag = match r.level() {
            Level::Error => "error: ",
            Level::Warn => "warning: ",
            Level::Info => "",
            Level::Debug => "debug: ",
            Level::Trace => "trace: ",
        };
        let line = format!(
            "{}  {tag}{}\n",
            crate::output::local_stamp(crate::output::unix_us()),
            r.args()
        );
        // One write per line, errors ignored: a closed stderr must not stop the node.
        use std::io::Write;
        match &self.sink {
            Sink::Stderr => {
                let _ = std::io::stderr().lock().write_all(line.as_bytes());
            }
            Sink::File(f) => {
                let _ = f.lock().write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {}
}

fn init_logging(args: &CommonArgs) -> Result<(), Failure> {
    let level = if args.verbose {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let sink = match &args.log_file {
        Some(path) => Sink::File(parking_lot::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    Failure::Runtime(format!("cannot open log file {}: {e}", path.display()))
                })?,
        )),
        None => Sink::Stderr,
    };
    // Leaked once per process: the logger lives as long as the node.
    if log::set_logger(Box::leak(Box::new(Logger { level, sink }))).is_ok() {
        log::set_max_level(level);
    }
    Ok(())
}

/// Loads the config, binds, writes output, and runs until SIGINT/SIGTERM. `api_addr` (peers
/// only) overrides the config's `api.addr`.
pub fn run(role: Role, args: CommonArgs, api_addr: Option<SocketAddr>) -> Result<(), Failure> {
    if args.print_key {
        let named = args.advertise.unwrap_or(args.addr);
        let path = args
            .key_file
            .clone()
            .unwrap_or_else(|| crate::keys::default_path(role, &named));
        let key = NodeKey::load_or_create(&path).map_err(|e| Failure::Usage(e.to_string()))?;
        println!("{}", key.public_hex());
        return Ok(());
    }
    let config = Config::load(&args.config).map_err(|e| Failure::Usage(e.to_string()))?;
    let api_addr = if role == Role::Peer {
        api_addr.or(config.api_addr)
    } else {
        None
    };
    if args.addr.ip().is_unspecified() && args.advertise.is_none() {
        return Err(Failure::Usage(format!(
            "--addr {}: an unspecified address binds every interface; add --advertise IP:PORT, the address other nodes reach this node at",
            args.addr
        )));
    }
    if let Some(a) = args.advertise {
        if a.ip().is_unspecified() {
            return Err(Failure::Usage(format!(
                "--advertise {a}: give the specific IP other nodes reach this node at"
            )));
        }
    }
    // The address this node is known by, as far as it is known before binding.
    let named = match args.advertise {
        Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), args.addr.port()),
        Some(a) => a,
        None => args.addr,
    };
    if role == Role::Seed && !config.seeds.contains(&named) {
        return Err(Failure::Usage(format!(
            "--{} {} is not one of the seeds in {} ({})",
            if args.advertise.is_some() {
                "advertise"
            } else {
                "addr"
            },
            named,
            args.config.display(),
            config
                .seeds
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if role == Role::Seed && args.addr.port() == 0 {
        return Err(Failure::Usage("a seed needs a fixed port".into()));
    }
    init_logging(&args)?;
    let listener = TcpListener::bind(args.addr)
        .map_err(|e| Failure::Runtime(format!("cannot listen on {}: {e}", args.addr)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(format!("cannot read the bound address: {e}")))?;
    let addr = match args.advertise {
        Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), bound.port()),
        Some(a) => a,
        None => bound,
    };
    if role == Role::Peer && config.seeds.contains(&addr) {
        // It would dial itself to register and take itself for a neighbour.
        return Err(Failure::Usage(format!(
            "{addr} is one of the seeds in {}: a peer needs an address of its own",
            args.config.display()
        )));
    }
    let api = match api_addr {
        Some(a) => Some(
            TcpListener::bind(a)
                .map_err(|e| Failure::Runtime(format!("cannot listen for the API on {a}: {e}")))?,
        ),
        None => None,
    };
    let key_path = args
        .key_file
        .clone()
        .unwrap_or_else(|| crate::keys::default_path(role, &addr));
    let key = NodeKey::load_or_create(&key_path).map_err(|e| Failure::Usage(e.to_string()))?;
    if let Some(listed) = config.seed_keys.get(&addr) {
        if *listed != key.public() {
            return Err(Failure::Usage(format!(
                "{} lists key {} for {addr}, but the key file {} holds key {}: give this seed its own key file, or list its key (seed --print-key)",
                args.config.display(),
                hex::encode(listed),
                key_path.display(),
                key.public_hex()
            )));
        }
    }
    let seed_keys = SeedKeys::load(
        config.seed_keys.clone(),
        Some(crate::keys::known_seeds_path(&key_path)),
    )
    .map_err(|e| Failure::Usage(e.to_string()))?;
    let output = Output::create(&args.out_dir, role, &addr, true).map_err(|e| {
        Failure::Runtime(format!(
            "cannot create output files in {}: {e}",
            args.out_dir.display()
        ))
    })?;
    let identity = Identity {
        role,
        addr,
        incarnation: std::sync::atomic::AtomicU64::new(unix_ms()),
        key: std::sync::Arc::new(key),
    };
    let key = identity.key.clone();
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    })
    .map_err(|e| Failure::Runtime(format!("cannot install the signal handler: {e}")))?;
    log::info!(
        "{} {addr} starting with {}",
        role_name(role),
        args.config.display()
    );
    match role {
        Role::Seed => {
            let rng = rand::rngs::StdRng::from_entropy();
            let core = SeedCore::new(addr, config.clone(), rng, key);
            let rt = Runtime::start(core, listener, identity, seed_keys, config, output);
            serve(rt, None, rx)
        }
        Role::Peer => {
            let rng = rand::rngs::StdRng::from_entropy();
            let mut core = PeerCore::new(addr, config.clone(), rng);
            core.set_signer(identity.key.clone());
            let rt = Runtime::start(core, listener, identity, seed_keys, config, output);
            serve(rt, api, rx)
        }
    }
    Ok(())
}

fn serve<C: Core>(
    rt: std::sync::Arc<Runtime<C>>,
    api: Option<TcpListener>,
    stop: crossbeam_channel::Receiver<()>,
) {
    if let Some(api) = api {
        if let Ok(a) = api.local_addr() {
            log::info!("application API listening on {a}");
        }
        rt.serve_api(api);
    }
    let _ = stop.recv();
    log::info!("shutting down");
    rt.shutdown();
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Peer => "peer",
        Role::Seed => "seed",
    }
}
