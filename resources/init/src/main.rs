//! `herd-init`, the binary images carry as `/init`: [`herd_init::boot::run`] on the real
//! machine, then the VM ends with the status it returns.

use herd_init::host::Host;
use herd_init::sys::{RealHost, RealOs};

fn main() {
    let mut host = RealHost::new();
    let status = herd_init::boot::run(&mut host, &mut RealOs::new());
    host.end_vm(status)
}
