//! Missed measurements: which windows fall due (end + grace) in a span of time, and the FHIR
//! `DetectedIssue` for one that got too few readings.
//!
//! Judging happens over a half-open span `(from, to]` of due instants, and the caller persists `to`
//! in the same transaction as the issues it raised, so every window is judged exactly once however
//! often the gateway stops and starts. The caller must only judge while the clock is synchronised:
//! an unsynchronised Pi may think it is 1970 (nothing due) or next year (everything missed).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::plan::{Plan, Request};
use super::timing::{Timing, Window, local_rfc3339};

/// Identifier system of missed-window DetectedIssues.
pub const MISSED_SYSTEM: &str = "https://heim.example/id/missed-window";

/// A window that falls due.
#[derive(Debug, Clone, PartialEq)]
pub struct Due<'a> {
    /// Its regime.
    pub request: &'a Request,
    /// The window.
    pub window: Window,
}

/// Every window whose due instant (end + grace) lies in `(from, to]`, in due order.
pub fn due_between(plan: &Plan, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Due<'_>> {
    let mut out = Vec::new();
    if to <= from {
        return out;
    }
    for req in &plan.requests {
        let grace = req.schedule.tolerance.grace;
        for w in req.schedule.windows(plan.tz, from - grace, to) {
            let due = w.end + grace;
            if from < due && due <= to {
                out.push(Due {
                    request: req,
                    window: w,
                });
            }
        }
    }
    out.sort_by_key(|d| {
        (
            d.window.end + d.request.schedule.tolerance.grace,
            d.window.start,
        )
    });
    out
}

/// The idempotent identifier value: gateway + ServiceRequest + version + window start.
pub fn issue_identifier(gateway_id: &str, d: &Due<'_>, plan: &Plan) -> String {
    format!(
        "{gateway_id}|{}|{}|{}",
        d.request.id,
        d.request.version,
        local_rfc3339(plan.tz, d.window.start)
    )
}

/// The DetectedIssue for a window with `received` of its expected readings.
pub fn detected_issue(
    gateway_id: &str,
    patient: &str,
    plan: &Plan,
    d: &Due<'_>,
    received: u32,
) -> Value {
    let start = local_rfc3339(plan.tz, d.window.start);
    let end = local_rfc3339(plan.tz, d.window.end);
    let what = d.request.kind.name().replace('_', " ");
    let grace_min = d.request.schedule.tolerance.grace.num_minutes();
    let detail = match d.request.schedule.timing {
        Timing::TimesOfDay { .. } => format!(
            "No {what} reading received for window {start} – {end} (grace {grace_min} min)."
        ),
        Timing::PerPeriod { .. } => format!(
            "{received} of {} expected {what} readings received for {start} – {end} (grace {grace_min} min).",
            d.window.expected
        ),
    };
    json!({
        "resourceType": "DetectedIssue",
        "identifier": [{"system": MISSED_SYSTEM, "value": issue_identifier(gateway_id, d, plan)}],
        "status": "final",
        "code": {"coding": [{
            "system": "https://heim.example/CodeSystem/gateway-event",
            "code": "missing-measurement",
            "display": "Expected measurement not received in window"}]},
        "severity": "moderate",
        "patient": {"reference": format!("Patient/{patient}")},
        "identifiedPeriod": {"start": start, "end": end},
        "author": {"identifier": {"system": "urn:heim:gateway", "value": gateway_id}},
        "implicated": [{"reference": format!("ServiceRequest/{}", d.request.id)}],
        "detail": detail,
    })
}

#[cfg(test)]
mod tests {
    use chrono_tz::Europe::Oslo;

    use super::*;
    use crate::careplan::plan::tests::example_bundle;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn windows_fall_due_once_across_adjacent_spans() {
        let p = Plan::parse(
            &serde_json::to_vec(&example_bundle()).unwrap(),
            Oslo,
            "p-8f2c",
        )
        .unwrap();
        // BP window 07:00–10:00, due 10:30 daily; SpO2 weekly, due Monday 00:30.
        let a = utc("2026-05-03T12:00:00+02:00");
        let b = utc("2026-05-04T10:30:00+02:00");
        let c = utc("2026-05-05T12:00:00+02:00");
        let first = due_between(&p, a, b);
        let second = due_between(&p, b, c);
        let ids: Vec<String> = first
            .iter()
            .chain(&second)
            .map(|d| issue_identifier("gw-1", d, &p))
            .collect();
        assert_eq!(
            ids,
            [
                "gw-1|sr-spo2|2|2026-04-27T00:00:00+02:00",
                "gw-1|sr-bp|4|2026-05-04T07:00:00+02:00",
                "gw-1|sr-bp|4|2026-05-05T07:00:00+02:00",
            ]
        );
        // The whole span at once gives the same set (restart after a long stop).
        assert_eq!(due_between(&p, a, c).len(), 3);
        let issue = detected_issue("gw-1", "p-8f2c", &p, &first[1], 0);
        assert_eq!(
            issue["identifiedPeriod"]["end"],
            "2026-05-04T10:00:00+02:00"
        );
        assert_eq!(issue["implicated"][0]["reference"], "ServiceRequest/sr-bp");
        assert_eq!(issue["patient"]["reference"], "Patient/p-8f2c");
        assert_eq!(
            issue["detail"],
            "No blood pressure reading received for window 2026-05-04T07:00:00+02:00 – 2026-05-04T10:00:00+02:00 (grace 30 min)."
        );
    }
}
