//! Sensor nodes on serial lines, end to end: a node speaking the wire protocol on a real
//! pseudo-terminal → the `heim` binary (tokio-serial) → mosquitto (mutual TLS) → the hospital.
//!
//! The node here is the protocol's reference behaviour written in the test (keep every reading until
//! acked, retransmit from the oldest after a timeout, keep `(boot_id, seq)` across reboots), so the
//! gateway is tested against the protocol, not against itself.

mod common;

use std::collections::{HashSet, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use heim::demo::pty::{Line, cable, open_line};
use heim_shared_types::frame::{self, Decoder, Feed, MAX_FRAME};
use heim_shared_types::wire::{GatewayMsg, NodeMsg};
use heim_shared_types::{Measurement, Quantity, Unit};

#[derive(Clone, Copy)]
struct Queued {
    boot: u32,
    seq: u32,
    value: i32,
}

/// The node's durable state (what its flash holds).
struct NodeState {
    node_id: u64,
    boot: u32,
    next_seq: u32,
    taken: u32,
    queue: VecDeque<Queued>,
}

struct Node {
    state: Arc<Mutex<NodeState>>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU32>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Node {
    /// Runs a node on `line`, taking `count` readings in total, with garbage between frames if
    /// `noisy`.
    fn start(line: Line, state: Arc<Mutex<NodeState>>, count: u32, noisy: bool) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(AtomicU32::new(0));
        let thread = {
            let (stop, acks, state) = (stop.clone(), acks.clone(), state.clone());
            std::thread::spawn(move || run_node(line, state, count, noisy, stop, acks))
        };
        Self {
            state,
            stop,
            acks,
            thread: Some(thread),
        }
    }

    /// Pulls the cable: the node stops talking; its state (flash) stays.
    fn unplug(mut self) -> Arc<Mutex<NodeState>> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.state.clone()
    }
}

fn encode<T: serde::Serialize>(m: &T) -> Vec<u8> {
    let mut out = [0u8; MAX_FRAME];
    frame::encode(m, &mut out).unwrap().to_vec()
}

fn measurement(value: i32) -> Measurement {
    Measurement::BodyWeight(Quantity::new(70_000 + value, -3, Unit::Kilogram))
}

fn run_node(
    mut line: Line,
    state: Arc<Mutex<NodeState>>,
    count: u32,
    noisy: bool,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU32>,
) {
    let fd = line.master.as_raw_fd();
    nix::fcntl::fcntl(
        line.master.as_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .unwrap();
    let _ = fd;
    let mut decoder = Decoder::new();
    let mut rng_state = 0x1234_5678u32;
    let mut rand = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 17;
        rng_state ^= rng_state << 5;
        rng_state
    };
    let hello = {
        let s = state.lock().unwrap();
        encode(&NodeMsg::Hello {
            node_id: s.node_id,
            firmware_version: 0x0001_0000,
            boot_id: s.boot,
            capabilities: 0b0110,
            dropped: 0,
        })
    };
    let _ = line.master.write_all(&hello);
    let mut last_send = Instant::now() - Duration::from_secs(1);
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::SeqCst) {
        // Read acks.
        match line.master.read(&mut buf) {
            Ok(n) if n > 0 => {
                for b in &buf[..n] {
                    if let Feed::Frame(GatewayMsg::Ack { boot_id, seq }) =
                        decoder.push::<GatewayMsg>(*b)
                    {
                        acks.fetch_add(1, Ordering::SeqCst);
                        let mut s = state.lock().unwrap();
                        s.queue.retain(|q| !(q.boot == boot_id && q.seq <= seq));
                    }
                }
            }
            _ => {}
        }
        // Take a new reading now and then.
        {
            let mut s = state.lock().unwrap();
            if s.taken < count && s.queue.len() < 64 {
                s.taken += 1;
                let q = Queued {
                    boot: s.boot,
                    seq: s.next_seq,
                    value: s.taken as i32,
                };
                s.next_seq += 1;
                s.queue.push_back(q);
            }
        }
        // Send everything unacked, from the oldest, every 150 ms (first send and retransmission).
        if last_send.elapsed() >= Duration::from_millis(150) {
            last_send = Instant::now();
            let (node_id, queue): (u64, Vec<Queued>) = {
                let s = state.lock().unwrap();
                (s.node_id, s.queue.iter().copied().collect())
            };
            let mut out = Vec::new();
            for q in queue {
                if noisy && rand() % 5 == 0 {
                    // Line noise: random bytes, and half a frame.
                    let junk: Vec<u8> = (0..(rand() % 40)).map(|_| rand() as u8).collect();
                    out.extend_from_slice(&junk);
                    out.push(0);
                    let f = encode(&NodeMsg::Status {
                        boot_id: 1,
                        queued: 3,
                        dropped: 0,
                    });
                    out.extend_from_slice(&f[..f.len() / 2]);
                    out.push(0);
                }
                out.extend_from_slice(&encode(&NodeMsg::Reading {
                    node_id,
                    boot_id: q.boot,
                    seq: q.seq,
                    node_time_ms: 1_000 * u64::from(q.seq),
                    clock_set: false,
                    measurement: measurement(q.value),
                }));
            }
            let _ = line.master.write_all(&out);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn expected_ids(node_id: u64, boots: &[(u32, u32)]) -> HashSet<String> {
    boots
        .iter()
        .flat_map(|(boot, n)| (1..=*n).map(move |seq| (*boot, seq)))
        .map(|(b, s)| {
            format!(
                "urn:uuid:{}",
                heim::sources::serial::reading_id(node_id, b, s)
            )
        })
        .collect()
}

fn serial_source(link: &Path) -> String {
    format!(
        "[[source]]\nkind = \"serial\"\nname = \"node\"\npath = \"{}\"\nbaud = 115200\n",
        link.display()
    )
}

fn new_state(node_id: u64, boot: u32) -> Arc<Mutex<NodeState>> {
    Arc::new(Mutex::new(NodeState {
        node_id,
        boot,
        next_seq: 1,
        taken: 0,
        queue: VecDeque::new(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_readings_reach_the_hospital_through_line_noise() {
    let env = Env::new();
    let hospital = env.hospital().await;
    let link: PathBuf = env.dir.path().join("ttyNODE");
    let line = open_line(&link).unwrap();
    let cfg = env.config(&serial_source(&link));
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    let n = 300;
    let node = Node::start(line, new_state(0xC0FFEE, 7), n, true);
    let got = hospital
        .wait_unique(n as usize, Duration::from_secs(60))
        .await;
    assert_eq!(got, n as usize, "{}", gw.log_text());
    let s = gw.status().await.unwrap();
    assert!(
        s["sources"]["node"]["errors"].as_u64() > Some(0),
        "garbage was counted: {s}"
    );
    assert_eq!(s["sources"]["node"]["detail"]["node"], "0000000000c0ffee");
    assert!(gw.log_text().contains("Dropped a corrupt frame"));
    hospital.with(|c| assert_eq!(c.unique, expected_ids(0xC0FFEE, &[(7, n)])));
    assert!(node.acks.load(Ordering::SeqCst) > 0);
    node.unplug();
    assert!(gw.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_reboots_and_unplugging_lose_nothing_and_store_nothing_twice() {
    let mut env = Env::new();
    let hospital = env.hospital().await;
    // The broker stays away until the end, so the outbox shows exactly what was stored.
    env.broker.stop();
    let link: PathBuf = env.dir.path().join("ttyNODE");
    let cfg = env.config(&serial_source(&link));
    let state = new_state(42, 1);
    let per_boot = 150;
    let mut boot1_taken = 0;
    let mut rng = rand::rng();
    use rand::Rng;
    for round in 0..6 {
        let line = open_line(&link).unwrap();
        let mut gw = Gateway::start_with_log(&cfg, &format!("heim-{round}.log"));
        gw.wait_ready().await;
        // Boots 1 and 2 take readings; a "reboot" starts a new boot and keeps the queue (flash).
        if round == 3 {
            let mut s = state.lock().unwrap();
            boot1_taken = s.taken;
            s.boot = 2;
            s.next_seq = 1;
            s.taken = 0;
        }
        let node = Node::start(line, state.clone(), per_boot, false);
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..500))).await;
        // Alternate: kill the gateway mid-stream, or pull the cable while it runs.
        if round % 2 == 0 {
            gw.kill9();
            node.unplug();
        } else {
            node.unplug();
            tokio::time::sleep(Duration::from_millis(200)).await;
            gw.kill9();
        }
    }
    // Plug in once more and let the node finish; the gateway stores the rest.
    let line = open_line(&link).unwrap();
    let mut gw = Gateway::start_with_log(&cfg, "heim-final.log");
    gw.wait_ready().await;
    let node = Node::start(line, state.clone(), per_boot, false);
    assert!(boot1_taken > 0);
    let total = u64::from(boot1_taken + per_boot);
    gw.wait_status(Duration::from_secs(60), |s| {
        s["outbox_pending"].as_u64() >= Some(total)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !state.lock().unwrap().queue.is_empty() || state.lock().unwrap().taken < per_boot {
        assert!(Instant::now() < deadline, "the node never got all its acks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = gw.status().await.unwrap();
    assert_eq!(
        s["outbox_pending"].as_u64(),
        Some(total),
        "every reading stored exactly once: {s}"
    );
    node.unplug();
    env.broker.restart().unwrap();
    let got = hospital
        .wait_unique(total as usize, Duration::from_secs(60))
        .await;
    assert_eq!(got, total as usize, "{}", gw.log_text());
    hospital.with(|c| {
        assert_eq!(
            c.unique,
            expected_ids(42, &[(1, boot1_taken), (2, per_boot)])
        )
    });
    assert!(gw.terminate().success());
}

fn node_sim(port: &Path, flash: &Path, count: u32) -> std::process::Child {
    let bin = heim_bin().with_file_name("heim-node-sim");
    std::process::Command::new(bin)
        .arg("--port")
        .arg(port)
        .args(["--node-id", "77", "--count"])
        .arg(count.to_string())
        .args(["--interval-ms", "15", "--flash"])
        .arg(flash)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("heim-node-sim (cargo build --workspace --bins)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_simulator_survives_power_cuts_and_gateway_kills() {
    let env = Env::new();
    let hospital = env.hospital().await;
    let node_end = env.dir.path().join("ttyNODE-side");
    let gw_end = env.dir.path().join("ttyGW-side");
    let a = open_line(&node_end).unwrap();
    let b = open_line(&gw_end).unwrap();
    cable(&a, &b).unwrap();
    let cfg = env.config(&serial_source(&gw_end));
    let mut gw = Gateway::start(&cfg);
    gw.wait_ready().await;
    let flash = env.dir.path().join("node-flash.bin");
    let count = 80;
    // Power cuts: the node is SIGKILLed twice and restarted on the same flash file.
    for _ in 0..2 {
        let mut node = node_sim(&node_end, &flash, count);
        tokio::time::sleep(Duration::from_millis(350)).await;
        let _ = node.kill();
        let _ = node.wait();
    }
    let mut node = node_sim(&node_end, &flash, count);
    // And the gateway is SIGKILLed mid-stream and restarted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.kill9();
    let mut gw = Gateway::start_with_log(&cfg, "heim-2.log");
    gw.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = node.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the node never got all its acks");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "heim-node-sim exits 0 once everything is acked"
    );
    let got = hospital
        .wait_unique(count as usize, Duration::from_secs(30))
        .await;
    assert_eq!(got, count as usize, "{}", gw.log_text());
    // No more than taken: nothing was stored twice under different ids.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hospital.unique(), count as usize);
    assert!(gw.terminate().success());
    drop((a, b));
}
