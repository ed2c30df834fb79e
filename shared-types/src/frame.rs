//! Framing: `COBS( postcard(version, message) ‖ CRC-16 ) 0x00`.
//!
//! * postcard gives compact bytes for the serde enums of [`wire`](crate::wire);
//! * the CRC (CRC-16/IBM-3740 through postcard's CRC flavor and the `crc` crate) catches line
//!   noise that still decodes;
//! * COBS (the `cobs` crate postcard itself uses) makes `0x00` a frame delimiter, so a receiver that
//!   starts mid-frame or sees garbage resynchronises at the next `0x00`;
//! * the protocol version travels in every frame, so a mismatched peer is recognised, not misread.
//!
//! [`Decoder`] is a byte-at-a-time accumulator with a fixed buffer of [`MAX_FRAME`] bytes: it
//! never allocates and never panics, and "need more bytes" is a value, not an error.

use crc::{CRC_16_IBM_3740, Crc};
use serde::{Deserialize, Serialize};

/// The protocol version in every frame.
pub const PROTOCOL_VERSION: u8 = 1;

/// The largest encoded frame, delimiter included. A reading is about 40 bytes.
pub const MAX_FRAME: usize = 128;

const CRC: Crc<u16> = Crc::<u16>::new(&CRC_16_IBM_3740);

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// More than [`MAX_FRAME`] bytes before a delimiter; bytes up to the next `0x00` are dropped.
    TooLong,
    /// Not valid COBS.
    Cobs,
    /// The CRC does not match (line noise).
    Crc,
    /// Valid CRC but not a message of this protocol (a bug or a version skew).
    Malformed,
    /// Another protocol version.
    Version(u8),
    /// The output buffer is too small to encode into.
    BufferFull,
}

#[derive(Serialize)]
struct EnvelopeRef<'a, T> {
    version: u8,
    msg: &'a T,
}

#[derive(Deserialize)]
struct Envelope<T> {
    version: u8,
    msg: T,
}

/// Encodes `msg` as one frame (delimiter included) into `out`; returns the used part.
pub fn encode<'a, T: Serialize>(msg: &T, out: &'a mut [u8]) -> Result<&'a mut [u8], FrameError> {
    let mut raw = [0u8; MAX_FRAME];
    let env = EnvelopeRef {
        version: PROTOCOL_VERSION,
        msg,
    };
    let n = postcard::ser_flavors::crc::to_slice_u16(&env, &mut raw, CRC.digest())
        .map_err(|_| FrameError::BufferFull)?
        .len();
    // COBS adds at most one byte per 254, plus the delimiter.
    let need = n + n / 254 + 2;
    if out.len() < need || need > MAX_FRAME {
        return Err(FrameError::BufferFull);
    }
    let m = cobs::encode(&raw[..n], out);
    out[m] = 0;
    Ok(&mut out[..=m])
}

/// Decodes one frame's bytes (without the delimiter).
pub fn decode<T: for<'de> Deserialize<'de>>(frame: &[u8]) -> Result<T, FrameError> {
    let mut buf = [0u8; MAX_FRAME];
    if frame.len() > MAX_FRAME {
        return Err(FrameError::TooLong);
    }
    buf[..frame.len()].copy_from_slice(frame);
    let n = cobs::decode_in_place(&mut buf[..frame.len()]).map_err(|_| FrameError::Cobs)?;
    let env: Envelope<T> = match postcard::de_flavors::crc::from_bytes_u16(&buf[..n], CRC.digest())
    {
        Ok(e) => e,
        Err(postcard::Error::DeserializeBadCrc) => return Err(FrameError::Crc),
        Err(_) => {
            // A frame of another version may not parse as ours: say which version it was.
            return match buf.first() {
                Some(v) if n > 0 && *v != PROTOCOL_VERSION => Err(FrameError::Version(*v)),
                _ => Err(FrameError::Malformed),
            };
        }
    };
    if env.version != PROTOCOL_VERSION {
        return Err(FrameError::Version(env.version));
    }
    Ok(env.msg)
}

/// What [`Decoder::push`] says about one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed<T> {
    /// Not at a frame end yet.
    Incomplete,
    /// A frame ended and decoded.
    Frame(T),
    /// A frame ended and was refused; decoding continues with the next byte.
    Bad(FrameError),
}

/// A streaming frame decoder with a fixed buffer.
#[derive(Debug)]
pub struct Decoder {
    buf: [u8; MAX_FRAME],
    len: usize,
    overflow: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// An empty decoder.
    pub const fn new() -> Self {
        Self {
            buf: [0; MAX_FRAME],
            len: 0,
            overflow: false,
        }
    }

    /// Feeds one byte.
    pub fn push<T: for<'de> Deserialize<'de>>(&mut self, byte: u8) -> Feed<T> {
        if byte != 0 {
            if self.len < MAX_FRAME {
                self.buf[self.len] = byte;
                self.len += 1;
            } else {
                self.overflow = true;
            }
            return Feed::Incomplete;
        }
        let (len, overflow) = (self.len, self.overflow);
        self.len = 0;
        self.overflow = false;
        if overflow {
            return Feed::Bad(FrameError::TooLong);
        }
        if len == 0 {
            // Back-to-back delimiters (a sender flushing the line): nothing to report.
            return Feed::Incomplete;
        }
        match decode(&self.buf[..len]) {
            Ok(m) => Feed::Frame(m),
            Err(e) => Feed::Bad(e),
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::reading::{Measurement, Quantity, Unit};
    use crate::wire::{GatewayMsg, NodeMsg};

    fn reading() -> NodeMsg {
        NodeMsg::Reading {
            node_id: 42,
            boot_id: 0x0102_0304,
            seq: 7,
            node_time_ms: 1_780_000_000_000,
            clock_set: true,
            measurement: Measurement::BodyTemperature {
                temperature: Quantity::new(3712, -2, Unit::Celsius),
                site: None,
            },
        }
    }

    fn enc<T: Serialize>(m: &T) -> Vec<u8> {
        let mut out = [0u8; MAX_FRAME];
        encode(m, &mut out).unwrap().to_vec()
    }

    fn feed_all<T: for<'de> Deserialize<'de>>(d: &mut Decoder, bytes: &[u8]) -> Vec<Feed<T>> {
        bytes
            .iter()
            .map(|b| d.push::<T>(*b))
            .filter(|f| !matches!(f, Feed::Incomplete))
            .collect()
    }

    /// Pinned bytes: changing them breaks every node in the field.
    #[test]
    fn golden_bytes() {
        let cases: [(NodeMsg, &str); 2] = [
            (
                NodeMsg::Hello {
                    node_id: 42,
                    firmware_version: 0x0001_0200,
                    boot_id: 9,
                    capabilities: 0b1101,
                    dropped: 0,
                },
                "0201072a808404090d03233300",
            ),
            (
                reading(),
                "1101012a848688080780909282e733010605803afe0603a2fa00",
            ),
        ];
        for (msg, hex) in cases {
            let bytes = enc(&msg);
            let got: std::string::String = bytes.iter().map(|b| std::format!("{b:02x}")).collect();
            assert_eq!(got, hex, "{msg:?}");
        }
        let ack = enc(&GatewayMsg::Ack {
            boot_id: 9,
            seq: 300,
        });
        let got: std::string::String = ack.iter().map(|b| std::format!("{b:02x}")).collect();
        assert_eq!(got, "02010609ac029d5d00");
    }

    #[test]
    fn resynchronises_after_garbage() {
        let mut d = Decoder::new();
        let mut line = Vec::new();
        line.extend_from_slice(&[0x13, 0x37, 0xff, 0x00]);
        line.extend_from_slice(&enc(&reading()));
        line.extend_from_slice(&[0x55; 300]);
        line.push(0);
        let frame = enc(&reading());
        line.extend_from_slice(&frame[..frame.len() / 2]);
        line.push(0);
        line.extend_from_slice(&enc(&reading()));
        let out = feed_all::<NodeMsg>(&mut d, &line);
        let frames = out.iter().filter(|f| matches!(f, Feed::Frame(_))).count();
        let bad = out.iter().filter(|f| matches!(f, Feed::Bad(_))).count();
        assert_eq!(frames, 2);
        assert_eq!(bad, 3, "{out:?}");
        assert!(out.contains(&Feed::Bad(FrameError::TooLong)));
    }

    #[test]
    fn a_flipped_bit_is_caught() {
        let mut f = enc(&reading());
        f[5] ^= 0x10;
        let mut d = Decoder::new();
        let out = feed_all::<NodeMsg>(&mut d, &f);
        assert!(
            matches!(
                out[..],
                [Feed::Bad(
                    FrameError::Crc | FrameError::Cobs | FrameError::Malformed
                )]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn another_version_is_named() {
        let mut raw = [0u8; MAX_FRAME];
        #[derive(Serialize)]
        struct V2 {
            version: u8,
            x: u8,
        }
        let n = postcard::ser_flavors::crc::to_slice_u16(
            &V2 { version: 2, x: 1 },
            &mut raw,
            CRC.digest(),
        )
        .unwrap()
        .len();
        let mut out = [0u8; MAX_FRAME];
        let m = cobs::encode(&raw[..n], &mut out);
        assert_eq!(decode::<NodeMsg>(&out[..m]), Err(FrameError::Version(2)));
    }

    fn any_measurement() -> impl Strategy<Value = Measurement> {
        (any::<i32>(), -10i8..10)
            .prop_map(|(m, e)| Measurement::Spo2(Quantity::new(m, e, Unit::Percent)))
    }

    proptest! {
        #[test]
        fn round_trip(node_id in any::<u64>(), boot_id in any::<u32>(), seq in any::<u32>(), t in any::<u64>(), set in any::<bool>(), m in any_measurement()) {
            for msg in [
                NodeMsg::Reading { node_id, boot_id, seq, node_time_ms: t, clock_set: set, measurement: m },
                NodeMsg::Hello { node_id, firmware_version: seq, boot_id, capabilities: 3, dropped: seq },
                NodeMsg::Status { boot_id, queued: seq, dropped: 1 },
            ] {
                let f = enc(&msg);
                prop_assert_eq!(f.iter().filter(|b| **b == 0).count(), 1);
                let mut d = Decoder::new();
                let out = feed_all::<NodeMsg>(&mut d, &f);
                prop_assert_eq!(out, std::vec![Feed::Frame(msg)]);
            }
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut d = Decoder::new();
            for b in bytes {
                let _ = d.push::<NodeMsg>(b);
                let _ = d.push::<GatewayMsg>(b);
            }
        }
    }
}
