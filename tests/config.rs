//! A broken config is refused with the file, the line and a reason, exit code 2.

mod common;

use std::process::Command;

use common::{heim_bin, heim_command};

fn write(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    for f in ["ca.pem", "gw.pem", "gw.key"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    let p = dir.join("heim.toml");
    std::fs::write(&p, text).unwrap();
    p
}

const GOOD: &str = r#"gateway_id = "gw-0001"
patient = "p-8f2c"
[store]
path = "heim.db"
[uplink]
host = "127.0.0.1"
port = 8883
ca = "ca.pem"
cert = "gw.pem"
key = "gw.key"
[[source]]
kind = "simulated"
name = "sim"
count = 100000
interval_ms = 0
"#;

fn assert_valid(p: &std::path::Path) {
    let out = heim_command().arg("check-config").arg(p).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn valid_config_passes() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), GOOD);
    assert_valid(&p);
}

#[test]
fn broken_configs_exit_2_with_file_and_line() {
    let cases = [
        (
            GOOD.replace("port = 8883", "port = 8883\ncolour = \"red\""),
            8,
            "colour",
        ),
        (
            GOOD.replace("interval_ms = 0", "interval_ms = -5"),
            15,
            "interval_ms",
        ),
        (GOOD.replace("[store]", "[store\n"), 3, ""),
        (
            GOOD.replace("kind = \"simulated\"", "kind = \"telepathy\""),
            12,
            "telepathy",
        ),
        (
            GOOD.replace("p-8f2c", "12345678901"),
            2,
            "national identity",
        ),
        (
            format!("{GOOD}[signalling]\nlisten = \"nowhere\"\n"),
            17,
            "signalling.listen",
        ),
        (
            format!("{GOOD}[signalling]\nlisten = \"0.0.0.0:8443\"\ncert = \"ca.pem\"\n"),
            18,
            "go together",
        ),
        (
            format!("{GOOD}[signalling]\nlisten = \"0.0.0.0:8443\"\nring_seconds = 5\n"),
            18,
            "ring_seconds",
        ),
    ];
    for (text, line, word) in cases {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), &text);
        for args in [vec!["check-config"], vec!["run", "--config"]] {
            let out = heim_command().args(&args).arg(&p).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(
                err.contains(&format!("heim.toml:{line}:")),
                "{args:?} wanted line {line}: {err}"
            );
            assert!(err.contains(word), "{args:?}: {err}");
        }
    }
}

#[test]
fn missing_file_exits_2() {
    let out = heim_command()
        .args(["check-config", "/nonexistent/heim.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/heim.toml"));
}

#[test]
fn the_commented_example_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/heim.example.toml");
    let text = std::fs::read_to_string(example).unwrap();
    for f in ["ca.pem", "gateway.pem", "gateway.key"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    let p = dir.path().join("heim.toml");
    std::fs::write(&p, text).unwrap();
    assert_valid(&p);
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(analyze) = which("systemd-analyze") else {
        panic!("systemd-analyze is missing: install systemd (the test command does)");
    };
    let dir = tempfile::tempdir().unwrap();
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/heim.service");
    let text = std::fs::read_to_string(unit).unwrap();
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let text = text.replace("/usr/bin/heim", &heim_bin().display().to_string());
    let p = dir.path().join("heim.service");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("heim.service:"),
        "{err}"
    );
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .ok_or(())
}

#[test]
fn the_systemd_unit_is_sandboxed_to_an_exposure_of_at_most_2() {
    let analyze =
        which("systemd-analyze").expect("systemd-analyze (the test command installs systemd)");
    let dir = tempfile::tempdir().unwrap();
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/heim.service");
    let text = std::fs::read_to_string(unit)
        .unwrap()
        .replace("/usr/bin/heim", &heim_bin().display().to_string());
    let p = dir.path().join("heim.service");
    std::fs::write(&p, text).unwrap();
    let out = Command::new(analyze)
        .args(["security", "--offline=yes"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for heim.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no score in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score <= 2.0, "exposure {score}:\n{text}");
}
