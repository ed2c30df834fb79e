//! Fuzz target: Glucose Measurement 0x2A18 and Glucose Measurement Context 0x2A34.
#![no_main]

use heim::sources::ble::profiles::{ToMeasurements, glucose};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = glucose::decode(data) {
        let _ = m.measurements();
        let _ = m.effective_time();
        let _ = m.device_time_trusted();
    }
    let _ = glucose::decode_context(data);
});
