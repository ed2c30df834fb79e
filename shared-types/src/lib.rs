//! Every type the Heim gateway and its sensor-node firmware both speak, on one screen.
//!
//! * [`reading`]: the reading model — measurement kinds, exact decimal values with UCUM units,
//!   device identity and time, and the stable [`reading::ReadingId`].
//! * [`wire`]: the sensor-node protocol messages ([`wire::NodeMsg`], [`wire::GatewayMsg`]) and
//!   its rules (cumulative acks, stable `(node_id, boot_id, seq)`).
//! * [`frame`]: framing — postcard + CRC-16 + COBS, [`frame::PROTOCOL_VERSION`],
//!   [`frame::MAX_FRAME`], and a streaming [`frame::Decoder`] that resynchronises after garbage.
//!
//! The crate is `no_std` and needs no allocator, so the firmware can use it on a microcontroller.
#![no_std]
#![deny(missing_docs)]

pub mod frame;
pub mod reading;
pub mod wire;

pub use reading::{
    AbsentReason, BodySite, Decimal, DeviceId, DeviceTime, GatewayTime, GlucoseSample, Kind,
    LocalDateTime, Measurement, Quantity, Reading, ReadingId, Unit, Value,
};
