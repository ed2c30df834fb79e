//! `hil-runner`: runs the end-to-end scenarios in `hil/scenarios/*.toml` against the built-in
//! simulated rig (mosquitto with mutual TLS, the `heim` binary, `heim-node-sim` on
//! pseudo-terminals, simulated devices) or checks a hardware rig description (`--rig`).
//!
//! Output: one line per scenario, a JUnit XML report (`--junit FILE`), and a closing
//! `N passed, N failed` line; exit code 1 if any failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod rig;

use clap::Parser;
use heim::demo::broker::{Broker, Mode};
use heim::demo::hospital::Hospital;
use heim::demo::pki::Pki;
use heim::demo::pty::{Line, cable, open_line};
use serde::Deserialize;

/// Heim hardware-in-the-loop scenario runner.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Scenario files (default: every hil/scenarios/*.toml).
    scenarios: Vec<PathBuf>,
    /// A rig description (hil/rigs/*.toml); without it, the built-in simulated rig.
    #[arg(long)]
    rig: Option<PathBuf>,
    /// Write a JUnit XML report here.
    #[arg(long)]
    junit: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    description: String,
    #[serde(default)]
    sim_readings: u64,
    #[serde(default)]
    sim_interval_ms: u64,
    #[serde(default, rename = "node")]
    nodes: Vec<NodeSpec>,
    #[serde(default, rename = "step")]
    steps: Vec<Step>,
    /// Bluetooth devices on a simulated BlueZ (on a rig: the real devices near the adapter).
    #[serde(default)]
    ble: Option<BleSpec>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BleSpec {
    /// `demo`: a blood-pressure monitor, a glucose meter with stored records that goes out of
    /// range mid-transfer, and a neighbour's monitor that is not registered.
    devices: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    id: u64,
    count: u32,
    #[serde(default = "default_interval")]
    interval_ms: u64,
    /// What runs the node on the simulated rig: `sim` (heim-node-sim, the node logic on the host)
    /// or `qemu` (the firmware image for a Cortex-M3 under qemu-system-arm). A rig's real node
    /// is whatever is wired to its port.
    #[serde(default)]
    firmware: Firmware,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Firmware {
    #[default]
    Sim,
    Qemu,
}

/// The emulated node image (`firmware/qemu-node`, built by scripts/test).
fn qemu_image() -> Result<PathBuf, String> {
    let elf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../firmware/qemu-node/target/thumbv7m-none-eabi/release/heim-qemu-node");
    if !elf.is_file() {
        return Err(format!(
            "the emulated firmware image {} is missing: (cd firmware/qemu-node && cargo build --release)",
            elf.display()
        ));
    }
    Ok(elf)
}

const fn default_interval() -> u64 {
    50
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "action", rename_all = "snake_case")]
enum Step {
    Sleep { ms: u64 },
    BrokerDown,
    BrokerUp,
    KillGateway,
    StartGateway,
    NodePowerCut,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// Distinct readings at the broker.
    readings: u64,
    /// Within this many seconds of the scenario's start.
    within_s: u64,
}

struct Outcome {
    name: String,
    passed: bool,
    message: String,
    seconds: f64,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let files = if args.scenarios.is_empty() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|e| e == "toml"));
        v.sort();
        v
    } else {
        args.scenarios.clone()
    };
    let mut scenarios = Vec::new();
    for f in &files {
        let parsed = std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str::<Scenario>(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                eprintln!("hil-runner: {}: {e}", f.display());
                return std::process::ExitCode::from(2);
            }
        }
    }
    let (outcomes, classname) = if let Some(path) = &args.rig {
        let rig = match rig::load(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("hil-runner: {e}");
                return std::process::ExitCode::from(2);
            }
        };
        (
            rig::run_all(&rig, &scenarios),
            format!("hil.rig.{}", rig.name()),
        )
    } else {
        (run_all_simulated(&scenarios), "hil.simulated".to_owned())
    };
    if let Some(path) = &args.junit
        && let Err(e) = std::fs::write(path, junit(&outcomes, &classname))
    {
        eprintln!("hil-runner: cannot write {}: {e}", path.display());
    }
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    println!("{} passed, {} failed", outcomes.len() - failed, failed);
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn print_outcome(o: &Outcome) {
    println!(
        "{} {:<32} {:>6.1} s  {}",
        if o.passed { "PASS" } else { "FAIL" },
        o.name,
        o.seconds,
        o.message
    );
}

fn run_all_simulated(scenarios: &[Scenario]) -> Vec<Outcome> {
    run_each(scenarios, |s, _| run_simulated(s))
}

/// Runs each scenario in turn on one runtime, printing its line as it ends.
fn run_each<'a, F, Fut>(scenarios: &'a [Scenario], run: F) -> Vec<Outcome>
where
    F: Fn(&'a Scenario, usize) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut outcomes = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let start = Instant::now();
        let (passed, message) = match rt.block_on(run(s, i)) {
            Ok(m) => (true, m),
            Err(m) => (false, m),
        };
        let o = Outcome {
            name: s.name.clone(),
            passed,
            message,
            seconds: start.elapsed().as_secs_f64(),
        };
        print_outcome(&o);
        outcomes.push(o);
    }
    outcomes
}

fn bin(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

struct Rigged {
    dbus: Option<String>,
    dir: PathBuf,
    broker: Broker,
    gateway: Option<Child>,
    config: PathBuf,
    nodes: Vec<(NodeSpec, PathBuf, PathBuf, Option<Child>)>,
    qemu_boots: u32,
    _lines: Vec<Line>,
}

impl Rigged {
    fn start_gateway(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("heim.log"))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin("heim"));
        if let Some(addr) = &self.dbus {
            cmd.env("DBUS_SYSTEM_BUS_ADDRESS", addr);
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| {
                format!("cannot start heim ({e}): build it with cargo build --workspace --bins")
            })?;
        self.gateway = Some(child);
        Ok(())
    }

    fn kill_gateway(&mut self) {
        if let Some(mut c) = self.gateway.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start_nodes(&mut self) -> Result<(), String> {
        for (spec, port, flash, child) in &mut self.nodes {
            if child.is_none() && spec.firmware == Firmware::Qemu {
                // No flash on the emulated board: the runner keeps its boot counter, so every
                // power-up is a new boot (a node with a flash queue keeps it there).
                self.qemu_boots += 1;
                let elf = qemu_image()?;
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(format!("qemu-{:x}.log", spec.id)))
                    .map_err(|e| e.to_string())?;
                let c = Command::new("qemu-system-arm")
                    .args(["-machine", "lm3s6965evb", "-cpu", "cortex-m3", "-nographic"])
                    .args(["-monitor", "none"])
                    .arg("-chardev")
                    .arg(format!("serial,id=uart0,path={}", port.display()))
                    .args(["-serial", "chardev:uart0"])
                    .args(["-semihosting-config", "enable=on,target=native"])
                    .arg("-kernel")
                    .arg(&elf)
                    .arg("-append")
                    .arg(format!(
                        "node={:#x} count={} interval={} boot={}",
                        spec.id, spec.count, spec.interval_ms, self.qemu_boots
                    ))
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(log.try_clone().map_err(|e| e.to_string())?))
                    .stderr(Stdio::from(log))
                    .spawn()
                    .map_err(|e| {
                        format!("cannot start qemu-system-arm ({e}); scripts/setup installs it")
                    })?;
                *child = Some(c);
                continue;
            }
            if child.is_none() {
                let c = Command::new(bin("heim-node-sim"))
                    .arg("--port")
                    .arg(&*port)
                    .arg("--node-id")
                    .arg(spec.id.to_string())
                    .arg("--count")
                    .arg(spec.count.to_string())
                    .arg("--interval-ms")
                    .arg(spec.interval_ms.to_string())
                    .arg("--flash")
                    .arg(&*flash)
                    .stderr(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("cannot start heim-node-sim ({e})"))?;
                *child = Some(c);
            }
        }
        Ok(())
    }

    fn power_cut_nodes(&mut self) -> Result<(), String> {
        for (_, _, _, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.start_nodes()
    }
}

impl Drop for Rigged {
    fn drop(&mut self) {
        self.kill_gateway();
        for (_, _, _, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        self.broker.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn run_simulated(s: &Scenario) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("hil-{}-{}", s.name, std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pki = Pki::generate(&dir.join("pki"), "hil").map_err(|e| e.to_string())?;
    let broker =
        Broker::start(&dir.join("broker"), &pki, Mode::MutualTls).map_err(|e| e.to_string())?;
    let gateway_id = "gw-hil";
    let hospital = Hospital::start(&pki, broker.port, gateway_id, "hospital", true)
        .await
        .map_err(|e| e.to_string())?;
    let mut sources = String::new();
    if s.sim_readings > 0 {
        sources.push_str(&format!(
            "[[source]]\nkind = \"simulated\"\nname = \"sim\"\ncount = {}\ninterval_ms = {}\n\n",
            s.sim_readings, s.sim_interval_ms
        ));
    }
    let mut lines = Vec::new();
    let mut nodes = Vec::new();
    for (i, n) in s.nodes.iter().enumerate() {
        let node_end = dir.join(format!("tty-node{i}"));
        let gw_end = dir.join(format!("tty-gw{i}"));
        let a = open_line(&node_end).map_err(|e| e.to_string())?;
        let b = open_line(&gw_end).map_err(|e| e.to_string())?;
        cable(&a, &b).map_err(|e| e.to_string())?;
        lines.push(a);
        lines.push(b);
        sources.push_str(&format!(
            "[[source]]\nkind = \"serial\"\nname = \"node{i}\"\npath = \"{}\"\n\n",
            gw_end.display()
        ));
        nodes.push((n.clone(), node_end, dir.join(format!("flash{i}.bin")), None));
    }
    let bluez = match &s.ble {
        Some(b) if b.devices == "demo" => {
            sources.push_str("[[source]]\nkind = \"ble\"\nname = \"ble\"\nidle_disconnect_ms = 800\nbackoff_min_ms = 200\n\n");
            Some(
                heim::sources::ble::demo::start_bluez(&dir)
                    .map_err(|e| format!("simulated BlueZ: {e}"))?,
            )
        }
        Some(b) => return Err(format!("unknown BLE device set {:?}", b.devices)),
        None => None,
    };
    let gw_dir = dir.join("gw");
    std::fs::create_dir_all(&gw_dir).map_err(|e| e.to_string())?;
    let config = heim::demo::write_config(&gw_dir, &pki, gateway_id, broker.port, &sources)
        .map_err(|e| e.to_string())?;
    if bluez.is_some() {
        heim::sources::ble::demo::register(&gw_dir.join("heim.db"))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut rig = Rigged {
        dbus: bluez.as_ref().map(|b| b.address.clone()),
        dir: dir.clone(),
        broker,
        gateway: None,
        config,
        nodes,
        qemu_boots: 0,
        _lines: lines,
    };
    let start = Instant::now();
    rig.start_gateway()?;
    rig.start_nodes()?;
    for step in &s.steps {
        match step {
            Step::Sleep { ms } => tokio::time::sleep(Duration::from_millis(*ms)).await,
            Step::BrokerDown => rig.broker.stop(),
            Step::BrokerUp => rig.broker.restart().map_err(|e| e.to_string())?,
            Step::KillGateway => rig.kill_gateway(),
            Step::StartGateway => rig.start_gateway()?,
            Step::NodePowerCut => rig.power_cut_nodes()?,
        }
    }
    let left = Duration::from_secs(s.expect.within_s).saturating_sub(start.elapsed());
    let got = hospital.wait_unique(s.expect.readings as usize, left).await as u64;
    let dups = hospital.with(|c| c.duplicates());
    hospital.stop().await;
    if let Some(b) = &bluez {
        let n = b
            .events_of("connect", Some(heim::sources::ble::demo::NEIGHBOUR_ADDRESS))
            .len();
        if n > 0 {
            return Err(format!(
                "the neighbour's unregistered device was connected {n} time(s)"
            ));
        }
    }
    drop(rig);
    drop(bluez);
    if got == s.expect.readings {
        Ok(format!(
            "{got} readings at the broker ({dups} redeliveries dropped by id) — {}",
            s.description
        ))
    } else {
        let log = std::fs::read_to_string(dir.join("heim.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(format!(
            "expected {} readings within {} s, got {got}; gateway log tail: {}",
            s.expect.readings,
            s.expect.within_s,
            tail.join(" | ")
        ))
    }
}

fn junit(outcomes: &[Outcome], classname: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    let total: f64 = outcomes.iter().map(|o| o.seconds).sum();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"heim-hil\" tests=\"{}\" failures=\"{failed}\" time=\"{total:.3}\">\n",
        outcomes.len()
    );
    for o in outcomes {
        x.push_str(&format!(
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\">",
            esc(classname),
            esc(&o.name),
            o.seconds
        ));
        if !o.passed {
            x.push_str(&format!("<failure message=\"{}\"/>", esc(&o.message)));
        }
        x.push_str("</testcase>\n");
    }
    x.push_str("</testsuite>\n</testsuites>\n");
    x
}
