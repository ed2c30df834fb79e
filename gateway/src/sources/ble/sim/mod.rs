//! A simulated BlueZ for the demo and the tests: the project's own fake `org.bluez`
//! ([`SCRIPT`], Python on dbus-python), on a private `dbus-daemon` it starts itself.
//!
//! The real btleplug runs against it unchanged; the only hook is `DBUS_SYSTEM_BUS_ADDRESS`
//! (design notes `design/ble-sim.md`). A scenario (JSON) describes the devices: kind, address,
//! measurements, stored glucose records, a link dropped mid-transfer, a passkey, a wedged
//! scanner. The fake reports what clients did as one JSON object per line (`{"ev": "connect",
//! "dev": "AA:…"}`), kept in [`FakeBluez::events`].

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The fake's source, embedded so the demo needs nothing beside the binary but Debian's
/// `python3-dbus`, `python3-gi` and `dbus-daemon`.
pub const SCRIPT: &str = include_str!("fake_bluez.py");

/// Why the simulated BlueZ could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing its files or starting Python failed.
    #[error(
        "cannot start the simulated BlueZ (needs /usr/bin/python3 with python3-dbus and python3-gi, and dbus-daemon): {0}"
    )]
    Io(#[from] std::io::Error),
    /// It started but did not print its bus address.
    #[error("the simulated BlueZ did not start (it said {0:?}); see its messages above")]
    Handshake(String),
}

/// A running simulated BlueZ. Dropping it stops it with SIGTERM, so it stops its `dbus-daemon`
/// and removes its temporary directory.
#[derive(Debug)]
pub struct FakeBluez {
    /// The private bus's address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
}

impl FakeBluez {
    /// Writes the script and `scenario` into `dir` and starts the fake.
    pub fn launch(dir: &Path, scenario: &Value) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)?;
        let script: PathBuf = dir.join("fake_bluez.py");
        std::fs::write(&script, SCRIPT)?;
        let path = dir.join("scenario.json");
        std::fs::write(&path, scenario.to_string())?;
        // Debian's python has python3-dbus and python3-gi; a pyenv `python3` on PATH may not.
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let Some(stdout) = child.stdout.take() else {
            return Err(Error::Handshake(String::new()));
        };
        let mut out = BufReader::new(stdout);
        let mut first = String::new();
        out.read_line(&mut first)?;
        let Some(address) = first.trim().strip_prefix("DBUS_SYSTEM_BUS_ADDRESS=") else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Handshake(first));
        };
        let address = address.to_owned();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        Ok(Self {
            address,
            child,
            events,
        })
    }

    /// Everything the fake has reported so far.
    pub fn events(&self) -> Vec<Value> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
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
