//! Blood Pressure Measurement 0x2A35 and Intermediate Cuff Pressure 0x2A36 (Blood Pressure
//! Service 0x1810).
//!
//! Layout (GSS; `oesmith/gatt-xml` `blood_pressure_measurement.xml`): flags · systolic, diastolic,
//! mean arterial pressure (SFLOAT, mmHg when flag b0 = 0, kPa when 1) · \[time stamp, b1\] ·
//! \[pulse rate SFLOAT /min, b2\] · \[user id, b3; 255 = unknown user\] · [measurement status 16 bit,
//! b4]. Intermediate Cuff Pressure has the same layout; its "systolic" is the running cuff pressure
//! and the other two are unused, so it never becomes a reading.

use heim_shared_types::{LocalDateTime, Measurement, Quantity, Unit, Value};

use super::{DecodeError, Reader, ToMeasurements, require};

/// Flag b0: kPa instead of mmHg.
pub const FLAG_KPA: u8 = 0x01;
/// Flag b1: time stamp present.
pub const FLAG_TIME_STAMP: u8 = 0x02;
/// Flag b2: pulse rate present.
pub const FLAG_PULSE_RATE: u8 = 0x04;
/// Flag b3: user id present.
pub const FLAG_USER_ID: u8 = 0x08;
/// Flag b4: measurement status present.
pub const FLAG_STATUS: u8 = 0x10;

/// The pressure unit the flags select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PressureUnit {
    /// Millimetres of mercury.
    MmHg,
    /// Kilopascal.
    KPa,
}

impl PressureUnit {
    /// As a reading unit.
    pub const fn unit(self) -> Unit {
        match self {
            PressureUnit::MmHg => Unit::MillimetreOfMercury,
            PressureUnit::KPa => Unit::Kilopascal,
        }
    }
}

/// Pulse rate relative to the device's limits (status bits 3–4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PulseRange {
    /// Within range.
    InRange,
    /// Exceeds the upper limit.
    AboveUpperLimit,
    /// Below the lower limit.
    BelowLowerLimit,
    /// Value 3, reserved.
    Reserved,
}

/// Blood Pressure Measurement Status (16 bit). Event bits: only set bits are sent onwards, each
/// as a component of an MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS (8410608) observation (PHD IG
/// `bpm-status.json`); the ASN1ToHL7 index equals the BLE bit for 0–2 and 5, and the 2-bit pulse
/// range value 1/2 maps to 8410608.3/.4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BpStatus(pub u16);

impl BpStatus {
    /// b0 body movement during measurement.
    pub const fn body_movement(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// b1 cuff fit too loose.
    pub const fn cuff_too_loose(self) -> bool {
        self.0 & 0x02 != 0
    }
    /// b2 irregular pulse detected.
    pub const fn irregular_pulse(self) -> bool {
        self.0 & 0x04 != 0
    }
    /// b3–4 pulse rate range.
    pub const fn pulse_range(self) -> PulseRange {
        match (self.0 >> 3) & 0x3 {
            0 => PulseRange::InRange,
            1 => PulseRange::AboveUpperLimit,
            2 => PulseRange::BelowLowerLimit,
            _ => PulseRange::Reserved,
        }
    }
    /// b5 improper measurement position.
    pub const fn improper_position(self) -> bool {
        self.0 & 0x20 != 0
    }

    /// The ASN1ToHL7 codes (system `http://terminology.hl7.org/CodeSystem/ASN1ToHL7`) of the set
    /// bits, each with its display name. Reserved bits are dropped.
    pub fn asn1_codes(self) -> Vec<(&'static str, &'static str)> {
        let mut out = Vec::new();
        if self.body_movement() {
            out.push(("8410608.0", "body-movement"));
        }
        if self.cuff_too_loose() {
            out.push(("8410608.1", "cuff-too-loose"));
        }
        if self.irregular_pulse() {
            out.push(("8410608.2", "irregular-pulse"));
        }
        match self.pulse_range() {
            PulseRange::AboveUpperLimit => out.push(("8410608.3", "pulse-over-range-limit")),
            PulseRange::BelowLowerLimit => out.push(("8410608.4", "pulse-under-range-limit")),
            PulseRange::InRange | PulseRange::Reserved => {}
        }
        if self.improper_position() {
            out.push(("8410608.5", "improper-body-position"));
        }
        out
    }
}

/// A decoded Blood Pressure Measurement (or Intermediate Cuff Pressure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BloodPressureMeasurement {
    /// The flags octet as received.
    pub flags: u8,
    /// Unit of the three pressures.
    pub unit: PressureUnit,
    /// Systolic (cuff pressure in 0x2A36).
    pub systolic: Value,
    /// Diastolic.
    pub diastolic: Value,
    /// Mean arterial pressure; devices that do not compute it send NaN.
    pub mean_arterial: Value,
    /// The device's time stamp.
    pub timestamp: Option<LocalDateTime>,
    /// Pulse rate, /min.
    pub pulse_rate: Option<Value>,
    /// User id, 255 = unknown user.
    pub user_id: Option<u8>,
    /// Measurement status.
    pub status: Option<BpStatus>,
}

/// Decodes Blood Pressure Measurement 0x2A35 (and Intermediate Cuff Pressure 0x2A36).
pub fn decode(bytes: &[u8]) -> Result<BloodPressureMeasurement, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    let has = |bit| flags & bit != 0;
    let need = 7
        + if has(FLAG_TIME_STAMP) { 7 } else { 0 }
        + if has(FLAG_PULSE_RATE) { 2 } else { 0 }
        + if has(FLAG_USER_ID) { 1 } else { 0 }
        + if has(FLAG_STATUS) { 2 } else { 0 };
    require(bytes, need)?;
    Ok(BloodPressureMeasurement {
        flags,
        unit: if has(FLAG_KPA) {
            PressureUnit::KPa
        } else {
            PressureUnit::MmHg
        },
        systolic: r.sfloat()?,
        diastolic: r.sfloat()?,
        mean_arterial: r.sfloat()?,
        timestamp: if has(FLAG_TIME_STAMP) {
            Some(r.date_time()?)
        } else {
            None
        },
        pulse_rate: if has(FLAG_PULSE_RATE) {
            Some(r.sfloat()?)
        } else {
            None
        },
        user_id: if has(FLAG_USER_ID) {
            Some(r.u8()?)
        } else {
            None
        },
        status: if has(FLAG_STATUS) {
            Some(BpStatus(r.u16()?))
        } else {
            None
        },
    })
}

impl ToMeasurements for BloodPressureMeasurement {
    /// The blood pressure (three components) and, when sent, the pulse rate.
    fn measurements(&self) -> Vec<Measurement> {
        let unit = self.unit.unit();
        let q = |value| Quantity { value, unit };
        let mut out = vec![Measurement::BloodPressure {
            systolic: q(self.systolic),
            diastolic: q(self.diastolic),
            mean: q(self.mean_arterial),
        }];
        if let Some(value) = self.pulse_rate {
            out.push(Measurement::PulseRate(Quantity {
                value,
                unit: Unit::PerMinute,
            }));
        }
        out
    }

    fn device_time(&self) -> Option<LocalDateTime> {
        self.timestamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heim_shared_types::{AbsentReason, Decimal};

    #[test]
    fn map_nan_stays_absent_and_status_maps() {
        // 120/80 mmHg, MAP NaN, status 0x0027 + pulse range "above".
        let bytes = [0x10, 0x78, 0x00, 0x50, 0x00, 0xFF, 0x07, 0x2F, 0x00];
        let m = decode(&bytes).unwrap();
        assert_eq!(m.mean_arterial, Value::Absent(AbsentReason::NotANumber));
        let status = m.status.unwrap();
        assert_eq!(status.pulse_range(), PulseRange::AboveUpperLimit);
        let codes: Vec<_> = status.asn1_codes().into_iter().map(|c| c.0).collect();
        assert_eq!(
            codes,
            [
                "8410608.0",
                "8410608.1",
                "8410608.2",
                "8410608.3",
                "8410608.5"
            ]
        );
        let ms = m.measurements();
        assert_eq!(ms.len(), 1);
        assert_eq!(
            ms[0],
            Measurement::BloodPressure {
                systolic: Quantity::new(120, 0, Unit::MillimetreOfMercury),
                diastolic: Quantity::new(80, 0, Unit::MillimetreOfMercury),
                mean: Quantity {
                    value: Value::Absent(AbsentReason::NotANumber),
                    unit: Unit::MillimetreOfMercury
                },
            }
        );
        assert!(!m.device_time_trusted());
    }

    #[test]
    fn kpa_and_pulse_become_two_measurements() {
        let m = decode(&[
            0x15, 0xbd, 0xf0, 0x0b, 0x00, 0x9f, 0xf0, 0x3c, 0x00, 0x12, 0x00,
        ])
        .unwrap();
        let ms = m.measurements();
        assert_eq!(ms.len(), 2);
        let Measurement::BloodPressure { systolic, .. } = ms[0] else {
            panic!("{ms:?}")
        };
        assert_eq!(systolic.unit, Unit::Kilopascal);
        assert_eq!(systolic.value, Value::Number(Decimal::new(189, -1)));
        assert_eq!(
            ms[1],
            Measurement::PulseRate(Quantity::new(60, 0, Unit::PerMinute))
        );
    }

    #[test]
    fn need_counts_every_flagged_field() {
        assert_eq!(
            decode(&[0x1e, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Truncated { need: 19, got: 7 })
        );
        assert_eq!(decode(&[]), Err(DecodeError::Truncated { need: 1, got: 0 }));
    }
}
