//! Just enough SDP for a signalling broker that must not look inside: sanity checks on an offer,
//! RFC 8840 `trickle-ice-sdpfrag` bodies turned into candidate events, hospital candidates spliced
//! into the answer (WHIP has no server-side trickle), and counts by candidate type for the logs.
//!
//! Every function works on borrowed text and returns sizes, counts and typed errors; none returns or
//! logs a line of the input.

use super::wire::{Candidate, Secret};

/// The largest SDP or sdpfrag body accepted (RFC 9725 leaves it open; browsers' offers are a few kB).
pub const MAX_SDP: usize = 64 * 1024;
/// The most candidates one PATCH may carry.
pub const MAX_CANDIDATES: usize = 50;

/// Why a body was refused (no input quoted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// Larger than [`MAX_SDP`].
    #[error("the body is {0} bytes, more than the {MAX_SDP} allowed")]
    TooLarge(usize),
    /// Not UTF-8 text.
    #[error("the body is not UTF-8 text")]
    NotText,
    /// Does not start with `v=0`.
    #[error("not an SDP session description (it must start with v=0)")]
    NotSdp,
    /// No media section.
    #[error("the SDP has no media section")]
    NoMedia,
    /// More candidates than [`MAX_CANDIDATES`].
    #[error("{0} candidates in one request, more than the {MAX_CANDIDATES} allowed")]
    TooManyCandidates(usize),
    /// A line that is not `x=…`.
    #[error("line {0} is not an SDP line")]
    BadLine(usize),
}

/// Candidate counts by type, the only thing about candidates that may be logged.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Host candidates.
    pub host: u32,
    /// Server-reflexive.
    pub srflx: u32,
    /// Peer-reflexive.
    pub prflx: u32,
    /// Relayed (TURN).
    pub relay: u32,
    /// Anything else.
    pub other: u32,
    /// End-of-candidates markers.
    pub end: u32,
}

impl Counts {
    fn add(&mut self, candidate_value: &str) {
        if candidate_value.is_empty() {
            self.end += 1;
            return;
        }
        let mut it = candidate_value.split_ascii_whitespace();
        let typ = it.by_ref().skip_while(|t| *t != "typ").nth(1).unwrap_or("");
        match typ {
            "host" => self.host += 1,
            "srflx" => self.srflx += 1,
            "prflx" => self.prflx += 1,
            "relay" => self.relay += 1,
            _ => self.other += 1,
        }
    }

    /// Counts over candidate events.
    pub fn of(cands: &[Candidate]) -> Self {
        let mut c = Self::default();
        for x in cands {
            c.add(x.candidate.expose());
        }
        c
    }

    /// Total real candidates (without end markers).
    pub fn total(&self) -> u32 {
        self.host + self.srflx + self.prflx + self.relay + self.other
    }
}

fn text(body: &[u8]) -> Result<&str, SdpError> {
    if body.len() > MAX_SDP {
        return Err(SdpError::TooLarge(body.len()));
    }
    std::str::from_utf8(body).map_err(|_| SdpError::NotText)
}

fn lines(s: &str) -> impl Iterator<Item = &str> {
    s.split('\n').map(|l| l.trim_end_matches('\r'))
}

/// What may be said about an SDP in a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Bytes.
    pub bytes: usize,
    /// Media sections.
    pub media: u32,
    /// Candidates inside it, by type.
    pub candidates: Counts,
}

/// Checks that `body` is a plausible SDP (size, text, `v=0`, line shape, a media section).
pub fn check(body: &[u8]) -> Result<(Secret, Summary), SdpError> {
    let s = text(body)?;
    if !s.starts_with("v=0") {
        return Err(SdpError::NotSdp);
    }
    let mut media = 0;
    let mut counts = Counts::default();
    for (i, l) in lines(s).enumerate() {
        if l.is_empty() {
            continue;
        }
        let b = l.as_bytes();
        if b.len() < 2 || b[1] != b'=' || !b[0].is_ascii_lowercase() {
            return Err(SdpError::BadLine(i + 1));
        }
        if l.starts_with("m=") {
            media += 1;
        } else if let Some(v) = l.strip_prefix("a=candidate:") {
            // An empty candidate line is malformed, not an end marker (found by the fuzzer).
            if v.is_empty() {
                counts.other += 1;
            } else {
                counts.add(v);
            }
        } else if l == "a=end-of-candidates" {
            counts.end += 1;
        }
    }
    if media == 0 {
        return Err(SdpError::NoMedia);
    }
    Ok((
        Secret::new(s.to_owned()),
        Summary {
            bytes: s.len(),
            media,
            candidates: counts,
        },
    ))
}

/// Whether the SDP says its candidates are complete.
pub fn complete(sdp: &str) -> bool {
    lines(sdp).any(|l| l == "a=end-of-candidates")
}

/// What a PATCH body asks for.
#[derive(Debug)]
pub struct Frag {
    /// The candidates, with their `sdpMid` / `sdpMLineIndex` (an empty one per end marker).
    pub candidates: Vec<Candidate>,
    /// Whether it carries new ICE credentials (an ICE restart, RFC 9725 §4.4.2).
    pub restart: bool,
}

/// Parses an `application/trickle-ice-sdpfrag` body (RFC 8840).
pub fn parse_frag(body: &[u8]) -> Result<Frag, SdpError> {
    let s = text(body)?;
    let mut candidates = Vec::new();
    let mut mid: Option<String> = None;
    let mut index: Option<u32> = None;
    let mut restart = false;
    for (i, l) in lines(s).enumerate() {
        if l.is_empty() {
            continue;
        }
        let b = l.as_bytes();
        if b.len() < 2 || b[1] != b'=' {
            return Err(SdpError::BadLine(i + 1));
        }
        if l.starts_with("m=") {
            index = Some(index.map_or(0, |x| x + 1));
            mid = None;
        } else if let Some(m) = l.strip_prefix("a=mid:") {
            mid = Some(m.to_owned());
        } else if l.starts_with("a=ice-pwd:") {
            restart = true;
        } else if let Some(v) = l.strip_prefix("a=") {
            let end = v == "end-of-candidates";
            if v.starts_with("candidate:") || end {
                candidates.push(Candidate {
                    candidate: Secret::new(if end { String::new() } else { v.to_owned() }),
                    sdp_mid: mid.clone(),
                    sdp_mline_index: index,
                });
            }
        }
        if candidates.len() > MAX_CANDIDATES {
            return Err(SdpError::TooManyCandidates(candidates.len()));
        }
    }
    Ok(Frag {
        candidates,
        restart,
    })
}

/// Adds trickled candidates to the media sections of `sdp` they belong to (by `sdpMid`, else by
/// `sdpMLineIndex`); an empty candidate becomes `a=end-of-candidates`. Line endings follow the
/// SDP's own.
pub fn splice(sdp: &str, cands: &[Candidate]) -> Secret {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    // Sections: [session, m0, m1, …] as line lists.
    let mut sections: Vec<Vec<&str>> = vec![Vec::new()];
    for l in lines(sdp) {
        if l.is_empty() {
            continue;
        }
        if l.starts_with("m=") {
            sections.push(Vec::new());
        }
        if let Some(last) = sections.last_mut() {
            last.push(l);
        }
    }
    let mids: Vec<Option<&str>> = sections
        .iter()
        .skip(1)
        .map(|sec| sec.iter().find_map(|l| l.strip_prefix("a=mid:")))
        .collect();
    let mut extra: Vec<Vec<String>> = vec![Vec::new(); sections.len()];
    for c in cands {
        let by_mid = c
            .sdp_mid
            .as_deref()
            .and_then(|m| mids.iter().position(|x| *x == Some(m)));
        let idx = by_mid.or(c.sdp_mline_index.map(|i| i as usize));
        let Some(i) = idx.filter(|i| *i + 1 < sections.len()) else {
            continue;
        };
        let line = if c.candidate.is_empty() {
            "a=end-of-candidates".to_owned()
        } else {
            format!("a={}", c.candidate.expose())
        };
        if !sections[i + 1].contains(&line.as_str()) && !extra[i + 1].contains(&line) {
            extra[i + 1].push(line);
        }
    }
    let mut out = String::with_capacity(sdp.len() + 128 * cands.len());
    for (sec, add) in sections.iter().zip(extra.iter()) {
        for l in sec {
            out.push_str(l);
            out.push_str(eol);
        }
        for l in add {
            out.push_str(l);
            out.push_str(eol);
        }
    }
    Secret::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\n\
        a=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n";

    #[test]
    fn checks_offers() {
        let (_, sum) = check(OFFER.as_bytes()).unwrap();
        assert_eq!(sum.media, 2);
        assert_eq!(sum.candidates.host, 1);
        assert!(matches!(check(b"hello"), Err(SdpError::NotSdp)));
        assert!(matches!(check(b"v=0\r\ns=-\r\n"), Err(SdpError::NoMedia)));
        assert!(matches!(
            check(&vec![b'a'; MAX_SDP + 1]),
            Err(SdpError::TooLarge(_))
        ));
        assert!(matches!(
            check(&[b'v', b'=', b'0', 0xff]),
            Err(SdpError::NotText)
        ));
        assert!(matches!(
            check(b"v=0\r\nnonsense\r\n"),
            Err(SdpError::BadLine(2))
        ));
    }

    #[test]
    fn an_empty_candidate_line_is_not_an_end_marker() {
        // Minimised from a fuzzer find: counts and `complete` must agree.
        let (sdp, sum) = check(b"v=0\r\nm=video 9 x 96\r\na=candidate:\r\n").unwrap();
        assert_eq!((sum.candidates.end, sum.candidates.other), (0, 1));
        assert!(!complete(sdp.expose()));
    }

    #[test]
    fn frags_from_rfc_9725() {
        let body = "a=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n\
            a=ice-ufrag:EsAw\r\na=candidate:1387637174 1 udp 2122260223 192.0.2.1 61764 typ host generation 0\r\n\
            a=candidate:2 1 udp 1686052607 198.51.100.7 50000 typ srflx raddr 0.0.0.0 rport 0\r\n\
            a=end-of-candidates\r\n";
        let f = parse_frag(body.as_bytes()).unwrap();
        assert!(!f.restart);
        assert_eq!(f.candidates.len(), 3);
        assert_eq!(f.candidates[0].sdp_mid.as_deref(), Some("0"));
        assert_eq!(f.candidates[0].sdp_mline_index, Some(0));
        assert!(
            f.candidates[0]
                .candidate
                .expose()
                .starts_with("candidate:1387637174")
        );
        let c = Counts::of(&f.candidates);
        assert_eq!((c.host, c.srflx, c.end, c.total()), (1, 1, 1, 2));
        let restart = parse_frag(b"a=ice-ufrag:x\r\na=ice-pwd:y\r\n").unwrap();
        assert!(restart.restart);
        let many: String = (0..51)
            .map(|i| format!("a=candidate:{i} 1 udp 1 10.0.0.1 1 typ host\r\n"))
            .collect();
        assert!(matches!(
            parse_frag(many.as_bytes()),
            Err(SdpError::TooManyCandidates(51))
        ));
    }

    #[test]
    fn splices_into_the_right_section() {
        let cands = vec![
            Candidate {
                candidate: Secret::new("candidate:9 1 udp 1 10.0.0.9 9 typ host".into()),
                sdp_mid: Some("1".into()),
                sdp_mline_index: None,
            },
            Candidate {
                candidate: Secret::new(String::new()),
                sdp_mid: None,
                sdp_mline_index: Some(0),
            },
        ];
        let out = splice(OFFER, &cands);
        let s = out.expose();
        let m1 = s.find("m=application").unwrap();
        let c9 = s.find("candidate:9").unwrap();
        let end = s.find("a=end-of-candidates").unwrap();
        assert!(c9 > m1, "mid 1 goes after the second m-line");
        assert!(end < m1, "index 0 goes in the first section");
        assert!(s.ends_with("\r\n") && !s.contains("\r\n\r\n"));
        assert!(complete(s));
        assert!(!complete(OFFER));
    }
}
