//! Every public GATT test vector (`tests/fixtures/public-gatt-vectors.json`, copied from the
//! project's shared vectors) through the library decoders, the `heim decode` binary, and the
//! conversion into readings.
//!
//! Numbers are compared with a relative tolerance of 1e-9 and `expect_decimal` exactly (the
//! decimal text keeps the device's precision). The printed object must have exactly the `expect`
//! object's field names.

use std::path::PathBuf;
use std::process::Command;

use heim::sources::ble::decode_report;
use heim::sources::ble::profiles::{self, Characteristic, Direction, ToMeasurements};
use heim_shared_types::{Measurement, Value};
use serde_json::Value as Json;

struct Vector {
    characteristic: String,
    name: String,
    hex: String,
    direction: Option<Direction>,
    expect: Json,
    expect_decimal: serde_json::Map<String, Json>,
    error: Option<String>,
}

fn vectors() -> Vec<Vector> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/public-gatt-vectors.json");
    let text = std::fs::read_to_string(&path).expect("read the vectors fixture");
    let all: Vec<Json> = serde_json::from_str(&text).expect("vectors are JSON");
    all.into_iter()
        .map(|v| Vector {
            characteristic: v["characteristic"].as_str().unwrap().to_owned(),
            name: v["name"].as_str().unwrap().to_owned(),
            hex: v["hex"].as_str().unwrap().to_owned(),
            // `write` (a Current Time the gateway writes) decodes like any other value.
            direction: v["direction"].as_str().and_then(Direction::parse),
            expect: v["expect"].clone(),
            expect_decimal: v["expect_decimal"].as_object().cloned().unwrap_or_default(),
            error: v["error"].as_str().map(str::to_owned),
        })
        .collect()
}

/// Compares `got` with `want`: numbers with relative tolerance 1e-9, everything else exactly,
/// objects key by key with the same key set. Returns a description of the first difference.
fn same(got: &Json, want: &Json, path: &str) -> Result<(), String> {
    match (got, want) {
        (Json::Number(g), Json::Number(w)) => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            let tol = 1e-9 * w.abs().max(g.abs());
            if (g - w).abs() <= tol {
                Ok(())
            } else {
                Err(format!("{path}: got {g}, want {w}"))
            }
        }
        (Json::Object(g), Json::Object(w)) => {
            let gk: Vec<_> = g.keys().collect();
            let wk: Vec<_> = w.keys().collect();
            if gk != wk {
                return Err(format!("{path}: keys {gk:?}, want {wk:?}"));
            }
            for (k, wv) in w {
                same(&g[k], wv, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        (Json::Array(g), Json::Array(w)) => {
            if g.len() != w.len() {
                return Err(format!("{path}: {} elements, want {}", g.len(), w.len()));
            }
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                same(gv, wv, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (g, w) if g == w => Ok(()),
        (g, w) => Err(format!("{path}: got {g}, want {w}")),
    }
}

/// Checks one `heim decode` result (object and exit code) against a vector.
fn check(v: &Vector, mut got: Json, code: i32) -> Result<(), String> {
    if let Some(err) = &v.error {
        if code != 1 || got != serde_json::json!({ "error": err }) {
            return Err(format!("want error {err:?} exit 1, got {got} exit {code}"));
        }
        return Ok(());
    }
    if code != 0 {
        return Err(format!("exit {code}: {got}"));
    }
    let decimals = got
        .as_object_mut()
        .and_then(|o| o.remove("decimal"))
        .ok_or("no decimal object")?;
    same(&got, &v.expect, "")?;
    for (k, want) in &v.expect_decimal {
        if decimals.get(k) != Some(want) {
            return Err(format!(
                "decimal {k}: got {:?}, want {want}",
                decimals.get(k)
            ));
        }
    }
    Ok(())
}

#[test]
fn every_vector_through_the_library() {
    let vs = vectors();
    assert_eq!(vs.len(), 50, "the fixture has 50 vectors");
    let mut failures = Vec::new();
    for v in &vs {
        let (got, code) = decode_report(&v.characteristic, &v.hex, v.direction, true);
        if let Err(e) = check(v, got, code) {
            failures.push(format!("{} ({}): {e}", v.name, v.characteristic));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every vector's characteristic is one the decoder knows by its written form.
    for v in &vs {
        assert!(
            Characteristic::parse(&v.characteristic).is_some(),
            "{}",
            v.characteristic
        );
    }
}

#[test]
fn every_vector_through_the_binary() {
    let bin = env!("CARGO_BIN_EXE_heim");
    let mut failures = Vec::new();
    for (i, v) in vectors().iter().enumerate() {
        // Rotate through the three accepted spellings of the characteristic.
        let short = Characteristic::parse(&v.characteristic).unwrap();
        let spelled = match i % 3 {
            0 => v.characteristic.clone(),
            1 => format!("{:04x}", short.uuid16()),
            _ => short.uuid().to_string(),
        };
        let mut cmd = Command::new(bin);
        cmd.args(["decode", &spelled, &v.hex, "--decimal"]);
        if let Some(d) = v.direction {
            cmd.args([
                "--direction",
                match d {
                    Direction::Request => "request",
                    Direction::Response => "response",
                },
            ]);
        }
        let out = cmd.output().expect("run heim");
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<_> = stdout.lines().collect();
        if lines.len() != 1 {
            failures.push(format!("{}: expected one line, got {stdout:?}", v.name));
            continue;
        }
        let got: Json = serde_json::from_str(lines[0]).unwrap();
        let code = out.status.code().unwrap();
        if let Err(e) = check(v, got, code) {
            failures.push(format!("{} ({spelled}): {e}", v.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn binary_without_decimal_prints_exactly_the_expect_object() {
    let out = Command::new(env!("CARGO_BIN_EXE_heim"))
        .args([
            "decode",
            "00002a35-0000-1000-8000-00805f9b34fb",
            "15bdf00b009ff03c001200",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let got: Json = serde_json::from_slice(&out.stdout).unwrap();
    let v = vectors()
        .into_iter()
        .find(|v| v.hex == "15bdf00b009ff03c001200")
        .unwrap();
    same(&got, &v.expect, "").unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_heim"))
        .args(["decode", "0x2A99", "00"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "unknown characteristic is a usage error"
    );
}

/// The value a vector expects for `key` as exact decimal text, if it lists one.
fn decimal<'a>(v: &'a Vector, key: &str) -> Option<&'a str> {
    v.expect_decimal.get(key).and_then(Json::as_str)
}

fn text(value: Value) -> String {
    match value {
        Value::Number(d) => d.to_string(),
        Value::Absent(r) => format!("{r:?}"),
    }
}

/// Every decodable vector converts into readings whose values agree with the vector, precision
/// kept; special values stay absent.
#[test]
fn every_vector_converts_into_readings() {
    let mut checked = 0;
    for v in vectors().iter().filter(|v| v.error.is_none()) {
        let ch = Characteristic::parse(&v.characteristic).unwrap();
        let bytes = heim::sources::ble::cli::parse_hex(&v.hex).unwrap();
        let decoded = profiles::decode(ch, &bytes, v.direction).unwrap();
        for m in decoded.measurements() {
            checked += 1;
            match m {
                Measurement::BloodPressure {
                    systolic,
                    diastolic,
                    mean,
                } => {
                    assert_eq!(Some(text(systolic.value).as_str()), decimal(v, "systolic"));
                    assert_eq!(
                        Some(text(diastolic.value).as_str()),
                        decimal(v, "diastolic")
                    );
                    assert_eq!(Some(text(mean.value).as_str()), decimal(v, "mean_arterial"));
                    let unit = if v.expect["unit"] == "kPa" {
                        "kPa"
                    } else {
                        "mm[Hg]"
                    };
                    assert_eq!(systolic.unit.ucum(), unit);
                }
                Measurement::PulseRate(q) => {
                    assert_eq!(
                        Some(text(q.value).as_str()),
                        decimal(v, "pulse_rate"),
                        "{}",
                        v.name
                    );
                    assert_eq!(q.unit.ucum(), "/min");
                }
                Measurement::Spo2(q) => {
                    assert_eq!(Some(text(q.value).as_str()), decimal(v, "spo2"));
                    assert_eq!(q.unit.ucum(), "%");
                }
                Measurement::BodyTemperature { temperature, .. } => {
                    assert_eq!(
                        Some(text(temperature.value).as_str()),
                        decimal(v, "temperature")
                    );
                    assert_eq!(temperature.unit.ucum(), v.expect["unit"].as_str().unwrap());
                }
                Measurement::BodyWeight(q) => {
                    match q.value {
                        Value::Number(d) => {
                            assert_eq!(Some(d.to_string().as_str()), decimal(v, "weight"));
                        }
                        Value::Absent(_) => assert_eq!(v.expect["weight"], "Unsuccessful"),
                    }
                    assert_eq!(q.unit.ucum(), v.expect["unit"].as_str().unwrap());
                }
                Measurement::Bmi(q) => {
                    assert_eq!(Some(text(q.value).as_str()), decimal(v, "bmi"));
                }
                Measurement::BodyHeight(q) => {
                    // Metres go out as centimetres: same digits, point moved.
                    let cm = q.value.number().unwrap().to_f64();
                    let m = v.expect["height"].as_f64().unwrap();
                    assert!((cm - m * 100.0).abs() < 1e-9 * cm, "{cm} cm vs {m} m");
                    assert_eq!(q.unit.ucum(), "cm");
                }
                Measurement::BloodGlucose { glucose, .. } => {
                    let got = glucose.value.number().unwrap().to_f64();
                    let want = if v.characteristic == "0x2AA7" {
                        v.expect["records"][0]["glucose"].as_f64().unwrap()
                    } else {
                        assert_eq!(
                            glucose.unit.ucum(),
                            v.expect["glucose_fhir_unit"].as_str().unwrap()
                        );
                        v.expect["glucose_fhir_value"].as_f64().unwrap()
                    };
                    assert!((got - want).abs() <= 1e-9 * want.abs(), "{got} vs {want}");
                }
            }
        }
    }
    assert!(checked >= 30, "only {checked} readings checked");
}
