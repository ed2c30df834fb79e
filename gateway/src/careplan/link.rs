//! Linking a reading to the plan: which ServiceRequest it answers, which window it fulfils, the
//! ranges in force and the interpretation — and the FHIR fields that say so on the Observation.
//!
//! Pure: the caller supplies how many readings already fulfilled a window (the store knows), so the
//! same reading against the same plan and counts always links the same way.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use chrono_tz::Tz;
use heim_shared_types::{DeviceTime, Measurement, Quantity, Reading, Unit};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::plan::{AlertRange, Level, Plan, RANGE_TYPE_SYSTEM, Request};
use super::timing::{Window, local_rfc3339, resolve_local};

/// Extension on the Observation naming the window it fulfilled (after FUT's
/// `ehealth-resolved-timing`).
pub const RESOLVED_TIMING_EXT: &str =
    "https://heim.example/fhir/StructureDefinition/resolved-timing";
const INTERPRETATION_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";
const LOINC: &str = "http://loinc.org";

/// How a reading relates to its ServiceRequest's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowStatus {
    /// It fulfilled a window.
    Resolved,
    /// Its time is not trustworthy (gateway clock not synchronised, no trusted device time), so
    /// no window can be claimed.
    Unresolved,
    /// Taken outside every window.
    Adhoc,
    /// In a window already fulfilled, or arrived after the window was judged (end + grace).
    Extra,
}

impl WindowStatus {
    /// The `type` code in the extension.
    pub const fn code(self) -> &'static str {
        match self {
            WindowStatus::Resolved => "Resolved",
            WindowStatus::Unresolved => "Unresolved",
            WindowStatus::Adhoc => "Adhoc",
            WindowStatus::Extra => "Extra",
        }
    }
}

/// `Observation.interpretation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interpretation {
    /// Below the red limit.
    LL,
    /// Below the yellow limit.
    L,
    /// Inside every range.
    N,
    /// Above the yellow limit.
    H,
    /// Above the red limit.
    HH,
}

impl Interpretation {
    /// The v3 code.
    pub const fn code(self) -> &'static str {
        match self {
            Interpretation::LL => "LL",
            Interpretation::L => "L",
            Interpretation::N => "N",
            Interpretation::H => "H",
            Interpretation::HH => "HH",
        }
    }

    /// The alert level it raises.
    pub const fn level(self) -> Option<Level> {
        match self {
            Interpretation::LL | Interpretation::HH => Some(Level::Red),
            Interpretation::L | Interpretation::H => Some(Level::Yellow),
            Interpretation::N => None,
        }
    }
}

/// One limit range as copied into `referenceRange`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RangeInForce {
    /// Red or yellow (`RAL`/`GAL`).
    pub level: String,
    /// The plan's low Quantity.
    pub low: Option<Value>,
    /// The plan's high Quantity.
    pub high: Option<Value>,
}

/// The ranges and interpretation of one value (the whole reading, or one component).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentLink {
    /// The component's LOINC code (`8480-6`), `None` for a single-valued reading.
    pub code: Option<String>,
    /// Ranges in force.
    pub ranges: Vec<RangeInForce>,
    /// Interpretation, when there were ranges and a number.
    pub interpretation: Option<Interpretation>,
}

/// A reading linked to the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linked {
    /// `ServiceRequest/{request}`.
    pub request: String,
    /// The ServiceRequest's version.
    pub request_version: String,
    /// The window (RFC 3339 in the plan's zone), when one applies.
    pub window: Option<(String, String)>,
    /// The window's start, Unix ms (ledger key), when one applies.
    pub window_start_ms: Option<i64>,
    /// Resolved / Unresolved / Adhoc / Extra.
    pub window_status: WindowStatus,
    /// Per value ranges and interpretation.
    pub components: Vec<ComponentLink>,
}

impl Linked {
    /// The worst alert level over the components.
    pub fn alert(&self) -> Option<Level> {
        self.components
            .iter()
            .filter_map(|c| c.interpretation.and_then(Interpretation::level))
            .max()
    }

    /// The Observation fields the FHIR renderer merges:
    /// * `basedOn` → the ServiceRequest;
    /// * `extension`: **items to append** to the Observation's own `extension` array (the
    ///   `resolved-timing` extension), not a replacement for it;
    /// * for a single-valued reading, `referenceRange` and `interpretation` at the top level;
    /// * for a compound reading (blood pressure), `component`: one partial entry per component
    ///   with ranges, holding `code` plus `referenceRange`/`interpretation`, to be merged into the
    ///   Observation's component with the same LOINC code.
    pub fn to_fhir_fields(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "basedOn".into(),
            json!([{ "reference": format!("ServiceRequest/{}", self.request) }]),
        );
        let mut ext =
            vec![json!({"url": "serviceRequestVersionId", "valueId": self.request_version})];
        if let Some((start, end)) = &self.window {
            ext.push(json!({"url": "start", "valueDateTime": start}));
            ext.push(json!({"url": "end", "valueDateTime": end}));
        }
        ext.push(json!({"url": "type", "valueCode": self.window_status.code()}));
        m.insert(
            "extension".into(),
            json!([{ "url": RESOLVED_TIMING_EXT, "extension": ext }]),
        );
        let (single, parts): (Vec<&ComponentLink>, Vec<&ComponentLink>) =
            self.components.iter().partition(|c| c.code.is_none());
        if let Some(c) = single.first() {
            component_fields(c, &mut m);
        }
        let parts: Vec<Value> = parts
            .into_iter()
            .filter(|c| !c.ranges.is_empty())
            .map(|c| {
                let mut pm = Map::new();
                pm.insert(
                    "code".into(),
                    json!({"coding": [{"system": LOINC, "code": c.code}]}),
                );
                component_fields(c, &mut pm);
                Value::Object(pm)
            })
            .collect();
        if !parts.is_empty() {
            m.insert("component".into(), Value::Array(parts));
        }
        m
    }
}

/// String-writing helpers for the uplink's direct JSON renderer
/// ([`uplink::fhir`](crate::uplink::fhir)), each the serialisation of part of
/// [`Linked::to_fhir_fields`]. Each writes a leading `,` so it can follow what is already there.
impl Linked {
    /// `,{resolved-timing extension}`: write inside the Observation's `extension` array, after
    /// the gateway-device extension.
    pub fn write_extension(&self, out: &mut String) {
        let f = self.to_fhir_fields();
        for e in f["extension"].as_array().into_iter().flatten() {
            out.push(',');
            out.push_str(&e.to_string());
        }
    }

    /// `,"basedOn":[…]` and, for a single-valued reading, `,"referenceRange":[…],
    /// "interpretation":[…]`: write among the Observation's members.
    pub fn write_members(&self, out: &mut String) {
        for (k, v) in self.to_fhir_fields() {
            if k == "extension" || k == "component" {
                continue;
            }
            out.push_str(&format!(",{}:{v}", Value::String(k)));
        }
    }

    /// `,"referenceRange":[…],"interpretation":[…]` for the component with this LOINC code
    /// (`8480-6`), if it has ranges: write inside that component's object.
    pub fn write_component_members(&self, loinc: &str, out: &mut String) {
        let Some(c) = self
            .components
            .iter()
            .find(|c| c.code.as_deref() == Some(loinc))
        else {
            return;
        };
        let mut m = Map::new();
        component_fields(c, &mut m);
        for (k, v) in m {
            out.push_str(&format!(",{}:{v}", Value::String(k)));
        }
    }
}

fn component_fields(c: &ComponentLink, m: &mut Map<String, Value>) {
    if !c.ranges.is_empty() {
        let ranges: Vec<Value> = c
            .ranges
            .iter()
            .map(|r| {
                let mut o = Map::new();
                if let Some(l) = &r.low {
                    o.insert("low".into(), l.clone());
                }
                if let Some(h) = &r.high {
                    o.insert("high".into(), h.clone());
                }
                o.insert(
                    "type".into(),
                    json!({"coding": [{"system": RANGE_TYPE_SYSTEM, "code": r.level}]}),
                );
                Value::Object(o)
            })
            .collect();
        m.insert("referenceRange".into(), Value::Array(ranges));
    }
    if let Some(i) = c.interpretation {
        m.insert(
            "interpretation".into(),
            json!([{"coding": [{"system": INTERPRETATION_SYSTEM, "code": i.code()}]}]),
        );
    }
}

/// When a reading was taken, if that can be trusted: a trusted device time (BLE wall-clock times
/// are read in the plan's zone), else the gateway's receive time if its clock was synchronised.
pub fn taken_at(r: &Reading, tz: Tz) -> Option<DateTime<Utc>> {
    if r.device_time_trusted {
        match r.device_time {
            Some(DeviceTime::UnixMillis(ms)) => return DateTime::from_timestamp_millis(ms),
            Some(DeviceTime::Local(l)) => {
                let date = NaiveDate::from_ymd_opt(l.year.into(), l.month.into(), l.day.into());
                let time = chrono::NaiveTime::from_hms_opt(
                    l.hour.into(),
                    l.minute.into(),
                    l.second.into(),
                );
                if let (Some(d), Some(t)) = (date, time) {
                    return Some(resolve_local(tz, d, t));
                }
            }
            None => {}
        }
    }
    r.received
        .synchronized
        .then(|| DateTime::from_timestamp_millis(r.received.unix_millis))
        .flatten()
}

/// The values of a reading, keyed by component LOINC (`None` = the single value).
fn values(m: &Measurement) -> Vec<(Option<&'static str>, Quantity)> {
    match *m {
        Measurement::BloodPressure {
            systolic,
            diastolic,
            mean,
        } => vec![
            (Some("8480-6"), systolic),
            (Some("8462-4"), diastolic),
            (Some("8478-0"), mean),
        ],
        Measurement::PulseRate(q)
        | Measurement::Spo2(q)
        | Measurement::BodyWeight(q)
        | Measurement::BodyHeight(q)
        | Measurement::Bmi(q) => vec![(None, q)],
        Measurement::BodyTemperature { temperature, .. } => vec![(None, temperature)],
        Measurement::BloodGlucose { glucose, .. } => vec![(None, glucose)],
    }
}

/// `q` in the UCUM unit `to`, when the two are the same dimension Heim knows how to convert.
pub fn convert(q: Quantity, to: &str) -> Option<f64> {
    let v = q.value.number()?.to_f64();
    let from = q.unit;
    if from.ucum() == to {
        return Some(v);
    }
    Some(match (from, to) {
        (Unit::Kilopascal, "mm[Hg]") => v * 7.500_615_758,
        (Unit::MillimetreOfMercury, "kPa") => v / 7.500_615_758,
        (Unit::Pound, "kg") => v * 0.453_592_37,
        (Unit::Kilogram, "[lb_av]") => v / 0.453_592_37,
        (Unit::Fahrenheit, "Cel") => (v - 32.0) * 5.0 / 9.0,
        (Unit::Celsius, "[degF]") => v * 9.0 / 5.0 + 32.0,
        (Unit::Inch, "cm") => v * 2.54,
        (Unit::Centimetre, "[in_i]") => v / 2.54,
        // Glucose: 1 mmol/L = 18.016 mg/dL (molar mass 180.16 g/mol).
        (Unit::MilligramPerDecilitre, "mmol/L") => v / 18.016,
        (Unit::MillimolePerLitre, "mg/dL") => v * 18.016,
        _ => return None,
    })
}

fn interpret(q: Quantity, ranges: &[&AlertRange]) -> Option<Interpretation> {
    let mut result: Option<Interpretation> = None;
    // Red first: a value beyond a red limit is red whatever the yellow range says.
    for level in [Level::Red, Level::Yellow] {
        for r in ranges.iter().filter(|r| r.level == level) {
            let v = convert(q, &r.unit)?;
            let below = r.low.as_ref().is_some_and(|(l, _)| v < *l);
            let above = r.high.as_ref().is_some_and(|(h, _)| v > *h);
            let hit = match (level, below, above) {
                (Level::Red, true, _) => Some(Interpretation::LL),
                (Level::Red, _, true) => Some(Interpretation::HH),
                (Level::Yellow, true, _) => Some(Interpretation::L),
                (Level::Yellow, _, true) => Some(Interpretation::H),
                _ => None,
            };
            if hit.is_some() {
                return hit;
            }
            result = Some(Interpretation::N);
        }
    }
    result
}

fn components(req: &Request, m: &Measurement) -> Vec<ComponentLink> {
    values(m)
        .into_iter()
        .map(|(code, q)| {
            let applicable: Vec<&AlertRange> = req
                .ranges
                .iter()
                .filter(|r| match code {
                    // Single value: every range of the request applies.
                    None => true,
                    Some(c) => r.component.as_deref() == Some(c),
                })
                .collect();
            ComponentLink {
                code: code.map(str::to_owned),
                ranges: applicable
                    .iter()
                    .map(|r| RangeInForce {
                        level: r.level.code().into(),
                        low: r.low.as_ref().map(|(_, q)| q.clone()),
                        high: r.high.as_ref().map(|(_, q)| q.clone()),
                    })
                    .collect(),
                interpretation: interpret(q, &applicable),
            }
        })
        .collect()
}

/// Links `r` to `plan`. `fulfilled(request, window)` is how many readings already fulfilled that
/// window. `None` when the plan asks for nothing of this kind.
pub fn link(
    plan: &Plan,
    r: &Reading,
    fulfilled: &mut dyn FnMut(&str, &Window) -> u32,
) -> Option<Linked> {
    let kind = r.measurement.kind();
    let candidates: Vec<&Request> = plan.requests.iter().filter(|q| q.kind == kind).collect();
    let first = *candidates.first()?;
    let tz = plan.tz;
    let Some(t) = taken_at(r, tz) else {
        return Some(Linked {
            request: first.id.clone(),
            request_version: first.version.clone(),
            window: None,
            window_start_ms: None,
            window_status: WindowStatus::Unresolved,
            components: components(first, &r.measurement),
        });
    };
    // Arrived after the window was (or will have been) judged: the platform decides what to do.
    let received = r
        .received
        .synchronized
        .then(|| DateTime::from_timestamp_millis(r.received.unix_millis))
        .flatten();
    let late = |req: &Request, w: &Window| {
        received.is_some_and(|rc| rc > w.end + req.schedule.tolerance.grace)
    };
    let mut full: Option<(&Request, Window)> = None;
    for req in &candidates {
        for w in req.schedule.windows_at(tz, t) {
            if late(req, &w) {
                full.get_or_insert((req, w));
                continue;
            }
            if fulfilled(&req.id, &w) < w.expected {
                return Some(linked(req, Some(w), WindowStatus::Resolved, tz, r));
            }
            full.get_or_insert((req, w));
        }
    }
    Some(match full {
        Some((req, w)) => linked(req, Some(w), WindowStatus::Extra, tz, r),
        None => linked(first, None, WindowStatus::Adhoc, tz, r),
    })
}

fn linked(req: &Request, w: Option<Window>, status: WindowStatus, tz: Tz, r: &Reading) -> Linked {
    Linked {
        request: req.id.clone(),
        request_version: req.version.clone(),
        window: w.map(|w| (local_rfc3339(tz, w.start), local_rfc3339(tz, w.end))),
        window_start_ms: w.map(|w| w.start.timestamp_millis()),
        window_status: status,
        components: components(req, &r.measurement),
    }
}

/// The payload of an alert event on `heim/v1/{gateway_id}/events` for a red or yellow reading.
pub fn alert_event(gateway_id: &str, r: &Reading, l: &Linked, level: Level, tz: Tz) -> Value {
    let comps: Vec<Value> = values(&r.measurement)
        .into_iter()
        .zip(&l.components)
        .filter(|(_, c)| c.interpretation.and_then(Interpretation::level).is_some())
        .map(|((code, q), c)| {
            json!({
                "code": code,
                "value": q.value.number().map(|d| d.to_string()),
                "unit": q.unit.ucum(),
                "interpretation": c.interpretation.map(Interpretation::code),
            })
        })
        .collect();
    json!({
        "event": "careplan-alert",
        "gateway": gateway_id,
        "level": match level { Level::Red => "red", Level::Yellow => "yellow" },
        "observation": format!("urn:uuid:{}", r.id),
        "basedOn": format!("ServiceRequest/{}", l.request),
        "takenAt": taken_at(r, tz).map(|t| local_rfc3339(tz, t)),
        "components": comps,
    })
}

/// How long after `t` a window containing `t` may still be judged; readings are matched against
/// windows this far back.
pub fn lookback(plan: &Plan) -> Duration {
    plan.requests
        .iter()
        .map(|r| r.schedule.tolerance.grace)
        .max()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use chrono_tz::Europe::Oslo;
    use heim_shared_types::{DeviceId, GatewayTime, ReadingId};

    use super::*;
    use crate::careplan::plan::tests::example_bundle;

    fn plan() -> Plan {
        Plan::parse(
            &serde_json::to_vec(&example_bundle()).unwrap(),
            Oslo,
            "p-8f2c",
        )
        .unwrap()
    }

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    fn bp(sys: i32, when: &str) -> Reading {
        Reading {
            id: ReadingId([3; 16]),
            device: DeviceId::Ble([1, 2, 3, 4, 5, 6]),
            device_time: None,
            device_time_trusted: false,
            received: GatewayTime {
                unix_millis: at(when),
                synchronized: true,
            },
            measurement: Measurement::BloodPressure {
                systolic: Quantity::new(sys, 0, Unit::MillimetreOfMercury),
                diastolic: Quantity::new(80, 0, Unit::MillimetreOfMercury),
                mean: Quantity::new(95, 0, Unit::MillimetreOfMercury),
            },
        }
    }

    #[test]
    fn reading_in_window_resolves_with_ranges_and_interpretation() {
        let p = plan();
        let l = link(&p, &bp(168, "2026-05-04T08:12:03+02:00"), &mut |_, _| 0).unwrap();
        assert_eq!(l.request, "sr-bp");
        assert_eq!(l.window_status, WindowStatus::Resolved);
        assert_eq!(
            l.window,
            Some((
                "2026-05-04T07:00:00+02:00".into(),
                "2026-05-04T10:00:00+02:00".into()
            ))
        );
        assert_eq!(l.alert(), Some(Level::Yellow));
        let f = Value::Object(l.to_fhir_fields());
        assert_eq!(f["basedOn"][0]["reference"], "ServiceRequest/sr-bp");
        let ext = &f["extension"][0];
        assert_eq!(ext["url"], RESOLVED_TIMING_EXT);
        assert_eq!(ext["extension"][0]["valueId"], "4");
        assert_eq!(ext["extension"][3]["valueCode"], "Resolved");
        // Only systolic has ranges: one partial component, with both ranges and H.
        let comps = f["component"].as_array().unwrap();
        assert_eq!(comps.len(), 1);
        assert_eq!(comps[0]["code"]["coding"][0]["code"], "8480-6");
        assert_eq!(comps[0]["interpretation"][0]["coding"][0]["code"], "H");
        assert_eq!(comps[0]["referenceRange"][1]["low"]["value"], 100);
        assert_eq!(
            comps[0]["referenceRange"][1]["type"]["coding"][0]["code"],
            "GAL"
        );
    }

    #[test]
    fn string_helpers_splice_into_an_observation() {
        let p = plan();
        let l = link(&p, &bp(190, "2026-05-04T08:00:00+02:00"), &mut |_, _| 0).unwrap();
        let mut ext = String::new();
        l.write_extension(&mut ext);
        let mut members = String::new();
        l.write_members(&mut members);
        let mut sys = String::new();
        l.write_component_members("8480-6", &mut sys);
        let mut dia = String::new();
        l.write_component_members("8462-4", &mut dia);
        let obs = format!(
            r#"{{"resourceType":"Observation","extension":[{{"url":"x"}}{ext}]{members},"component":[{{"code":{{}}{sys}}},{{"code":{{}}{dia}}}]}}"#
        );
        let v: Value = serde_json::from_str(&obs).unwrap();
        assert_eq!(v["extension"][1]["url"], RESOLVED_TIMING_EXT);
        assert_eq!(v["basedOn"][0]["reference"], "ServiceRequest/sr-bp");
        assert_eq!(
            v["component"][0]["interpretation"][0]["coding"][0]["code"],
            "HH"
        );
        assert!(v["component"][1].get("referenceRange").is_none());
        assert!(v.get("referenceRange").is_none());
    }

    #[test]
    fn interpretation_levels() {
        let p = plan();
        let mut none = |_: &str, _: &Window| 0;
        let mut sys = |v: i32| {
            link(&p, &bp(v, "2026-05-04T08:00:00+02:00"), &mut none)
                .unwrap()
                .components[0]
                .interpretation
        };
        assert_eq!(sys(190), Some(Interpretation::HH));
        assert_eq!(sys(85), Some(Interpretation::LL));
        assert_eq!(sys(95), Some(Interpretation::L));
        assert_eq!(sys(161), Some(Interpretation::H));
        assert_eq!(sys(160), Some(Interpretation::N));
        assert_eq!(sys(120), Some(Interpretation::N));
        // 25 kPa ≈ 187.5 mmHg: converted before comparing.
        let mut r = bp(0, "2026-05-04T08:00:00+02:00");
        r.measurement = Measurement::BloodPressure {
            systolic: Quantity::new(25, 0, Unit::Kilopascal),
            diastolic: Quantity::new(10, 0, Unit::Kilopascal),
            mean: Quantity::new(13, 0, Unit::Kilopascal),
        };
        let l = link(&p, &r, &mut none).unwrap();
        assert_eq!(l.alert(), Some(Level::Red));
        // Single-valued SpO2: ranges without component apply to the value.
        r.measurement = Measurement::Spo2(Quantity::new(90, 0, Unit::Percent));
        let l = link(&p, &r, &mut none).unwrap();
        assert_eq!(l.request, "sr-spo2");
        assert_eq!(l.components[0].interpretation, Some(Interpretation::L));
        let f = Value::Object(l.to_fhir_fields());
        assert_eq!(f["interpretation"][0]["coding"][0]["code"], "L");
        assert_eq!(f["referenceRange"].as_array().unwrap().len(), 2);
        let e = alert_event("gw-1", &r, &l, Level::Yellow, Oslo);
        assert_eq!(e["level"], "yellow");
        assert_eq!(e["components"][0]["value"], "90");
    }

    #[test]
    fn adhoc_extra_unresolved() {
        let p = plan();
        let l = link(&p, &bp(120, "2026-05-04T13:00:00+02:00"), &mut |_, _| 0).unwrap();
        assert_eq!(l.window_status, WindowStatus::Adhoc);
        assert_eq!(l.window, None);
        let l = link(&p, &bp(120, "2026-05-04T09:00:00+02:00"), &mut |_, _| 1).unwrap();
        assert_eq!(l.window_status, WindowStatus::Extra);
        assert!(l.window.is_some());
        // Taken in the window (trusted device time) but received after end + grace: Extra.
        let mut r = bp(120, "2026-05-05T12:00:00+02:00");
        r.device_time = Some(DeviceTime::UnixMillis(at("2026-05-04T08:30:00+02:00")));
        r.device_time_trusted = true;
        let l = link(&p, &r, &mut |_, _| 0).unwrap();
        assert_eq!(l.window_status, WindowStatus::Extra);
        // Unsynchronised gateway clock and no trusted device time: no window claimed.
        let mut r = bp(120, "2026-05-04T08:30:00+02:00");
        r.received.synchronized = false;
        let l = link(&p, &r, &mut |_, _| 0).unwrap();
        assert_eq!(l.window_status, WindowStatus::Unresolved);
        // Nothing in the plan for weight.
        r.measurement = Measurement::BodyWeight(Quantity::new(70, 0, Unit::Kilogram));
        assert!(link(&p, &r, &mut |_, _| 0).is_none());
    }

    #[test]
    fn weekly_frequency_counts_up_to_n() {
        let p = plan();
        let mut r = bp(0, "2026-05-06T12:00:00+02:00");
        r.measurement = Measurement::Spo2(Quantity::new(97, 0, Unit::Percent));
        let mut seen = Vec::new();
        let mut count = |id: &str, w: &Window| {
            seen.push((id.to_owned(), *w));
            1
        };
        let l = link(&p, &r, &mut count).unwrap();
        assert_eq!(l.window_status, WindowStatus::Resolved);
        assert_eq!(
            l.window.unwrap().0,
            "2026-05-04T00:00:00+02:00",
            "the ISO week starts Monday"
        );
        assert_eq!(seen[0].1.expected, 2);
        let l = link(&p, &r, &mut |_, _| 2).unwrap();
        assert_eq!(l.window_status, WindowStatus::Extra);
    }
}
