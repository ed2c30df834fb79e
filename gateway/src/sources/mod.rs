//! Sources of readings. Each source is one task that owns its device connection, turns what the
//! device says into [`Reading`](heim_shared_types::Reading)s, and hands them to the outbox with
//! [`Outbox::append`]: a reading counts as taken (and may be acknowledged to the device) only after
//! that returns.
//!
//! * [`simulated`]: deterministic simulated devices for the demo, tests and benchmarks.
//! * [`serial`]: our own sensor nodes on serial lines (postcard frames, cumulative acks).
//! * [`ble`]: Bluetooth LE health devices (SIG health profiles) through btleplug.

pub mod ble;
pub mod serial;
pub mod simulated;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use heim_shared_types::GatewayTime;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::Outbox;

/// What a source task gets from the daemon.
#[derive(Debug, Clone)]
pub struct Context {
    /// The source's index in the config (part of simulated device ids).
    pub index: u16,
    /// The source's name.
    pub name: String,
    /// Where readings go.
    pub outbox: Outbox,
    /// Cancelled on SIGTERM/SIGINT: stop taking new readings, finish the append in progress.
    pub shutdown: CancellationToken,
    /// This source's entry in `heim status`.
    pub status: StatusHandle,
    /// The gateway clock.
    pub clock: Clock,
}

/// One source's status, as `heim status` shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceStatus {
    /// `simulated`, `ble`, `serial`.
    pub kind: String,
    /// When the last reading was taken (RFC 3339, gateway clock), if any.
    pub last_reading: Option<String>,
    /// Readings taken since start.
    pub readings: u64,
    /// Errors counted since start (bad frames, decode errors, failed appends …).
    pub errors: u64,
    /// Source-specific fields (connected devices, port state …).
    pub detail: serde_json::Map<String, serde_json::Value>,
}

/// The shared table of source statuses.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<BTreeMap<String, SourceStatus>>>,
}

impl Registry {
    /// A handle for one source.
    pub fn handle(&self, name: &str, kind: &str) -> StatusHandle {
        self.lock().insert(
            name.to_owned(),
            SourceStatus {
                kind: kind.to_owned(),
                ..SourceStatus::default()
            },
        );
        StatusHandle {
            registry: self.clone(),
            name: name.to_owned(),
        }
    }

    /// A copy of every source's status.
    pub fn snapshot(&self) -> BTreeMap<String, SourceStatus> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SourceStatus>> {
        // A panic while holding this lock cannot leave the map inconsistent (plain field writes).
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A source's own entry in the registry.
#[derive(Debug, Clone)]
pub struct StatusHandle {
    registry: Registry,
    name: String,
}

impl StatusHandle {
    /// Records that `n` readings were taken at `at`.
    pub fn readings_taken(&self, n: u64, at: GatewayTime) {
        let mut map = self.registry.lock();
        if let Some(s) = map.get_mut(&self.name) {
            s.readings += n;
            s.last_reading = chrono::DateTime::from_timestamp_millis(at.unix_millis)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        }
    }

    /// Counts an error.
    pub fn error(&self) {
        if let Some(s) = self.registry.lock().get_mut(&self.name) {
            s.errors += 1;
        }
    }

    /// Sets a source-specific status field.
    pub fn set_detail(&self, key: &str, value: serde_json::Value) {
        if let Some(s) = self.registry.lock().get_mut(&self.name) {
            s.detail.insert(key.to_owned(), value);
        }
    }
}
