//! Fuzz target: Temperature Measurement 0x2A1C.
#![no_main]

use heim::sources::ble::profiles::{ToMeasurements, thermometer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = thermometer::decode(data) {
        let _ = m.measurements();
    }
});
