//! Scanner-stall recovery: discovery stops on its own (`Discovering` drops to false with no error
//! anywhere). The gateway notices on its next check, restarts the scan, and a device that starts
//! advertising only afterwards is still found and read.

mod ble_sim;

use ble_sim::{FakeBluez, Gateway, eventually, fast_config, open_outbox, readings, register};
use heim::sources::ble::registry::DeviceKind;
use serde_json::json;

const SCALE: &str = "C0:FF:EE:00:18:1D";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_stopped_discovery_is_restarted() {
    let fake = FakeBluez::start(json!({
        "discovery_dies_ms": 50,
        "devices": [{
            "address": SCALE, "name": "Scale-Sim", "kind": "scale", "services": ["181d"],
            // Advertises 400 ms after a scan starts: after the first scan has died.
            "advertise_ms": 400,
            // 70.000 kg.
            "measurements": ["00b036"]
        }]
    }));
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    register(&outbox, SCALE, DeviceKind::WeightScale).await;
    let gw = Gateway::start(dir, outbox.clone(), fast_config());

    let got = eventually(15, "the weight reading", || async {
        let r = readings(&outbox).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(
        got[0].measurement,
        heim_shared_types::Measurement::BodyWeight(heim_shared_types::Quantity::new(
            70000,
            -3,
            heim_shared_types::Unit::Kilogram
        ))
    );
    assert_eq!(fake.events_of("discovery_died", None).len(), 1);
    let starts = fake
        .events_of("start_discovery", None)
        .into_iter()
        .filter(|e| e["result"] == "ok")
        .count();
    assert!(starts >= 2, "the scan was restarted");
    assert!(gw.detail("scanner")["restarts"].as_u64().unwrap() >= 1);
    gw.stop().await;
    drop(fake);
}
