//! The agent's event log: what the supervisor records (instances started, healthy, exited,
//! replaced; services created, scaled, rolled out, ...), numbered in order, kept in a bounded
//! in-memory ring for clients asking for the past (`since`) and broadcast to those following.
//!
//! A follower that falls behind the broadcast catches up from the ring, so it sees every
//! event still retained, in order, exactly once. Events are recorded and broadcast under one
//! lock, so a new follower's backlog and its live events neither overlap nor leave a gap.
//! Nothing is persisted: sequence numbers start at 1 with each agent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::types::{Event, EventKind};

/// Events kept for clients that ask for the past.
pub const CAPACITY: usize = 10_000;
/// Events a follower may be behind before it catches up from the ring.
const BROADCAST: usize = 1024;

/// The log; cheap to clone (the supervisor records, the API reads).
#[derive(Clone, Debug)]
pub struct EventLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Event>,
}

#[derive(Debug)]
struct Ring {
    events: VecDeque<Event>,
    capacity: usize,
    next_seq: u64,
}

impl Ring {
    fn after(&self, seq: u64) -> VecDeque<Event> {
        // Sequence numbers are consecutive, so the first wanted one is found by arithmetic.
        let first = self.events.front().map_or(self.next_seq, |e| e.seq);
        let skip = seq.saturating_add(1).saturating_sub(first);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        self.events.iter().skip(skip).cloned().collect()
    }
}

impl EventLog {
    /// An empty log keeping the last `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(BROADCAST);
        let ring = Ring {
            events: VecDeque::new(),
            capacity: capacity.max(1),
            next_seq: 1,
        };
        Self {
            inner: Arc::new(Inner {
                ring: Mutex::new(ring),
                tx,
            }),
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock cannot leave the ring inconsistent (push and pop
        // are single steps), so a poisoned lock is still usable.
        self.inner.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records an event now and sends it to every follower.
    pub fn record(&self, service: &str, instance: Option<&str>, kind: EventKind) -> Event {
        let mut ring = self.ring();
        let event = Event {
            seq: ring.next_seq,
            time_ms: super::supervisor::unix_ms(),
            service: service.to_owned(),
            instance: instance.map(str::to_owned),
            kind,
        };
        ring.next_seq += 1;
        if ring.events.len() == ring.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Sent under the lock: see `subscribe`. No follower is not an error.
        let _ = self.inner.tx.send(event.clone());
        event
    }

    /// The retained events after `since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<Event> {
        self.ring().after(since).into()
    }

    /// How many followers there are now.
    pub fn followers(&self) -> usize {
        self.inner.tx.receiver_count()
    }

    /// A follower: the retained events after `since`, then every new one.
    pub fn subscribe(&self, since: u64) -> Subscription {
        let ring = self.ring();
        let rx = self.inner.tx.subscribe();
        Subscription {
            log: self.clone(),
            backlog: ring.after(since),
            rx,
            last: since,
        }
    }
}

/// Events in order for one follower.
#[derive(Debug)]
pub struct Subscription {
    log: EventLog,
    backlog: VecDeque<Event>,
    rx: broadcast::Receiver<Event>,
    /// The last sequence number handed out (or asked to start after).
    last: u64,
}

impl Subscription {
    /// The next event, waiting for it if need be. Never ends while the log exists (the
    /// caller stops following).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.backlog.pop_front() {
                self.last = event.seq;
                return Some(event);
            }
            match self.rx.recv().await {
                Ok(event) if event.seq <= self.last => {}
                Ok(event) => {
                    self.last = event.seq;
                    return Some(event);
                }
                Err(RecvError::Lagged(_)) => self.backlog = self.log.ring().after(self.last),
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// An event as one line of the stream: its JSON and a newline.
pub fn to_line(event: &Event) -> Vec<u8> {
    // Events hold strings, numbers and enums with string keys: serializing cannot fail.
    let mut line = serde_json::to_vec(event).unwrap_or_default();
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::EndReason;

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    fn started(log: &EventLog, n: usize) {
        for _ in 0..n {
            log.record(
                "web",
                Some("web-1"),
                EventKind::InstanceStarted {
                    generation: 1,
                    start: crate::fleet::StartKind::Boot,
                },
            );
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_events_numbered_in_order() {
        let log = EventLog::new(3);
        started(&log, 5);
        assert_eq!(seqs(&log.since(0)), [3, 4, 5]);
        assert_eq!(seqs(&log.since(3)), [4, 5]);
        assert_eq!(seqs(&log.since(5)), Vec::<u64>::new());
        assert_eq!(seqs(&log.since(u64::MAX)), Vec::<u64>::new());
    }

    #[test]
    fn events_serialize_as_one_flat_json_line_and_read_back() {
        let log = EventLog::new(10);
        let kind = EventKind::InstanceExited {
            reason: EndReason::Unhealthy,
            exit_code: None,
        };
        let event = log.record("web", Some("web-1"), kind);
        let line = to_line(&event);
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let value: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(value["type"], "instance_exited");
        assert_eq!(value["reason"], "unhealthy");
        assert_eq!(value["exit_code"], serde_json::Value::Null);
        assert_eq!(value["seq"], 1);
        let back: Event = serde_json::from_slice(&line).unwrap();
        assert_eq!(back, event);
        let service = log.record("web", None, EventKind::ServiceDeleted);
        let value: serde_json::Value = serde_json::from_slice(&to_line(&service)).unwrap();
        assert_eq!(value["instance"], serde_json::Value::Null);
        assert_eq!(value["type"], "service_deleted");
    }

    #[tokio::test]
    async fn a_follower_gets_the_backlog_then_new_events_without_gap_or_repeat() {
        let log = EventLog::new(100);
        started(&log, 3);
        let mut sub = log.subscribe(1);
        started(&log, 2);
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(sub.next().await.unwrap().seq);
        }
        assert_eq!(got, [2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_follower_that_falls_behind_catches_up_from_the_ring() {
        let log = EventLog::new(CAPACITY);
        let mut sub = log.subscribe(0);
        started(&log, BROADCAST * 2 + 5);
        let mut last = 0;
        for _ in 0..BROADCAST * 2 + 5 {
            let seq = sub.next().await.unwrap().seq;
            assert_eq!(seq, last + 1, "in order, none missed or repeated");
            last = seq;
        }
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), sub.next()).await;
        assert!(pending.is_err(), "nothing more: {pending:?}");
    }
}
