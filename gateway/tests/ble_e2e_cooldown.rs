//! A registered device that keeps advertising with nothing to send is not reconnected over and
//! over (its battery would drain): after an empty session the gateway leaves it alone for
//! `cooldown_ms`, then tries again.

mod ble_sim;

use std::time::Duration;

use ble_sim::{FakeBluez, Gateway, eventually, fast_config, open_outbox, register};
use heim::sources::ble::registry::DeviceKind;
use serde_json::json;

const SCALE: &str = "C0:FF:EE:00:18:1D";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_session_cools_down() {
    let fake = FakeBluez::start(json!({
        "devices": [{
            "address": SCALE, "kind": "scale", "services": ["181d"],
            // Advertises every 30 ms forever, with nothing to send.
            "advertise_every_ms": 30, "advertise_forever": true, "measurements": []
        }]
    }));
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    register(&outbox, SCALE, DeviceKind::WeightScale).await;
    let cfg = heim::sources::ble::BleConfig {
        idle_disconnect_ms: 100,
        cooldown_ms: 1500,
        scan_stall_s: 60,
        ..fast_config()
    };
    let gw = Gateway::start(dir, outbox.clone(), cfg);
    eventually(10, "a first connection", || async {
        (!fake.events_of("connect", Some(SCALE)).is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        fake.events_of("connect", Some(SCALE)).len(),
        1,
        "left alone while cooling down"
    );
    eventually(10, "a second connection after the cooldown", || async {
        (fake.events_of("connect", Some(SCALE)).len() >= 2).then_some(())
    })
    .await;
    gw.stop().await;
    drop(fake);
}
