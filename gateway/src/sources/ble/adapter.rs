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

fn device_path(adapter: &str, address: &[u8; 6]) -> String {
    format!(
        "/org/bluez/{adapter}/dev_{:02X}_{:02X}_{:02X}_{:02X}_{:02X}_{:02X}",
        address[0], address[1], address[2], address[3], address[4], address[5]
    )
}

/// Pairs and bonds with a device BlueZ has seen (`Device1.Pair`), then marks it trusted so it may
/// reconnect without asking. Just Works pairing needs no agent; passkey entry needs one registered
/// with BlueZ (not provided by the gateway yet).
pub async fn pair(adapter: String, address: [u8; 6]) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || {
        let conn = Connection::new_system()?;
        // Pairing waits for the user on some devices; BlueZ itself gives up after about 30 s.
        let dev = conn.with_proxy(
            "org.bluez",
            device_path(&adapter, &address),
            Duration::from_secs(60),
        );
        let paired: Result<(), dbus::Error> = dev.method_call("org.bluez.Device1", "Pair", ());
        match paired {
            Ok(()) => {}
            Err(e) if e.name() == Some("org.bluez.Error.AlreadyExists") => {}
            Err(e) => return Err(Error(e)),
        }
        dev.set("org.bluez.Device1", "Trusted", true)?;
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(Error(dbus::Error::new_failed(&e.to_string()))))
}

/// Removes a device (and its bond) from BlueZ.
pub async fn remove_device(adapter: String, address: [u8; 6]) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || {
        let conn = Connection::new_system()?;
        let proxy = conn.with_proxy("org.bluez", path(&adapter), TIMEOUT);
        let dev = dbus::Path::from(device_path(&adapter, &address));
        proxy.method_call::<(), _, _, _>(ADAPTER, "RemoveDevice", (dev,))?;
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(Error(dbus::Error::new_failed(&e.to_string()))))
}
