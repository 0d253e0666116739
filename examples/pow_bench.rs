//! Measures proof-of-work solving and verifying on this machine.
//!
//! `cargo run --release --example pow_bench -- [DIFFICULTY] [SOLVES] [--seed N]` (defaults 20,
//! 40 and seed 2026). Prints the solve time over random challenges drawn from that seed (the
//! same challenges every run, so runs compare; another seed draws others) as mean, median,
//! p90 and max, hashes (tries) per second while solving and what one try costs in SHA-256
//! compressions (to compare with `openssl speed`, as `scripts/bench.sh` does), the cost of
//! one verification, the cost of one gossip message id, and the rest of a version-2
//! handshake: signing and verifying the transcript, and both ends' whole work for one
//! connection without the network.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use gossipnet::pow;

/// Measures proof-of-work solving and verifying on this machine.
#[derive(clap::Parser, Debug)]
#[command(name = "pow_bench")]
struct Args {
    /// Leading zero bits to solve for (the config's pow.difficulty).
    #[arg(default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=32))]
    difficulty: u8,
    /// How many challenges to solve.
    #[arg(default_value_t = 40, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    solves: usize,
    /// Seed of the random challenges: the same seed gives the same challenges, so two runs
    /// (or two builds) solve the same puzzles.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

fn main() -> std::process::ExitCode {
    let args: Args = match gossipnet::cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (difficulty, solves) = (args.difficulty, args.solves);
    let connector: SocketAddr = "127.0.0.1:9101".parse().unwrap();
    let acceptor: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    let key = [9u8; 32];
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);

    let mut times = Vec::with_capacity(solves);
    let mut hashes: u64 = 0;
    for _ in 0..solves {
        let mut challenge = [0u8; 32];
        rng.fill(&mut challenge);
        let t = Instant::now();
        let b = pow::Bound {
            challenge: &challenge,
            key: &key,
            connector: &connector,
            acceptor: &acceptor,
        };
        let nonce = pow::solve(b, difficulty, 0, None).expect("no deadline");
        times.push(t.elapsed());
        hashes += nonce + 1;
        assert!(pow::verify(b, difficulty, nonce));
    }
    let total: Duration = times.iter().sum();
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "difficulty {difficulty}: {solves} solves of random challenges (seed {}: the same challenges every run)",
        args.seed
    );
    println!(
        "  solve time ms: mean {:.1}  median {:.1}  p90 {:.1}  max {:.1}",
        ms(total) / solves as f64,
        ms(pct(0.5)),
        ms(pct(0.9)),
        ms(pct(1.0))
    );
    println!(
        "  hashes per solve: mean {:.0} (expected 2^{difficulty} = {})",
        hashes as f64 / solves as f64,
        1u64 << difficulty
    );
    let rate = hashes as f64 / total.as_secs_f64() / 1e6;
    println!("  solving rate: {rate:.2} M hashes/s on one core");
    // What one try costs in SHA-256 compressions (64-byte blocks): the solver hashes the fixed
    // part once and clones that state, so the blocks it already filled are not hashed again;
    // the rest, the nonce and the padding (at least 9 bytes) are hashed per try.
    let fixed = 32 + 32 + 2 + connector.to_string().len() + acceptor.to_string().len();
    let per_try = (fixed + 8 + 9).div_ceil(64) - fixed / 64;
    println!(
        "  per try: SHA-256 of {} bytes, {per_try} compression(s) after the fixed {fixed}: \
         {:.2} M compressions/s",
        fixed + 8,
        rate * per_try as f64
    );

    let n = 200_000;
    let challenge = [7u8; 32];
    let b = pow::Bound {
        challenge: &challenge,
        key: &key,
        connector: &connector,
        acceptor: &acceptor,
    };
    let t = Instant::now();
    let mut ok = 0u32;
    for i in 0..n {
        ok += pow::verify(b, difficulty, i) as u32;
    }
    let per = t.elapsed() / n as u32;
    println!(
        "  verify: {:.2} µs per check ({} of {n} random nonces passed)",
        per.as_secs_f64() * 1e6,
        ok
    );

    // The other SHA-256 on a node's hot path: the id of every gossip frame received.
    let texts: Vec<Vec<u8>> = (0..1000)
        .map(|i| format!("1795313883123:127.0.0.1:40000:{i}").into_bytes())
        .collect();
    let t = Instant::now();
    let mut x = 0u8;
    for _ in 0..1000 {
        for text in &texts {
            x ^= gossipnet::texts::message_id(0, 0, text)[0];
        }
    }
    println!(
        "message id (SHA-256 of a {}-byte text): {:.0} ns ({x})",
        texts[0].len(),
        t.elapsed().as_nanos() as f64 / 1e6
    );
    handshake_costs(difficulty, connector, acceptor, &mut rng);
    std::process::ExitCode::SUCCESS
}

/// Ed25519 over a transcript, and one whole version-2 handshake (both ends, no network).
fn handshake_costs(
    difficulty: u8,
    connector: SocketAddr,
    acceptor: SocketAddr,
    rng: &mut rand::rngs::StdRng,
) {
    use gossipnet::handshake::{AcceptorHandshake, Admission, Connector};
    use gossipnet::keys::{self, NodeKey, SeedKeys};
    let (con_key, acc_key) = (
        NodeKey::from_secret(rng.gen()),
        NodeKey::from_secret(rng.gen()),
    );
    let msg = [5u8; 51];
    let n = 2_000;
    let t = Instant::now();
    let mut sig = [0u8; 64];
    for i in 0..n {
        sig = con_key.sign(&[&msg[..], &[i as u8]].concat());
    }
    let sign = t.elapsed() / n;
    let t = Instant::now();
    let mut ok = 0;
    for _ in 0..n {
        ok += keys::verify(
            &con_key.public(),
            &[&msg[..], &[(n - 1) as u8]].concat(),
            &sig,
        ) as u32;
    }
    let verify = t.elapsed() / n;
    assert_eq!(ok, n);
    println!(
        "Ed25519 (handshake signatures): sign {:.1} µs, verify {:.1} µs",
        sign.as_secs_f64() * 1e6,
        verify.as_secs_f64() * 1e6
    );
    let seed_keys = SeedKeys::default();
    let rounds = 20;
    let (mut connector_time, mut acceptor_time) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let deadline = Instant::now() + Duration::from_secs(3600);
        let t = Instant::now();
        let acc = AcceptorHandshake::new(rng, difficulty, acceptor, acc_key.public(), deadline);
        let challenge = acc.challenge_msg();
        acceptor_time += t.elapsed();
        let me = Connector {
            role: gossipnet::wire::Role::Peer,
            addr: connector,
            incarnation: 1,
            key: &con_key,
            max_difficulty: 32,
        };
        let t = Instant::now();
        let puzzle = me.on_challenge(challenge, acceptor, None).unwrap();
        let answer = me.solve(&puzzle, rng.gen(), deadline).unwrap();
        connector_time += t.elapsed();
        let t = Instant::now();
        let ctx = Admission {
            seeds: &[],
            seed_keys: &seed_keys,
            from: connector.ip(),
            loopback_exempt: true,
        };
        let admitted = acc
            .on_hello(answer.hello.clone(), Instant::now(), &ctx)
            .unwrap();
        let welcome = AcceptorHandshake::welcome(&acc_key, &admitted);
        acceptor_time += t.elapsed();
        let t = Instant::now();
        me.on_welcome(welcome, &puzzle, &answer).unwrap();
        connector_time += t.elapsed();
    }
    println!(
        "one handshake at difficulty {difficulty}, mean of {rounds}: connector {:.2} ms (work, sign, verify), acceptor {:.1} µs (challenge, one hash, verify, sign)",
        connector_time.as_secs_f64() * 1e3 / rounds as f64,
        acceptor_time.as_secs_f64() * 1e6 / rounds as f64
    );
}
