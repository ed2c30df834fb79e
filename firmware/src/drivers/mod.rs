//! Sensor drivers, each owning its bus or pins until `destroy`.

pub mod hx711;
pub mod max30205;
