//! Signalling benchmark: `cargo bench -p heim --bench signalling` (add `-- --quick` for a short run).
//!
//! The release `heim` as its own process with `[signalling]` on, a local mosquitto over mutual
//! TLS, and an auto-answering hospital service (rumqttc). A LAN client over HTTPS places calls one
//! after another — ring, accept (long-poll), offer (held POST), answer, hang up — and the bench
//! prints the call-setup time through the gateway and the broker (POST /v1/calls to the `201` of
//! the offer: two MQTT round trips), the gateway's CPU per call, and its RSS idle and peak.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use heim::demo::broker::{Broker, Mode, free_port};
use heim::demo::pki::Pki;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GW: &str = "gw-sigbench";
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef012345\r\na=candidate:1 1 udp 2122260223 10.0.0.2 5000 typ host\r\n";
const ANSWER: &str = "v=0\r\no=- 2 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:wxyz\r\na=ice-pwd:abcdef0123456789abcdef\r\na=candidate:2 1 udp 2122260223 10.0.0.3 6000 typ host\r\na=end-of-candidates\r\n";

fn proc_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[allow(clippy::too_many_arguments)]
async fn req(
    tls: &Arc<rustls::ClientConfig>,
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    ctype: Option<&str>,
    if_none_match: Option<&str>,
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut s = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(c) = ctype {
        head.push_str(&format!("Content-Type: {c}\r\n"));
    }
    if let Some(e) = if_none_match {
        head.push_str(&format!("If-None-Match: {e}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    (status, head, raw[split + 4..].to_vec())
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Accepts every ring and answers every invite at once.
async fn hospital(pki: &Pki, port: u16) -> AsyncClient {
    let files = pki.issue("hospital-sig", &[], false, None).unwrap();
    let tls = heim::uplink::tls::client_config(&pki.ca, &files.cert, &files.key).unwrap();
    let mut o = MqttOptions::new("hospital-sig", "127.0.0.1", port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    o.set_network_options(heim::uplink::no_delay());
    let (client, mut ev) = AsyncClient::new(o, 64);
    client
        .subscribe(format!("heim/v1/{GW}/sig/up"), QoS::AtLeastOnce)
        .await
        .unwrap();
    client
        .publish(
            "heim/v1/hospital/sig/presence",
            QoS::AtLeastOnce,
            true,
            r#"{"state":"online"}"#,
        )
        .await
        .unwrap();
    let c = client.clone();
    tokio::spawn(async move {
        loop {
            let Ok(Event::Incoming(Packet::Publish(p))) = ev.poll().await else {
                continue;
            };
            let Ok(e) = serde_json::from_slice::<Value>(&p.payload) else {
                continue;
            };
            let reply = match e["type"].as_str() {
                Some("ring") => json!({"type": "accept", "seq": 1}),
                Some("invite") => {
                    json!({"type": "answer", "seq": 2, "answer": {"type": "answer", "sdp": ANSWER}})
                }
                _ => continue,
            };
            let mut r = reply;
            r["v"] = json!(1);
            r["call_id"] = e["call_id"].clone();
            r["party_id"] = json!("hosp.bench");
            // Not `publish().await`: this task is the one that polls the event loop.
            let _ = c.try_publish(
                format!("heim/v1/{GW}/sig/down"),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&r).unwrap(),
            );
        }
    });
    client
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let calls = if quick { 20 } else { 300 };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), "sigbench").unwrap();
    let broker = Broker::start(&dir.path().join("broker"), &pki, Mode::MutualTls).unwrap();
    let api = free_port().unwrap();
    let gw_dir = dir.path().join("gw");
    std::fs::create_dir_all(&gw_dir).unwrap();
    // Calls follow each other quickly: a generous rate limit so the bench measures the path.
    let cfg = heim::demo::write_config(
        &gw_dir,
        &pki,
        GW,
        broker.port,
        &format!(
            "[signalling]\nlisten = \"127.0.0.1:{api}\"\nrate_per_minute = 100000\nrate_burst = 100000\ninbound_per_minute = 1000000\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_heim"))
        .args(["sig", "enrol", "--json", "--config"])
        .arg(&cfg)
        .arg("bench")
        .output()
        .unwrap();
    let enrolled: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = enrolled["token"].as_str().unwrap().to_owned();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(Path::new(enrolled["ca"].as_str().unwrap())).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let _hospital = hospital(&pki, broker.port).await;
    let mut gw: Child = Command::new(env!("CARGO_BIN_EXE_heim"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(gw_dir.join("heim.log")).unwrap(),
        ))
        .spawn()
        .unwrap();
    let pid = gw.id();
    // Ready once the API answers.
    let t0 = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", api))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the API never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = proc_kb(pid, "VmRSS:");
    let cpu0 = cpu_seconds(pid);
    let mut setup = Vec::with_capacity(calls);
    let mut ring = Vec::with_capacity(calls);
    let mut offer = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        let (st, head, _) = req(
            &tls,
            api,
            "POST",
            "/v1/calls",
            &token,
            Some("application/json"),
            None,
            br#"{"to":"team:bench"}"#,
        )
        .await;
        assert_eq!(st, 201);
        let loc = header(&head, "location").unwrap().to_owned();
        let mut etag = header(&head, "etag").unwrap().to_owned();
        // The long-poll, as a headset would: held until the call changes.
        loop {
            let (st, head, body) = req(
                &tls,
                api,
                "GET",
                &format!("{loc}?wait=5"),
                &token,
                None,
                Some(&etag),
                b"",
            )
            .await;
            if st == 304 {
                continue;
            }
            assert_eq!(
                st,
                200,
                "call {}: {head}\n{}",
                setup.len(),
                String::from_utf8_lossy(&body)
            );
            etag = header(&head, "etag").unwrap().to_owned();
            let v: Value = serde_json::from_slice(&body).unwrap();
            if v["state"] == "accepted" {
                break;
            }
        }
        ring.push(start.elapsed());
        let t1 = Instant::now();
        let (st, head, answer) = req(
            &tls,
            api,
            "POST",
            &format!("{loc}/whip"),
            &token,
            Some("application/sdp"),
            None,
            OFFER.as_bytes(),
        )
        .await;
        assert_eq!(st, 201, "{head}");
        assert_eq!(answer, ANSWER.as_bytes());
        offer.push(t1.elapsed());
        setup.push(start.elapsed());
        let session = header(&head, "location").unwrap().to_owned();
        let (st, _, _) = req(&tls, api, "DELETE", &session, &token, None, None, b"").await;
        assert_eq!(st, 200);
    }
    ring.sort();
    offer.sort();
    let cpu = cpu_seconds(pid) - cpu0;
    let rss_peak = proc_kb(pid, "VmHWM:");
    setup.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "signalling: {calls} calls, each ring → accept → offer → answer → hang-up over HTTPS + MQTT/mTLS"
    );
    println!(
        "  call setup (POST /v1/calls → 201 of the offer): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        ms(setup[calls / 2]),
        ms(setup[calls * 95 / 100]),
        ms(setup[calls - 1])
    );
    println!(
        "    of which ring → accepted seen by the long-poll: p50 {:.1} ms; offer → answer: p50 {:.1} ms",
        ms(ring[calls / 2]),
        ms(offer[calls / 2])
    );
    println!(
        "  gateway CPU per call: {:.2} ms",
        cpu * 1000.0 / calls as f64
    );
    println!(
        "  gateway RSS: {:.1} MB idle with signalling on, peak {:.1} MB",
        rss_idle as f64 / 1024.0,
        rss_peak as f64 / 1024.0
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = gw.wait();
}
