//! `seed --addr IP:PORT [--config seeds.yaml] [--out-dir out] [-v] [--log-file FILE]`
#![forbid(unsafe_code)]

use std::process::ExitCode;

use gossipnet::cli::{parse_args, run, SeedArgs};
use gossipnet::wire::Role;

fn main() -> ExitCode {
    let args: SeedArgs = match parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    match run(Role::Seed, args.common, None) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => f.exit("seed"),
    }
}
