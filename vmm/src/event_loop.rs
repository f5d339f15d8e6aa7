//! The event-loop thread's subscribers: console input from stdin into COM1, and the stop
//! latch plus termination signals. Device work for virtio joins here later.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;
use crate::devices::legacy::SerialDevice;
use crate::logging::RateLimit;
use crate::stop::{StopReason, StopRequester, VmStop};
use crate::sys::signal::last_stop_signal;

/// Feeds stdin to the guest's serial port.
pub struct ConsoleInput {
    serial: Arc<Mutex<SerialDevice>>,
    stdin: std::io::Stdin,
    drop_log: RateLimit,
}

impl ConsoleInput {
    /// Forwards this process's stdin to `serial`.
    pub fn new(serial: Arc<Mutex<SerialDevice>>) -> Self {
        Self {
            serial,
            stdin: std::io::stdin(),
            drop_log: RateLimit::new(1),
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be watched; the guest then simply gets no input.
        if let Err(e) = ops.add(Events::new(&self.stdin, EventSet::IN)) {
            tracing::debug!("stdin is not pollable, console input disabled: {e:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = if events.event_set().contains(EventSet::IN) {
            self.stdin.lock().read(&mut buf).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // EOF or hang-up: stop watching, or epoll would report it forever.
            let _ = ops.remove(Events::new(&self.stdin, EventSet::IN));
            return;
        }
        let taken = lock(&self.serial).queue_input(&buf[..n]);
        if taken < n && self.drop_log.allow() {
            tracing::warn!(
                device = "serial",
                "guest is not reading its console; dropped {} bytes",
                n - taken
            );
        }
    }
}

const TOKEN_STOP: u32 = 1;
const TOKEN_SIGNAL: u32 = 2;

/// Wakes the loop when the VM is asked to stop, and turns termination signals into stops.
pub struct StopWatcher {
    stop: Arc<VmStop>,
    signal_evt: EventFd,
}

impl StopWatcher {
    /// Watches `stop`'s eventfd and `signal_evt` (written by the signal handler).
    pub fn new(stop: Arc<VmStop>, signal_evt: EventFd) -> Self {
        Self { stop, signal_evt }
    }
}

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let stop_fd = self.stop.event().as_raw_fd();
        for (fd, token) in [
            (stop_fd, TOKEN_STOP),
            (self.signal_evt.as_raw_fd(), TOKEN_SIGNAL),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                // Without these the VM could never be stopped; fail loudly at start.
                panic!("cannot watch stop events: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_SIGNAL => {
                let _ = self.signal_evt.read();
                let signal = last_stop_signal().unwrap_or(libc::SIGTERM);
                self.stop.request_stop(StopReason::Signal(signal));
            }
            _ => {
                let _ = self.stop.event().read();
            }
        }
    }
}
