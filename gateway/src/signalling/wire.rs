//! The hospital-side wire format: JSON events on `heim/v1/{gateway_id}/sig/up` and `…/sig/down`,
//! shaped like Matrix VoIP events (`m.call.*`), and [`Secret`], the only type SDP, candidate lines
//! and ICE credentials live in.
//!
//! Nothing here implements `Debug` or `Display` in a way that prints a secret, and parse errors
//! never quote the input: serde_json's messages do (`invalid type: string "v=0…"`), so callers get
//! [`ParseError`] with a category and position only.

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// Schema version of the events.
pub const VERSION: u8 = 1;

/// MQTT content type of the events.
pub const CONTENT_TYPE: &str = "application/vnd.heim.sig+json";

/// SDP, a candidate line, an ICE password or a TURN credential: printed only as its size and
/// wiped from memory when dropped.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a string.
    pub fn new(s: String) -> Self {
        Self(s)
    }
    /// The text, for the one place that must hand it on (the HTTP body, the MQTT payload).
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<secret, {} bytes>", self.0.len())
    }
}

/// Event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A call is wanted (either direction).
    Ring,
    /// The ring was accepted by a person.
    Accept,
    /// The ring was declined.
    Reject,
    /// The SDP offer (always from the gateway: the LAN client is the offerer).
    Invite,
    /// The SDP answer (always from the hospital).
    Answer,
    /// Trickled ICE candidates.
    Candidates,
    /// The call is over.
    Hangup,
}

/// `{type, sdp}` as in `RTCSessionDescriptionInit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Description {
    /// `offer` or `answer`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The SDP.
    pub sdp: Secret,
}

/// One ICE candidate as in `RTCIceCandidateInit`; an empty `candidate` means end of candidates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Candidate {
    /// The `candidate:…` attribute value (without `a=`).
    pub candidate: Secret,
    /// The media stream id.
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// The m-line index.
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u32>,
}

/// A STUN/TURN server the hospital hands out (short-lived credentials); passed to the LAN client
/// as `Link: <…>; rel="ice-server"`. The gateway itself never relays media.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`/`turn:`/`turns:` URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Secret>,
}

/// One signalling event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    /// Schema version ([`VERSION`]).
    pub v: u8,
    /// What it is.
    #[serde(rename = "type")]
    pub kind: Kind,
    /// The call (1–255 of `[0-9a-zA-Z._~-]`).
    pub call_id: String,
    /// The sender's party (same alphabet).
    pub party_id: String,
    /// Per (call, party) sequence number; duplicates are dropped by `(call_id, party_id, seq)`.
    pub seq: u64,
    /// When it was sent (RFC 3339), informative only: validity is the MQTT message expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<String>,
    /// How long the event stays meaningful, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime_ms: Option<u64>,
    /// Why (hangup, reject): Matrix's values plus `answer_timeout`, `gateway_shutdown` and
    /// `hospital_offline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Ring: who is called (a team, a person; opaque to the gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Ring: who calls (the enrolled LAN client's name, or the hospital's caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Invite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer: Option<Description>,
    /// Answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<Description>,
    /// Candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<Vec<Candidate>>,
    /// Ring (from the hospital) or accept: ICE servers for the LAN client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ice_servers: Option<Vec<IceServer>>,
}

impl Event {
    /// A bare event of `kind`.
    pub fn new(kind: Kind, call_id: &str, party_id: &str, seq: u64) -> Self {
        Self {
            v: VERSION,
            kind,
            call_id: call_id.to_owned(),
            party_id: party_id.to_owned(),
            seq,
            ts: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
            lifetime_ms: None,
            reason: None,
            to: None,
            from: None,
            offer: None,
            answer: None,
            candidates: None,
            ice_servers: None,
        }
    }

    /// The JSON payload.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and numbers cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses and checks an inbound payload.
    pub fn parse(payload: &[u8]) -> Result<Self, ParseError> {
        let e: Event = serde_json::from_slice(payload).map_err(|e| ParseError::Json {
            category: match e.classify() {
                serde_json::error::Category::Io => "io",
                serde_json::error::Category::Syntax => "syntax",
                serde_json::error::Category::Data => "shape",
                serde_json::error::Category::Eof => "truncated",
            },
            line: e.line(),
            column: e.column(),
        })?;
        if e.v != VERSION {
            return Err(ParseError::Version(e.v));
        }
        if !valid_id(&e.call_id) {
            return Err(ParseError::Id("call_id"));
        }
        if !valid_id(&e.party_id) {
            return Err(ParseError::Id("party_id"));
        }
        Ok(e)
    }
}

/// Why an inbound event was refused. Never carries any of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not the JSON shape of an event.
    #[error("not a signalling event ({category} error at line {line}, column {column})")]
    Json {
        /// serde_json's category.
        category: &'static str,
        /// Line.
        line: usize,
        /// Column.
        column: usize,
    },
    /// Another schema version.
    #[error("unsupported event version {0}")]
    Version(u8),
    /// An id outside the allowed alphabet or length.
    #[error("{0} is not 1-255 characters of [0-9a-zA-Z._~-]")]
    Id(&'static str),
}

/// Matrix's rule for `call_id` and `party_id`.
pub fn valid_id(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("v=0\r\na=ice-pwd:abc".into());
        assert_eq!(format!("{s:?}"), "<secret, 18 bytes>");
        let d = Description {
            kind: "offer".into(),
            sdp: s,
        };
        assert!(!format!("{d:?}").contains("ice-pwd"));
    }

    #[test]
    fn parse_errors_never_quote_the_input() {
        let bad =
            br#"{"v":1,"type":"answer","call_id":"c1","party_id":"h","seq":"v=0 a=ice-pwd:xyz"}"#;
        let e = Event::parse(bad).unwrap_err().to_string();
        assert!(!e.contains("ice-pwd") && !e.contains("v=0"), "{e}");
        assert!(matches!(
            Event::parse(br#"{"v":1,"type":"ring","call_id":"a b","party_id":"h","seq":1}"#),
            Err(ParseError::Id("call_id"))
        ));
        assert!(matches!(
            Event::parse(br#"{"v":2,"type":"ring","call_id":"a","party_id":"h","seq":1}"#),
            Err(ParseError::Version(2))
        ));
    }

    #[test]
    fn round_trip() {
        let mut e = Event::new(Kind::Invite, "c.1", "gw.x", 2);
        e.offer = Some(Description {
            kind: "offer".into(),
            sdp: Secret::new("v=0\r\n".into()),
        });
        let back = Event::parse(&e.to_json()).unwrap();
        assert_eq!(back.kind, Kind::Invite);
        assert_eq!(back.offer.unwrap().sdp.expose(), "v=0\r\n");
    }

    #[test]
    fn ids() {
        assert!(valid_id("c.7Qk2_~-"));
        assert!(!valid_id(""));
        assert!(!valid_id(&"a".repeat(256)));
        assert!(!valid_id("a/b"));
    }
}
