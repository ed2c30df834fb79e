//! `heim demo --ble`: Bluetooth health devices end to end, with no radio.
//!
//! A simulated BlueZ ([`super::sim`]) serves a blood-pressure monitor, a glucose meter holding 30
//! stored records that goes out of range after 12 and comes back, and a neighbour's monitor that
//! is not registered. The real daemon (btleplug, outbox, uplink) reads them, and a subscriber
//! playing the hospital prints what arrives over mosquitto with mutual TLS. It ends with what
//! arrived, and how often.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::registry::{self, Device, DeviceKind};
use super::sim::FakeBluez;
use crate::config::Config;
use crate::demo::{Summary, broker, hospital, pki, write_config};

const BPM: &str = "C0:FF:EE:00:18:10";
const METER: &str = "C0:FF:EE:00:18:08";
const NEIGHBOUR: &str = "DE:AD:BE:EF:18:10";
const RECORDS: u64 = 30;
/// Blood pressure + pulse, twice.
const BP_READINGS: u64 = 4;
/// Readings the demo's registered devices hand over: the monitor's measurements and the meter's
/// stored records.
pub const EXPECTED_READINGS: u64 = BP_READINGS + RECORDS;
/// The neighbour's device, which must never be connected.
pub const NEIGHBOUR_ADDRESS: &str = NEIGHBOUR;

/// The simulated devices.
pub fn scenario() -> Value {
    json!({
        "devices": [
            {
                "address": BPM, "name": "BPM-Sim", "kind": "bpm", "services": ["1810"],
                "battery": 80, "cts": true, "notify_ms": 300, "advertise_every_ms": 500,
                "measurements": [
                    "06840054005f00e8070b18081e004800",
                    "067f0052005d00e8070b18091e004600"
                ]
            },
            {
                "address": METER, "name": "Meter-Sim", "kind": "glucose", "services": ["1808"],
                "battery": 15, "stored_records": RECORDS, "drop_after_records": 12,
                "away_ms": 2000, "record_ms": 60
            },
            {
                "address": NEIGHBOUR, "name": "Neighbour-BPM", "kind": "bpm", "services": ["1810"],
                "advertise_every_ms": 400, "measurements": ["06990050005d00e8070b18081e004800"]
            }
        ]
    })
}

/// Starts the simulated BlueZ in `dir`. Call before the async runtime starts: the caller then
/// points `DBUS_SYSTEM_BUS_ADDRESS` at it (btleplug takes no connection, only that variable).
pub fn start_bluez(dir: &Path) -> Result<FakeBluez, super::sim::Error> {
    FakeBluez::launch(&dir.join("bluez"), &scenario())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs the demo in `dir` against the running simulated BlueZ.
pub async fn run(dir: &Path, bluez: &FakeBluez) -> Result<Summary, BoxError> {
    let gateway_id = "gw-demo";
    println!("Heim BLE demo — working directory {}", dir.display());
    println!("  simulated BlueZ on a private D-Bus: {}", bluez.address);
    let pki = pki::Pki::generate(&dir.join("pki"), "heim-demo")?;
    let mut broker = broker::Broker::start(&dir.join("broker"), &pki, broker::Mode::MutualTls)?;
    println!(
        "  mosquitto on 127.0.0.1:{} (mutual TLS); the hospital subscriber is connecting",
        broker.port
    );
    let hospital =
        hospital::Hospital::start(&pki, broker.port, gateway_id, "hospital", true).await?;
    let sources = "[[source]]\nkind = \"ble\"\nname = \"ble\"\nidle_disconnect_ms = 800\nbackoff_min_ms = 200\n";
    let cfg_path = write_config(dir, &pki, gateway_id, broker.port, sources)?;
    let cfg = Config::load(&cfg_path)?;
    register(&cfg.store_path()).await?;
    println!(
        "  registered {BPM} (blood pressure) and {METER} (glucose); {NEIGHBOUR} is a neighbour's\n"
    );
    let socket = cfg.socket_path();
    let stop = CancellationToken::new();
    let daemon = tokio::spawn(crate::daemon::run(cfg, stop.clone()));

    let start = Instant::now();
    let want = BP_READINGS + RECORDS;
    let mut printed = 0;
    let mut events_seen = 0;
    let mut taken = 0;
    while start.elapsed() < Duration::from_secs(45) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for e in bluez.events().iter().skip(events_seen) {
            events_seen += 1;
            if let Some(line) = narrate(e) {
                println!("  [{:>4.1}s] {line}", start.elapsed().as_secs_f32());
            }
        }
        hospital.with(|c| {
            while printed < c.arrivals.len() {
                let a = &c.arrivals[printed];
                println!(
                    "  [{:>4.1}s] hospital ← {}",
                    start.elapsed().as_secs_f32(),
                    a.summary
                );
                printed += 1;
            }
        });
        if let Ok(s) = crate::control::request(&socket, json!({"cmd": "status"})).await {
            taken = s["sources"]["ble"]["readings"].as_u64().unwrap_or(taken);
        }
        if hospital.unique() as u64 >= want && taken >= want {
            break;
        }
    }
    let status = crate::control::request(&socket, json!({"cmd": "status"}))
        .await
        .unwrap_or(Value::Null);
    stop.cancel();
    daemon.await??;
    let (delivered, duplicates, events) =
        hospital.with(|c| (c.unique.len() as u64, c.duplicates(), c.events.clone()));
    hospital.stop().await;
    broker.stop();
    for e in events {
        println!("  hospital ← event {e}");
    }
    let neighbour_connects = bluez.events_of("connect", Some(NEIGHBOUR)).len();
    println!("\n  status: {}", status["sources"]["ble"]["detail"]);
    let summary = Summary {
        taken,
        delivered,
        lost: taken.saturating_sub(delivered),
        duplicates,
    };
    println!(
        "\nSummary: taken {}, delivered {} (expected {want}), lost {}, duplicates {}; the neighbour's monitor was connected {neighbour_connects} times",
        summary.taken, summary.delivered, summary.lost, summary.duplicates
    );
    Ok(summary)
}

/// Registers the demo's blood-pressure monitor and glucose meter (not the neighbour's device) in
/// the store at `store`, as `heim device add` would.
pub async fn register(store: &Path) -> Result<(), BoxError> {
    let (outbox, writer) = crate::store::Outbox::open(crate::store::Options {
        path: store.to_owned(),
        max_bytes: 64 << 20,
        write_batch: 100,
    })?;
    for (address, kind, name) in [
        (BPM, DeviceKind::BloodPressure, "BPM-Sim"),
        (METER, DeviceKind::Glucose, "Meter-Sim"),
    ] {
        registry::add(
            &outbox,
            Device {
                address: registry::parse_address(address)?,
                kind,
                name: Some(name.into()),
                bonded: false,
                feeds: None,
                added_unix_ms: chrono::Utc::now().timestamp_millis(),
            },
        )
        .await?;
    }
    drop(outbox);
    tokio::task::spawn_blocking(move || writer.join())
        .await?
        .map_err(|_| "the outbox writer panicked")?;
    Ok(())
}

/// One line for the events worth showing.
fn narrate(e: &Value) -> Option<String> {
    let dev = e["dev"].as_str().unwrap_or("");
    let who = match dev {
        BPM => "blood-pressure monitor",
        METER => "glucose meter",
        NEIGHBOUR => "neighbour's monitor",
        _ => dev,
    };
    Some(match e["ev"].as_str()? {
        "connect" => format!("gateway connected to the {who}"),
        "link_lost" => format!("the {who} went out of range mid-transfer"),
        "back" => format!("the {who} is back in range"),
        "write" if e["char"] == "2a52" => {
            let hex = e["hex"].as_str().unwrap_or("");
            let bytes = crate::sources::ble::cli::parse_hex(hex).unwrap_or_default();
            match super::profiles::racp::decode_request(&bytes) {
                Ok(r) => match r.operand {
                    Some((super::profiles::racp::FilterValue::SequenceNumber(n), _)) => {
                        format!("gateway asks the {who} for stored records from number {n}")
                    }
                    _ if r.operator == super::profiles::racp::Operator::All => {
                        format!("gateway asks the {who} for all stored records")
                    }
                    _ => format!("gateway asks the {who} for stored records ({hex})"),
                },
                Err(_) => format!("gateway wrote {hex} to the {who}"),
            }
        }
        "write" if e["char"] == "2a2b" => format!("gateway set the {who}'s clock"),
        "racp_report" => format!("the {who} sends {} stored record(s)", e["count"]),
        _ => return None,
    })
}
