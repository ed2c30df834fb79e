//! Bluetooth LE health devices: the SIG health profiles' decoders and the `heim decode` command.
//!
//! * [`profiles`]: pure decoders, bytes → typed measurement or typed [`profiles::DecodeError`],
//!   one module per profile, each convertible into [`heim_shared_types::Measurement`]s.
//! * [`cli`]: `heim decode <characteristic> <hex>`, which prints a decoded value as JSON for a
//!   technician checking a device's raw output.

pub mod cli;
pub mod profiles;

pub use cli::{decode_cli, decode_report};
