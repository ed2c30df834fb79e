//! A small MQTT 5 broker inside `heim demo`, for a machine without mosquitto: mutual TLS on a
//! loopback port, QoS 0/1, retained messages, last wills, and persistent sessions whose QoS 1
//! messages wait while their client is away — also across the demo's broker "outage", which
//! closes the listener and every connection but keeps the state, as a broker with persistence
//! would. Packets are read and written with rumqttc's own MQTT 5 codec.
//!
//! It is a demo fixture, not a production broker: one process, state in memory, no ACLs, no QoS 2,
//! no keep-alive enforcement. Tests and benchmarks use the real mosquitto ([`super::broker`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectReturnCode, LastWill, Packet, PingResp, PubAck, Publish, SubAck,
    SubscribeReasonCode,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::pki::Pki;

/// Errors starting the embedded broker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket or file I/O.
    #[error("embedded broker I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS material is unusable.
    #[error("embedded broker TLS: {0}")]
    Tls(String),
}

/// QoS 1 messages kept per absent persistent session at most (oldest dropped beyond).
const QUEUE_LIMIT: usize = 200_000;

#[derive(Default)]
struct Session {
    subs: Vec<String>,
    persistent: bool,
    /// The connected client, if any: (connection number, its outbox).
    conn: Option<(u64, mpsc::UnboundedSender<Publish>)>,
    /// Waiting while the client is away.
    queue: VecDeque<Publish>,
}

#[derive(Default)]
struct State {
    retained: HashMap<String, Publish>,
    sessions: HashMap<String, Session>,
    next_conn: u64,
}

impl State {
    fn route(&mut self, p: &Publish) {
        let topic = String::from_utf8_lossy(&p.topic).into_owned();
        if p.retain {
            if p.payload.is_empty() {
                self.retained.remove(&topic);
            } else {
                let mut kept = p.clone();
                kept.pkid = 0;
                self.retained.insert(topic.clone(), kept);
            }
        }
        for s in self.sessions.values_mut() {
            if !s
                .subs
                .iter()
                .any(|f| crate::uplink::topic_matches(f, &topic))
            {
                continue;
            }
            let mut out = p.clone();
            // Retain is only set on messages sent because of a new subscription.
            out.retain = false;
            out.pkid = 0;
            let delivered = match &s.conn {
                Some((_, tx)) => tx.send(out.clone()).is_ok(),
                None => false,
            };
            if !delivered && s.persistent && p.qos != QoS::AtMostOnce {
                if s.queue.len() >= QUEUE_LIMIT {
                    s.queue.pop_front();
                }
                s.queue.push_back(out);
            }
        }
    }
}

/// A running (or stopped) embedded broker.
pub struct Embedded {
    /// The port (kept across restarts).
    pub port: u16,
    state: Arc<Mutex<State>>,
    tls: Arc<rustls::ServerConfig>,
    stop: Option<CancellationToken>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Embedded {
    /// Starts on a free loopback port with the demo PKI's broker certificate, asking every client
    /// for a certificate from the demo CA.
    pub async fn start(pki: &Pki) -> Result<Self, Error> {
        let tls_err = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&pki.ca).map_err(|e| tls_err(&e))? {
            roots
                .add(c.map_err(|e| tls_err(&e))?)
                .map_err(|e| tls_err(&e))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| tls_err(&e))?;
        let chain = CertificateDer::pem_file_iter(&pki.server.cert)
            .map_err(|e| tls_err(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls_err(&e))?;
        let key = PrivateKeyDer::from_pem_file(&pki.server.key).map_err(|e| tls_err(&e))?;
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err(&e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| tls_err(&e))?;
        let port = super::broker::free_port()?;
        let mut b = Self {
            port,
            state: Arc::new(Mutex::new(State::default())),
            tls: Arc::new(tls),
            stop: None,
        };
        b.restart().await?;
        Ok(b)
    }

    /// Closes the listener and every connection; state (retained messages, persistent sessions
    /// and what waits for them) is kept.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            s.cancel();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.stop();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // The old listener's port may take a moment to be released.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        let state = self.state.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok((t, _)) => t, Err(_) => continue },
                };
                let (acceptor, state, stop) = (acceptor.clone(), state.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    connection(tls, state, stop).await;
                });
            }
        });
        Ok(())
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn connection<S>(mut io: S, state: Arc<Mutex<State>>, stop: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    const MAX: Option<u32> = Some(16 * 1024 * 1024);
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf = BytesMut::with_capacity(64 * 1024);
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    let mut client: Option<(String, u64)> = None;
    let mut will: Option<LastWill> = None;
    let mut next_pkid: u16 = 0;
    // Messages written to this client and not yet acknowledged: back to the queue if it goes away.
    let mut inflight: HashMap<u16, Publish> = HashMap::new();
    let clean_end = loop {
        // Parse what is buffered first.
        let packet = match Packet::read(&mut rbuf, MAX) {
            Ok(p) => Some(p),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => None,
            Err(_) => break false,
        };
        if let Some(packet) = packet {
            match packet {
                Packet::Connect(c, w, _) => {
                    will = w;
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    st.next_conn += 1;
                    let conn_no = st.next_conn;
                    let existed = st.sessions.contains_key(&c.client_id);
                    if c.clean_start {
                        st.sessions.remove(&c.client_id);
                    }
                    let persistent = c
                        .properties
                        .as_ref()
                        .and_then(|p| p.session_expiry_interval)
                        .is_some_and(|e| e > 0);
                    let s = st.sessions.entry(c.client_id.clone()).or_default();
                    s.persistent = persistent;
                    // A second connection with the same id takes the session over.
                    s.conn = Some((conn_no, tx.clone()));
                    let queued: Vec<Publish> = s.queue.drain(..).collect();
                    drop(st);
                    client = Some((c.client_id.clone(), conn_no));
                    let ack = ConnAck {
                        session_present: existed && !c.clean_start,
                        code: ConnectReturnCode::Success,
                        properties: None,
                    };
                    let _ = Packet::ConnAck(ack).write(&mut wbuf, None);
                    for p in queued {
                        let _ = tx.send(p);
                    }
                }
                Packet::Subscribe(s) => {
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    let mut codes = Vec::new();
                    let mut retained = Vec::new();
                    if let Some((id, _)) = &client
                        && let Some(sess) = st.sessions.get_mut(id)
                    {
                        for f in &s.filters {
                            if !sess.subs.contains(&f.path) {
                                sess.subs.push(f.path.clone());
                            }
                            codes.push(SubscribeReasonCode::Success(QoS::AtLeastOnce));
                        }
                    }
                    for f in &s.filters {
                        for (t, p) in &st.retained {
                            if crate::uplink::topic_matches(&f.path, t) {
                                retained.push(p.clone());
                            }
                        }
                    }
                    drop(st);
                    let _ = Packet::SubAck(SubAck {
                        pkid: s.pkid,
                        return_codes: codes,
                        properties: None,
                    })
                    .write(&mut wbuf, None);
                    for p in retained {
                        let _ = tx.send(p);
                    }
                }
                Packet::Publish(p) => {
                    if p.qos == QoS::AtLeastOnce {
                        let _ = Packet::PubAck(PubAck::new(p.pkid, None)).write(&mut wbuf, None);
                    }
                    state.lock().unwrap_or_else(|p| p.into_inner()).route(&p);
                }
                Packet::PubAck(a) => {
                    inflight.remove(&a.pkid);
                }
                Packet::PingReq(_) => {
                    let _ = Packet::PingResp(PingResp).write(&mut wbuf, None);
                }
                Packet::Disconnect(d) => {
                    break d.reason_code
                        == rumqttc::v5::mqttbytes::v5::DisconnectReasonCode::NormalDisconnection;
                }
                _ => {}
            }
            continue;
        }
        if !wbuf.is_empty() {
            if io.write_all(&wbuf).await.is_err() || io.flush().await.is_err() {
                break false;
            }
            wbuf.clear();
        }
        tokio::select! {
            _ = stop.cancelled() => break true,
            n = io.read_buf(&mut rbuf) => match n {
                Ok(0) | Err(_) => break false,
                Ok(_) => {}
            },
            Some(mut p) = rx.recv() => {
                if p.qos == QoS::AtLeastOnce {
                    next_pkid = next_pkid % u16::MAX + 1;
                    p.pkid = next_pkid;
                    inflight.insert(p.pkid, p.clone());
                }
                let _ = Packet::Publish(p).write(&mut wbuf, MAX);
            }
        }
    };
    let _ = io.shutdown().await;
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((id, conn_no)) = &client {
        let mut still_ours = false;
        if let Some(s) = st.sessions.get_mut(id)
            && s.conn.as_ref().is_some_and(|(n, _)| n == conn_no)
        {
            still_ours = true;
            s.conn = None;
            // Unacknowledged and not yet written: wait for the next connection, oldest first.
            let mut back: Vec<Publish> = inflight.into_values().collect();
            back.sort_by_key(|p| p.pkid);
            while let Ok(p) = rx.try_recv() {
                back.push(p);
            }
            if s.persistent {
                for p in back.into_iter().rev() {
                    s.queue.push_front(p);
                }
            } else {
                st.sessions.remove(id);
            }
        }
        // A broker going down does not fire wills (the clients see it and reconnect); a client
        // that vanishes does.
        if !clean_end
            && still_ours
            && let Some(w) = will
        {
            let mut p = Publish::new(
                String::from_utf8_lossy(&w.topic).into_owned(),
                w.qos,
                w.message.clone(),
                None,
            );
            p.retain = w.retain;
            st.route(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use rumqttc::{TlsConfiguration, Transport};

    fn options(pki: &Pki, port: u16, id: &str, with_cert: bool) -> MqttOptions {
        let tls = if with_cert {
            let files = pki.issue(id, &[], false, None).unwrap();
            crate::uplink::tls::client_config(&pki.ca, &files.cert, &files.key).unwrap()
        } else {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
                roots.add(c.unwrap()).unwrap();
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        };
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        o
    }

    /// Polls until a publish on `topic` arrives (or a connection error, returned as Err).
    async fn next_publish(ev: &mut rumqttc::v5::EventLoop) -> Result<Publish, String> {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), ev.poll()).await {
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Ok(p),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("timeout".into()),
            }
        }
    }

    #[tokio::test]
    async fn mutual_tls_retained_and_a_persistent_session_across_an_outage() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path(), "embedded").unwrap();
        let mut broker = Embedded::start(&pki).await.unwrap();

        // No client certificate: refused.
        let (_c, mut ev) = AsyncClient::new(options(&pki, broker.port, "anon", false), 10);
        assert!(next_publish(&mut ev).await.is_err());

        // A retained message reaches a later subscriber, flagged retained.
        let (publisher, mut pev) = AsyncClient::new(options(&pki, broker.port, "pub", true), 10);
        publisher
            .publish("heim/v1/gw/status", QoS::AtLeastOnce, true, "online")
            .await
            .unwrap();
        let drive = tokio::spawn(async move { while pev.poll().await.is_ok() {} });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut o = options(&pki, broker.port, "hospital", true);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        let (sub, mut sev) = AsyncClient::new(o.clone(), 10);
        sub.subscribe("heim/v1/gw/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        let r = next_publish(&mut sev).await.unwrap();
        assert!(r.retain && r.payload.as_ref() == b"online");
        drive.abort();

        // Outage: what the publisher sends while the subscriber is away waits for it.
        broker.stop();
        drop(sev);
        broker.restart().await.unwrap();
        let (publisher, mut pev) = AsyncClient::new(options(&pki, broker.port, "pub2", true), 10);
        publisher
            .publish("heim/v1/gw/observations", QoS::AtLeastOnce, false, "bundle")
            .await
            .unwrap();
        let drive = tokio::spawn(async move { while pev.poll().await.is_ok() {} });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_sub, mut sev) = AsyncClient::new(o, 10);
        let mut got = next_publish(&mut sev).await.unwrap();
        if got.retain {
            got = next_publish(&mut sev).await.unwrap();
        }
        assert_eq!(got.payload.as_ref(), b"bundle");
        drive.abort();
    }
}
