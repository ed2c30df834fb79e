//! Fuzz target: IEEE 11073 SFLOAT/FLOAT: decode, and re-encode to the same raw value.
#![no_main]

use heim::sources::ble::profiles::sfloat;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: [u8; 6]| {
    let s = u16::from_le_bytes([data[0], data[1]]);
    assert_eq!(sfloat::encode_sfloat(sfloat::sfloat(s)), Some(s));
    let f = u32::from_le_bytes([data[2], data[3], data[4], data[5]]);
    assert_eq!(sfloat::encode_float(sfloat::float(f)), Some(f));
});
