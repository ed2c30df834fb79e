//! Scanner-stall recovery that fails: the controller stays wedged through power cycles. The
//! gateway keeps running, shows `scanner.state = "alarm"` in its status and stores one durable
//! alarm event (priority lane) for the status topic.

mod ble_sim;

use ble_sim::{FakeBluez, Gateway, eventually, fast_config, open_outbox, rows};
use heim::store::{Body, Lane};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scanner_that_cannot_be_recovered_raises_an_alarm() {
    let fake = FakeBluez::start(json!({"wedged": true, "wedge_permanent": true, "devices": []}));
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    let gw = Gateway::start(dir, outbox.clone(), fast_config());

    let alarm = eventually(15, "an alarm event", || async {
        rows(&outbox).await.into_iter().find_map(|r| match r.body {
            Body::Event { topic, payload } if topic == "alarms" => Some((r.lane, payload)),
            _ => None,
        })
    })
    .await;
    assert_eq!(alarm.0, Lane::Priority);
    let payload: serde_json::Value = serde_json::from_slice(&alarm.1).unwrap();
    assert_eq!(payload["type"], "ble_scanner_stalled");
    assert_eq!(gw.detail("scanner")["state"], "alarm");
    assert_eq!(
        gw.alarms.borrow()["alarms"],
        json!(["ble_scanner_stalled"]),
        "the alarm goes on the status topic"
    );
    assert!(
        fake.events_of("powered", None).len() >= 6,
        "three power cycles were tried"
    );

    // It keeps trying, but raises the alarm once.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let alarms = rows(&outbox)
        .await
        .into_iter()
        .filter(|r| matches!(&r.body, Body::Event { topic, .. } if topic == "alarms"))
        .count();
    assert_eq!(alarms, 1);
    gw.stop().await;
    drop(fake);
}
