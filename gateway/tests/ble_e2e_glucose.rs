//! End to end: a glucose meter with 50 stored records drops the link after 20 (out of range),
//! comes back, and the gateway resumes at record 21 through RACP ("sequence number ≥ 21"); every
//! record is stored exactly once, and a later session (a restarted gateway) asks for ≥ 51 and
//! stores nothing new.

mod ble_sim;

use std::collections::BTreeSet;

use ble_sim::{FakeBluez, Gateway, eventually, fast_config, open_outbox, readings, register};
use heim::sources::ble::registry::{DeviceKind, parse_address};
use heim::sources::ble::source::cursor_key;
use heim_shared_types::{Decimal, DeviceTime, GlucoseSample, Measurement, Quantity, Unit, Value};
use serde_json::json;

const METER: &str = "C0:FF:EE:00:18:08";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glucose_backfill_resumes_after_link_loss_without_duplicates() {
    let fake = FakeBluez::start(json!({
        "devices": [{
            "address": METER, "name": "Meter-Sim", "kind": "glucose", "services": ["1808"],
            "stored_records": 50, "drop_after_records": 20, "away_ms": 400, "battery": 80
        }]
    }));
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    register(&outbox, METER, DeviceKind::Glucose).await;
    let cfg = heim::sources::ble::BleConfig {
        // Scanner restarts are not under test here.
        scan_stall_s: 60,
        ..fast_config()
    };
    let gw = Gateway::start(dir, outbox.clone(), cfg.clone());

    let got = eventually(20, "50 glucose readings", || async {
        let r = readings(&outbox).await;
        (r.len() >= 50).then_some(r)
    })
    .await;

    // The first session asked for everything, the link dropped after 20 records, the meter came
    // back, and the second session asked for ≥ 21.
    let requests: Vec<String> = fake
        .events_of("write", Some(METER))
        .into_iter()
        .filter(|e| e["char"] == "2a52")
        .map(|e| e["hex"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(requests[0], "0101");
    assert_eq!(requests[1], "0103011500", "resume at sequence number 21");
    assert_eq!(fake.events_of("link_lost", Some(METER)).len(), 1);
    assert_eq!(fake.events_of("back", Some(METER)).len(), 1);
    let sent: usize = fake
        .events_of("notify", Some(METER))
        .iter()
        .filter(|e| e["char"] == "2a18")
        .count();
    assert_eq!(sent, 50, "the meter sent each record once");

    gw.stop().await;
    let got_after = readings(&outbox).await;
    assert_eq!(got_after.len(), 50, "nothing more arrived");
    let ids: BTreeSet<_> = got.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 50, "50 distinct readings");
    // Record n carries 90 + n mg/dL (see fake_bluez.py): each value exactly once, in order.
    let values: Vec<i32> = got
        .iter()
        .map(|r| match r.measurement {
            Measurement::BloodGlucose {
                glucose:
                    Quantity {
                        value:
                            Value::Number(Decimal {
                                mantissa,
                                exponent: 0,
                            }),
                        unit: Unit::MilligramPerDecilitre,
                    },
                sample: Some(GlucoseSample::CapillaryWholeBlood),
            } => mantissa,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(values, (91..=140).collect::<Vec<_>>());
    assert!(got.iter().all(|r| r.device_time_trusted
        && matches!(r.device_time, Some(DeviceTime::Local(t)) if t.year == 2024)));
    assert_eq!(
        outbox
            .cursor(&cursor_key(&parse_address(METER).unwrap()))
            .await
            .unwrap(),
        Some(50u16.to_le_bytes().to_vec())
    );

    // A restarted gateway resumes from the persisted cursor: "≥ 51", no records, no duplicates.
    let racp_writes = || -> Vec<String> {
        fake.events_of("write", Some(METER))
            .into_iter()
            .filter(|e| e["char"] == "2a52")
            .map(|e| e["hex"].as_str().unwrap().to_owned())
            .collect()
    };
    let before = racp_writes().len();
    let answered_before = fake.events_of("racp_report", Some(METER)).len();
    let dir2 = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir2, outbox.clone(), cfg);
    eventually(15, "the meter to answer a new request", || async {
        (fake.events_of("racp_report", Some(METER)).len() > answered_before).then_some(())
    })
    .await;
    let after = racp_writes();
    assert_eq!(after[before], "0103013300", "resume at 51: {after:?}");
    let reports = fake.events_of("racp_report", Some(METER));
    let from51 = reports.iter().find(|r| r["from_seq"] == 51).unwrap();
    assert_eq!(from51["count"], 0, "{reports:?}");
    // Nothing new: the gateway checks the meter's newest record (50, not below its cursor, so
    // no numbering restart) and stops there.
    eventually(5, "the newest-record check", || async {
        (racp_writes().len() > before + 1).then_some(())
    })
    .await;
    let after = racp_writes();
    assert_eq!(after[before + 1..], ["0106"], "{after:?}");
    gw.stop().await;
    assert_eq!(readings(&outbox).await.len(), 50);
    drop(fake);
}
