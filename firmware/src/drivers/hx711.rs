//! HX711 24-bit load-cell ADC (two GPIOs: DOUT in, PD_SCK out).
//!
//! A conversion is ready when DOUT goes low; 24 clock pulses shift the result out MSB first, and
//! 1–3 more pulses select the next conversion's channel and gain (1 = channel A, gain 128)
//! (datasheet, "Serial Interface"). PD_SCK high for more than 60 µs powers the chip down.

use embedded_hal::delay::DelayNs;
use embedded_hal::digital::{InputPin, OutputPin};

/// Driver errors, generic over the two pins' error types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error<EI, EO> {
    /// Reading DOUT failed.
    Input(EI),
    /// Driving PD_SCK failed.
    Output(EO),
    /// No conversion became ready in time (unpowered or disconnected chip).
    NotReady,
}

/// An HX711 on channel A, gain 128.
#[derive(Debug)]
pub struct Hx711<IN, OUT, D> {
    dout: IN,
    sck: OUT,
    delay: D,
}

impl<IN: InputPin, OUT: OutputPin, D: DelayNs> Hx711<IN, OUT, D> {
    /// A driver on these pins.
    pub fn new(dout: IN, sck: OUT, delay: D) -> Self {
        Self { dout, sck, delay }
    }

    /// Waits up to `timeout_ms` for a conversion and reads it (sign-extended 24-bit value).
    pub fn read(&mut self, timeout_ms: u32) -> Result<i32, Error<IN::Error, OUT::Error>> {
        let mut waited = 0;
        while self.dout.is_high().map_err(Error::Input)? {
            if waited >= timeout_ms {
                return Err(Error::NotReady);
            }
            self.delay.delay_ms(1);
            waited += 1;
        }
        let mut v: u32 = 0;
        for _ in 0..24 {
            self.pulse()?;
            v = (v << 1) | u32::from(self.dout.is_high().map_err(Error::Input)?);
        }
        // One more pulse: channel A, gain 128 for the next conversion.
        self.pulse()?;
        // Sign-extend from 24 bits.
        Ok(((v << 8) as i32) >> 8)
    }

    fn pulse(&mut self) -> Result<(), Error<IN::Error, OUT::Error>> {
        self.sck.set_high().map_err(Error::Output)?;
        self.delay.delay_us(1);
        self.sck.set_low().map_err(Error::Output)?;
        self.delay.delay_us(1);
        Ok(())
    }

    /// Gives the pins and delay back.
    pub fn destroy(self) -> (IN, OUT, D) {
        (self.dout, self.sck, self.delay)
    }
}

/// Converts raw counts to grams with a calibration (`offset` counts at zero load, `counts_per_kg`).
pub fn grams(raw: i32, offset: i32, counts_per_kg: i32) -> i32 {
    if counts_per_kg == 0 {
        return 0;
    }
    ((i64::from(raw) - i64::from(offset)) * 1000 / i64::from(counts_per_kg)) as i32
}

#[cfg(test)]
mod tests {
    extern crate std;
    use embedded_hal_mock::eh1::MockError;
    use embedded_hal_mock::eh1::delay::NoopDelay;
    use embedded_hal_mock::eh1::digital::{Mock as Pin, State, Transaction as T};
    use std::vec;
    use std::vec::Vec;

    use super::*;

    fn bits(v: u32) -> Vec<T> {
        (0..24)
            .rev()
            .map(|i| {
                T::get(if (v >> i) & 1 == 1 {
                    State::High
                } else {
                    State::Low
                })
            })
            .collect()
    }

    fn sck(pulses: usize) -> Vec<T> {
        (0..pulses)
            .flat_map(|_| [T::set(State::High), T::set(State::Low)])
            .collect()
    }

    #[test]
    fn reads_a_negative_24_bit_value() {
        let mut dout_tx = vec![T::get(State::High), T::get(State::Low)];
        dout_tx.extend(bits(0xFF_FF_38)); // −200
        let dout = Pin::new(&dout_tx);
        let clk = Pin::new(&sck(25));
        let mut h = Hx711::new(dout, clk, NoopDelay::new());
        assert_eq!(h.read(10), Ok(-200));
        let (mut d, mut c, _) = h.destroy();
        d.done();
        c.done();
    }

    #[test]
    fn not_ready_times_out() {
        let dout_tx: Vec<T> = (0..4).map(|_| T::get(State::High)).collect();
        let dout = Pin::new(&dout_tx);
        let clk = Pin::new(&[]);
        let mut h = Hx711::new(dout, clk, NoopDelay::new());
        assert_eq!(h.read(3), Err(Error::NotReady));
        let (mut d, mut c, _) = h.destroy();
        d.done();
        c.done();
    }

    #[test]
    fn pin_errors_are_typed() {
        let err = MockError::Io(std::io::ErrorKind::BrokenPipe);
        let dout = Pin::new(&[T::get(State::Low).with_error(err.clone())]);
        let clk = Pin::new(&[]);
        let mut h = Hx711::new(dout, clk, NoopDelay::new());
        assert_eq!(h.read(3), Err(Error::Input(err)));
        let (mut d, mut c, _) = h.destroy();
        d.done();
        c.done();
    }

    #[test]
    fn calibration() {
        assert_eq!(grams(8_500 + 21_000 * 72, 8_500, 21_000), 72_000);
        assert_eq!(grams(1, 0, 0), 0);
    }
}
