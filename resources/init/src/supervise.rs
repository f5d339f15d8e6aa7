//! The supervision state machine: `Starting` → `Running { app }` → `Exited(status)`.
//!
//! It decides, without doing anything itself, what each event means: a SIGTERM or SIGINT is
//! forwarded to the app (or held until it has started), and so is a stop request from the
//! host's control port (as SIGTERM); SIGCHLD means "reap now", and the
//! reaped child that is the app ends supervision with its exit status while every other
//! reaped child (an orphan re-parented to PID 1) is simply collected. [`crate::boot`] carries
//! the decisions out.

use crate::host::{Pid, Signal};
use crate::status;

/// Where supervision is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The app has not been started; stop requests are held in `pending`.
    Starting { pending: Pending },
    /// The app runs as `app`.
    Running { app: Pid },
    /// Supervision is over: the VM ends with this status.
    Exited(u8),
}

/// Stop requests that arrived before the app started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    pub term: bool,
    pub int: bool,
}

impl Pending {
    /// The held signals, in arrival-independent order (SIGINT, then SIGTERM).
    pub fn signals(self) -> impl Iterator<Item = Signal> {
        [(self.int, Signal::Int), (self.term, Signal::Term)]
            .into_iter()
            .filter_map(|(held, sig)| held.then_some(sig))
    }
}

/// What to do about a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send `signal` to the app.
    Forward { app: Pid, signal: Signal },
    /// Collect exited children until none is left.
    Reap,
    /// Held until the app starts.
    Hold,
    /// Nothing to do (supervision is over).
    Ignore,
}

/// The state machine.
#[derive(Debug)]
pub struct Supervisor {
    state: State,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self {
            state: State::Starting {
                pending: Pending::default(),
            },
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The app started as `app`; returns the held signals to forward to it now.
    pub fn started(&mut self, app: Pid) -> Pending {
        debug_assert!(
            matches!(self.state, State::Starting { .. }),
            "app started twice"
        );
        let pending = match self.state {
            State::Starting { pending } => pending,
            _ => Pending::default(),
        };
        self.state = State::Running { app };
        pending
    }

    /// The app could not start: supervision ends with `status`.
    pub fn failed_to_start(&mut self, status: u8) {
        self.state = State::Exited(status);
    }

    /// A signal arrived.
    pub fn on_signal(&mut self, signal: Signal) -> Decision {
        match (&mut self.state, signal) {
            (State::Exited(_), _) => Decision::Ignore,
            (_, Signal::Child) => Decision::Reap,
            (State::Running { app }, sig) => Decision::Forward {
                app: *app,
                signal: sig,
            },
            (State::Starting { pending }, Signal::Term) => {
                pending.term = true;
                Decision::Hold
            }
            (State::Starting { pending }, Signal::Int) => {
                pending.int = true;
                Decision::Hold
            }
        }
    }

    /// herd-vmm asked, on the control port, for the app to stop: the same as a SIGTERM to init.
    pub fn on_stop_request(&mut self) -> Decision {
        self.on_signal(Signal::Term)
    }

    /// A child was reaped with raw wait status `raw`. Returns the VM's exit status when that
    /// child was the app.
    pub fn on_reaped(&mut self, pid: Pid, raw: i32) -> Option<u8> {
        match self.state {
            State::Running { app } if app == pid => {
                let code = status::from_wait_status(raw)?;
                self.state = State::Exited(code);
                Some(code)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_forwards_stop_requests_and_exits_with_the_apps_status() {
        let mut s = Supervisor::new();
        assert_eq!(s.started(42), Pending::default());
        assert_eq!(s.state(), State::Running { app: 42 });
        assert_eq!(
            s.on_signal(Signal::Term),
            Decision::Forward {
                app: 42,
                signal: Signal::Term
            }
        );
        assert_eq!(
            s.on_signal(Signal::Int),
            Decision::Forward {
                app: 42,
                signal: Signal::Int
            }
        );
        assert_eq!(
            s.on_stop_request(),
            Decision::Forward {
                app: 42,
                signal: Signal::Term
            }
        );
        assert_eq!(s.on_signal(Signal::Child), Decision::Reap);
        assert_eq!(s.on_reaped(42, libc::SIGTERM), Some(143));
        assert_eq!(s.state(), State::Exited(143));
        assert_eq!(s.on_signal(Signal::Term), Decision::Ignore);
        assert_eq!(s.on_signal(Signal::Child), Decision::Ignore);
    }

    #[test]
    fn orphans_are_collected_without_ending_supervision() {
        let mut s = Supervisor::new();
        s.started(42);
        assert_eq!(s.on_reaped(77, 0), None);
        assert_eq!(s.on_reaped(78, 9 << 8), None);
        assert_eq!(s.state(), State::Running { app: 42 });
        assert_eq!(s.on_reaped(42, 3 << 8), Some(3));
    }

    #[test]
    fn stop_requests_before_start_are_held_then_forwarded() {
        let mut s = Supervisor::new();
        assert_eq!(s.on_signal(Signal::Term), Decision::Hold);
        assert_eq!(s.on_signal(Signal::Term), Decision::Hold);
        assert_eq!(s.on_signal(Signal::Int), Decision::Hold);
        assert_eq!(s.on_stop_request(), Decision::Hold);
        let held: Vec<_> = s.started(5).signals().collect();
        assert_eq!(held, [Signal::Int, Signal::Term]);
        assert_eq!(s.on_signal(Signal::Child), Decision::Reap);
    }

    #[test]
    fn a_stopped_app_is_not_an_exit_and_a_failed_start_ends_supervision() {
        let mut s = Supervisor::new();
        s.started(42);
        assert_eq!(s.on_reaped(42, (libc::SIGSTOP << 8) | 0x7f), None);
        assert_eq!(s.state(), State::Running { app: 42 });

        let mut s = Supervisor::new();
        s.failed_to_start(127);
        assert_eq!(s.state(), State::Exited(127));
        assert_eq!(s.on_signal(Signal::Term), Decision::Ignore);
    }
}
