//! Fuzz target: Battery Level 0x2A19.
#![no_main]

use heim::sources::ble::profiles::battery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(level) = battery::decode(data) {
        assert!(level <= 100);
    }
});
