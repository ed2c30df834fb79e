//! Fuzz target: PLX Spot-check 0x2A5E and Continuous 0x2A5F.
#![no_main]

use heim::sources::ble::profiles::{ToMeasurements, pulse_oximeter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = pulse_oximeter::decode_spot_check(data) {
        let _ = m.measurements();
        let _ = m.device_time_trusted();
    }
    if let Ok(m) = pulse_oximeter::decode_continuous(data) {
        let _ = m.measurements();
        let _ = m.device_status.map(|s| s.asn1_codes());
    }
});
