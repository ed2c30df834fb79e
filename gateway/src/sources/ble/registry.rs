//! The BLE device registry: which devices belong to this patient.
//!
//! Invariant: a reading is taken only from a device in this table. Everything else the scanner
//! sees stays a scan result. The table lives in the outbox's SQLite file (migration
//! `0002_ble.sql`) and is reached through [`Outbox::with_conn`], so registry writes are serialised
//! with everything else the store does.

use heim_shared_types::Kind;
use uuid::Uuid;

use super::profiles::{Characteristic, uuid16_to_uuid};
use crate::store::{self, Outbox};

/// Registry errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// An address that is not `AA:BB:CC:DD:EE:FF`.
    #[error("{0:?} is not a Bluetooth address (AA:BB:CC:DD:EE:FF)")]
    BadAddress(String),
    /// A kind name that is not known.
    #[error(
        "{0:?} is not a device kind (blood_pressure, glucose, thermometer, weight_scale, pulse_oximeter)"
    )]
    BadKind(String),
}

/// What kind of health device, by the SIG service it implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Blood Pressure Service 0x1810.
    BloodPressure,
    /// Glucose Service 0x1808 (stored records through RACP).
    Glucose,
    /// Health Thermometer Service 0x1809.
    Thermometer,
    /// Weight Scale Service 0x181D.
    WeightScale,
    /// Pulse Oximeter Service 0x1822 (spot-check).
    PulseOximeter,
}

impl DeviceKind {
    /// Every kind.
    pub const ALL: [DeviceKind; 5] = [
        DeviceKind::BloodPressure,
        DeviceKind::Glucose,
        DeviceKind::Thermometer,
        DeviceKind::WeightScale,
        DeviceKind::PulseOximeter,
    ];

    /// The stored name.
    pub const fn name(self) -> &'static str {
        match self {
            DeviceKind::BloodPressure => "blood_pressure",
            DeviceKind::Glucose => "glucose",
            DeviceKind::Thermometer => "thermometer",
            DeviceKind::WeightScale => "weight_scale",
            DeviceKind::PulseOximeter => "pulse_oximeter",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// The SIG service's 16-bit UUID.
    pub const fn service16(self) -> u16 {
        match self {
            DeviceKind::BloodPressure => 0x1810,
            DeviceKind::Glucose => 0x1808,
            DeviceKind::Thermometer => 0x1809,
            DeviceKind::WeightScale => 0x181D,
            DeviceKind::PulseOximeter => 0x1822,
        }
    }

    /// The SIG service UUID.
    pub const fn service(self) -> Uuid {
        uuid16_to_uuid(self.service16())
    }

    /// The kind whose service this is.
    pub fn from_service(u: &Uuid) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.service() == *u)
    }

    /// The characteristic that carries its measurements.
    pub const fn measurement(self) -> Characteristic {
        match self {
            DeviceKind::BloodPressure => Characteristic::BloodPressureMeasurement,
            DeviceKind::Glucose => Characteristic::GlucoseMeasurement,
            DeviceKind::Thermometer => Characteristic::TemperatureMeasurement,
            DeviceKind::WeightScale => Characteristic::WeightMeasurement,
            DeviceKind::PulseOximeter => Characteristic::PlxSpotCheck,
        }
    }

    /// The care-plan measurement a device of this kind feeds unless told otherwise.
    pub const fn default_feeds(self) -> Kind {
        match self {
            DeviceKind::BloodPressure => Kind::BloodPressure,
            DeviceKind::Glucose => Kind::BloodGlucose,
            DeviceKind::Thermometer => Kind::BodyTemperature,
            DeviceKind::WeightScale => Kind::BodyWeight,
            DeviceKind::PulseOximeter => Kind::Spo2,
        }
    }
}

/// A registered device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Identity address, most significant octet first.
    pub address: [u8; 6],
    /// Its kind.
    pub kind: DeviceKind,
    /// Display name.
    pub name: Option<String>,
    /// Whether it is bonded.
    pub bonded: bool,
    /// The care-plan measurement it feeds.
    pub feeds: Option<Kind>,
    /// Registration time, Unix ms.
    pub added_unix_ms: i64,
}

/// `AA:BB:CC:DD:EE:FF`.
pub fn format_address(a: &[u8; 6]) -> String {
    format!(
        "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
        a[0], a[1], a[2], a[3], a[4], a[5]
    )
}

/// Parses `AA:BB:CC:DD:EE:FF` (either case).
pub fn parse_address(s: &str) -> Result<[u8; 6], Error> {
    let bad = || Error::BadAddress(s.to_owned());
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

fn kind_by_name(s: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.name() == s)
}

/// Adds (or updates) a device.
pub async fn add(outbox: &Outbox, dev: Device) -> Result<(), Error> {
    outbox
        .with_conn(move |conn| {
            conn.execute(
                "INSERT INTO ble_device (address, kind, name, bonded, feeds, added_unix_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (address) DO UPDATE SET kind = ?2, name = ?3, bonded = ?4, feeds = ?5",
                rusqlite::params![
                    format_address(&dev.address),
                    dev.kind.name(),
                    dev.name,
                    dev.bonded,
                    dev.feeds.map(Kind::name),
                    dev.added_unix_ms
                ],
            )
        })
        .await?;
    Ok(())
}

/// Removes a device; whether it was registered.
pub async fn remove(outbox: &Outbox, address: [u8; 6]) -> Result<bool, Error> {
    let n = outbox
        .with_conn(move |conn| {
            conn.execute(
                "DELETE FROM ble_device WHERE address = ?1",
                [format_address(&address)],
            )
        })
        .await?;
    Ok(n > 0)
}

/// Every registered device, by address. Rows that no longer parse (a kind removed in a later
/// version) are skipped with a warning rather than failing the whole list.
pub async fn list(outbox: &Outbox) -> Result<Vec<Device>, Error> {
    let rows = outbox
        .with_conn(|conn| {
            let mut st = conn.prepare(
                "SELECT address, kind, name, bonded, feeds, added_unix_ms FROM ble_device ORDER BY address",
            )?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (address, kind, name, bonded, feeds, added_unix_ms) in rows {
        match (parse_address(&address), DeviceKind::parse(&kind)) {
            (Ok(address), Some(kind)) => out.push(Device {
                address,
                kind,
                name,
                bonded,
                feeds: feeds.as_deref().and_then(kind_by_name),
                added_unix_ms,
            }),
            _ => tracing::warn!(%address, %kind, "Skipped a registry row that does not parse."),
        }
    }
    Ok(out)
}
