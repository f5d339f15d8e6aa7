//! Why and when a VM stops. Any vCPU, device or the signal handler may ask for a stop; the first
//! reason wins and wakes the event loop, which ends the VM.

use std::sync::Mutex;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::bus::lock;

/// A fault that ends the VM with an error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuestFault {
    #[error("vCPU {0}: triple fault (KVM_EXIT_SHUTDOWN)")]
    TripleFault(u8),
    #[error("vCPU {0}: KVM internal error (on PVM hosts: an instruction its emulator cannot run)")]
    InternalError(u8),
    #[error("vCPU {vcpu}: KVM could not enter the guest, hardware reason {reason:#x}")]
    FailEntry { vcpu: u8, reason: u64 },
    #[error("vCPU {vcpu}: guest crash reported by KVM (system event {kind})")]
    Crash { vcpu: u8, kind: u32 },
    #[error("vCPU {vcpu}: unhandled exit {exit}")]
    UnhandledExit { vcpu: u8, exit: String },
    #[error("vCPU {vcpu}: KVM_RUN failed: {errno}")]
    RunFailed { vcpu: u8, errno: String },
}

/// Why a VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest wrote its exit status to the exit-status port.
    GuestExitStatus(u8),
    /// The guest reset or shut the machine down.
    GuestReset,
    /// herd-vmm got a termination signal.
    Signal(i32),
    /// The guest or KVM failed.
    Fault(GuestFault),
}

/// Something that can ask the VM to stop (devices hold this, not the whole VM).
pub trait StopRequester: Send + Sync {
    /// Asks for a stop; later reasons are ignored once one is recorded.
    fn request_stop(&self, reason: StopReason);
}

/// The VM's stop latch: the first reason, and an eventfd to wake the event loop.
#[derive(Debug)]
pub struct VmStop {
    reason: Mutex<Option<StopReason>>,
    evt: EventFd,
}

impl VmStop {
    /// A latch with no reason yet.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// The recorded reason, if any.
    pub fn reason(&self) -> Option<StopReason> {
        lock(&self.reason).clone()
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        lock(&self.reason).is_some()
    }

    /// The eventfd that becomes readable on the first request.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

impl StopRequester for VmStop {
    fn request_stop(&self, reason: StopReason) {
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            *slot = Some(reason);
            // A full counter (impossible here) or closed fd would only delay the stop until the
            // event loop's next wake-up, and the reason is already recorded.
            let _ = self.evt.write(1);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records every request, for device tests.
    #[derive(Default)]
    pub struct StopLog(pub Mutex<Vec<StopReason>>);

    impl StopRequester for StopLog {
        fn request_stop(&self, reason: StopReason) {
            self.0.lock().unwrap().push(reason);
        }
    }

    #[test]
    fn first_reason_wins_and_wakes_the_event_loop() {
        let stop = VmStop::new().unwrap();
        assert!(!stop.is_requested());
        stop.request_stop(StopReason::GuestExitStatus(3));
        stop.request_stop(StopReason::GuestReset);
        assert_eq!(stop.reason(), Some(StopReason::GuestExitStatus(3)));
        assert_eq!(stop.event().read().unwrap(), 1);
    }
}
