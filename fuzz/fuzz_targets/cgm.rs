//! Fuzz target: CGM Measurement 0x2AA7 (records, sizes, E2E-CRC).
#![no_main]

use heim::sources::ble::profiles::{ToMeasurements, cgm};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = cgm::decode(data) {
        let total: usize = records.iter().map(|r| usize::from(r.size)).sum();
        assert_eq!(total, data.len());
        for r in records {
            let _ = r.measurements();
        }
    }
});
