//! Refusals: a broker with the wrong CA, a broker that does not accept our client certificate, a
//! plaintext-only broker, and an expired client certificate each give a clear error, and no
//! reading is lost: once the problem is fixed, everything arrives.

mod common;

use std::time::Duration;

use common::*;
use heim::demo::broker::{Broker, Mode};
use heim::demo::pki::Pki;

/// Points the config's client certificate and key at `files`.
fn use_client_cert(cfg: &std::path::Path, files: &heim::demo::pki::CertFiles) {
    let text = std::fs::read_to_string(cfg).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("cert = ") {
                format!("cert = \"{}\"", files.cert.display())
            } else if l.starts_with("key = ") {
                format!("key = \"{}\"", files.key.display())
            } else {
                l.to_owned()
            }
        })
        .collect();
    std::fs::write(cfg, lines.join("\n")).unwrap();
}

/// Starts heim against `cfg`, waits for the given error, checks the readings stay in the outbox.
async fn refused(cfg: &std::path::Path, expect: &str, n: u64) -> Gateway {
    let mut gw = Gateway::start(cfg);
    gw.wait_ready().await;
    let s = gw
        .wait_status(Duration::from_secs(30), |s| {
            s["sources"]["s"]["readings"] == n
                && s["uplink_detail"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains(expect))
        })
        .await;
    assert_eq!(s["uplink"], "disconnected");
    assert_eq!(s["outbox_pending"], n, "readings must wait in the outbox");
    assert!(gw.log_text().contains(expect), "log: {}", gw.log_text());
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_then_fixed() {
    let env = Env::new();
    let n = 200;
    let cfg = env.config(&sim("s", n, 0));
    // Point the gateway at a CA the broker's certificate does not chain to.
    let other = Pki::generate(&env.dir.path().join("other"), "other").unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let ca_line = format!("ca = \"{}\"", env.pki.ca.display());
    std::fs::write(
        &cfg,
        text.replace(&ca_line, &format!("ca = \"{}\"", other.ca.display())),
    )
    .unwrap();
    let mut gw = refused(&cfg, "not signed by the configured CA", n).await;
    assert!(gw.terminate().success());
    // Fix the config: everything that waited is delivered.
    std::fs::write(&cfg, text).unwrap();
    let hospital = env.hospital().await;
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    assert_eq!(
        hospital
            .wait_unique(n as usize, Duration::from_secs(30))
            .await,
        n as usize
    );
    assert!(gw.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_not_accepted() {
    let env = Env::new();
    let n = 100;
    let cfg = env.config(&sim("s", n, 0));
    // A client certificate from a CA the broker does not trust.
    let other = Pki::generate(&env.dir.path().join("other"), "other").unwrap();
    let stranger = other.issue("stranger", &[], false, None).unwrap();
    use_client_cert(&cfg, &stranger);
    let mut gw = refused(&cfg, "rejected our client certificate", n).await;
    assert!(gw.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_certificate() {
    let env = Env::new();
    let n = 50;
    let cfg = env.config(&sim("s", n, 0));
    let expired = env
        .pki
        .issue("expired", &[], false, Some((2021, 1, 1)))
        .unwrap();
    use_client_cert(&cfg, &expired);
    let mut gw = refused(&cfg, "TLS", n).await;
    assert!(gw.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_only_broker_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), "t").unwrap();
    let broker = Broker::start(&dir.path().join("broker"), &pki, Mode::Plaintext).unwrap();
    let gwdir = dir.path().join("gw");
    std::fs::create_dir_all(&gwdir).unwrap();
    let cfg =
        heim::demo::write_config(&gwdir, &pki, GATEWAY, broker.port, &sim("s", 20, 0)).unwrap();
    let mut gw = refused(&cfg, "plaintext", 20).await;
    assert!(gw.terminate().success());
}
