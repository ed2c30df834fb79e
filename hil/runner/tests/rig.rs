//! The rig path of the runner, proven without hardware: a "loopback rig" whose broker, gateway and
//! sensor nodes are real local processes (mosquitto with mutual TLS, `heim`, `heim-node-sim` on
//! pseudo-terminals), driven only through the rig description's action commands — the same
//! scenario files CI runs on the simulated rig.

use std::path::{Path, PathBuf};
use std::process::Command;

use heim::demo::broker::{Broker, Mode};
use heim::demo::pki::Pki;
use heim::demo::pty::{cable, open_line};

fn bin(name: &str) -> PathBuf {
    let runner = PathBuf::from(env!("CARGO_BIN_EXE_hil-runner"));
    let p = runner.with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: cargo build --workspace --bins",
        p.display()
    );
    p
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scenarios")
        .join(name)
}

#[test]
fn scenarios_run_on_a_rig_through_its_actions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = Pki::generate(&d.join("pki"), "rig").unwrap();
    let mut broker = Broker::start(&d.join("broker"), &pki, Mode::MutualTls).unwrap();
    let runner = pki.issue("rig-runner", &[], false, None).unwrap();
    let ids: [u64; 3] = [0xA11CE, 0xB0B, 0xC0DE];
    let mut lines = Vec::new();
    let mut sources = String::new();
    let mut rig_nodes = String::new();
    for id in ids {
        let node_end = d.join(format!("tty-node-{id:#x}"));
        let gw_end = d.join(format!("tty-gw-{id:#x}"));
        let a = open_line(&node_end).unwrap();
        let b = open_line(&gw_end).unwrap();
        cable(&a, &b).unwrap();
        lines.push(a);
        lines.push(b);
        sources.push_str(&format!(
            "[[source]]\nkind = \"serial\"\nname = \"node-{id:x}\"\npath = \"{}\"\n\n",
            gw_end.display()
        ));
        rig_nodes.push_str(&format!(
            "[[node]]\nid = {id:#x}\nport = \"{}\"\n\n",
            gw_end.display()
        ));
    }
    let gw_dir = d.join("gw");
    std::fs::create_dir_all(&gw_dir).unwrap();
    let cfg = heim::demo::write_config(&gw_dir, &pki, "gw-rig", broker.port, &sources).unwrap();
    let (heim, sim) = (bin("heim"), bin("heim-node-sim"));
    let dd = d.display();
    let start_gw = format!(
        "{} run --config {} >>{dd}/heim.log 2>&1 & echo $! > {dd}/gw.pid",
        heim.display(),
        cfg.display()
    );
    let node = format!(
        "{} --port {dd}/tty-node-{{node}} --node-id {{node_dec}} --count {{count}} --interval-ms {{interval_ms}} --flash {dd}/flash-{{node}}.bin >/dev/null 2>&1 & echo $! > {dd}/node-{{node}}.pid",
        sim.display()
    );
    let rig = format!(
        r#"name = "loopback"
[broker]
host = "127.0.0.1"
port = {port}
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[gateway]
id = "gw-rig"
config = "{cfg}"

[actions]
setup = "{start_gw}"
start_gateway = "{start_gw}"
kill_gateway = "kill -9 $(cat {dd}/gw.pid)"
start_node = "{node}"
node_power_cut = "kill -9 $(cat {dd}/node-{{node}}.pid); {node}"
teardown = "p=$(cat {dd}/gw.pid); kill $p; while kill -0 $p 2>/dev/null; do sleep 0.05; done; for f in {dd}/node-*.pid; do kill -9 $(cat $f) 2>/dev/null; done; rm -f {dd}/node-*.pid {dd}/flash-*.bin"

{rig_nodes}"#,
        port = broker.port,
        ca = pki.ca.display(),
        cert = runner.cert.display(),
        key = runner.key.display(),
        cfg = cfg.display(),
    );
    let rig_file = d.join("loopback.toml");
    std::fs::write(&rig_file, rig).unwrap();
    let junit = d.join("junit.xml");
    let out = Command::new(env!("CARGO_BIN_EXE_hil-runner"))
        .arg("--rig")
        .arg(&rig_file)
        .arg("--junit")
        .arg(&junit)
        .arg(scenario("04-serial-node.toml"))
        .arg(scenario("05-serial-node-power-cut.toml"))
        .arg(scenario("06-serial-node-gateway-restart.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = std::fs::read_to_string(d.join("heim.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{stdout}\n{stderr}\ngateway log tail:\n{}",
        log.lines().rev().take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(stdout.contains("3 passed, 0 failed"), "{stdout}");
    assert!(stdout.contains("at the rig's broker"), "{stdout}");
    let x = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(
        x.matches("classname=\"hil.rig.loopback\"").count(),
        3,
        "{x}"
    );
    // The runner left no gateway running (teardown).
    let pid = std::fs::read_to_string(d.join("gw.pid")).unwrap();
    let alive = Command::new("kill")
        .args(["-0", pid.trim()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(!alive, "the gateway still runs after teardown");
    broker.stop();
    drop(lines);
}

#[test]
fn a_rig_that_is_not_ready_fails_with_reasons_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let closed = heim::demo::broker::free_port().unwrap();
    let rig = format!(
        r#"name = "half-built"
[broker]
host = "127.0.0.1"
port = {closed}
ca = "{d}/ca.pem"
cert = "{d}/runner.pem"
key = "{d}/runner.key"
[gateway]
id = "gw-x"
[actions]
kill_gateway = "true"
[[node]]
id = 0xA11CE
port = "{d}/no-such-tty"
"#,
        d = d.display()
    );
    let rig_file = d.join("rig.toml");
    std::fs::write(&rig_file, rig).unwrap();
    let t0 = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_hil-runner"))
        .arg("--rig")
        .arg(&rig_file)
        .arg(scenario("04-serial-node.toml"))
        .arg(scenario("05-serial-node-power-cut.toml"))
        .output()
        .unwrap();
    assert!(t0.elapsed().as_secs() < 20, "no hang");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("0 passed, 2 failed"), "{stdout}");
    for want in [
        "ca.pem is missing",
        "no-such-tty is absent",
        "node 0xb0b is not on this rig",
        "no `start_node` action",
        "no `node_power_cut` action",
        "does not answer",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    // An unknown action name is a usage error (exit 2), not a silent no-op.
    std::fs::write(
        &rig_file,
        std::fs::read_to_string(&rig_file)
            .unwrap()
            .replace("kill_gateway", "kil_gateway"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hil-runner"))
        .arg("--rig")
        .arg(&rig_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown action \"kil_gateway\""));
}
