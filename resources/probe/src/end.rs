//! How the probe ends: exit through port 0xf4, reset through the i8042, halt forever, triple
//! fault (`ud2` by default: PVM's emulator turns `int N` into an emulation failure instead),
//! echo a line first, wait for a request on the control port (COM2) first, or serve health
//! checks until asked to stop (`serving`). Also the panic handler (`probe: panic ...`, exit 99).

use core::arch::asm;
use core::panic::PanicInfo;

use herd_probe::cmdline::{End, Fault, Options};
use herd_probe::hw::{halt_forever, outb};
use herd_probe::out::Sink;
use herd_probe::report;
use herd_probe::serial::{COM1, COM2, Com1};

use crate::serving;

const EXIT_PORT: u16 = 0xf4;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET: u8 = 0xfe;
const PANIC_EXIT: u8 = 99;

/// Echo (if asked), prints `probe: done exit=N` and ends as `opts` says.
pub fn finish(con: &mut Com1, opts: Options) -> ! {
    match opts.end {
        End::Echo => {
            let mut buf = [0u8; 256];
            let n = con.read_line(&mut buf);
            report::echo(con, &buf[..n]);
        }
        End::Control => {
            let mut buf = [0u8; 64];
            let mut control = COM2;
            let n = control.read_line(&mut buf);
            report::control(con, &buf[..n]);
        }
        End::Panic => panic!("requested by probe.end=panic"),
        End::Serve => serving::run(con, &opts),
        _ => {}
    }
    if !opts.quiet {
        report::done(con, opts.exit);
    }
    match opts.end {
        End::Exit | End::Echo | End::Control | End::Panic | End::Serve => exit(opts.exit),
        End::Reboot => {
            outb(I8042_COMMAND, I8042_RESET);
            halt_forever()
        }
        End::Halt => halt_forever(),
        End::TripleFault => triple_fault(opts.fault),
    }
}

/// Ends the VM with status `code` (herd-vmm's exit-status port).
pub fn exit(code: u8) -> ! {
    outb(EXIT_PORT, code);
    halt_forever()
}

/// Reports `probe: panic <what>` and exits with status 99.
pub fn fail(what: &str) -> ! {
    let mut console = COM1;
    let con = &mut console;
    report::panic_start(con, what.as_bytes());
    con.put(b'\n');
    exit(PANIC_EXIT)
}

/// Loads an empty IDT and raises `fault`: with no way to deliver it, nor the double fault
/// that follows, the CPU shuts down.
fn triple_fault(fault: Fault) -> ! {
    let idt = [0u16; 5];
    let kind: u64 = match fault {
        Fault::Ud2 => 0,
        Fault::Div0 => 1,
        Fault::Int => 2,
        Fault::Gp => 3,
        Fault::Pf => 4,
    };
    // SAFETY: loading a zero-limit IDT only changes where exceptions go, and the exception
    // raised right after never returns: this is the end of the probe.
    unsafe {
        asm!(
            "lidt [{idt}]",
            "cmp {kind}, 1", "je 2f",
            "cmp {kind}, 2", "je 3f",
            "cmp {kind}, 3", "je 4f",
            "cmp {kind}, 4", "je 5f",
            "ud2",
            "2: xor ecx, ecx",
            "div ecx",
            "3: int 0x80",
            "4: mov rax, [{noncanonical}]",
            "5: mov rax, [{unmapped}]",
            "ud2",
            idt = in(reg) idt.as_ptr(),
            kind = in(reg) kind,
            noncanonical = in(reg) 1u64 << 63,
            unmapped = in(reg) 1u64 << 40,
            options(noreturn)
        )
    }
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let mut console = COM1;
    let con = &mut console;
    report::panic_start(con, info.message().as_str().unwrap_or("").as_bytes());
    if let Some(loc) = info.location() {
        con.put_bytes(b" at ");
        con.put_bytes(loc.file().as_bytes());
        con.put(b':');
        con.put_dec(u64::from(loc.line()));
    }
    con.put(b'\n');
    exit(PANIC_EXIT)
}
