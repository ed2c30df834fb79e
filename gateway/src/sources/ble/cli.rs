//! `heim decode <characteristic> <hex>`: one characteristic value in, one JSON object out.
//!
//! The field names and units are those of the public test vectors' `expect` objects
//! (`tests/fixtures/public-gatt-vectors.json`): absent fields are `null`, IEEE 11073 special values
//! are the strings `"NaN"`, `"NRes"`, `"+INF"`, `"-INF"`, `"RFU"`, weight 0xFFFF is
//! `"Unsuccessful"`, and a payload that cannot be decoded gives `{"error": "truncated"}` or
//! `{"error": "invalid"}` with exit code 1. Numbers are JSON numbers; because a JSON number cannot
//! say `37.60`, [`decode_report`] can add a `decimal` object with the exact decimal text of each
//! value (the vectors' `expect_decimal`, same keys), which keeps the device's precision.

use heim_shared_types::{AbsentReason, Decimal, LocalDateTime, Value};
use serde_json::{Map, Value as Json, json};

use super::profiles::{
    self, Characteristic, Decoded, Direction,
    blood_pressure::{BloodPressureMeasurement, PressureUnit},
    cgm::CgmRecord,
    datetime,
    glucose::{GlucoseContext, GlucoseMeasurement, GlucoseUnit, MedicationUnit},
    racp::{FilterValue, Request, Response},
    thermometer::{TemperatureMeasurement, TemperatureUnit},
    weight_scale::{UnitSystem, WeightMeasurement},
};

/// Exit code for a payload that cannot be decoded.
pub const EXIT_UNDECODABLE: i32 = 1;
/// Exit code for a command-line mistake (unknown characteristic, bad hex).
pub const EXIT_USAGE: i32 = 2;

/// Decodes `hex` as `characteristic` (`0x2A35`, `2a35` or the 128-bit UUID) and returns the JSON
/// object to print and the exit code. RACP direction is inferred from the op code.
pub fn decode_cli(characteristic: &str, hex: &str) -> (Json, i32) {
    decode_report(characteristic, hex, None, false)
}

/// [`decode_cli`] with an explicit RACP `direction` and, with `decimals`, a `decimal` object
/// holding the exact decimal text of every number that came from an SFLOAT/FLOAT or a scaled
/// integer.
pub fn decode_report(
    characteristic: &str,
    hex: &str,
    direction: Option<Direction>,
    decimals: bool,
) -> (Json, i32) {
    let Some(ch) = Characteristic::parse(characteristic) else {
        return (
            json!({"error": "usage", "reason": format!("unknown characteristic {characteristic:?}; known: {}", known())}),
            EXIT_USAGE,
        );
    };
    let Some(bytes) = parse_hex(hex) else {
        return (
            json!({"error": "usage", "reason": "the value must be hex digits, two per octet (spaces and ':' allowed)"}),
            EXIT_USAGE,
        );
    };
    match profiles::decode(ch, &bytes, direction) {
        Ok(decoded) => {
            let mut fields = Fields::default();
            render(&decoded, &mut fields);
            let mut obj = fields.map;
            if decimals {
                obj.insert("decimal".into(), Json::Object(fields.decimals));
            }
            (Json::Object(obj), 0)
        }
        Err(e) => (json!({"error": e.kind()}), EXIT_UNDECODABLE),
    }
}

fn known() -> String {
    Characteristic::ALL
        .iter()
        .map(|c| format!("0x{:04X}", c.uuid16()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hex digits, two per octet; whitespace, `:` and `-` between octets are skipped.
pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':' && *b != b'-')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(s, 16).ok()
        })
        .collect()
}

/// The JSON number for a decimal, parsed from its exact text so `18.9` prints as `18.9`.
fn number(d: Decimal) -> Json {
    if d.exponent >= 0 {
        // Exact integers stay integers while they fit.
        let mut v = i64::from(d.mantissa);
        let mut ok = true;
        for _ in 0..d.exponent {
            match v.checked_mul(10) {
                Some(n) => v = n,
                None => ok = false,
            }
        }
        if ok {
            return Json::from(v);
        }
    }
    d.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

/// The vectors' spelling of a reason a value is absent.
pub const fn absent_text(r: AbsentReason) -> &'static str {
    match r {
        AbsentReason::NotANumber => "NaN",
        AbsentReason::NotAtResolution => "NRes",
        AbsentReason::PositiveInfinity => "+INF",
        AbsentReason::NegativeInfinity => "-INF",
        AbsentReason::Reserved => "RFU",
        AbsentReason::Unsuccessful => "Unsuccessful",
        AbsentReason::Error => "error",
    }
}

/// Accumulates the printed object and its exact decimals.
#[derive(Default)]
struct Fields {
    map: Map<String, Json>,
    decimals: Map<String, Json>,
}

impl Fields {
    fn set(&mut self, key: &str, v: impl Into<Json>) {
        self.map.insert(key.into(), v.into());
    }

    fn opt<T: Into<Json>>(&mut self, key: &str, v: Option<T>) {
        self.map
            .insert(key.into(), v.map_or(Json::Null, Into::into));
    }

    fn value(&mut self, key: &str, v: Option<Value>) {
        let j = match v {
            None => Json::Null,
            Some(Value::Number(d)) => {
                self.decimals
                    .insert(key.into(), Json::String(d.to_string()));
                number(d)
            }
            Some(Value::Absent(r)) => Json::String(absent_text(r).into()),
        };
        self.map.insert(key.into(), j);
    }

    fn time(&mut self, key: &str, t: Option<LocalDateTime>) {
        self.opt(key, t.map(|t| datetime::format(&t)));
    }
}

fn render(d: &Decoded, f: &mut Fields) {
    match d {
        Decoded::BloodPressure(m) | Decoded::IntermediateCuffPressure(m) => blood_pressure(m, f),
        Decoded::Temperature(m) | Decoded::IntermediateTemperature(m) => temperature(m, f),
        Decoded::Weight(m) => weight(m, f),
        Decoded::PlxSpotCheck(m) => {
            f.set("flags", m.flags);
            f.set("unit", "%");
            f.value("spo2", Some(m.spo2));
            f.value("pulse_rate", Some(m.pulse_rate));
            f.time("timestamp", m.timestamp);
            f.opt("status_bits", m.status.map(|s| s.0));
            f.opt("device_sensor_status", m.device_status.map(|s| s.0));
            f.value("pulse_amplitude_index", m.pulse_amplitude_index);
            f.set("device_clock_not_set", m.device_clock_not_set);
        }
        Decoded::PlxContinuous(m) => {
            f.set("flags", m.flags);
            f.set("unit", "%");
            f.value("spo2", Some(m.spo2));
            f.value("pulse_rate", Some(m.pulse_rate));
            f.value("spo2_fast", m.fast.map(|p| p.0));
            f.value("pulse_rate_fast", m.fast.map(|p| p.1));
            f.value("spo2_slow", m.slow.map(|p| p.0));
            f.value("pulse_rate_slow", m.slow.map(|p| p.1));
            f.opt("status_bits", m.status.map(|s| s.0));
            f.opt("device_sensor_status", m.device_status.map(|s| s.0));
            f.value("pulse_amplitude_index", m.pulse_amplitude_index);
        }
        Decoded::Glucose(m) => glucose(m, f),
        Decoded::GlucoseContext(m) => glucose_context(m, f),
        Decoded::Cgm(records) => {
            let mut list = Vec::new();
            for (i, r) in records.iter().enumerate() {
                let mut rf = Fields::default();
                cgm(r, &mut rf);
                for (k, v) in rf.decimals {
                    f.decimals.insert(format!("records[{i}].{k}"), v);
                }
                list.push(Json::Object(rf.map));
            }
            f.set("records", Json::Array(list));
        }
        Decoded::RacpRequest(r) => racp_request(r, f),
        Decoded::RacpResponse(r) => racp_response(r, f),
        Decoded::CurrentTime(c) => {
            f.time("timestamp", Some(c.date_time));
            f.set("day_of_week", c.day_of_week);
            f.set("fractions256", c.fractions256);
            f.set("adjust_reason", c.adjust_reason);
        }
        Decoded::DateTime(t) => f.time("timestamp", Some(*t)),
        Decoded::BatteryLevel(level) => {
            f.set("battery_level", *level);
            f.set("unit", "%");
        }
    }
}

fn blood_pressure(m: &BloodPressureMeasurement, f: &mut Fields) {
    f.set("flags", m.flags);
    f.set(
        "unit",
        match m.unit {
            PressureUnit::MmHg => "mmHg",
            PressureUnit::KPa => "kPa",
        },
    );
    f.value("systolic", Some(m.systolic));
    f.value("diastolic", Some(m.diastolic));
    f.value("mean_arterial", Some(m.mean_arterial));
    f.time("timestamp", m.timestamp);
    f.value("pulse_rate", m.pulse_rate);
    f.opt("user_id", m.user_id);
    f.opt("status_bits", m.status.map(|s| s.0));
}

fn temperature(m: &TemperatureMeasurement, f: &mut Fields) {
    f.set("flags", m.flags);
    f.set(
        "unit",
        match m.unit {
            TemperatureUnit::Celsius => "Cel",
            TemperatureUnit::Fahrenheit => "[degF]",
        },
    );
    f.value("temperature", Some(m.temperature));
    f.time("timestamp", m.timestamp);
    f.opt("temperature_type", m.temperature_type);
}

fn weight(m: &WeightMeasurement, f: &mut Fields) {
    let (unit, height_unit) = match m.system {
        UnitSystem::Si => ("kg", "m"),
        UnitSystem::Imperial => ("[lb_av]", "[in_i]"),
    };
    f.set("flags", m.flags);
    f.set("unit", unit);
    f.value("weight", Some(m.weight));
    f.time("timestamp", m.timestamp);
    f.opt("user_id", m.user_id);
    f.value("bmi", m.bmi);
    f.value("height", m.height);
    f.opt("height_unit", m.height.map(|_| height_unit));
}

fn glucose(m: &GlucoseMeasurement, f: &mut Fields) {
    f.set("flags", m.flags);
    f.set("sequence_number", m.sequence_number);
    f.time("timestamp", Some(m.base_time));
    f.opt("time_offset", m.time_offset);
    let c = m.concentration;
    f.value("glucose", c.map(|c| c.value));
    f.opt(
        "unit",
        c.map(|c| match c.unit {
            GlucoseUnit::KgPerL => "kg/L",
            GlucoseUnit::MolPerL => "mol/L",
        }),
    );
    f.opt("sample_type", c.map(|c| c.sample_type));
    f.opt("sample_location", c.map(|c| c.sample_location));
    let q = c.and_then(|c| c.fhir_quantity());
    f.value("glucose_fhir_value", q.map(|q| q.value));
    f.opt("glucose_fhir_unit", q.map(|q| q.unit.ucum()));
    f.opt("status_bits", m.status.map(|s| s.0));
    f.set("context_follows", m.context_follows);
}

fn glucose_context(m: &GlucoseContext, f: &mut Fields) {
    f.set("flags", m.flags);
    f.set("sequence_number", m.sequence_number);
    f.opt("extended_flags", m.extended_flags);
    f.opt("carbohydrate_id", m.carbohydrate.map(|c| c.0));
    f.value("carbohydrate_g", m.carbohydrate.map(|c| c.1));
    f.opt("meal", m.meal);
    f.opt("tester", m.tester_health.map(|t| t.0));
    f.opt("health", m.tester_health.map(|t| t.1));
    f.opt("exercise_duration_s", m.exercise.map(|e| e.0));
    f.opt("exercise_intensity_pct", m.exercise.map(|e| e.1));
    f.opt("medication_id", m.medication.map(|x| x.0));
    f.value("medication", m.medication.map(|x| x.1));
    f.opt(
        "medication_unit",
        m.medication.map(|x| match x.2 {
            MedicationUnit::Milligram => "mg",
            MedicationUnit::Millilitre => "mL",
        }),
    );
    f.value("hba1c_pct", m.hba1c);
}

fn cgm(r: &CgmRecord, f: &mut Fields) {
    f.set("size", r.size);
    f.set("flags", r.flags);
    f.value("glucose", Some(r.glucose));
    f.set("unit", "mg/dL");
    f.set("time_offset", r.time_offset);
    f.opt("octet_flag5", r.octet_flag5);
    f.opt("octet_flag6", r.octet_flag6);
    f.opt("octet_flag7", r.octet_flag7);
    f.value("trend", r.trend);
    f.value("quality", r.quality);
    f.opt("e2e_crc", r.e2e_crc);
}

fn racp_request(r: &Request, f: &mut Fields) {
    f.set("opcode", r.opcode as u8);
    f.set("operator", r.operator as u8);
    f.opt("filter_type", r.operand.map(|(v, _)| v.filter_type()));
    let operand = r.operand.map(|(first, second)| {
        std::iter::once(first)
            .chain(second)
            .map(|v| match v {
                FilterValue::SequenceNumber(n) => Json::from(n),
                FilterValue::UserFacingTime(t) => Json::from(datetime::format(&t)),
            })
            .collect::<Vec<_>>()
    });
    f.opt("operand", operand);
}

fn racp_response(r: &Response, f: &mut Fields) {
    match *r {
        Response::NumberOfRecords(n) => {
            f.set("opcode", 5);
            f.set("operator", 0);
            f.set("number_of_records", n);
            f.set("request_opcode", Json::Null);
            f.set("response_code", Json::Null);
        }
        Response::ResponseCode {
            request_opcode,
            code,
        } => {
            f.set("opcode", 6);
            f.set("operator", 0);
            f.set("number_of_records", Json::Null);
            f.set("request_opcode", request_opcode);
            f.set("response_code", code.to_u8());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2() {
        assert_eq!(decode_cli("0x2A00", "00").1, EXIT_USAGE);
        assert_eq!(decode_cli("0x2A35", "0g").1, EXIT_USAGE);
        assert_eq!(decode_cli("0x2A35", "001").1, EXIT_USAGE);
    }

    #[test]
    fn special_values_print_as_strings() {
        let (j, code) = decode_cli("2a35", "00 ff 07 00 08 02 08");
        assert_eq!(code, 0);
        assert_eq!(j["systolic"], "NaN");
        assert_eq!(j["diastolic"], "NRes");
        assert_eq!(j["mean_arterial"], "-INF");
        let (j, _) = decode_report("2a1c", "00 fe ff 7f 00", None, true);
        assert_eq!(j["temperature"], "+INF");
        assert_eq!(j["decimal"], json!({}));
    }

    #[test]
    fn decimals_keep_precision() {
        let (j, code) = decode_report("0x2A1C", "06b00e00fedc070c050b321b04", None, true);
        assert_eq!(code, 0);
        assert_eq!(j["temperature"], 37.6);
        assert_eq!(j["decimal"]["temperature"], "37.60");
    }

    #[test]
    fn battery_and_undecodable() {
        assert_eq!(
            decode_cli("0x2A19", "5a"),
            (json!({"battery_level": 90, "unit": "%"}), 0)
        );
        assert_eq!(decode_cli("0x2A19", ""), (json!({"error": "truncated"}), 1));
        assert_eq!(decode_cli("0x2A19", "ff"), (json!({"error": "invalid"}), 1));
    }
}
