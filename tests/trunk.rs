//! The trunk end to end: simulated source → heim (real process) → mosquitto (mutual TLS) →
//! hospital subscriber.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_delivery_each_identifier_once() {
    let env = Env::new();
    let hospital = env.hospital().await;
    let n = 5000;
    let cfg = env.config(&sim("s", n, 0));
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    let got = hospital
        .wait_unique(n as usize, Duration::from_secs(60))
        .await;
    assert_eq!(got, n as usize, "{}", gw.log_text());
    let status = gw
        .wait_status(Duration::from_secs(10), |s| s["outbox_pending"] == 0)
        .await;
    assert_eq!(status["uplink"], "connected");
    assert!(status["sources"]["s"]["last_reading"].is_string());
    assert!(gw.terminate().success());
    hospital.with(|c| {
        let expected: HashSet<String> = sim_ids("s", n).into_iter().collect();
        assert_eq!(c.unique, expected);
        assert_eq!(c.duplicates(), 0, "online delivery must not redeliver");
        assert_eq!(c.malformed, 0);
        assert_per_device_order(&c.arrivals, "s", n);
        // A clean stop leaves the retained status "offline".
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    hospital.with(|c| assert_eq!(c.status.as_ref().unwrap()["state"], "offline"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_everything_arrives_in_order_per_device() {
    let mut env = Env::new();
    let hospital = env.hospital().await;
    let n = 3000;
    // Readings keep coming while the broker is away.
    let cfg = env.config(&sim("s", n, 1));
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    gw.wait_status(Duration::from_secs(20), |s| {
        s["sources"]["s"]["readings"].as_u64() > Some(300)
    })
    .await;
    env.broker.stop();
    let during = gw
        .wait_status(Duration::from_secs(30), |s| {
            s["uplink"] == "disconnected" && s["outbox_pending"].as_u64() > Some(500)
        })
        .await;
    assert!(during["uplink_detail"]["last_error"].is_string());
    env.broker.restart().unwrap();
    let got = hospital
        .wait_unique(n as usize, Duration::from_secs(90))
        .await;
    assert_eq!(got, n as usize, "{}", gw.log_text());
    gw.wait_status(Duration::from_secs(10), |s| s["outbox_pending"] == 0)
        .await;
    assert!(gw.terminate().success());
    hospital.with(|c| {
        assert_eq!(
            c.unique,
            sim_ids("s", n).into_iter().collect::<HashSet<_>>()
        );
        assert_per_device_order(&c.arrivals, "s", n);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_over_the_control_socket_and_cli() {
    let env = Env::new();
    let cfg = env.config(&sim("s", 100, 0));
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    gw.wait_status(Duration::from_secs(20), |s| {
        s["outbox_pending"] == 0 && s["sources"]["s"]["readings"] == 100
    })
    .await;
    let out = heim_command()
        .args(["status", "--json", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["outbox_pending", "uplink", "sources", "alarms"] {
        assert!(v.get(key).is_some(), "status lacks {key}: {v}");
    }
    assert_eq!(v["uplink"], "connected");
    let text = heim_command()
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("uplink    connected"), "{text}");
    assert!(gw.terminate().success());
    // Health data stays out of the logs at info: no patient id, no values.
    let log = gw.log_text();
    assert!(!log.contains("p-demo"), "patient id in the log:\n{log}");
    // After a clean stop the socket is gone and `heim status` says no daemon answers.
    let out = heim_command()
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no Heim daemon answers"));
}

#[test]
fn the_demo_runs_and_loses_nothing() {
    // On mosquitto, and on the embedded broker the demo falls back to without it.
    for (broker, says) in [
        ("mosquitto", "mosquitto listening"),
        ("embedded", "embedded demo broker listening"),
    ] {
        let out = heim_command()
            .args([
                "demo",
                "--no-ble",
                "--broker",
                broker,
                "--readings",
                "600",
                "--outage-seconds",
                "2",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(says), "{text}");
        assert!(text.contains("taking the broker down"), "{text}");
        assert!(
            text.contains("Summary: taken 660, delivered 660, lost 0"),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_will_says_offline_when_the_gateway_dies() {
    let env = Env::new();
    let hospital = env.hospital().await;
    let cfg = env.config(&sim("s", 10, 0));
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    gw.wait_status(Duration::from_secs(20), |s| s["uplink"] == "connected")
        .await;
    let online = async {
        loop {
            if hospital.with(|c| c.status.as_ref().is_some_and(|s| s["state"] == "online")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), online)
        .await
        .expect("retained online status");
    gw.kill9();
    // The broker sees the connection drop and publishes the gateway's last will (retained).
    let offline = async {
        loop {
            if hospital.with(|c| c.status.as_ref().is_some_and(|s| s["state"] == "offline")) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), offline)
        .await
        .expect("the last will marks the gateway offline");
}
