//! Fuzz target: Blood Pressure Measurement 0x2A35 / Intermediate Cuff Pressure 0x2A36.
#![no_main]

use heim::sources::ble::profiles::{ToMeasurements, blood_pressure};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = blood_pressure::decode(data) {
        let _ = m.measurements();
        let _ = m.status.map(|s| s.asn1_codes());
    }
});
