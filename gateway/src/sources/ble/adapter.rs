//! Adapter recovery over D-Bus, for what btleplug does not expose.
//!
//! A scanner that silently stops (BlueZ answering `StartDiscovery` with `InProgress`, or
//! `Discovering` dropping to false on its own) is the most reported BLE failure in home gateways;
//! the fix that works without a reboot is to power the adapter off and on (`Adapter1.Powered`).
//! These calls use their own blocking D-Bus connection on a blocking thread; like btleplug they
//! honour `DBUS_SYSTEM_BUS_ADDRESS`.

use std::time::Duration;

use dbus::blocking::Connection;
use dbus::blocking::stdintf::org_freedesktop_dbus::Properties;

const ADAPTER: &str = "org.bluez.Adapter1";
const TIMEOUT: Duration = Duration::from_secs(5);

/// A D-Bus failure talking to BlueZ.
#[derive(Debug, thiserror::Error)]
#[error("D-Bus: {0}")]
pub struct Error(#[from] dbus::Error);

fn path(adapter: &str) -> String {
    format!("/org/bluez/{adapter}")
}

/// Powers the adapter off, then on.
pub async fn power_cycle(adapter: String) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || {
        let conn = Connection::new_system()?;
        let proxy = conn.with_proxy("org.bluez", path(&adapter), TIMEOUT);
        proxy.set(ADAPTER, "Powered", false)?;
        proxy.set(ADAPTER, "Powered", true)?;
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(Error(dbus::Error::new_failed(&e.to_string()))))
}

/// Whether the adapter says it is discovering.
pub async fn discovering(adapter: String) -> Result<bool, Error> {
    tokio::task::spawn_blocking(move || {
        let conn = Connection::new_system()?;
        let proxy = conn.with_proxy("org.bluez", path(&adapter), TIMEOUT);
        Ok(proxy.get::<bool>(ADAPTER, "Discovering")?)
    })
    .await
    .unwrap_or_else(|e| Err(Error(dbus::Error::new_failed(&e.to_string()))))
}
