//! Glucose Measurement 0x2A18 and Glucose Measurement Context 0x2A34 (Glucose Service 0x1808).
//!
//! Measurement (GSS; `oesmith/gatt-xml` `glucose_measurement.xml`): flags (b0 time offset, b1
//! concentration + type/location, b2 mol/L instead of kg/L, b3 sensor status annunciation, b4
//! context follows) · sequence number uint16 · base time · \[time offset sint16 minutes\] ·
//! \[concentration SFLOAT, type (low nibble) · sample location (high nibble)\] · \[status 16 bit\].
//!
//! Context (`glucose_measurement_context.xml`): flags (b0 carbohydrate, b1 meal, b2 tester/health,
//! b3 exercise, b4 medication, b5 medication in litres, b6 HbA1c, b7 extended flags) · sequence
//! number (that of the measurement it belongs to) · \[extended flags\] · \[carbohydrate id, SFLOAT g\] ·
//! \[meal\] · \[tester (low nibble) · health (high nibble)\] · [exercise duration uint16 s, intensity
//! uint8 %] · \[medication id, SFLOAT mg or mL\] · \[HbA1c SFLOAT %\]. (Some public parsers swap the
//! nibbles; the SIG XML puts Type and Tester in the low nibble.)
//!
//! Units: kg/L × 10⁵ = mg/dL and mol/L × 10³ = mmol/L, done by moving the decimal point so the
//! device's precision is kept (`0.0055` mol/L → `5.5` mmol/L). Control-solution results (type 10 or
//! location 4) are not patient data and never become readings. Status bit 11 "time fault" makes
//! the device time untrusted.

use heim_shared_types::{GlucoseSample, LocalDateTime, Measurement, Quantity, Unit, Value};

use super::{DecodeError, Reader, ToMeasurements, datetime, require, shift};

/// Flag b0: time offset present.
pub const FLAG_TIME_OFFSET: u8 = 0x01;
/// Flag b1: concentration and type/sample location present.
pub const FLAG_CONCENTRATION: u8 = 0x02;
/// Flag b2: mol/L instead of kg/L.
pub const FLAG_MOL_PER_L: u8 = 0x04;
/// Flag b3: sensor status annunciation present.
pub const FLAG_STATUS: u8 = 0x08;
/// Flag b4: a context record with the same sequence number follows.
pub const FLAG_CONTEXT_FOLLOWS: u8 = 0x10;

/// The concentration unit the flags select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlucoseUnit {
    /// kg/L (→ mg/dL × 10⁵).
    KgPerL,
    /// mol/L (→ mmol/L × 10³).
    MolPerL,
}

/// Glucose concentration with sample type and location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Concentration {
    /// The value in the wire unit.
    pub value: Value,
    /// kg/L or mol/L.
    pub unit: GlucoseUnit,
    /// Type (low nibble): 1 capillary whole blood … 9 ISF, 10 control solution; 0, 11–15 reserved.
    pub sample_type: u8,
    /// Sample location (high nibble): 1 finger, 2 AST, 3 earlobe, 4 control solution, 15 n/a.
    pub sample_location: u8,
}

impl Concentration {
    /// The value in the unit FHIR uses: mg/dL or mmol/L.
    pub fn fhir_quantity(&self) -> Option<Quantity> {
        let (s, unit) = match self.unit {
            GlucoseUnit::KgPerL => (5, Unit::MilligramPerDecilitre),
            GlucoseUnit::MolPerL => (3, Unit::MillimolePerLitre),
        };
        shift(self.value, s).map(|value| Quantity { value, unit })
    }

    /// The sample type as a reading field; `None` for reserved values.
    pub const fn sample(&self) -> Option<GlucoseSample> {
        Some(match self.sample_type {
            1 => GlucoseSample::CapillaryWholeBlood,
            2 => GlucoseSample::CapillaryPlasma,
            3 => GlucoseSample::VenousWholeBlood,
            4 => GlucoseSample::VenousPlasma,
            5 => GlucoseSample::ArterialWholeBlood,
            6 => GlucoseSample::ArterialPlasma,
            7 => GlucoseSample::UndeterminedWholeBlood,
            8 => GlucoseSample::UndeterminedPlasma,
            9 => GlucoseSample::InterstitialFluid,
            10 => GlucoseSample::ControlSolution,
            _ => return None,
        })
    }

    /// Control solution (type 10 or location 4): a meter check, never a patient value.
    pub const fn is_control_solution(&self) -> bool {
        self.sample_type == 10 || self.sample_location == 4
    }
}

/// Sensor Status Annunciation (16 bit). Bits 0–10 line up with MDC_GLU_METER_DEV_STATUS
/// (8417752.0–10); bit 11 "time fault" has no equivalent there and is handled as a clock problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlucoseStatus(pub u16);

impl GlucoseStatus {
    const NAMES: [&'static str; 11] = [
        "device-battery-low",
        "sensor-malfunction",
        "sample-size-insufficient",
        "strip-insertion-error",
        "strip-type-incorrect",
        "result-too-high",
        "result-too-low",
        "sensor-temp-too-high",
        "sensor-temp-too-low",
        "sensor-read-interrupt",
        "device-gen-fault",
    ];

    /// b11: the time may be inaccurate.
    pub const fn time_fault(self) -> bool {
        self.0 & (1 << 11) != 0
    }

    /// The ASN1ToHL7 codes (`8417752.n`) of the set bits 0–10, with their names.
    pub fn asn1_codes(self) -> Vec<(String, &'static str)> {
        (0u8..11)
            .filter(|b| self.0 & (1 << b) != 0)
            .map(|b| (format!("8417752.{b}"), Self::NAMES[usize::from(b)]))
            .collect()
    }
}

/// A decoded Glucose Measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlucoseMeasurement {
    /// The flags octet as received.
    pub flags: u8,
    /// The meter's record number (the RACP back-fill cursor).
    pub sequence_number: u16,
    /// Base time; the effective time adds [`Self::time_offset`].
    pub base_time: LocalDateTime,
    /// Minutes to add to the base time.
    pub time_offset: Option<i16>,
    /// The concentration, when present.
    pub concentration: Option<Concentration>,
    /// Sensor status annunciation.
    pub status: Option<GlucoseStatus>,
    /// A context record (0x2A34) with the same sequence number follows.
    pub context_follows: bool,
}

impl GlucoseMeasurement {
    /// Base time + time offset, when the base date is a real date; else the base time as sent.
    pub fn effective_time(&self) -> LocalDateTime {
        let offset = i64::from(self.time_offset.unwrap_or(0));
        datetime::to_naive(&self.base_time)
            .and_then(|t| t.checked_add_signed(chrono::TimeDelta::minutes(offset)))
            .and_then(|t| datetime::from_naive(&t))
            .unwrap_or(self.base_time)
    }
}

/// Decodes Glucose Measurement 0x2A18.
pub fn decode(bytes: &[u8]) -> Result<GlucoseMeasurement, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    let has = |bit| flags & bit != 0;
    let need = 10
        + if has(FLAG_TIME_OFFSET) { 2 } else { 0 }
        + if has(FLAG_CONCENTRATION) { 3 } else { 0 }
        + if has(FLAG_STATUS) { 2 } else { 0 };
    require(bytes, need)?;
    let sequence_number = r.u16()?;
    let base_time = r.date_time()?;
    let time_offset = if has(FLAG_TIME_OFFSET) {
        Some(r.i16()?)
    } else {
        None
    };
    let concentration = if has(FLAG_CONCENTRATION) {
        let value = r.sfloat()?;
        let type_location = r.u8()?;
        Some(Concentration {
            value,
            unit: if has(FLAG_MOL_PER_L) {
                GlucoseUnit::MolPerL
            } else {
                GlucoseUnit::KgPerL
            },
            sample_type: type_location & 0x0F,
            sample_location: type_location >> 4,
        })
    } else {
        None
    };
    let status = if has(FLAG_STATUS) {
        Some(GlucoseStatus(r.u16()?))
    } else {
        None
    };
    Ok(GlucoseMeasurement {
        flags,
        sequence_number,
        base_time,
        time_offset,
        concentration,
        status,
        context_follows: has(FLAG_CONTEXT_FOLLOWS),
    })
}

impl ToMeasurements for GlucoseMeasurement {
    /// The glucose in mg/dL or mmol/L; nothing for a record without a concentration or for
    /// control solution.
    fn measurements(&self) -> Vec<Measurement> {
        let Some(c) = self.concentration.filter(|c| !c.is_control_solution()) else {
            return Vec::new();
        };
        c.fhir_quantity()
            .map(|glucose| Measurement::BloodGlucose {
                glucose,
                sample: c.sample(),
            })
            .into_iter()
            .collect()
    }

    fn device_time(&self) -> Option<LocalDateTime> {
        Some(self.effective_time())
    }

    fn device_time_trusted(&self) -> bool {
        datetime::is_complete(self.base_time) && !self.status.is_some_and(GlucoseStatus::time_fault)
    }
}

/// Medication unit (context flag b5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MedicationUnit {
    /// Mass: the SFLOAT counts milligrams (kg with decimal exponent −6 in the SIG XML).
    Milligram,
    /// Volume: the SFLOAT counts millilitres (litre with decimal exponent −3).
    Millilitre,
}

/// A decoded Glucose Measurement Context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlucoseContext {
    /// The flags octet as received.
    pub flags: u8,
    /// The sequence number of the measurement this belongs to.
    pub sequence_number: u16,
    /// Extended flags (all reserved).
    pub extended_flags: Option<u8>,
    /// Carbohydrate id (1 breakfast … 7 brunch) and amount in grams.
    pub carbohydrate: Option<(u8, Value)>,
    /// Meal: 1 preprandial, 2 postprandial, 3 fasting, 4 casual, 5 bedtime.
    pub meal: Option<u8>,
    /// Tester (1 self, 2 HCP, 3 lab, 15 n/a) and health (1 minor … 5 none, 15 n/a).
    pub tester_health: Option<(u8, u8)>,
    /// Exercise duration in seconds (65535 = overrun) and intensity in %.
    pub exercise: Option<(u16, u8)>,
    /// Medication id (1 rapid- … 5 pre-mixed insulin), amount, unit.
    pub medication: Option<(u8, Value, MedicationUnit)>,
    /// HbA1c, %.
    pub hba1c: Option<Value>,
}

/// Decodes Glucose Measurement Context 0x2A34.
pub fn decode_context(bytes: &[u8]) -> Result<GlucoseContext, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    let has = |bit: u8| flags & bit != 0;
    let need = 3
        + if has(0x80) { 1 } else { 0 }
        + if has(0x01) { 3 } else { 0 }
        + if has(0x02) { 1 } else { 0 }
        + if has(0x04) { 1 } else { 0 }
        + if has(0x08) { 3 } else { 0 }
        + if has(0x10) { 3 } else { 0 }
        + if has(0x40) { 2 } else { 0 };
    require(bytes, need)?;
    let sequence_number = r.u16()?;
    let extended_flags = if has(0x80) { Some(r.u8()?) } else { None };
    let carbohydrate = if has(0x01) {
        Some((r.u8()?, r.sfloat()?))
    } else {
        None
    };
    let meal = if has(0x02) { Some(r.u8()?) } else { None };
    let tester_health = if has(0x04) {
        let b = r.u8()?;
        Some((b & 0x0F, b >> 4))
    } else {
        None
    };
    let exercise = if has(0x08) {
        Some((r.u16()?, r.u8()?))
    } else {
        None
    };
    let medication = if has(0x10) {
        let unit = if has(0x20) {
            MedicationUnit::Millilitre
        } else {
            MedicationUnit::Milligram
        };
        Some((r.u8()?, r.sfloat()?, unit))
    } else {
        None
    };
    let hba1c = if has(0x40) { Some(r.sfloat()?) } else { None };
    Ok(GlucoseContext {
        flags,
        sequence_number,
        extended_flags,
        carbohydrate,
        meal,
        tester_health,
        exercise,
        medication,
        hba1c,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use heim_shared_types::Decimal;

    #[test]
    fn mol_per_litre_becomes_mmol_per_litre_with_precision() {
        let bytes = [
            0x16, 0x09, 0x00, 0xe6, 0x07, 0x08, 0x05, 0x0a, 0x0a, 0x00, 0x37, 0xc0, 0x11,
        ];
        let m = decode(&bytes).unwrap();
        assert_eq!(
            m.measurements(),
            [Measurement::BloodGlucose {
                glucose: Quantity::new(55, -1, Unit::MillimolePerLitre),
                sample: Some(GlucoseSample::CapillaryWholeBlood)
            }]
        );
        assert!(m.device_time_trusted());
    }

    #[test]
    fn offset_applies_and_time_fault_untrusts() {
        // Flags 0x0b: offset, concentration (kg/L), status with bit 11.
        let bytes = [
            0x0b, 0x01, 0x00, 0xe3, 0x07, 0x02, 0x1b, 0x0b, 0x0a, 0x1e, 0xfb, 0xff, 0x76, 0xb0,
            0x12, 0x00, 0x08,
        ];
        let m = decode(&bytes).unwrap();
        assert_eq!(m.effective_time().minute, 5);
        assert!(!m.device_time_trusted());
        let Measurement::BloodGlucose { glucose, .. } = m.measurements()[0] else {
            panic!()
        };
        // 0xB076 = 118 × 10⁻⁵ kg/L = 118 mg/dL (the SIG white-paper example).
        assert_eq!(glucose.value, Value::Number(Decimal::new(118, 0)));
        assert_eq!(glucose.unit, Unit::MilligramPerDecilitre);
        assert_eq!(m.status.unwrap().asn1_codes().len(), 0);
    }

    #[test]
    fn control_solution_is_not_a_reading() {
        let mut bytes = [
            0x02, 0x01, 0x00, 0xe3, 0x07, 0x02, 0x1b, 0x0b, 0x0a, 0x1e, 0x76, 0xb0, 0x1a,
        ];
        assert!(decode(&bytes).unwrap().measurements().is_empty());
        bytes[12] = 0x41; // location 4 = control solution
        assert!(decode(&bytes).unwrap().measurements().is_empty());
        bytes[12] = 0x11;
        assert_eq!(decode(&bytes).unwrap().measurements().len(), 1);
    }
}
