//! `kill -9` at random moments, during ingest and during drain, at least 20 rounds: every reading
//! 1..N arrives, and a redelivered reading carries the same identifier.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rand::Rng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_ingest_and_drain_loses_nothing() {
    let mut env = Env::new();
    let hospital = env.hospital().await;
    let n: u64 = 4000;
    // ~1 reading per ms: ingest spans the first rounds, so kills land mid-ingest.
    let cfg = env.config(&sim("s", n, 1));
    let mut rng = rand::rng();
    let rounds = 24;
    let mut killed_with_backlog = 0;
    for round in 0..rounds {
        // The first half: broker down, so kills hit pure ingest and a growing outbox. The second
        // half: broker up, so kills hit draining (publishes in flight, PUBACKs pending).
        if round == rounds / 2 {
            env.broker.restart().unwrap();
        } else if round == 0 {
            env.broker.stop();
        }
        let mut gw = Gateway::start_with_log(&cfg, &format!("heim-{round}.log"));
        gw.wait_ready().await;
        let ms = rng.random_range(30..400);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if let Some(s) = gw.status().await
            && s["outbox_pending"].as_u64() > Some(0)
        {
            killed_with_backlog += 1;
        }
        gw.kill9();
    }
    assert!(
        killed_with_backlog >= 10,
        "kills must land with data in flight"
    );
    // Final run: let it finish.
    let mut gw = Gateway::start_with_log(&cfg, "heim-final.log");
    gw.wait_ready().await;
    let got = hospital
        .wait_unique(n as usize, Duration::from_secs(120))
        .await;
    assert_eq!(got, n as usize, "{}", gw.log_text());
    gw.wait_status(Duration::from_secs(20), |s| s["outbox_pending"] == 0)
        .await;
    assert!(gw.terminate().success());
    hospital.with(|c| {
        let expected: HashSet<String> = sim_ids("s", n).into_iter().collect();
        // Exactly readings 1..N: nothing lost, nothing invented. Duplicates (redeliveries after a
        // kill) are the same identifiers, which is what lets the FHIR server drop them.
        assert_eq!(c.unique, expected);
        assert!(c.arrivals.iter().all(|a| expected.contains(&a.identifier)));
        eprintln!(
            "{} observations arrived for {} readings ({} redelivered)",
            c.arrivals.len(),
            n,
            c.duplicates()
        );
    });
}
