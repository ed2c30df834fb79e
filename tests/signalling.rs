//! HoloLens signalling end to end: the LAN API over HTTPS with enrolled tokens, the hospital side
//! on a real mosquitto with mutual TLS, and two real WebRTC peers (aiortc) that connect through the
//! gateway, exchange data-channel messages and video, and hang up from either side. Afterwards no
//! SDP, candidate, ICE password or fingerprint may be found in the gateway's log or database.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use heim::demo::broker::free_port;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const PRESENCE: &str = "heim/v1/hospital/sig/presence";

struct Sig {
    env: Env,
    config: PathBuf,
    port: u16,
    ca: PathBuf,
}

fn setup(extra: &str) -> Sig {
    let env = Env::new();
    let port = free_port().unwrap();
    let config = env.config(&format!(
        "[signalling]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n"
    ));
    let ca = config.with_file_name("signalling").join("ca.pem");
    Sig {
        env,
        config,
        port,
        ca,
    }
}

fn enrol(config: &Path, name: &str) -> Value {
    let out = heim_command()
        .args(["sig", "enrol", "--json", "--config"])
        .arg(config)
        .arg(name)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "enrol: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A minimal HTTPS/1.1 client (one request per connection) that trusts the gateway's CA.
struct Http {
    port: u16,
    tls: Arc<rustls::ClientConfig>,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

impl Http {
    fn new(port: u16, ca: &Path) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self {
            port,
            tls: Arc::new(tls),
        }
    }

    async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let conn = tokio_rustls::TlsConnector::from(self.tls.clone());
        let mut s = conn
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("TLS to the signalling API with the gateway's CA");
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Resp {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }
}

/// The hospital's signalling service, in Rust, for the API checks: records `sig/up`, sends to
/// `sig/down`.
struct RustHospital {
    client: AsyncClient,
    up: mpsc::Receiver<(Value, Option<PublishProperties>, bool)>,
    seq: u64,
}

impl RustHospital {
    async fn start(env: &Env, presence_online: bool) -> Self {
        let files = env.pki.issue("hospital-sig", &[], false, None).unwrap();
        let tls = heim::uplink::tls::client_config(&env.pki.ca, &files.cert, &files.key).unwrap();
        let mut o = MqttOptions::new("hospital-sig", "127.0.0.1", env.broker.port);
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        o.set_keep_alive(Duration::from_secs(10));
        let (client, mut ev) = AsyncClient::new(o, 32);
        // Retain as published: shows whether the gateway set the retain flag, even on live messages.
        let mut filter = Filter::new(format!("heim/v1/{GATEWAY}/sig/#"), QoS::AtLeastOnce);
        filter.preserve_retain = true;
        client.subscribe_many([filter]).await.unwrap();
        if presence_online {
            client
                .publish(PRESENCE, QoS::AtLeastOnce, true, r#"{"state":"online"}"#)
                .await
                .unwrap();
        }
        let (tx, up) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                match ev.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).into_owned();
                        // A signed event (a compact JWS) is kept as text for the test to verify.
                        let mut v: Value = serde_json::from_slice(&p.payload).unwrap_or_else(
                            |_| json!({"_jws": String::from_utf8_lossy(&p.payload)}),
                        );
                        v["_topic"] = json!(topic);
                        if tx.send((v, p.properties, p.retain)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self { client, up, seq: 0 }
    }

    /// The next `sig/up` event of `kind` (others are skipped).
    async fn next(&mut self, kind: &str) -> (Value, Option<PublishProperties>, bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (v, p, r) = tokio::time::timeout(left, self.up.recv())
                .await
                .unwrap_or_else(|_| panic!("no {kind} on sig/up"))
                .unwrap();
            if v["_topic"].as_str().is_some_and(|t| t.ends_with("/sig/up")) && v["type"] == kind {
                return (v, p, r);
            }
        }
    }

    async fn send(&mut self, mut ev: Value) {
        self.seq += 1;
        ev["v"] = json!(1);
        ev["party_id"] = json!("hosp.dr-test");
        if ev.get("seq").is_none() {
            ev["seq"] = json!(self.seq);
        }
        let props = PublishProperties {
            message_expiry_interval: Some(30),
            ..Default::default()
        };
        self.client
            .publish_with_properties(
                format!("heim/v1/{GATEWAY}/sig/down"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&ev).unwrap(),
                props,
            )
            .await
            .unwrap();
    }
}

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:offerpasswordofferpassword\r\na=fingerprint:sha-256 AA:BB\r\na=candidate:1 1 udp 2122260223 10.0.0.2 5000 typ host\r\n";
const ANSWER: &str = "v=0\r\no=- 2 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:wxyz\r\na=ice-pwd:answerpasswordanswerpass\r\na=candidate:2 1 udp 2122260223 10.0.0.3 6000 typ host\r\na=end-of-candidates\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_api_refusals_and_the_hospital_side() {
    let sig = setup("rate_per_minute = 60\nrate_burst = 20\n");
    let a = enrol(&sig.config, "hl2-a");
    let b = enrol(&sig.config, "hl2-b");
    let (ta, tb) = (a["token"].as_str().unwrap(), b["token"].as_str().unwrap());
    assert!(
        a["ca_sha256"].as_str().unwrap().len() == 95,
        "SHA-256 AA:BB:…"
    );
    // A second enrolment under the same name is refused.
    let again = heim_command()
        .args(["sig", "enrol", "--config"])
        .arg(&sig.config)
        .arg("hl2-a")
        .output()
        .unwrap();
    assert!(!again.status.success());

    let mut hospital = RustHospital::start(&sig.env, true).await;
    let mut gw = Gateway::start(&sig.config);
    gw.wait_ready().await;
    let http = Http::new(sig.port, &sig.ca);
    // The API is up once the presence says so.
    let (presence, _, retained) = hospital.next_presence().await;
    assert_eq!(presence["state"], "online");
    assert!(retained);

    // No token, a wrong token: 401 with a Bearer challenge.
    let r = http.req("GET", "/v1/calls", None, &[], b"").await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"));
    let r = http
        .req("GET", "/v1/calls", Some("not-a-token"), &[], b"")
        .await;
    assert_eq!(r.status, 401);
    // CORS preflight needs no token.
    let r = http
        .req("OPTIONS", "/v1/calls/x/whip", None, &[], b"")
        .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("accept-post"), Some("application/sdp"));

    // Ring out.
    let json_ct = [("Content-Type", "application/json")];
    let r = http
        .req(
            "POST",
            "/v1/calls",
            Some(ta),
            &json_ct,
            br#"{"to":"team:ortopedi"}"#,
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r);
    let loc = r.header("location").unwrap().to_owned();
    let cid = r.json()["call"].as_str().unwrap().to_owned();
    assert_eq!(cid.len(), 22, "128 random bits");
    assert!(loc.ends_with(&cid));
    let (ring, props, retained) = hospital.next("ring").await;
    assert!(!retained, "signalling is never retained");
    let props = props.expect("properties");
    let expiry = props.message_expiry_interval.expect("message expiry");
    assert!((85..=90).contains(&expiry), "{expiry}");
    assert_eq!(
        props.content_type.as_deref(),
        Some("application/vnd.heim.sig+json")
    );
    let wire_id = ring["call_id"].as_str().unwrap().to_owned();
    assert!(
        props
            .user_properties
            .contains(&("call_id".into(), wire_id.clone()))
    );
    assert_eq!(
        (ring["to"].as_str(), ring["from"].as_str()),
        (Some("team:ortopedi"), Some("hl2-a"))
    );
    assert_ne!(wire_id, cid, "the LAN id never leaves the LAN");

    // A second call while one is live: 503.
    let r = http
        .req(
            "POST",
            "/v1/calls",
            Some(ta),
            &json_ct,
            br#"{"to":"team:x"}"#,
        )
        .await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());

    // Another token's call looks like no call at all.
    let r = http.req("GET", &loc, Some(tb), &[], b"").await;
    assert_eq!(r.status, 404);
    let r = http.req("DELETE", &loc, Some(tb), &[], b"").await;
    assert_eq!(r.status, 404);
    let r = http
        .req(
            "POST",
            &format!("{loc}/whip"),
            Some(tb),
            &[("Content-Type", "application/sdp")],
            OFFER.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 404);

    // Long-poll: the accept wakes a waiting GET.
    let r = http.req("GET", &loc, Some(ta), &[], b"").await;
    let etag = r.header("etag").unwrap().to_owned();
    let waiter = {
        let (port, ca, ta, loc, etag) = (
            sig.port,
            sig.ca.clone(),
            ta.to_owned(),
            loc.clone(),
            etag.clone(),
        );
        tokio::spawn(async move {
            let http = Http::new(port, &ca);
            let t0 = Instant::now();
            let r = http
                .req(
                    "GET",
                    &format!("{loc}?wait=20"),
                    Some(&ta),
                    &[("If-None-Match", &etag)],
                    b"",
                )
                .await;
            (r, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    hospital
        .send(json!({"type": "accept", "call_id": wire_id, "ice_servers": [
            {"urls": ["turns:turn.example.no:443?transport=tcp"], "username": "1746350000:c", "credential": "s3cret"}]}))
        .await;
    let (r, waited) = waiter.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "accepted");
    assert!(
        waited >= Duration::from_millis(250),
        "it waited for the change"
    );

    // Offers: wrong type 415, too big 413, not SDP 400.
    let whip = format!("{loc}/whip");
    let r = http
        .req(
            "POST",
            &whip,
            Some(ta),
            &[("Content-Type", "text/plain")],
            OFFER.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 415);
    let big = format!("{OFFER}{}", "a=x-pad:0123456789abcdef\r\n".repeat(3000));
    let r = http
        .req(
            "POST",
            &whip,
            Some(ta),
            &[("Content-Type", "application/sdp")],
            big.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 413);
    let r = http
        .req(
            "POST",
            &whip,
            Some(ta),
            &[("Content-Type", "application/sdp")],
            b"hello",
        )
        .await;
    assert_eq!(r.status, 400);

    // The real offer is held until the hospital answers.
    let offer = {
        let (port, ca, ta, whip) = (sig.port, sig.ca.clone(), ta.to_owned(), whip.clone());
        tokio::spawn(async move {
            Http::new(port, &ca)
                .req(
                    "POST",
                    &whip,
                    Some(&ta),
                    &[("Content-Type", "application/sdp")],
                    OFFER.as_bytes(),
                )
                .await
        })
    };
    let (invite, props, _) = hospital.next("invite").await;
    assert_eq!(invite["offer"]["sdp"], OFFER);
    assert!(props.unwrap().message_expiry_interval.unwrap() <= 20);
    hospital
        .send(json!({"type": "answer", "call_id": wire_id, "answer": {"type": "answer", "sdp": ANSWER}}))
        .await;
    let r = offer.await.unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    assert_eq!(String::from_utf8_lossy(&r.body), ANSWER);
    let session = r.header("location").unwrap().to_owned();
    assert!(session.starts_with(&format!("{loc}/whip/")));
    let etag = r.header("etag").unwrap().to_owned();
    let links = r.headers_named("link");
    assert_eq!(links.len(), 1);
    assert!(links[0].starts_with("<turns:turn.example.no:443?transport=tcp>; rel=\"ice-server\""));
    assert!(
        links[0].contains("username=\"1746350000:c\"")
            && links[0].contains("credential=\"s3cret\"")
    );

    // Trickle with the ETag rules of RFC 9725.
    let frag = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=candidate:3 1 udp 1686052607 198.51.100.7 5000 typ srflx raddr 0.0.0.0 rport 0\r\na=end-of-candidates\r\n";
    let ct = ("Content-Type", "application/trickle-ice-sdpfrag");
    let restart = "a=ice-ufrag:n\r\na=ice-pwd:m\r\n";
    // (token, If-Match, body, status): no If-Match 428, stale 412, ICE restart 422, another
    // token 404, and the good one 204.
    let cases: [(&str, Option<&str>, &str, u16); 5] = [
        (ta, None, frag, 428),
        (ta, Some("\"stale\""), frag, 412),
        (ta, Some("*"), restart, 422),
        (tb, Some(&etag), frag, 404),
        (ta, Some(&etag), frag, 204),
    ];
    for (token, if_match, body, want) in cases {
        let mut headers = vec![ct];
        if let Some(m) = if_match {
            headers.push(("If-Match", m));
        }
        let r = http
            .req("PATCH", &session, Some(token), &headers, body.as_bytes())
            .await;
        assert_eq!(r.status, want, "PATCH with If-Match {if_match:?}");
    }
    let (cands, _, _) = hospital.next("candidates").await;
    assert_eq!(cands["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(cands["candidates"][0]["sdpMid"], "0");

    // Duplicated hospital events are dropped by (call_id, party_id, seq).
    hospital
        .send(json!({"type": "accept", "call_id": wire_id, "seq": 1}))
        .await;

    // Hang up: 200, a hangup for the hospital, the call shows the reason.
    let r = http.req("DELETE", &session, Some(ta), &[], b"").await;
    assert_eq!(r.status, 200);
    let (h, props, _) = hospital.next("hangup").await;
    assert_eq!(h["reason"], "user_hangup");
    assert!(props.unwrap().message_expiry_interval.unwrap() <= 60);
    let r = http.req("GET", &loc, Some(ta), &[], b"").await;
    assert_eq!(
        (r.json()["state"].as_str(), r.json()["reason"].as_str()),
        (Some("ended"), Some("user_hangup"))
    );
    // A late event for the ended call is answered with hangup (tombstone).
    hospital
        .send(json!({"type": "candidates", "call_id": wire_id, "candidates": []}))
        .await;
    let (late, _, _) = hospital.next("hangup").await;
    assert_eq!(late["call_id"], wire_id.as_str());

    // Status shows the counters.
    let st = gw.status().await.unwrap();
    let s = &st["signalling"];
    assert_eq!(s["stats"]["outgoing"], 1, "{st}");
    assert_eq!(s["stats"]["duplicates"], 1, "{st}");
    assert_eq!(s["stats"]["late"], 1, "{st}");
    assert_eq!(s["hospital_online"], true);

    // The hospital's presence goes offline: a live ring is hung up, new calls refused.
    let r = http
        .req(
            "POST",
            "/v1/calls",
            Some(ta),
            &json_ct,
            br#"{"to":"team:x"}"#,
        )
        .await;
    assert_eq!(r.status, 201);
    let loc2 = r.header("location").unwrap().to_owned();
    hospital
        .client
        .publish(PRESENCE, QoS::AtLeastOnce, true, r#"{"state":"offline"}"#)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = http.req("GET", &loc2, Some(ta), &[], b"").await;
        if r.json()["reason"] == "hospital_offline" {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", r.json());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = http
        .req(
            "POST",
            "/v1/calls",
            Some(ta),
            &json_ct,
            br#"{"to":"team:x"}"#,
        )
        .await;
    assert_eq!(r.status, 503);

    // Rate limit: bursts of 20 per token, then 429 with Retry-After; the other token is unaffected.
    let mut limited = None;
    for i in 0..40 {
        let r = http
            .req("DELETE", "/v1/calls/nonexistent", Some(ta), &[], b"")
            .await;
        if r.status == 429 {
            limited = Some((i, r));
            break;
        }
        assert_eq!(r.status, 404);
    }
    let (i, r) = limited.expect("rate limited");
    assert!(i <= 20, "limited after {i} requests");
    assert!(r.header("retry-after").is_some());
    let r = http
        .req("DELETE", "/v1/calls/nonexistent", Some(tb), &[], b"")
        .await;
    assert_eq!(r.status, 404, "the other token has its own budget");

    // Revocation takes effect without a restart.
    let out = heim_command()
        .args(["sig", "revoke", "--config"])
        .arg(&sig.config)
        .arg("hl2-b")
        .output()
        .unwrap();
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = http.req("GET", "/v1/calls", Some(tb), &[], b"").await;
        if r.status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "revoked token still accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // kill -9: the presence's last will says offline.
    gw.kill9();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (p, _, _) = hospital.next_presence().await;
        if p["state"] == "offline" {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    assert_no_sdp(&gw, &[]);
}

impl RustHospital {
    async fn next_presence(&mut self) -> (Value, Option<PublishProperties>, bool) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (v, p, r) = tokio::time::timeout(left, self.up.recv())
                .await
                .expect("no presence")
                .unwrap();
            if v["_topic"]
                .as_str()
                .is_some_and(|t| t.ends_with("/sig/presence"))
            {
                return (v, p, r);
            }
        }
    }
}

/// Neither the gateway's log nor its database files hold SDP, candidates, ICE passwords or
/// fingerprints.
fn assert_no_sdp(gw: &Gateway, extra_logs: &[&Path]) {
    let dir = gw.config.parent().unwrap();
    let mut files: Vec<PathBuf> = vec![gw.log.clone()];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("heim.db"))
        {
            files.push(p);
        }
    }
    files.extend(extra_logs.iter().map(|p| p.to_path_buf()));
    assert!(files.len() >= 2, "the log and the database: {files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        for needle in ["v=0", "a=candidate", "ice-pwd", "fingerprint", "ice-ufrag"] {
            assert!(
                !text.contains(needle),
                "{} contains {needle:?}",
                f.display()
            );
        }
    }
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("HEIM_SIG_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/sig-venv/bin/python");
    assert!(
        p.is_file(),
        "{} is missing: scripts/setup makes it (aiortc and paho-mqtt from PyPI)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_webrtc_peers_connect_through_the_gateway() {
    let sig = setup("");
    let enrolled = enrol(&sig.config, "hl2-03");
    let token = enrolled["token"].as_str().unwrap().to_owned();
    let hosp = sig
        .env
        .pki
        .issue("hospital-peer", &[], false, None)
        .unwrap();
    let dir = sig.config.parent().unwrap().to_owned();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("sig");
    let hosp_log = dir.join("hospital_peer.log");
    let mut hospital = Command::new(python())
        .arg(scripts.join("hospital_peer.py"))
        .args(["--port", &sig.env.broker.port.to_string()])
        .arg("--ca")
        .arg(&sig.env.pki.ca)
        .arg("--cert")
        .arg(&hosp.cert)
        .arg("--key")
        .arg(&hosp.key)
        .args([
            "--gateway",
            GATEWAY,
            "--calls",
            "2",
            "--hangup-on-call",
            "2",
        ])
        .stdout(Stdio::from(std::fs::File::create(&hosp_log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("hospital_peer.err")).unwrap(),
        ))
        .spawn()
        .unwrap();
    // Debug level, so the hygiene check below covers every line the gateway can write.
    let mut gw = Gateway::start_at_level(&sig.config, "heim.log", "debug");
    gw.wait_ready().await;
    gw.wait_status(Duration::from_secs(20), |s| {
        s["signalling"]["hospital_online"] == true
    })
    .await;
    let lan_log = dir.join("hololens_peer.log");
    let lan = Command::new(python())
        .arg(scripts.join("hololens_peer.py"))
        .args(["--api", &format!("https://localhost:{}", sig.port)])
        .args(["--token", &token])
        .arg("--ca")
        .arg(enrolled["ca"].as_str().unwrap())
        .stdout(Stdio::from(std::fs::File::create(&lan_log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("hololens_peer.err")).unwrap(),
        ))
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let hosp_status = loop {
        if let Some(st) = hospital.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = hospital.kill();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lan_out = std::fs::read_to_string(&lan_log).unwrap();
    let hosp_out = std::fs::read_to_string(&hosp_log).unwrap();
    let context = format!(
        "headset:\n{lan_out}{}\nhospital:\n{hosp_out}{}\ngateway:\n{}",
        std::fs::read_to_string(dir.join("hololens_peer.err")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("hospital_peer.err")).unwrap_or_default(),
        gw.log_text()
    );
    assert!(lan.success(), "the headset peer failed\n{context}");
    assert!(
        hosp_status.is_some_and(|s| s.success()),
        "the hospital peer failed\n{context}"
    );
    for want in [
        "RESULT ANSWERED 1 ctype=application/sdp etag=True",
        "RESULT PATCH 1 204",
        "RESULT STATE 1 connected",
        "RESULT DATA_ROUNDTRIP 1",
        "RESULT DELETE 1 200",
        "RESULT ENDED 1 reason=user_hangup",
        "RESULT STATE 2 connected",
        "RESULT DATA_ROUNDTRIP 2",
        "RESULT REMOTE_HANGUP 2 reason=user_hangup",
        "RESULT DONE",
    ] {
        assert!(
            lan_out.contains(want),
            "headset: missing {want:?}\n{context}"
        );
    }
    for want in [
        "RESULT STATE 1 connected",
        "RESULT GATEWAY_HANGUP 1 reason=user_hangup",
        "RESULT STATE 2 connected",
        "RESULT HUNG_UP 2",
        "RESULT DONE",
    ] {
        assert!(
            hosp_out.contains(want),
            "hospital: missing {want:?}\n{context}"
        );
    }
    assert!(!hosp_out.contains("RETAINED_SIGNALLING_SEEN"), "{context}");
    assert!(
        !hosp_out.contains("NO_EXPIRY"),
        "every sig/up message expires\n{context}"
    );
    // Video frames arrived at the hospital on both calls.
    for line in hosp_out
        .lines()
        .filter(|l| l.starts_with("RESULT CALL_DONE"))
    {
        let frames: u32 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("frames="))
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(frames >= 20, "{line}\n{context}");
        assert!(line.ends_with("data=True"), "{line}");
    }
    assert_eq!(gw.terminate().code(), Some(0));
    assert_no_sdp(&gw, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_hospital_keys_only_signed_events_count() {
    use heim::careplan::envelope::signer::Signer;
    let signer = Signer::generate();
    let env = Env::new();
    let port = free_port().unwrap();
    let gw_dir = env.dir.path().join("gw");
    std::fs::create_dir_all(&gw_dir).unwrap();
    std::fs::write(gw_dir.join("hospital-sig.pem"), signer.public_pem()).unwrap();
    let config = env.config(&format!(
        "[signalling]\nlisten = \"127.0.0.1:{port}\"\n[[signalling.hospital_key]]\nkid = \"hosp-2026\"\npublic_key = \"hospital-sig.pem\"\n"
    ));
    let ca = config.with_file_name("signalling").join("ca.pem");
    let a = enrol(&config, "hl2-a");
    let ta = a["token"].as_str().unwrap();
    let mut hospital = RustHospital::start(&env, true).await;
    let mut gw = Gateway::start(&config);
    gw.wait_ready().await;
    let http = Http::new(port, &ca);
    let r = http
        .req(
            "POST",
            "/v1/calls",
            Some(ta),
            &[("Content-Type", "application/json")],
            br#"{"to":"team:x"}"#,
        )
        .await;
    assert_eq!(r.status, 201);
    let loc = r.header("location").unwrap().to_owned();
    // The gateway signs its own events in this mode: verify the ring with its published key.
    let (signed, props) = loop {
        let (v, p, _) = tokio::time::timeout(Duration::from_secs(15), hospital.up.recv())
            .await
            .expect("a signed ring")
            .unwrap();
        if v["_topic"].as_str().is_some_and(|t| t.ends_with("/sig/up")) {
            break (v, p);
        }
    };
    assert_eq!(
        props.unwrap().content_type.as_deref(),
        Some("application/jose")
    );
    let mut gw_keys = heim::careplan::envelope::TrustedKeys::default();
    gw_keys
        .add_file(
            GATEWAY,
            &config.with_file_name("signalling").join("gateway-sig.pem"),
        )
        .unwrap();
    let jws = signed["_jws"]
        .as_str()
        .expect("sig/up is a JWS in signed mode");
    let verified = heim::careplan::envelope::verify_typed(
        jws.as_bytes(),
        &gw_keys,
        "hospital",
        chrono::Utc::now().timestamp(),
        "heim-sig+jws",
    )
    .expect("the gateway's signature verifies");
    let ring: Value = serde_json::from_slice(&verified.payload).unwrap();
    assert_eq!(ring["type"], "ring");
    assert!(
        a["gateway_signing_key"]
            .as_str()
            .is_some_and(|p| p.ends_with("gateway-sig.pem"))
    );
    let call_id = ring["call_id"].as_str().unwrap().to_owned();
    let accept = |seq: u64| json!({"v": 1, "type": "accept", "call_id": call_id, "party_id": "hosp.dr-test", "seq": seq});
    let sign = |aud: &str, seq: u64| {
        let exp = chrono::Utc::now().timestamp() + 60;
        let header = json!({"alg": "ES256", "typ": "heim-sig+jws", "kid": "hosp-2026", "aud": aud, "seq": seq, "exp": exp});
        signer.sign_compact(&header, &serde_json::to_vec(&accept(seq)).unwrap())
    };
    let publish = |payload: Vec<u8>| {
        let client = hospital.client.clone();
        async move {
            client
                .publish(
                    format!("heim/v1/{GATEWAY}/sig/down"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await
                .unwrap();
        }
    };
    // Plain JSON, and a signature for another gateway: refused, the call keeps ringing.
    publish(serde_json::to_vec(&accept(1)).unwrap()).await;
    publish(sign("gw-other", 2).into_bytes()).await;
    gw.wait_status(Duration::from_secs(10), |s| {
        s["signalling"]["refused_events"] == 2
    })
    .await;
    let r = http.req("GET", &loc, Some(ta), &[], b"").await;
    assert_eq!(r.json()["state"], "ringing");
    // Signed by the hospital's key for this gateway: accepted.
    publish(sign(GATEWAY, 3).into_bytes()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http.req("GET", &loc, Some(ta), &[], b"").await;
        if r.json()["state"] == "accepted" {
            break;
        }
        assert!(Instant::now() < deadline, "{:?}", r.json());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gw.log_text().contains("signature check: wrong-audience"));
}
