//! Sources of readings. Each source runs as a task and hands its readings to the outbox.
//!
//! * [`ble`]: Bluetooth LE health devices (SIG health profiles).

pub mod ble;
