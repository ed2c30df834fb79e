//! Every type the Heim gateway and its sensor-node firmware both speak, on one screen.
//!
//! * [`reading`]: the reading model — measurement kinds, exact decimal values with UCUM units,
//!   device identity and time, and the stable [`reading::ReadingId`].
//!
//! The crate is `no_std` and needs no allocator, so the firmware can use it on a microcontroller.
#![no_std]
#![deny(missing_docs)]

pub mod reading;

pub use reading::{
    AbsentReason, BodySite, Decimal, DeviceId, DeviceTime, GatewayTime, GlucoseSample, Kind,
    LocalDateTime, Measurement, Quantity, Reading, ReadingId, Unit, Value,
};
