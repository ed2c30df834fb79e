//! The reading model: what one measurement is, independent of where it came from.
//!
//! Invariants:
//! * a [`Reading`]'s [`ReadingId`] is derived only from facts the source can repeat (a node's
//!   `(node_id, boot_id, seq)`, a simulated device's sequence number, a BLE device's address and its
//!   own record number or timestamp), never from the gateway's clock or a random number, so a
//!   reading handed over twice is the same reading;
//! * values are exact decimals ([`Decimal`]): `37.60 Cel` stays `37.60`, and a device's "not a
//!   number" stays [`Value::Absent`] with its reason, never a number.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A stable, 128-bit reading identifier, shown as a UUID.
///
/// The gateway derives it by hashing the source's own identity of the reading (see
/// `gateway::reading_id`), so retries and restarts give the same value, and a FHIR server can drop a
/// redelivered reading by it (`ifNoneExist`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReadingId(pub [u8; 16]);

impl fmt::Display for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written into a buffer and handed over once: every Observation carries its id twice, and
        // per-byte `{:02x}` through the formatting machinery was 6 % of the uplink's CPU (perf).
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 36];
        let mut n = 0;
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out[n] = b'-';
                n += 1;
            }
            out[n] = HEX[usize::from(b >> 4)];
            out[n + 1] = HEX[usize::from(b & 0x0f)];
            n += 2;
        }
        // Only ASCII hex digits and '-' were written.
        f.write_str(core::str::from_utf8(&out).unwrap_or_default())
    }
}

impl fmt::Debug for ReadingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReadingId({self})")
    }
}

/// Which piece of equipment a reading came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceId {
    /// A Bluetooth LE device, by its identity (public or static random) address, most significant
    /// octet first as written `AA:BB:CC:DD:EE:FF`.
    Ble([u8; 6]),
    /// A sensor node on a serial line, by the node id it announces in `Hello`.
    Node(u64),
    /// A simulated device: the source's index in the config and the simulated equipment's number.
    Simulated {
        /// Index of the `[[source]]` in the config.
        source: u16,
        /// Which simulated device of that source.
        device: u16,
    },
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Ble(a) => write!(
                f,
                "ble:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
                a[0], a[1], a[2], a[3], a[4], a[5]
            ),
            DeviceId::Node(n) => write!(f, "node:{n:016x}"),
            DeviceId::Simulated { source, device } => write!(f, "sim:{source}:{device}"),
        }
    }
}

/// An exact decimal: `mantissa × 10^exponent`, as IEEE 11073 SFLOAT/FLOAT carry it.
///
/// Kept exact (not `f64`) because the exponent is the device's stated precision: `37.60` and `37.6`
/// are different statements about a thermometer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Decimal {
    /// The significand.
    pub mantissa: i32,
    /// The power of ten.
    pub exponent: i8,
}

impl Decimal {
    /// `mantissa × 10^exponent`.
    pub const fn new(mantissa: i32, exponent: i8) -> Self {
        Self { mantissa, exponent }
    }

    /// The nearest `f64` (for comparisons against limits; never for storage or the wire).
    pub fn to_f64(self) -> f64 {
        let mut v = self.mantissa as f64;
        let mut e = self.exponent;
        while e > 0 {
            v *= 10.0;
            e -= 1;
        }
        while e < 0 {
            v /= 10.0;
            e += 1;
        }
        v
    }
}

impl fmt::Display for Decimal {
    /// Exact decimal text with the exponent's precision kept (`3760e-2` → `37.60`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let neg = self.mantissa < 0;
        let digits = self.mantissa.unsigned_abs();
        if neg {
            f.write_str("-")?;
        }
        if self.exponent >= 0 {
            write!(f, "{digits}")?;
            for _ in 0..self.exponent {
                f.write_str("0")?;
            }
            return Ok(());
        }
        let scale = u32::from(self.exponent.unsigned_abs());
        // u32 has at most 10 digits; anything beyond is leading zeros.
        let pow = 10u64.checked_pow(scale);
        match pow {
            Some(p) => {
                let int = u64::from(digits) / p;
                let frac = u64::from(digits) % p;
                write!(f, "{int}.{frac:0width$}", width = scale as usize)
            }
            None => {
                f.write_str("0.")?;
                for _ in 0..(scale - 10) {
                    f.write_str("0")?;
                }
                write!(f, "{digits:010}")
            }
        }
    }
}

/// Why a measurement has no value (FHIR `dataAbsentReason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AbsentReason {
    /// IEEE 11073 NaN.
    NotANumber,
    /// IEEE 11073 NRes: not at this resolution.
    NotAtResolution,
    /// +INF.
    PositiveInfinity,
    /// −INF.
    NegativeInfinity,
    /// A reserved special value.
    Reserved,
    /// The device reported the measurement failed (e.g. weight 0xFFFF "measurement unsuccessful").
    Unsuccessful,
    /// The device flagged the value invalid.
    Error,
}

impl AbsentReason {
    /// The FHIR `data-absent-reason` code, as the PHD IG (`FLOATS.md`) maps IEEE 11073 special
    /// values: NRes and the reserved value are `error`.
    pub const fn fhir_code(self) -> &'static str {
        match self {
            AbsentReason::NotANumber => "not-a-number",
            AbsentReason::NotAtResolution => "error",
            AbsentReason::PositiveInfinity => "positive-infinity",
            AbsentReason::NegativeInfinity => "negative-infinity",
            AbsentReason::Reserved => "error",
            AbsentReason::Unsuccessful => "error",
            AbsentReason::Error => "error",
        }
    }
}

/// A measured value, or the device's reason for not having one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Value {
    /// A number.
    Number(Decimal),
    /// No number, and why.
    Absent(AbsentReason),
}

impl Value {
    /// The number, if there is one.
    pub const fn number(self) -> Option<Decimal> {
        match self {
            Value::Number(d) => Some(d),
            Value::Absent(_) => None,
        }
    }
}

/// Units, each with its UCUM code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unit {
    /// `mm[Hg]`
    MillimetreOfMercury,
    /// `kPa`
    Kilopascal,
    /// `/min`
    PerMinute,
    /// `%`
    Percent,
    /// `kg`
    Kilogram,
    /// `[lb_av]`
    Pound,
    /// `Cel`
    Celsius,
    /// `[degF]`
    Fahrenheit,
    /// `mg/dL`
    MilligramPerDecilitre,
    /// `mmol/L`
    MillimolePerLitre,
    /// `cm`
    Centimetre,
    /// `[in_i]`
    Inch,
    /// `kg/m2`
    KilogramPerSquareMetre,
}

impl Unit {
    /// The UCUM code.
    pub const fn ucum(self) -> &'static str {
        match self {
            Unit::MillimetreOfMercury => "mm[Hg]",
            Unit::Kilopascal => "kPa",
            Unit::PerMinute => "/min",
            Unit::Percent => "%",
            Unit::Kilogram => "kg",
            Unit::Pound => "[lb_av]",
            Unit::Celsius => "Cel",
            Unit::Fahrenheit => "[degF]",
            Unit::MilligramPerDecilitre => "mg/dL",
            Unit::MillimolePerLitre => "mmol/L",
            Unit::Centimetre => "cm",
            Unit::Inch => "[in_i]",
            Unit::KilogramPerSquareMetre => "kg/m2",
        }
    }

    /// A human-readable symbol.
    pub const fn symbol(self) -> &'static str {
        match self {
            Unit::MillimetreOfMercury => "mmHg",
            Unit::Pound => "lb",
            Unit::Celsius => "°C",
            Unit::Fahrenheit => "°F",
            Unit::Inch => "in",
            other => other.ucum(),
        }
    }
}

/// A value with its unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Quantity {
    /// The value.
    pub value: Value,
    /// Its unit.
    pub unit: Unit,
}

impl Quantity {
    /// A number with a unit.
    pub const fn new(mantissa: i32, exponent: i8, unit: Unit) -> Self {
        Self {
            value: Value::Number(Decimal::new(mantissa, exponent)),
            unit,
        }
    }
}

/// Where on the body a temperature was taken (Bluetooth Temperature Type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BodySite {
    /// Armpit.
    Armpit,
    /// Body, general.
    Body,
    /// Ear.
    Ear,
    /// Finger.
    Finger,
    /// Gastro-intestinal tract.
    GastroIntestinalTract,
    /// Mouth.
    Mouth,
    /// Rectum.
    Rectum,
    /// Toe.
    Toe,
    /// Tympanum.
    Tympanum,
}

/// What a blood-glucose value was measured in (Bluetooth Glucose "Type").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GlucoseSample {
    /// Capillary whole blood.
    CapillaryWholeBlood,
    /// Capillary plasma.
    CapillaryPlasma,
    /// Venous whole blood.
    VenousWholeBlood,
    /// Venous plasma.
    VenousPlasma,
    /// Arterial whole blood.
    ArterialWholeBlood,
    /// Arterial plasma.
    ArterialPlasma,
    /// Undetermined whole blood.
    UndeterminedWholeBlood,
    /// Undetermined plasma.
    UndeterminedPlasma,
    /// Interstitial fluid (CGM).
    InterstitialFluid,
    /// Control solution: never a patient value.
    ControlSolution,
}

/// One measurement: what was measured and the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Measurement {
    /// Non-invasive blood pressure: one observation with three components.
    BloodPressure {
        /// Systolic.
        systolic: Quantity,
        /// Diastolic.
        diastolic: Quantity,
        /// Mean arterial pressure.
        mean: Quantity,
    },
    /// Pulse rate (from a cuff or an oximeter), `/min`.
    PulseRate(Quantity),
    /// Oxygen saturation, `%`.
    Spo2(Quantity),
    /// Body weight.
    BodyWeight(Quantity),
    /// Body height.
    BodyHeight(Quantity),
    /// Body-mass index, `kg/m2`.
    Bmi(Quantity),
    /// Body temperature, with the site when the device says.
    BodyTemperature {
        /// The temperature.
        temperature: Quantity,
        /// Where it was taken.
        site: Option<BodySite>,
    },
    /// Blood glucose, with the sample type when the device says.
    BloodGlucose {
        /// The concentration.
        glucose: Quantity,
        /// What was sampled.
        sample: Option<GlucoseSample>,
    },
}

/// The measurement kinds, without values: what a care plan asks for and a device feeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    /// Blood pressure.
    BloodPressure,
    /// Pulse rate.
    PulseRate,
    /// SpO2.
    Spo2,
    /// Body weight.
    BodyWeight,
    /// Body height.
    BodyHeight,
    /// BMI.
    Bmi,
    /// Body temperature.
    BodyTemperature,
    /// Blood glucose.
    BloodGlucose,
}

impl Kind {
    /// Every kind, in a fixed order.
    pub const ALL: [Kind; 8] = [
        Kind::BloodPressure,
        Kind::PulseRate,
        Kind::Spo2,
        Kind::BodyWeight,
        Kind::BodyHeight,
        Kind::Bmi,
        Kind::BodyTemperature,
        Kind::BloodGlucose,
    ];

    /// A stable lower-case name (config files, logs, status).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::BloodPressure => "blood_pressure",
            Kind::PulseRate => "pulse_rate",
            Kind::Spo2 => "spo2",
            Kind::BodyWeight => "body_weight",
            Kind::BodyHeight => "body_height",
            Kind::Bmi => "bmi",
            Kind::BodyTemperature => "body_temperature",
            Kind::BloodGlucose => "blood_glucose",
        }
    }
}

impl Measurement {
    /// What kind of measurement this is.
    pub const fn kind(&self) -> Kind {
        match self {
            Measurement::BloodPressure { .. } => Kind::BloodPressure,
            Measurement::PulseRate(_) => Kind::PulseRate,
            Measurement::Spo2(_) => Kind::Spo2,
            Measurement::BodyWeight(_) => Kind::BodyWeight,
            Measurement::BodyHeight(_) => Kind::BodyHeight,
            Measurement::Bmi(_) => Kind::Bmi,
            Measurement::BodyTemperature { .. } => Kind::BodyTemperature,
            Measurement::BloodGlucose { .. } => Kind::BloodGlucose,
        }
    }
}

/// A calendar date and time as a device's clock shows it, with no time zone (what Bluetooth SIG
/// devices send). Zero in a field means "not known", as in the Bluetooth Date Time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LocalDateTime {
    /// Year, 0 = unknown.
    pub year: u16,
    /// Month 1–12, 0 = unknown.
    pub month: u8,
    /// Day 1–31, 0 = unknown.
    pub day: u8,
    /// Hours 0–23.
    pub hour: u8,
    /// Minutes 0–59.
    pub minute: u8,
    /// Seconds 0–59.
    pub second: u8,
}

/// When the device says the measurement was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeviceTime {
    /// Wall-clock time without an offset (BLE health devices).
    Local(LocalDateTime),
    /// UTC milliseconds since the Unix epoch (our own sensor nodes, whose clock the gateway sets).
    UnixMillis(i64),
}

/// A timestamp from the gateway's own clock, with whether that clock could be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GatewayTime {
    /// UTC milliseconds since the Unix epoch.
    pub unix_millis: i64,
    /// Whether the system clock was synchronised (NTP) when this was read. A Raspberry Pi has no
    /// battery clock: until it syncs, "now" can be 1970 or last shutdown.
    pub synchronized: bool,
}

/// One reading, as the outbox stores it and the uplink sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reading {
    /// Stable identifier (see [`ReadingId`]).
    pub id: ReadingId,
    /// The equipment that measured.
    pub device: DeviceId,
    /// The device's own timestamp, when it gave one.
    pub device_time: Option<DeviceTime>,
    /// Whether `device_time` can be trusted (the device's clock was set, not flagged faulty).
    pub device_time_trusted: bool,
    /// When the gateway received it.
    pub received: GatewayTime,
    /// What was measured.
    pub measurement: Measurement,
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn reading_id_prints_as_a_hyphenated_uuid() {
        let id = ReadingId([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ]);
        assert_eq!(id.to_string(), "00112233-4455-6677-8899-aabbccddeeff");
    }

    #[test]
    fn decimal_keeps_precision() {
        assert_eq!(Decimal::new(3760, -2).to_string(), "37.60");
        assert_eq!(Decimal::new(189, -1).to_string(), "18.9");
        assert_eq!(Decimal::new(-5, -3).to_string(), "-0.005");
        assert_eq!(Decimal::new(7, 2).to_string(), "700");
        assert_eq!(Decimal::new(70000, -3).to_string(), "70.000");
        assert_eq!(Decimal::new(1, -12).to_string(), "0.000000000001");
        assert_eq!(Decimal::new(i32::MIN, 0).to_string(), "-2147483648");
    }

    #[test]
    fn special_values_map_as_the_phd_ig_says() {
        assert_eq!(AbsentReason::NotANumber.fhir_code(), "not-a-number");
        assert_eq!(AbsentReason::NotAtResolution.fhir_code(), "error");
        assert_eq!(AbsentReason::Reserved.fhir_code(), "error");
        assert_eq!(
            AbsentReason::PositiveInfinity.fhir_code(),
            "positive-infinity"
        );
        assert_eq!(
            AbsentReason::NegativeInfinity.fhir_code(),
            "negative-infinity"
        );
    }

    #[test]
    fn reading_id_displays_as_uuid() {
        let id = ReadingId([0xab; 16]);
        assert_eq!(id.to_string(), "abababab-abab-abab-abab-abababababab");
    }

    #[test]
    fn device_id_display() {
        assert_eq!(
            DeviceId::Ble([0xA0, 1, 2, 3, 4, 0xFF]).to_string(),
            "ble:A0:01:02:03:04:FF"
        );
        assert_eq!(
            DeviceId::Simulated {
                source: 0,
                device: 3
            }
            .to_string(),
            "sim:0:3"
        );
    }

    #[test]
    fn reading_postcard_round_trip_is_compact() {
        let r = Reading {
            id: ReadingId([7; 16]),
            device: DeviceId::Node(42),
            device_time: Some(DeviceTime::UnixMillis(1_700_000_000_000)),
            device_time_trusted: true,
            received: GatewayTime {
                unix_millis: 1_700_000_000_123,
                synchronized: true,
            },
            measurement: Measurement::BloodPressure {
                systolic: Quantity::new(138, 0, Unit::MillimetreOfMercury),
                diastolic: Quantity::new(88, 0, Unit::MillimetreOfMercury),
                mean: Quantity {
                    value: Value::Absent(AbsentReason::NotANumber),
                    unit: Unit::MillimetreOfMercury,
                },
            },
        };
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert!(bytes.len() < 64, "{} bytes", bytes.len());
        let back: Reading = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
    }
}
