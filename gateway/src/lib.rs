//! Heim: an edge gateway for digital home monitoring.
//!
//! # Layout
//! * [`config`]: the TOML config, its defaults and validation (`heim check-config`).
//! * [`sources`]: where readings come from (BLE health devices: [`sources::ble`]).
//!
//! The data path is **source → [`store`] (durable SQLite outbox) → [`uplink`] (MQTT 5 over mutual
//! TLS, FHIR R4 Bundles)**. A reading is taken from its source only once its outbox transaction has
//! committed, and leaves the outbox only on the broker's PUBACK for the packet that carried it.
#![deny(missing_docs)]

pub mod clock;
pub mod config;
pub mod reading_id;
pub mod sources;
pub mod store;
pub mod uplink;
