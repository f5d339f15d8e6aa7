//! Legacy PC devices: COM1, the i8042 (for reset), and herd's two tiny signalling devices,
//! the boot timer and the exit-status port.

pub mod boot_timer;
pub mod exit_port;
pub mod i8042;
pub mod serial;

pub use boot_timer::{BootClock, BootTimer};
pub use exit_port::ExitPort;
pub use i8042::I8042;
pub use serial::SerialDevice;
