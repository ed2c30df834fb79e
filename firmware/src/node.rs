//! The node logic: keep every reading until the gateway acks it, send it, retransmit from the
//! oldest unacked one when no ack comes, set the clock when told.
//!
//! Generic over the link (`embedded-io` Read/Write/ReadReady, a UART on a board, a pty in the host
//! simulator) and over the queue ([`Queue`]: RAM here, durable storage in the simulator and on
//! boards). Time is passed in (`now_ms` since boot), so the logic is deterministic in tests.
//!
//! Queue-full policy: the node **keeps what it has** and refuses the new reading, counting it in
//! `dropped`, which travels to the gateway in `Hello` and `Status` — a loss is never silent, and the
//! oldest (already waiting longest) readings are not the ones sacrificed.

use heim_shared_types::Measurement;
use heim_shared_types::frame::{self, Decoder, Feed, MAX_FRAME};
use heim_shared_types::wire::{GatewayMsg, NodeMsg};

/// A reading as the node stores it until acked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    /// Boot it was taken in.
    pub boot_id: u32,
    /// Its number in that boot.
    pub seq: u32,
    /// Node clock when taken.
    pub node_time_ms: u64,
    /// Whether the clock had been set.
    pub clock_set: bool,
    /// What was measured.
    pub measurement: Measurement,
}

/// Where unacked readings wait.
pub trait Queue {
    /// Appends; `false` when full (the reading is not kept).
    fn push(&mut self, r: Stored) -> bool;
    /// The `i`-th oldest.
    fn get(&self, i: usize) -> Option<Stored>;
    /// How many wait.
    fn len(&self) -> usize;
    /// Whether none wait.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Forgets every reading of `boot_id` numbered up to `seq` (a cumulative ack).
    fn ack(&mut self, boot_id: u32, seq: u32);
}

/// A queue in RAM (loses its content on power loss: for tests and boards without flash).
#[derive(Debug, Default)]
pub struct RamQueue<const N: usize> {
    q: heapless::Deque<Stored, N>,
}

impl<const N: usize> RamQueue<N> {
    /// An empty queue.
    pub const fn new() -> Self {
        Self {
            q: heapless::Deque::new(),
        }
    }
}

impl<const N: usize> Queue for RamQueue<N> {
    fn push(&mut self, r: Stored) -> bool {
        self.q.push_back(r).is_ok()
    }
    fn get(&self, i: usize) -> Option<Stored> {
        self.q.iter().nth(i).copied()
    }
    fn len(&self) -> usize {
        self.q.len()
    }
    fn ack(&mut self, boot_id: u32, seq: u32) {
        // Acks are cumulative per boot and readings are queued in order, so acked ones are at
        // the front; a reading of another boot at the front stops the scan.
        while let Some(f) = self.q.front() {
            if f.boot_id == boot_id && f.seq <= seq {
                self.q.pop_front();
            } else {
                break;
            }
        }
    }
}

/// Readings sent at most per poll (bounded bursts on a slow UART).
const WINDOW: usize = 16;

/// The node.
#[derive(Debug)]
pub struct Node<L, Q> {
    link: L,
    queue: Q,
    node_id: u64,
    boot_id: u32,
    next_seq: u32,
    /// Unix ms minus node ms, once the gateway has set the clock.
    clock_offset: Option<i64>,
    dropped: u32,
    decoder: Decoder,
    /// How many queued readings have been sent since the last (re)transmission round.
    sent: usize,
    last_progress_ms: u64,
    /// Retransmit from the oldest unacked reading after this long without an ack.
    pub retransmit_ms: u64,
}

impl<L, Q> Node<L, Q>
where
    L: embedded_io::Read + embedded_io::Write + embedded_io::ReadReady,
    Q: Queue,
{
    /// A node that has just booted: `next_seq` starts at 1 for this boot.
    pub fn new(link: L, queue: Q, node_id: u64, boot_id: u32, dropped: u32) -> Self {
        let mut n = Self {
            link,
            queue,
            node_id,
            boot_id,
            next_seq: 1,
            clock_offset: None,
            dropped,
            decoder: Decoder::new(),
            sent: 0,
            last_progress_ms: 0,
            retransmit_ms: 500,
        };
        n.hello();
        n
    }

    /// Announces the node (at boot; again whenever the line seems to have been reopened).
    pub fn hello(&mut self) {
        self.send(&NodeMsg::Hello {
            node_id: self.node_id,
            firmware_version: 0x0001_0000,
            boot_id: self.boot_id,
            capabilities: heim_shared_types::wire::capability::DURABLE_QUEUE
                | heim_shared_types::wire::capability::CLOCK,
            dropped: self.dropped,
        });
    }

    /// Records a measurement taken at `now_ms` (since boot). Returns `false` if the queue was full
    /// and the reading could not be kept (counted in `dropped`).
    pub fn record(&mut self, now_ms: u64, m: Measurement) -> bool {
        let (t, set) = match self.clock_offset {
            Some(off) => ((now_ms as i64 + off).max(0) as u64, true),
            None => (now_ms, false),
        };
        let r = Stored {
            boot_id: self.boot_id,
            seq: self.next_seq,
            node_time_ms: t,
            clock_set: set,
            measurement: m,
        };
        if self.queue.push(r) {
            self.next_seq += 1;
            true
        } else {
            self.dropped = self.dropped.saturating_add(1);
            false
        }
    }

    /// Handles what the gateway sent, then sends what is due. Call often.
    pub fn poll(&mut self, now_ms: u64) {
        let mut buf = [0u8; 64];
        while matches!(self.link.read_ready(), Ok(true)) {
            let n = match self.link.read(&mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            for b in &buf[..n] {
                match self.decoder.push::<GatewayMsg>(*b) {
                    Feed::Frame(GatewayMsg::Ack { boot_id, seq }) => {
                        let before = self.queue.len();
                        self.queue.ack(boot_id, seq);
                        let gone = before - self.queue.len();
                        self.sent = self.sent.saturating_sub(gone);
                        self.last_progress_ms = now_ms;
                    }
                    Feed::Frame(GatewayMsg::SetClock { unix_millis }) => {
                        self.clock_offset = Some(unix_millis - now_ms as i64);
                    }
                    Feed::Incomplete | Feed::Bad(_) => {}
                }
            }
        }
        if self.queue.is_empty() {
            self.last_progress_ms = now_ms;
            return;
        }
        if now_ms.saturating_sub(self.last_progress_ms) >= self.retransmit_ms {
            // No ack for a while: start again from the oldest unacked reading.
            self.sent = 0;
            self.last_progress_ms = now_ms;
        }
        while self.sent < self.queue.len().min(WINDOW) {
            if let Some(r) = self.queue.get(self.sent) {
                self.send(&NodeMsg::Reading {
                    node_id: self.node_id,
                    boot_id: r.boot_id,
                    seq: r.seq,
                    node_time_ms: r.node_time_ms,
                    clock_set: r.clock_set,
                    measurement: r.measurement,
                });
            }
            self.sent += 1;
        }
    }

    fn send(&mut self, m: &NodeMsg) {
        let mut out = [0u8; MAX_FRAME];
        if let Ok(f) = frame::encode(m, &mut out) {
            // A failed write is a lost frame: the retransmission covers it.
            let _ = self.link.write_all(f);
            let _ = self.link.flush();
        }
    }

    /// Readings waiting for an ack.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Readings that could not be kept.
    pub fn dropped(&self) -> u32 {
        self.dropped
    }

    /// The queue (simulators read their persistent counters from it).
    pub fn queue(&self) -> &Q {
        &self.queue
    }

    /// The link (tests and simulators inspect or feed it).
    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }

    /// Gives the link and queue back.
    pub fn destroy(self) -> (L, Q) {
        (self.link, self.queue)
    }
}

/// Reports a weight once it has been stable: `window` samples within `tolerance_g` of each other,
/// above `min_g` (someone is on the scale); then not again until the load goes below `min_g`.
#[derive(Debug)]
pub struct StableWeight<const N: usize> {
    samples: heapless::Deque<i32, N>,
    tolerance_g: i32,
    min_g: i32,
    reported: bool,
}

impl<const N: usize> StableWeight<N> {
    /// A detector over the last `N` samples.
    pub const fn new(tolerance_g: i32, min_g: i32) -> Self {
        Self {
            samples: heapless::Deque::new(),
            tolerance_g,
            min_g,
            reported: false,
        }
    }

    /// Adds a sample (grams); returns the stable weight (mean, grams) when it should be reported.
    pub fn push(&mut self, grams: i32) -> Option<i32> {
        if grams < self.min_g {
            self.samples.clear();
            self.reported = false;
            return None;
        }
        if self.samples.is_full() {
            self.samples.pop_front();
        }
        let _ = self.samples.push_back(grams);
        if self.reported || !self.samples.is_full() {
            return None;
        }
        let (lo, hi) = self
            .samples
            .iter()
            .fold((i32::MAX, i32::MIN), |(l, h), s| (l.min(*s), h.max(*s)));
        if hi - lo > self.tolerance_g {
            return None;
        }
        self.reported = true;
        let sum: i64 = self.samples.iter().map(|s| i64::from(*s)).sum();
        Some((sum / N as i64) as i32)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use heim_shared_types::{Quantity, Unit};

    use super::*;

    /// An in-memory link: what the node wrote, and what the "gateway" queued for it.
    #[derive(Default)]
    struct Pipe {
        to_node: Vec<u8>,
        from_node: Vec<u8>,
    }
    impl embedded_io::ErrorType for Pipe {
        type Error = core::convert::Infallible;
    }
    impl embedded_io::Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let n = buf.len().min(self.to_node.len());
            buf[..n].copy_from_slice(&self.to_node[..n]);
            self.to_node.drain(..n);
            Ok(n)
        }
    }
    impl embedded_io::ReadReady for Pipe {
        fn read_ready(&mut self) -> Result<bool, Self::Error> {
            Ok(!self.to_node.is_empty())
        }
    }
    impl embedded_io::Write for Pipe {
        fn write(&mut self, b: &[u8]) -> Result<usize, Self::Error> {
            self.from_node.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }

    fn sent(p: &mut Pipe) -> Vec<NodeMsg> {
        let mut d = Decoder::new();
        let out = p
            .from_node
            .iter()
            .filter_map(|b| match d.push::<NodeMsg>(*b) {
                Feed::Frame(m) => Some(m),
                _ => None,
            })
            .collect();
        p.from_node.clear();
        out
    }

    fn to_node(p: &mut Pipe, m: GatewayMsg) {
        let mut out = [0u8; MAX_FRAME];
        p.to_node
            .extend_from_slice(frame::encode(&m, &mut out).unwrap());
    }

    fn m(v: i32) -> Measurement {
        Measurement::BodyWeight(Quantity::new(v, -3, Unit::Kilogram))
    }

    fn seqs(msgs: &[NodeMsg]) -> Vec<u32> {
        msgs.iter()
            .filter_map(|m| match m {
                NodeMsg::Reading { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sends_keeps_until_ack_and_retransmits_from_oldest() {
        let mut node = Node::new(Pipe::default(), RamQueue::<8>::new(), 7, 3, 0);
        assert!(matches!(
            sent(node.link_mut())[..],
            [NodeMsg::Hello {
                node_id: 7,
                boot_id: 3,
                ..
            }]
        ));
        node.record(0, m(1));
        node.record(0, m(2));
        node.poll(10);
        assert_eq!(seqs(&sent(node.link_mut())), [1, 2]);
        // Ack 1 only: 2 stays; nothing is resent before the timeout…
        to_node(node.link_mut(), GatewayMsg::Ack { boot_id: 3, seq: 1 });
        node.poll(20);
        assert_eq!(node.queued(), 1);
        assert!(seqs(&sent(node.link_mut())).is_empty());
        // …and after it, from the oldest unacked reading.
        node.poll(600);
        assert_eq!(seqs(&sent(node.link_mut())), [2]);
        // An ack of another boot does not touch this boot's readings.
        to_node(node.link_mut(), GatewayMsg::Ack { boot_id: 4, seq: 9 });
        node.poll(610);
        assert_eq!(node.queued(), 1);
        to_node(node.link_mut(), GatewayMsg::Ack { boot_id: 3, seq: 2 });
        node.poll(620);
        assert_eq!(node.queued(), 0);
    }

    #[test]
    fn queue_full_keeps_the_old_and_counts_the_new() {
        let mut node = Node::new(Pipe::default(), RamQueue::<2>::new(), 1, 1, 0);
        assert!(node.record(0, m(1)));
        assert!(node.record(0, m(2)));
        assert!(!node.record(0, m(3)));
        assert_eq!(node.dropped(), 1);
        assert_eq!(node.queued(), 2);
    }

    #[test]
    fn set_clock_makes_times_absolute() {
        let mut p = Pipe::default();
        to_node(
            &mut p,
            GatewayMsg::SetClock {
                unix_millis: 1_780_000_000_000,
            },
        );
        let mut node = Node::new(p, RamQueue::<4>::new(), 1, 1, 0);
        node.poll(1_000);
        node.record(1_500, m(1));
        node.poll(1_500);
        let (mut pipe, _) = node.destroy();
        let msgs = sent(&mut pipe);
        assert!(
            msgs.iter().any(|x| matches!(
                x,
                NodeMsg::Reading {
                    node_time_ms: 1_780_000_000_500,
                    clock_set: true,
                    ..
                }
            )),
            "{msgs:?}"
        );
    }

    #[test]
    fn garbage_from_the_gateway_side_is_ignored() {
        let mut p = Pipe::default();
        p.to_node.extend_from_slice(&[1, 2, 3, 0, 0xff, 0]);
        to_node(&mut p, GatewayMsg::Ack { boot_id: 1, seq: 1 });
        let mut node = Node::new(p, RamQueue::<4>::new(), 1, 1, 0);
        node.record(0, m(1));
        node.poll(5);
        assert_eq!(node.queued(), 0);
    }

    #[test]
    fn stable_weight_reported_once_per_weighing() {
        let mut s = StableWeight::<4>::new(50, 2_000);
        assert_eq!(s.push(500), None);
        assert_eq!(s.push(71_000), None);
        assert_eq!(s.push(72_400), None);
        assert_eq!(s.push(72_410), None);
        assert_eq!(s.push(72_390), None);
        assert_eq!(s.push(72_400), Some(72_400));
        assert_eq!(s.push(72_405), None, "reported once");
        assert_eq!(s.push(0), None, "stepped off");
        for w in [80_000, 80_010, 80_000] {
            assert_eq!(s.push(w), None);
        }
        assert_eq!(s.push(80_010), Some(80_005));
    }
}
