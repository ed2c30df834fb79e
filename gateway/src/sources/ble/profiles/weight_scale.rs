//! Weight Measurement 0x2A9D (Weight Scale Service 0x181D).
//!
//! Layout (GSS; `oesmith/gatt-xml` `weight_measurement.xml`): flags (b0 imperial, b1 time stamp,
//! b2 user id, b3 BMI and height) · weight uint16 · \[time stamp\] · \[user id\] · [BMI uint16,
//! height uint16]. Resolutions are fixed by the characteristic: weight 0.005 kg or 0.01 lb, BMI
//! 0.1 kg/m², height 0.001 m or 0.1 in; the Weight Scale Feature's resolution only states the
//! precision (the spec reading; some scales deviate and need a per-model quirk, see the design notes
//! §6.2). Weight 0xFFFF is "measurement unsuccessful".
//!
//! Values are exact decimals in the unit's resolution: raw 14000 → `70.000` kg, 15700 → `157.00` lb.

use heim_shared_types::{AbsentReason, Decimal, LocalDateTime, Measurement, Quantity, Unit, Value};

use super::{DecodeError, Reader, ToMeasurements, require};

/// Flag b0: imperial (lb, in) instead of SI (kg, m).
pub const FLAG_IMPERIAL: u8 = 0x01;
/// Flag b1: time stamp present.
pub const FLAG_TIME_STAMP: u8 = 0x02;
/// Flag b2: user id present.
pub const FLAG_USER_ID: u8 = 0x04;
/// Flag b3: BMI and height present.
pub const FLAG_BMI_HEIGHT: u8 = 0x08;
/// Weight value meaning "measurement unsuccessful".
pub const WEIGHT_UNSUCCESSFUL: u16 = 0xFFFF;

/// The unit system the flags select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitSystem {
    /// Kilogram and metre.
    Si,
    /// Pound and inch.
    Imperial,
}

/// A decoded Weight Measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightMeasurement {
    /// The flags octet as received.
    pub flags: u8,
    /// SI or imperial.
    pub system: UnitSystem,
    /// Weight in kg (SI) or lb (imperial); absent "unsuccessful" for 0xFFFF.
    pub weight: Value,
    /// The device's time stamp.
    pub timestamp: Option<LocalDateTime>,
    /// User id, 255 = unknown user.
    pub user_id: Option<u8>,
    /// BMI, kg/m².
    pub bmi: Option<Value>,
    /// Height in m (SI) or in (imperial).
    pub height: Option<Value>,
}

impl WeightMeasurement {
    /// The weight's unit.
    pub const fn weight_unit(&self) -> Unit {
        match self.system {
            UnitSystem::Si => Unit::Kilogram,
            UnitSystem::Imperial => Unit::Pound,
        }
    }
}

/// Decodes Weight Measurement 0x2A9D.
pub fn decode(bytes: &[u8]) -> Result<WeightMeasurement, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    let has = |bit| flags & bit != 0;
    let need = 3
        + if has(FLAG_TIME_STAMP) { 7 } else { 0 }
        + if has(FLAG_USER_ID) { 1 } else { 0 }
        + if has(FLAG_BMI_HEIGHT) { 4 } else { 0 };
    require(bytes, need)?;
    let system = if has(FLAG_IMPERIAL) {
        UnitSystem::Imperial
    } else {
        UnitSystem::Si
    };
    let raw = r.u16()?;
    let weight = match (raw, system) {
        (WEIGHT_UNSUCCESSFUL, _) => Value::Absent(AbsentReason::Unsuccessful),
        // 0.005 kg = 5 × 10⁻³: the mantissa carries the factor 5 so the value stays exact.
        (_, UnitSystem::Si) => Value::Number(Decimal::new(i32::from(raw) * 5, -3)),
        (_, UnitSystem::Imperial) => Value::Number(Decimal::new(i32::from(raw), -2)),
    };
    let timestamp = if has(FLAG_TIME_STAMP) {
        Some(r.date_time()?)
    } else {
        None
    };
    let user_id = if has(FLAG_USER_ID) {
        Some(r.u8()?)
    } else {
        None
    };
    let (bmi, height) = if has(FLAG_BMI_HEIGHT) {
        let bmi = Decimal::new(i32::from(r.u16()?), -1);
        let h = i32::from(r.u16()?);
        let height = match system {
            UnitSystem::Si => Decimal::new(h, -3),
            UnitSystem::Imperial => Decimal::new(h, -1),
        };
        (Some(Value::Number(bmi)), Some(Value::Number(height)))
    } else {
        (None, None)
    };
    Ok(WeightMeasurement {
        flags,
        system,
        weight,
        timestamp,
        user_id,
        bmi,
        height,
    })
}

impl ToMeasurements for WeightMeasurement {
    /// Body weight (absent "unsuccessful" when the scale says so), and BMI and height when sent.
    /// Height goes out in cm (FHIR vital signs use `cm`/`[in_i]`), the decimal point moved, not
    /// the digits: `1.750` m → `175.0` cm.
    fn measurements(&self) -> Vec<Measurement> {
        let mut out = vec![Measurement::BodyWeight(Quantity {
            value: self.weight,
            unit: self.weight_unit(),
        })];
        if let Some(bmi) = self.bmi {
            out.push(Measurement::Bmi(Quantity {
                value: bmi,
                unit: Unit::KilogramPerSquareMetre,
            }));
        }
        if let Some(height) = self.height {
            let q = match self.system {
                UnitSystem::Si => super::shift(height, 2).map(|value| Quantity {
                    value,
                    unit: Unit::Centimetre,
                }),
                UnitSystem::Imperial => Some(Quantity {
                    value: height,
                    unit: Unit::Inch,
                }),
            };
            out.extend(q.map(Measurement::BodyHeight));
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

    #[test]
    fn si_with_bmi_and_height() {
        let m = decode(&[0x0c, 0xb0, 0x36, 0x05, 0xf5, 0x00, 0xd6, 0x06]).unwrap();
        assert_eq!(
            m.measurements(),
            [
                Measurement::BodyWeight(Quantity::new(70000, -3, Unit::Kilogram)),
                Measurement::Bmi(Quantity::new(245, -1, Unit::KilogramPerSquareMetre)),
                Measurement::BodyHeight(Quantity::new(1750, -1, Unit::Centimetre)),
            ]
        );
    }

    #[test]
    fn imperial_height_in_inches() {
        let m = decode(&[0x09, 0x54, 0x3d, 0xf5, 0x00, 0xbc, 0x02]).unwrap();
        assert_eq!(m.weight, Value::Number(Decimal::new(15700, -2)));
        assert_eq!(
            m.measurements()[2],
            Measurement::BodyHeight(Quantity::new(700, -1, Unit::Inch))
        );
    }

    #[test]
    fn unsuccessful_is_absent() {
        let m = decode(&[0x00, 0xff, 0xff]).unwrap();
        assert_eq!(
            m.measurements(),
            [Measurement::BodyWeight(Quantity {
                value: Value::Absent(AbsentReason::Unsuccessful),
                unit: Unit::Kilogram
            })]
        );
    }
}
