//! Local applications attached through the API: their subscriptions, the notifications owed to
//! them, and the validation rule. Pure; the caller passes time in.
//!
//! The rule (VoidPhone gossip API): an item from the network is forwarded only if this peer has
//! at least one subscriber of its data type and every one of them answered "valid"; the first
//! "invalid" stops it here. Items a local client announced, and the assignment's text messages
//! (data type 0), are not gated: subscribers are notified, and the item spreads regardless.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use crate::api::ApiMsg;
use crate::node::ConnId;

/// Notifications awaiting a validation, at most, over all clients (message ids are 16 bits:
/// this keeps a fresh id quick to find). Each client also has its own bound (`api.max_pending`),
/// so one client that never answers cannot use up the others' share.
pub const MAX_OUTSTANDING: usize = 16_384;

/// What became of a gated item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every subscriber validated it: forward it.
    Forward([u8; 32]),
    /// A subscriber said invalid, or none answered in time, or none is left.
    Drop([u8; 32], &'static str),
}

#[derive(Debug)]
struct Outstanding {
    client: ConnId,
    /// The gated item this notification is for; `None` when nothing waits on the answer.
    item: Option<[u8; 32]>,
    deadline: Instant,
}

#[derive(Debug)]
struct Gate {
    waiting: BTreeSet<u16>,
    valid: usize,
}

/// Why a client's VALIDATION was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownMessageId(pub u16);

#[derive(Debug)]
pub struct LocalApps {
    /// Notifications one client may leave unanswered; past that it is sent no more.
    max_pending: usize,
    /// How long a notification may stay unanswered before its client is disconnected.
    timeout: Duration,
    /// Unanswered notifications per client.
    pending: BTreeMap<ConnId, usize>,
    subscribers: BTreeMap<u16, BTreeSet<ConnId>>,
    outstanding: BTreeMap<u16, Outstanding>,
    /// Message ids in the order they were issued, for expiry.
    issued: VecDeque<u16>,
    gates: BTreeMap<[u8; 32], Gate>,
    next_id: u16,
}

impl Default for LocalApps {
    fn default() -> Self {
        LocalApps::new(
            crate::config::defaults::API_MAX_PENDING,
            crate::config::defaults::API_VALIDATION_TIMEOUT,
        )
    }
}

/// What an item's notifications came to.
#[derive(Debug, Default)]
pub struct Notified {
    pub notes: Vec<(ConnId, ApiMsg)>,
    /// Subscribers not notified: they already hold `api.max_pending` unanswered notifications.
    pub skipped: Vec<ConnId>,
}

impl LocalApps {
    pub fn new(max_pending: usize, timeout: Duration) -> Self {
        LocalApps {
            max_pending: max_pending.max(1),
            timeout,
            pending: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            outstanding: BTreeMap::new(),
            issued: VecDeque::new(),
            gates: BTreeMap::new(),
            next_id: 0,
        }
    }

    /// How long a notification may stay unanswered.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn answered(&mut self, client: ConnId) {
        if let Some(n) = self.pending.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.pending.remove(&client);
            }
        }
    }

    pub fn subscribe(&mut self, client: ConnId, data_type: u16) {
        self.subscribers
            .entry(data_type)
            .or_default()
            .insert(client);
    }

    pub fn has_subscribers(&self, data_type: u16) -> bool {
        self.subscribers
            .get(&data_type)
            .is_some_and(|s| !s.is_empty())
    }

    fn fresh_id(&mut self) -> Option<u16> {
        if self.outstanding.len() >= MAX_OUTSTANDING {
            return None;
        }
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.outstanding.contains_key(&id) {
                return Some(id);
            }
        }
    }

    /// Notifications for an item: one per subscriber of `data_type` except `exclude`, each
    /// with a fresh message id. With `gate`, the item waits for their validations (see
    /// [`LocalApps::validation`]); an item with no one to notify returns no notifications.
    pub fn notify(
        &mut self,
        item: [u8; 32],
        data_type: u16,
        data: &[u8],
        exclude: Option<ConnId>,
        gate: bool,
        now: Instant,
    ) -> Notified {
        let clients: Vec<ConnId> = self
            .subscribers
            .get(&data_type)
            .map(|s| s.iter().copied().filter(|c| Some(*c) != exclude).collect())
            .unwrap_or_default();
        self.notify_clients(clients, item, data_type, data, gate, now)
    }

    /// A notification for one client only, not gating the item (a client that subscribes
    /// hears of the recent items of its type).
    pub fn notify_one(
        &mut self,
        client: ConnId,
        item: [u8; 32],
        data_type: u16,
        data: &[u8],
        now: Instant,
    ) -> Notified {
        self.notify_clients(vec![client], item, data_type, data, false, now)
    }

    fn notify_clients(
        &mut self,
        clients: Vec<ConnId>,
        item: [u8; 32],
        data_type: u16,
        data: &[u8],
        gate: bool,
        now: Instant,
    ) -> Notified {
        let mut out = Notified::default();
        let mut waiting = BTreeSet::new();
        for client in clients {
            if self
                .pending
                .get(&client)
                .is_some_and(|&n| n >= self.max_pending)
            {
                out.skipped.push(client);
                continue;
            }
            let Some(message_id) = self.fresh_id() else {
                out.skipped.push(client);
                continue;
            };
            *self.pending.entry(client).or_insert(0) += 1;
            self.outstanding.insert(
                message_id,
                Outstanding {
                    client,
                    item: gate.then_some(item),
                    deadline: now + self.timeout,
                },
            );
            self.issued.push_back(message_id);
            waiting.insert(message_id);
            out.notes.push((
                client,
                ApiMsg::Notification {
                    message_id,
                    data_type,
                    data: data.to_vec(),
                },
            ));
        }
        if gate && !waiting.is_empty() {
            self.gates.insert(item, Gate { waiting, valid: 0 });
        }
        out
    }

    /// A client's answer. An id this client was not given is an error (the caller closes the
    /// client); otherwise it may settle a gated item.
    pub fn validation(
        &mut self,
        client: ConnId,
        message_id: u16,
        valid: bool,
    ) -> Result<Option<Verdict>, UnknownMessageId> {
        match self.outstanding.get(&message_id) {
            Some(o) if o.client == client => {}
            _ => return Err(UnknownMessageId(message_id)),
        }
        let o = self.outstanding.remove(&message_id).expect("checked above");
        self.answered(client);
        let Some(item) = o.item else { return Ok(None) };
        Ok(self.settle(item, message_id, valid))
    }

    fn settle(&mut self, item: [u8; 32], message_id: u16, valid: bool) -> Option<Verdict> {
        let gate = self.gates.get_mut(&item)?;
        gate.waiting.remove(&message_id);
        if !valid {
            self.drop_gate(item);
            return Some(Verdict::Drop(item, "a local subscriber found it invalid"));
        }
        gate.valid += 1;
        if gate.waiting.is_empty() {
            self.gates.remove(&item);
            return Some(Verdict::Forward(item));
        }
        None
    }

    fn drop_gate(&mut self, item: [u8; 32]) {
        if let Some(gate) = self.gates.remove(&item) {
            for id in gate.waiting {
                if let Some(o) = self.outstanding.get_mut(&id) {
                    // The client may still answer; the answer just no longer matters.
                    o.item = None;
                }
            }
        }
    }

    /// A client disconnected: its subscriptions end and its pending answers no longer count.
    /// An item left waiting on nobody is forwarded if someone validated it, dropped otherwise.
    pub fn disconnect(&mut self, client: ConnId) -> Vec<Verdict> {
        for subs in self.subscribers.values_mut() {
            subs.remove(&client);
        }
        self.subscribers.retain(|_, s| !s.is_empty());
        self.pending.remove(&client);
        let mine: Vec<u16> = self
            .outstanding
            .iter()
            .filter(|(_, o)| o.client == client)
            .map(|(id, _)| *id)
            .collect();
        let mut verdicts = Vec::new();
        for id in mine {
            let Some(o) = self.outstanding.remove(&id) else {
                continue;
            };
            let Some(item) = o.item else { continue };
            let Some(gate) = self.gates.get_mut(&item) else {
                continue;
            };
            gate.waiting.remove(&id);
            if gate.waiting.is_empty() {
                let validated = gate.valid > 0;
                self.gates.remove(&item);
                verdicts.push(if validated {
                    Verdict::Forward(item)
                } else {
                    Verdict::Drop(item, "its subscribers left before validating it")
                });
            }
        }
        verdicts
    }

    /// Drops notifications whose answer is overdue: gated items among them are not forwarded,
    /// and the clients that left them unanswered are returned (to be disconnected).
    pub fn expire(&mut self, now: Instant) -> (Vec<Verdict>, Vec<ConnId>) {
        let mut verdicts = Vec::new();
        let mut overdue = Vec::new();
        while let Some(&id) = self.issued.front() {
            match self.outstanding.get(&id) {
                Some(o) if o.deadline > now => break,
                Some(_) => {
                    let o = self.outstanding.remove(&id).expect("present");
                    self.answered(o.client);
                    if !overdue.contains(&o.client) {
                        overdue.push(o.client);
                    }
                    if let Some(item) = o.item {
                        if self.gates.contains_key(&item) {
                            self.drop_gate(item);
                            verdicts.push(Verdict::Drop(item, "no validation in time"));
                        }
                    }
                }
                None => {}
            }
            self.issued.pop_front();
        }
        (verdicts, overdue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: [u8; 32] = [1; 32];

    fn ids(n: &[(ConnId, ApiMsg)]) -> Vec<(ConnId, u16)> {
        n.iter()
            .map(|(c, m)| match m {
                ApiMsg::Notification { message_id, .. } => (*c, *message_id),
                _ => panic!(),
            })
            .collect()
    }

    #[test]
    fn only_subscribers_of_the_type_but_not_the_announcer_are_notified() {
        let now = Instant::now();
        let mut a = LocalApps::default();
        a.subscribe(1, 7);
        a.subscribe(2, 7);
        a.subscribe(3, 8);
        let n = a.notify(ITEM, 7, b"x", Some(1), false, now).notes;
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].0, 2);
        // Fresh ids per notification.
        let m = a.notify([2; 32], 7, b"y", None, false, now).notes;
        let got = ids(&m);
        assert_eq!(got.len(), 2);
        assert_ne!(got[0].1, got[1].1);
        assert!(a.notify([3; 32], 9, b"z", None, true, now).notes.is_empty());
    }

    #[test]
    fn forwarded_only_when_every_subscriber_validated() {
        let now = Instant::now();
        let mut a = LocalApps::default();
        a.subscribe(1, 7);
        a.subscribe(2, 7);
        let n = ids(&a.notify(ITEM, 7, b"x", None, true, now).notes);
        assert_eq!(a.validation(n[0].0, n[0].1, true), Ok(None));
        assert_eq!(
            a.validation(n[1].0, n[1].1, true),
            Ok(Some(Verdict::Forward(ITEM)))
        );
    }

    #[test]
    fn one_invalid_answer_stops_the_item() {
        let now = Instant::now();
        let mut a = LocalApps::default();
        a.subscribe(1, 7);
        a.subscribe(2, 7);
        let n = ids(&a.notify(ITEM, 7, b"x", None, true, now).notes);
        assert!(matches!(
            a.validation(n[0].0, n[0].1, false),
            Ok(Some(Verdict::Drop(..)))
        ));
        // The other answer still arrives and is accepted, but changes nothing.
        assert_eq!(a.validation(n[1].0, n[1].1, true), Ok(None));
    }

    #[test]
    fn unknown_or_foreign_ids_are_errors() {
        let now = Instant::now();
        let mut a = LocalApps::default();
        a.subscribe(1, 7);
        let n = ids(&a.notify(ITEM, 7, b"x", None, true, now).notes);
        assert_eq!(a.validation(2, n[0].1, true), Err(UnknownMessageId(n[0].1)));
        assert_eq!(
            a.validation(1, n[0].1.wrapping_add(1), true),
            Err(UnknownMessageId(n[0].1.wrapping_add(1)))
        );
        assert!(a.validation(1, n[0].1, true).is_ok());
        // Answering twice: the second is for an id no longer outstanding.
        assert!(a.validation(1, n[0].1, true).is_err());
    }

    #[test]
    fn leaving_and_silence_settle_the_gate() {
        let now = Instant::now();
        let mut a = LocalApps::default();
        a.subscribe(1, 7);
        a.subscribe(2, 7);
        let n = ids(&a.notify(ITEM, 7, b"x", None, true, now).notes);
        assert_eq!(a.validation(n[0].0, n[0].1, true), Ok(None));
        assert_eq!(a.disconnect(2), vec![Verdict::Forward(ITEM)]);
        assert!(!a.has_subscribers(8));
        a.subscribe(3, 7);
        let _ = a.notify([5; 32], 7, b"y", None, true, now);
        let timeout = a.timeout();
        assert!(a.expire(now + timeout / 2).0.is_empty());
        let (verdicts, overdue) = a.expire(now + timeout + Duration::from_secs(1));
        assert!(matches!(
            verdicts.as_slice(),
            [Verdict::Drop(item, _)] if *item == [5; 32]
        ));
        assert_eq!(
            overdue,
            vec![1, 3],
            "the silent clients are to be disconnected"
        );
    }

    #[test]
    fn a_client_that_does_not_answer_is_not_notified_past_its_bound_and_others_are() {
        let now = Instant::now();
        let mut a = LocalApps::new(2, Duration::from_secs(5));
        a.subscribe(1, 7);
        a.subscribe(2, 8);
        for i in 0..5u8 {
            let n = a.notify([i; 32], 7, b"x", None, true, now);
            assert_eq!(n.notes.len(), usize::from(i < 2), "item {i}");
            assert_eq!(n.skipped, if i < 2 { vec![] } else { vec![1] });
        }
        // Another client, of another type, is served as usual.
        let n = a.notify([9; 32], 8, b"y", None, true, now);
        assert_eq!(ids(&n.notes).len(), 1);
        assert_eq!(
            a.validation(2, ids(&n.notes)[0].1, true),
            Ok(Some(Verdict::Forward([9; 32])))
        );
    }
}
