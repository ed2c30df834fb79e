//! Fuzz target: the serial wire format's streaming decoder (line noise, truncated and forged
//! frames). It must never panic, and every frame it accepts must re-encode to bytes that decode to
//! the same message.
#![no_main]

use heim_shared_types::frame::{Decoder, Feed, MAX_FRAME, encode};
use heim_shared_types::wire::{GatewayMsg, NodeMsg};
use libfuzzer_sys::fuzz_target;

fn round_trip<T>(m: &T)
where
    T: serde::Serialize + for<'de> serde::Deserialize<'de> + PartialEq + core::fmt::Debug,
{
    let mut out = [0u8; MAX_FRAME + 8];
    let bytes = encode(m, &mut out).expect("an accepted message re-encodes");
    let mut d = Decoder::new();
    let mut back = None;
    for b in bytes.iter() {
        if let Feed::Frame(x) = d.push::<T>(*b) {
            back = Some(x);
        }
    }
    assert_eq!(back.as_ref(), Some(m));
}

fuzz_target!(|data: &[u8]| {
    let mut node = Decoder::new();
    let mut gateway = Decoder::new();
    for b in data {
        if let Feed::Frame(m) = node.push::<NodeMsg>(*b) {
            round_trip(&m);
        }
        if let Feed::Frame(m) = gateway.push::<GatewayMsg>(*b) {
            round_trip(&m);
        }
    }
});
