//! Fuzz target: Date Time 0x2A08 and Current Time 0x2A2B.
#![no_main]

use heim::sources::ble::profiles::datetime;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = datetime::decode_date_time(data) {
        assert_eq!(datetime::encode_date_time(&t).as_slice(), data);
    }
    if let Ok(c) = datetime::decode_current_time(data) {
        assert_eq!(c.encode().as_slice(), data);
    }
});
