//! The sensor-node protocol: what a node and the gateway say to each other over a serial line.
//!
//! * The node speaks first on every boot: [`NodeMsg::Hello`]. The gateway answers with
//!   [`GatewayMsg::SetClock`] when its own clock is synchronised.
//! * Every measurement is a [`NodeMsg::Reading`] numbered `seq` = 1, 2, 3 … within the boot in
//!   which it was **taken** (`boot_id`). The node keeps it in non-volatile storage until acked; a
//!   reading resent after a reboot keeps its original `(boot_id, seq)`, so the gateway derives the
//!   same stable reading id from `(node_id, boot_id, seq)` and a retransmission is the same reading.
//! * [`GatewayMsg::Ack`] is **cumulative**: `Ack { boot_id, seq }` means every reading of that
//!   boot up to and including `seq` is committed to the gateway's outbox. The gateway accepts a
//!   boot's readings only in order (`seq` = last committed + 1) and re-acks what it already has;
//!   the node retransmits from its oldest unacked reading after a timeout. Order per node is
//!   therefore kept end to end, and one ack covers a whole burst.
//! * A node whose queue is full keeps the readings it has and counts what it could not store; the
//!   count travels in `Hello::dropped` and [`NodeMsg::Status`], so the loss is visible, never silent.

use serde::{Deserialize, Serialize};

use crate::reading::Measurement;

/// Capability bits in [`NodeMsg::Hello`].
pub mod capability {
    /// The node has a body-temperature probe (MAX30205).
    pub const TEMPERATURE: u32 = 1 << 0;
    /// The node has a load-cell scale (HX711).
    pub const WEIGHT: u32 = 1 << 1;
    /// The node keeps unacked readings across power loss.
    pub const DURABLE_QUEUE: u32 = 1 << 2;
    /// The node has a settable clock.
    pub const CLOCK: u32 = 1 << 3;
}

/// Node → gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeMsg {
    /// Sent at boot and whenever the gateway's port was (re)opened.
    Hello {
        /// The node's permanent id.
        node_id: u64,
        /// Firmware version, `major << 16 | minor << 8 | patch`.
        firmware_version: u32,
        /// Changes on every boot (random or a persisted counter).
        boot_id: u32,
        /// [`capability`] bits.
        capabilities: u32,
        /// Readings the node could not keep (queue full) since it was flashed.
        dropped: u32,
    },
    /// One measurement.
    Reading {
        /// The node's permanent id (in every reading, so a gateway that restarts mid-stream
        /// needs no new `Hello` to place it).
        node_id: u64,
        /// The boot in which it was taken.
        boot_id: u32,
        /// Its number within that boot, from 1.
        seq: u32,
        /// The node's clock when it was taken: Unix milliseconds if `clock_set`, else
        /// milliseconds since that boot.
        node_time_ms: u64,
        /// Whether the gateway had set the node's clock in that boot.
        clock_set: bool,
        /// What was measured.
        measurement: Measurement,
    },
    /// Queue state, sent periodically.
    Status {
        /// The current boot.
        boot_id: u32,
        /// Readings waiting for an ack.
        queued: u32,
        /// Readings the node could not keep since it was flashed.
        dropped: u32,
    },
}

/// Gateway → node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayMsg {
    /// Every reading of `boot_id` with a number up to `seq` is stored: forget them.
    Ack {
        /// The boot the readings were taken in.
        boot_id: u32,
        /// The highest stored number (cumulative).
        seq: u32,
    },
    /// The gateway's clock, which is synchronised: set yours.
    SetClock {
        /// UTC milliseconds since the Unix epoch.
        unix_millis: i64,
    },
}
