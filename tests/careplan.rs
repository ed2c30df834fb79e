//! The care plan end to end over a real mosquitto with mutual TLS: plan intake on the retained
//! topic with its status message, survival of `kill -9`, rollback refusal, and an alert that
//! overtakes a 100,000-reading backlog after an outage.

mod common;

use std::time::{Duration, Instant};

use chrono::{TimeZone, Timelike, Utc};
use common::*;
use heim::careplan::envelope::signer::Signer;
use heim::careplan::{Careplan, Settings};
use heim::clock::{Clock, SyncPolicy};
use heim::store::{Append, Outbox};
use heim_shared_types::{DeviceId, DeviceTime, GatewayTime, Measurement, Quantity, Reading, Unit};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The plan of the design notes (BP daily at `bp_time`, SpO2 twice a week), for `patient`.
fn bundle(patient: &str, bp_time: &str) -> Vec<u8> {
    let now = Utc::now();
    let v = json!({
      "resourceType": "Bundle", "type": "collection",
      "entry": [
        { "resource": {
            "resourceType": "CarePlan", "id": "cp-123", "meta": {"versionId": "17"},
            "status": "active", "intent": "plan",
            "subject": {"reference": format!("Patient/{patient}")},
            "period": {"start": (now - chrono::Duration::days(10)).to_rfc3339(),
                       "end": (now + chrono::Duration::days(60)).to_rfc3339()},
            "activity": [{"reference": {"reference": "ServiceRequest/sr-bp"}}] } },
        { "resource": {
            "resourceType": "ServiceRequest", "id": "sr-bp", "meta": {"versionId": "4"},
            "status": "active", "intent": "order",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "occurrenceTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d", "timeOfDay": [bp_time]}},
            "extension": [
              {"url": "https://heim.example/fhir/StructureDefinition/measurement-window", "extension": [
                 {"url": "before", "valueDuration": {"value": 60, "code": "min"}},
                 {"url": "after",  "valueDuration": {"value": 120, "code": "min"}},
                 {"url": "grace",  "valueDuration": {"value": 30, "code": "min"}}]},
              {"url": "https://heim.example/fhir/StructureDefinition/alert-range", "extension": [
                 {"url": "component", "valueCoding": {"system": "http://loinc.org", "code": "8480-6"}},
                 {"url": "type", "valueCodeableConcept": {"coding": [{"system": "urn:oid:1.2.208.184.100.1", "code": "RAL"}]}},
                 {"url": "low",  "valueQuantity": {"value": 90,  "unit": "mmHg", "code": "mm[Hg]"}},
                 {"url": "high", "valueQuantity": {"value": 180, "unit": "mmHg", "code": "mm[Hg]"}}]} ] } },
        { "resource": {
            "resourceType": "ServiceRequest", "id": "sr-spo2", "meta": {"versionId": "2"},
            "status": "active", "intent": "order",
            "code": {"coding": [{"system": "http://loinc.org", "code": "59408-5"}]},
            "occurrenceTiming": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "wk"}} } }
      ]
    });
    serde_json::to_vec(&v).unwrap()
}

fn envelope(signer: &Signer, aud: &str, seq: u64, bundle: &[u8]) -> String {
    signer.sign_compact(
        &json!({"alg": "ES256", "typ": "heim-careplan+jws", "kid": "plan-2026", "aud": aud,
                "seq": seq, "iat": Utc::now().timestamp(),
                "exp": (Utc::now() + chrono::Duration::days(30)).timestamp(), "tz": "Europe/Oslo"}),
        bundle,
    )
}

/// A platform-side MQTT client: publishes plans (retained) and collects `careplan/status`.
struct Platform {
    client: AsyncClient,
    status: mpsc::Receiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Platform {
    async fn connect(env: &Env) -> Self {
        let files = env.pki.issue("plan-service", &[], false, None).unwrap();
        let tls = heim::uplink::tls::client_config(&env.pki.ca, &files.cert, &files.key).unwrap();
        let mut o = MqttOptions::new("plan-service", "127.0.0.1", env.broker.port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(o, 16);
        let (tx, status) = mpsc::channel(64);
        let topic = format!("heim/v1/{GATEWAY}/careplan/status");
        client
            .subscribe(topic.clone(), QoS::AtLeastOnce)
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topic.as_bytes() => {
                        if let Ok(v) = serde_json::from_slice(&p.payload) {
                            let _ = tx.send(v).await;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self {
            client,
            status,
            task,
        }
    }

    async fn publish_plan(&self, payload: &[u8]) {
        self.client
            .publish(
                format!("heim/v1/{GATEWAY}/careplan"),
                QoS::AtLeastOnce,
                true,
                payload.to_vec(),
            )
            .await
            .unwrap();
    }

    /// The next status message matching `f` (earlier ones, e.g. the retained previous status,
    /// are skipped).
    async fn status_where(&mut self, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.status.recv()).await {
                Ok(Some(v)) if f(&v) => return v,
                Ok(Some(_)) => {}
                _ => panic!("no matching careplan/status within 20 s"),
            }
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Adds `[careplan]` with a trusted key to a generated gateway config.
fn with_careplan(config: &std::path::Path, signer: &Signer) {
    let pem = config.with_file_name("plan-2026.pem");
    std::fs::write(&pem, signer.public_pem()).unwrap();
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!(
        "\n[careplan]\nevaluate_every_s = 1\n\n[[careplan.key]]\nkid = \"plan-2026\"\npublic_key = \"{}\"\n",
        pem.display()
    ));
    std::fs::write(config, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_over_mqtt_survives_kill_9_and_refuses_rollback() {
    let env = Env::new();
    let signer = Signer::generate();
    let cfg = env.config("");
    with_careplan(&cfg, &signer);
    let mut platform = Platform::connect(&env).await;
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;

    let b = bundle("p-demo", "08:00:00");
    platform
        .publish_plan(envelope(&signer, GATEWAY, 5, &b).as_bytes())
        .await;
    let s = platform.status_where(|s| s["status"] == "applied").await;
    assert_eq!(
        (s["plan_id"].as_str(), s["seq"].as_u64()),
        (Some("cp-123"), Some(5))
    );
    let st = gw
        .wait_status(Duration::from_secs(10), |s| {
            s["careplan"]["plan"]["seq"] == 5
        })
        .await;
    assert_eq!(st["careplan"]["plan"]["id"], "cp-123");
    assert_eq!(st["careplan"]["measurements"][0]["request"], "sr-bp");
    assert!(st["careplan"]["measurements"][0]["next_window"]["start"].is_string());

    // Wrong audience: refused, with the reason on the status topic; plan 5 stays.
    platform
        .publish_plan(envelope(&signer, "gw-other", 6, &b).as_bytes())
        .await;
    let s = platform.status_where(|s| s["status"] == "rejected").await;
    assert_eq!(s["reason"], "wrong-audience");
    assert_eq!(s["applied_seq"], 5);

    // kill -9, then the broker hands out an older retained plan: refused as a rollback, and the
    // plan applied before the kill is still in force.
    gw.kill9();
    platform
        .publish_plan(envelope(&signer, GATEWAY, 4, &b).as_bytes())
        .await;
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    let s = platform
        .status_where(|s| s["status"] == "rejected" && s["seq"] == 4)
        .await;
    assert_eq!(s["reason"], "rollback");
    assert_eq!(s["applied_seq"], 5);
    let st = gw
        .wait_status(Duration::from_secs(10), |s| {
            s["careplan"]["last_refusal"]["reason"] == "rollback"
        })
        .await;
    assert_eq!(st["careplan"]["plan"]["seq"], 5);

    // An empty retained message clears the plan.
    platform.publish_plan(b"").await;
    platform.status_where(|s| s["status"] == "cleared").await;
    gw.wait_status(Duration::from_secs(10), |s| s["careplan"]["plan"].is_null())
        .await;
    assert!(gw.terminate().success());
}

fn bp(n: u64, systolic: i32, at_ms: i64) -> Reading {
    Reading {
        id: heim::reading_id::derive("careplan-e2e", &[&n.to_be_bytes()]),
        device: DeviceId::Ble([0xA0, 0, 0, 0, (n % 4) as u8, 1]),
        device_time: Some(DeviceTime::UnixMillis(at_ms)),
        device_time_trusted: true,
        received: GatewayTime {
            unix_millis: at_ms,
            synchronized: true,
        },
        measurement: Measurement::BloodPressure {
            systolic: Quantity::new(systolic, 0, Unit::MillimetreOfMercury),
            diastolic: Quantity::new(80, 0, Unit::MillimetreOfMercury),
            mean: Quantity::new(95, 0, Unit::MillimetreOfMercury),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_reading_during_an_outage_overtakes_100k_routine_readings() {
    let mut env = Env::new();
    let hospital = env.hospital().await;
    let signer = Signer::generate();
    let dir = env.dir.path().join("gw-lib");
    std::fs::create_dir_all(&dir).unwrap();
    let (outbox, writer) = Outbox::open(heim::store::Options {
        path: dir.join("heim.db"),
        max_bytes: 1 << 32,
        write_batch: 4096,
    })
    .unwrap();
    let mut keys = heim::careplan::envelope::TrustedKeys::default();
    keys.add_pem("plan-2026", signer.public_pem().as_bytes(), "test")
        .unwrap();
    let cp = Careplan::open(
        Settings {
            gateway_id: GATEWAY.into(),
            patient: "p-demo".into(),
            keys,
            evaluate_every: Duration::from_secs(30),
        },
        outbox.clone(),
        Clock::new(SyncPolicy::Always),
    )
    .await
    .unwrap();
    let now = Utc::now();
    let local = now.with_timezone(&chrono_tz::Europe::Oslo);
    let bp_time = format!("{:02}:{:02}:00", local.hour(), local.minute());
    let s = cp
        .intake(envelope(&signer, GATEWAY, 1, &bundle("p-demo", &bp_time)).as_bytes())
        .await
        .unwrap();
    assert_eq!(s.0["status"], "applied");
    let sources = outbox.with_tap(cp.tap());

    // The broker is away; 100,000 routine readings pile up, then one red reading.
    env.broker.stop();
    let t0 = Utc.timestamp_millis_opt(now.timestamp_millis()).unwrap();
    for chunk in 0..100u64 {
        let batch: Vec<Reading> = (0..1000u64)
            .map(|i| bp(100 + chunk * 1000 + i, 125, t0.timestamp_millis()))
            .collect();
        sources.append(Append::readings(batch, None)).await.unwrap();
    }
    let red = bp(1, 196, t0.timestamp_millis());
    sources
        .append(Append::readings(vec![red], None))
        .await
        .unwrap();
    assert_eq!(outbox.stats().borrow().pending, 100_002);

    // The gateway's uplink starts while the broker is still down, then the broker comes back.
    let files = env.pki.issue(GATEWAY, &[], false, None).unwrap();
    let settings = heim::uplink::Settings {
        host: "127.0.0.1".into(),
        port: env.broker.port,
        client_id: format!("heim-{GATEWAY}"),
        topic_root: format!("heim/v1/{GATEWAY}"),
        tls: heim::uplink::tls::client_config(&env.pki.ca, &files.cert, &files.key).unwrap(),
        batch: 100,
        inflight: 64,
        keep_alive: Duration::from_secs(30),
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_millis(500),
    };
    let renderer = heim::uplink::fhir::Renderer::new(GATEWAY, "p-demo");
    let (uplink, _handle) = heim::uplink::Uplink::new(settings, outbox.clone(), renderer);
    let uplink = uplink.with_careplan_links();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(uplink.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.broker.restart().unwrap();

    let got = hospital
        .wait_unique(100_001, Duration::from_secs(240))
        .await;
    assert_eq!(got, 100_001);
    let red_id = format!("urn:uuid:{}", red.id);
    hospital.with(|c| {
        let first: Vec<&(String, Option<String>)> = c.order.iter().take(3).collect();
        assert!(
            first.iter().any(|(t, _)| t == "events"),
            "the alert event is among the first messages: {first:?}"
        );
        assert!(
            first
                .iter()
                .any(|(t, id)| t == "observations" && id.as_deref() == Some(red_id.as_str())),
            "the red Observation is among the first messages: {first:?}"
        );
        let alert = c
            .events
            .iter()
            .find(|e| e["event"] == "careplan-alert")
            .expect("alert event");
        assert_eq!(alert["level"], "red");
        assert_eq!(alert["observation"], red_id);
        assert_eq!(alert["basedOn"], "ServiceRequest/sr-bp");
        assert_eq!(alert["components"][0]["interpretation"], "HH");
        assert_eq!(c.events.len(), 1, "one alert, no routine reading alerted");
        // The red Observation itself carries its link to the plan, the window it answered, the
        // ranges in force and the interpretation.
        let obs = c
            .first_observations
            .iter()
            .find(|o| o["identifier"][0]["value"] == red_id.as_str())
            .expect("the red Observation among the first");
        assert_eq!(
            obs["basedOn"][0]["reference"], "ServiceRequest/sr-bp",
            "{obs}"
        );
        assert!(
            obs["extension"].as_array().unwrap().iter().any(|e| e["url"]
                .as_str()
                .is_some_and(|u| u.ends_with("resolved-timing"))),
            "{obs}"
        );
        let sys = &obs["component"][0];
        assert_eq!(sys["interpretation"][0]["coding"][0]["code"], "HH", "{obs}");
        assert!(
            sys["referenceRange"]
                .as_array()
                .is_some_and(|r| !r.is_empty()),
            "{obs}"
        );
    });
    stop.cancel();
    let _ = task.await;
    drop(sources);
    drop(cp);
    outbox.flush().await.unwrap();
    drop(outbox);
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    hospital.stop().await;
}
