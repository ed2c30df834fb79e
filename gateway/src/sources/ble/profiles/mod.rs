//! Bluetooth SIG health characteristics: pure decoders, bytes → typed value or typed error.
//!
//! This module owns the wire formats of the characteristics a home gateway meets (layouts from the
//! Bluetooth SIG GATT Specification Supplement; the project's notes with sources are in
//! `design/ble-health-gatt.md`). Every decoder is a pure, total function
//! `fn(&[u8]) -> Result<T, DecodeError>`: no I/O, no logging, no panics (property-tested and
//! fuzzed), so a misbehaving device can only ever produce a [`DecodeError`].
//!
//! Parsing policy (the one the public test vectors follow):
//! * fields are read strictly in the order the flags say, never by guessing;
//! * a payload shorter than its flags require is [`DecodeError::Truncated`];
//! * reserved (RFU) flag bits are ignored, as the Bluetooth convention asks of a receiver;
//! * extra octets after the last field of a *measurement* are ignored; fixed-size characteristics
//!   (Date Time, Current Time, Battery Level) must have exactly their size;
//! * a structurally wrong value (date out of range, unknown RACP op code, CGM size or CRC mismatch)
//!   is [`DecodeError::Invalid`] with the reason;
//! * IEEE 11073 special values (NaN, NRes, ±INF, reserved) become [`Value::Absent`] with the reason,
//!   never a number, and a number keeps its exponent (its precision) as a [`Decimal`].
//!
//! Each decoded type keeps its raw flags and status bits, and converts into the
//! [`Measurement`]s the outbox stores through [`ToMeasurements`].

use heim_shared_types::{Decimal, LocalDateTime, Measurement, Value};

pub mod battery;
pub mod blood_pressure;
pub mod cgm;
pub mod datetime;
pub mod glucose;
pub mod pulse_oximeter;
pub mod racp;
pub mod sfloat;
pub mod thermometer;
pub mod weight_scale;

/// Why a payload could not be decoded. `Copy`, so the hot path never allocates for a bad frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The flags (or the fixed size) need more octets than were received.
    #[error("truncated: need {need} octets, got {got}")]
    Truncated {
        /// Octets needed (at least).
        need: usize,
        /// Octets received.
        got: usize,
    },
    /// The payload is structurally wrong.
    #[error("invalid: {0}")]
    Invalid(Invalid),
}

impl DecodeError {
    /// The short name used on the command line and in logs: `truncated` or `invalid`.
    pub const fn kind(&self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

/// What made a payload structurally wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// A fixed-size characteristic had the wrong length.
    #[error("expected exactly {expected} octets, got {got}")]
    Length {
        /// The characteristic's size.
        expected: usize,
        /// Octets received.
        got: usize,
    },
    /// A Date Time field outside its range (year 0 or 1582–9999, month ≤ 12, day ≤ 31, …).
    #[error("date/time field out of range")]
    DateTime,
    /// Battery level above 100 %.
    #[error("battery level {0} above 100")]
    BatteryLevel(u8),
    /// An RACP op code this side of the exchange does not accept.
    #[error("RACP op code {0} not valid here")]
    RacpOpcode(u8),
    /// An RACP operator not valid for its op code.
    #[error("RACP operator {0} not valid here")]
    RacpOperator(u8),
    /// An RACP filter type that is not defined.
    #[error("RACP filter type {0} not defined")]
    RacpFilterType(u8),
    /// An RACP frame longer than its op code and operator allow.
    #[error("RACP frame has {0} octets more than its operator allows")]
    RacpTrailing(usize),
    /// A CGM record's size field is below the minimum or disagrees with its flags.
    #[error(
        "CGM record size {size} does not match its flags (expected {expected} or {expected}+2)"
    )]
    CgmSize {
        /// The size field.
        size: u8,
        /// The size the flags give without an E2E-CRC.
        expected: u8,
    },
    /// A CGM record's E2E-CRC does not match its contents.
    #[error("CGM E2E-CRC mismatch: computed {computed:#06x}, received {received:#06x}")]
    CgmCrc {
        /// CRC-16/MCRF4XX over the record.
        computed: u16,
        /// The CRC field.
        received: u16,
    },
}

/// Conversion of a decoded characteristic into the readings the outbox stores.
pub trait ToMeasurements {
    /// The measurements this payload carries; empty when it carries none a patient record should
    /// hold (intermediate values, control solution, test data, context records).
    fn measurements(&self) -> Vec<Measurement>;

    /// The device's own timestamp for the measurement, if it sent one.
    fn device_time(&self) -> Option<LocalDateTime> {
        None
    }

    /// Whether [`Self::device_time`] can be trusted: present, with a known date, and not flagged by
    /// the device as coming from an unset or faulty clock.
    fn device_time_trusted(&self) -> bool {
        self.device_time().is_some_and(datetime::is_complete)
    }
}

/// A little-endian cursor over a payload that turns running out of bytes into
/// [`DecodeError::Truncated`] instead of a panic.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) const fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    pub(crate) fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.pos.saturating_add(N);
        let slice = self
            .bytes
            .get(self.pos..end)
            .ok_or(DecodeError::Truncated {
                need: end,
                got: self.bytes.len(),
            })?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    pub(crate) fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_le_bytes(self.take()?))
    }

    pub(crate) fn u24(&mut self) -> Result<u32, DecodeError> {
        let [a, b, c] = self.take()?;
        Ok(u32::from_le_bytes([a, b, c, 0]))
    }

    pub(crate) fn sfloat(&mut self) -> Result<Value, DecodeError> {
        Ok(sfloat::sfloat(self.u16()?))
    }

    pub(crate) fn float(&mut self) -> Result<Value, DecodeError> {
        Ok(sfloat::float(u32::from_le_bytes(self.take()?)))
    }

    pub(crate) fn date_time(&mut self) -> Result<LocalDateTime, DecodeError> {
        datetime::from_array(self.take()?)
    }

    pub(crate) const fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) const fn position(&self) -> usize {
        self.pos
    }
}

/// Fails with [`DecodeError::Truncated`] unless `bytes` has at least `need` octets. Measurement
/// decoders compute `need` from the flags first, so the error reports the full length the flags
/// ask for rather than the first field that ran out.
pub(crate) const fn require(bytes: &[u8], need: usize) -> Result<(), DecodeError> {
    if bytes.len() < need {
        Err(DecodeError::Truncated {
            need,
            got: bytes.len(),
        })
    } else {
        Ok(())
    }
}

/// Moves a decimal's point: `value × 10^shift`, keeping the mantissa (and so the number of
/// significant digits). `None` if the exponent would leave `i8`.
pub(crate) fn shift(value: Value, shift: i8) -> Option<Value> {
    match value {
        Value::Number(d) => d
            .exponent
            .checked_add(shift)
            .map(|exponent| Value::Number(Decimal::new(d.mantissa, exponent))),
        absent @ Value::Absent(_) => Some(absent),
    }
}

/// The characteristics this module decodes, by their 16-bit Bluetooth SIG UUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Characteristic {
    /// Blood Pressure Measurement 0x2A35 (indicate).
    BloodPressureMeasurement,
    /// Intermediate Cuff Pressure 0x2A36 (notify): same layout, a running cuff pressure.
    IntermediateCuffPressure,
    /// Temperature Measurement 0x2A1C (indicate).
    TemperatureMeasurement,
    /// Intermediate Temperature 0x2A1E (notify): same layout, not a final reading.
    IntermediateTemperature,
    /// Weight Measurement 0x2A9D (indicate).
    WeightMeasurement,
    /// PLX Spot-check Measurement 0x2A5E (indicate).
    PlxSpotCheck,
    /// PLX Continuous Measurement 0x2A5F (notify).
    PlxContinuous,
    /// Glucose Measurement 0x2A18 (notify).
    GlucoseMeasurement,
    /// Glucose Measurement Context 0x2A34 (notify).
    GlucoseMeasurementContext,
    /// CGM Measurement 0x2AA7 (notify).
    CgmMeasurement,
    /// Record Access Control Point 0x2A52 (write + indicate).
    RecordAccessControlPoint,
    /// Current Time 0x2A2B (read, notify, optionally write).
    CurrentTime,
    /// Date Time 0x2A08.
    DateTime,
    /// Battery Level 0x2A19.
    BatteryLevel,
}

/// The Bluetooth Base UUID's fixed part: a 16-bit UUID `xxxx` is `0000xxxx-0000-1000-8000-00805f9b34fb`.
const BASE_UUID_LOW: u128 = 0x0000_0000_0000_1000_8000_0080_5f9b_34fb;

impl Characteristic {
    /// Every decodable characteristic.
    pub const ALL: [Characteristic; 14] = [
        Characteristic::BloodPressureMeasurement,
        Characteristic::IntermediateCuffPressure,
        Characteristic::TemperatureMeasurement,
        Characteristic::IntermediateTemperature,
        Characteristic::WeightMeasurement,
        Characteristic::PlxSpotCheck,
        Characteristic::PlxContinuous,
        Characteristic::GlucoseMeasurement,
        Characteristic::GlucoseMeasurementContext,
        Characteristic::CgmMeasurement,
        Characteristic::RecordAccessControlPoint,
        Characteristic::CurrentTime,
        Characteristic::DateTime,
        Characteristic::BatteryLevel,
    ];

    /// The 16-bit UUID.
    pub const fn uuid16(self) -> u16 {
        match self {
            Characteristic::BloodPressureMeasurement => 0x2A35,
            Characteristic::IntermediateCuffPressure => 0x2A36,
            Characteristic::TemperatureMeasurement => 0x2A1C,
            Characteristic::IntermediateTemperature => 0x2A1E,
            Characteristic::WeightMeasurement => 0x2A9D,
            Characteristic::PlxSpotCheck => 0x2A5E,
            Characteristic::PlxContinuous => 0x2A5F,
            Characteristic::GlucoseMeasurement => 0x2A18,
            Characteristic::GlucoseMeasurementContext => 0x2A34,
            Characteristic::CgmMeasurement => 0x2AA7,
            Characteristic::RecordAccessControlPoint => 0x2A52,
            Characteristic::CurrentTime => 0x2A2B,
            Characteristic::DateTime => 0x2A08,
            Characteristic::BatteryLevel => 0x2A19,
        }
    }

    /// The full 128-bit UUID (Bluetooth Base UUID).
    pub const fn uuid(self) -> uuid::Uuid {
        uuid16_to_uuid(self.uuid16())
    }

    /// The characteristic with this 16-bit UUID, if decodable.
    pub fn from_uuid16(u: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.uuid16() == u)
    }

    /// Parses `0x2A35`, `2a35`, `00002a35` or `00002a35-0000-1000-8000-00805f9b34fb`.
    pub fn parse(text: &str) -> Option<Self> {
        let t = text.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let short = match t.len() {
            4 | 8 => u32::from_str_radix(t, 16).ok()?,
            36 => {
                let full = uuid::Uuid::parse_str(t).ok()?.as_u128();
                if full & ((1u128 << 96) - 1) != BASE_UUID_LOW {
                    return None;
                }
                u32::try_from(full >> 96).ok()?
            }
            _ => return None,
        };
        Self::from_uuid16(u16::try_from(short).ok()?)
    }
}

/// A 16-bit Bluetooth UUID as a full 128-bit UUID.
pub const fn uuid16_to_uuid(u: u16) -> uuid::Uuid {
    uuid::Uuid::from_u128(((u as u128) << 96) | BASE_UUID_LOW)
}

/// Any decoded characteristic value.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// 0x2A35.
    BloodPressure(blood_pressure::BloodPressureMeasurement),
    /// 0x2A36.
    IntermediateCuffPressure(blood_pressure::BloodPressureMeasurement),
    /// 0x2A1C.
    Temperature(thermometer::TemperatureMeasurement),
    /// 0x2A1E.
    IntermediateTemperature(thermometer::TemperatureMeasurement),
    /// 0x2A9D.
    Weight(weight_scale::WeightMeasurement),
    /// 0x2A5E.
    PlxSpotCheck(pulse_oximeter::SpotCheck),
    /// 0x2A5F.
    PlxContinuous(pulse_oximeter::Continuous),
    /// 0x2A18.
    Glucose(glucose::GlucoseMeasurement),
    /// 0x2A34.
    GlucoseContext(glucose::GlucoseContext),
    /// 0x2AA7: one notification may carry several records.
    Cgm(Vec<cgm::CgmRecord>),
    /// 0x2A52, a request (what the gateway writes).
    RacpRequest(racp::Request),
    /// 0x2A52, a response (what the device indicates).
    RacpResponse(racp::Response),
    /// 0x2A2B.
    CurrentTime(datetime::CurrentTime),
    /// 0x2A08.
    DateTime(LocalDateTime),
    /// 0x2A19, percent.
    BatteryLevel(u8),
}

/// For RACP (0x2A52), which side of the exchange the bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Written by the gateway (op codes 1–4).
    Request,
    /// Indicated by the device (op codes 5, 6).
    Response,
}

impl Direction {
    /// Parses `request`/`write` or `response`/`indication`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "request" | "write" => Some(Direction::Request),
            "response" | "indication" => Some(Direction::Response),
            _ => None,
        }
    }
}

/// Decodes one characteristic value. For RACP, `direction` says which side produced the bytes;
/// `None` infers it from the op code (5 and 6 are responses). It is ignored for the others.
pub fn decode(
    ch: Characteristic,
    bytes: &[u8],
    direction: Option<Direction>,
) -> Result<Decoded, DecodeError> {
    Ok(match ch {
        Characteristic::BloodPressureMeasurement => {
            Decoded::BloodPressure(blood_pressure::decode(bytes)?)
        }
        Characteristic::IntermediateCuffPressure => {
            Decoded::IntermediateCuffPressure(blood_pressure::decode(bytes)?)
        }
        Characteristic::TemperatureMeasurement => Decoded::Temperature(thermometer::decode(bytes)?),
        Characteristic::IntermediateTemperature => {
            Decoded::IntermediateTemperature(thermometer::decode(bytes)?)
        }
        Characteristic::WeightMeasurement => Decoded::Weight(weight_scale::decode(bytes)?),
        Characteristic::PlxSpotCheck => {
            Decoded::PlxSpotCheck(pulse_oximeter::decode_spot_check(bytes)?)
        }
        Characteristic::PlxContinuous => {
            Decoded::PlxContinuous(pulse_oximeter::decode_continuous(bytes)?)
        }
        Characteristic::GlucoseMeasurement => Decoded::Glucose(glucose::decode(bytes)?),
        Characteristic::GlucoseMeasurementContext => {
            Decoded::GlucoseContext(glucose::decode_context(bytes)?)
        }
        Characteristic::CgmMeasurement => Decoded::Cgm(cgm::decode(bytes)?),
        Characteristic::RecordAccessControlPoint => {
            let dir = direction.unwrap_or(match bytes.first() {
                Some(5 | 6) => Direction::Response,
                _ => Direction::Request,
            });
            match dir {
                Direction::Request => Decoded::RacpRequest(racp::decode_request(bytes)?),
                Direction::Response => Decoded::RacpResponse(racp::decode_response(bytes)?),
            }
        }
        Characteristic::CurrentTime => Decoded::CurrentTime(datetime::decode_current_time(bytes)?),
        Characteristic::DateTime => Decoded::DateTime(datetime::decode_date_time(bytes)?),
        Characteristic::BatteryLevel => Decoded::BatteryLevel(battery::decode(bytes)?),
    })
}

impl ToMeasurements for Decoded {
    fn measurements(&self) -> Vec<Measurement> {
        match self {
            Decoded::BloodPressure(m) => m.measurements(),
            Decoded::Temperature(m) => m.measurements(),
            Decoded::Weight(m) => m.measurements(),
            Decoded::PlxSpotCheck(m) => m.measurements(),
            Decoded::PlxContinuous(m) => m.measurements(),
            Decoded::Glucose(m) => m.measurements(),
            Decoded::Cgm(records) => records.iter().flat_map(|r| r.measurements()).collect(),
            // Intermediate values are progress, not readings; the others carry no measurement.
            Decoded::IntermediateCuffPressure(_)
            | Decoded::IntermediateTemperature(_)
            | Decoded::GlucoseContext(_)
            | Decoded::RacpRequest(_)
            | Decoded::RacpResponse(_)
            | Decoded::CurrentTime(_)
            | Decoded::DateTime(_)
            | Decoded::BatteryLevel(_) => Vec::new(),
        }
    }

    fn device_time(&self) -> Option<LocalDateTime> {
        match self {
            Decoded::BloodPressure(m) => m.device_time(),
            Decoded::Temperature(m) => m.device_time(),
            Decoded::Weight(m) => m.device_time(),
            Decoded::PlxSpotCheck(m) => m.device_time(),
            Decoded::Glucose(m) => m.device_time(),
            _ => None,
        }
    }

    fn device_time_trusted(&self) -> bool {
        match self {
            Decoded::BloodPressure(m) => m.device_time_trusted(),
            Decoded::Temperature(m) => m.device_time_trusted(),
            Decoded::Weight(m) => m.device_time_trusted(),
            Decoded::PlxSpotCheck(m) => m.device_time_trusted(),
            Decoded::Glucose(m) => m.device_time_trusted(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characteristic_spellings() {
        for text in [
            "0x2A35",
            "2a35",
            "0X2a35",
            "00002a35",
            "00002a35-0000-1000-8000-00805f9b34fb",
            "00002A35-0000-1000-8000-00805F9B34FB",
        ] {
            assert_eq!(
                Characteristic::parse(text),
                Some(Characteristic::BloodPressureMeasurement),
                "{text}"
            );
        }
        assert_eq!(Characteristic::parse("0x2A00"), None);
        assert_eq!(Characteristic::parse("2a3"), None);
        // Not on the Bluetooth Base UUID.
        assert_eq!(
            Characteristic::parse("00002a35-0000-1000-8000-00805f9b34fc"),
            None
        );
        assert_eq!(
            Characteristic::BloodPressureMeasurement.uuid().to_string(),
            "00002a35-0000-1000-8000-00805f9b34fb"
        );
    }

    #[test]
    fn reader_reports_need() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Ok(0x0201));
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.u16(), Err(DecodeError::Truncated { need: 4, got: 3 }));
        assert_eq!(r.position(), 2);
    }
}
