//! Device commands on the control socket, behind `heim device scan|add|list|remove`.
//!
//! * `device.scan {seconds}`: the health devices the running scanner heard in that time (RSSI,
//!   kind, registered or not). The daemon scans all the time, so this only waits and reports.
//! * `device.add {address, kind?, feeds?, pair?, passkey?}`: pairs and bonds through BlueZ (Just
//!   Works, or passkey entry with the number the device shows), then
//!   registers the device; its kind comes from its advertised service unless given.
//! * `device.list`, `device.remove {address}`: the registry; removing also drops BlueZ's bond.
//!
//! Replies are JSON; errors are plain sentences for the nurse.

use std::time::Duration;

use serde_json::{Value, json};

use super::adapter;
use super::registry::{self, Device, DeviceKind};
use super::source::Nearby;
use crate::control::Commands;
use crate::store::Outbox;

fn device_json(d: &Device) -> Value {
    json!({
        "address": registry::format_address(&d.address),
        "kind": d.kind.name(),
        "name": d.name,
        "bonded": d.bonded,
        "feeds": d.feeds.unwrap_or(d.kind.default_feeds()).name(),
        "added_unix_ms": d.added_unix_ms,
    })
}

fn address_of(req: &Value) -> Result<[u8; 6], String> {
    let a = req["address"]
        .as_str()
        .ok_or("the request needs an address")?;
    registry::parse_address(a).map_err(|e| e.to_string())
}

/// Adds the `device.*` commands.
pub fn register(commands: &mut Commands, outbox: Outbox, nearby: Nearby) {
    {
        let nearby = nearby.clone();
        commands.add("device.scan", move |req| {
            let nearby = nearby.clone();
            async move {
                let secs = req["seconds"].as_u64().unwrap_or(10).clamp(1, 120);
                tokio::time::sleep(Duration::from_secs(secs)).await;
                Ok(json!(nearby.within(Duration::from_secs(secs))))
            }
        });
    }
    {
        let outbox = outbox.clone();
        commands.add("device.list", move |_| {
            let outbox = outbox.clone();
            async move {
                let list = registry::list(&outbox).await.map_err(|e| e.to_string())?;
                Ok(Value::Array(list.iter().map(device_json).collect()))
            }
        });
    }
    {
        let outbox = outbox.clone();
        let nearby = nearby.clone();
        commands.add("device.add", move |req| {
            let (outbox, nearby) = (outbox.clone(), nearby.clone());
            async move {
                let address = address_of(&req)?;
                let seen = nearby.get(&address);
                let kind = match req["kind"].as_str() {
                    Some(k) => DeviceKind::parse(k).ok_or_else(|| {
                        registry::Error::BadKind(k.to_owned()).to_string()
                    })?,
                    None => seen
                        .as_ref()
                        .and_then(|s| s.kind)
                        .and_then(DeviceKind::parse)
                        .ok_or("the device was not heard advertising a health service; wake it (take a measurement) and retry, or give --kind")?,
                };
                let bonded = if req["pair"].as_bool().unwrap_or(true) {
                    let adapter = nearby.adapter().unwrap_or_else(|| "hci0".into());
                    let passkey = match &req["passkey"] {
                        Value::Null => None,
                        v => Some(
                            v.as_u64()
                                .and_then(|n| u32::try_from(n).ok())
                                .filter(|n| *n <= 999_999)
                                .ok_or("the passkey is the six-digit number the device shows")?,
                        ),
                    };
                    adapter::pair(adapter, address, passkey).await.map_err(|e| {
                        format!("pairing failed ({e}); wake the device and retry, or use --no-pair for a device that needs no bond")
                    })?;
                    true
                } else {
                    false
                };
                let feeds = match req["feeds"].as_str() {
                    Some(f) => Some(
                        heim_shared_types::Kind::ALL
                            .into_iter()
                            .find(|k| k.name() == f)
                            .ok_or_else(|| format!("{f:?} is not a measurement kind"))?,
                    ),
                    None => None,
                };
                let dev = Device {
                    address,
                    kind,
                    name: seen.and_then(|s| s.name),
                    bonded,
                    feeds,
                    added_unix_ms: chrono::Utc::now().timestamp_millis(),
                };
                registry::add(&outbox, dev.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(address = %registry::format_address(&address), kind = kind.name(), bonded, "Registered a BLE device.");
                Ok(device_json(&dev))
            }
        });
    }
    commands.add("device.remove", move |req| {
        let (outbox, nearby) = (outbox.clone(), nearby.clone());
        async move {
            let address = address_of(&req)?;
            let removed = registry::remove(&outbox, address)
                .await
                .map_err(|e| e.to_string())?;
            // Best effort: the bond may never have existed.
            let adapter = nearby.adapter().unwrap_or_else(|| "hci0".into());
            let unbonded = adapter::remove_device(adapter, address).await.is_ok();
            if removed {
                tracing::info!(address = %registry::format_address(&address), "Removed a BLE device.");
            }
            Ok(json!({"address": registry::format_address(&address), "removed": removed, "unbonded": unbonded}))
        }
    });
}

/// Without a BLE source the `device.*` commands answer why, instead of "unknown command".
pub fn register_unconfigured(commands: &mut Commands) {
    for name in ["device.scan", "device.list", "device.add", "device.remove"] {
        commands.add(name, |_| async {
            Err::<Value, _>(
                "no BLE source is configured: add [[source]] kind = \"ble\" to the config"
                    .to_owned(),
            )
        });
    }
}
