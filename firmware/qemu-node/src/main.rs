//! The Heim sensor-node firmware as a bootable image for QEMU's `lm3s6965evb` (TI Stellaris
//! LM3S6965, Cortex-M3): the same node logic as on a real node ([`heim_firmware::node`]), the
//! MAX30205 driver reading a probe on a modelled I2C bus, UART0 as the link to the gateway, SysTick
//! as the clock.
//!
//! Settings come from the semihosting command line (`-append "node=0xe1a count=40 interval=50
//! boot=1"`), because an emulated board has no flash of its own to keep a boot counter in: the
//! runner passes a new `boot` on every power-up. Unacked readings live in RAM and are lost with
//! power, as on a node without a flash queue. When `count` readings are taken and all are acked,
//! the image exits QEMU with status 0.
#![no_std]
#![no_main]
// Register access to the UART is the one place that needs `unsafe` (volatile MMIO).
#![allow(unsafe_code)]

use core::panic::PanicInfo;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, Operation};
use heim_firmware::drivers::max30205::{DEFAULT_ADDRESS, Max30205};
use heim_firmware::node::{Node, RamQueue};
use heim_shared_types::Measurement;

/// UART0 of the LM3S6965 (a PL011 by layout), 0x4000_C000.
mod uart {
    const BASE: usize = 0x4000_C000;
    const DR: usize = 0x000;
    const FR: usize = 0x018;
    const CR: usize = 0x030;
    const FR_RXFE: u32 = 1 << 4;
    const FR_TXFF: u32 = 1 << 5;
    const CR_UARTEN: u32 = 1;
    const CR_TXE: u32 = 1 << 8;
    const CR_RXE: u32 = 1 << 9;

    fn read(off: usize) -> u32 {
        // SAFETY: an aligned, always-mapped device register of this SoC.
        unsafe { core::ptr::read_volatile((BASE + off) as *const u32) }
    }

    fn write(off: usize, v: u32) {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile((BASE + off) as *mut u32, v) }
    }

    /// The UART as an `embedded-io` link; reads never block once `read_ready` said yes.
    #[derive(Debug)]
    pub struct Uart0(());

    impl Uart0 {
        /// Enables the UART (QEMU ignores the baud rate; a real board sets IBRD/FBRD here).
        pub fn take() -> Self {
            write(CR, CR_UARTEN | CR_TXE | CR_RXE);
            Self(())
        }
    }

    impl embedded_io::ErrorType for Uart0 {
        type Error = core::convert::Infallible;
    }

    impl embedded_io::ReadReady for Uart0 {
        fn read_ready(&mut self) -> Result<bool, Self::Error> {
            Ok(read(FR) & FR_RXFE == 0)
        }
    }

    impl embedded_io::Read for Uart0 {
        fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
            let mut n = 0;
            while n < buf.len() && read(FR) & FR_RXFE == 0 {
                buf[n] = (read(DR) & 0xFF) as u8;
                n += 1;
            }
            Ok(n)
        }
    }

    impl embedded_io::Write for Uart0 {
        fn write(&mut self, buf: &[u8]) -> Result<usize, Self::Error> {
            for b in buf {
                while read(FR) & FR_TXFF != 0 {}
                write(DR, u32::from(*b));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> Result<(), Self::Error> {
            Ok(())
        }
    }
}

/// Milliseconds since boot. QEMU 7.2's model of this board leaves SysTick without a clock
/// ("Timer with period zero"), so the emulated node reads the host's clock through semihosting
/// (SYS_CLOCK, centiseconds); a real node counts SysTick here.
fn millis() -> u64 {
    // SAFETY: SYS_CLOCK takes no argument block.
    let cs = unsafe { cortex_m_semihosting::syscall1!(CLOCK, 0usize) };
    // -1 means "not available": the clock then stands still and only acks drive the node.
    if cs == usize::MAX { 0 } else { cs as u64 * 10 }
}

/// A MAX30205 on the I2C bus as a model: the temperature register follows a slow, deterministic
/// curve around 36.5 °C (the emulated board has no such part; the driver code is the real one).
struct ProbeBus {
    pointer: u8,
    raw: i16,
}

impl ErrorType for ProbeBus {
    type Error = ErrorKind;
}

impl I2c for ProbeBus {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        if address != DEFAULT_ADDRESS {
            return Err(ErrorKind::NoAcknowledge(
                embedded_hal::i2c::NoAcknowledgeSource::Address,
            ));
        }
        for op in operations {
            match op {
                Operation::Write(bytes) => {
                    if let Some(p) = bytes.first() {
                        self.pointer = *p;
                    }
                }
                Operation::Read(buf) => {
                    let v = if self.pointer == 0 { self.raw } else { 0 };
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = v.to_be_bytes().get(i).copied().unwrap_or(0);
                    }
                }
            }
        }
        Ok(())
    }
}

struct Settings {
    node_id: u64,
    count: u32,
    interval_ms: u32,
    boot_id: u32,
}

fn parse_num(v: &str) -> Option<u64> {
    match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// `node=… count=… interval=… boot=…` from the semihosting command line.
fn settings() -> Settings {
    let mut s = Settings {
        node_id: 0x0E1A,
        count: 40,
        interval_ms: 50,
        boot_id: 1,
    };
    let mut buf = [0u8; 160];
    // SYS_GET_CMDLINE: a NUL-terminated string in `buf`.
    let r = unsafe { cortex_m_semihosting::syscall!(GET_CMDLINE, buf.as_mut_ptr(), buf.len() - 1) };
    if r != 0 {
        return s;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let line = core::str::from_utf8(&buf[..end]).unwrap_or("");
    for kv in line.split_ascii_whitespace() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        let Some(n) = parse_num(v) else { continue };
        match k {
            "node" => s.node_id = n,
            "count" => s.count = n as u32,
            "interval" => s.interval_ms = n as u32,
            "boot" => s.boot_id = n as u32,
            _ => {}
        }
    }
    s
}

#[entry]
fn main() -> ! {
    let cfg = settings();
    hprintln!(
        "heim-qemu-node: node {:#x} boot {} taking {} reading(s) every {} ms",
        cfg.node_id,
        cfg.boot_id,
        cfg.count,
        cfg.interval_ms
    );
    let mut probe = Max30205::new(ProbeBus { pointer: 0, raw: 0 }, DEFAULT_ADDRESS);
    let _ = probe.wake();
    let mut node: Node<uart::Uart0, RamQueue<256>> = Node::new(
        uart::Uart0::take(),
        RamQueue::new(),
        cfg.node_id,
        cfg.boot_id,
        0,
    );
    node.retransmit_ms = 300;

    let mut taken: u32 = 0;
    let mut failures: u32 = 0;
    let mut next: u64 = 0;
    loop {
        let now = millis();
        if taken < cfg.count && now >= next {
            next = now + u64::from(cfg.interval_ms);
            taken += 1;
            // The probe's curve: 36.50 °C plus up to 0.39 °C, in 1/256 °C.
            let bus = probe.destroy();
            let raw = 36 * 256 + 128 + ((taken % 40) as i16 * 256) / 100;
            probe = Max30205::new(ProbeBus { raw, ..bus }, DEFAULT_ADDRESS);
            match probe.read_temperature() {
                Ok(t) => {
                    node.record(
                        now,
                        Measurement::BodyTemperature {
                            temperature: t,
                            site: None,
                        },
                    );
                }
                Err(_) => failures += 1,
            }
        }
        node.poll(now);
        if taken >= cfg.count && node.queued() == 0 {
            hprintln!(
                "heim-qemu-node: all {} reading(s) acked ({} sensor failure(s))",
                taken,
                failures
            );
            debug::exit(debug::EXIT_SUCCESS);
        }
    }
}

fn fail() -> ! {
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    fail()
}
