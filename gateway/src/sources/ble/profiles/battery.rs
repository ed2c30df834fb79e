//! Battery Level 0x2A19 (Battery Service 0x180F): one octet, percent 0–100.

use super::{DecodeError, Invalid};

/// Decodes Battery Level (exactly one octet, 0–100).
pub fn decode(bytes: &[u8]) -> Result<u8, DecodeError> {
    match bytes {
        [] => Err(DecodeError::Truncated { need: 1, got: 0 }),
        [level] if *level <= 100 => Ok(*level),
        [level] => Err(DecodeError::Invalid(Invalid::BatteryLevel(*level))),
        more => Err(DecodeError::Invalid(Invalid::Length {
            expected: 1,
            got: more.len(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(decode(&[0]), Ok(0));
        assert_eq!(decode(&[100]), Ok(100));
        assert_eq!(
            decode(&[101]),
            Err(DecodeError::Invalid(Invalid::BatteryLevel(101)))
        );
        assert_eq!(decode(&[]), Err(DecodeError::Truncated { need: 1, got: 0 }));
        assert!(decode(&[1, 2]).is_err());
    }
}
