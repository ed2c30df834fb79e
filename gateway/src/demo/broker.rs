//! A real mosquitto on a free loopback port with mutual TLS, for the demo, tests and benchmarks.
//!
//! Persistence is on and stops are graceful (SIGTERM), so a "broker outage" keeps the hospital
//! subscriber's persistent session and its queued messages, as a production broker would.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::Pki;

/// Broker errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// mosquitto is not installed.
    #[error(
        "mosquitto is not installed (Debian: apt-get install mosquitto); looked in PATH and /usr/sbin"
    )]
    NotInstalled,
    /// It could not be started or did not open its port.
    #[error("mosquitto did not start: {0}")]
    Start(String),
    /// File or process I/O.
    #[error("broker I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Options for the test broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Mutual TLS (the only mode the gateway speaks).
    MutualTls,
    /// TLS without asking for a client certificate (to test that the gateway still presents one).
    ServerTlsOnly,
    /// Plain TCP only (to test that the gateway refuses it).
    Plaintext,
}

/// A running (or stopped) mosquitto.
#[derive(Debug)]
pub struct Broker {
    exe: PathBuf,
    dir: PathBuf,
    conf: PathBuf,
    /// The port it listens on (kept across restarts).
    pub port: u16,
    child: Option<Child>,
}

/// Finds the mosquitto binary.
pub fn find_mosquitto() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("mosquitto"))
                .collect()
        })
        .unwrap_or_default();
    candidates.push("/usr/sbin/mosquitto".into());
    candidates.push("/usr/local/sbin/mosquitto".into());
    candidates.into_iter().find(|p| p.is_file())
}

/// A free TCP port on 127.0.0.1 (the OS picks it; it is released before returning).
pub fn free_port() -> std::io::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Broker {
    /// Writes a config in `dir` and starts mosquitto on a free port.
    pub fn start(dir: &Path, pki: &Pki, mode: Mode) -> Result<Self, Error> {
        let exe = find_mosquitto().ok_or(Error::NotInstalled)?;
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let conf = dir.join("mosquitto.conf");
        let mut f = std::fs::File::create(&conf)?;
        // Run as root, mosquitto would switch to the `mosquitto` user and could then read neither
        // our 0600 keys nor write its log: stay the user we are.
        if nix::unistd::geteuid().is_root() {
            writeln!(f, "user root")?;
        }
        writeln!(f, "listener {port} 127.0.0.1")?;
        match mode {
            Mode::MutualTls | Mode::ServerTlsOnly => {
                writeln!(f, "cafile {}", pki.ca.display())?;
                writeln!(f, "certfile {}", pki.server.cert.display())?;
                writeln!(f, "keyfile {}", pki.server.key.display())?;
                if mode == Mode::MutualTls {
                    writeln!(f, "require_certificate true")?;
                    writeln!(f, "use_identity_as_username true")?;
                } else {
                    writeln!(f, "allow_anonymous true")?;
                }
            }
            Mode::Plaintext => writeln!(f, "allow_anonymous true")?,
        }
        // As a broker for interactive traffic should be: no Nagle delay on small packets.
        writeln!(f, "set_tcp_nodelay true")?;
        writeln!(f, "persistence true")?;
        writeln!(f, "persistence_location {}/", dir.display())?;
        // Queue without limit for a disconnected subscriber: the hospital side must see every
        // message of a 100 k backlog (mosquitto's default keeps only 1000 per client).
        writeln!(f, "max_queued_messages 0")?;
        writeln!(f, "max_inflight_messages 0")?;
        writeln!(f, "log_dest file {}/mosquitto.log", dir.display())?;
        writeln!(f, "log_type error")?;
        writeln!(f, "log_type warning")?;
        writeln!(f, "log_type notice")?;
        drop(f);
        let mut b = Self {
            exe,
            dir: dir.to_owned(),
            conf,
            port,
            child: None,
        };
        b.restart()?;
        Ok(b)
    }

    /// Starts mosquitto again on the same port (after [`Broker::stop`]).
    pub fn restart(&mut self) -> Result<(), Error> {
        if self.child.is_some() {
            return Ok(());
        }
        let child = Command::new(&self.exe)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                self.dir.join("mosquitto.stderr"),
            )?))
            .spawn()?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                let log =
                    std::fs::read_to_string(self.dir.join("mosquitto.stderr")).unwrap_or_default();
                return Err(Error::Start(format!("exited with {status}: {log}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::Start(format!(
            "port {} not open after 10 s",
            self.port
        )))
    }

    /// Stops mosquitto gracefully (SIGTERM: it saves its persistent sessions) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The broker's log so far (for test failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
