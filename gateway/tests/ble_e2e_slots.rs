//! Many devices at once, never more connections than the adapter has slots for: four blood
//! pressure monitors advertise together, the gateway holds at most `max_connections = 2` links at
//! a time, and every monitor's reading arrives once.

mod ble_sim;

use std::collections::BTreeSet;

use ble_sim::{FakeBluez, Gateway, eventually, fast_config, open_outbox, readings, register};
use heim::sources::ble::registry::DeviceKind;
use heim_shared_types::DeviceId;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_never_exceed_the_slots() {
    let addrs = [
        "C0:FF:EE:00:00:01",
        "C0:FF:EE:00:00:02",
        "C0:FF:EE:00:00:03",
        "C0:FF:EE:00:00:04",
    ];
    let devices: Vec<_> = addrs
        .iter()
        .map(|a| {
            json!({
                "address": a, "kind": "bpm", "services": ["1810"],
                "advertise_every_ms": 30, "notify_ms": 150,
                "measurements": ["00780050005d00"]
            })
        })
        .collect();
    let fake = FakeBluez::start(json!({ "devices": devices }));
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    for a in addrs {
        register(&outbox, a, DeviceKind::BloodPressure).await;
    }
    let cfg = heim::sources::ble::BleConfig {
        max_connections: 2,
        idle_disconnect_ms: 200,
        scan_stall_s: 60,
        ..fast_config()
    };
    let gw = Gateway::start(dir, outbox.clone(), cfg);

    let got = eventually(20, "four readings", || async {
        let r = readings(&outbox).await;
        (r.len() >= 4).then_some(r)
    })
    .await;
    let from: BTreeSet<_> = got
        .iter()
        .map(|r| match r.device {
            DeviceId::Ble(a) => a,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(from.len(), 4, "one reading from each monitor");
    let concurrent: Vec<u64> = fake
        .events_of("connect", None)
        .iter()
        .map(|e| e["concurrent"].as_u64().unwrap())
        .collect();
    assert!(concurrent.iter().all(|&c| c <= 2), "{concurrent:?}");
    assert!(
        concurrent.contains(&2),
        "two links were held at once: {concurrent:?}"
    );
    // Settle: nothing further arrives (each monitor sent its reading once).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(readings(&outbox).await.len(), 4);
    gw.stop().await;
    drop(fake);
}
