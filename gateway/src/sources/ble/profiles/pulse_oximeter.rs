//! PLX Spot-check Measurement 0x2A5E and PLX Continuous Measurement 0x2A5F (Pulse Oximeter
//! Service 0x1822).
//!
//! Spot-check (GSS; `oesmith/gatt-xml` `plx_spot_check_measurement.xml`): flags (b0 timestamp,
//! b1 measurement status, b2 device and sensor status, b3 pulse amplitude index, **b4 device clock
//! is not set**) · SpO2 SFLOAT % · PR SFLOAT /min · \[timestamp\] · \[status 16 bit\] · [device and
//! sensor status 24 bit] · \[PAI SFLOAT %\].
//!
//! Continuous (`plx_continuous_measurement.xml`): flags (b0 fast, b1 slow, b2 status, b3 device
//! and sensor status, b4 PAI) · SpO2 · PR · \[SpO2 fast, PR fast\] · \[SpO2 slow, PR slow\] · \[status\] ·
//! \[device and sensor status\] · \[PAI\]. No timestamp: reception time applies.
//!
//! Measurement status → FHIR follows the design notes §7.3 (PHD IG measurement-status table);
//! device and sensor status → MDC_PULS_OXIM_DEV_STATUS (150604) with ASN1ToHL7 index 15 − BLE bit
//! (§7.4; ASN.1 BITS count from the high-order bit).

use heim_shared_types::{AbsentReason, LocalDateTime, Measurement, Quantity, Unit, Value};

use super::{DecodeError, Reader, ToMeasurements, require};

/// Spot-check flag b0: timestamp present.
pub const SPOT_FLAG_TIMESTAMP: u8 = 0x01;
/// Spot-check flag b1: measurement status present.
pub const SPOT_FLAG_STATUS: u8 = 0x02;
/// Spot-check flag b2: device and sensor status present.
pub const SPOT_FLAG_DEVICE_STATUS: u8 = 0x04;
/// Spot-check flag b3: pulse amplitude index present.
pub const SPOT_FLAG_PAI: u8 = 0x08;
/// Spot-check flag b4: the device clock is not set (no field).
pub const SPOT_FLAG_CLOCK_NOT_SET: u8 = 0x10;

/// Continuous flag b0: SpO2PR-Fast present.
pub const CONT_FLAG_FAST: u8 = 0x01;
/// Continuous flag b1: SpO2PR-Slow present.
pub const CONT_FLAG_SLOW: u8 = 0x02;
/// Continuous flag b2: measurement status present.
pub const CONT_FLAG_STATUS: u8 = 0x04;
/// Continuous flag b3: device and sensor status present.
pub const CONT_FLAG_DEVICE_STATUS: u8 = 0x08;
/// Continuous flag b4: pulse amplitude index present.
pub const CONT_FLAG_PAI: u8 = 0x10;

/// What the measurement status asks the gateway to do with a reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Final data: upload.
    Final,
    /// Upload as `preliminary` (measurement ongoing b5, early estimate b6).
    Preliminary,
    /// Demonstration (b10) or test data (b11): not patient data, do not upload.
    NotPatientData,
    /// Unavailable (b13) or invalid (b15): upload without a value (`dataAbsentReason`).
    NoValue,
}

/// PLX Measurement Status (16 bit; bits 0–4 reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlxStatus(pub u16);

impl PlxStatus {
    const fn bit(self, n: u8) -> bool {
        self.0 & (1 << n) != 0
    }
    /// b5 measurement ongoing.
    pub const fn ongoing(self) -> bool {
        self.bit(5)
    }
    /// b6 early estimated data.
    pub const fn early_estimate(self) -> bool {
        self.bit(6)
    }
    /// b7 validated data.
    pub const fn validated(self) -> bool {
        self.bit(7)
    }
    /// b8 fully qualified data.
    pub const fn fully_qualified(self) -> bool {
        self.bit(8)
    }
    /// b9 data from measurement storage (came through RACP).
    pub const fn from_storage(self) -> bool {
        self.bit(9)
    }
    /// b10 data for demonstration.
    pub const fn demonstration(self) -> bool {
        self.bit(10)
    }
    /// b11 data for testing.
    pub const fn testing(self) -> bool {
        self.bit(11)
    }
    /// b12 calibration ongoing (FHIR interpretation `calibration-ongoing`).
    pub const fn calibration_ongoing(self) -> bool {
        self.bit(12)
    }
    /// b13 measurement unavailable.
    pub const fn unavailable(self) -> bool {
        self.bit(13)
    }
    /// b14 questionable measurement detected (FHIR interpretation `questionable`).
    pub const fn questionable(self) -> bool {
        self.bit(14)
    }
    /// b15 invalid measurement detected.
    pub const fn invalid(self) -> bool {
        self.bit(15)
    }

    /// What to do with the reading. Test/demo data wins over everything (it is never a patient's),
    /// then no-value, then preliminary.
    pub const fn disposition(self) -> Disposition {
        if self.demonstration() || self.testing() {
            Disposition::NotPatientData
        } else if self.invalid() || self.unavailable() {
            Disposition::NoValue
        } else if self.ongoing() || self.early_estimate() {
            Disposition::Preliminary
        } else {
            Disposition::Final
        }
    }
}

/// PLX Device and Sensor Status (24 bit; bits 16–23 reserved).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlxDeviceStatus(pub u32);

impl PlxDeviceStatus {
    const NAMES: [&'static str; 16] = [
        "device-extended-update",
        "device-equipment-malfunction",
        "signal-processing-irregularity",
        "signal-inadequate",
        "signal-poor",
        "signal-low-perfusion",
        "signal-erratic",
        "signal-non-pulsatile",
        "signal-pulse-questionable",
        "signal-searching",
        "sensor-interference",
        "sensor-off",
        "sensor-unsupported",
        "sensor-displaced",
        "sensor-malfunction",
        "sensor-disconnected",
    ];

    /// The ASN1ToHL7 codes (`150604.n`, n = 15 − BLE bit) of the set bits with their names.
    pub fn asn1_codes(self) -> Vec<(String, &'static str)> {
        (0u8..16)
            .filter(|b| self.0 & (1 << b) != 0)
            .map(|b| (format!("150604.{}", 15 - b), Self::NAMES[usize::from(b)]))
            .collect()
    }
}

/// A decoded PLX Spot-check Measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpotCheck {
    /// The flags octet as received.
    pub flags: u8,
    /// SpO2, %.
    pub spo2: Value,
    /// Pulse rate, /min.
    pub pulse_rate: Value,
    /// The device's timestamp.
    pub timestamp: Option<LocalDateTime>,
    /// Measurement status.
    pub status: Option<PlxStatus>,
    /// Device and sensor status.
    pub device_status: Option<PlxDeviceStatus>,
    /// Pulse amplitude index, %.
    pub pulse_amplitude_index: Option<Value>,
    /// Flag b4: the timestamp comes from a clock that was never set.
    pub device_clock_not_set: bool,
}

/// A decoded PLX Continuous Measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Continuous {
    /// The flags octet as received.
    pub flags: u8,
    /// SpO2 (normal), %.
    pub spo2: Value,
    /// Pulse rate (normal), /min.
    pub pulse_rate: Value,
    /// SpO2 and pulse rate, fast response.
    pub fast: Option<(Value, Value)>,
    /// SpO2 and pulse rate, slow response.
    pub slow: Option<(Value, Value)>,
    /// Measurement status.
    pub status: Option<PlxStatus>,
    /// Device and sensor status.
    pub device_status: Option<PlxDeviceStatus>,
    /// Pulse amplitude index, %.
    pub pulse_amplitude_index: Option<Value>,
}

/// Decodes PLX Spot-check Measurement 0x2A5E.
pub fn decode_spot_check(bytes: &[u8]) -> Result<SpotCheck, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    let has = |bit| flags & bit != 0;
    let need = 5
        + if has(SPOT_FLAG_TIMESTAMP) { 7 } else { 0 }
        + if has(SPOT_FLAG_STATUS) { 2 } else { 0 }
        + if has(SPOT_FLAG_DEVICE_STATUS) { 3 } else { 0 }
        + if has(SPOT_FLAG_PAI) { 2 } else { 0 };
    require(bytes, need)?;
    Ok(SpotCheck {
        flags,
        spo2: r.sfloat()?,
        pulse_rate: r.sfloat()?,
        timestamp: if has(SPOT_FLAG_TIMESTAMP) {
            Some(r.date_time()?)
        } else {
            None
        },
        status: if has(SPOT_FLAG_STATUS) {
            Some(PlxStatus(r.u16()?))
        } else {
            None
        },
        device_status: if has(SPOT_FLAG_DEVICE_STATUS) {
            Some(PlxDeviceStatus(r.u24()?))
        } else {
            None
        },
        pulse_amplitude_index: if has(SPOT_FLAG_PAI) {
            Some(r.sfloat()?)
        } else {
            None
        },
        device_clock_not_set: has(SPOT_FLAG_CLOCK_NOT_SET),
    })
}

/// Decodes PLX Continuous Measurement 0x2A5F.
pub fn decode_continuous(bytes: &[u8]) -> Result<Continuous, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    let has = |bit| flags & bit != 0;
    let need = 5
        + if has(CONT_FLAG_FAST) { 4 } else { 0 }
        + if has(CONT_FLAG_SLOW) { 4 } else { 0 }
        + if has(CONT_FLAG_STATUS) { 2 } else { 0 }
        + if has(CONT_FLAG_DEVICE_STATUS) { 3 } else { 0 }
        + if has(CONT_FLAG_PAI) { 2 } else { 0 };
    require(bytes, need)?;
    Ok(Continuous {
        flags,
        spo2: r.sfloat()?,
        pulse_rate: r.sfloat()?,
        fast: if has(CONT_FLAG_FAST) {
            Some((r.sfloat()?, r.sfloat()?))
        } else {
            None
        },
        slow: if has(CONT_FLAG_SLOW) {
            Some((r.sfloat()?, r.sfloat()?))
        } else {
            None
        },
        status: if has(CONT_FLAG_STATUS) {
            Some(PlxStatus(r.u16()?))
        } else {
            None
        },
        device_status: if has(CONT_FLAG_DEVICE_STATUS) {
            Some(PlxDeviceStatus(r.u24()?))
        } else {
            None
        },
        pulse_amplitude_index: if has(CONT_FLAG_PAI) {
            Some(r.sfloat()?)
        } else {
            None
        },
    })
}

/// SpO2 and pulse rate as readings, as the measurement status allows (see [`Disposition`]).
fn spo2_and_pulse(spo2: Value, pulse: Value, status: Option<PlxStatus>) -> Vec<Measurement> {
    let (spo2, pulse) = match status.map(PlxStatus::disposition) {
        Some(Disposition::NotPatientData) => return Vec::new(),
        // `AbsentReason` has no "not performed"; `Error` renders as dataAbsentReason `error`,
        // what the PHD IG asks for an invalid measurement.
        Some(Disposition::NoValue) => (
            Value::Absent(AbsentReason::Error),
            Value::Absent(AbsentReason::Error),
        ),
        _ => (spo2, pulse),
    };
    vec![
        Measurement::Spo2(Quantity {
            value: spo2,
            unit: Unit::Percent,
        }),
        Measurement::PulseRate(Quantity {
            value: pulse,
            unit: Unit::PerMinute,
        }),
    ]
}

impl ToMeasurements for SpotCheck {
    fn measurements(&self) -> Vec<Measurement> {
        spo2_and_pulse(self.spo2, self.pulse_rate, self.status)
    }

    fn device_time(&self) -> Option<LocalDateTime> {
        self.timestamp
    }

    fn device_time_trusted(&self) -> bool {
        !self.device_clock_not_set && self.timestamp.is_some_and(super::datetime::is_complete)
    }
}

impl ToMeasurements for Continuous {
    /// The normal-response SpO2 and pulse rate; fast and slow responses are averaging variants of
    /// the same quantity and are not stored as separate readings.
    fn measurements(&self) -> Vec<Measurement> {
        spo2_and_pulse(self.spo2, self.pulse_rate, self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions() {
        assert_eq!(PlxStatus(0x4020).disposition(), Disposition::Preliminary);
        assert_eq!(PlxStatus(0x0180).disposition(), Disposition::Final);
        assert_eq!(PlxStatus(0x8800).disposition(), Disposition::NotPatientData);
        assert_eq!(PlxStatus(0x8000).disposition(), Disposition::NoValue);
        assert_eq!(PlxStatus(0x2000).disposition(), Disposition::NoValue);
    }

    #[test]
    fn device_status_codes_count_from_the_high_bit() {
        let codes = PlxDeviceStatus(0x22).asn1_codes();
        assert_eq!(
            codes,
            [
                ("150604.14".to_string(), "device-equipment-malfunction"),
                ("150604.10".to_string(), "signal-low-perfusion")
            ]
        );
        assert_eq!(PlxDeviceStatus(0x8000).asn1_codes()[0].0, "150604.0");
        assert!(PlxDeviceStatus(0xFF_0000).asn1_codes().is_empty());
    }

    #[test]
    fn clock_not_set_means_untrusted() {
        // Flags 0x11: timestamp present and clock not set.
        let b = [
            0x11, 0x61, 0x00, 0x48, 0x00, 0xe8, 0x07, 0x0b, 0x1d, 0x17, 0x08, 0x39,
        ];
        let m = decode_spot_check(&b).unwrap();
        assert!(m.device_clock_not_set);
        assert!(m.device_time().is_some());
        assert!(!m.device_time_trusted());
    }

    #[test]
    fn invalid_measurement_uploads_without_value_and_test_data_not_at_all() {
        let mut b = vec![0x04, 0x61, 0x00, 0x48, 0x00, 0x00, 0x80];
        let m = decode_continuous(&b).unwrap();
        assert_eq!(
            m.measurements()[0],
            Measurement::Spo2(Quantity {
                value: Value::Absent(AbsentReason::Error),
                unit: Unit::Percent
            })
        );
        b[6] = 0x08;
        assert!(decode_continuous(&b).unwrap().measurements().is_empty());
    }
}
