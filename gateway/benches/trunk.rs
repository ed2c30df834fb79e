//! Trunk benchmark: `cargo bench -p heim --bench trunk` (add `-- --quick` for a short run).
//!
//! Runs the release `heim` binary as its own process against a local mosquitto over mutual TLS
//! and prints, from the daemon process alone (`/proc/PID/{stat,status,io}`):
//! online end-to-end readings/s; durable ingest readings/s while offline; the time from the
//! broker's return until a 100 k backlog is delivered, and the drain rate; the raw rate of a
//! non-durable rumqttc publish loop of the same payloads (the ceiling); CPU time per reading; peak
//! RSS at 10 k and 1 M backlog; bytes written to disk per reading.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use heim::demo::broker::{Broker, Mode};
use heim::demo::hospital::Hospital;
use heim::demo::pki::Pki;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use serde_json::Value;

const GW: &str = "gw-bench";

struct Proc {
    child: Child,
    socket: PathBuf,
}

impl Proc {
    fn start(cfg: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_heim"))
            .args(["run", "--config"])
            .arg(cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(cfg.with_file_name("heim.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        Self {
            child,
            socket: cfg.with_file_name("heim.sock"),
        }
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
    async fn status(&self) -> Option<Value> {
        heim::control::request(&self.socket, serde_json::json!({"cmd":"status"}))
            .await
            .ok()
    }
    async fn wait(&self, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.status().await
                && f(&v)
            {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out; status {:?}",
                self.status().await
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = stat.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the command name.
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / clk_tck()
    }
    fn status_kb(&self, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    fn write_bytes(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/io", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with("write_bytes:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    fn stop(mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn config(dir: &Path, pki: &Pki, port: u16, count: u64) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let src = format!(
        "[[source]]\nkind = \"simulated\"\nname = \"bench\"\ncount = {count}\ninterval_ms = 0\ndevices = 8\n"
    );
    let p = heim::demo::write_config(dir, pki, GW, port, &src).unwrap();
    // The bench measures the default back-off cap (10 s), as a deployed gateway would have.
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace(
            "backoff_min_ms = 100\nbackoff_max_ms = 2000\n",
            &uplink_overrides(),
        )
        .replace(
            "[store]\npath = \"heim.db\"",
            "[store]\npath = \"heim.db\"\nmax_bytes = 8589934592",
        );
    std::fs::write(&p, text).unwrap();
    p
}

/// Extra `[uplink]` lines for experiments: `HEIM_BENCH_UPLINK="batch = 50;inflight = 8"`.
fn uplink_overrides() -> String {
    std::env::var("HEIM_BENCH_UPLINK")
        .unwrap_or_default()
        .split(';')
        .map(|l| format!("{}\n", l.trim()))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), "bench").unwrap();
    let mut broker = Broker::start(&dir.path().join("broker"), &pki, Mode::MutualTls).unwrap();
    let hospital = Hospital::start(&pki, broker.port, GW, "hospital", false)
        .await
        .unwrap();
    let online_n: u64 = if quick { 50_000 } else { 200_000 };
    let big: u64 = if quick { 200_000 } else { 1_000_000 };
    println!("heim trunk benchmark (mosquitto over mutual TLS on loopback, release build)");

    // 1. Online end to end.
    let cfg = config(&dir.path().join("online"), &pki, broker.port, online_n);
    let t0 = Instant::now();
    let gw = Proc::start(&cfg);
    gw.wait(Duration::from_secs(600), |s| {
        s["sources"]["bench"]["readings"] == online_n && s["outbox_pending"] == 0
    })
    .await;
    let online_s = t0.elapsed().as_secs_f64();
    let cpu = gw.cpu_seconds();
    let rss_online = gw.status_kb("VmHWM:");
    let (anon, file) = (gw.status_kb("RssAnon:"), gw.status_kb("RssFile:"));
    let wb_online = gw.write_bytes();
    gw.stop();
    println!(
        "online end-to-end:        {:>9.0} readings/s  ({online_n} readings in {online_s:.2} s, delivered = acknowledged by the broker)",
        online_n as f64 / online_s
    );
    println!(
        "CPU per reading (online): {:>9.2} µs  (user+sys of the heim process / readings)",
        cpu * 1e6 / online_n as f64
    );
    println!(
        "disk written per reading: {:>9.0} bytes (online: ingest + delete, /proc/PID/io write_bytes)",
        wb_online as f64 / online_n as f64
    );
    println!(
        "peak RSS online:          {:>9.1} MB  (at the end: {:.1} MB heap/stacks + {:.1} MB mapped code)",
        rss_online as f64 / 1024.0,
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );

    // 2. Durable ingest while offline, 100 k backlog, then drain.
    let backlog: u64 = 100_000;
    broker.stop();
    let cfg = config(&dir.path().join("offline"), &pki, broker.port, backlog);
    let gw = Proc::start(&cfg);
    let t0 = Instant::now();
    gw.wait(Duration::from_secs(600), |s| {
        s["sources"]["bench"]["readings"] == backlog
    })
    .await;
    let ingest_s = t0.elapsed().as_secs_f64();
    let wb_ingest = gw.write_bytes();
    println!(
        "durable ingest (offline): {:>9.0} readings/s  ({backlog} readings in {ingest_s:.2} s; {:.0} bytes written per reading)",
        backlog as f64 / ingest_s,
        wb_ingest as f64 / backlog as f64
    );
    let connects_before = gw.status().await.unwrap()["uplink_detail"]["connects"]
        .as_u64()
        .unwrap_or(0);
    broker.restart().unwrap();
    let back = Instant::now();
    let s = gw
        .wait(Duration::from_secs(120), |s| {
            s["uplink_detail"]["connects"].as_u64() > Some(connects_before)
        })
        .await;
    let reconnect_s = back.elapsed().as_secs_f64();
    let _ = s;
    let t_conn = Instant::now();
    gw.wait(Duration::from_secs(600), |s| s["outbox_pending"] == 0)
        .await;
    let drain_s = t_conn.elapsed().as_secs_f64();
    let total_s = back.elapsed().as_secs_f64();
    let wb_total = gw.write_bytes();
    gw.stop();
    println!(
        "100 k backlog:            {:>9.2} s from the broker's return to all delivered ({reconnect_s:.2} s reconnect back-off + {drain_s:.2} s drain)",
        total_s
    );
    println!(
        "drain rate:               {:>9.0} readings/s after the reconnect",
        backlog as f64 / drain_s
    );
    println!(
        "disk written per reading: {:>9.0} bytes (offline ingest + drain)",
        wb_total as f64 / backlog as f64
    );

    // 3. The ceiling: a non-durable rumqttc publish loop of the same payloads.
    let ceiling = raw_ceiling(&pki, broker.port, if quick { 50_000 } else { 200_000 }).await;
    println!(
        "raw rumqttc ceiling:      {:>9.0} readings/s  (same Bundles of 50, QoS 1, 16 in flight, no store) → drain = {:.0} % of it",
        ceiling,
        100.0 * (backlog as f64 / drain_s) / ceiling
    );

    // 4. RSS at 10 k and at a large backlog (offline ingest).
    broker.stop();
    let cfg = config(&dir.path().join("rss"), &pki, broker.port, big);
    let gw = Proc::start(&cfg);
    gw.wait(Duration::from_secs(900), |s| {
        s["outbox_pending"].as_u64() >= Some(10_000)
    })
    .await;
    let rss10k = gw.status_kb("VmHWM:");
    gw.wait(Duration::from_secs(1800), |s| {
        s["sources"]["bench"]["readings"] == big
    })
    .await;
    let rss_big = gw.status_kb("VmHWM:");
    gw.stop();
    println!(
        "peak RSS:                 {:>9.1} MB at a 10 k backlog, {:.1} MB at a {} backlog",
        rss10k as f64 / 1024.0,
        rss_big as f64 / 1024.0,
        big
    );
    hospital.stop().await;
}

async fn raw_ceiling(pki: &Pki, port: u16, readings: u64) -> f64 {
    let files = pki.issue("raw", &[], false, None).unwrap();
    let tls = heim::uplink::tls::client_config(&pki.ca, &files.cert, &files.key).unwrap();
    let mut o = MqttOptions::new("raw-ceiling", "127.0.0.1", port);
    o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    o.set_outgoing_inflight_upper_limit(16);
    o.set_max_packet_size(Some(4 * 1024 * 1024));
    // The same TCP options as the gateway's uplink.
    o.set_network_options(heim::uplink::no_delay());
    let (client, mut el) = AsyncClient::new(o, 128);
    // The same payloads the gateway sends by default: Bundles of 50 simulated readings, 16 in flight.
    let renderer = heim::uplink::fhir::Renderer::new(GW, "p-demo");
    let now = heim_shared_types::GatewayTime {
        unix_millis: 1_780_000_000_000,
        synchronized: true,
    };
    let rs: Vec<_> = (1..=50)
        .map(|n| heim::sources::simulated::reading(0, "bench", 8, n, now))
        .collect();
    let refs: Vec<_> = rs.iter().collect();
    let mut payload = String::new();
    renderer.bundle(&refs, &|_| None, &mut payload);
    let messages = readings / 50;
    let topic = format!("heim/v1/{GW}/observations");
    let pub_task = tokio::spawn({
        let client = client.clone();
        let payload = payload.clone();
        async move {
            for _ in 0..messages {
                client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .unwrap();
            }
        }
    });
    let start = Instant::now();
    let mut acked = 0;
    while acked < messages {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = el.poll().await {
            acked += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    pub_task.await.unwrap();
    (messages * 50) as f64 / secs
}
