//! MAX30205 clinical body-temperature sensor (I2C, ±0.1 °C from 37 °C to 39 °C).
//!
//! Temperature register 0x00: 16-bit two's complement, 1 LSB = 1/256 °C (datasheet, "Temperature
//! Register"). Configuration register 0x01, bit 0 = shutdown.

use embedded_hal::i2c::I2c;
use heim_shared_types::{Quantity, Unit};

/// The default address (A0–A2 to GND).
pub const DEFAULT_ADDRESS: u8 = 0x48;

const REG_TEMPERATURE: u8 = 0x00;
const REG_CONFIG: u8 = 0x01;

/// Driver errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<E> {
    /// The I2C bus failed.
    Bus(E),
    /// The reading is outside what the sensor can measure (0–50 °C): a wiring fault.
    OutOfRange(i16),
}

/// A MAX30205 on an I2C bus. Owns the bus until [`Max30205::destroy`].
#[derive(Debug)]
pub struct Max30205<I> {
    i2c: I,
    address: u8,
}

impl<I: I2c> Max30205<I> {
    /// A driver for the sensor at `address`.
    pub fn new(i2c: I, address: u8) -> Self {
        Self { i2c, address }
    }

    /// Wakes the sensor (clears shutdown; continuous conversion).
    pub fn wake(&mut self) -> Result<(), Error<I::Error>> {
        self.i2c
            .write(self.address, &[REG_CONFIG, 0x00])
            .map_err(Error::Bus)
    }

    /// Puts it in shutdown (≈3 µA) between measurements.
    pub fn shutdown(&mut self) -> Result<(), Error<I::Error>> {
        self.i2c
            .write(self.address, &[REG_CONFIG, 0x01])
            .map_err(Error::Bus)
    }

    /// The raw register value (1/256 °C).
    pub fn read_raw(&mut self) -> Result<i16, Error<I::Error>> {
        let mut b = [0u8; 2];
        self.i2c
            .write_read(self.address, &[REG_TEMPERATURE], &mut b)
            .map_err(Error::Bus)?;
        Ok(i16::from_be_bytes(b))
    }

    /// The temperature in °C with two decimals (the sensor's 1/256 °C rounded to 0.01 °C).
    pub fn read_temperature(&mut self) -> Result<Quantity, Error<I::Error>> {
        let raw = self.read_raw()?;
        // 0–50 °C is the sensor's specified range.
        if !(0..=50 * 256).contains(&raw) {
            return Err(Error::OutOfRange(raw));
        }
        let centi = (i32::from(raw) * 100 + 128) / 256;
        Ok(Quantity::new(centi, -2, Unit::Celsius))
    }

    /// Gives the bus back.
    pub fn destroy(self) -> I {
        self.i2c
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use embedded_hal::i2c::ErrorKind;
    use embedded_hal_mock::eh1::i2c::{Mock, Transaction};
    use heim_shared_types::Decimal;
    use std::vec;

    use super::*;

    #[test]
    fn reads_37_degrees() {
        // 37.00 °C = 0x2500 (37 × 256).
        let tx = [Transaction::write_read(0x48, vec![0x00], vec![0x25, 0x00])];
        let mut s = Max30205::new(Mock::new(&tx), DEFAULT_ADDRESS);
        let q = s.read_temperature().unwrap();
        assert_eq!(q.value.number(), Some(Decimal::new(3700, -2)));
        s.destroy().done();
    }

    #[test]
    fn rounds_to_hundredths() {
        // 36.6 °C ≈ 0x2499 → 36.5977 → 36.60.
        let tx = [Transaction::write_read(0x48, vec![0x00], vec![0x24, 0x99])];
        let mut s = Max30205::new(Mock::new(&tx), DEFAULT_ADDRESS);
        assert_eq!(
            s.read_temperature().unwrap().value.number(),
            Some(Decimal::new(3660, -2))
        );
        s.destroy().done();
    }

    #[test]
    fn bus_error_is_typed() {
        let tx =
            [Transaction::write_read(0x48, vec![0x00], vec![0, 0]).with_error(ErrorKind::Other)];
        let mut s = Max30205::new(Mock::new(&tx), DEFAULT_ADDRESS);
        assert_eq!(s.read_temperature(), Err(Error::Bus(ErrorKind::Other)));
        s.destroy().done();
    }

    #[test]
    fn out_of_range_is_refused_not_reported() {
        // −10 °C: a disconnected probe or a wiring fault, not a patient.
        let tx = [Transaction::write_read(0x48, vec![0x00], vec![0xF6, 0x00])];
        let mut s = Max30205::new(Mock::new(&tx), DEFAULT_ADDRESS);
        assert!(matches!(s.read_temperature(), Err(Error::OutOfRange(_))));
        s.destroy().done();
    }

    #[test]
    fn shutdown_and_wake_write_the_config_register() {
        let tx = [
            Transaction::write(0x48, vec![0x01, 0x01]),
            Transaction::write(0x48, vec![0x01, 0x00]),
        ];
        let mut s = Max30205::new(Mock::new(&tx), DEFAULT_ADDRESS);
        s.shutdown().unwrap();
        s.wake().unwrap();
        s.destroy().done();
    }
}
