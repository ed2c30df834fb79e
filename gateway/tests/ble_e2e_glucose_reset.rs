//! A glucose meter whose record numbers restarted (reset, or replaced by a new meter of the same
//! address): the gateway's cursor says 50, the meter holds records 1–5. "≥ 51" finds nothing, so
//! the gateway asks for the most recent record, sees number 5 < 50, and fetches everything again:
//! the five new records arrive instead of being hidden below the old cursor forever.

mod ble_sim;

use ble_sim::{FakeBluez, Gateway, eventually, fast_config, open_outbox, readings, register};
use heim::sources::ble::registry::{DeviceKind, parse_address};
use heim::sources::ble::source::cursor_key;
use heim::store::Append;
use serde_json::json;

const METER: &str = "C0:FF:EE:00:18:08";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_record_numbers_are_detected_and_refetched() {
    let fake = FakeBluez::start(json!({
        "devices": [{"address": METER, "kind": "glucose", "services": ["1808"], "stored_records": 5}]
    }));
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    register(&outbox, METER, DeviceKind::Glucose).await;
    let key = cursor_key(&parse_address(METER).unwrap());
    outbox
        .append(Append {
            cursors: vec![(key.clone(), 50u16.to_le_bytes().to_vec())],
            ..Append::default()
        })
        .await
        .unwrap();
    let cfg = heim::sources::ble::BleConfig {
        scan_stall_s: 60,
        ..fast_config()
    };
    let gw = Gateway::start(dir, outbox.clone(), cfg);

    let got = eventually(15, "five readings", || async {
        let r = readings(&outbox).await;
        (r.len() >= 5).then_some(r)
    })
    .await;
    assert_eq!(got.len(), 5);
    let requests: Vec<String> = fake
        .events_of("write", Some(METER))
        .into_iter()
        .filter(|e| e["char"] == "2a52")
        .map(|e| e["hex"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        requests[..3],
        ["0103013300", "0106", "0101"],
        "{requests:?}"
    );
    eventually(5, "the cursor at 5", || async {
        (outbox.cursor(&key).await.unwrap() == Some(5u16.to_le_bytes().to_vec())).then_some(())
    })
    .await;
    gw.stop().await;
    assert_eq!(readings(&outbox).await.len(), 5);
    drop(fake);
}
