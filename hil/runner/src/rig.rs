//! Scenarios on a hardware rig described by `hil/rigs/*.toml`: the same scenario files as the
//! simulated rig, with each step carried out by the rig's own command for it (a power relay, an
//! SSH into the gateway, a broker service) and the outcome judged the same way, at the rig's
//! broker.
//!
//! Before anything runs, the rig is checked: its files and ports exist, its broker answers, and it
//! has a command for every step the chosen scenarios use. A missing piece is a clear failure
//! naming it, never a hang.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use heim::demo::hospital::Hospital;
use serde::Deserialize;

use crate::{Outcome, Scenario, Step};

/// A rig description.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rig {
    name: String,
    broker: RigBroker,
    gateway: RigGateway,
    /// Shell commands (run with `sh -c`) per step; see `hil/README.md` for the names and the
    /// `{node}`, `{node_dec}`, `{count}`, `{interval_ms}`, `{devices}` placeholders.
    #[serde(default)]
    actions: BTreeMap<String, String>,
    #[serde(default, rename = "node")]
    nodes: Vec<RigNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RigBroker {
    host: String,
    port: u16,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RigGateway {
    /// The gateway's `gateway_id` (its topics).
    id: String,
    /// Its config, when the runner runs on the gateway itself (checked to exist).
    #[serde(default)]
    config: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RigNode {
    id: u64,
    /// The gateway-side serial port the node is wired to (checked to exist when local).
    port: PathBuf,
}

const KNOWN: &[&str] = &[
    "setup",
    "teardown",
    "start_gateway",
    "kill_gateway",
    "broker_down",
    "broker_up",
    "start_node",
    "node_power_cut",
    "start_sim",
    "ble_devices",
];

/// Loads a rig description.
pub fn load(path: &Path) -> Result<Rig, String> {
    let rig: Rig = std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for k in rig.actions.keys() {
        if !KNOWN.contains(&k.as_str()) {
            return Err(format!(
                "{}: unknown action {k:?} (known: {})",
                path.display(),
                KNOWN.join(", ")
            ));
        }
    }
    Ok(rig)
}

/// What is wrong with the rig for these scenarios (empty: ready).
pub fn problems(rig: &Rig, scenarios: &[Scenario]) -> Vec<String> {
    let mut p = Vec::new();
    let mut files = vec![&rig.broker.ca, &rig.broker.cert, &rig.broker.key];
    if let Some(c) = &rig.gateway.config {
        files.push(c);
    }
    for f in files {
        if !f.is_file() {
            p.push(format!("{} is missing", f.display()));
        }
    }
    for s in scenarios {
        for n in &s.nodes {
            match rig.nodes.iter().find(|r| r.id == n.id) {
                None => p.push(format!(
                    "scenario {}: node {:#x} is not on this rig",
                    s.name, n.id
                )),
                Some(r) if !r.port.exists() => p.push(format!(
                    "scenario {}: node {:#x}: port {} is absent (unplugged?)",
                    s.name,
                    n.id,
                    r.port.display()
                )),
                Some(_) => {}
            }
        }
        for a in needed(s) {
            if !rig.actions.contains_key(a) {
                p.push(format!(
                    "scenario {}: the rig has no `{a}` action (see hil/README.md)",
                    s.name
                ));
            }
        }
    }
    let addr = format!("{}:{}", rig.broker.host, rig.broker.port);
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&addr)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(3)).is_ok());
    if !reachable {
        p.push(format!(
            "the rig's broker {addr} does not answer within 3 s"
        ));
    }
    p
}

fn needed(s: &Scenario) -> Vec<&'static str> {
    let mut v = Vec::new();
    if !s.nodes.is_empty() {
        v.push("start_node");
    }
    if s.sim_readings > 0 {
        v.push("start_sim");
    }
    if s.ble.is_some() {
        v.push("ble_devices");
    }
    for step in &s.steps {
        let a = match step {
            Step::Sleep { .. } => continue,
            Step::BrokerDown => "broker_down",
            Step::BrokerUp => "broker_up",
            Step::KillGateway => "kill_gateway",
            Step::StartGateway => "start_gateway",
            Step::NodePowerCut => "node_power_cut",
        };
        if !v.contains(&a) {
            v.push(a);
        }
    }
    v
}

impl Rig {
    /// The rig's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `name` with the placeholders filled in.
    fn act(&self, name: &str, vars: &[(&str, String)]) -> Result<(), String> {
        let Some(cmd) = self.actions.get(name) else {
            return Err(format!("the rig has no `{name}` action"));
        };
        let mut line = cmd.clone();
        for (k, v) in vars {
            line = line.replace(&format!("{{{k}}}"), v);
        }
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&line)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("action `{name}`: cannot run sh: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => {
                    let mut err = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    let tail: Vec<&str> = err.lines().rev().take(3).collect();
                    return Err(format!(
                        "action `{name}` failed ({st}): {}",
                        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                    ));
                }
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    return Err(format!("action `{name}` did not finish within 60 s"));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("action `{name}`: {e}")),
            }
        }
    }

    fn node_vars(n: &crate::NodeSpec) -> Vec<(&'static str, String)> {
        vec![
            ("node", format!("{:#x}", n.id)),
            ("node_dec", n.id.to_string()),
            ("count", n.count.to_string()),
            ("interval_ms", n.interval_ms.to_string()),
        ]
    }

    /// Runs one scenario on the rig.
    pub async fn run(&self, s: &Scenario, seq: usize) -> Result<String, String> {
        let rt = &self.broker;
        let tls = heim::uplink::tls::client_config(&rt.ca, &rt.cert, &rt.key)
            .map_err(|e| format!("the rig's runner certificate: {e}"))?;
        // A fresh subscriber per scenario: what it counts is this scenario's.
        let client_id = format!("hil-runner-{}-{}-{seq}", self.name, std::process::id());
        if self.actions.contains_key("setup") {
            self.act("setup", &[])?;
        }
        let hospital =
            Hospital::connect(&rt.host, rt.port, tls, &self.gateway.id, &client_id, true)
                .await
                .map_err(|e| format!("the rig's broker: {e}"))?;
        let start = Instant::now();
        let outcome = self.drive(s, start, &hospital).await;
        hospital.stop().await;
        if self.actions.contains_key("teardown") {
            self.act("teardown", &[])?;
        }
        outcome
    }

    async fn drive(
        &self,
        s: &Scenario,
        start: Instant,
        hospital: &Hospital,
    ) -> Result<String, String> {
        for n in &s.nodes {
            self.act("start_node", &Self::node_vars(n))?;
        }
        if s.sim_readings > 0 {
            self.act(
                "start_sim",
                &[
                    ("count", s.sim_readings.to_string()),
                    ("interval_ms", s.sim_interval_ms.to_string()),
                ],
            )?;
        }
        if let Some(b) = &s.ble {
            self.act("ble_devices", &[("devices", b.devices.clone())])?;
        }
        for step in &s.steps {
            match step {
                Step::Sleep { ms } => tokio::time::sleep(Duration::from_millis(*ms)).await,
                Step::BrokerDown => self.act("broker_down", &[])?,
                Step::BrokerUp => self.act("broker_up", &[])?,
                Step::KillGateway => self.act("kill_gateway", &[])?,
                Step::StartGateway => self.act("start_gateway", &[])?,
                Step::NodePowerCut => {
                    for n in &s.nodes {
                        self.act("node_power_cut", &Self::node_vars(n))?;
                    }
                }
            }
        }
        let left = Duration::from_secs(s.expect.within_s).saturating_sub(start.elapsed());
        let got = hospital.wait_unique(s.expect.readings as usize, left).await as u64;
        let dups = hospital.with(|c| c.duplicates());
        if got == s.expect.readings {
            Ok(format!(
                "{got} readings at the rig's broker ({dups} redeliveries dropped by id) — {}",
                s.description
            ))
        } else {
            Err(format!(
                "expected {} readings within {} s at the rig's broker, got {got}",
                s.expect.readings, s.expect.within_s
            ))
        }
    }
}

/// Runs the scenarios on the rig (after the checks), as outcomes.
pub fn run_all(rig: &Rig, scenarios: &[Scenario]) -> Vec<Outcome> {
    let problems = problems(rig, scenarios);
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("hil-runner: rig {}: {p}", rig.name);
        }
        let outcomes: Vec<Outcome> = scenarios
            .iter()
            .map(|s| Outcome {
                name: s.name.clone(),
                passed: false,
                message: format!("rig {} is not ready: {}", rig.name, problems.join("; ")),
                seconds: 0.0,
            })
            .collect();
        for o in &outcomes {
            crate::print_outcome(o);
        }
        return outcomes;
    }
    crate::run_each(scenarios, |s, i| rig.run(s, i))
}
