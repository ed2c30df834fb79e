//! Heim sensor-node firmware, `no_std` and allocation-free.
//!
//! * [`drivers`]: the MAX30205 clinical body-temperature sensor (I2C) and the HX711 load-cell
//!   ADC (GPIO + delay), generic over embedded-hal 1.0 traits, with typed errors.
//! * [`node`]: the node logic — durable queue, send, retransmit from the oldest unacked reading,
//!   cumulative acks, clock setting, stable-weight detection — generic over the link and the queue.
//!
//! * [`flash_queue`]: the durable queue of unacked readings on NOR flash (`sequential-storage`,
//!   behind the `embedded-storage-async` traits).
//! * [`host`] (feature `std`): a serial device or pseudo-terminal as the node's link, for the host
//!   simulator and the gateway's demo.
//!
//! The wire format is [`heim_shared_types::frame`]; the host simulator (`firmware/sim`) runs this
//! same logic over a serial device.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod drivers;
pub mod flash_queue;
#[cfg(feature = "std")]
pub mod host;
pub mod node;
