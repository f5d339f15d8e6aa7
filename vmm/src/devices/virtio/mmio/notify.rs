//! Queue notifications on the event loop: one ioeventfd per queue (KVM signals it when the
//! guest writes the queue's index to `QueueNotify`, without a trip through the vCPU thread),
//! watched here, turned into [`MmioTransport::process_queue_notification`] calls. The device's
//! backend fds (a TAP) are watched here too, edge-triggered, with event data after the queues'.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::MmioTransport;
use crate::bus::lock;

/// Watches one device's queue ioeventfds (event data: the queue index) and its backend fds
/// (event data: queue count + backend index).
pub struct QueueNotifier {
    transport: Arc<Mutex<MmioTransport>>,
    queue_events: Vec<EventFd>,
    backend_fds: Vec<RawFd>,
}

impl QueueNotifier {
    /// Watches `queue_events[i]` for queue `i` of `transport`.
    pub fn new(transport: Arc<Mutex<MmioTransport>>, queue_events: Vec<EventFd>) -> Self {
        let backend_fds = lock(&transport).backend_fds();
        Self {
            transport,
            queue_events,
            backend_fds,
        }
    }
}

impl QueueNotifier {
    /// The transport whose queues this watches.
    pub fn transport(&self) -> Arc<Mutex<MmioTransport>> {
        self.transport.clone()
    }
}

impl MutEventSubscriber for QueueNotifier {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_events.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                // Without it the device never sees requests; fail loudly at start.
                panic!("cannot watch virtio queue {i}: {e:?}");
            }
        }
        let first = self.queue_events.len();
        for (i, &fd) in self.backend_fds.iter().enumerate() {
            let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
            if let Err(e) = ops.add(Events::with_data_raw(fd, (first + i) as u32, set)) {
                panic!("cannot watch virtio backend {i}: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data();
        if let Some(evt) = self.queue_events.get(index as usize) {
            // The count does not matter: the device drains everything the guest made available.
            let _ = evt.read();
            lock(&self.transport).process_queue_notification(index);
        } else if let Some(i) = (index as usize).checked_sub(self.queue_events.len()) {
            lock(&self.transport).process_backend_event(i);
        }
    }
}
