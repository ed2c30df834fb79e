//! IEEE 11073-20601 SFLOAT (16 bit) and FLOAT (32 bit), the number formats of every SIG health
//! measurement.
//!
//! SFLOAT: bits 15–12 a signed 4-bit exponent, bits 11–0 a signed 12-bit mantissa (both two's
//! complement), value = mantissa × 10^exponent. FLOAT: bits 31–24 a signed 8-bit exponent, bits 23–0
//! a signed 24-bit mantissa. The exponent is the device's stated precision and is kept: `0xFE000EB0`
//! is `37.60`, not `37.6` (HL7 PHD IG `FLOATS.md`).
//!
//! Special values have exponent 0 and fixed mantissas; they become [`Value::Absent`] with the
//! reason, never a number. Pitfalls seen in public code and avoided here: a biased exponent
//! (`e − 8`), an unsigned mantissa, and FLOAT NaN written as `0x07FFFFFF` (it is `0x007FFFFF`).

use heim_shared_types::{AbsentReason, Decimal, Value};

/// SFLOAT NaN (invalid result).
pub const SFLOAT_NAN: u16 = 0x07FF;
/// SFLOAT NRes (not at this resolution).
pub const SFLOAT_NRES: u16 = 0x0800;
/// SFLOAT +INFINITY.
pub const SFLOAT_POS_INF: u16 = 0x07FE;
/// SFLOAT −INFINITY.
pub const SFLOAT_NEG_INF: u16 = 0x0802;
/// SFLOAT reserved value.
pub const SFLOAT_RESERVED: u16 = 0x0801;
/// FLOAT NaN.
pub const FLOAT_NAN: u32 = 0x007F_FFFF;
/// FLOAT NRes.
pub const FLOAT_NRES: u32 = 0x0080_0000;
/// FLOAT +INFINITY.
pub const FLOAT_POS_INF: u32 = 0x007F_FFFE;
/// FLOAT −INFINITY.
pub const FLOAT_NEG_INF: u32 = 0x0080_0002;
/// FLOAT reserved value.
pub const FLOAT_RESERVED: u32 = 0x0080_0001;

/// Decodes an SFLOAT (the 16-bit value as read little-endian from the wire).
pub const fn sfloat(raw: u16) -> Value {
    match raw {
        SFLOAT_NAN => Value::Absent(AbsentReason::NotANumber),
        SFLOAT_NRES => Value::Absent(AbsentReason::NotAtResolution),
        SFLOAT_POS_INF => Value::Absent(AbsentReason::PositiveInfinity),
        SFLOAT_NEG_INF => Value::Absent(AbsentReason::NegativeInfinity),
        SFLOAT_RESERVED => Value::Absent(AbsentReason::Reserved),
        _ => {
            // Arithmetic right shifts on the signed type sign-extend the 4- and 12-bit fields.
            let exponent = (raw as i16) >> 12;
            let mantissa = ((raw << 4) as i16) >> 4;
            Value::Number(Decimal::new(mantissa as i32, exponent as i8))
        }
    }
}

/// Decodes a FLOAT (the 32-bit value as read little-endian from the wire).
pub const fn float(raw: u32) -> Value {
    match raw {
        FLOAT_NAN => Value::Absent(AbsentReason::NotANumber),
        FLOAT_NRES => Value::Absent(AbsentReason::NotAtResolution),
        FLOAT_POS_INF => Value::Absent(AbsentReason::PositiveInfinity),
        FLOAT_NEG_INF => Value::Absent(AbsentReason::NegativeInfinity),
        FLOAT_RESERVED => Value::Absent(AbsentReason::Reserved),
        _ => {
            let exponent = (raw >> 24) as u8 as i8;
            let mantissa = ((raw << 8) as i32) >> 8;
            Value::Number(Decimal::new(mantissa, exponent))
        }
    }
}

/// Encodes a value as SFLOAT; `None` when the mantissa or exponent does not fit, or the number
/// would collide with a special value. Used by simulators and tests; the gateway never writes
/// measurements.
pub const fn encode_sfloat(value: Value) -> Option<u16> {
    match value {
        Value::Absent(reason) => Some(match reason {
            AbsentReason::NotANumber | AbsentReason::Unsuccessful | AbsentReason::Error => {
                SFLOAT_NAN
            }
            AbsentReason::NotAtResolution => SFLOAT_NRES,
            AbsentReason::PositiveInfinity => SFLOAT_POS_INF,
            AbsentReason::NegativeInfinity => SFLOAT_NEG_INF,
            AbsentReason::Reserved => SFLOAT_RESERVED,
        }),
        Value::Number(d) => {
            if d.mantissa < -2048 || d.mantissa > 2047 || d.exponent < -8 || d.exponent > 7 {
                return None;
            }
            let raw = (((d.exponent as u16) & 0xF) << 12) | ((d.mantissa as u16) & 0x0FFF);
            if d.exponent == 0 && raw >= SFLOAT_POS_INF && raw <= SFLOAT_NEG_INF {
                return None;
            }
            Some(raw)
        }
    }
}

/// Encodes a value as FLOAT; `None` when it does not fit or collides with a special value.
pub const fn encode_float(value: Value) -> Option<u32> {
    match value {
        Value::Absent(reason) => Some(match reason {
            AbsentReason::NotANumber | AbsentReason::Unsuccessful | AbsentReason::Error => {
                FLOAT_NAN
            }
            AbsentReason::NotAtResolution => FLOAT_NRES,
            AbsentReason::PositiveInfinity => FLOAT_POS_INF,
            AbsentReason::NegativeInfinity => FLOAT_NEG_INF,
            AbsentReason::Reserved => FLOAT_RESERVED,
        }),
        Value::Number(d) => {
            if d.mantissa < -(1 << 23) || d.mantissa >= (1 << 23) {
                return None;
            }
            let raw = ((d.exponent as u8 as u32) << 24) | ((d.mantissa as u32) & 0x00FF_FFFF);
            if d.exponent == 0 && raw >= FLOAT_POS_INF && raw <= FLOAT_NEG_INF {
                return None;
            }
            Some(raw)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn num(raw: Value) -> String {
        raw.number().expect("a number").to_string()
    }

    #[test]
    fn worked_values_from_the_design_notes() {
        assert_eq!(num(sfloat(0xF16C)), "36.4");
        assert_eq!(num(sfloat(0xFE94)), "-36.4");
        assert_eq!(num(sfloat(0x116C)), "3640");
        assert_eq!(num(float(0xFFFF_FE94)), "-36.4");
        assert_eq!(num(sfloat(0xF065)), "10.1");
        assert_eq!(num(float(0xFE12_D687)), "12345.67");
        assert_eq!(num(float(0xFE00_0EB0)), "37.60");
        assert_eq!(num(sfloat(0xC037)), "0.0055");
        // PHD IG FLOATS.md precision examples.
        assert_eq!(num(sfloat(0xE0C8)), "2.00");
        assert_eq!(num(sfloat(0xF014)), "2.0");
        assert_eq!(num(sfloat(0x0B2E)), "-1234");
        // Not a biased exponent: 0x8062 is 98 × 10⁻⁸.
        assert_eq!(sfloat(0x8062), Value::Number(Decimal::new(98, -8)));
    }

    #[test]
    fn special_values_are_never_numbers() {
        use AbsentReason::*;
        for (raw, reason) in [
            (0x07FF, NotANumber),
            (0x0800, NotAtResolution),
            (0x07FE, PositiveInfinity),
            (0x0802, NegativeInfinity),
            (0x0801, Reserved),
        ] {
            assert_eq!(sfloat(raw), Value::Absent(reason), "{raw:#06x}");
        }
        for (raw, reason) in [
            (0x007F_FFFF, NotANumber),
            (0x0080_0000, NotAtResolution),
            (0x007F_FFFE, PositiveInfinity),
            (0x0080_0002, NegativeInfinity),
            (0x0080_0001, Reserved),
        ] {
            assert_eq!(float(raw), Value::Absent(reason), "{raw:#010x}");
        }
        // The NXP SDK's wrong FLOAT NaN constant is an ordinary (huge) number.
        assert!(float(0x07FF_FFFF).number().is_some());
        // Special mantissas with a non-zero exponent are ordinary numbers.
        assert_eq!(sfloat(0x17FF), Value::Number(Decimal::new(2047, 1)));
    }

    proptest! {
        #[test]
        fn sfloat_round_trips(raw in any::<u16>()) {
            prop_assert_eq!(encode_sfloat(sfloat(raw)), Some(raw));
        }

        #[test]
        fn float_round_trips(raw in any::<u32>()) {
            prop_assert_eq!(encode_float(float(raw)), Some(raw));
        }
    }
}
