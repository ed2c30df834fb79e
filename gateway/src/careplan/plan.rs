//! The plan document: a FHIR R4 `collection` Bundle with one CarePlan and one ServiceRequest per
//! measurement regime, parsed into what the gateway needs (kind, timing, tolerance, alert ranges).
//!
//! Only the elements the gateway acts on are read; everything else is ignored, so a richer plan
//! from the hospital still parses. What the gateway cannot honour — a Timing form other than the
//! two in [`timing`](super::timing), a code it cannot map to a measurement kind — refuses the whole
//! plan rather than silently dropping a regime the care team expects to be watched.

use chrono::{DateTime, Duration, NaiveTime, Utc, Weekday};
use chrono_tz::Tz;
use heim_shared_types::Kind;
use serde_json::Value;

use super::timing::{MAX_TOLERANCE, PeriodUnit, Schedule, Timing, Tolerance};

/// Extension: tolerance window around a ServiceRequest's times.
pub const WINDOW_EXT: &str = "https://heim.example/fhir/StructureDefinition/measurement-window";
/// Extension: an alert range on a ServiceRequest.
pub const RANGE_EXT: &str = "https://heim.example/fhir/StructureDefinition/alert-range";
/// Code system of the red/yellow range types (Danish FUT's `RAL`/`GAL`).
pub const RANGE_TYPE_SYSTEM: &str = "urn:oid:1.2.208.184.100.1";
const LOINC: &str = "http://loinc.org";
const MDC: &str = "urn:iso:std:iso:11073:10101";

/// Why a plan document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The document is not a plan Heim can read.
    #[error("malformed plan: {0}")]
    Malformed(String),
    /// A ServiceRequest's `occurrence[x]` is not one of the supported Timing forms.
    #[error("unsupported timing in ServiceRequest/{request}: {detail}")]
    UnsupportedTiming {
        /// The ServiceRequest id.
        request: String,
        /// What is not supported.
        detail: String,
    },
}

fn malformed(s: impl Into<String>) -> PlanError {
    PlanError::Malformed(s.into())
}

/// Red (act now) or yellow (watch) limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// Yellow alarm limits (`GAL`).
    Yellow,
    /// Red alarm limits (`RAL`).
    Red,
}

impl Level {
    /// The range-type code.
    pub const fn code(self) -> &'static str {
        match self {
            Level::Red => "RAL",
            Level::Yellow => "GAL",
        }
    }
}

/// One `alert-range` extension.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRange {
    /// The LOINC code of the component it limits (`8480-6` systolic), or `None` for the value of a
    /// single-valued measurement.
    pub component: Option<String>,
    /// Red or yellow.
    pub level: Level,
    /// Lower limit: the number, and the plan's Quantity as written (copied to `referenceRange`).
    pub low: Option<(f64, Value)>,
    /// Upper limit.
    pub high: Option<(f64, Value)>,
    /// UCUM code of the limits.
    pub unit: String,
}

/// One ServiceRequest: one measurement regime.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `ServiceRequest.id`.
    pub id: String,
    /// `meta.versionId` (`"1"` when absent).
    pub version: String,
    /// What is measured.
    pub kind: Kind,
    /// When, with tolerance and bounds.
    pub schedule: Schedule,
    /// Alert ranges.
    pub ranges: Vec<AlertRange>,
}

/// An accepted plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// `CarePlan.id`.
    pub id: String,
    /// `CarePlan.meta.versionId` (`"1"` when absent).
    pub version: String,
    /// The time zone windows are computed in.
    pub tz: Tz,
    /// The regimes, in document order.
    pub requests: Vec<Request>,
}

impl Plan {
    /// Parses a Bundle. `patient` is this gateway's patient id: a plan for someone else is refused.
    pub fn parse(bundle: &[u8], tz: Tz, patient: &str) -> Result<Plan, PlanError> {
        let doc: Value = serde_json::from_slice(bundle)
            .map_err(|e| malformed(format!("not JSON: {:?}", e.classify())))?;
        if doc["resourceType"] != "Bundle" || doc["type"] != "collection" {
            return Err(malformed("not a collection Bundle"));
        }
        let entries = doc["entry"]
            .as_array()
            .ok_or_else(|| malformed("Bundle has no entry"))?;
        let resources: Vec<&Value> = entries.iter().map(|e| &e["resource"]).collect();
        let careplans: Vec<&&Value> = resources
            .iter()
            .filter(|r| r["resourceType"] == "CarePlan")
            .collect();
        let [cp] = careplans.as_slice() else {
            return Err(malformed("the Bundle must hold exactly one CarePlan"));
        };
        let id = str_of(&cp["id"]).ok_or_else(|| malformed("CarePlan has no id"))?;
        check_subject(cp, patient)?;
        let (cp_start, cp_end) = period(&cp["period"])?;
        let mut requests = Vec::new();
        for r in resources
            .iter()
            .filter(|r| r["resourceType"] == "ServiceRequest")
        {
            if matches!(
                str_of(&r["status"]).as_deref(),
                Some("revoked" | "completed" | "entered-in-error" | "on-hold")
            ) {
                continue;
            }
            check_subject(r, patient)?;
            let mut req = parse_request(r)?;
            // The plan's own period bounds every regime.
            let s = &mut req.schedule;
            s.not_before = max_opt(s.not_before, cp_start);
            s.not_after = min_opt(s.not_after, cp_end);
            requests.push(req);
        }
        if requests.is_empty() {
            return Err(malformed("the plan has no active ServiceRequest"));
        }
        Ok(Plan {
            id,
            version: version_of(cp),
            tz,
            requests,
        })
    }

    /// The regime with this id.
    pub fn request(&self, id: &str) -> Option<&Request> {
        self.requests.iter().find(|r| r.id == id)
    }
}

fn max_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}
fn min_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn str_of(v: &Value) -> Option<String> {
    v.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
}

fn version_of(r: &Value) -> String {
    str_of(&r["meta"]["versionId"]).unwrap_or_else(|| "1".into())
}

fn check_subject(r: &Value, patient: &str) -> Result<(), PlanError> {
    match r["subject"]["reference"].as_str() {
        None => Ok(()),
        Some(s) if s.strip_prefix("Patient/") == Some(patient) => Ok(()),
        Some(_) => Err(malformed("the plan is for another patient")),
    }
}

/// A FHIR Period's start and end, each optional.
type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn period(p: &Value) -> Result<Bounds, PlanError> {
    let at = |k: &str| -> Result<Option<DateTime<Utc>>, PlanError> {
        match p[k].as_str() {
            None => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|_| malformed(format!("period.{k} is not a dateTime with a time zone"))),
        }
    };
    Ok((at("start")?, at("end")?))
}

/// Maps a ServiceRequest's codes to a measurement kind (LOINC or MDC).
fn kind_of(code: &Value) -> Option<Kind> {
    let codings = code["coding"].as_array()?;
    codings.iter().find_map(|c| {
        let system = c["system"].as_str()?;
        let code = c["code"].as_str()?;
        match (system, code) {
            (LOINC, "85354-9" | "55284-4") | (MDC, "150020") => Some(Kind::BloodPressure),
            (LOINC, "8867-4") | (MDC, "149530" | "149546") => Some(Kind::PulseRate),
            (LOINC, "59408-5" | "2708-6") | (MDC, "150456") => Some(Kind::Spo2),
            (LOINC, "29463-7") | (MDC, "188736") => Some(Kind::BodyWeight),
            (LOINC, "8302-2") | (MDC, "188740") => Some(Kind::BodyHeight),
            (LOINC, "39156-5") | (MDC, "188752") => Some(Kind::Bmi),
            (LOINC, "8310-5") | (MDC, "150364") => Some(Kind::BodyTemperature),
            (LOINC, "2339-0" | "15074-8" | "41653-7" | "14743-9" | "2345-7" | "14749-6")
            | (MDC, "160184" | "160188" | "160192" | "160196" | "160364" | "160368") => {
                Some(Kind::BloodGlucose)
            }
            _ => None,
        }
    })
}

fn parse_request(r: &Value) -> Result<Request, PlanError> {
    let id = str_of(&r["id"]).ok_or_else(|| malformed("a ServiceRequest has no id"))?;
    let kind = kind_of(&r["code"]).ok_or_else(|| {
        malformed(format!(
            "ServiceRequest/{id}: code is not a measurement Heim knows (LOINC or MDC)"
        ))
    })?;
    let unsupported = |detail: &str| PlanError::UnsupportedTiming {
        request: id.clone(),
        detail: detail.to_owned(),
    };
    for other in ["occurrenceDateTime", "occurrencePeriod"] {
        if !r[other].is_null() {
            return Err(unsupported(&format!("{other} (only occurrenceTiming)")));
        }
    }
    let timing = &r["occurrenceTiming"];
    if timing.is_null() {
        return Err(unsupported("no occurrenceTiming"));
    }
    if !timing["event"].is_null() || !timing["code"].is_null() {
        return Err(unsupported("Timing.event / Timing.code"));
    }
    let rep = &timing["repeat"];
    if !rep.is_object() {
        return Err(unsupported("no Timing.repeat"));
    }
    for k in [
        "count",
        "countMax",
        "frequencyMax",
        "periodMax",
        "when",
        "offset",
        "boundsDuration",
        "boundsRange",
    ] {
        if !rep[k].is_null() {
            return Err(unsupported(&format!("Timing.repeat.{k}")));
        }
    }
    let period_n = match &rep["period"] {
        Value::Null => 1.0,
        v => v
            .as_f64()
            .ok_or_else(|| unsupported("period is not a number"))?,
    };
    if period_n != 1.0 {
        return Err(unsupported("period other than 1"));
    }
    let unit = match rep["periodUnit"].as_str() {
        Some("d") => PeriodUnit::Day,
        Some("wk") => PeriodUnit::Week,
        Some(_) => return Err(unsupported("periodUnit other than d or wk")),
        None => return Err(unsupported("no periodUnit")),
    };
    let frequency = match &rep["frequency"] {
        Value::Null => None,
        v => Some(
            v.as_u64()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| unsupported("frequency is not a whole number 1–100"))?
                as u32,
        ),
    };
    let days = match rep["dayOfWeek"].as_array() {
        None if rep["dayOfWeek"].is_null() => None,
        None => return Err(unsupported("dayOfWeek is not a list")),
        Some(list) => {
            let mut days = Vec::new();
            for d in list {
                days.push(match d.as_str() {
                    Some("mon") => Weekday::Mon,
                    Some("tue") => Weekday::Tue,
                    Some("wed") => Weekday::Wed,
                    Some("thu") => Weekday::Thu,
                    Some("fri") => Weekday::Fri,
                    Some("sat") => Weekday::Sat,
                    Some("sun") => Weekday::Sun,
                    _ => return Err(unsupported("dayOfWeek value")),
                });
            }
            Some(days)
        }
    };
    let timing = match rep["timeOfDay"].as_array() {
        Some(list) if !list.is_empty() => {
            let mut times = Vec::new();
            for t in list {
                let t = t
                    .as_str()
                    .and_then(|s| NaiveTime::parse_from_str(s, "%H:%M:%S%.f").ok())
                    .ok_or_else(|| malformed(format!("ServiceRequest/{id}: bad timeOfDay")))?;
                times.push(t);
            }
            times.sort();
            times.dedup();
            if unit == PeriodUnit::Week && days.is_none() {
                return Err(unsupported("weekly timeOfDay without dayOfWeek"));
            }
            Timing::TimesOfDay { times, days }
        }
        Some(_) => return Err(unsupported("empty timeOfDay")),
        None if !rep["timeOfDay"].is_null() => return Err(unsupported("timeOfDay is not a list")),
        None => {
            if days.is_some() {
                return Err(unsupported("dayOfWeek without timeOfDay"));
            }
            let count = frequency.ok_or_else(|| unsupported("neither timeOfDay nor frequency"))?;
            Timing::PerPeriod { count, unit }
        }
    };
    let (not_before, not_after) = period(&rep["boundsPeriod"])?;
    let mut tolerance = Tolerance::default();
    let mut ranges = Vec::new();
    for ext in r["extension"].as_array().into_iter().flatten() {
        match ext["url"].as_str() {
            Some(WINDOW_EXT) => tolerance = parse_window(ext, &id)?,
            Some(RANGE_EXT) => ranges.push(parse_range(ext, &id)?),
            _ => {}
        }
    }
    if kind == Kind::BloodPressure && ranges.iter().any(|r| r.component.is_none()) {
        return Err(malformed(format!(
            "ServiceRequest/{id}: a blood-pressure alert-range needs a component"
        )));
    }
    Ok(Request {
        version: version_of(r),
        id,
        kind,
        schedule: Schedule {
            timing,
            tolerance,
            not_before,
            not_after,
        },
        ranges,
    })
}

fn sub<'a>(ext: &'a Value, url: &str) -> Option<&'a Value> {
    ext["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"].as_str() == Some(url))
}

fn parse_window(ext: &Value, id: &str) -> Result<Tolerance, PlanError> {
    let mut t = Tolerance::default();
    for (name, slot) in [
        ("before", &mut t.before),
        ("after", &mut t.after),
        ("grace", &mut t.grace),
    ] {
        if let Some(e) = sub(ext, name) {
            let d = &e["valueDuration"];
            let v = d["value"].as_f64();
            let unit_s = match d["code"].as_str().or(d["unit"].as_str()) {
                Some("s") => Some(1.0),
                Some("min") => Some(60.0),
                Some("h") => Some(3600.0),
                Some("d") => Some(86_400.0),
                _ => None,
            };
            let (Some(v), Some(unit_s)) = (v, unit_s) else {
                return Err(malformed(format!(
                    "ServiceRequest/{id}: measurement-window {name} needs a value and s/min/h/d"
                )));
            };
            let secs = v * unit_s;
            if !(0.0..=MAX_TOLERANCE.num_seconds() as f64).contains(&secs) {
                return Err(malformed(format!(
                    "ServiceRequest/{id}: measurement-window {name} must be 0 to 2 days"
                )));
            }
            *slot = Duration::seconds(secs.round() as i64);
        }
    }
    Ok(t)
}

fn parse_range(ext: &Value, id: &str) -> Result<AlertRange, PlanError> {
    let bad = |what: &str| malformed(format!("ServiceRequest/{id}: alert-range {what}"));
    let component = sub(ext, "component")
        .map(|e| str_of(&e["valueCoding"]["code"]).ok_or_else(|| bad("component has no code")))
        .transpose()?;
    let level = match sub(ext, "type")
        .and_then(|e| e["valueCodeableConcept"]["coding"].as_array())
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["system"].as_str() == Some(RANGE_TYPE_SYSTEM))
        })
        .and_then(|c| c["code"].as_str())
    {
        Some("RAL") => Level::Red,
        Some("GAL") => Level::Yellow,
        _ => return Err(bad("type must be RAL or GAL")),
    };
    let mut unit: Option<String> = None;
    let mut limit = |name: &str| -> Result<Option<(f64, Value)>, PlanError> {
        let Some(e) = sub(ext, name) else {
            return Ok(None);
        };
        let q = &e["valueQuantity"];
        let v = q["value"]
            .as_f64()
            .ok_or_else(|| bad(&format!("{name} has no value")))?;
        let code = str_of(&q["code"]).ok_or_else(|| bad(&format!("{name} has no UCUM code")))?;
        match &unit {
            Some(u) if *u != code => return Err(bad("low and high differ in unit")),
            _ => unit = Some(code),
        }
        Ok(Some((v, q.clone())))
    };
    let low = limit("low")?;
    let high = limit("high")?;
    let unit = unit.ok_or_else(|| bad("has neither low nor high"))?;
    if let (Some((l, _)), Some((h, _))) = (&low, &high)
        && l > h
    {
        return Err(bad("low is above high"));
    }
    Ok(AlertRange {
        component,
        level,
        low,
        high,
        unit,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use chrono_tz::Europe::Oslo;

    use super::*;

    /// The worked example from the design notes, with a second (weekly SpO2) regime.
    pub(crate) fn example_bundle() -> Value {
        serde_json::json!({
          "resourceType": "Bundle", "type": "collection",
          "entry": [
            { "fullUrl": "https://plan.example.no/fhir/CarePlan/cp-123",
              "resource": {
                "resourceType": "CarePlan", "id": "cp-123", "meta": {"versionId": "17"},
                "status": "active", "intent": "plan",
                "subject": {"reference": "Patient/p-8f2c"},
                "period": {"start": "2026-01-01T00:00:00+01:00", "end": "2026-12-31T23:59:59+01:00"},
                "activity": [
                  {"reference": {"reference": "ServiceRequest/sr-bp"}},
                  {"reference": {"reference": "ServiceRequest/sr-spo2"}} ] } },
            { "fullUrl": "https://plan.example.no/fhir/ServiceRequest/sr-bp",
              "resource": {
                "resourceType": "ServiceRequest", "id": "sr-bp", "meta": {"versionId": "4"},
                "status": "active", "intent": "order",
                "subject": {"reference": "Patient/p-8f2c"},
                "code": {"coding": [
                  {"system": "http://loinc.org", "code": "85354-9"},
                  {"system": "urn:iso:std:iso:11073:10101", "code": "150020"}]},
                "occurrenceTiming": {"repeat": {
                  "frequency": 1, "period": 1, "periodUnit": "d", "timeOfDay": ["08:00:00"] }},
                "extension": [
                  {"url": WINDOW_EXT, "extension": [
                     {"url": "before", "valueDuration": {"value": 60, "code": "min"}},
                     {"url": "after",  "valueDuration": {"value": 120, "code": "min"}},
                     {"url": "grace",  "valueDuration": {"value": 30, "code": "min"}}]},
                  {"url": RANGE_EXT, "extension": [
                     {"url": "component", "valueCoding": {"system": "http://loinc.org", "code": "8480-6"}},
                     {"url": "type", "valueCodeableConcept": {"coding": [{"system": RANGE_TYPE_SYSTEM, "code": "RAL"}]}},
                     {"url": "low",  "valueQuantity": {"value": 90,  "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                     {"url": "high", "valueQuantity": {"value": 180, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]},
                  {"url": RANGE_EXT, "extension": [
                     {"url": "component", "valueCoding": {"system": "http://loinc.org", "code": "8480-6"}},
                     {"url": "type", "valueCodeableConcept": {"coding": [{"system": RANGE_TYPE_SYSTEM, "code": "GAL"}]}},
                     {"url": "low",  "valueQuantity": {"value": 100, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                     {"url": "high", "valueQuantity": {"value": 160, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]} ] } },
            { "fullUrl": "https://plan.example.no/fhir/ServiceRequest/sr-spo2",
              "resource": {
                "resourceType": "ServiceRequest", "id": "sr-spo2", "meta": {"versionId": "2"},
                "status": "active", "intent": "order",
                "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}]},
                "occurrenceTiming": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "wk"}},
                "extension": [
                  {"url": RANGE_EXT, "extension": [
                     {"url": "type", "valueCodeableConcept": {"coding": [{"system": RANGE_TYPE_SYSTEM, "code": "RAL"}]}},
                     {"url": "low",  "valueQuantity": {"value": 88, "unit": "%", "code": "%"}}]},
                  {"url": RANGE_EXT, "extension": [
                     {"url": "type", "valueCodeableConcept": {"coding": [{"system": RANGE_TYPE_SYSTEM, "code": "GAL"}]}},
                     {"url": "low",  "valueQuantity": {"value": 92, "unit": "%", "code": "%"}}]} ] } }
          ]
        })
    }

    fn parse(v: &Value) -> Result<Plan, PlanError> {
        Plan::parse(&serde_json::to_vec(v).unwrap(), Oslo, "p-8f2c")
    }

    #[test]
    fn parses_the_design_example() {
        let p = parse(&example_bundle()).unwrap();
        assert_eq!((p.id.as_str(), p.version.as_str()), ("cp-123", "17"));
        assert_eq!(p.requests.len(), 2);
        let bp = p.request("sr-bp").unwrap();
        assert_eq!(bp.kind, Kind::BloodPressure);
        assert_eq!(bp.version, "4");
        assert_eq!(bp.schedule.tolerance.after, Duration::minutes(120));
        assert_eq!(bp.ranges.len(), 2);
        assert_eq!(bp.ranges[0].level, Level::Red);
        assert_eq!(bp.ranges[1].low.as_ref().unwrap().0, 100.0);
        assert!(bp.schedule.not_before.is_some());
        let spo2 = p.request("sr-spo2").unwrap();
        assert_eq!(
            spo2.schedule.timing,
            Timing::PerPeriod {
                count: 2,
                unit: PeriodUnit::Week
            }
        );
    }

    #[test]
    fn unsupported_timing_forms_are_refused() {
        for (patch, what) in [
            (
                serde_json::json!({"repeat": {"frequency": 1, "period": 2, "periodUnit": "d"}}),
                "period other than 1",
            ),
            (
                serde_json::json!({"repeat": {"frequency": 1, "period": 1, "periodUnit": "mo"}}),
                "periodUnit",
            ),
            (
                serde_json::json!({"repeat": {"when": ["MORN"], "period": 1, "periodUnit": "d"}}),
                "when",
            ),
            (serde_json::json!({"code": {"text": "BID"}}), "Timing.code"),
            (
                serde_json::json!({"repeat": {"timeOfDay": ["08:00:00"], "period": 1, "periodUnit": "wk"}}),
                "weekly timeOfDay",
            ),
        ] {
            let mut b = example_bundle();
            b["entry"][1]["resource"]["occurrenceTiming"] = patch;
            match parse(&b) {
                Err(PlanError::UnsupportedTiming { request, detail }) => {
                    assert_eq!(request, "sr-bp");
                    assert!(detail.contains(what), "{detail} vs {what}");
                }
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn other_patient_and_broken_documents_are_malformed() {
        let mut b = example_bundle();
        b["entry"][0]["resource"]["subject"]["reference"] = "Patient/someone-else".into();
        assert!(matches!(parse(&b), Err(PlanError::Malformed(_))));
        assert!(matches!(
            Plan::parse(b"{", Oslo, "p-8f2c"),
            Err(PlanError::Malformed(_))
        ));
        let mut b = example_bundle();
        b["entry"][1]["resource"]["extension"][1]["extension"]
            .as_array_mut()
            .unwrap()
            .remove(0);
        assert!(matches!(parse(&b), Err(PlanError::Malformed(m)) if m.contains("component")));
    }
}
