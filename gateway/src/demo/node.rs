//! A sensor node for the demo: the firmware's own node logic ([`heim_firmware::node`]) on a
//! pseudo-terminal, with a simulated temperature probe and a scale, talking to the gateway's
//! serial source exactly as a node on a UART would.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use heim_firmware::host::Port;
use heim_firmware::node::{Node, RamQueue, StableWeight};
use heim_shared_types::{Measurement, Quantity, Unit};

/// A running demo node.
#[derive(Debug)]
pub struct DemoNode {
    /// The serial device path the gateway opens.
    pub path: PathBuf,
    /// Readings taken so far.
    pub taken: Arc<AtomicU32>,
    /// Readings still waiting for an ack.
    pub queued: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _slave: OwnedFd,
}

impl DemoNode {
    /// Opens a pseudo-terminal and starts a node taking `count` readings, one every `interval`.
    pub fn start(node_id: u64, count: u32, interval: Duration) -> std::io::Result<Self> {
        let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
        let mut t =
            nix::sys::termios::tcgetattr(pty.slave.as_fd()).map_err(std::io::Error::from)?;
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(pty.slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t)
            .map_err(std::io::Error::from)?;
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))?;
        let master = std::fs::File::from(pty.master);
        nix::fcntl::fcntl(
            master.as_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(std::io::Error::from)?;
        let taken = Arc::new(AtomicU32::new(0));
        let queued = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (taken, queued, stop) = (taken.clone(), queued.clone(), stop.clone());
            std::thread::Builder::new()
                .name("demo-node".into())
                .spawn(move || {
                    let mut node = Node::new(Port(master), RamQueue::<128>::new(), node_id, 1, 0);
                    node.retransmit_ms = 300;
                    let start = Instant::now();
                    let mut next = Duration::ZERO;
                    let mut scale = StableWeight::<4>::new(50, 2_000);
                    while !stop.load(Ordering::Relaxed) {
                        let now = start.elapsed();
                        let n = taken.load(Ordering::Relaxed);
                        if n < count && now >= next {
                            next = now + interval;
                            let m = if n % 2 == 0 {
                                Some(Measurement::BodyTemperature {
                                    temperature: Quantity::new(
                                        3655 + (n % 30) as i32,
                                        -2,
                                        Unit::Celsius,
                                    ),
                                    site: None,
                                })
                            } else {
                                // Someone steps on the scale; it reports once the load is stable.
                                let mut w = None;
                                for s in [40_000, 71_800, 72_390, 72_400, 72_410, 72_400] {
                                    w = w.or(scale.push(s + (n % 5) as i32 * 10));
                                }
                                scale.push(0);
                                w.map(|g| {
                                    Measurement::BodyWeight(Quantity::new(g, -3, Unit::Kilogram))
                                })
                            };
                            if let Some(m) = m
                                && node.record(now.as_millis() as u64, m)
                            {
                                taken.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        node.poll(now.as_millis() as u64);
                        queued.store(node.queued() as u32, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })?
        };
        Ok(Self {
            path,
            taken,
            queued,
            stop,
            thread: Some(thread),
            _slave: pty.slave,
        })
    }
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
