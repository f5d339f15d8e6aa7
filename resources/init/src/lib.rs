//! herd-init: PID 1 of a herd microVM.
//!
//! It mounts `/proc`, `/sys`, `/dev` (devtmpfs), `/tmp`, `/run` and `/dev/shm`; reads
//! `/herd/image.json` and the optional `/herd/instance.json` (`docs/image-format.md`); sets the
//! hostname and brings up `lo`; signals herd-vmm's boot timer; runs the app with exactly the
//! merged argv, environment and working directory on init's console; forwards SIGTERM and
//! SIGINT, and `stop` requests from herd-vmm's control port (COM2) as SIGTERM, to it; after a
//! restore from a snapshot, takes the new identity the control port's `restored` request
//! gives (reseeds the kernel's random number generator, renames the host, moves the network,
//! rewrites `/run/herd/identity.json`; `docs/snapshots.md`); reaps every orphan; and ends the
//! VM with the app's exit status through the exit-status port (`docs/guest-interface.md`).
//!
//! Layout: pure logic in [`config`] (what to run), [`status`] (exit statuses), [`control`]
//! (control-port requests), [`identity`] (what a restore changes) and [`supervise`] (the state
//! machine); the sequence in [`boot`] and a restore's effects in [`restore`], written against
//! the two traits of [`host`]; the real system calls in [`sys`], the only module with
//! `unsafe`.
//!
//! # The test host
//! The namespace tests (`tests/`) run init as PID 1 of fresh PID, mount, UTS and network
//! namespaces on the build host, where four effects must not happen for real: writing the
//! boot timer through `/dev/mem` and ending "the VM" through I/O port `0xf4` (both would hit
//! the host's hardware), reading the host's `/dev/ttyS1` as the control port, and crediting
//! a restore's entropy to the host kernel's random pool. They run a second binary,
//! `herd-init-testhost` (`src/bin/herd-init-testhost.rs`): [`boot::run`] with a host and an
//! OS that delegate everything to [`sys::RealHost`] and [`sys::RealOs`] except those four:
//! the boot timer and the reseed become log lines, `end_vm` writes the status to
//! `$HERD_INIT_TEST_EXIT_FILE` and exits, and the control port is a FIFO the test provides.
//!
//! The switch is a separate binary rather than an environment variable on purpose: Linux hands
//! every `NAME=value` kernel command-line parameter it does not recognise to init as an
//! environment variable, whatever its case, so an environment switch in the shipped binary
//! could be flipped by an image's command line. `herd-init`, the binary images carry, contains
//! no test host at all.

#![deny(unsafe_code)]

pub mod boot;
pub mod config;
pub mod control;
pub mod host;
pub mod identity;
pub mod restore;
pub mod status;
pub mod supervise;
pub mod sys;
