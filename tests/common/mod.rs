//! Shared harness for the end-to-end tests: a temporary directory with test-time certificates, a
//! real mosquitto (mutual TLS, free loopback port), the hospital subscriber, and the `heim` binary
//! run as a real process that tests can SIGTERM or SIGKILL.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use heim::demo::broker::{Broker, Mode};
use heim::demo::hospital::Hospital;
use heim::demo::pki::Pki;
use serde_json::Value;

pub const GATEWAY: &str = "gw-test";

/// The `heim` binary built by `cargo test --workspace` (beside this test executable's `deps/`).
pub fn heim_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("heim");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p heim --bins` (cargo test --workspace does it)",
        bin.display()
    );
    bin
}

/// A command that runs the `heim` binary: directly, or through the emulator named by
/// `HEIM_TEST_EMULATOR` (e.g. `qemu-aarch64 -L /usr/aarch64-linux-gnu`), so the end-to-end tests
/// can drive a cross-built gateway (scripts/cross) on a machine without binfmt.
pub fn heim_command() -> Command {
    let bin = heim_bin();
    match std::env::var("HEIM_TEST_EMULATOR") {
        Ok(e) if !e.trim().is_empty() => {
            let mut parts = e.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or("qemu-aarch64"));
            c.args(parts).arg(bin);
            c
        }
        _ => Command::new(bin),
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub broker: Broker,
}

impl Env {
    pub fn new() -> Self {
        Self::with_mode(Mode::MutualTls)
    }

    pub fn with_mode(mode: Mode) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::generate(&dir.path().join("pki"), "test").expect("pki");
        let broker = Broker::start(&dir.path().join("broker"), &pki, mode).expect("mosquitto");
        Self { dir, pki, broker }
    }

    pub async fn hospital(&self) -> Hospital {
        Hospital::start(&self.pki, self.broker.port, GATEWAY, "hospital", true)
            .await
            .expect("hospital subscriber")
    }

    /// Writes a gateway config with these `[[source]]` tables.
    pub fn config(&self, sources: &str) -> PathBuf {
        let gw = self.dir.path().join("gw");
        std::fs::create_dir_all(&gw).unwrap();
        heim::demo::write_config(&gw, &self.pki, GATEWAY, self.broker.port, sources)
            .expect("config")
    }
}

/// A simulated source table.
pub fn sim(name: &str, count: u64, interval_ms: u64) -> String {
    format!(
        "[[source]]\nkind = \"simulated\"\nname = \"{name}\"\ncount = {count}\ninterval_ms = {interval_ms}\ndevices = 4\n"
    )
}

/// Expected identifiers of readings 1..=n of a simulated source.
pub fn sim_ids(name: &str, n: u64) -> Vec<String> {
    (1..=n)
        .map(|i| format!("urn:uuid:{}", heim::sources::simulated::reading_id(name, i)))
        .collect()
}

pub struct Gateway {
    pub child: Child,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Gateway {
    pub fn start(config: &Path) -> Self {
        Self::start_with_log(config, "heim.log")
    }

    pub fn start_with_log(config: &Path, log_name: &str) -> Self {
        let level = std::env::var("HEIM_TEST_LOG").unwrap_or_else(|_| "info".into());
        Self::start_at_level(config, log_name, &level)
    }

    pub fn start_at_level(config: &Path, log_name: &str, level: &str) -> Self {
        let log = config.with_file_name(log_name);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = heim_command()
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn heim");
        Self {
            child,
            config: config.to_owned(),
            log,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.config.with_file_name("heim.sock")
    }

    /// The daemon's status, once its control socket answers.
    pub async fn status(&self) -> Option<Value> {
        heim::control::request(&self.socket(), serde_json::json!({"cmd": "status"}))
            .await
            .ok()
    }

    pub async fn wait_ready(&mut self) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.status().await {
                return v;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("heim exited early with {st}:\n{}", self.log_text());
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "heim never became ready:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls status until `f` holds (or panics after `timeout`).
    pub async fn wait_status(&self, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.status().await
                && f(&v)
            {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "condition not reached; last status {:?}\n{}",
                self.status().await,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            if start.elapsed() > Duration::from_secs(20) {
                self.kill9();
                panic!(
                    "heim did not stop within 20 s of SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// Readings of one device must arrive in the order they were taken (first arrival of each id).
pub fn assert_per_device_order(arrivals: &[heim::demo::hospital::Arrival], name: &str, n: u64) {
    let index: std::collections::HashMap<String, u64> = sim_ids(name, n)
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i as u64 + 1))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<&str, u64> = Default::default();
    for a in arrivals {
        if !seen.insert(a.identifier.clone()) {
            continue;
        }
        let k = index[&a.identifier];
        let prev = last.insert(a.device.as_str(), k).unwrap_or(0);
        assert!(
            prev < k,
            "device {} sent reading {k} after {prev}",
            a.device
        );
    }
}
