//! Scanner-stall recovery: BlueZ answers StartDiscovery with `InProgress` (a wedged controller,
//! the most reported BLE failure in home gateways). The gateway power-cycles the adapter over
//! D-Bus, the scan starts, and the registered device's reading arrives, without a reboot.

mod ble_sim;

use ble_sim::{FakeBluez, Gateway, eventually, fast_config, open_outbox, readings, register};
use heim::sources::ble::registry::DeviceKind;
use serde_json::json;

const THERMO: &str = "C0:FF:EE:00:18:09";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wedged_scanner_is_recovered_by_an_adapter_power_cycle() {
    let fake = FakeBluez::start(json!({
        "wedged": true,
        "devices": [{
            "address": THERMO, "name": "Thermo-Sim", "kind": "thermometer", "services": ["1809"],
            // 37.60 °C, FLOAT with exponent -2.
            "measurements": ["00b00e00fe"]
        }]
    }));
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    register(&outbox, THERMO, DeviceKind::Thermometer).await;
    let gw = Gateway::start(dir, outbox.clone(), fast_config());

    let got = eventually(15, "the thermometer reading", || async {
        let r = readings(&outbox).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(got.len(), 1);
    let heim_shared_types::Measurement::BodyTemperature { temperature, .. } = got[0].measurement
    else {
        panic!("{:?}", got[0])
    };
    assert_eq!(temperature.value.number().unwrap().to_string(), "37.60");

    // Refused, powered off and on, started.
    let seq: Vec<String> = fake
        .events()
        .into_iter()
        .filter_map(|e| match e["ev"].as_str()? {
            "start_discovery" => Some(format!("start:{}", e["result"].as_str()?)),
            "powered" => Some(format!("powered:{}", e["value"])),
            _ => None,
        })
        .collect();
    let off = seq
        .iter()
        .position(|s| s == "powered:false")
        .expect("a power-off");
    // (btleplug itself writes Powered = true before every scan start.)
    let first_start = seq.iter().find(|s| s.starts_with("start:"));
    assert_eq!(
        first_start.map(String::as_str),
        Some("start:in_progress"),
        "{seq:?}"
    );
    assert!(
        seq[..off].contains(&"start:in_progress".to_string()),
        "{seq:?}"
    );
    assert!(
        seq[off + 1..].contains(&"powered:true".to_string()),
        "{seq:?}"
    );
    assert!(seq[off + 1..].contains(&"start:ok".to_string()), "{seq:?}");
    // Recovered at once: no alarm on the status topic.
    assert!(
        gw.alarms
            .borrow()
            .get("alarms")
            .is_none_or(|a| a == &json!([])),
        "{:?}",
        gw.alarms.borrow()
    );
    let scanner = gw.detail("scanner");
    assert_eq!(scanner["state"], "scanning", "{scanner}");
    assert!(scanner["power_cycles"].as_u64().unwrap() >= 1, "{scanner}");
    gw.stop().await;
    drop(fake);
}
