//! Links the node logic for a Cortex-M4F with no standard library. Nothing here runs on a board:
//! the point is that it builds.
#![no_std]
#![no_main]

use core::panic::PanicInfo;

use heim_firmware::node::{Node, RamQueue};
use heim_shared_types::{Measurement, Quantity, Unit};

/// A link that drops everything (the build proof needs a type, not a UART).
struct NullLink;

impl embedded_io::ErrorType for NullLink {
    type Error = core::convert::Infallible;
}
impl embedded_io::Read for NullLink {
    fn read(&mut self, _: &mut [u8]) -> Result<usize, Self::Error> {
        Ok(0)
    }
}
impl embedded_io::ReadReady for NullLink {
    fn read_ready(&mut self) -> Result<bool, Self::Error> {
        Ok(false)
    }
}
impl embedded_io::Write for NullLink {
    fn write(&mut self, b: &[u8]) -> Result<usize, Self::Error> {
        Ok(b.len())
    }
    fn flush(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    let mut node: Node<NullLink, RamQueue<32>> = Node::new(NullLink, RamQueue::new(), 1, 1, 0);
    node.record(0, Measurement::Spo2(Quantity::new(97, 0, Unit::Percent)));
    loop {
        node.poll(0);
    }
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {}
}
