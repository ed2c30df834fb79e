//! The stateful care plan against real SQLite files (and, for `kill -9`, a real child process).

use std::io::BufRead;
use std::path::Path;

use chrono::{Duration as CDuration, Timelike};
use chrono_tz::Europe::Oslo;
use heim_shared_types::{DeviceId, DeviceTime, GatewayTime, Measurement, Quantity, Reading, Unit};
use serde_json::json;

use super::envelope::signer::Signer;
use super::plan::tests::example_bundle;
use super::*;
use crate::clock::SyncPolicy;
use crate::store::{Body, Options};

const GW: &str = "gw-1";
const PATIENT: &str = "p-8f2c";

fn open_outbox(dir: &Path) -> (Outbox, std::thread::JoinHandle<()>) {
    Outbox::open(Options {
        path: dir.join("heim.db"),
        max_bytes: 1 << 32,
        write_batch: 1024,
    })
    .unwrap()
}

fn settings(signer: &Signer) -> Settings {
    let mut keys = TrustedKeys::default();
    keys.add_pem("plan-k1", signer.public_pem().as_bytes(), "test")
        .unwrap();
    Settings {
        gateway_id: GW.into(),
        patient: PATIENT.into(),
        keys,
        evaluate_every: Duration::from_secs(30),
    }
}

/// The design example, with the plan period around now and the BP time of day at `bp_at`
/// (local Oslo wall time).
fn bundle_with_bp_at(bp_at: DateTime<Utc>) -> Vec<u8> {
    let mut b = example_bundle();
    let now = Utc::now();
    b["entry"][0]["resource"]["period"] = json!({
        "start": (now - CDuration::days(30)).to_rfc3339(),
        "end": (now + CDuration::days(30)).to_rfc3339(),
    });
    let local = bp_at.with_timezone(&Oslo);
    b["entry"][1]["resource"]["occurrenceTiming"]["repeat"]["timeOfDay"] = json!([format!(
        "{:02}:{:02}:{:02}",
        local.hour(),
        local.minute(),
        local.second()
    )]);
    serde_json::to_vec(&b).unwrap()
}

/// Only the BP regime (so no weekly SpO2 window can fall due inside a test's span).
fn bp_only(bundle: Vec<u8>) -> Vec<u8> {
    let mut b: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    b["entry"].as_array_mut().unwrap().truncate(2);
    serde_json::to_vec(&b).unwrap()
}

fn envelope(signer: &Signer, kid: &str, aud: &str, seq: u64, exp: i64, bundle: &[u8]) -> String {
    signer.sign_compact(
        &json!({"alg":"ES256","typ":envelope::TYP,"kid":kid,"aud":aud,"seq":seq,"exp":exp,"tz":"Europe/Oslo"}),
        bundle,
    )
}

fn in_a_day() -> i64 {
    (Utc::now() + CDuration::days(1)).timestamp()
}

fn bp_reading(n: u64, systolic: i32, taken: DateTime<Utc>) -> Reading {
    Reading {
        id: crate::reading_id::derive("careplan-test", &[&n.to_be_bytes()]),
        device: DeviceId::Ble([0xA0, 1, 2, 3, 4, 5]),
        device_time: Some(DeviceTime::UnixMillis(taken.timestamp_millis())),
        device_time_trusted: true,
        received: GatewayTime {
            unix_millis: taken.timestamp_millis(),
            synchronized: true,
        },
        measurement: Measurement::BloodPressure {
            systolic: Quantity::new(systolic, 0, Unit::MillimetreOfMercury),
            diastolic: Quantity::new(80, 0, Unit::MillimetreOfMercury),
            mean: Quantity::new(95, 0, Unit::MillimetreOfMercury),
        },
    }
}

async fn close(cp: Careplan, outbox: Outbox, writer: std::thread::JoinHandle<()>) {
    drop(cp);
    outbox.flush().await.unwrap();
    drop(outbox);
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
}

async fn events(outbox: &Outbox) -> Vec<(Lane, serde_json::Value)> {
    outbox
        .fetch([0, 0], 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.body {
            Body::Event { topic, payload } if topic == "events" => {
                Some((r.lane, serde_json::from_slice(&payload).unwrap()))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn plan_accepted_or_refused_with_a_status_message_per_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (outbox, writer) = open_outbox(dir.path());
    let signer = Signer::generate();
    let cp = Careplan::open(
        settings(&signer),
        outbox.clone(),
        Clock::new(SyncPolicy::Always),
    )
    .await
    .unwrap();
    assert!(cp.plan().is_none());
    let bundle = bundle_with_bp_at(Utc::now());

    let good = envelope(&signer, "plan-k1", GW, 17, in_a_day(), &bundle);
    let StatusMessage(s) = cp.intake(good.as_bytes()).await.unwrap();
    assert_eq!(s["status"], "applied");
    assert_eq!(s["plan_id"], "cp-123");
    assert_eq!(s["seq"], 17);
    assert_eq!(cp.plan().unwrap().requests.len(), 2);

    let mallory = Signer::generate();
    let mut tampered: Vec<&str> = good.split('.').collect();
    let other_payload = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        bundle_with_bp_at(Utc::now() + CDuration::hours(3)),
    );
    tampered[1] = &other_payload;
    let mut unsupported = example_bundle();
    unsupported["entry"][2]["resource"]["occurrenceTiming"]["repeat"]["when"] = json!(["MORN"]);
    let cases = [
        (tampered.join("."), "bad-signature"),
        (
            envelope(&mallory, "plan-k1", GW, 18, in_a_day(), &bundle),
            "bad-signature",
        ),
        (
            envelope(&signer, "plan-k2", GW, 18, in_a_day(), &bundle),
            "unknown-key",
        ),
        (
            envelope(&signer, "plan-k1", "gw-2", 18, in_a_day(), &bundle),
            "wrong-audience",
        ),
        (
            envelope(
                &signer,
                "plan-k1",
                GW,
                18,
                Utc::now().timestamp() - 5,
                &bundle,
            ),
            "expired",
        ),
        (
            envelope(&signer, "plan-k1", GW, 16, in_a_day(), &bundle),
            "rollback",
        ),
        (
            envelope(&signer, "plan-k1", GW, 17, in_a_day(), &bundle),
            "rollback",
        ),
        (
            envelope(
                &signer,
                "plan-k1",
                GW,
                18,
                in_a_day(),
                &serde_json::to_vec(&unsupported).unwrap(),
            ),
            "unsupported-timing",
        ),
        ("not a jws".to_owned(), "malformed"),
    ];
    for (env, reason) in &cases {
        let StatusMessage(s) = cp.intake(env.as_bytes()).await.unwrap();
        assert_eq!(s["status"], "rejected", "{reason}: {s}");
        assert_eq!(s["reason"], *reason, "{s}");
        assert!(s["detail"].as_str().is_some_and(|d| !d.is_empty()));
        // The plan in force is unchanged and named in the status.
        assert_eq!(s["applied_seq"], 17);
        assert_eq!(cp.plan().unwrap().id, "cp-123");
    }
    // The retained plan redelivered on reconnect is not a rollback.
    let StatusMessage(s) = cp.intake(good.as_bytes()).await.unwrap();
    assert_eq!(s["status"], "applied");
    // A newer plan replaces it; `heim status` shows it.
    let newer = envelope(&signer, "plan-k1", GW, 18, in_a_day(), &bundle);
    assert_eq!(cp.intake(newer.as_bytes()).await.unwrap().0["seq"], 18);
    let st = cp.status().borrow().clone();
    assert_eq!(st["careplan"]["plan"]["seq"], 18);
    assert_eq!(st["careplan"]["counters"]["refused"], cases.len());
    assert_eq!(st["careplan"]["measurements"][0]["request"], "sr-bp");
    assert!(st["careplan"]["measurements"][0]["next_window"]["start"].is_string());
    // An empty payload clears the plan, and the cleared plan's envelope cannot come back.
    assert_eq!(cp.intake(b"").await.unwrap().0["status"], "cleared");
    assert!(cp.plan().is_none());
    let s = cp.intake(newer.as_bytes()).await.unwrap().0;
    assert_eq!(s["reason"], "rollback");
    assert!(cp.plan().is_none());
    close(cp, outbox, writer).await;
}

#[tokio::test]
async fn missed_window_while_stopped_gives_exactly_one_detected_issue() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let start = Utc::now().with_nanosecond(0).unwrap();
    // BP due at start + 1 h (window start .. start + 3 h, grace 30 min).
    let bundle = bp_only(bundle_with_bp_at(start + CDuration::hours(1)));
    let env = envelope(&signer, "plan-k1", GW, 1, in_a_day(), &bundle);
    {
        let (outbox, writer) = open_outbox(dir.path());
        let cp = Careplan::open(
            settings(&signer),
            outbox.clone(),
            Clock::new(SyncPolicy::Always),
        )
        .await
        .unwrap();
        cp.intake(env.as_bytes()).await.unwrap();
        assert_eq!(cp.evaluate().await.unwrap(), 0);
        close(cp, outbox, writer).await;
    }
    // Stopped through the window. At restart the clock is not yet synchronised: nothing is judged.
    {
        let (outbox, writer) = open_outbox(dir.path());
        let cp = Careplan::open(
            settings(&signer),
            outbox.clone(),
            Clock::new(SyncPolicy::Never),
        )
        .await
        .unwrap();
        assert_eq!(cp.plan().unwrap().id, "cp-123");
        assert_eq!(cp.evaluate().await.unwrap(), 0);
        assert!(events(&outbox).await.is_empty());
        assert_eq!(
            cp.status().borrow()["careplan"]["judging"],
            "paused: clock not synchronised"
        );
        close(cp, outbox, writer).await;
    }
    let later = start + CDuration::hours(4);
    {
        let (outbox, writer) = open_outbox(dir.path());
        let cp = Careplan::open(
            settings(&signer),
            outbox.clone(),
            Clock::new(SyncPolicy::Always),
        )
        .await
        .unwrap();
        assert_eq!(cp.evaluate_at(later).await.unwrap(), 1);
        let ev = events(&outbox).await;
        assert_eq!(ev.len(), 1);
        let (lane, issue) = &ev[0];
        assert_eq!(*lane, Lane::Priority);
        assert_eq!(issue["resourceType"], "DetectedIssue");
        let window_start = timing::local_rfc3339(Oslo, start);
        assert_eq!(
            issue["identifier"][0]["value"],
            format!("{GW}|sr-bp|4|{window_start}")
        );
        assert_eq!(issue["implicated"][0]["reference"], "ServiceRequest/sr-bp");
        let st = cp.status().borrow().clone();
        assert_eq!(st["careplan"]["open_alerts"]["missed_24h"], 1);
        close(cp, outbox, writer).await;
    }
    // A second restart judges nothing again.
    {
        let (outbox, writer) = open_outbox(dir.path());
        let cp = Careplan::open(
            settings(&signer),
            outbox.clone(),
            Clock::new(SyncPolicy::Always),
        )
        .await
        .unwrap();
        assert_eq!(cp.evaluate_at(later).await.unwrap(), 0);
        assert_eq!(
            cp.evaluate_at(later + CDuration::minutes(5)).await.unwrap(),
            0
        );
        assert_eq!(events(&outbox).await.len(), 1);
        close(cp, outbox, writer).await;
    }
}

#[tokio::test]
async fn a_reading_in_the_window_prevents_the_issue_and_a_second_is_extra() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let start = Utc::now().with_nanosecond(0).unwrap();
    let bundle = bp_only(bundle_with_bp_at(start + CDuration::hours(1)));
    let (outbox, writer) = open_outbox(dir.path());
    let cp = Careplan::open(
        settings(&signer),
        outbox.clone(),
        Clock::new(SyncPolicy::Always),
    )
    .await
    .unwrap();
    cp.intake(envelope(&signer, "plan-k1", GW, 1, in_a_day(), &bundle).as_bytes())
        .await
        .unwrap();
    let tapped = outbox.with_tap(cp.tap());
    let t = start + CDuration::minutes(70);
    tapped
        .append(Append::readings(
            vec![
                bp_reading(1, 120, t),
                bp_reading(2, 121, t + CDuration::minutes(1)),
            ],
            None,
        ))
        .await
        .unwrap();
    let ids = vec![bp_reading(1, 0, t).id, bp_reading(2, 0, t).id];
    let l = links(&outbox, ids.clone()).await.unwrap();
    assert_eq!(l[&ids[0]].window_status, link::WindowStatus::Resolved);
    assert_eq!(l[&ids[1]].window_status, link::WindowStatus::Extra);
    let f = serde_json::Value::Object(l[&ids[0]].to_fhir_fields());
    assert_eq!(f["basedOn"][0]["reference"], "ServiceRequest/sr-bp");
    assert_eq!(
        f["component"][0]["interpretation"][0]["coding"][0]["code"],
        "N"
    );
    // Re-sent after a crash (same id): the first link stands, nothing is counted twice.
    tapped
        .append(Append::readings(vec![bp_reading(1, 120, t)], None))
        .await
        .unwrap();
    assert_eq!(
        links(&outbox, vec![ids[0]]).await.unwrap()[&ids[0]].window_status,
        link::WindowStatus::Resolved
    );
    assert_eq!(
        cp.evaluate_at(start + CDuration::hours(4)).await.unwrap(),
        0
    );
    assert!(events(&outbox).await.is_empty());
    drop(tapped);
    close(cp, outbox, writer).await;
}

#[tokio::test]
async fn red_reading_leaves_before_a_routine_backlog_of_100k() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let now = Utc::now();
    let (outbox, writer) = open_outbox(dir.path());
    let cp = Careplan::open(
        settings(&signer),
        outbox.clone(),
        Clock::new(SyncPolicy::Always),
    )
    .await
    .unwrap();
    cp.intake(
        envelope(
            &signer,
            "plan-k1",
            GW,
            1,
            in_a_day(),
            &bundle_with_bp_at(now),
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let tapped = outbox.with_tap(cp.tap());
    // 100,000 routine readings (normal values) queued while offline.
    for chunk in 0..100u64 {
        let batch: Vec<Reading> = (0..1000u64)
            .map(|i| bp_reading(10 + chunk * 1000 + i, 120, now))
            .collect();
        tapped.append(Append::readings(batch, None)).await.unwrap();
    }
    assert_eq!(outbox.stats().borrow().pending, 100_000);
    // Then a red one (systolic 195 > 180).
    let red = bp_reading(1, 195, now);
    tapped
        .append(Append::readings(vec![red], None))
        .await
        .unwrap();
    // What the uplink sends first on reconnect: the priority lane.
    let first = outbox.fetch([0, 0], 3).await.unwrap();
    assert_eq!(first[0].lane, Lane::Priority);
    assert_eq!(first[0].body, Body::Reading(red));
    let Body::Event { topic, payload } = &first[1].body else {
        panic!("{:?}", first[1])
    };
    assert_eq!(topic, "events");
    let alert: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(alert["level"], "red");
    assert_eq!(alert["basedOn"], "ServiceRequest/sr-bp");
    assert_eq!(alert["components"][0]["interpretation"], "HH");
    assert_eq!(first[2].lane, Lane::Routine);
    let st = cp.status().borrow().clone();
    assert_eq!(st["careplan"]["open_alerts"]["red_24h"], 1);
    assert_eq!(st["alarms"][0], "careplan_red_reading");
    drop(tapped);
    close(cp, outbox, writer).await;
}

/// Runs in a child process for `plan_survives_kill_9`: applies the plan in `HEIM_CP_ENVELOPE`
/// to the store in `HEIM_CP_DIR`, says so, and waits to be killed.
#[tokio::test]
#[ignore = "helper: run as a child process by plan_survives_kill_9"]
async fn kill9_child() {
    let (Ok(dir), Ok(env), Ok(pem)) = (
        std::env::var("HEIM_CP_DIR"),
        std::env::var("HEIM_CP_ENVELOPE"),
        std::env::var("HEIM_CP_PEM"),
    ) else {
        return;
    };
    let mut keys = TrustedKeys::default();
    keys.add_pem("plan-k1", pem.as_bytes(), "env").unwrap();
    let (outbox, _writer) = open_outbox(Path::new(&dir));
    let cp = Careplan::open(
        Settings {
            gateway_id: GW.into(),
            patient: PATIENT.into(),
            keys,
            evaluate_every: Duration::from_secs(30),
        },
        outbox.clone(),
        Clock::new(SyncPolicy::Always),
    )
    .await
    .unwrap();
    let s = cp.intake(env.as_bytes()).await.unwrap().0;
    println!("CHILD-STATUS {}", s["status"].as_str().unwrap_or("?"));
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test]
async fn plan_survives_kill_9_and_rollback_is_refused_after() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    let bundle = bundle_with_bp_at(Utc::now());
    let v5 = envelope(&signer, "plan-k1", GW, 5, in_a_day(), &bundle);
    let v4 = envelope(&signer, "plan-k1", GW, 4, in_a_day(), &bundle);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "careplan::tests::kill9_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("HEIM_CP_DIR", dir.path())
        .env("HEIM_CP_ENVELOPE", &v5)
        .env("HEIM_CP_PEM", signer.public_pem())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.find("CHILD-STATUS").map(|i| l[i..].to_owned()))
    })
    .await
    .unwrap();
    assert_eq!(line.as_deref(), Some("CHILD-STATUS applied"));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let (outbox, writer) = open_outbox(dir.path());
    let cp = Careplan::open(
        settings(&signer),
        outbox.clone(),
        Clock::new(SyncPolicy::Always),
    )
    .await
    .unwrap();
    let plan = cp.plan().expect("the plan survived kill -9");
    assert_eq!(plan.id, "cp-123");
    assert_eq!(cp.status().borrow()["careplan"]["plan"]["seq"], 5);
    // The broker now hands out an older retained plan: refused, plan 5 stays.
    let s = cp.intake(v4.as_bytes()).await.unwrap().0;
    assert_eq!(
        (s["status"].as_str(), s["reason"].as_str()),
        (Some("rejected"), Some("rollback"))
    );
    assert_eq!(s["seq"], 4);
    assert_eq!(cp.status().borrow()["careplan"]["plan"]["seq"], 5);
    close(cp, outbox, writer).await;
}

#[tokio::test]
async fn a_key_removed_from_the_config_revokes_the_stored_plan() {
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::generate();
    {
        let (outbox, writer) = open_outbox(dir.path());
        let cp = Careplan::open(
            settings(&signer),
            outbox.clone(),
            Clock::new(SyncPolicy::Always),
        )
        .await
        .unwrap();
        let env = envelope(
            &signer,
            "plan-k1",
            GW,
            3,
            in_a_day(),
            &bundle_with_bp_at(Utc::now()),
        );
        cp.intake(env.as_bytes()).await.unwrap();
        close(cp, outbox, writer).await;
    }
    let (outbox, writer) = open_outbox(dir.path());
    let other = Signer::generate();
    let cp = Careplan::open(
        settings(&other),
        outbox.clone(),
        Clock::new(SyncPolicy::Always),
    )
    .await
    .unwrap();
    assert!(cp.plan().is_none());
    // Readings still flow through the tap, unlinked.
    let tapped = outbox.with_tap(cp.tap());
    tapped
        .append(Append::readings(vec![bp_reading(1, 200, Utc::now())], None))
        .await
        .unwrap();
    let rows = outbox.fetch([0, 0], 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].lane, Lane::Routine);
    drop(tapped);
    close(cp, outbox, writer).await;
}
