//! Date Time 0x2A08 (also the 7-octet time stamp inside measurements) and Current Time 0x2A2B.
//!
//! Date Time: year uint16 (1582–9999, 0 = not known), month (1–12, 0 = not known), day (1–31,
//! 0 = not known), hours, minutes, seconds. No zone, no DST: it is the device's local wall clock,
//! so it becomes a [`LocalDateTime`]. Current Time adds day of week, 1/256 s fractions and the
//! adjust-reason bits, and is what the gateway writes to set a device's clock (GSS; Current Time
//! Service 1.1).

use heim_shared_types::LocalDateTime;

use super::{DecodeError, Invalid};

/// Size of Date Time.
pub const DATE_TIME_LEN: usize = 7;
/// Size of Current Time.
pub const CURRENT_TIME_LEN: usize = 10;

/// Fields of a 7-octet Date Time, range-checked.
pub(crate) fn from_array(b: [u8; DATE_TIME_LEN]) -> Result<LocalDateTime, DecodeError> {
    let t = LocalDateTime {
        year: u16::from_le_bytes([b[0], b[1]]),
        month: b[2],
        day: b[3],
        hour: b[4],
        minute: b[5],
        second: b[6],
    };
    let year_ok = t.year == 0 || (1582..=9999).contains(&t.year);
    if year_ok && t.month <= 12 && t.day <= 31 && t.hour <= 23 && t.minute <= 59 && t.second <= 59 {
        Ok(t)
    } else {
        Err(DecodeError::Invalid(Invalid::DateTime))
    }
}

/// The 7 octets of a Date Time.
pub fn encode_date_time(t: &LocalDateTime) -> [u8; DATE_TIME_LEN] {
    let [y0, y1] = t.year.to_le_bytes();
    [y0, y1, t.month, t.day, t.hour, t.minute, t.second]
}

fn exact(bytes: &[u8], len: usize) -> Result<(), DecodeError> {
    match bytes.len() {
        n if n < len => Err(DecodeError::Truncated { need: len, got: n }),
        n if n > len => Err(DecodeError::Invalid(Invalid::Length {
            expected: len,
            got: n,
        })),
        _ => Ok(()),
    }
}

/// Decodes Date Time 0x2A08 (exactly 7 octets).
pub fn decode_date_time(bytes: &[u8]) -> Result<LocalDateTime, DecodeError> {
    exact(bytes, DATE_TIME_LEN)?;
    let mut a = [0u8; DATE_TIME_LEN];
    a.copy_from_slice(bytes);
    from_array(a)
}

/// Whether the date part is known (year, month and day non-zero): only then can the time stand
/// for a moment.
pub const fn is_complete(t: LocalDateTime) -> bool {
    t.year != 0 && t.month != 0 && t.day != 0
}

/// `YYYY-MM-DDTHH:MM:SS` from the raw fields, zero-padded, no zone; unknown parts stay 0.
pub fn format(t: &LocalDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The time as a `chrono` value, when the date is complete and valid.
pub fn to_naive(t: &LocalDateTime) -> Option<chrono::NaiveDateTime> {
    chrono::NaiveDate::from_ymd_opt(i32::from(t.year), u32::from(t.month), u32::from(t.day))?
        .and_hms_opt(u32::from(t.hour), u32::from(t.minute), u32::from(t.second))
}

/// A `chrono` value as a Date Time (years outside 1582–9999 are not representable).
pub fn from_naive(t: &chrono::NaiveDateTime) -> Option<LocalDateTime> {
    use chrono::{Datelike, Timelike};
    let year = u16::try_from(t.year())
        .ok()
        .filter(|y| (1582..=9999).contains(y))?;
    Some(LocalDateTime {
        year,
        month: t.month() as u8,
        day: t.day() as u8,
        hour: t.hour() as u8,
        minute: t.minute() as u8,
        second: t.second() as u8,
    })
}

/// Current Time 0x2A2B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentTime {
    /// Date and time of day.
    pub date_time: LocalDateTime,
    /// 0 not known, 1 Monday … 7 Sunday, 8–255 reserved (kept as sent).
    pub day_of_week: u8,
    /// Fractions of a second, 1/256 s.
    pub fractions256: u8,
    /// Why the clock was last adjusted: b0 manual, b1 external reference, b2 time zone change,
    /// b3 DST change, b4–b7 reserved.
    pub adjust_reason: u8,
}

impl CurrentTime {
    /// The value a gateway writes to set a device's clock to `now` (local wall time); adjust reason
    /// 0, as the Current Time Service client in SpeziBluetooth writes. `None` for years a device
    /// cannot hold.
    pub fn from_naive(now: &chrono::NaiveDateTime) -> Option<Self> {
        use chrono::{Datelike, Timelike};
        let date_time = from_naive(now)?;
        // 256 fractions per second; nanosecond() can exceed 1e9 during a leap second.
        let frac = (u64::from(now.nanosecond().min(999_999_999)) * 256 / 1_000_000_000) as u8;
        Some(Self {
            date_time,
            day_of_week: now.weekday().number_from_monday() as u8,
            fractions256: frac,
            adjust_reason: 0,
        })
    }

    /// The 10 octets.
    pub fn encode(&self) -> [u8; CURRENT_TIME_LEN] {
        let d = encode_date_time(&self.date_time);
        [
            d[0],
            d[1],
            d[2],
            d[3],
            d[4],
            d[5],
            d[6],
            self.day_of_week,
            self.fractions256,
            self.adjust_reason,
        ]
    }
}

/// Decodes Current Time 0x2A2B (exactly 10 octets).
pub fn decode_current_time(bytes: &[u8]) -> Result<CurrentTime, DecodeError> {
    exact(bytes, CURRENT_TIME_LEN)?;
    let mut a = [0u8; DATE_TIME_LEN];
    a.copy_from_slice(&bytes[..DATE_TIME_LEN]);
    Ok(CurrentTime {
        date_time: from_array(a)?,
        day_of_week: bytes[7],
        fractions256: bytes[8],
        adjust_reason: bytes[9],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_write_matches_the_spec_vector() {
        let now = chrono::NaiveDate::from_ymd_opt(2024, 6, 6)
            .unwrap()
            .and_hms_milli_opt(12, 4, 44, 500)
            .unwrap();
        let ct = CurrentTime::from_naive(&now).unwrap();
        assert_eq!(
            ct.encode(),
            [0xe8, 0x07, 0x06, 0x06, 0x0c, 0x04, 0x2c, 0x04, 0x80, 0x00]
        );
        assert_eq!(decode_current_time(&ct.encode()), Ok(ct));
    }

    #[test]
    fn out_of_range_fields_are_invalid() {
        let ok = [0xe2, 0x07, 4, 17, 15, 51, 0];
        assert!(decode_date_time(&ok).is_ok());
        for (i, bad) in [(2, 13), (3, 32), (4, 24), (5, 60), (6, 60)] {
            let mut b = ok;
            b[i] = bad;
            assert_eq!(
                decode_date_time(&b),
                Err(DecodeError::Invalid(Invalid::DateTime))
            );
        }
        // Year 1581 and 10000 are out of range; year 0 means "not known".
        for year in [1581u16, 10000] {
            let mut b = ok;
            b[..2].copy_from_slice(&year.to_le_bytes());
            assert!(decode_date_time(&b).is_err());
        }
        let mut b = ok;
        b[..2].copy_from_slice(&0u16.to_le_bytes());
        assert!(decode_date_time(&b).is_ok());
        assert_eq!(
            decode_date_time(&[0; 8]),
            Err(DecodeError::Invalid(Invalid::Length {
                expected: 7,
                got: 8
            }))
        );
    }

    #[test]
    fn chrono_round_trip_and_completeness() {
        let t = decode_date_time(&[0xe2, 0x07, 4, 17, 15, 51, 0]).unwrap();
        assert!(is_complete(t));
        assert_eq!(from_naive(&to_naive(&t).unwrap()), Some(t));
        assert!(!is_complete(
            decode_date_time(&[0, 0, 0, 0, 0x12, 0x1a, 0x20]).unwrap()
        ));
        // 31 February passes the field ranges but is no date.
        let feb31 = decode_date_time(&[0xe2, 0x07, 2, 31, 0, 0, 0]).unwrap();
        assert_eq!(to_naive(&feb31), None);
    }
}
