//! The gateway's own clock and whether it can be trusted.
//!
//! A Raspberry Pi has no battery-backed clock: until NTP has synchronised it, "now" may be 1970 or
//! the time of the last shutdown. Everything that judges time (missed care-plan windows, setting a
//! device's clock) asks [`Clock::synchronized`] first, and every reading carries the answer.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use heim_shared_types::GatewayTime;
use serde::Deserialize;

/// How the gateway decides whether its clock is synchronised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncPolicy {
    /// Trust the clock once systemd-timesyncd says so (`/run/systemd/timesync/synchronized`), or
    /// chrony/ntpd's kernel flag is reflected there; otherwise not.
    #[default]
    Auto,
    /// Always trust it (a machine with a real-time clock, tests).
    Always,
    /// Never trust it (tests of the unsynchronised path).
    Never,
}

/// A shareable clock.
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    policy: SyncPolicy,
    marker: PathBuf,
    /// 0 = unknown yet, 1 = no, 2 = yes. Once synchronised, stays so (the kernel keeps time).
    state: AtomicU8,
}

impl Clock {
    /// A clock with the given policy.
    pub fn new(policy: SyncPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                policy,
                marker: PathBuf::from("/run/systemd/timesync/synchronized"),
                state: AtomicU8::new(0),
            }),
        }
    }

    /// Whether the system clock can be trusted now.
    pub fn synchronized(&self) -> bool {
        match self.inner.policy {
            SyncPolicy::Always => true,
            SyncPolicy::Never => false,
            SyncPolicy::Auto => {
                if self.inner.state.load(Ordering::Relaxed) == 2 {
                    return true;
                }
                let yes = self.inner.marker.exists();
                self.inner
                    .state
                    .store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }

    /// Now, with whether it can be trusted.
    pub fn now(&self) -> GatewayTime {
        GatewayTime {
            unix_millis: chrono::Utc::now().timestamp_millis(),
            synchronized: self.synchronized(),
        }
    }
}
