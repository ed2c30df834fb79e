//! Property tests: no decoder panics on arbitrary bytes, errors are only ever the two typed kinds,
//! truncation is reported exactly, and well-formed payloads built from arbitrary fields decode back
//! to those fields.

use heim::sources::ble::decode_report;
use heim::sources::ble::profiles::{
    self, Characteristic, DecodeError, Direction, ToMeasurements, blood_pressure, datetime,
    glucose, racp,
};
use heim_shared_types::LocalDateTime;
use proptest::prelude::*;

fn any_direction() -> impl Strategy<Value = Option<Direction>> {
    prop_oneof![
        Just(None),
        Just(Some(Direction::Request)),
        Just(Some(Direction::Response))
    ]
}

fn valid_time() -> impl Strategy<Value = LocalDateTime> {
    (
        prop_oneof![Just(0u16), 1582u16..=9999],
        0u8..=12,
        0u8..=31,
        0u8..=23,
        0u8..=59,
        0u8..=59,
    )
        .prop_map(|(year, month, day, hour, minute, second)| LocalDateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every decoder, every conversion and the JSON rendering are total.
    #[test]
    fn no_decoder_panics_on_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..48),
        direction in any_direction(),
    ) {
        for ch in Characteristic::ALL {
            match profiles::decode(ch, &bytes, direction) {
                Ok(decoded) => {
                    let _ = decoded.measurements();
                    let _ = decoded.device_time_trusted();
                }
                Err(DecodeError::Truncated { need, got }) => {
                    prop_assert_eq!(got, bytes.len());
                    prop_assert!(need > got);
                }
                Err(DecodeError::Invalid(_)) => {}
            }
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let (json, code) = decode_report(&format!("0x{:04X}", ch.uuid16()), &hex, direction, true);
            prop_assert!(code == 0 || code == 1, "{json}");
            prop_assert!(json.is_object());
        }
    }

    /// A measurement cut short anywhere is `Truncated`, never a misread shorter payload.
    #[test]
    fn cutting_a_valid_measurement_is_truncated(flags in 0u8..32, seed in any::<[u8; 19]>(), t in valid_time()) {
        let mut full = vec![flags];
        full.extend_from_slice(&seed[..6]);
        if flags & blood_pressure::FLAG_TIME_STAMP != 0 {
            full.extend_from_slice(&datetime::encode_date_time(&t));
        }
        full.extend_from_slice(&seed[6..11]);
        let need = 7
            + if flags & 0x02 != 0 { 7 } else { 0 }
            + if flags & 0x04 != 0 { 2 } else { 0 }
            + if flags & 0x08 != 0 { 1 } else { 0 }
            + if flags & 0x10 != 0 { 2 } else { 0 };
        prop_assert!(blood_pressure::decode(&full).is_ok());
        for cut in 1..need {
            prop_assert_eq!(
                blood_pressure::decode(&full[..cut]),
                Err(DecodeError::Truncated { need, got: cut })
            );
        }
    }

    /// A glucose record built from arbitrary fields decodes back to them.
    #[test]
    fn glucose_fields_round_trip(
        seq in any::<u16>(),
        t in valid_time(),
        offset in proptest::option::of(any::<i16>()),
        conc in proptest::option::of((any::<u16>(), 0u8..16, 0u8..16, any::<bool>())),
        status in proptest::option::of(any::<u16>()),
        context in any::<bool>(),
    ) {
        let mut flags = 0u8;
        let mut b = vec![0, 0, 0];
        b[1..3].copy_from_slice(&seq.to_le_bytes());
        b.extend_from_slice(&datetime::encode_date_time(&t));
        if let Some(o) = offset {
            flags |= glucose::FLAG_TIME_OFFSET;
            b.extend_from_slice(&o.to_le_bytes());
        }
        if let Some((raw, ty, loc, mol)) = conc {
            flags |= glucose::FLAG_CONCENTRATION;
            if mol {
                flags |= glucose::FLAG_MOL_PER_L;
            }
            b.extend_from_slice(&raw.to_le_bytes());
            b.push(ty | (loc << 4));
        }
        if let Some(s) = status {
            flags |= glucose::FLAG_STATUS;
            b.extend_from_slice(&s.to_le_bytes());
        }
        if context {
            flags |= glucose::FLAG_CONTEXT_FOLLOWS;
        }
        b[0] = flags;
        let m = glucose::decode(&b).unwrap();
        prop_assert_eq!(m.sequence_number, seq);
        prop_assert_eq!(m.base_time, t);
        prop_assert_eq!(m.time_offset, offset);
        prop_assert_eq!(m.status.map(|s| s.0), status);
        prop_assert_eq!(m.context_follows, context);
        match (m.concentration, conc) {
            (Some(c), Some((raw, ty, loc, _))) => {
                prop_assert_eq!(c.value, profiles::sfloat::sfloat(raw));
                prop_assert_eq!((c.sample_type, c.sample_location), (ty, loc));
            }
            (None, None) => {}
            (got, want) => prop_assert!(false, "{:?} vs {:?}", got, want),
        }
    }

    /// Every RACP request that decodes re-encodes to the same bytes.
    #[test]
    fn racp_requests_that_decode_re_encode(bytes in proptest::collection::vec(0u8..8, 0..20)) {
        if let Ok(req) = racp::decode_request(&bytes) {
            prop_assert_eq!(req.encode(), bytes);
        }
    }

    /// Current Time the gateway writes decodes back to the same value.
    #[test]
    fn current_time_round_trips(secs in 0i64..250_000_000_000, nanos in 0u32..1_000_000_000) {
        let Some(now) = chrono::DateTime::from_timestamp(secs, nanos) else { return Ok(()) };
        if let Some(ct) = datetime::CurrentTime::from_naive(&now.naive_utc()) {
            prop_assert_eq!(datetime::decode_current_time(&ct.encode()), Ok(ct));
        }
    }
}
