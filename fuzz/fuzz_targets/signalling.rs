//! Fuzz target: what the signalling path parses from the network — hospital events from MQTT,
//! SDP offers and trickle-ICE fragments from the LAN, and the splice of candidates into an answer.
//! None may panic; parse errors are values.
#![no_main]

use heim::signalling::{sdp, wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::Event::parse(data);
    if let Ok((offer, summary)) = sdp::check(data) {
        assert_eq!(summary.bytes, offer.len());
        assert!(sdp::complete(offer.expose()) == (summary.candidates.end > 0));
    }
    if let Ok(frag) = sdp::parse_frag(data) {
        assert!(frag.candidates.len() <= sdp::MAX_CANDIDATES);
        let answer = "v=0\r\ns=-\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n";
        let spliced = sdp::splice(answer, &frag.candidates);
        assert!(spliced.expose().starts_with("v=0\r\n"));
    }
});
