//! `peer --addr IP:PORT [--config seeds.yaml] [--out-dir out] [-v] [--log-file FILE] [--api-addr IP:PORT]`
#![forbid(unsafe_code)]

use std::process::ExitCode;

use gossipnet::cli::{parse_args, run, PeerArgs};
use gossipnet::wire::Role;

fn main() -> ExitCode {
    let args: PeerArgs = match parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(Role::Peer, args.common, args.api_addr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit("peer"),
    }
}
