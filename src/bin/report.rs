//! `report RUN_DIR [--json]`: the figures of a run from its nodes' `.jsonl` files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use gossipnet::report::{json, table, Run};

/// Reads a run directory (the nodes' .jsonl files, and faults.jsonl when the run recorded the
/// faults it injected) and prints the run's figures.
///
/// Definitions:
///   coverage = deliveries ÷ expected deliveries. A message generated at time t is expected at
///     every other peer that had a neighbour link at t and had not failed, left or been removed
///     by t (failure = the fault time recorded in faults.jsonl, else the first removal).
///   time to reach all = last expected receipt − generation, over the messages that reached
///     every expected peer (p50 / p99 / max, milliseconds).
///   duplicates per delivery = repeated gossip items ignored (the peers' last stats) ÷ deliveries.
///   dead peers: for each peer faulted by the run or removed as dead, seconds from the fault to
///     the first Dead Node report about it and to its removal by a majority of seeds.
///   false removals = peers removed as dead that the run did not fault (or, with no fault
///     record, that kept logging after their removal).
///   rejected = rejected events at all nodes (handshake, proof of work, malformed input, limits).
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// The run directory (the --out-dir of its nodes).
    run_dir: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args: Args = match gossipnet::cli::parse_args("report") {
        Ok(a) => a,
        Err(code) => return code,
    };
    let run = match Run::load(&args.run_dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("report: error: cannot read {}: {e}", args.run_dir.display());
            return ExitCode::from(2);
        }
    };
    if run.peers.is_empty() && run.seeds.is_empty() {
        eprintln!("report: error: no node output (.jsonl) in {}", args.run_dir.display());
        return ExitCode::from(2);
    }
    let summary = run.summarize();
    if args.json {
        println!("{}", json(&summary));
    } else {
        print!("{}", table(&summary));
    }
    ExitCode::SUCCESS
}
