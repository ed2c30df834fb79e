//! Bluetooth LE health devices (SIG health profiles) through btleplug.
//!
//! * [`profiles`]: pure decoders, bytes → typed measurement or typed [`profiles::DecodeError`],
//!   one module per profile, each convertible into [`heim_shared_types::Measurement`]s.
//! * [`cli`]: `heim decode <characteristic> <hex>`, which prints a decoded value as JSON for a
//!   technician checking a device's raw output.
//! * [`registry`]: the devices that belong to this patient (only their readings are taken).
//! * [`source`]: the source task: scan, connect on advertisement, take readings, glucose
//!   back-fill through RACP, scanner-stall recovery.
//! * [`adapter`]: adapter recovery over D-Bus (power cycle), which btleplug does not offer.
//! * [`commands`]: `heim device scan|add|list|remove` on the control socket.
//! * [`config`]: `[[source]] kind = "ble"`.
//! * [`demo`]: `heim demo --ble`.
//! * [`sim`]: a simulated BlueZ on a private D-Bus, for the demo and the tests.

pub mod adapter;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod profiles;
pub mod registry;
pub mod sim;
pub mod source;

pub use cli::{decode_cli, decode_report};
pub use config::BleConfig;
pub use source::{BleSource, Nearby};
