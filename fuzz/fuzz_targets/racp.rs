//! Fuzz target: Record Access Control Point 0x2A52: requests re-encode to their bytes; responses decode.
#![no_main]

use heim::sources::ble::profiles::racp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = racp::decode_request(data) {
        assert_eq!(req.encode(), data);
    }
    let _ = racp::decode_response(data);
});
