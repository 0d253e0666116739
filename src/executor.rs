//! The TCP runtime's action executor: the part that carries out a core's connection actions
//! against the connection table. It queues each frame (encoded once, its bytes shared) on every
//! target's outbox
//! in the order the core decided, takes back withdrawn gossip, and takes closed and
//! overflowing connections out of the table. It runs under the core lock, never blocks and
//! touches no socket: what to flush, what to close and which connections overflowed go back to
//! the runtime (`net.rs`), which does the I/O after. Generic over the connection, so its tests
//! drive it with a fake table.

use std::collections::HashMap;

use crate::node::{Action, ConnId};
use crate::wire::{Frame, Msg};

/// What the executor needs of a connection: its outbound queue.
pub trait Queue: Clone {
    /// Queues a frame (a clone, which shares its bytes); false if the queue is full (or closed).
    fn push(&self, frame: &Frame) -> bool;
    /// Queues the frame of a gossip item (`Gossip`, `SyncItem`), within the share of the queue
    /// items may take; with its `id`, `withdraw` can take it back until it is sent.
    fn push_item(&self, frame: &Frame, id: Option<[u8; 32]>) -> bool;
    /// Takes back item `id`'s queued, unsent frame; true if there was one.
    fn withdraw(&self, id: &[u8; 32]) -> bool;
    /// The same connection (to list each touched connection once).
    fn same(&self, other: &Self) -> bool;
}

/// What one batch of actions leaves for the runtime to do.
pub struct Executed<C> {
    /// Connections with newly queued bytes, each once: flush them once the core lock is
    /// released.
    pub touched: Vec<C>,
    /// Connections the core closed, out of the table already: hand what they hold to the
    /// socket if it has room (a `Reject`, a goodbye queued just before), then close them.
    pub closing: Vec<C>,
    /// Connections whose queue had no room for a frame other than gossip, out of the table:
    /// close them and tell the core (`CloseReason::QueueFull`).
    pub overflowed: Vec<(ConnId, C)>,
    /// Connections whose queue had no room for a gossip frame, which was left out for them
    /// (once per frame): they stay, as slow readers, not dead ones.
    pub skipped: Vec<(ConnId, C)>,
    /// Gossip frames taken back before they were sent.
    pub withdrawn: u64,
}

/// Carries out the connection actions (`Send`, `Forward`, `Withdraw`, `SendApi`, `Close`) of
/// `actions`, in order; the others are the runtime's.
pub fn execute<C: Queue, S: std::hash::BuildHasher>(
    actions: &[Action],
    table: &mut HashMap<ConnId, C, S>,
) -> Executed<C> {
    let mut done: Executed<C> = Executed {
        touched: Vec::new(),
        closing: Vec::new(),
        overflowed: Vec::new(),
        skipped: Vec::new(),
        withdrawn: 0,
    };
    let mut queue = |table: &mut HashMap<ConnId, C, S>, conn: ConnId, frame: &Frame, item, id| {
        let Some(c) = table.get(&conn) else {
            // Closed already (by the core or the runtime): nothing more goes to it.
            return;
        };
        let queued = if item {
            c.push_item(frame, id)
        } else {
            c.push(frame)
        };
        if queued {
            if !done.touched.iter().any(|t| t.same(c)) {
                done.touched.push(c.clone());
            }
        } else if item {
            // A remote reading slower than we forward misses this item here; its other
            // neighbours or catch-up bring it. One that reads nothing at all is closed by its
            // writer (`limits.write_timeout`), so its queue is never held for long.
            done.skipped.push((conn, c.clone()));
        } else if let Some(c) = table.remove(&conn) {
            done.overflowed.push((conn, c));
        }
    };
    for action in actions {
        match action {
            Action::Send { to, msg } => {
                let frame = msg.frame();
                let item = matches!(msg, Msg::Gossip { .. } | Msg::SyncItem { .. });
                for conn in to {
                    queue(table, *conn, &frame, item, None);
                }
            }
            Action::Forward { to, msg, id } => {
                let frame = msg.frame();
                for conn in to {
                    queue(table, *conn, &frame, true, Some(*id));
                }
            }
            Action::SendApi { to, msg } => {
                if let Ok(frame) = msg.encode() {
                    queue(table, *to, &Frame::from(frame), false, None);
                }
            }
            Action::Withdraw { conn, id } => {
                if table.get(conn).is_some_and(|c| c.withdraw(id)) {
                    done.withdrawn += 1;
                }
            }
            Action::Close { conn } => {
                if let Some(c) = table.remove(conn) {
                    done.closing.push(c);
                }
            }
            Action::Dial { .. }
            | Action::SetTimer { .. }
            | Action::Reincarnate
            | Action::Log(_) => {}
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Frames queued, with the gossip id they carry if any.
    type Queued = Rc<RefCell<Vec<(Vec<u8>, Option<[u8; 32]>)>>>;

    /// A connection that records what it was given, with room for `room` frames.
    #[derive(Clone)]
    struct Fake {
        id: ConnId,
        room: usize,
        frames: Queued,
    }

    impl Queue for Fake {
        fn push(&self, frame: &Frame) -> bool {
            let mut f = self.frames.borrow_mut();
            if f.len() >= self.room {
                return false;
            }
            f.push((frame.to_vec(), None));
            true
        }
        fn push_item(&self, frame: &Frame, id: Option<[u8; 32]>) -> bool {
            let mut f = self.frames.borrow_mut();
            if f.len() >= self.room {
                return false;
            }
            f.push((frame.to_vec(), id));
            true
        }
        fn withdraw(&self, id: &[u8; 32]) -> bool {
            let mut f = self.frames.borrow_mut();
            let before = f.len();
            f.retain(|(_, i)| i.as_ref() != Some(id));
            f.len() < before
        }
        fn same(&self, other: &Self) -> bool {
            self.id == other.id
        }
    }

    fn table(rooms: &[(ConnId, usize)]) -> HashMap<ConnId, Fake> {
        rooms
            .iter()
            .map(|&(id, room)| {
                (
                    id,
                    Fake {
                        id,
                        room,
                        frames: Rc::default(),
                    },
                )
            })
            .collect()
    }

    fn frames(t: &HashMap<ConnId, Fake>, id: ConnId) -> Vec<Vec<u8>> {
        t[&id]
            .frames
            .borrow()
            .iter()
            .map(|(f, _)| f.clone())
            .collect()
    }

    #[test]
    fn frames_go_to_every_target_in_the_order_decided_and_each_touched_once() {
        let mut t = table(&[(1, 10), (2, 10)]);
        let actions = vec![
            Action::Send {
                to: vec![1, 2],
                msg: Msg::GetPeers,
            },
            Action::send(1, Msg::Leave),
            Action::Dial {
                addr: "127.0.0.1:1".parse().unwrap(),
                purpose: crate::node::Purpose::Neighbour,
                key: None,
            },
        ];
        let done = execute(&actions, &mut t);
        assert_eq!(
            frames(&t, 1),
            vec![Msg::GetPeers.encode(), Msg::Leave.encode()]
        );
        assert_eq!(frames(&t, 2), vec![Msg::GetPeers.encode()]);
        let touched: Vec<ConnId> = done.touched.iter().map(|c| c.id).collect();
        assert_eq!(touched, vec![1, 2]);
        assert!(done.closing.is_empty() && done.overflowed.is_empty());
    }

    #[test]
    fn send_then_close_queues_the_frame_first_and_nothing_after_the_close() {
        let mut t = table(&[(1, 10)]);
        let reject = Msg::Reject {
            reason: "bye".into(),
        };
        let actions = vec![
            Action::send(1, reject.clone()),
            Action::Close { conn: 1 },
            Action::send(1, Msg::Leave),
        ];
        let done = execute(&actions, &mut t);
        assert!(t.is_empty(), "closed connections leave the table");
        assert_eq!(done.closing.len(), 1);
        let held: Vec<Vec<u8>> = done.closing[0]
            .frames
            .borrow()
            .iter()
            .map(|(f, _)| f.clone())
            .collect();
        assert_eq!(held, vec![reject.encode()], "the reason, and nothing after");
    }

    #[test]
    fn a_full_queue_takes_that_connection_out_and_the_others_go_on() {
        let mut t = table(&[(1, 1), (2, 10)]);
        let actions = vec![
            Action::Send {
                to: vec![1, 2],
                msg: Msg::GetPeers,
            },
            Action::Send {
                to: vec![1, 2],
                msg: Msg::Registered {
                    incarnation: 1,
                    signatures: vec![],
                },
            },
            Action::send(1, Msg::Leave),
        ];
        let done = execute(&actions, &mut t);
        let over: Vec<ConnId> = done.overflowed.iter().map(|(id, _)| *id).collect();
        assert_eq!(over, vec![1], "reported once");
        assert!(!t.contains_key(&1));
        assert_eq!(
            frames(&t, 2),
            vec![
                Msg::GetPeers.encode(),
                Msg::Registered {
                    incarnation: 1,
                    signatures: vec![]
                }
                .encode()
            ]
        );
    }

    #[test]
    fn gossip_that_does_not_fit_is_left_out_and_the_slow_connection_stays() {
        let mut t = table(&[(1, 1), (2, 10)]);
        let g = |p: &[u8]| Msg::Gossip {
            data_type: 0,
            ttl: 0,
            nonce: 0,
            payload: p.into(),
        };
        let forward = |p: &[u8], id| Action::Forward {
            to: vec![1, 2],
            msg: g(p),
            id,
        };
        let actions = vec![forward(b"a", [1; 32]), forward(b"b", [2; 32])];
        let done = execute(&actions, &mut t);
        assert!(done.overflowed.is_empty());
        let skipped: Vec<ConnId> = done.skipped.iter().map(|(id, _)| *id).collect();
        assert_eq!(skipped, vec![1]);
        assert_eq!(frames(&t, 1), vec![g(b"a").encode()]);
        assert_eq!(frames(&t, 2), vec![g(b"a").encode(), g(b"b").encode()]);
        // Anything else that does not fit still closes it.
        let done = execute(&[Action::send(1, Msg::Leave)], &mut t);
        assert_eq!(done.overflowed.len(), 1);
        assert!(!t.contains_key(&1));
    }

    #[test]
    fn a_withdrawal_takes_back_the_queued_gossip_frame_of_that_item_only() {
        let mut t = table(&[(1, 10)]);
        let g = |p: &[u8]| Msg::Gossip {
            data_type: 0,
            ttl: 0,
            nonce: 0,
            payload: p.into(),
        };
        let actions = vec![
            Action::Forward {
                to: vec![1],
                msg: g(b"a"),
                id: [1; 32],
            },
            Action::Forward {
                to: vec![1],
                msg: g(b"b"),
                id: [2; 32],
            },
            Action::Withdraw {
                conn: 1,
                id: [1; 32],
            },
            Action::Withdraw {
                conn: 1,
                id: [9; 32],
            },
        ];
        let done = execute(&actions, &mut t);
        assert_eq!(done.withdrawn, 1);
        assert_eq!(frames(&t, 1), vec![g(b"b").encode()]);
    }

    #[test]
    fn actions_for_unknown_connections_are_ignored() {
        let mut t = table(&[(1, 10)]);
        let done = execute(
            &[
                Action::send(7, Msg::Leave),
                Action::Close { conn: 8 },
                Action::Withdraw {
                    conn: 9,
                    id: [0; 32],
                },
            ],
            &mut t,
        );
        assert!(done.touched.is_empty() && done.closing.is_empty() && done.overflowed.is_empty());
        assert!(frames(&t, 1).is_empty());
    }
}
