//! The fake BlueZ process (`fake_bluez.py`): start, read what it reports, stop.
//!
//! Shared by the gateway's BLE tests (`gateway/tests/ble_e2e_*.rs`) and the end-to-end test in the
//! `tests` package, which includes this file by path.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running fake BlueZ. Dropping it stops it with SIGTERM (it then stops its dbus-daemon and
/// removes its temporary directory).
pub struct FakeBluez {
    /// The private bus's address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    _dir: tempfile::TempDir,
}

impl FakeBluez {
    /// Starts the fake with `scenario` and points this process's D-Bus system bus at it.
    pub fn start(scenario: Value) -> Self {
        let fake = Self::launch(scenario);
        // One test per binary, set before any thread reads the environment (pitfall P7).
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("DBUS_SYSTEM_BUS_ADDRESS", &fake.address);
        }
        fake
    }

    /// Starts the fake with `scenario`; the caller hands `address` to the process under test.
    pub fn launch(scenario: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scenario.json");
        std::fs::write(&path, scenario.to_string()).unwrap();
        // Works from both the gateway package and the `tests` package.
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/tests/ble_sim/fake_bluez.py");
        // Debian's python has python3-dbus and python3-gi (pitfall P5: not a pyenv python).
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start fake_bluez.py (needs python3-dbus, python3-gi, dbus-daemon)");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        let address = first
            .trim()
            .strip_prefix("DBUS_SYSTEM_BUS_ADDRESS=")
            .unwrap_or_else(|| panic!("fake_bluez said {first:?}"))
            .to_owned();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Self {
            address,
            child,
            events,
            _dir: dir,
        }
    }

    /// Everything the fake has reported so far.
    pub fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// The events of kind `ev` (for device `dev`, if given).
    pub fn events_of(&self, ev: &str, dev: Option<&str>) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["ev"] == ev && dev.is_none_or(|d| e["dev"] == d))
            .collect()
    }
}

impl Drop for FakeBluez {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
