//! The application API with a client written from its layout in docs/PROTOCOL.md alone: the
//! bytes are built by hand here, not with the crate's codec.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;

const ANNOUNCE: u16 = 500;
const NOTIFY: u16 = 501;
const NOTIFICATION: u16 = 502;
const VALIDATION: u16 = 503;
/// Data of the items the tests use to confirm a subscription.
const PROBE: &[u8] = b"probe:";

fn frame(kind: u16, body: &[u8]) -> Vec<u8> {
    let size = (4 + body.len()) as u16;
    let mut v = size.to_be_bytes().to_vec();
    v.extend_from_slice(&kind.to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn announce(ttl: u8, data_type: u16, data: &[u8]) -> Vec<u8> {
    let mut b = vec![ttl, 0];
    b.extend_from_slice(&data_type.to_be_bytes());
    b.extend_from_slice(data);
    frame(ANNOUNCE, &b)
}

fn notify(data_type: u16) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&data_type.to_be_bytes());
    frame(NOTIFY, &b)
}

fn validation(message_id: u16, valid: bool) -> Vec<u8> {
    let mut b = message_id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0, valid as u8]);
    frame(VALIDATION, &b)
}

struct Client {
    s: TcpStream,
}

#[derive(Debug, PartialEq)]
struct Notification {
    message_id: u16,
    data_type: u16,
    data: Vec<u8>,
}

impl Client {
    fn connect(api: SocketAddr) -> Client {
        let s = TcpStream::connect(api).unwrap();
        s.set_read_timeout(Some(PATIENCE)).unwrap();
        Client { s }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads exactly one message: `size` first, then the rest.
    fn next(&mut self) -> Option<Notification> {
        let mut head = [0u8; 4];
        self.s.read_exact(&mut head).ok()?;
        let size = u16::from_be_bytes([head[0], head[1]]) as usize;
        let kind = u16::from_be_bytes([head[2], head[3]]);
        assert_eq!(
            kind, NOTIFICATION,
            "clients receive nothing but NOTIFICATION"
        );
        let mut body = vec![0u8; size - 4];
        self.s.read_exact(&mut body).ok()?;
        Some(Notification {
            message_id: u16::from_be_bytes([body[0], body[1]]),
            data_type: u16::from_be_bytes([body[2], body[3]]),
            data: body[4..].to_vec(),
        })
    }

    /// Reads the next notification that is not a subscription probe, and answers it.
    fn next_validated(&mut self, valid: bool) -> Notification {
        loop {
            let n = self.next().expect("a notification");
            if n.data.starts_with(PROBE) {
                self.send(&validation(n.message_id, true));
                continue;
            }
            self.send(&validation(n.message_id, valid));
            return n;
        }
    }

    /// Subscribes and waits until the subscription is live: another client of the same peer
    /// announces fresh probes until one reaches us (a probe processed before our NOTIFY is
    /// simply missed, and the next one tried).
    fn subscribe(&mut self, api: SocketAddr, data_type: u16) {
        self.send(&notify(data_type));
        let mut prober = Client::connect(api);
        self.s
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let start = std::time::Instant::now();
        let mut k = 0;
        'probing: while start.elapsed() < PATIENCE {
            k += 1;
            let tag = format!("{}{}-{k}", std::str::from_utf8(PROBE).unwrap(), free_port());
            prober.send(&announce(1, data_type, tag.as_bytes()));
            while let Some(n) = self.next() {
                self.send(&validation(n.message_id, true));
                if n.data.starts_with(PROBE) {
                    break 'probing;
                }
            }
        }
        self.s.set_read_timeout(Some(PATIENCE)).unwrap();
        assert!(
            start.elapsed() < PATIENCE,
            "subscription to {data_type} never became live"
        );
    }

    /// True once the peer has closed this client.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    }
}

fn two_peers() -> (Net, SocketAddr, SocketAddr) {
    let mut net = Net::new(1, "");
    net.start_seeds();
    let (a, api_a) = net.start_api_peer();
    let (b, api_b) = net.start_api_peer();
    wait_until("the two peers are linked", || {
        neighbours(&net.events("peer", a)).contains(&b.to_string())
            && neighbours(&net.events("peer", b)).contains(&a.to_string())
    });
    (net, api_a, api_b)
}

#[test]
fn an_announcement_reaches_the_other_peers_subscriber_and_not_the_announcer() {
    let (_net, api_a, api_b) = two_peers();
    let mut on_b = Client::connect(api_b);
    on_b.subscribe(api_b, 1337);
    let mut on_a = Client::connect(api_a);
    // NOTIFY and ANNOUNCE in one write: the example bytes of docs/PROTOCOL.md.
    let mut both = notify(1337);
    both.extend_from_slice(&[
        0x00, 0x10, 0x01, 0xF4, 0x04, 0x00, 0x05, 0x39, 0x64, 0x65, 0x61, 0x64, 0x62, 0x65, 0x65,
        0x66,
    ]);
    on_a.send(&both);
    let n = on_b.next_validated(true);
    assert_eq!(n.data_type, 1337);
    assert_eq!(n.data, b"deadbeef");
    // No echo: the first thing A's client hears is B's item, not its own.
    on_b.send(&announce(0, 1337, b"from b"));
    let n = on_a.next_validated(true);
    assert_eq!(n.data, b"from b");
}

#[test]
fn the_same_data_announced_twice_is_delivered_twice() {
    let (_net, api_a, api_b) = two_peers();
    let mut on_b = Client::connect(api_b);
    on_b.subscribe(api_b, 1337);
    let mut on_a = Client::connect(api_a);
    // Twice the same bytes, then a marker: the subscriber gets all three, in any order.
    on_a.send(&announce(0, 1337, b"same"));
    on_a.send(&announce(0, 1337, b"same"));
    on_a.send(&announce(0, 1337, b"end"));
    let mut got: Vec<Vec<u8>> = (0..3).map(|_| on_b.next_validated(true).data).collect();
    got.sort();
    assert_eq!(
        got,
        vec![b"end".to_vec(), b"same".to_vec(), b"same".to_vec()]
    );
}

#[test]
fn split_frames_unsubscribed_types_and_the_largest_payload() {
    let (_net, api_a, api_b) = two_peers();
    let mut on_b = Client::connect(api_b);
    on_b.subscribe(api_b, 7);
    let mut on_a = Client::connect(api_a);
    // A type nobody on B subscribed to, then a subscribed one split across three writes.
    on_a.send(&announce(0, 8, b"not for b"));
    let split = announce(3, 7, b"in three pieces");
    on_a.send(&split[..3]);
    std::thread::sleep(Duration::from_millis(100));
    on_a.send(&split[3..9]);
    std::thread::sleep(Duration::from_millis(100));
    on_a.send(&split[9..]);
    let n = on_b.next_validated(true);
    assert_eq!(
        (n.data_type, n.data.as_slice()),
        (7, &b"in three pieces"[..])
    );
    // The largest payload a message can carry travels intact.
    let big: Vec<u8> = (0..65_535 - 8).map(|i| (i % 251) as u8).collect();
    on_a.send(&announce(0, 7, &big));
    let n = on_b.next_validated(true);
    assert_eq!(n.data.len(), big.len());
    assert!(n.data == big);
}

/// Three API peers in a line (one neighbour wanted each): the API addresses of the first, the
/// middle and the last.
fn line_of_three(extra: &str) -> (Net, SocketAddr, SocketAddr, SocketAddr) {
    let mut net = Net::new(
        1,
        &format!("peer: {{ max_neighbours: 1 }}\nliveness: {{ interval: 300ms }}\npow: {{ difficulty: 8, timeout: 3s }}\n{extra}"),
    );
    net.start_seeds();
    let (a, api_a) = net.start_api_peer();
    let (b, api_b) = net.start_api_peer();
    wait_until("a and b linked", || {
        neighbours(&net.events("peer", b)).contains(&a.to_string())
    });
    let (c, api_c) = net.start_api_peer();
    wait_until("c linked", || {
        !neighbours(&net.events("peer", c)).is_empty()
    });
    let middle: SocketAddr = neighbours(&net.events("peer", c))
        .into_iter()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let apis = [(a, api_a), (b, api_b), (c, api_c)];
    let api_of = |p: SocketAddr| apis.iter().find(|x| x.0 == p).unwrap().1;
    let (first, last) = if middle == a { (b, c) } else { (a, c) };
    wait_until("the line is linked at both ends", || {
        neighbours(&net.events("peer", middle)).len() == 2
    });
    let (f, m, l) = (api_of(first), api_of(middle), api_of(last));
    (net, f, m, l)
}

#[test]
fn an_invalid_validation_stops_the_item_at_that_peer() {
    let (_net, first, middle, last) = line_of_three("");
    let mut mid = Client::connect(middle);
    mid.subscribe(middle, 99);
    let mut far = Client::connect(last);
    far.subscribe(last, 99);
    let mut src = Client::connect(first);
    src.send(&announce(0, 99, b"rejected in the middle"));
    assert_eq!(mid.next_validated(false).data, b"rejected in the middle");
    src.send(&announce(0, 99, b"accepted in the middle"));
    assert_eq!(mid.next_validated(true).data, b"accepted in the middle");
    // The far end hears only the item the middle validated.
    assert_eq!(far.next_validated(true).data, b"accepted in the middle");
}

#[test]
fn a_misbehaving_client_is_closed_alone() {
    let (_net, api_a, api_b) = two_peers();
    let mut good = Client::connect(api_b);
    good.subscribe(api_b, 5);
    let bad_inputs: Vec<Vec<u8>> = vec![
        vec![0x00, 0x02, 0x01, 0xF4],          // size smaller than the header
        frame(600, &[0, 0]),                   // unknown type
        frame(NOTIFY, &[0, 0, 0]),             // NOTIFY of the wrong size
        frame(NOTIFICATION, &[0, 1, 0, 5, 9]), // clients may not send NOTIFICATION
        validation(4242, true),                // VALIDATION for an id never issued
    ];
    for bytes in bad_inputs {
        let mut bad = Client::connect(api_b);
        bad.send(&bytes);
        assert!(bad.closed(), "{bytes:?} did not close the client");
    }
    // The peer and its other client carry on.
    let mut on_a = Client::connect(api_a);
    on_a.send(&announce(0, 5, b"still here"));
    assert_eq!(good.next_validated(true).data, b"still here");
}

#[test]
fn a_client_that_disconnects_loses_its_subscriptions_and_holds_no_item_back() {
    let (net, first, middle, last) = line_of_three("");
    // A client subscribes in the middle and goes away without a word.
    let mut ghost = Client::connect(middle);
    ghost.subscribe(middle, 77);
    drop(ghost);
    // Another subscribes on the same peer, and one at the far end.
    let mut mid = Client::connect(middle);
    mid.subscribe(middle, 77);
    let mut far = Client::connect(last);
    far.subscribe(last, 77);
    let mut src = Client::connect(first);
    src.send(&announce(0, 77, b"past the ghost"));
    assert_eq!(mid.next_validated(true).data, b"past the ghost");
    // The middle forwarded it on its new client's word alone: the ghost held nothing back.
    assert_eq!(far.next_validated(true).data, b"past the ghost");
    drop(net);
}

#[test]
fn a_client_that_never_validates_is_disconnected_and_other_clients_are_served() {
    let body = "gossip: { interval: 300ms, count: 10 }\nliveness: { interval: 300ms, misses: 3, probe_timeout: 1s }\npow: { difficulty: 8, timeout: 3s }\napi: { validation_timeout: 1s, max_clients: 4 }";
    let mut net = Net::new(1, body);
    net.start_seeds();
    let (a, api_a) = net.start_api_peer();
    let (b, api_b) = net.start_api_peer();
    wait_until("the two peers are linked", || {
        neighbours(&net.events("peer", a)).contains(&b.to_string())
    });
    let mut silent = Client::connect(api_b);
    silent.subscribe(api_b, 5);
    let mut other = Client::connect(api_b);
    other.subscribe(api_b, 6);
    let mut src = Client::connect(api_a);
    src.send(&announce(0, 5, b"never answered"));
    src.send(&announce(0, 6, b"answered"));
    assert_eq!(other.next_validated(true).data, b"answered");
    // The silent client got its notification, left it unanswered, and was cut off for it.
    assert_eq!(
        silent.next().map(|n| n.data),
        Some(b"never answered".to_vec())
    );
    assert!(silent.closed(), "the silent client is still connected");
    // (The record is written just after the close.)
    wait_until("a rejected record says why", || {
        of(&net.events("peer", b), "rejected")
            .iter()
            .any(|r| r["reason"].as_str().unwrap_or("").contains("unanswered"))
    });

    // The API has its own budget (4 clients here: `other`, `src` is on a): past it a client
    // is refused at once, and a peer can still join.
    let mut held: Vec<Client> = (0..3).map(|_| Client::connect(api_b)).collect();
    let mut refused = Client::connect(api_b);
    assert!(refused.closed(), "a client past api.max_clients was served");
    held.clear();
    net.start_peer();
}

#[test]
fn an_item_with_newlines_and_control_bytes_writes_no_line_of_its_own() {
    let (net, api_a, _api_b) = two_peers();
    let mut c = Client::connect(api_a);
    // Data type 0 is the assignment's text, shown in every peer's .txt.
    let evil = b"1:x\n2026-12-01 20:39:16.617  Removed peer 127.0.0.1:1 (dead)\r\x1b[2J\x07end";
    c.send(&announce(0, 0, evil));
    let peers = net.peers();
    wait_until("the other peer received the item", || {
        peers
            .iter()
            .any(|p| of(&net.events("peer", *p), "gossip_received").len() == 1)
    });
    let mut txts = 0;
    for entry in std::fs::read_dir(net.out_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "txt") {
            continue;
        }
        txts += 1;
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.iter().any(|&b| b < 0x20 && b != b'\n'),
            "{} holds a raw control byte",
            path.display()
        );
        for line in String::from_utf8_lossy(&bytes).lines() {
            assert!(
                line.starts_with(|c: char| c.is_ascii_digit()),
                "{}: a line that is not the node's own: {line:?}",
                path.display()
            );
            assert!(
                !line.starts_with("2026-12-01 20:39:16.617"),
                "{}: the item wrote a line of its own: {line:?}",
                path.display()
            );
        }
    }
    assert!(txts >= 3, "{txts} .txt files");
}
