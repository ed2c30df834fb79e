//! HoloLens video sessions, brokered as **signalling only**: the LAN API a headset calls
//! ([`http`]), the hospital side over the uplink's MQTT connection (`heim/v1/{gateway_id}/sig/up`
//! and `…/sig/down`, QoS 1, never retained, each message expiring with its lifetime), the call
//! state machine between them ([`machine`]), and the retained `…/sig/presence` with its last will.
//!
//! The gateway never touches media: no media ports, no TURN, no SFU. It passes the hospital's
//! ICE servers through to the headset and relays SDP and candidates, which it keeps only in memory,
//! inside [`wire::Secret`]s, for the life of the call, and never logs, stores or quotes in an error.
//! See `docs/signalling.md` for the operator's view.

pub mod http;
pub mod machine;
pub mod sdp;
pub mod tls;
pub mod tokens;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::uplink;
use machine::{Machine, Timers, Up};

/// Why signalling could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The certificate could not be loaded or made.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// The token file is unusable.
    #[error(transparent)]
    Tokens(#[from] tokens::Error),
    /// The LAN port could not be bound.
    #[error("cannot listen on {addr} for the signalling API: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The uplink has stopped.
    #[error(transparent)]
    Uplink(#[from] uplink::Error),
}

/// Everything signalling needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// LAN address of the HTTPS API.
    pub listen: SocketAddr,
    /// Server certificate chain and key.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The token file.
    pub tokens: PathBuf,
    /// `heim/v1/{gateway_id}`.
    pub topic_root: String,
    /// Our party id (`gw.{gateway_id}`).
    pub party: String,
    /// The hospital signalling service's retained presence topic.
    pub hospital_presence: String,
    /// Timers.
    pub timers: Timers,
    /// Concurrent calls at most.
    pub max_calls: usize,
    /// Per-token request budget (POST, PATCH, DELETE) per minute.
    pub rate_per_minute: u32,
    /// Per-token burst.
    pub rate_burst: u32,
    /// Hospital events per minute at most (bursts of a sixth of it, at least 100).
    pub inbound_per_minute: u32,
    /// Keys `sig/down` events must be signed with (none: events are plain JSON).
    pub hospital_keys: crate::careplan::envelope::TrustedKeys,
    /// This gateway's id (the `aud` of signed events).
    pub gateway_id: String,
    /// Signs `sig/up` events when the hospital's are signed (the key's file, see
    /// [`signing_key_paths`]).
    pub signer: Option<Arc<crate::careplan::envelope::signer::Signer>>,
}

/// The `aud` of the gateway's own signed events.
pub const HOSPITAL_AUD: &str = "hospital";

/// Where the gateway keeps its signalling signing key (PKCS#8) and its public half (PEM, for the
/// hospital's service), under the signalling directory.
pub fn signing_key_paths(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    (dir.join("sign.pk8"), dir.join("gateway-sig.pem"))
}

/// Loads (or makes) the signing key and writes its public PEM beside it.
pub fn signing_key(
    dir: &std::path::Path,
) -> std::io::Result<crate::careplan::envelope::signer::Signer> {
    let (key, public) = signing_key_paths(dir);
    let s = crate::careplan::envelope::signer::Signer::load_or_create(&key)?;
    tokens::match_owner(&key);
    std::fs::write(&public, s.public_pem())?;
    tokens::match_owner(&public);
    Ok(s)
}

/// `typ` of a signed signalling event.
pub const SIGNED_TYP: &str = "heim-sig+jws";

/// Unwraps a signed event (or passes a plain one when no keys are configured).
pub fn unwrap_event(
    payload: &[u8],
    keys: &crate::careplan::envelope::TrustedKeys,
    gateway_id: &str,
) -> Result<wire::Event, String> {
    if keys.is_empty() {
        return wire::Event::parse(payload).map_err(|e| e.to_string());
    }
    let now = chrono::Utc::now().timestamp();
    let v = crate::careplan::envelope::verify_typed(payload, keys, gateway_id, now, SIGNED_TYP)
        .map_err(|r| format!("signature check: {}", r.code()))?;
    wire::Event::parse(&v.payload).map_err(|e| e.to_string())
}

/// A running signalling service.
#[derive(Debug)]
pub struct Service {
    /// The address the API listens on (useful when the port was 0).
    pub local_addr: SocketAddr,
    /// `signalling` member for `heim status`.
    pub status: watch::Receiver<Map<String, Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Waits until it has stopped (after `shutdown`; every live call hung up first).
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

/// Largest inbound event accepted from MQTT (an SDP plus JSON).
const MAX_EVENT: usize = sdp::MAX_SDP + 8 * 1024;

/// Starts the API, the MQTT side and the timers.
pub async fn start(
    settings: Settings,
    up_link: uplink::Handle,
    shutdown: CancellationToken,
) -> Result<Service, Error> {
    let server_tls = tls::server_config(&settings.cert, &settings.key)?;
    let tokens = tokens::Tokens::open(settings.tokens.clone())?;
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: settings.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: settings.listen,
        source,
    })?;
    let down = up_link
        .subscribe(&format!("{}/sig/down", settings.topic_root), 64)
        .await?;
    let presence = up_link.subscribe(&settings.hospital_presence, 4).await?;
    let (up_tx, up_rx) = mpsc::channel::<Up>(256);
    let shared = Arc::new(http::Shared::new(
        Machine::new(settings.party.clone(), settings.timers, settings.max_calls),
        up_tx,
        tokens,
        tokens::RateLimit::new(settings.rate_per_minute, settings.rate_burst),
        settings.timers.answer,
    ));
    let (status_tx, status) = watch::channel(Map::new());
    tracing::info!(%local_addr, "Signalling API listening (HTTPS).");

    let task = tokio::spawn(async move {
        let http_stop = CancellationToken::new();
        let server = tokio::spawn(http::serve(
            listener,
            server_tls,
            shared.clone(),
            http_stop.clone(),
        ));
        let publisher = tokio::spawn(publish(
            up_rx,
            up_link.clone(),
            format!("{}/sig/up", settings.topic_root),
            settings
                .signer
                .clone()
                .map(|s| (s, settings.gateway_id.clone())),
        ));
        let work_stop = CancellationToken::new();
        let inbound = Inbound {
            limit: tokens::RateLimit::new(
                settings.inbound_per_minute,
                (settings.inbound_per_minute / 6).max(100),
            ),
            keys: settings.hospital_keys.clone(),
            gateway_id: settings.gateway_id.clone(),
        };
        let worker = tokio::spawn(work(
            shared.clone(),
            inbound,
            down,
            presence,
            settings.hospital_presence.clone(),
            status_tx,
            work_stop.clone(),
        ));
        shutdown.cancelled().await;
        // Hang up first, so the hangups reach the hospital and the held requests return.
        shared.with(|m, now| m.shutdown(now));
        http_stop.cancel();
        let _ = server.await;
        work_stop.cancel();
        let _ = worker.await;
        drop(shared);
        let _ = tokio::time::timeout(Duration::from_secs(2), publisher).await;
    });
    Ok(Service {
        local_addr,
        status,
        task,
    })
}

/// Forwards machine events to `sig/up` with their remaining lifetime as MQTT expiry; signed (a
/// compact JWS, `kid` = the gateway id) when the hospital's events are.
async fn publish(
    mut rx: mpsc::Receiver<Up>,
    link: uplink::Handle,
    topic: String,
    signer: Option<(Arc<crate::careplan::envelope::signer::Signer>, String)>,
) {
    while let Some(u) = rx.recv().await {
        let call_id = u.event.call_id.clone();
        let json = u.event.to_json();
        let payload = match &signer {
            Some((s, gateway_id)) => {
                let exp = chrono::Utc::now().timestamp()
                    + i64::try_from(u.lifetime.as_secs()).unwrap_or(i64::MAX / 2)
                    + 1;
                let header = json!({"alg": "ES256", "typ": SIGNED_TYP, "kid": gateway_id,
                    "aud": HOSPITAL_AUD, "seq": u.event.seq, "exp": exp});
                Bytes::from(s.sign_compact(&header, &json))
            }
            None => Bytes::from(json),
        };
        let m = uplink::Message {
            topic: topic.clone(),
            payload,
            retain: false,
            qos: QoS::AtLeastOnce,
            expires_at: Some(tokio::time::Instant::now() + u.lifetime),
            content_type: Some(
                if signer.is_some() {
                    "application/jose"
                } else {
                    wire::CONTENT_TYPE
                }
                .to_owned(),
            ),
            user_properties: vec![("call_id".into(), call_id)],
        };
        if link.publish(m).await.is_err() {
            return;
        }
    }
}

/// Hospital events in, timers, status.
/// What guards `sig/down`: the flood limit and, when configured, the hospital's signing keys.
struct Inbound {
    limit: tokens::RateLimit,
    keys: crate::careplan::envelope::TrustedKeys,
    gateway_id: String,
}

async fn work(
    shared: Arc<http::Shared>,
    inbound: Inbound,
    mut down: mpsc::Receiver<uplink::Incoming>,
    mut presence: mpsc::Receiver<uplink::Incoming>,
    presence_topic: String,
    status: watch::Sender<Map<String, Value>>,
    stop: CancellationToken,
) {
    let mut changed = shared.subscribe();
    let mut refused: u64 = 0;
    let mut hospital_online: Option<bool> = None;
    loop {
        let next = shared.with(|m, _| m.next_deadline());
        let sleep_until = next.map(|at| tokio::time::Instant::from_std(shared.instant(at)));
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = async { match sleep_until { Some(at) => tokio::time::sleep_until(at).await, None => std::future::pending().await } } => {
                shared.with(|m, now| m.tick(now));
            }
            m = down.recv() => {
                let Some(m) = m else { return };
                if inbound.limit.take("down", std::time::Instant::now()).is_err() {
                    refused += 1;
                    tracing::warn!("Inbound signalling rate exceeded; event dropped.");
                } else if m.payload.len() > MAX_EVENT {
                    refused += 1;
                    tracing::warn!(bytes = m.payload.len(), "Oversized signalling event dropped.");
                } else {
                    match unwrap_event(&m.payload, &inbound.keys, &inbound.gateway_id) {
                        Ok(e) => shared.with(|mach, now| mach.down(e, now)),
                        Err(e) => {
                            refused += 1;
                            tracing::warn!(error = %e, bytes = m.payload.len(), "Signalling event refused.");
                        }
                    }
                }
            }
            m = presence.recv() => {
                let Some(m) = m else { return };
                if m.topic != presence_topic { continue; }
                let online = serde_json::from_slice::<Value>(&m.payload)
                    .ok()
                    .and_then(|v| v.get("state").and_then(Value::as_str).map(|s| s == "online"))
                    .unwrap_or(false);
                hospital_online = Some(online);
                shared.with(|mach, now| mach.hospital_presence(online, now));
            }
            _ = changed.changed() => {}
        }
        let snapshot = shared.with(|m, _| {
            let mut o = Map::new();
            o.insert("live_calls".into(), json!(m.live_calls()));
            o.insert("hospital_online".into(), json!(hospital_online));
            o.insert("refused_events".into(), json!(refused));
            o.insert(
                "stats".into(),
                serde_json::to_value(m.stats()).unwrap_or_default(),
            );
            o
        });
        let mut wrapped = Map::new();
        wrapped.insert("signalling".into(), Value::Object(snapshot));
        status.send_if_modified(|cur| {
            if *cur == wrapped {
                false
            } else {
                *cur = wrapped;
                true
            }
        });
    }
}

/// The retained `…/sig/presence`: `online` while this gateway can take calls, `offline` from its
/// last will when it vanishes. MQTT gives one will per connection and the uplink's is the gateway
/// `status`, so presence has a small connection of its own (same broker, certificate and TLS).
pub async fn presence(settings: uplink::Settings, max_calls: usize, shutdown: CancellationToken) {
    let topic = format!("{}/sig/presence", settings.topic_root);
    let online = json!({ "state": "online", "max_calls": max_calls }).to_string();
    let offline = json!({ "state": "offline" }).to_string();
    let mut attempt = 0u32;
    loop {
        let mut o = MqttOptions::new(
            format!("{}-sig", settings.client_id),
            &settings.host,
            settings.port,
        );
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(
            settings.tls.clone(),
        )));
        o.set_keep_alive(Duration::from_secs(15));
        o.set_network_options(uplink::no_delay());
        // rumqttc sizes a table by this limit up front (default 65,535 entries, ≈ 14 MB measured):
        // presence has at most one message in flight.
        o.set_outgoing_inflight_upper_limit(4);
        o.set_clean_start(true);
        o.set_connection_timeout(10);
        o.set_last_will(LastWill::new(
            topic.clone(),
            offline.clone(),
            QoS::AtLeastOnce,
            true,
            None,
        ));
        let (client, mut ev) = AsyncClient::new(o, 8);
        // `poll` is not cancel-safe: it runs in its own task (as in the uplink).
        let (tx, mut rx) = mpsc::channel(16);
        let driver = tokio::spawn(async move {
            loop {
                let r = ev.poll().await;
                let stop = r.is_err();
                if tx.send(r).await.is_err() || stop {
                    break;
                }
            }
        });
        let mut connected = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    if connected {
                        let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, true, offline.clone());
                        // Let the offline presence go out before the disconnect.
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                        while let Ok(Some(Ok(e))) = tokio::time::timeout_at(deadline, rx.recv()).await {
                            if matches!(e, MqttEvent::Incoming(Packet::PubAck(_))) { break; }
                        }
                        let _ = client.try_disconnect();
                        let _ = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
                    }
                    driver.abort();
                    return;
                }
                e = rx.recv() => match e {
                    Some(Ok(MqttEvent::Incoming(Packet::ConnAck(_)))) => {
                        connected = true;
                        attempt = 0;
                        let _ = client.try_publish(topic.clone(), QoS::AtLeastOnce, true, online.clone());
                        tracing::info!("Signalling presence online.");
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %uplink::explain(&e), "Presence connection lost.");
                        break;
                    }
                    None => break,
                }
            }
        }
        driver.abort();
        let delay = uplink::backoff(settings.backoff_min, settings.backoff_max, attempt);
        attempt = attempt.saturating_add(1);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}
