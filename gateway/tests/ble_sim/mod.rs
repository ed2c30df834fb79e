//! Test harness: the project's own fake BlueZ (`fake_bluez.py`, on a private `dbus-daemon`) and a
//! BLE source wired to a real outbox in a temporary directory.
//!
//! btleplug cannot be handed a D-Bus connection; it reads `DBUS_SYSTEM_BUS_ADDRESS` (pitfall P7
//! in design/ble-sim.md). Each test binary therefore holds ONE test, which sets the variable
//! before anything else runs.

#![allow(dead_code)]

mod fake;

use std::path::Path;
use std::time::{Duration, Instant};

use heim::clock::{Clock, SyncPolicy};
use heim::sources::ble::registry::{self, Device, DeviceKind};
use heim::sources::ble::{BleConfig, BleSource};
use heim::sources::{Context, Registry};
use heim::store::{Body, Outbox, Row};
use heim_shared_types::Reading;
use serde_json::Value;

pub use fake::FakeBluez;
use tokio_util::sync::CancellationToken;

/// An outbox in a temp dir and a running BLE source.
pub struct Gateway {
    pub outbox: Outbox,
    pub status: Registry,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), heim::sources::ble::source::Error>>,
    pub dir: tempfile::TempDir,
    /// What the source publishes for the daemon's status (`alarms`).
    pub alarms: tokio::sync::watch::Receiver<serde_json::Map<String, Value>>,
}

pub fn open_outbox(dir: &Path) -> Outbox {
    Outbox::open(heim::store::Options {
        path: dir.join("heim.db"),
        max_bytes: 1 << 30,
        write_batch: 100,
    })
    .unwrap()
    .0
}

/// A config with test-speed timings.
pub fn fast_config() -> BleConfig {
    BleConfig {
        idle_disconnect_ms: 300,
        racp_timeout_s: 5,
        backoff_min_ms: 100,
        connect_timeout_s: 5,
        scan_stall_s: 2,
        ..BleConfig::with_name("ble")
    }
}

pub async fn register(outbox: &Outbox, address: &str, kind: DeviceKind) {
    registry::add(
        outbox,
        Device {
            address: registry::parse_address(address).unwrap(),
            kind,
            name: Some(format!("{} under test", kind.name())),
            bonded: false,
            feeds: None,
            added_unix_ms: 0,
        },
    )
    .await
    .unwrap();
}

impl Gateway {
    /// Starts a BLE source on `outbox` (whose registry the test filled).
    pub fn start(dir: tempfile::TempDir, outbox: Outbox, cfg: BleConfig) -> Self {
        let status = Registry::default();
        let shutdown = CancellationToken::new();
        let ctx = Context {
            index: 0,
            name: cfg.name.clone(),
            outbox: outbox.clone(),
            shutdown: shutdown.clone(),
            status: status.handle(&cfg.name, "ble"),
            clock: Clock::new(SyncPolicy::Always),
        };
        let (tx, alarms) = tokio::sync::watch::channel(serde_json::Map::new());
        let task = tokio::spawn(BleSource::new(cfg).with_alarms(tx).run(ctx));
        Self {
            alarms,
            outbox,
            status,
            shutdown,
            task,
            dir,
        }
    }

    /// Stops the source and waits for it.
    pub async fn stop(self) -> (Outbox, tempfile::TempDir) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("source stops")
            .expect("no panic")
            .expect("source ends cleanly");
        (self.outbox, self.dir)
    }

    /// The source's status detail.
    pub fn detail(&self, key: &str) -> Value {
        self.status
            .snapshot()
            .get("ble")
            .and_then(|s| s.detail.get(key).cloned())
            .unwrap_or(Value::Null)
    }
}

/// Every row in the outbox.
pub async fn rows(outbox: &Outbox) -> Vec<Row> {
    outbox.fetch([0, 0], 10_000).await.unwrap()
}

/// Every reading in the outbox.
pub async fn readings(outbox: &Outbox) -> Vec<Reading> {
    rows(outbox)
        .await
        .into_iter()
        .filter_map(|r| match r.body {
            Body::Reading(r) => Some(r),
            Body::Event { .. } => None,
        })
        .collect()
}

/// Polls `f` until it returns `Some`, failing after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
