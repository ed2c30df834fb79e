//! Temperature Measurement 0x2A1C and Intermediate Temperature 0x2A1E (Health Thermometer
//! Service 0x1809).
//!
//! Layout (GSS; `oesmith/gatt-xml` `temperature_measurement.xml`): flags (b0 Fahrenheit, b1 time
//! stamp, b2 temperature type) · temperature **FLOAT** · \[time stamp\] · \[temperature type uint8\].
//! Temperature types 1–9 are body sites (11073-10408); 0 and 10–255 are reserved and real devices
//! send them (a Beurer FT95 example sends 0xFF): the reading is kept without a site.

use heim_shared_types::{BodySite, LocalDateTime, Measurement, Quantity, Unit, Value};

use super::{DecodeError, Reader, ToMeasurements, require};

/// Flag b0: Fahrenheit instead of Celsius.
pub const FLAG_FAHRENHEIT: u8 = 0x01;
/// Flag b1: time stamp present.
pub const FLAG_TIME_STAMP: u8 = 0x02;
/// Flag b2: temperature type present.
pub const FLAG_TYPE: u8 = 0x04;

/// The temperature unit the flags select.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemperatureUnit {
    /// Degrees Celsius.
    Celsius,
    /// Degrees Fahrenheit.
    Fahrenheit,
}

impl TemperatureUnit {
    /// As a reading unit.
    pub const fn unit(self) -> Unit {
        match self {
            TemperatureUnit::Celsius => Unit::Celsius,
            TemperatureUnit::Fahrenheit => Unit::Fahrenheit,
        }
    }
}

/// A decoded Temperature Measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemperatureMeasurement {
    /// The flags octet as received.
    pub flags: u8,
    /// Unit of the temperature.
    pub unit: TemperatureUnit,
    /// The temperature, precision kept (`37.60`).
    pub temperature: Value,
    /// The device's time stamp.
    pub timestamp: Option<LocalDateTime>,
    /// Temperature Type as sent (see [`site`]).
    pub temperature_type: Option<u8>,
}

/// The body site of a Temperature Type value; `None` for reserved values (0, 10–255).
pub const fn site(temperature_type: u8) -> Option<BodySite> {
    Some(match temperature_type {
        1 => BodySite::Armpit,
        2 => BodySite::Body,
        3 => BodySite::Ear,
        4 => BodySite::Finger,
        5 => BodySite::GastroIntestinalTract,
        6 => BodySite::Mouth,
        7 => BodySite::Rectum,
        8 => BodySite::Toe,
        9 => BodySite::Tympanum,
        _ => return None,
    })
}

/// Decodes Temperature Measurement 0x2A1C (and Intermediate Temperature 0x2A1E).
pub fn decode(bytes: &[u8]) -> Result<TemperatureMeasurement, DecodeError> {
    let mut r = Reader::new(bytes);
    let flags = r.u8()?;
    let has = |bit| flags & bit != 0;
    let need = 5 + if has(FLAG_TIME_STAMP) { 7 } else { 0 } + if has(FLAG_TYPE) { 1 } else { 0 };
    require(bytes, need)?;
    Ok(TemperatureMeasurement {
        flags,
        unit: if has(FLAG_FAHRENHEIT) {
            TemperatureUnit::Fahrenheit
        } else {
            TemperatureUnit::Celsius
        },
        temperature: r.float()?,
        timestamp: if has(FLAG_TIME_STAMP) {
            Some(r.date_time()?)
        } else {
            None
        },
        temperature_type: if has(FLAG_TYPE) { Some(r.u8()?) } else { None },
    })
}

impl ToMeasurements for TemperatureMeasurement {
    fn measurements(&self) -> Vec<Measurement> {
        vec![Measurement::BodyTemperature {
            temperature: Quantity {
                value: self.temperature,
                unit: self.unit.unit(),
            },
            site: self.temperature_type.and_then(site),
        }]
    }

    fn device_time(&self) -> Option<LocalDateTime> {
        self.timestamp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_type_keeps_the_reading_without_site() {
        let m = decode(&[0x05, 0xda, 0x03, 0x00, 0xff, 0xff]).unwrap();
        assert_eq!(m.temperature_type, Some(0xff));
        assert_eq!(
            m.measurements(),
            [Measurement::BodyTemperature {
                temperature: Quantity::new(986, -1, Unit::Fahrenheit),
                site: None
            }]
        );
        let m = decode(&[
            0x06, 0xb0, 0x0e, 0x00, 0xfe, 0xdc, 0x07, 0x0c, 0x05, 0x0b, 0x32, 0x1b, 0x04,
        ])
        .unwrap();
        assert!(m.device_time_trusted());
        assert_eq!(
            m.measurements(),
            [Measurement::BodyTemperature {
                temperature: Quantity::new(3760, -2, Unit::Celsius),
                site: Some(BodySite::Finger)
            }]
        );
    }
}
