//! The chat example (`examples/chat.rs`) over two real peers: it says when it has heard
//! nothing from the network yet, says when it has, a line typed before is kept and shown to a
//! newcomer, and then lines reach the other chat as they are typed.
//!
//! The example is built by `cargo test` (all targets); run alone, this file needs
//! `cargo build --examples` first and otherwise skips, saying so.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;

fn chat_binary() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_peer"))
        .parent()?
        .join("examples")
        .join("chat");
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIPPED: examples/chat.rs not built (cargo build --examples)");
        None
    }
}

/// A running chat: what it printed so far (stdout and stderr, in arrival order per stream).
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Arc<Mutex<String>>,
}

impl Chat {
    fn start(bin: &Path, api: SocketAddr, name: &str) -> Chat {
        let mut child = Command::new(bin)
            .arg(api.to_string())
            .arg(name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        for stream in [
            Box::new(stdout) as Box<dyn std::io::Read + Send>,
            Box::new(stderr),
        ] {
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let stdin = child.stdin.take();
        Chat { child, stdin, out }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn said(&self, what: &str) -> bool {
        self.out.lock().unwrap().contains(what)
    }

    fn wait_for(&self, what: &str) {
        wait_until(&format!("chat says `{what}`"), || self.said(what));
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_chat_says_when_the_network_is_not_ready_keeps_earlier_lines_and_then_talks() {
    let Some(bin) = chat_binary() else { return };
    // One seed (a majority of one); the peers gossip long enough for the chats to hear the
    // assignment's messages.
    let mut net = Net::new(
        1,
        "gossip: { interval: 300ms, count: 100 }\nliveness: { interval: 300ms, misses: 3, probe_timeout: 1s }\npow: { difficulty: 8, timeout: 3s }\nstats: { interval: 1s }",
    );
    net.start_seeds();

    // The first peer has no neighbour: what bob types reaches nobody, and the chat says so.
    let (a, api_a) = net.start_api_peer();
    let mut bob = Chat::start(&bin, api_a, "bob");
    bob.wait_for("Nothing heard from the network yet");
    bob.type_line("is anybody there?");
    bob.wait_for("nothing has been heard from the network yet");
    assert!(!bob.said("heard from the network:"), "{}", bob.output());

    // A second peer links to the first: both chats hear the network and say so.
    let (b, api_b) = net.start_api_peer();
    net.wait_for_event("peer", a, "neighbour_up");
    net.wait_for_event("peer", b, "neighbour_up");
    let mut alice = Chat::start(&bin, api_b, "alice");
    bob.wait_for("chat: heard from the network:");
    alice.wait_for("chat: heard from the network:");

    // Bob's line from before was kept by his peer: alice's peer caught up on it, and alice,
    // a newcomer, is shown it.
    alice.wait_for("[bob] is anybody there?");
    // Now lines go both ways as they are typed.
    alice.type_line("hello bob");
    bob.wait_for("[alice] hello bob");
    bob.type_line("hello alice");
    alice.wait_for("[bob] hello alice");
}
