//! Test glue over the library's simulated BlueZ ([`heim::sources::ble::sim`]).
//!
//! Shared by the gateway's BLE tests (`gateway/tests/ble_e2e_*.rs`) and the end-to-end tests in
//! the `tests` package, which include this file by path.

#![allow(dead_code)]

use serde_json::Value;

/// A running fake BlueZ with its temporary directory.
pub struct FakeBluez {
    inner: heim::sources::ble::sim::FakeBluez,
    /// The private bus's address, for `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
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
        let inner = heim::sources::ble::sim::FakeBluez::launch(dir.path(), &scenario)
            .expect("simulated BlueZ");
        Self {
            address: inner.address.clone(),
            inner,
            _dir: dir,
        }
    }

    /// Everything the fake has reported so far.
    pub fn events(&self) -> Vec<Value> {
        self.inner.events()
    }

    /// The events of kind `ev` (for device `dev`, if given).
    pub fn events_of(&self, ev: &str, dev: Option<&str>) -> Vec<Value> {
        self.inner.events_of(ev, dev)
    }
}
