//! Fuzz target: Weight Measurement 0x2A9D.
#![no_main]

use heim::sources::ble::profiles::{ToMeasurements, weight_scale};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = weight_scale::decode(data) {
        let _ = m.measurements();
    }
});
