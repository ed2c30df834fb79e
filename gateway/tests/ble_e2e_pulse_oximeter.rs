//! A pulse oximeter's spot-checks through the real btleplug: a normal reading keeps its
//! precision (94.0 %, 147.0 /min) and its device time is trusted; a spot-check the device flags
//! as test data (measurement status bit 11) is never stored as the patient's; one whose clock
//! was never set (flag b4) is stored with its time marked untrusted.

mod ble_sim;

use ble_sim::{FakeBluez, Gateway, eventually, fast_config, open_outbox, readings, register};
use heim::sources::ble::registry::DeviceKind;
use heim_shared_types::{Measurement, Unit};
use serde_json::json;

const OXI: &str = "C0:FF:EE:00:18:22";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_checks_with_status_and_clock_flags() {
    let fake = FakeBluez::start(json!({
        "devices": [{
            "address": OXI, "kind": "plx", "services": ["1822"],
            "measurements": [
                // Public vector: all fields, status 0x4020 (ongoing + questionable).
                "0facf3bef5e8070b1d170839204022000066e3",
                // Status 0x0800: data for testing.
                "02acf3bef50008",
                // Flags 0x11: time stamp from a clock that was never set.
                "11acf3bef5e8070b1d170839"
            ]
        }]
    }));
    let dir = tempfile::tempdir().unwrap();
    let outbox = open_outbox(dir.path());
    register(&outbox, OXI, DeviceKind::PulseOximeter).await;
    let cfg = heim::sources::ble::BleConfig {
        scan_stall_s: 60,
        ..fast_config()
    };
    let gw = Gateway::start(dir, outbox.clone(), cfg);

    eventually(15, "the device to be left alone", || async {
        (!fake.events_of("disconnect", Some(OXI)).is_empty()).then_some(())
    })
    .await;
    let got = readings(&outbox).await;
    assert_eq!(
        fake.events_of("notify", Some(OXI)).len(),
        3,
        "all three were sent"
    );
    // Two spot-checks × (SpO2, pulse); the test-data one is not the patient's.
    assert_eq!(got.len(), 4, "{got:#?}");
    let Measurement::Spo2(spo2) = got[0].measurement else {
        panic!("{:?}", got[0])
    };
    assert_eq!(spo2.value.number().unwrap().to_string(), "94.0");
    assert_eq!(spo2.unit, Unit::Percent);
    let Measurement::PulseRate(pr) = got[1].measurement else {
        panic!("{:?}", got[1])
    };
    assert_eq!(pr.value.number().unwrap().to_string(), "147.0");
    assert!(got[0].device_time_trusted && got[1].device_time_trusted);
    assert!(got[2].device_time.is_some() && !got[2].device_time_trusted);
    assert!(!got[3].device_time_trusted);
    gw.stop().await;
    drop(fake);
}
