//! The event-loop thread's subscribers: console input from stdin into COM1, and the stop
//! latch plus termination signals (with a graceful stop through the control port, COM2, when
//! a grace period is set). Virtio queue notifications are watched here too, by each device's
//! `devices::virtio::mmio::notify::QueueNotifier`.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

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
const TOKEN_GRACE: u32 = 3;

/// The line herd-vmm sends on the control port to ask the guest to stop.
pub const STOP_REQUEST: &[u8] = b"stop\n";

/// What a termination signal does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignalAction {
    /// Ask the guest to stop through the control port and start the grace timer.
    AskGuest(Duration),
    /// Stop the VM now.
    StopNow,
}

/// The first signal asks the guest to stop (if a grace period is set); a second one, or the
/// end of the grace period, stops the VM.
#[derive(Debug, Default)]
pub struct GracefulStop {
    grace: Option<Duration>,
    asked: bool,
}

impl GracefulStop {
    /// A policy with this grace period (`None` or zero: stop at once).
    pub fn new(grace: Option<Duration>) -> Self {
        Self {
            grace: grace.filter(|g| !g.is_zero()),
            asked: false,
        }
    }

    /// Decides what one more signal does.
    pub fn on_signal(&mut self) -> SignalAction {
        match self.grace {
            Some(g) if !self.asked => {
                self.asked = true;
                SignalAction::AskGuest(g)
            }
            _ => SignalAction::StopNow,
        }
    }
}

/// Wakes the loop when the VM is asked to stop, and turns termination signals into stops,
/// gracefully when the guest is given time to end on its own.
pub struct StopWatcher {
    stop: Arc<VmStop>,
    signal_evt: EventFd,
    control: Arc<Mutex<SerialDevice>>,
    policy: GracefulStop,
    grace_timer: TimerFd,
    signal: i32,
}

impl StopWatcher {
    /// Watches `stop`'s eventfd and `signal_evt` (written by the signal handler); graceful
    /// stop requests go to the guest through `control`.
    pub fn new(
        stop: Arc<VmStop>,
        signal_evt: EventFd,
        control: Arc<Mutex<SerialDevice>>,
        grace: Option<Duration>,
    ) -> std::io::Result<Self> {
        let grace_timer = TimerFd::new()?;
        let policy = GracefulStop::new(grace);
        Ok(Self {
            stop,
            signal_evt,
            control,
            policy,
            grace_timer,
            signal: libc::SIGTERM,
        })
    }

    fn on_signal(&mut self) {
        let _ = self.signal_evt.read();
        self.signal = last_stop_signal().unwrap_or(libc::SIGTERM);
        match self.policy.on_signal() {
            SignalAction::AskGuest(grace) => {
                tracing::info!("asking the guest to stop; it has {} ms", grace.as_millis());
                // Behind any line still waiting (a restore's identity), never inside it.
                lock(&self.control).queue_all(STOP_REQUEST);
                if let Err(e) = self.grace_timer.reset(grace, None) {
                    tracing::warn!("cannot arm the grace timer, stopping now: {e}");
                    self.stop.request_stop(StopReason::Signal(self.signal));
                }
            }
            SignalAction::StopNow => self.stop.request_stop(StopReason::Signal(self.signal)),
        }
    }
}

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        let stop_fd = self.stop.event().as_raw_fd();
        for (fd, token) in [
            (stop_fd, TOKEN_STOP),
            (self.signal_evt.as_raw_fd(), TOKEN_SIGNAL),
            (self.grace_timer.as_raw_fd(), TOKEN_GRACE),
        ] {
            if let Err(e) = ops.add(Events::with_data_raw(fd, token, EventSet::IN)) {
                // Without these the VM could never be stopped; fail loudly at start.
                panic!("cannot watch stop events: {e:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            TOKEN_SIGNAL => self.on_signal(),
            TOKEN_GRACE => {
                let _ = self.grace_timer.wait();
                tracing::warn!("the guest did not stop within its grace period; powering off");
                self.stop.request_stop(StopReason::Signal(self.signal));
            }
            _ => {
                let _ = self.stop.event().read();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_signal_asks_the_guest_and_second_stops_now() {
        let mut p = GracefulStop::new(Some(Duration::from_secs(5)));
        assert_eq!(
            p.on_signal(),
            SignalAction::AskGuest(Duration::from_secs(5))
        );
        assert_eq!(p.on_signal(), SignalAction::StopNow);
    }

    #[test]
    fn without_grace_every_signal_stops_now() {
        for grace in [None, Some(Duration::ZERO)] {
            let mut p = GracefulStop::new(grace);
            assert_eq!(p.on_signal(), SignalAction::StopNow);
        }
    }
}
