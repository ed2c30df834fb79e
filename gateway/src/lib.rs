//! Heim: an edge gateway for digital home monitoring.
//!
//! # Layout
//! * [`config`]: the TOML config, its defaults and validation (`heim check-config`).
//! * [`sources`]: where readings come from (simulated devices; BLE health devices in [`sources::ble`]; serial nodes).
//! * [`store`]: the durable SQLite outbox — a reading lives here from commit to PUBACK.
//! * [`uplink`]: the MQTT 5 connection over mutual TLS, and FHIR rendering ([`uplink::fhir`]).
//! * [`careplan`]: the patient's care plan on the edge: signed plan intake, readings linked to
//!   it, alerts on the priority lane, missed-measurement DetectedIssues.
//! * [`control`]: the local Unix socket behind `heim status` and device commands.
//! * [`daemon`]: wiring, shutdown order, systemd notify and watchdog.
//! * [`demo`]: `heim demo`, the whole path on simulated devices with a local broker.
//! * [`clock`], [`reading_id`]: trusted time and stable reading identifiers.
//!
//! The data path is **source → [`store`] (durable SQLite outbox) → [`uplink`] (MQTT 5 over mutual
//! TLS, FHIR R4 Bundles)**. A reading is taken from its source only once its outbox transaction has
//! committed, and leaves the outbox only on the broker's PUBACK for the packet that carried it.
#![deny(missing_docs)]

pub mod careplan;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod reading_id;
pub mod signalling;
pub mod sources;
pub mod store;
pub mod uplink;
