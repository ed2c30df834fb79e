//! FHIR R4 rendering: readings → one `transaction` Bundle per MQTT message, in the style of the HL7
//! Personal Health Device implementation guide (PHD IG).
//!
//! * every Observation carries MDC (IEEE 11073-10101) and, for vital signs, LOINC codes, UCUM units,
//!   `subject` = the configured patient, `device` → the sensor's Device, and the
//!   `observation-gatewayDevice` extension → this gateway's Device;
//! * `identifier` is the stable reading id (`urn:uuid:…`) and `request.ifNoneExist` searches on it,
//!   so a FHIR server turns a redelivered reading into a no-op;
//! * values keep the device's precision (`37.60`), and a special value becomes
//!   `dataAbsentReason`, never a number.
//!
//! JSON is written directly rather than through `serde_json::Value`: every string written here is
//! either a constant or validated at config time (ids are `[A-Za-z0-9._-]`), and at 50 k readings/s
//! the per-field allocations of a `Value` tree would dominate the gateway's CPU time.

use std::fmt::Write as _;

use chrono::{DateTime, Local, NaiveDate, TimeZone, Utc};
use heim_shared_types::{
    BodySite, DeviceId, DeviceTime, GlucoseSample, Measurement, Quantity, Reading, Unit, Value,
};

const MDC: &str = "urn:iso:std:iso:11073:10101";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const PHD: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition/";
const GATEWAY_EXT: &str = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice";
/// Marks an `effectiveDateTime` taken from a clock that was not known to be right (a Pi before NTP
/// sync, a device whose clock was never set).
pub const TIME_UNCERTAIN_EXT: &str = "https://heim.example/fhir/StructureDefinition/time-uncertain";

/// More Observation content from another component (the care plan's links), written into the
/// right places of the Observation: each method writes a leading `,`.
pub trait Extras {
    /// Entries of the Observation's `extension` array, after the gateway-device extension.
    fn extension(&self, out: &mut String);
    /// Members of the Observation object (`basedOn`, `referenceRange`, `interpretation`).
    fn members(&self, out: &mut String);
    /// Members of the component with this LOINC code (blood-pressure ranges).
    fn component_members(&self, loinc: &str, out: &mut String);
}

impl Extras for crate::careplan::link::Linked {
    fn extension(&self, out: &mut String) {
        self.write_extension(out);
    }
    fn members(&self, out: &mut String) {
        self.write_members(out);
    }
    fn component_members(&self, loinc: &str, out: &mut String) {
        self.write_component_members(loinc, out);
    }
}

/// Renders Bundles for one gateway and patient.
#[derive(Debug, Clone)]
pub struct Renderer {
    patient: String,
    gateway_id: String,
    gateway_urn: String,
}

/// Codes of one observed quantity.
struct Code {
    mdc: u32,
    mdc_ref: &'static str,
    loinc: Option<&'static str>,
}

impl Renderer {
    /// A renderer for `Patient/{patient}` and this gateway.
    pub fn new(gateway_id: &str, patient: &str) -> Self {
        Self {
            patient: patient.to_owned(),
            gateway_id: gateway_id.to_owned(),
            gateway_urn: format!(
                "urn:uuid:{}",
                crate::reading_id::derive("device", &[b"gateway", gateway_id.as_bytes()])
            ),
        }
    }

    /// Appends one transaction Bundle with these readings to `out`. `extra(i)` may give more
    /// Observation content for reading `i` (care-plan links).
    pub fn bundle<'a>(
        &self,
        readings: &[&Reading],
        extra: &dyn Fn(usize) -> Option<&'a dyn Extras>,
        out: &mut String,
    ) {
        out.push_str(r#"{"resourceType":"Bundle","type":"transaction","entry":["#);
        self.gateway_entry(out);
        let mut seen: Vec<DeviceId> = Vec::new();
        for r in readings {
            if !seen.contains(&r.device) {
                seen.push(r.device);
                out.push(',');
                self.device_entry(r.device, out);
            }
        }
        for (i, r) in readings.iter().enumerate() {
            out.push(',');
            self.observation_entry(r, extra(i), out);
        }
        out.push_str("]}");
    }

    fn gateway_entry(&self, out: &mut String) {
        let _ = write!(
            out,
            r#"{{"fullUrl":"{urn}","resource":{{"resourceType":"Device","meta":{{"profile":["{PHD}PhgDevice"]}},"identifier":[{{"system":"urn:heim:gateway","value":"{id}"}}],"type":{{"coding":[{{"system":"{MDC}","code":"531981","display":"MDC_MOC_VMS_MDS_AHD"}}]}},"specialization":[{{"systemType":{{"coding":[{{"system":"{MDC}","code":"528457","display":"MDC_DEV_SPEC_PROFILE_GENERIC"}}]}}}}]}},"request":{{"method":"POST","url":"Device","ifNoneExist":"identifier=urn:heim:gateway|{id}"}}}}"#,
            urn = self.gateway_urn,
            id = self.gateway_id,
        );
    }

    fn device_entry(&self, device: DeviceId, out: &mut String) {
        let (system, value, typ) = device_identifier(device);
        let _ = write!(
            out,
            r#"{{"fullUrl":"{urn}","resource":{{"resourceType":"Device","meta":{{"profile":["{PHD}PhdDevice"]}},"identifier":[{{{typ}"system":"{system}","value":"{value}"}}],"type":{{"coding":[{{"system":"{MDC}","code":"65573","display":"MDC_MOC_VMS_MDS_SIMP"}}]}}}},"request":{{"method":"POST","url":"Device","ifNoneExist":"identifier={system}|{value}"}}}}"#,
            urn = device_urn(device),
        );
    }

    fn observation_entry(&self, r: &Reading, extra: Option<&dyn Extras>, out: &mut String) {
        let id = r.id;
        let compound = matches!(r.measurement, Measurement::BloodPressure { .. });
        let profile = if compound {
            "PhdCompoundNumericObservation"
        } else {
            "PhdNumericObservation"
        };
        let _ = write!(
            out,
            r#"{{"fullUrl":"urn:uuid:{id}","resource":{{"resourceType":"Observation","meta":{{"profile":["{PHD}{profile}"]}},"identifier":[{{"system":"urn:ietf:rfc:3986","value":"urn:uuid:{id}"}}],"status":"final","#
        );
        let vital = !matches!(r.measurement, Measurement::BloodGlucose { .. });
        if vital {
            out.push_str(r#""category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],"#);
        }
        let (code, value): (Code, Option<Quantity>) = match r.measurement {
            Measurement::BloodPressure { .. } => (
                Code {
                    mdc: 150020,
                    mdc_ref: "MDC_PRESS_BLD_NONINV",
                    loinc: Some("85354-9"),
                },
                None,
            ),
            Measurement::PulseRate(q) => (
                Code {
                    mdc: 149546,
                    mdc_ref: "MDC_PULS_RATE_NON_INV",
                    loinc: Some("8867-4"),
                },
                Some(q),
            ),
            Measurement::Spo2(q) => (
                Code {
                    mdc: 150456,
                    mdc_ref: "MDC_PULS_OXIM_SAT_O2",
                    loinc: Some("2708-6"),
                },
                Some(q),
            ),
            Measurement::BodyWeight(q) => (
                Code {
                    mdc: 188736,
                    mdc_ref: "MDC_MASS_BODY_ACTUAL",
                    loinc: Some("29463-7"),
                },
                Some(q),
            ),
            Measurement::BodyHeight(q) => (
                Code {
                    mdc: 188740,
                    mdc_ref: "MDC_LEN_BODY_ACTUAL",
                    loinc: Some("8302-2"),
                },
                Some(q),
            ),
            Measurement::Bmi(q) => (
                Code {
                    mdc: 188752,
                    mdc_ref: "MDC_RATIO_MASS_BODY_LEN_SQ",
                    loinc: Some("39156-5"),
                },
                Some(q),
            ),
            Measurement::BodyTemperature { temperature, site } => {
                (temperature_code(site), Some(temperature))
            }
            Measurement::BloodGlucose { glucose, sample } => {
                (glucose_code(sample, glucose.unit), Some(glucose))
            }
        };
        out.push_str(r#""code":"#);
        write_code(&code, out);
        let _ = write!(
            out,
            r#","subject":{{"reference":"Patient/{}"}},"#,
            self.patient
        );
        let (when, certain) = effective_time(r);
        let _ = write!(out, r#""effectiveDateTime":"{when}","#);
        if let Some(q) = value {
            write_value(&q, out);
            out.push(',');
        }
        if let Measurement::BloodPressure {
            systolic,
            diastolic,
            mean,
        } = r.measurement
        {
            out.push_str(r#""component":["#);
            for (i, (q, mdc, mdc_ref, loinc)) in [
                (systolic, 150021, "MDC_PRESS_BLD_NONINV_SYS", Some("8480-6")),
                (
                    diastolic,
                    150022,
                    "MDC_PRESS_BLD_NONINV_DIA",
                    Some("8462-4"),
                ),
                (mean, 150023, "MDC_PRESS_BLD_NONINV_MEAN", None),
            ]
            .into_iter()
            .enumerate()
            {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(r#"{"code":"#);
                write_code(
                    &Code {
                        mdc,
                        mdc_ref,
                        loinc,
                    },
                    out,
                );
                out.push(',');
                write_value(&q, out);
                if let (Some(x), Some(l)) = (extra, loinc) {
                    x.component_members(l, out);
                }
                out.push('}');
            }
            out.push_str("],");
        }
        let _ = write!(
            out,
            r#""device":{{"reference":"{}"}},"extension":[{{"url":"{GATEWAY_EXT}","valueReference":{{"reference":"{}"}}}}"#,
            device_urn(r.device),
            self.gateway_urn
        );
        if !certain {
            let _ = write!(
                out,
                r#",{{"url":"{TIME_UNCERTAIN_EXT}","valueBoolean":true}}"#
            );
        }
        if let Some(x) = extra {
            x.extension(out);
        }
        out.push(']');
        if let Some(x) = extra {
            x.members(out);
        }
        let _ = write!(
            out,
            r#"}},"request":{{"method":"POST","url":"Observation","ifNoneExist":"identifier=urn:ietf:rfc:3986|urn:uuid:{id}"}}}}"#
        );
    }
}

/// The `urn:uuid:` of a sensor's Device resource (stable per device).
pub fn device_urn(device: DeviceId) -> String {
    let key = device.to_string();
    format!(
        "urn:uuid:{}",
        crate::reading_id::derive("device", &[key.as_bytes()])
    )
}

fn device_identifier(device: DeviceId) -> (&'static str, String, &'static str) {
    match device {
        DeviceId::Ble(a) => (
            "http://hl7.org/fhir/sid/eui-48/bluetooth",
            format!(
                "{:02X}-{:02X}-{:02X}-{:02X}-{:02X}-{:02X}",
                a[0], a[1], a[2], a[3], a[4], a[5]
            ),
            r#""type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers","code":"BTMAC"}]},"#,
        ),
        DeviceId::Node(n) => ("urn:heim:node", format!("{n:016x}"), ""),
        DeviceId::Simulated { .. } => ("urn:heim:simulated", device.to_string(), ""),
    }
}

fn write_code(c: &Code, out: &mut String) {
    let _ = write!(
        out,
        r#"{{"coding":[{{"system":"{MDC}","code":"{}","display":"{}"}}"#,
        c.mdc, c.mdc_ref
    );
    if let Some(l) = c.loinc {
        let _ = write!(out, r#",{{"system":"{LOINC}","code":"{l}"}}"#);
    }
    out.push_str("]}");
}

fn write_value(q: &Quantity, out: &mut String) {
    match q.value {
        Value::Number(d) => {
            let _ = write!(
                out,
                r#""valueQuantity":{{"value":{d},"unit":"{}","system":"{UCUM}","code":"{}"}}"#,
                q.unit.symbol(),
                q.unit.ucum()
            );
        }
        Value::Absent(reason) => {
            let _ = write!(
                out,
                r#""dataAbsentReason":{{"coding":[{{"system":"http://terminology.hl7.org/CodeSystem/data-absent-reason","code":"{}"}}]}}"#,
                reason.fhir_code()
            );
        }
    }
}

fn temperature_code(site: Option<BodySite>) -> Code {
    let (mdc, mdc_ref) = match site {
        Some(BodySite::Armpit) => (188452, "MDC_TEMP_AXILLA"),
        Some(BodySite::Ear) => (188428, "MDC_TEMP_EAR"),
        Some(BodySite::Finger) => (188432, "MDC_TEMP_FINGER"),
        Some(BodySite::GastroIntestinalTract) => (188456, "MDC_TEMP_GIT"),
        Some(BodySite::Mouth) => (188424, "MDC_TEMP_ORAL"),
        Some(BodySite::Rectum) => (188420, "MDC_TEMP_RECT"),
        Some(BodySite::Toe) => (188448, "MDC_TEMP_TOE"),
        Some(BodySite::Tympanum) => (150392, "MDC_TEMP_TYMP"),
        Some(BodySite::Body) | None => (150364, "MDC_TEMP_BODY"),
    };
    Code {
        mdc,
        mdc_ref,
        loinc: Some("8310-5"),
    }
}

fn glucose_code(sample: Option<GlucoseSample>, unit: Unit) -> Code {
    let molar = unit == Unit::MillimolePerLitre;
    use GlucoseSample as S;
    let (mdc, mdc_ref) = match sample {
        Some(S::CapillaryWholeBlood) => (160184, "MDC_CONC_GLU_CAPILLARY_WHOLEBLOOD"),
        Some(S::CapillaryPlasma) => (160188, "MDC_CONC_GLU_CAPILLARY_PLASMA"),
        Some(S::VenousWholeBlood) => (160192, "MDC_CONC_GLU_VENOUS_WHOLEBLOOD"),
        Some(S::VenousPlasma) => (160196, "MDC_CONC_GLU_VENOUS_PLASMA"),
        Some(S::ArterialWholeBlood) => (160200, "MDC_CONC_GLU_ARTERIAL_WHOLEBLOOD"),
        Some(S::ArterialPlasma) => (160204, "MDC_CONC_GLU_ARTERIAL_PLASMA"),
        Some(S::UndeterminedWholeBlood) | None => (160364, "MDC_CONC_GLU_UNDETERMINED_WHOLEBLOOD"),
        Some(S::UndeterminedPlasma) => (160368, "MDC_CONC_GLU_UNDETERMINED_PLASMA"),
        Some(S::InterstitialFluid) => (160212, "MDC_CONC_GLU_ISF"),
        Some(S::ControlSolution) => (160208, "MDC_CONC_GLU_CONTROL"),
    };
    let loinc = match sample {
        Some(S::CapillaryWholeBlood | S::CapillaryPlasma) => {
            if molar {
                "14743-9"
            } else {
                "41653-7"
            }
        }
        Some(S::VenousPlasma | S::ArterialPlasma | S::UndeterminedPlasma) => {
            if molar {
                "14749-6"
            } else {
                "2345-7"
            }
        }
        Some(S::InterstitialFluid) => {
            if molar {
                "105272-9"
            } else {
                "99504-3"
            }
        }
        Some(S::ControlSolution) => {
            return Code {
                mdc,
                mdc_ref,
                loinc: None,
            };
        }
        _ => {
            if molar {
                "15074-8"
            } else {
                "2339-0"
            }
        }
    };
    Code {
        mdc,
        mdc_ref,
        loinc: Some(loinc),
    }
}

/// The time to state as `effectiveDateTime`, and whether it comes from a trusted clock.
///
/// A trusted device time wins (it is when the measurement happened; a glucose record may be days
/// old). BLE device times are local wall-clock times without an offset: they are placed in the
/// gateway's own time zone. Otherwise the gateway's receive time, marked uncertain when the
/// gateway's clock was not synchronised.
pub fn effective_time(r: &Reading) -> (String, bool) {
    if r.device_time_trusted {
        match r.device_time {
            Some(DeviceTime::UnixMillis(ms)) => {
                if let Some(t) = DateTime::<Utc>::from_timestamp_millis(ms) {
                    return (t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), true);
                }
            }
            Some(DeviceTime::Local(l)) => {
                let local = NaiveDate::from_ymd_opt(l.year.into(), l.month.into(), l.day.into())
                    .and_then(|d| d.and_hms_opt(l.hour.into(), l.minute.into(), l.second.into()))
                    .and_then(|n| Local.from_local_datetime(&n).earliest());
                if let Some(t) = local {
                    return (t.to_rfc3339_opts(chrono::SecondsFormat::Secs, false), true);
                }
            }
            None => {}
        }
    }
    let t = DateTime::<Utc>::from_timestamp_millis(r.received.unix_millis).unwrap_or_default();
    (
        t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        r.received.synchronized,
    )
}

#[cfg(test)]
mod tests {
    use heim_shared_types::{AbsentReason, GatewayTime, ReadingId};

    use super::*;

    fn reading(m: Measurement) -> Reading {
        Reading {
            id: ReadingId([1; 16]),
            device: DeviceId::Ble([0xA0, 0xB1, 0xC2, 0xD3, 0xE4, 0xF5]),
            device_time: None,
            device_time_trusted: false,
            received: GatewayTime {
                unix_millis: 1_780_000_000_000,
                synchronized: true,
            },
            measurement: m,
        }
    }

    fn render(rs: &[Reading]) -> serde_json::Value {
        let r = Renderer::new("gw-1", "p-8f2c");
        let refs: Vec<&Reading> = rs.iter().collect();
        let mut s = String::new();
        r.bundle(&refs, &|_| None, &mut s);
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s}"))
    }

    #[test]
    fn blood_pressure_is_one_observation_with_components() {
        let mmhg = Unit::MillimetreOfMercury;
        let b = render(&[reading(Measurement::BloodPressure {
            systolic: Quantity::new(138, 0, mmhg),
            diastolic: Quantity::new(88, 0, mmhg),
            mean: Quantity {
                value: Value::Absent(AbsentReason::NotANumber),
                unit: mmhg,
            },
        })]);
        assert_eq!(b["type"], "transaction");
        let entries = b["entry"].as_array().unwrap();
        assert_eq!(
            entries.len(),
            3,
            "gateway device, sensor device, observation"
        );
        let obs = &entries[2]["resource"];
        assert_eq!(obs["code"]["coding"][0]["code"], "150020");
        assert_eq!(obs["code"]["coding"][1]["code"], "85354-9");
        assert_eq!(obs["subject"]["reference"], "Patient/p-8f2c");
        let c = obs["component"].as_array().unwrap();
        assert_eq!(c[0]["valueQuantity"]["value"], 138);
        assert_eq!(c[0]["valueQuantity"]["code"], "mm[Hg]");
        assert_eq!(c[1]["code"]["coding"][1]["code"], "8462-4");
        assert!(c[2].get("valueQuantity").is_none());
        assert_eq!(
            c[2]["dataAbsentReason"]["coding"][0]["code"],
            "not-a-number"
        );
        let id = "urn:uuid:01010101-0101-0101-0101-010101010101";
        assert_eq!(obs["identifier"][0]["value"], id);
        assert_eq!(
            entries[2]["request"]["ifNoneExist"],
            format!("identifier=urn:ietf:rfc:3986|{id}")
        );
        assert_eq!(
            obs["device"]["reference"], entries[1]["fullUrl"],
            "device → the sensor's Device entry"
        );
        assert_eq!(
            obs["extension"][0]["valueReference"]["reference"],
            entries[0]["fullUrl"]
        );
        assert_eq!(
            entries[1]["resource"]["identifier"][0]["value"],
            "A0-B1-C2-D3-E4-F5"
        );
    }

    #[test]
    fn precision_is_kept_and_time_uncertainty_marked() {
        let mut r = reading(Measurement::BodyTemperature {
            temperature: Quantity::new(3760, -2, Unit::Celsius),
            site: Some(BodySite::Tympanum),
        });
        r.received.synchronized = false;
        let refs = [&r];
        let mut s = String::new();
        Renderer::new("gw-1", "p").bundle(&refs, &|_| None, &mut s);
        assert!(s.contains(r#""value":37.60,"#), "{s}");
        let b: serde_json::Value = serde_json::from_str(&s).unwrap();
        let obs = &b["entry"][2]["resource"];
        assert_eq!(obs["code"]["coding"][0]["code"], "150392");
        assert_eq!(obs["valueQuantity"]["code"], "Cel");
        assert_eq!(obs["extension"][1]["url"], TIME_UNCERTAIN_EXT);
    }

    struct Based;
    impl Extras for Based {
        fn extension(&self, out: &mut String) {
            out.push_str(r#",{"url":"x","valueCode":"Resolved"}"#);
        }
        fn members(&self, out: &mut String) {
            out.push_str(r#","basedOn":[{"reference":"ServiceRequest/sr-1"}]"#);
        }
        fn component_members(&self, _: &str, _: &mut String) {}
    }

    #[test]
    fn devices_listed_once_and_extra_fields_merged() {
        let a = reading(Measurement::Spo2(Quantity::new(97, 0, Unit::Percent)));
        let mut b = a;
        b.id = ReadingId([2; 16]);
        let refs = [&a, &b];
        let mut s = String::new();
        Renderer::new("gw-1", "p").bundle(
            &refs,
            &|i| (i == 1).then_some(&Based as &dyn Extras),
            &mut s,
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        let e = v["entry"].as_array().unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[3]["resource"]["basedOn"][0]["reference"],
            "ServiceRequest/sr-1"
        );
        assert!(e[2]["resource"].get("basedOn").is_none());
    }

    #[test]
    fn glucose_codes_follow_sample_and_unit() {
        let g = reading(Measurement::BloodGlucose {
            glucose: Quantity::new(54, -1, Unit::MillimolePerLitre),
            sample: Some(GlucoseSample::CapillaryWholeBlood),
        });
        let v = render(&[g]);
        let obs = &v["entry"][2]["resource"];
        assert_eq!(obs["code"]["coding"][0]["code"], "160184");
        assert_eq!(obs["code"]["coding"][1]["code"], "14743-9");
        assert!(obs.get("category").is_none());
    }
}
