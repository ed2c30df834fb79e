//! Fuzz target: `heim decode`: any characteristic text and hex text.
#![no_main]

use libfuzzer_sys::fuzz_target;
fuzz_target!(|input: (&str, &str)| {
    let (json, code) = heim::sources::ble::decode_cli(input.0, input.1);
    assert!(json.is_object());
    assert!((0..=2).contains(&code));
});
