//! BlueZ over D-Bus for what btleplug does not expose: adapter recovery and pairing.
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

/// Where the gateway serves its pairing agent (`org.bluez.Agent1`) while a pairing runs.
const AGENT_PATH: &str = "/org/heim/agent";
/// Pairing waits for the user on some devices; BlueZ itself gives up after about 30 s.
const PAIR_TIMEOUT: Duration = Duration::from_secs(60);

/// Pairs and bonds with a device BlueZ has seen (`Device1.Pair`), then marks it trusted so it may
/// reconnect without asking.
///
/// Without `passkey` this is Just Works (no agent: BlueZ treats the client as
/// NoInputNoOutput). With `passkey` (the number the device shows) the gateway registers an agent
/// for the duration of the call and answers BlueZ's `RequestPasskey` with it, or accepts a
/// numeric comparison only if the number matches, so a nearby impostor cannot slip in.
pub async fn pair(adapter: String, address: [u8; 6], passkey: Option<u32>) -> Result<(), Error> {
    tokio::task::spawn_blocking(move || pair_blocking(&adapter, &address, passkey))
        .await
        .unwrap_or_else(|e| Err(Error(dbus::Error::new_failed(&e.to_string()))))
}

fn failed(msg: &str) -> Error {
    Error(dbus::Error::new_failed(msg))
}

fn pair_blocking(adapter: &str, address: &[u8; 6], passkey: Option<u32>) -> Result<(), Error> {
    let conn = Connection::new_system()?;
    let manager = conn.with_proxy("org.bluez", "/org/bluez", TIMEOUT);
    if passkey.is_some() {
        manager.method_call::<(), _, _, _>(
            "org.bluez.AgentManager1",
            "RegisterAgent",
            (dbus::Path::from(AGENT_PATH), "KeyboardOnly"),
        )?;
    }
    let result = pair_serving_agent(&conn, &device_path(adapter, address), passkey);
    if passkey.is_some() {
        let _ = manager.method_call::<(), _, _, _>(
            "org.bluez.AgentManager1",
            "UnregisterAgent",
            (dbus::Path::from(AGENT_PATH),),
        );
    }
    result?;
    conn.with_proxy("org.bluez", device_path(adapter, address), TIMEOUT)
        .set("org.bluez.Device1", "Trusted", true)?;
    Ok(())
}

/// Sends `Pair` and, until its reply arrives, answers the agent calls BlueZ makes on this
/// connection (a blocking method call would not dispatch them, and the pairing would hang).
fn pair_serving_agent(conn: &Connection, device: &str, passkey: Option<u32>) -> Result<(), Error> {
    use dbus::message::{Message, MessageType};
    let ch = conn.channel();
    let msg = Message::new_method_call("org.bluez", device, "org.bluez.Device1", "Pair")
        .map_err(|e| failed(&e))?;
    let serial = ch.send(msg).map_err(|()| failed("cannot send Pair"))?;
    let deadline = std::time::Instant::now() + PAIR_TIMEOUT;
    loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .ok_or_else(|| failed("pairing timed out"))?;
        let Some(mut m) = ch.blocking_pop_message(left)? else {
            continue;
        };
        match m.msg_type() {
            MessageType::MethodReturn | MessageType::Error
                if m.get_reply_serial() == Some(serial) =>
            {
                return match m.as_result() {
                    Ok(_) => Ok(()),
                    Err(e) if e.name() == Some("org.bluez.Error.AlreadyExists") => Ok(()),
                    Err(e) => Err(Error(e)),
                };
            }
            MessageType::MethodCall if m.path().is_some_and(|p| &*p == AGENT_PATH) => {
                let _ = ch.send(agent_reply(&m, passkey));
            }
            _ => {}
        }
    }
}

/// The agent's answer to one `org.bluez.Agent1` call.
fn agent_reply(m: &dbus::Message, passkey: Option<u32>) -> dbus::Message {
    let member = m.member().map(|s| s.to_string()).unwrap_or_default();
    let reject = || {
        m.error(
            &dbus::strings::ErrorName::from("org.bluez.Error.Rejected"),
            c"rejected by heim",
        )
    };
    match (member.as_str(), passkey) {
        ("RequestPasskey", Some(pk)) => m.method_return().append1(pk),
        // Numeric comparison: accept only the number the nurse read off the device.
        ("RequestConfirmation", Some(pk)) => match m.read2::<dbus::Path, u32>() {
            Ok((_, shown)) if shown == pk => m.method_return(),
            _ => reject(),
        },
        // The nurse started this pairing for this device.
        (
            "RequestAuthorization" | "AuthorizeService" | "DisplayPasskey" | "Release" | "Cancel",
            _,
        ) => m.method_return(),
        _ => reject(),
    }
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
