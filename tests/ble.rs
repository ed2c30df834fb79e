//! BLE end to end: simulated BlueZ on a private D-Bus (the project's own fake, started here) →
//! the real btleplug inside the `heim` daemon (a real process) → real SQLite outbox → mosquitto
//! (mutual TLS) → hospital subscriber, as FHIR Observations. A registered blood-pressure monitor's
//! indication and a registered glucose meter's stored records arrive; a neighbour's monitor
//! advertising the same service is seen and never read.

mod common;
#[path = "../gateway/tests/ble_sim/fake.rs"]
mod fake;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use heim::sources::ble::registry::{self, Device, DeviceKind};
use serde_json::json;

const BPM: &str = "C0:FF:EE:00:18:10";
const METER: &str = "C0:FF:EE:00:18:08";
const NEIGHBOUR: &str = "DE:AD:BE:EF:18:10";

/// Registers devices in the store the daemon will open (the registry lives in the outbox file).
async fn register(store: &std::path::Path, devices: &[(&str, DeviceKind)]) {
    let (outbox, writer) = heim::store::Outbox::open(heim::store::Options {
        path: store.to_owned(),
        max_bytes: 1 << 30,
        write_batch: 100,
    })
    .unwrap();
    for (address, kind) in devices {
        registry::add(
            &outbox,
            Device {
                address: registry::parse_address(address).unwrap(),
                kind: *kind,
                name: None,
                bonded: false,
                feeds: None,
                added_unix_ms: 0,
            },
        )
        .await
        .unwrap();
    }
    drop(outbox);
    tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ble_devices_reach_the_hospital_and_the_neighbour_does_not() {
    let fake = fake::FakeBluez::launch(json!({
        "devices": [
            {
                "address": BPM, "kind": "bpm", "services": ["1810"], "battery": 10,
                "measurements": ["06780050005d00e8070501081e004800"]
            },
            {
                "address": NEIGHBOUR, "kind": "bpm", "services": ["1810"],
                "advertise_every_ms": 50,
                "measurements": ["06990050005d00e8070501081e004800"]
            },
            {
                "address": METER, "kind": "glucose", "services": ["1808"], "stored_records": 5
            }
        ]
    }));
    let env = Env::new();
    let hospital = env.hospital().await;
    let cfg = env.config(
        "[[source]]\nkind = \"ble\"\nname = \"ble\"\nidle_disconnect_ms = 300\nbackoff_min_ms = 100\n",
    );
    register(
        &cfg.with_file_name("heim.db"),
        &[
            (BPM, DeviceKind::BloodPressure),
            (METER, DeviceKind::Glucose),
        ],
    )
    .await;

    let log = cfg.with_file_name("heim.log");
    let child = heim_command()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info,heim=debug")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &fake.address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut gw = Gateway {
        child,
        config: cfg.clone(),
        log,
    };
    gw.wait_ready().await;

    // Blood pressure + pulse from the monitor, five glucose records from the meter.
    let n = hospital.wait_unique(7, Duration::from_secs(30)).await;
    assert_eq!(n, 7, "{}", gw.log_text());
    let status = gw
        .wait_status(Duration::from_secs(10), |s| s["outbox_pending"] == 0)
        .await;
    let ble = &status["sources"]["ble"];
    assert_eq!(ble["readings"], 7, "{status}");
    assert_eq!(ble["detail"]["unregistered_seen"], 1, "{status}");
    assert_eq!(ble["detail"]["devices"][BPM]["battery_pct"], 10, "{status}");
    assert_eq!(ble["detail"]["scanner"]["state"], "scanning", "{status}");

    // The hospital names a device by its Device identifier: the Bluetooth address (BTMAC).
    let urn = |a: &str| {
        registry::parse_address(a).expect("a valid address");
        a.replace(':', "-")
    };
    hospital.with(|c| {
        let mut summaries: Vec<(String, String)> = c
            .arrivals
            .iter()
            .map(|a| (a.device.clone(), a.summary.clone()))
            .collect();
        summaries.sort();
        summaries.dedup();
        let of = |dev: &str| -> Vec<String> {
            summaries
                .iter()
                .filter(|(d, _)| *d == urn(dev))
                .map(|(_, s)| s.clone())
                .collect()
        };
        let bp = of(BPM);
        assert!(
            bp.contains(&"blood pressure 120/80 mmHg (mean 93)".to_string()),
            "{summaries:?}"
        );
        assert_eq!(bp.len(), 2, "{summaries:?}");
        let glucose = of(METER);
        assert_eq!(glucose.len(), 5, "{summaries:?}");
        for mg in 91..=95 {
            assert!(
                glucose
                    .iter()
                    .any(|s| s.starts_with("glucose ") && s.contains(&format!("{mg} mg/dL"))),
                "{mg}: {glucose:?}"
            );
        }
        assert!(of(NEIGHBOUR).is_empty(), "{summaries:?}");
        assert_eq!(c.duplicates(), 0);
        assert_eq!(c.malformed, 0);
        // The low battery (10 %) arrived as an event.
        assert!(
            c.events
                .iter()
                .any(|e| e["type"] == "battery_low" && e["level_pct"] == 10),
            "{:?}",
            c.events
        );
    });
    assert!(fake.events_of("connect", Some(NEIGHBOUR)).is_empty());
    assert!(!fake.events_of("advertise", Some(NEIGHBOUR)).is_empty());
    assert!(gw.terminate().success(), "{}", gw.log_text());
    drop(fake);
}

/// Runs `heim device …` against the daemon.
async fn heim_device_output(cfg: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = heim_command();
    cmd.arg("device")
        .args(args)
        .arg("--json")
        .arg("--config")
        .arg(cfg);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

/// Runs `heim device …` against the daemon and returns its JSON reply.
async fn heim_device(cfg: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = heim_device_output(cfg, args).await;
    assert!(
        out.status.success(),
        "heim device {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The nurse's path: a new monitor is seen in a scan as unknown and never read; `heim device add`
/// pairs and registers it and its next reading arrives; `heim device remove` unregisters and
/// unbonds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_commands_scan_add_list_remove() {
    let fake = fake::FakeBluez::launch(json!({
        "devices": [{
            "address": BPM, "name": "BPM-New", "kind": "bpm", "services": ["1810"], "rssi": -48,
            "advertise_every_ms": 50,
            "measurements": ["00780050005d00"]
        }]
    }));
    let env = Env::new();
    let hospital = env.hospital().await;
    let cfg = env.config(
        "[[source]]\nkind = \"ble\"\nname = \"ble\"\nidle_disconnect_ms = 300\nbackoff_min_ms = 100\n",
    );
    let log = cfg.with_file_name("heim.log");
    let child = heim_command()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info,heim=debug")
        .env("DBUS_SYSTEM_BUS_ADDRESS", &fake.address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut gw = Gateway {
        child,
        config: cfg.clone(),
        log,
    };
    gw.wait_ready().await;

    let scan = heim_device(&cfg, &["scan", "--seconds", "1"]).await;
    let found = scan
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["address"] == BPM)
        .unwrap_or_else(|| panic!("{scan}"))
        .clone();
    assert_eq!(found["known"], false);
    assert_eq!(found["kind"], "blood_pressure");
    assert_eq!(found["name"], "BPM-New");
    assert!(found["rssi"].as_i64().unwrap() < 0);
    assert!(
        fake.events_of("connect", Some(BPM)).is_empty(),
        "unknown: not connected"
    );
    assert_eq!(hospital.unique(), 0);

    let added = heim_device(&cfg, &["add", BPM]).await;
    assert_eq!(added["kind"], "blood_pressure");
    assert_eq!(added["bonded"], true);
    assert_eq!(fake.events_of("pair", Some(BPM)).len(), 1);
    let list = heim_device(&cfg, &["list"]).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["address"], BPM);
    assert_eq!(list[0]["name"], "BPM-New");
    assert_eq!(list[0]["feeds"], "blood_pressure");

    // Registered: its next advertisement leads to a connection and the reading.
    assert_eq!(
        hospital.wait_unique(1, Duration::from_secs(20)).await,
        1,
        "{}",
        gw.log_text()
    );

    let removed = heim_device(&cfg, &["remove", BPM]).await;
    assert_eq!(removed["removed"], true);
    assert!(!fake.events_of("remove_device", None).is_empty());
    assert_eq!(heim_device(&cfg, &["list"]).await, json!([]));
    assert!(gw.terminate().success(), "{}", gw.log_text());
    drop(fake);
}

/// Passkey-entry pairing: the gateway registers an agent for the pairing and answers BlueZ's
/// passkey request with the number the nurse typed; a wrong number fails and registers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passkey_pairing() {
    const THERMO: &str = "C0:FF:EE:00:18:09";
    let fake = fake::FakeBluez::launch(json!({
        "devices": [{
            "address": THERMO, "kind": "thermometer", "services": ["1809"], "passkey": 123456,
            "advertise_every_ms": 50, "measurements": ["00b00e00fe"]
        }]
    }));
    let env = Env::new();
    let cfg = env.config("[[source]]\nkind = \"ble\"\nname = \"ble\"\n");
    let log = cfg.with_file_name("heim.log");
    let child = heim_command()
        .args(["run", "--config"])
        .arg(&cfg)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &fake.address)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut gw = Gateway {
        child,
        config: cfg.clone(),
        log,
    };
    gw.wait_ready().await;
    // Heard advertising first, so BlueZ knows the device.
    heim_device(&cfg, &["scan", "--seconds", "1"]).await;

    let wrong = heim_device_output(&cfg, &["add", THERMO, "--passkey", "111111"]).await;
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("pairing failed"), "{err}");
    assert_eq!(heim_device(&cfg, &["list"]).await, json!([]));

    let added = heim_device(&cfg, &["add", THERMO, "--passkey", "123456"]).await;
    assert_eq!(added["bonded"], true);
    assert_eq!(added["kind"], "thermometer");
    let typed: Vec<_> = fake
        .events_of("passkey", Some(THERMO))
        .iter()
        .map(|e| e["value"].clone())
        .collect();
    assert_eq!(typed, [json!(111111), json!(123456)]);
    assert_eq!(fake.events_of("register_agent", None).len(), 2);
    assert_eq!(fake.events_of("unregister_agent", None).len(), 2);
    assert!(gw.terminate().success(), "{}", gw.log_text());
    drop(fake);
}

/// `heim demo --ble` runs the whole BLE path on its own and ends with nothing lost or duplicated,
/// the glucose back-fill resuming after the meter went out of range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ble_demo_runs_clean() {
    let out =
        tokio::task::spawn_blocking(|| heim_command().args(["demo", "--ble"]).output().unwrap())
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("went out of range mid-transfer"), "{text}");
    assert!(text.contains("stored records from number 13"), "{text}");
    assert!(
        text.contains("taken 34, delivered 34 (expected 34), lost 0, duplicates 0; the neighbour's monitor was connected 0 times"),
        "{text}"
    );
}

/// Without a BLE source, `heim device` says so instead of failing obscurely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_commands_without_a_ble_source_explain() {
    let env = Env::new();
    let cfg = env.config(&sim("s", 1, 0));
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    let out = heim_device_output(&cfg, &["list"]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no BLE source is configured"), "{err}");
    assert!(gw.terminate().success());
}
