//! CGM Measurement 0x2AA7 (Continuous Glucose Monitoring Service 0x181F).
//!
//! One notification carries one or more records, each: size (uint8, counting itself and the CRC) ·
//! flags (b0 trend, b1 quality, b5/b6/b7 one annunciation octet each) · glucose SFLOAT mg/dL · time
//! offset uint16 minutes since session start · 0–3 annunciation octets · \[trend SFLOAT (mg/dL)/min\] ·
//! \[quality SFLOAT %\] · \[E2E-CRC uint16\].
//!
//! The E2E-CRC is not announced by the record's flags (the CGM Feature says whether the sensor uses
//! it), so it is recognised from the size: exactly two octets more than the flags need. It is
//! CRC-16/MCRF4XX (polynomial 0x1021 reflected, seed 0xFFFF) over the record before it, verified
//! against Nordic's test vectors. The annunciation octets are reported raw, in flag-bit order
//! (b5, b6, b7), because the public sources disagree on their naming (design notes §8.5).

use heim_shared_types::{GlucoseSample, Measurement, Quantity, Unit, Value};

use super::{DecodeError, Invalid, Reader, ToMeasurements};

/// Flag b0: trend present.
pub const FLAG_TREND: u8 = 0x01;
/// Flag b1: quality present.
pub const FLAG_QUALITY: u8 = 0x02;
/// Flag b5: first annunciation octet present.
pub const FLAG_OCTET5: u8 = 0x20;
/// Flag b6: second annunciation octet present.
pub const FLAG_OCTET6: u8 = 0x40;
/// Flag b7: third annunciation octet present.
pub const FLAG_OCTET7: u8 = 0x80;

/// Size of a record without optional fields: size, flags, glucose, time offset.
const MIN_RECORD: usize = 6;

/// One CGM record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgmRecord {
    /// The size field.
    pub size: u8,
    /// The flags octet as received.
    pub flags: u8,
    /// Glucose, mg/dL.
    pub glucose: Value,
    /// Minutes since the session started.
    pub time_offset: u16,
    /// Annunciation octet gated by flag b5.
    pub octet_flag5: Option<u8>,
    /// Annunciation octet gated by flag b6.
    pub octet_flag6: Option<u8>,
    /// Annunciation octet gated by flag b7.
    pub octet_flag7: Option<u8>,
    /// Trend, (mg/dL)/min.
    pub trend: Option<Value>,
    /// Quality, %.
    pub quality: Option<Value>,
    /// The E2E-CRC, when the record carries one (already verified).
    pub e2e_crc: Option<u16>,
}

/// CRC-16/MCRF4XX: polynomial 0x1021 reflected (0x8408), seed 0xFFFF, no final XOR.
pub fn crc16_mcrf4xx(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in data {
        crc ^= u16::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x8408
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn decode_record(rec: &[u8]) -> Result<CgmRecord, DecodeError> {
    // `rec` is exactly `size` octets long (checked by the caller).
    let mut r = Reader::new(rec);
    let size = r.u8()?;
    let flags = r.u8()?;
    let has = |bit| flags & bit != 0;
    let expected = MIN_RECORD
        + [FLAG_OCTET5, FLAG_OCTET6, FLAG_OCTET7]
            .into_iter()
            .filter(|&b| has(b))
            .count()
        + if has(FLAG_TREND) { 2 } else { 0 }
        + if has(FLAG_QUALITY) { 2 } else { 0 };
    let with_crc = match usize::from(size) {
        s if s == expected => false,
        s if s == expected + 2 => true,
        _ => {
            return Err(DecodeError::Invalid(Invalid::CgmSize {
                size,
                expected: expected as u8,
            }));
        }
    };
    let glucose = r.sfloat()?;
    let time_offset = r.u16()?;
    let mut octet = |bit| if has(bit) { r.u8().map(Some) } else { Ok(None) };
    let octet_flag5 = octet(FLAG_OCTET5)?;
    let octet_flag6 = octet(FLAG_OCTET6)?;
    let octet_flag7 = octet(FLAG_OCTET7)?;
    let trend = if has(FLAG_TREND) {
        Some(r.sfloat()?)
    } else {
        None
    };
    let quality = if has(FLAG_QUALITY) {
        Some(r.sfloat()?)
    } else {
        None
    };
    let e2e_crc = if with_crc {
        let covered = &rec[..r.position()];
        let received = r.u16()?;
        let computed = crc16_mcrf4xx(covered);
        if computed != received {
            return Err(DecodeError::Invalid(Invalid::CgmCrc { computed, received }));
        }
        Some(received)
    } else {
        None
    };
    Ok(CgmRecord {
        size,
        flags,
        glucose,
        time_offset,
        octet_flag5,
        octet_flag6,
        octet_flag7,
        trend,
        quality,
        e2e_crc,
    })
}

/// Decodes CGM Measurement 0x2AA7: every record in the notification, or the first error.
pub fn decode(bytes: &[u8]) -> Result<Vec<CgmRecord>, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Truncated {
            need: MIN_RECORD,
            got: 0,
        });
    }
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let size = usize::from(bytes[pos]);
        let end = pos + size;
        if end > bytes.len() {
            return Err(DecodeError::Truncated {
                need: end,
                got: bytes.len(),
            });
        }
        if size < MIN_RECORD {
            return Err(DecodeError::Invalid(Invalid::CgmSize {
                size: size as u8,
                expected: MIN_RECORD as u8,
            }));
        }
        out.push(decode_record(&bytes[pos..end])?);
        pos = end;
    }
    Ok(out)
}

impl ToMeasurements for CgmRecord {
    /// Interstitial glucose in mg/dL. The time is the session offset, which needs the session
    /// start time (CGM Session Start Time 0x2AAA) to become a date: the caller supplies it.
    fn measurements(&self) -> Vec<Measurement> {
        vec![Measurement::BloodGlucose {
            glucose: Quantity {
                value: self.glucose,
                unit: Unit::MilligramPerDecilitre,
            },
            sample: Some(GlucoseSample::InterstitialFluid),
        }]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_nordic_vector() {
        let rec = [
            0x0f, 0xe3, 0xd2, 0xe4, 0x05, 0x00, 0x02, 0x14, 0xff, 0x02, 0xf0, 0xe5, 0xf3,
        ];
        assert_eq!(crc16_mcrf4xx(&rec), 0x3F8E);
        assert_eq!(crc16_mcrf4xx(b"123456789"), 0x6F91);
    }

    #[test]
    fn bad_crc_and_sizes_are_invalid() {
        let mut rec = vec![
            0x0f, 0xe3, 0xd2, 0xe4, 0x05, 0x00, 0x02, 0x14, 0xff, 0x02, 0xf0, 0xe5, 0xf3, 0x8e,
            0x3f,
        ];
        assert!(decode(&rec).is_ok());
        rec[14] ^= 1;
        assert!(matches!(
            decode(&rec),
            Err(DecodeError::Invalid(Invalid::CgmCrc { .. }))
        ));
        // Size 7 with flags needing 6 (or 8 with CRC).
        assert!(matches!(
            decode(&[0x07, 0x00, 0x0c, 0x10, 0x06, 0x00, 0x00]),
            Err(DecodeError::Invalid(Invalid::CgmSize { .. }))
        ));
        assert!(matches!(
            decode(&[0x00]),
            Err(DecodeError::Invalid(Invalid::CgmSize { .. }))
        ));
    }

    #[test]
    fn two_records_in_one_notification() {
        let two = [
            0x06, 0x00, 0x0c, 0x10, 0x06, 0x00, 0x06, 0x00, 0x0d, 0x10, 0x0b, 0x00,
        ];
        let recs = decode(&two).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].time_offset, 11);
    }
}
