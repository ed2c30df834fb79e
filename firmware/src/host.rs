//! A serial device or pseudo-terminal as a node's link (host builds only).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

/// A serial device (non-blocking) as an embedded-io link.
#[derive(Debug)]
pub struct Port(pub File);

impl embedded_io::ErrorType for Port {
    type Error = std::io::Error;
}
impl embedded_io::Read for Port {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        match self.0.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            r => r,
        }
    }
}
impl embedded_io::ReadReady for Port {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        let mut fds = [nix::poll::PollFd::new(
            self.0.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO)
            .map_err(std::io::Error::from)?;
        Ok(n > 0)
    }
}
impl embedded_io::Write for Port {
    fn write(&mut self, b: &[u8]) -> Result<usize, Self::Error> {
        self.0.write(b)
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        self.0.flush()
    }
}

/// Opens a serial device raw, 8N1, 115200, non-blocking.
pub fn open_port(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NOCTTY.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)?;
    // Raw 8N1 at 115200 (ignored by a pseudo-terminal, needed on a real UART).
    if let Ok(mut t) = nix::sys::termios::tcgetattr(f.as_fd()) {
        nix::sys::termios::cfmakeraw(&mut t);
        let _ = nix::sys::termios::cfsetspeed(&mut t, nix::sys::termios::BaudRate::B115200);
        let _ = nix::sys::termios::tcsetattr(f.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
    Ok(f)
}
