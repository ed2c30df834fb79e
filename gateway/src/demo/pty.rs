//! Pseudo-terminals as serial lines for the demo, tests and the HIL runner's simulated rig.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// A pseudo-terminal in raw mode whose slave side is reachable through a stable symlink (as
/// `/dev/serial/by-id/…` is), so a "cable" can be pulled and a new pty plugged in at the same path.
#[derive(Debug)]
pub struct Line {
    /// The master side (the other end of the cable).
    pub master: std::fs::File,
    /// Held open so the line does not hang up while the gateway reopens the slave.
    _slave: OwnedFd,
}

/// Opens a pty and points `link` at its slave.
pub fn open_line(link: &Path) -> std::io::Result<Line> {
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    // Raw mode: bytes pass as they are (no echo, no line editing, no CR/LF mapping).
    let mut t = nix::sys::termios::tcgetattr(pty.slave.as_fd()).map_err(std::io::Error::from)?;
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(pty.slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t)
        .map_err(std::io::Error::from)?;
    let name = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd()))?;
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(&name, link)?;
    Ok(Line {
        master: std::fs::File::from(pty.master),
        _slave: pty.slave,
    })
}

/// A null-modem cable between two lines: what is written to one slave comes out of the other.
pub fn cable(a: &Line, b: &Line) -> std::io::Result<()> {
    for (from, to) in [(&a.master, &b.master), (&b.master, &a.master)] {
        let mut from = from.try_clone()?;
        let mut to = to.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) => std::thread::sleep(Duration::from_millis(5)),
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => return,
                }
            }
        });
    }
    Ok(())
}
