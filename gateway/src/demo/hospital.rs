//! The hospital side for the demo, tests and benchmarks: a real MQTT 5 subscriber with its own
//! client certificate and a persistent session, which reads the FHIR Bundles and keeps what a
//! FHIR server would (one Observation per identifier), plus what arrived in which order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::pki::Pki;

/// One Observation as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    /// `Observation.identifier[0].value` (`urn:uuid:…`).
    pub identifier: String,
    /// `Observation.device.reference`.
    pub device: String,
    /// A one-line readable summary.
    pub summary: String,
}

/// Everything received so far.
#[derive(Debug, Default)]
pub struct Collected {
    /// MQTT messages on `observations`.
    pub messages: u64,
    /// Observations, in arrival order (duplicates included).
    pub arrivals: Vec<Arrival>,
    /// Distinct identifiers (what a FHIR server with `ifNoneExist` keeps).
    pub unique: HashSet<String>,
    /// Messages on `events` (parsed JSON).
    pub events: Vec<Value>,
    /// The last retained or live status message.
    pub status: Option<Value>,
    /// Other topics: topic → count.
    pub other: HashMap<String, u64>,
    /// Payloads that were not valid FHIR JSON.
    pub malformed: u64,
    /// Every message in arrival order as (topic suffix, first identifier), for priority checks.
    pub order: Vec<(String, Option<String>)>,
    /// The first Observations received, whole (for checks on their content).
    pub first_observations: Vec<Value>,
}

impl Collected {
    /// Observations received more than once (redeliveries the identifier lets a server drop).
    pub fn duplicates(&self) -> u64 {
        self.arrivals.len() as u64 - self.unique.len() as u64
    }
}

/// A running hospital subscriber.
#[derive(Debug)]
pub struct Hospital {
    /// What arrived.
    pub collected: Arc<Mutex<Collected>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Hospital {
    /// Connects to the broker on `port` as `client_id` and subscribes to `heim/v1/{gateway}/#`.
    /// `parse` = false only counts messages (benchmarks: keep the subscriber's CPU out of the way).
    pub async fn start(
        pki: &Pki,
        port: u16,
        gateway_id: &str,
        client_id: &str,
        parse: bool,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let files = pki.issue(client_id, &[], false, None)?;
        let tls = crate::uplink::tls::client_config(&pki.ca, &files.cert, &files.key)?;
        Self::connect("127.0.0.1", port, tls, gateway_id, client_id, parse).await
    }

    /// As [`Hospital::start`], on any broker with TLS material of the caller's (a hardware rig's).
    pub async fn connect(
        host: &str,
        port: u16,
        tls: std::sync::Arc<rustls::ClientConfig>,
        gateway_id: &str,
        client_id: &str,
        parse: bool,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let mut o = MqttOptions::new(client_id, host, port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        o.set_max_packet_size(Some(16 * 1024 * 1024));
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let collected = Arc::new(Mutex::new(Collected::default()));
        let stop = CancellationToken::new();
        let filter = format!("heim/v1/{gateway_id}/#");
        let root = format!("heim/v1/{gateway_id}/");
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let task = {
            let collected = collected.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut subscribed = Some(subscribed_tx);
                loop {
                    let ev = tokio::select! {
                        _ = stop.cancelled() => break,
                        ev = eventloop.poll() => ev,
                    };
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                            if !ack.session_present {
                                let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                            }
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            if let Some(tx) = subscribed.take() {
                                let _ = tx.send(());
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let topic = String::from_utf8_lossy(&p.topic).into_owned();
                            let suffix = topic.strip_prefix(&root).unwrap_or(&topic).to_owned();
                            let mut c = collected.lock().unwrap_or_else(|e| e.into_inner());
                            record(&mut c, &suffix, &p.payload, parse);
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::debug!(error = %crate::uplink::explain(&error), "Hospital subscriber connection failed.");
                            // The broker is down: rumqttc reconnects on the next poll.
                            tokio::select! {
                                _ = stop.cancelled() => break,
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            }
                        }
                    }
                }
                let _ = client.disconnect().await;
            })
        };
        tokio::time::timeout(Duration::from_secs(10), subscribed_rx)
            .await
            .map_err(|_| "the hospital subscriber could not subscribe within 10 s")??;
        Ok(Self {
            collected,
            stop,
            task: Some(task),
        })
    }

    /// Distinct observations received.
    pub fn unique(&self) -> usize {
        self.collected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unique
            .len()
    }

    /// Runs `f` on what was collected.
    pub fn with<T>(&self, f: impl FnOnce(&Collected) -> T) -> T {
        f(&self.collected.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits until at least `n` distinct observations arrived, or `timeout`; returns the count.
    pub async fn wait_unique(&self, n: usize, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let u = self.unique();
            if u >= n || tokio::time::Instant::now() >= deadline {
                return u;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Disconnects.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

fn record(c: &mut Collected, suffix: &str, payload: &[u8], parse: bool) {
    match suffix {
        "observations" => {
            c.messages += 1;
            if !parse {
                c.order.push((suffix.to_owned(), None));
                return;
            }
            let Ok(v) = serde_json::from_slice::<Value>(payload) else {
                c.malformed += 1;
                return;
            };
            let mut first = None;
            // Name devices by their identifier (sim:0:3, a node id, a Bluetooth address).
            let names: HashMap<&str, &str> = v["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["resource"]["resourceType"] == "Device")
                .filter_map(|e| {
                    Some((
                        e["fullUrl"].as_str()?,
                        e["resource"]["identifier"][0]["value"].as_str()?,
                    ))
                })
                .collect();
            for e in v["entry"].as_array().into_iter().flatten() {
                let r = &e["resource"];
                if r["resourceType"] != "Observation" {
                    continue;
                }
                let Some(id) = r["identifier"][0]["value"].as_str() else {
                    c.malformed += 1;
                    continue;
                };
                first.get_or_insert_with(|| id.to_owned());
                if c.first_observations.len() < 32 {
                    c.first_observations.push(r.clone());
                }
                let a = Arrival {
                    identifier: id.to_owned(),
                    device: r["device"]["reference"]
                        .as_str()
                        .map(|d| names.get(d).copied().unwrap_or(d))
                        .unwrap_or("")
                        .to_owned(),
                    summary: summarize(r),
                };
                c.unique.insert(a.identifier.clone());
                c.arrivals.push(a);
            }
            c.order.push((suffix.to_owned(), first));
        }
        "events" => {
            let v = serde_json::from_slice(payload).unwrap_or(Value::Null);
            c.order.push((suffix.to_owned(), None));
            c.events.push(v);
        }
        "status" => {
            c.status = serde_json::from_slice(payload).ok();
        }
        other => {
            c.order.push((other.to_owned(), None));
            *c.other.entry(other.to_owned()).or_default() += 1;
        }
    }
}

/// "BP 132/84 mmHg" and the like, from an Observation.
pub fn summarize(r: &Value) -> String {
    let code = r["code"]["coding"][0]["code"].as_str().unwrap_or("");
    let q = |v: &Value| -> String {
        match (
            v["valueQuantity"]["value"].as_f64(),
            v["valueQuantity"]["unit"].as_str(),
        ) {
            (Some(x), Some(u)) => format!("{x} {u}"),
            _ => format!(
                "(no value: {})",
                v["dataAbsentReason"]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or("?")
            ),
        }
    };
    let name = match code {
        "150020" => {
            let c = &r["component"];
            let n = |i: usize| {
                c[i]["valueQuantity"]["value"]
                    .as_f64()
                    .map_or("–".to_string(), |v| v.to_string())
            };
            return format!("blood pressure {}/{} mmHg (mean {})", n(0), n(1), n(2));
        }
        "149546" | "149530" => "pulse",
        "150456" => "SpO2",
        "188736" => "weight",
        "188740" => "height",
        "188752" => "BMI",
        c if c.starts_with("1503") || c.starts_with("1884") => "temperature",
        c if c.starts_with("1601") || c.starts_with("1602") || c.starts_with("1603") => "glucose",
        other => other,
    };
    format!("{name} {}", q(r))
}
