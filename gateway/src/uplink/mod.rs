//! The uplink: the one MQTT 5 connection to the hospital's broker, over mutual TLS.
//!
//! It owns the rumqttc `EventLoop`, pulls rows from the [`Outbox`] in order
//! (priority lane first), sends them as FHIR transaction Bundles on
//! `heim/v1/{gateway_id}/observations` (QoS 1), and tells the outbox to delete a row only when the
//! PUBACK for *the packet that carried it* arrives. Other components publish through a [`Handle`]
//! and subscribe to topics through it.
//!
//! # Invariants
//! * At most `inflight` outbox messages are unacknowledged at once.
//! * Every (re)connection is a clean session with a fresh `EventLoop`: nothing that was in flight
//!   on the old connection is retransmitted by rumqttc with a packet id we no longer track. Instead
//!   the fetch position is reset and the outbox — which still holds every unacknowledged row —
//!   is sent again from its oldest row. Redelivery is harmless (stable reading ids).
//! * Reconnect delays are "full jitter" exponential back-off capped at `backoff_max_ms`.

pub mod fhir;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use heim_shared_types::Reading;
use rand::Rng;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, LastWill, Packet, PubAckReason, PublishProperties,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use rumqttc::{Outgoing, TlsConfiguration, Transport};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{Body, Lane, Outbox, Row, Stats};

/// A message another component wants sent (not durable: if the connection is down it waits in the
/// handle's queue, and is lost on restart — use the outbox for anything that must arrive).
#[derive(Debug, Clone)]
pub struct Message {
    /// Full topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Retain flag.
    pub retain: bool,
    /// Quality of service.
    pub qos: QoS,
    /// When the message stops being meaningful: it is sent with the remaining time as its MQTT 5
    /// message expiry interval, and dropped unsent if the time has passed while disconnected.
    pub expires_at: Option<tokio::time::Instant>,
    /// MQTT 5 content type.
    pub content_type: Option<String>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
}

/// A message that arrived on a subscribed topic.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
    /// Whether the broker delivered it as a retained message.
    pub retain: bool,
}

enum Request {
    Publish(Message),
    Subscribe {
        filter: String,
        tx: mpsc::Sender<Incoming>,
    },
}

/// Cloneable handle for other components.
#[derive(Clone, Debug)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    state: watch::Receiver<State>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Publish(m) => write!(f, "Publish({})", m.topic),
            Request::Subscribe { filter, .. } => write!(f, "Subscribe({filter})"),
        }
    }
}

/// Uplink errors reported to the handle's users.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The uplink task has stopped.
    #[error("the uplink has stopped")]
    Closed,
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] tls::Error),
}

impl Handle {
    /// Queues a message; it is sent when connected.
    pub async fn publish(&self, m: Message) -> Result<(), Error> {
        self.tx
            .send(Request::Publish(m))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Subscribes (QoS 1) to a topic filter; the subscription is renewed on every reconnect.
    /// Messages that do not fit in `capacity` wait (the uplink applies backpressure).
    pub async fn subscribe(
        &self,
        filter: &str,
        capacity: usize,
    ) -> Result<mpsc::Receiver<Incoming>, Error> {
        let (tx, rx) = mpsc::channel(capacity);
        self.tx
            .send(Request::Subscribe {
                filter: filter.to_owned(),
                tx,
            })
            .await
            .map_err(|_| Error::Closed)?;
        Ok(rx)
    }

    /// Connection state, updated on every change.
    pub fn state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }
}

/// Connection state for `heim status` and other components.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct State {
    /// Whether the session is up (CONNACK received).
    pub connected: bool,
    /// The last connection error, in plain words.
    pub last_error: Option<String>,
    /// Successful connections since start.
    pub connects: u64,
    /// Outbox rows acknowledged by the broker since start.
    pub delivered: u64,
    /// Messages the broker refused (negative PUBACK).
    pub refused: u64,
}

/// Everything the uplink needs, already validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// `heim/v1/{gateway_id}`.
    pub topic_root: String,
    /// TLS.
    pub tls: Arc<rustls::ClientConfig>,
    /// Readings per message.
    pub batch: usize,
    /// Unacknowledged outbox messages at most.
    pub inflight: u16,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// First back-off.
    pub backoff_min: Duration,
    /// Back-off cap.
    pub backoff_max: Duration,
}

/// Extra status members other components add to the retained status message.
pub type StatusExtra = watch::Receiver<serde_json::Map<String, serde_json::Value>>;

/// The uplink task.
#[derive(Debug)]
pub struct Uplink {
    settings: Settings,
    outbox: Outbox,
    renderer: fhir::Renderer,
    rx: mpsc::Receiver<Request>,
    state_tx: watch::Sender<State>,
    extra: Option<StatusExtra>,
    careplan_links: bool,
}

impl Uplink {
    /// Creates the uplink and its handle.
    pub fn new(settings: Settings, outbox: Outbox, renderer: fhir::Renderer) -> (Self, Handle) {
        let (tx, rx) = mpsc::channel(256);
        let (state_tx, state) = watch::channel(State::default());
        (
            Self {
                settings,
                outbox,
                renderer,
                rx,
                state_tx,
                extra: None,
                careplan_links: false,
            },
            Handle { tx, state },
        )
    }

    /// Renders each Observation with its care-plan links (`basedOn`, window, ranges,
    /// interpretation), read from the store.
    pub fn with_careplan_links(mut self) -> Self {
        self.careplan_links = true;
        self
    }

    /// Adds members to the retained status message (alarms from other components).
    pub fn with_status_extra(mut self, extra: StatusExtra) -> Self {
        self.extra = Some(extra);
        self
    }

    /// Runs until `shutdown`; then publishes the retained `offline` status and disconnects.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut subs: Vec<(String, mpsc::Sender<Incoming>)> = Vec::new();
        let mut attempt: u32 = 0;
        loop {
            let outcome = self.session(&mut subs, &shutdown).await;
            self.state_tx.send_modify(|s| s.connected = false);
            match outcome {
                SessionEnd::Shutdown => return,
                SessionEnd::Lost { was_connected } => {
                    if was_connected {
                        attempt = 0;
                    }
                }
            }
            let delay = backoff(
                self.settings.backoff_min,
                self.settings.backoff_max,
                attempt,
            );
            attempt = attempt.saturating_add(1);
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                attempt,
                "Reconnecting to the broker after a back-off."
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    fn options(&self) -> MqttOptions {
        let s = &self.settings;
        let mut o = MqttOptions::new(&s.client_id, &s.host, s.port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(s.tls.clone())));
        o.set_keep_alive(s.keep_alive);
        o.set_network_options(no_delay());
        o.set_clean_start(true);
        o.set_connection_timeout(10);
        o.set_max_packet_size(Some(4 * 1024 * 1024));
        // Room for our outbox window plus status, signalling and subscription traffic.
        o.set_outgoing_inflight_upper_limit(s.inflight.saturating_add(32));
        o.set_request_channel_capacity(usize::from(s.inflight) + 64);
        let offline = serde_json::json!({ "state": "offline" }).to_string();
        o.set_last_will(LastWill::new(
            format!("{}/status", s.topic_root),
            offline,
            QoS::AtLeastOnce,
            true,
            None,
        ));
        o
    }

    async fn session(
        &mut self,
        subs: &mut Vec<(String, mpsc::Sender<Incoming>)>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let cap = usize::from(self.settings.inflight) + 64;
        let (client, mut eventloop) = AsyncClient::new(self.options(), cap);
        // rumqttc's `poll` is not cancel-safe (a dropped future may cut a TLS record in half), so it
        // runs in a task of its own and never sits in a `select!` with other branches.
        let (ev_tx, mut events) = mpsc::channel::<Result<Event, ConnectionError>>(1024);
        let driver = tokio::spawn(async move {
            loop {
                let r = eventloop.poll().await;
                let stop = r.is_err();
                if ev_tx.send(r).await.is_err() || stop {
                    break;
                }
            }
        });
        let _abort = AbortOnDrop(driver);
        let mut s = Session {
            client,
            connected: false,
            after: [0, 0],
            queue: VecDeque::new(),
            fifo: VecDeque::new(),
            inflight: HashMap::new(),
            exhausted: false,
            last_status: None,
        };
        let appended = self.outbox.appended();
        let mut stats = self.outbox.stats();
        let mut extra = self.extra.clone();
        let mut status_tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.shutdown(&mut s, &mut events).await;
                    return SessionEnd::Shutdown;
                }
                ev = events.recv() => {
                    match ev {
                        None => return SessionEnd::Lost { was_connected: s.connected },
                        Some(Ok(ev)) => {
                            if let Err(end) = self.on_event(ev, &mut s, subs).await {
                                return end;
                            }
                        }
                        Some(Err(e)) => {
                            let msg = explain(&e);
                            tracing::warn!(error = %msg, "The broker connection failed.");
                            self.state_tx.send_modify(|st| st.last_error = Some(msg));
                            return SessionEnd::Lost { was_connected: s.connected };
                        }
                    }
                }
                req = self.rx.recv(), if s.connected && s.client_has_room(&self.settings) => {
                    match req {
                        Some(Request::Publish(m)) => {
                            if let Err(e) = s.publish_other(m) {
                                tracing::warn!(error = %e, "Could not queue a message.");
                            }
                        }
                        Some(Request::Subscribe { filter, tx }) => {
                            if let Err(e) = s.client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                                tracing::warn!(error = %e, "Could not subscribe.");
                            }
                            subs.push((filter, tx));
                        }
                        None => {}
                    }
                }
                _ = appended.notified(), if s.connected => {
                    s.exhausted = false;
                }
                _ = stats.changed(), if s.connected => {}
                _ = async { match extra.as_mut() { Some(e) => e.changed().await.ok(), None => std::future::pending().await } }, if s.connected => {}
                _ = status_tick.tick(), if s.connected => {
                    s.last_status = None;
                }
            }
            if s.connected {
                self.publish_status(&mut s, &stats.borrow().clone());
                if let Err(e) = self.fill(&mut s).await {
                    tracing::error!(error = %e, "Could not read the outbox.");
                }
            }
        }
    }

    async fn on_event(
        &mut self,
        ev: Event,
        s: &mut Session,
        subs: &mut Vec<(String, mpsc::Sender<Incoming>)>,
    ) -> Result<(), SessionEnd> {
        match ev {
            Event::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    let msg = format!("the broker refused the connection: {:?}", ack.code);
                    tracing::error!(error = %msg, "Connection refused.");
                    self.state_tx.send_modify(|st| st.last_error = Some(msg));
                    return Err(SessionEnd::Lost {
                        was_connected: false,
                    });
                }
                s.connected = true;
                self.state_tx.send_modify(|st| {
                    st.connected = true;
                    st.last_error = None;
                    st.connects += 1;
                });
                tracing::info!(
                    host = %self.settings.host,
                    port = self.settings.port,
                    backlog = self.outbox.stats().borrow().pending,
                    "Connected to the broker."
                );
                subs.retain(|(_, tx)| !tx.is_closed());
                for (filter, _) in subs.iter() {
                    if let Err(e) = s.client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                        tracing::warn!(error = %e, "Could not renew a subscription.");
                    }
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(ids) = s.fifo.pop_front().flatten() {
                    s.inflight.insert(pkid, ids);
                }
            }
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(ids) = s.inflight.remove(&ack.pkid) {
                    if matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        let n = ids.len() as u64;
                        if self.outbox.ack(ids).await.is_err() {
                            return Err(SessionEnd::Shutdown);
                        }
                        self.state_tx.send_modify(|st| st.delivered += n);
                    } else {
                        // Kept in the outbox; it goes again after the reconnect below.
                        tracing::error!(reason = ?ack.reason, rows = ids.len(), "The broker refused a message.");
                        self.state_tx.send_modify(|st| {
                            st.refused += 1;
                            st.last_error =
                                Some(format!("the broker refused a message: {:?}", ack.reason));
                        });
                        return Err(SessionEnd::Lost {
                            was_connected: false,
                        });
                    }
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                for (filter, tx) in subs.iter() {
                    if topic_matches(filter, &topic) {
                        let _ = tx
                            .send(Incoming {
                                topic: topic.clone(),
                                payload: p.payload.clone(),
                                retain: p.retain,
                            })
                            .await;
                    }
                }
            }
            Event::Incoming(Packet::Disconnect(d)) => {
                let msg = format!("the broker disconnected us: {:?}", d.reason_code);
                tracing::warn!(error = %msg, "Disconnected by the broker.");
                self.state_tx.send_modify(|st| st.last_error = Some(msg));
                return Err(SessionEnd::Lost {
                    was_connected: s.connected,
                });
            }
            _ => {}
        }
        Ok(())
    }

    /// Keeps the in-flight window full from the outbox.
    async fn fill(&mut self, s: &mut Session) -> Result<(), crate::store::Error> {
        let window = usize::from(self.settings.inflight);
        while s.outbox_in_flight() < window && s.client_has_room(&self.settings) {
            if s.queue.is_empty() {
                if s.exhausted {
                    return Ok(());
                }
                let want = (self.settings.batch * 8).min(1000);
                let rows = self.outbox.fetch(s.after, want).await?;
                if rows.len() < want {
                    s.exhausted = true;
                }
                if rows.is_empty() {
                    return Ok(());
                }
                for r in &rows {
                    let i = if r.lane == Lane::Priority { 0 } else { 1 };
                    s.after[i] = s.after[i].max(r.id);
                }
                s.queue.extend(rows);
            }
            let Some(first) = s.queue.pop_front() else {
                continue;
            };
            let mut taken: Vec<Row> = Vec::new();
            let (topic, payload, ids) = match first.body.clone() {
                Body::Event { topic, payload } => (
                    format!("{}/{}", self.settings.topic_root, topic),
                    payload,
                    vec![first.id],
                ),
                Body::Reading(reading) => {
                    let mut readings: Vec<Reading> = vec![reading];
                    let mut ids = vec![first.id];
                    while readings.len() < self.settings.batch {
                        match s.queue.front() {
                            Some(Row {
                                lane,
                                body: Body::Reading(_),
                                ..
                            }) if *lane == first.lane => {
                                let Some(row) = s.queue.pop_front() else {
                                    break;
                                };
                                if let Body::Reading(r) = &row.body {
                                    readings.push(*r);
                                    ids.push(row.id);
                                }
                                taken.push(row);
                            }
                            _ => break,
                        }
                    }
                    let links = if self.careplan_links {
                        crate::careplan::links(
                            &self.outbox,
                            readings.iter().map(|r| r.id).collect(),
                        )
                        .await?
                    } else {
                        std::collections::HashMap::new()
                    };
                    let refs: Vec<&Reading> = readings.iter().collect();
                    let mut json = String::with_capacity(1024 * refs.len());
                    self.renderer.bundle(
                        &refs,
                        &|i| links.get(&refs[i].id).map(|l| l as &dyn fhir::Extras),
                        &mut json,
                    );
                    (
                        format!("{}/observations", self.settings.topic_root),
                        json.into_bytes(),
                        ids,
                    )
                }
            };
            let props = PublishProperties {
                content_type: Some("application/fhir+json".into()),
                payload_format_indicator: Some(1),
                ..PublishProperties::default()
            };
            if let Err(e) =
                s.client
                    .try_publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
            {
                tracing::debug!(error = %e, "The client queue is full; retrying later.");
                // Put the rows back, in order, to be sent on the next round.
                for row in taken.into_iter().rev() {
                    s.queue.push_front(row);
                }
                s.queue.push_front(first);
                return Ok(());
            }
            s.fifo.push_back(Some(ids));
        }
        Ok(())
    }

    fn publish_status(&self, s: &mut Session, stats: &Stats) {
        let mut alarms: Vec<&str> = Vec::new();
        if stats.full {
            alarms.push("outbox_full");
        } else if stats.near_full {
            alarms.push("outbox_near_full");
        }
        if stats.disk_full {
            alarms.push("disk_full");
        }
        if stats.disk_low {
            alarms.push("disk_low");
        }
        let mut v = serde_json::json!({
            "state": "online",
            "backlog": stats.pending,
            "disk": { "used_bytes": stats.used_bytes, "max_bytes": stats.max_bytes, "free_bytes": stats.disk_free_bytes },
            "alarms": alarms,
            "version": env!("CARGO_PKG_VERSION"),
        });
        if let (Some(extra), Some(obj)) = (&self.extra, v.as_object_mut()) {
            for (k, val) in extra.borrow().iter() {
                if k == "alarms" {
                    if let (Some(list), Some(more)) = (
                        obj.get_mut("alarms").and_then(|a| a.as_array_mut()),
                        val.as_array(),
                    ) {
                        list.extend(more.iter().cloned());
                    }
                } else {
                    obj.insert(k.clone(), val.clone());
                }
            }
        }
        // Only on change of what matters (backlog rounded, so a draining outbox does not publish a
        // status per batch), or after the periodic tick cleared `last_status`.
        let key = {
            let mut k = v.clone();
            k["backlog"] = serde_json::json!(round_backlog(stats.pending));
            k["disk"]["used_bytes"] = serde_json::json!(stats.used_bytes / (1 << 20));
            k.to_string()
        };
        if s.last_status.as_deref() == Some(key.as_str()) {
            return;
        }
        if s.client_has_room(&self.settings) {
            let topic = format!("{}/status", self.settings.topic_root);
            if s.client
                .try_publish(topic, QoS::AtLeastOnce, true, v.to_string())
                .is_ok()
            {
                s.fifo.push_back(None);
                s.last_status = Some(key);
            }
        }
    }

    async fn shutdown(
        &mut self,
        s: &mut Session,
        events: &mut mpsc::Receiver<Result<Event, ConnectionError>>,
    ) {
        if !s.connected {
            return;
        }
        // Let what is in flight be acknowledged (bounded), so a clean stop does not redeliver.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let topic = format!("{}/status", self.settings.topic_root);
        let offline = serde_json::json!({ "state": "offline" }).to_string();
        let _ = s.client.try_publish(topic, QoS::AtLeastOnce, true, offline);
        s.fifo.push_back(None);
        let mut offline_sent = false;
        while tokio::time::Instant::now() < deadline
            && (!s.inflight.is_empty() || !s.fifo.is_empty() || !offline_sent)
        {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Ok(Event::Incoming(Packet::PubAck(ack))))) => {
                    if let Some(ids) = s.inflight.remove(&ack.pkid) {
                        let _ = self.outbox.ack(ids).await;
                    } else {
                        offline_sent = true;
                    }
                }
                Ok(Some(Ok(Event::Outgoing(Outgoing::Publish(pkid))))) => {
                    if let Some(ids) = s.fifo.pop_front().flatten() {
                        s.inflight.insert(pkid, ids);
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        let _ = s.client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), events.recv()).await;
        tracing::info!("Disconnected from the broker.");
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum SessionEnd {
    Shutdown,
    Lost { was_connected: bool },
}

struct Session {
    client: AsyncClient,
    connected: bool,
    /// Highest row id fetched per lane on this connection.
    after: [i64; 2],
    queue: VecDeque<Row>,
    /// One entry per publish request, in request order: the outbox rows it carries, if any.
    fifo: VecDeque<Option<Vec<i64>>>,
    /// Packet id → outbox rows, for publishes written to the network and not yet acknowledged.
    inflight: HashMap<u16, Vec<i64>>,
    /// The last fetch returned less than asked: wait for an append before fetching again.
    exhausted: bool,
    last_status: Option<String>,
}

impl Session {
    fn outbox_in_flight(&self) -> usize {
        self.inflight.len() + self.fifo.iter().filter(|f| f.is_some()).count()
    }

    fn client_has_room(&self, settings: &Settings) -> bool {
        self.fifo.len() + self.inflight.len() < usize::from(settings.inflight) + 32
    }

    fn publish_other(&mut self, m: Message) -> Result<(), Box<rumqttc::v5::ClientError>> {
        let expiry = match m.expires_at {
            Some(at) => {
                let left = at.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    tracing::debug!(topic = %m.topic, "A message expired before it could be sent; dropped.");
                    return Ok(());
                }
                // Rounded up: a message with 300 ms left must not become "never expires" (0).
                Some(u32::try_from(left.as_millis().div_ceil(1000)).unwrap_or(u32::MAX))
            }
            None => None,
        };
        let props = PublishProperties {
            message_expiry_interval: expiry,
            content_type: m.content_type,
            user_properties: m.user_properties,
            ..PublishProperties::default()
        };
        self.client
            .try_publish_with_properties(m.topic, m.qos, m.retain, m.payload, props)
            .map_err(Box::new)?;
        self.fifo.push_back(None);
        Ok(())
    }
}

fn round_backlog(n: u64) -> u64 {
    match n {
        0..=9 => n,
        10..=999 => n / 10 * 10,
        _ => {
            let mag = 10u64.pow(n.ilog10() - 1);
            n / mag * mag
        }
    }
}

/// TCP options for broker connections: no Nagle delay. MQTT's small packets (an alert, a PUBACK,
/// a signalling event) otherwise wait for the peer's delayed ACK — measured 88 ms per signalling
/// round trip through mosquitto before, see README "Performance"; rumqttc already writes what is
/// pending in one go, so bulk throughput does not depend on Nagle.
pub fn no_delay() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// "Full jitter" back-off: uniform in `0..=min(cap, base·2^attempt)`, at least 50 ms.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
    let ceiling = exp.min(cap);
    let ms = rand::rng().random_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(ms.max(50))
}

/// MQTT topic-filter matching with `+` and `#`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A connection error in plain words, with the cause an operator can act on.
pub fn explain(e: &ConnectionError) -> String {
    let raw = e.to_string();
    let during_tls = matches!(e, ConnectionError::Tls(_));
    let io_kind = match e {
        ConnectionError::Io(io) => Some(io.kind()),
        ConnectionError::Tls(rumqttc::TlsError::Io(io)) => Some(io.kind()),
        _ => None,
    };
    if raw.contains("UnknownIssuer") || raw.contains("invalid peer certificate") {
        if raw.contains("Expired") {
            return format!("TLS: the broker's certificate has expired ({raw})");
        }
        return format!("TLS: the broker's certificate is not signed by the configured CA ({raw})");
    }
    if raw.contains("fatal alert: CertificateExpired") {
        return format!("TLS: the broker rejected our client certificate: it has expired ({raw})");
    }
    if raw.contains("fatal alert") {
        return format!("TLS: the broker rejected our client certificate ({raw})");
    }
    if during_tls
        && matches!(
            io_kind,
            Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::UnexpectedEof)
        )
        || raw.contains("corrupt message")
        || io_kind == Some(std::io::ErrorKind::InvalidData)
    {
        return format!(
            "TLS handshake failed: the broker closed the connection without speaking TLS — is this a plaintext-only port? ({raw})"
        );
    }
    match e {
        ConnectionError::Timeout(_) => "the broker did not answer within the timeout".into(),
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection: {code:?}")
        }
        ConnectionError::Io(_) => format!("network: {raw}"),
        _ => raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters() {
        assert!(topic_matches("heim/v1/+/careplan", "heim/v1/gw/careplan"));
        assert!(topic_matches("heim/#", "heim/v1/gw/sig/down"));
        assert!(!topic_matches("heim/v1/gw/sig/down", "heim/v1/gw/sig/up"));
        assert!(!topic_matches("a/b", "a/b/c"));
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let cap = Duration::from_secs(10);
        let base = Duration::from_millis(250);
        let draws: Vec<_> = (0..200).map(|_| backoff(base, cap, 30)).collect();
        assert!(draws.iter().all(|d| *d <= cap));
        let distinct: std::collections::HashSet<_> = draws.iter().collect();
        assert!(
            distinct.len() > 50,
            "delays must be spread out, not lockstep"
        );
        assert!(backoff(base, cap, 0) <= base.max(Duration::from_millis(50)));
    }

    #[test]
    fn backlog_rounding() {
        assert_eq!(round_backlog(7), 7);
        assert_eq!(round_backlog(123), 120);
        assert_eq!(round_backlog(123_456), 120_000);
    }
}
