//! A terminal chat over a gossipnet network, through any peer's application API.
//!
//! ```sh
//! target/release/peer --addr 127.0.0.1:9101 --api-addr 127.0.0.1:7001      # shell 1
//! target/release/peer --addr 127.0.0.1:9102 --api-addr 127.0.0.1:7002      # shell 2
//! cargo run --release --example chat -- 127.0.0.1:7001 alice              # shell 3
//! cargo run --release --example chat -- 127.0.0.1:7002 bob                # shell 4
//! ```
//!
//! Each line typed is announced on data type 4242 as `<unix ms>\t<name>\t<text>` (the time
//! keeps two equal lines distinct items); every line from others is printed with its sender.
//! Notifications are validated: well-formed chat lines are valid, anything else is not (and
//! so stops at this peer).
//!
//! A line reaches the chats connected to the network when it is sent. The peer also keeps it
//! in its history (`gossip.history`, the last 10 minutes by default): a peer that joins later
//! catches up on it, and a chat that connects to a peer is first shown the recent lines that
//! peer holds. So a line typed before the peer has joined is not lost: its neighbours get it
//! once it has some. The API gives no sign of whether the peer has joined the network
//! (ANNOUNCE has no reply), so the chat watches for the first sign that it has: anything
//! arriving from the network, a chat line or one of the assignment's text messages (data type
//! 0, which it also subscribes to). Until then it says, after each line sent, that the line
//! waits; once it hears from the network it says so.
#![forbid(unsafe_code)]

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use gossipnet::api::{ApiMsg, ApiReader, MAX_DATA};
use gossipnet::texts::TEXT_DATA_TYPE;

/// The data type chat lines travel on.
const CHAT: u16 = 4242;

/// A terminal chat over a gossipnet network: every line typed is announced on data type 4242,
/// every line from others is printed with its sender.
#[derive(clap::Parser, Debug)]
#[command(name = "chat")]
struct Args {
    /// The application API of a running peer (its --api-addr), e.g. 127.0.0.1:7001.
    #[arg(value_name = "API_ADDR")]
    api: SocketAddr,
    /// The name your lines are shown with.
    name: String,
}

fn main() -> std::process::ExitCode {
    let args: Args = match gossipnet::cli::parse_args() {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (api, name) = (&args.api, &args.name);
    let mut stream = match TcpStream::connect(api) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("chat: cannot connect to {api}: {e}");
            std::process::exit(1);
        }
    };
    let send = |s: &mut TcpStream, m: ApiMsg| -> std::io::Result<()> {
        let bytes = m
            .encode()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        s.write_all(&bytes)
    };
    for data_type in [CHAT, TEXT_DATA_TYPE] {
        if let Err(e) = send(&mut stream, ApiMsg::Notify { data_type }) {
            eprintln!("chat: cannot subscribe at {api}: {e}");
            std::process::exit(1);
        }
    }
    println!("connected to {api} as {name}; type a line and press Enter (Ctrl-D to quit)");
    println!(
        "a line reaches the chats connected to the network when you send it, and the peer keeps \
         it for ten minutes for those who join later. Nothing heard from the network yet: until \
         this peer has joined (its screen says `Connected to neighbour`), what you type waits \
         at the peer."
    );

    // Set on the first item from the network: the peer has a neighbour.
    let heard = Arc::new(AtomicBool::new(false));
    let heard_by_reader = Arc::clone(&heard);
    let mut reader_stream = stream.try_clone().expect("clone the socket");
    std::thread::spawn(move || {
        let mut reader = ApiReader::default();
        let mut buf = [0u8; 4096];
        let mut out = reader_stream.try_clone().expect("clone the socket");
        loop {
            let n = match reader_stream.read(&mut buf) {
                Ok(0) | Err(_) => {
                    eprintln!("chat: the peer closed the connection");
                    std::process::exit(1);
                }
                Ok(n) => n,
            };
            reader.push(&buf[..n]);
            while let Ok(Some(msg)) = reader.next_msg() {
                let ApiMsg::Notification {
                    message_id,
                    data_type,
                    data,
                } = msg
                else {
                    continue;
                };
                if !heard_by_reader.swap(true, Ordering::Relaxed) {
                    println!(
                        "chat: heard from the network: lines you send now reach the others \
                         connected to this peer"
                    );
                }
                if data_type == TEXT_DATA_TYPE {
                    // The assignment's messages spread whatever we answer; they only tell us
                    // the network is there.
                    let _ = send(
                        &mut out,
                        ApiMsg::Validation {
                            message_id,
                            valid: true,
                        },
                    );
                    continue;
                }
                let line = std::str::from_utf8(&data).ok().and_then(|t| {
                    let mut f = t.splitn(3, '\t');
                    let (_ts, who, text) = (f.next()?, f.next()?, f.next()?);
                    Some((who.to_string(), text.to_string()))
                });
                let valid = line.is_some();
                if let Some((who, text)) = line {
                    println!("[{who}] {text}");
                }
                let _ = send(&mut out, ApiMsg::Validation { message_id, valid });
            }
        }
    });

    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let data = format!("{ts}\t{name}\t{line}").into_bytes();
        if data.len() > MAX_DATA {
            eprintln!(
                "chat: line not sent: {} bytes with its time and name, the API carries at most \
                 {MAX_DATA}",
                data.len()
            );
            continue;
        }
        if let Err(e) = send(
            &mut stream,
            ApiMsg::Announce {
                ttl: 0,
                data_type: CHAT,
                data,
            },
        ) {
            eprintln!("chat: line not sent: the connection to the peer at {api} failed: {e}");
            return std::process::ExitCode::FAILURE;
        }
        if !heard.load(Ordering::Relaxed) {
            eprintln!(
                "chat: sent, but nothing has been heard from the network yet: the peer keeps \
                 this line, and the others get it once it has joined (within ten minutes)"
            );
        }
    }
    std::process::ExitCode::SUCCESS
}
