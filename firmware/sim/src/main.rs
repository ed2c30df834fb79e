//! `heim-node-sim`: the firmware's node logic ([`heim_firmware::node`]) over a serial device (a
//! pseudo-terminal in tests, a USB-serial adapter on a HIL rig), with a simulated temperature
//! probe and scale, and its "flash" in a file.
//!
//! The flash file holds the unacked readings and the boot counter, written atomically (temporary
//! file, `fsync`, rename) on every change, so `kill -9` is a power cut: a restarted simulator starts
//! a new boot and resends what the flash still holds. It exits once `--count` readings are taken
//! and all are acked.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use heim_firmware::node::{Node, Queue, StableWeight, Stored};
use heim_shared_types::{Measurement, Quantity, Unit};

/// Simulated Heim sensor node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Serial device to talk on.
    #[arg(long)]
    port: PathBuf,
    /// The node's id.
    #[arg(long)]
    node_id: u64,
    /// Readings to take, then exit once all are acked (default: forever).
    #[arg(long)]
    count: Option<u32>,
    /// Milliseconds between readings.
    #[arg(long, default_value_t = 200)]
    interval_ms: u64,
    /// The flash file (unacked readings and the boot counter).
    #[arg(long, default_value = "node-flash.bin")]
    flash: PathBuf,
    /// Queue capacity (readings the flash can hold).
    #[arg(long, default_value_t = 256)]
    capacity: usize,
}

/// What the flash holds.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Flash {
    boots: u32,
    taken: u32,
    dropped: u32,
    queue: Vec<Stored>,
}

/// A durable queue: every change rewrites the flash file atomically.
struct FileQueue {
    path: PathBuf,
    flash: Flash,
    capacity: usize,
    q: VecDeque<Stored>,
}

impl FileQueue {
    fn save(&mut self) {
        self.flash.queue = self.q.iter().copied().collect();
        let bytes = postcard::to_stdvec(&self.flash).expect("flash state serialises");
        let tmp = self.path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            Ok(())
        };
        if let Err(e) = write() {
            eprintln!("heim-node-sim: cannot write the flash file: {e}");
        }
    }
}

impl Queue for FileQueue {
    fn push(&mut self, r: Stored) -> bool {
        // Taking a reading and keeping it (or counting it lost) is one flash write.
        self.flash.taken += 1;
        let kept = self.q.len() < self.capacity;
        if kept {
            self.q.push_back(r);
        } else {
            self.flash.dropped += 1;
        }
        self.save();
        kept
    }
    fn get(&self, i: usize) -> Option<Stored> {
        self.q.get(i).copied()
    }
    fn len(&self) -> usize {
        self.q.len()
    }
    fn ack(&mut self, boot_id: u32, seq: u32) {
        let before = self.q.len();
        while let Some(f) = self.q.front() {
            if f.boot_id == boot_id && f.seq <= seq {
                self.q.pop_front();
            } else {
                break;
            }
        }
        if self.q.len() != before {
            self.save();
        }
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let flash: Flash = std::fs::read(&args.flash)
        .ok()
        .and_then(|b| postcard::from_bytes(&b).ok())
        .unwrap_or_default();
    let mut queue = FileQueue {
        path: args.flash.clone(),
        q: flash.queue.iter().copied().collect(),
        flash,
        capacity: args.capacity,
    };
    // A new boot: the counter is persisted before anything is taken in it.
    queue.flash.boots += 1;
    let boot_id = queue.flash.boots;
    let dropped = queue.flash.dropped;
    queue.save();
    let port = match heim_firmware::host::open_port(&args.port) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("heim-node-sim: cannot open {}: {e}", args.port.display());
            return std::process::ExitCode::from(2);
        }
    };
    eprintln!(
        "heim-node-sim: node {:016x} boot {boot_id}, {} reading(s) waiting in flash",
        args.node_id,
        queue.len()
    );
    let mut node = Node::new(
        heim_firmware::host::Port(port),
        queue,
        args.node_id,
        boot_id,
        dropped,
    );
    node.retransmit_ms = 300;
    let start = Instant::now();
    let mut next = Duration::ZERO;
    let mut scale = StableWeight::<5>::new(50, 2_000);
    loop {
        let now = start.elapsed();
        let now_ms = now.as_millis() as u64;
        let taken = node.queue().flash.taken;
        let more = args.count.is_none_or(|c| taken < c);
        if more && now >= next {
            next = now + Duration::from_millis(args.interval_ms);
            // Alternate: a probe temperature, and (once stable) the weight on the scale.
            let n = taken + 1;
            let m = if n % 2 == 1 {
                Some(Measurement::BodyTemperature {
                    temperature: Quantity::new(3650 + (n % 40) as i32, -2, Unit::Celsius),
                    site: None,
                })
            } else {
                let mut w = None;
                for s in [71_900, 72_390, 72_400, 72_410, 72_400, 72_395] {
                    w = w.or(scale.push(s + (n % 7) as i32));
                }
                scale.push(0);
                w.map(|g| Measurement::BodyWeight(Quantity::new(g, -3, Unit::Kilogram)))
            };
            if let Some(m) = m {
                node.record(now_ms, m);
            }
        }
        node.poll(now_ms);
        if !more && node.queued() == 0 {
            eprintln!("heim-node-sim: all {taken} reading(s) acked");
            return std::process::ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
