//! End to end through the real btleplug against the fake BlueZ: scan → connect → indication →
//! reading in a real SQLite outbox; an unregistered device advertising the same service is
//! ignored; battery level reaches the status and a low level raises an event.

mod ble_sim;

use ble_sim::{FakeBluez, Gateway, eventually, fast_config, open_outbox, readings, register, rows};
use heim::sources::ble::registry::DeviceKind;
use heim::store::Body;
use heim_shared_types::{AbsentReason, Decimal, DeviceId, DeviceTime, Measurement, Unit, Value};
use serde_json::json;

const MINE: &str = "C0:FF:EE:00:18:10";
const NEIGHBOUR: &str = "DE:AD:BE:EF:18:10";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blood_pressure_monitor_end_to_end() {
    let fake = FakeBluez::start(json!({
        "devices": [
            {
                "address": MINE, "name": "BPM-Sim", "kind": "bpm", "services": ["1810"],
                "battery": 15, "cts": true,
                "measurements": [
                    // 120/80/93 mmHg, 2024-05-01 08:30:00, pulse 72.
                    "06780050005d00e8070501081e004800",
                    // 138/88 mmHg, MAP NaN, no time stamp, no pulse.
                    "008a005800ff07"
                ]
            },
            {
                "address": NEIGHBOUR, "name": "BPM-Neighbour", "kind": "bpm", "services": ["1810"],
                "measurements": ["06990050005d00e8070501081e004800"]
            }
        ]
    }));
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    register(&outbox, MINE, DeviceKind::BloodPressure).await;
    let gw = Gateway::start(dir, outbox.clone(), fast_config());

    // BP (with pulse) + pulse + BP (without): three readings.
    let got = eventually(15, "three readings", || async {
        let r = readings(&outbox).await;
        (r.len() >= 3).then_some(r)
    })
    .await;
    assert_eq!(got.len(), 3, "{got:#?}");
    let mine = heim::sources::ble::registry::parse_address(MINE).unwrap();
    assert!(got.iter().all(|r| r.device == DeviceId::Ble(mine)));
    let Measurement::BloodPressure {
        systolic,
        diastolic,
        mean,
    } = got[0].measurement
    else {
        panic!("{:?}", got[0])
    };
    assert_eq!(systolic.value, Value::Number(Decimal::new(120, 0)));
    assert_eq!(diastolic.value, Value::Number(Decimal::new(80, 0)));
    assert_eq!(mean.value, Value::Number(Decimal::new(93, 0)));
    assert_eq!(systolic.unit, Unit::MillimetreOfMercury);
    assert!(got[0].device_time_trusted);
    assert!(matches!(
        got[0].device_time,
        Some(DeviceTime::Local(t)) if (t.year, t.month, t.day, t.hour, t.minute) == (2024, 5, 1, 8, 30)
    ));
    assert_eq!(
        got[1].measurement,
        Measurement::PulseRate(heim_shared_types::Quantity::new(72, 0, Unit::PerMinute))
    );
    let Measurement::BloodPressure { mean, .. } = got[2].measurement else {
        panic!("{:?}", got[2])
    };
    assert_eq!(mean.value, Value::Absent(AbsentReason::NotANumber));
    assert!(!got[2].device_time_trusted && got[2].device_time.is_none());

    // The gateway disconnects once the device falls silent (battery devices would rather sleep).
    eventually(10, "a central-side disconnect", || async {
        (!fake.events_of("disconnect", Some(MINE)).is_empty()).then_some(())
    })
    .await;

    // The neighbour advertised the same service and was seen, never connected.
    let neighbour_adverts = fake.events_of("advertise", Some(NEIGHBOUR));
    assert!(!neighbour_adverts.is_empty(), "the neighbour did advertise");
    assert!(fake.events_of("connect", Some(NEIGHBOUR)).is_empty());
    assert_eq!(gw.detail("unregistered_seen"), json!(1));

    // The scan asked BlueZ for the health services.
    let filters = fake.events_of("set_discovery_filter", None);
    assert!(
        filters[0]["uuids"]
            .as_array()
            .unwrap()
            .contains(&json!("00001810-0000-1000-8000-00805f9b34fb"))
    );

    // Notifications were subscribed and the clock was set (the gateway clock is trusted here).
    assert!(!fake.events_of("start_notify", Some(MINE)).is_empty());
    let clock_writes: Vec<_> = fake
        .events_of("write", Some(MINE))
        .into_iter()
        .filter(|e| e["char"] == "2a2b")
        .collect();
    assert_eq!(clock_writes.len(), 1, "{clock_writes:?}");
    assert_eq!(clock_writes[0]["hex"].as_str().unwrap().len(), 20);

    // The device clock was read before it was set (the fake's clock says 2016-01-01).
    let offset = gw.detail("devices")[MINE]["clock_offset_s"]
        .as_i64()
        .unwrap();
    assert!(offset < -86_400 * 365, "{offset}");

    // Battery 15 % → status and one low-battery event.
    assert_eq!(gw.detail("devices")[MINE]["battery_pct"], json!(15));
    let events: Vec<_> = rows(&outbox)
        .await
        .into_iter()
        .filter_map(|r| match r.body {
            Body::Event { topic, payload } => Some((topic, payload)),
            Body::Reading(_) => None,
        })
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].0, "events");
    let ev: serde_json::Value = serde_json::from_slice(&events[0].1).unwrap();
    assert_eq!(ev["type"], "battery_low");
    assert_eq!(ev["level_pct"], 15);

    gw.stop().await;
    drop(fake);
}
