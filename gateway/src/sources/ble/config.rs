//! `[[source]] kind = "ble"`: the BLE source's settings.

use serde::Deserialize;

/// `[[source]] kind = "ble"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleConfig {
    /// Name, unique among sources.
    pub name: String,
    /// The adapter to use (`hci0`); absent = the first one BlueZ lists.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Connections held at once at most. Each is a controller slot; Pi and USB adapters have
    /// 5–7, and scanning needs headroom, so the default is 3.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds to wait for a connection and its service discovery.
    #[serde(default = "default_connect_timeout_s")]
    pub connect_timeout_s: u64,
    /// Milliseconds a measurement device may stay silent before the gateway disconnects. Battery
    /// devices send their reading(s) right after connecting and would rather sleep than hold the
    /// link, so this is short.
    #[serde(default = "default_idle_disconnect_ms")]
    pub idle_disconnect_ms: u64,
    /// Seconds a glucose back-fill may go without a record or a response before it is aborted.
    #[serde(default = "default_racp_timeout_s")]
    pub racp_timeout_s: u64,
    /// First reconnect delay after a failed session, milliseconds (doubles up to 60 s).
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// After a session that brought no reading, leave the device alone this long, milliseconds.
    /// A device that keeps advertising would otherwise be reconnected over and over, draining
    /// its battery; one with something new to send advertises again after a measurement.
    #[serde(default = "default_cooldown_ms")]
    pub cooldown_ms: u64,
    /// Seconds without any advertisement before the scan is restarted (a scanner that silently
    /// stopped); after a restart that does not help, the adapter is power-cycled over D-Bus.
    #[serde(default = "default_scan_stall_s")]
    pub scan_stall_s: u64,
    /// Battery level (%) at or below which a low-battery event is raised.
    #[serde(default = "default_low_battery_pct")]
    pub low_battery_pct: u8,
}

const fn default_max_connections() -> usize {
    3
}
const fn default_connect_timeout_s() -> u64 {
    20
}
const fn default_idle_disconnect_ms() -> u64 {
    3000
}
const fn default_racp_timeout_s() -> u64 {
    30
}
const fn default_backoff_min_ms() -> u64 {
    1000
}
const fn default_cooldown_ms() -> u64 {
    10_000
}
const fn default_scan_stall_s() -> u64 {
    300
}
const fn default_low_battery_pct() -> u8 {
    20
}

impl BleConfig {
    /// A config with every default (tests, the demo).
    pub fn with_name(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            adapter: None,
            max_connections: default_max_connections(),
            connect_timeout_s: default_connect_timeout_s(),
            idle_disconnect_ms: default_idle_disconnect_ms(),
            racp_timeout_s: default_racp_timeout_s(),
            backoff_min_ms: default_backoff_min_ms(),
            cooldown_ms: default_cooldown_ms(),
            scan_stall_s: default_scan_stall_s(),
            low_battery_pct: default_low_battery_pct(),
        }
    }

    /// Checks the values a TOML type cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err(format!(
                "source {:?}: max_connections must be at least 1",
                self.name
            ));
        }
        if self.low_battery_pct > 100 {
            return Err(format!(
                "source {:?}: low_battery_pct is a percentage (0–100)",
                self.name
            ));
        }
        if self.scan_stall_s == 0 || self.connect_timeout_s == 0 {
            return Err(format!(
                "source {:?}: scan_stall_s and connect_timeout_s must be at least 1",
                self.name
            ));
        }
        Ok(())
    }
}
