//! Fuzzes the Firecracker-schema config parser and validator: arbitrary text must give a
//! config or an error naming the problem, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(raw) =
        herd_vmm::config::parse_firecracker_config(text, std::path::Path::new("fuzz.json"))
    {
        let _ = raw.validate(1 << 20);
    }
});
