//! The call state machine, gateway view, sans I/O: LAN requests and hospital events go in with the
//! current time, events for `sig/up` and "something changed" come out, and [`Machine::tick`] fires
//! the hard timers. The HTTP and MQTT layers around it only translate.
//!
//! ```text
//!  LAN create ─► Ringing(out) ─accept(down)─► Accepted ─LAN offer─► Negotiating ─answer(down)─► Active
//!  ring(down) ─► Ringing(in)  ─LAN accept──►    │  invite(up)        │  held POST          │
//!                    │                          │                    │                     │
//!   reject/timeout/LAN decline/hangup/presence offline/max duration ─┴────────► Ended(reason)
//!                                                              tombstone: late events get `hangup`
//! ```
//!
//! Every call has two ids: the hospital-facing `call_id` (on the wire, in logs) and the LAN-facing
//! id (128 random bits, bound to the enrolled token that created or accepted the call; an incoming
//! ring is visible to every token until one accepts it). Neither is guessable; the LAN id is never
//! logged. SDP lives only in [`Secret`]s inside a live call and is wiped when the call ends.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use base64::Engine;
use rand::RngCore;
use serde::Serialize;

use super::sdp::{self, Counts, Frag, Summary};
use super::wire::{Candidate, Description, Event, IceServer, Kind, Secret};

/// Monotonic milliseconds (the caller's clock; tests drive it by hand).
pub type Ms = u64;

/// The hard timers.
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    /// A ring (either way) not accepted within this is over (`invite_timeout`).
    pub ring: Duration,
    /// After accept, the LAN client must send its offer within this.
    pub offer: Duration,
    /// The held `POST …/whip` waits this long for the hospital's answer (then `504`).
    pub answer: Duration,
    /// An answer without `a=end-of-candidates` waits this long for trickled candidates.
    pub answer_batch: Duration,
    /// Longest call.
    pub max_call: Duration,
    /// An ended call's id answers late events with `hangup` for this long, then is forgotten.
    pub tombstone: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            ring: Duration::from_secs(90),
            offer: Duration::from_secs(30),
            answer: Duration::from_secs(20),
            answer_batch: Duration::from_secs(2),
            max_call: Duration::from_secs(2 * 3600),
            tombstone: Duration::from_secs(60),
        }
    }
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for a person to accept.
    Ringing,
    /// Accepted; waiting for the LAN client's offer.
    Accepted,
    /// Offer sent; waiting for the hospital's answer.
    Negotiating,
    /// Answered; media flows between the endpoints (never through the gateway).
    Active,
    /// Over (see `reason`).
    Ended,
}

/// Who rang.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// The LAN client rang the hospital.
    Outgoing,
    /// The hospital rang this gateway.
    Incoming,
}

/// What the LAN client sees of a call.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct View {
    /// The LAN id (the URL's `{cid}`).
    pub call: String,
    /// Phase.
    pub state: Phase,
    /// Direction.
    pub direction: Direction,
    /// Who was called (outgoing) or is meant (incoming), as the ring said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Who rings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Why it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// After crossing rings: the incoming call that replaced this one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<String>,
    /// Milliseconds until the current phase's timer fires.
    pub expires_in_ms: u64,
    /// Changes on every change (the long-poll's ETag).
    pub version: u64,
}

/// Why a LAN request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No such call for this token (another token's call looks the same).
    #[error("no such call")]
    NotFound,
    /// The call is not in a phase that allows this.
    #[error("the call is {0:?}; {1}")]
    Conflict(Phase, &'static str),
    /// The gateway's call limit is reached.
    #[error("the gateway is busy with another call")]
    Busy,
    /// The hospital's signalling service is offline (its retained presence says so).
    #[error("the hospital's signalling service is offline")]
    HospitalOffline,
    /// PATCH without `If-Match` (RFC 9725: 428).
    #[error("If-Match is required")]
    PreconditionRequired,
    /// PATCH with a stale `If-Match` (412).
    #[error("the ETag does not match this session")]
    PreconditionFailed,
    /// An ICE restart, which this gateway does not relay (422).
    #[error("ICE restarts are not supported; hang up and call again")]
    RestartUnsupported,
    /// A field out of bounds.
    #[error("{0}")]
    Bad(&'static str),
}

/// How a held offer ends.
#[derive(Debug)]
pub enum Outcome {
    /// The answer (with the hospital's candidates spliced in), for the `201`.
    Answered(Answer),
    /// No answer within the timer: `504`.
    AnswerTimeout,
    /// The call ended meanwhile, with this reason.
    Ended(String),
}

/// The `201` of a WHIP POST.
#[derive(Debug)]
pub struct Answer {
    /// The session id (`Location: …/whip/{sid}`).
    pub sid: String,
    /// The session's ETag (quoted).
    pub etag: String,
    /// The SDP answer.
    pub sdp: Secret,
    /// ICE servers to pass on as `Link` headers.
    pub ice_servers: Vec<IceServer>,
}

/// An event for `sig/up` and how long it stays meaningful (its MQTT message expiry).
#[derive(Debug)]
pub struct Up {
    /// The event.
    pub event: Event,
    /// Lifetime from now.
    pub lifetime: Duration,
}

/// Counters for `heim status`.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Calls rung from the LAN.
    pub outgoing: u64,
    /// Rings from the hospital.
    pub incoming: u64,
    /// Hospital events dropped as duplicates `(call_id, party_id, seq)`.
    pub duplicates: u64,
    /// Events for an ended call (answered with `hangup`).
    pub late: u64,
    /// Events for a call this gateway does not know.
    pub unknown: u64,
    /// Events from another party than the one that took the call.
    pub foreign_party: u64,
    /// Events that make no sense in the call's phase.
    pub unexpected: u64,
    /// Crossing rings resolved.
    pub glare: u64,
    /// Candidates the hospital trickled after the answer (WHIP cannot pass them on).
    pub late_candidates: u64,
    /// Ended calls by reason.
    pub ended: BTreeMap<String, u64>,
}

struct Call {
    lan: String,
    call_id: String,
    dir: Direction,
    phase: Phase,
    owner: Option<String>,
    to: Option<String>,
    from: Option<String>,
    peer: Option<String>,
    seq: u64,
    seen: HashSet<(String, u64)>,
    deadline: Ms,
    reason: Option<String>,
    replaced_by: Option<String>,
    sid: Option<String>,
    etag: Option<String>,
    ice_servers: Vec<IceServer>,
    answer: Option<Secret>,
    early: Vec<Candidate>,
    outcome: Option<Outcome>,
    version: u64,
}

impl Call {
    fn live(&self) -> bool {
        self.phase != Phase::Ended
    }

    fn visible_to(&self, token: &str) -> bool {
        match &self.owner {
            Some(o) => o == token,
            None => self.dir == Direction::Incoming,
        }
    }
}

/// All calls of this gateway.
pub struct Machine {
    party: String,
    timers: Timers,
    max_calls: usize,
    calls: Vec<Call>,
    hospital_online: Option<bool>,
    version: u64,
    out: Vec<Up>,
    changed: bool,
    stats: Stats,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine")
            .field("party", &self.party)
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

/// 128 random bits, base64url without padding (22 characters).
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Machine {
    /// A machine for the gateway whose party id is `party` (`gw.{gateway_id}`).
    pub fn new(party: String, timers: Timers, max_calls: usize) -> Self {
        Self {
            party,
            timers,
            max_calls: max_calls.max(1),
            calls: Vec::new(),
            hospital_online: None,
            version: 0,
            out: Vec::new(),
            changed: false,
            stats: Stats::default(),
        }
    }

    /// Events to publish on `sig/up`, and whether any call changed (wake the long-polls), since the
    /// last call.
    pub fn drain(&mut self) -> (Vec<Up>, bool) {
        (
            std::mem::take(&mut self.out),
            std::mem::replace(&mut self.changed, false),
        )
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Calls not yet ended.
    pub fn live_calls(&self) -> usize {
        self.calls.iter().filter(|c| c.live()).count()
    }

    /// Calls held at all (live and tombstones).
    pub fn held_calls(&self) -> usize {
        self.calls.len()
    }

    /// The earliest timer, if any.
    pub fn next_deadline(&self) -> Option<Ms> {
        self.calls.iter().map(|c| c.deadline).min()
    }

    fn touch(&mut self, i: usize) {
        self.version += 1;
        self.calls[i].version = self.version;
        self.changed = true;
    }

    fn emit(&mut self, i: usize, kind: Kind, lifetime: Duration, fill: impl FnOnce(&mut Event)) {
        let c = &mut self.calls[i];
        c.seq += 1;
        let mut e = Event::new(kind, &c.call_id, &self.party, c.seq);
        e.lifetime_ms = Some(ms(lifetime));
        fill(&mut e);
        self.out.push(Up { event: e, lifetime });
    }

    fn end(&mut self, i: usize, reason: &str, now: Ms, tell: Option<Kind>) {
        let tombstone = self.timers.tombstone;
        if let Some(kind) = tell {
            let reason = reason.to_owned();
            self.emit(i, kind, Duration::from_secs(60), |e| {
                e.reason = Some(reason)
            });
        }
        let c = &mut self.calls[i];
        tracing::info!(call_id = %c.call_id, from = ?c.phase, to = "ended", reason, "Call state changed.");
        if c.phase == Phase::Negotiating && c.outcome.is_none() {
            c.outcome = Some(Outcome::Ended(reason.to_owned()));
        }
        c.phase = Phase::Ended;
        c.reason = Some(reason.to_owned());
        c.deadline = now + ms(tombstone);
        c.answer = None;
        c.early.clear();
        c.ice_servers.clear();
        *self.stats.ended.entry(reason.to_owned()).or_default() += 1;
        self.touch(i);
    }

    fn set_phase(&mut self, i: usize, phase: Phase, deadline: Ms) {
        let c = &mut self.calls[i];
        tracing::info!(call_id = %c.call_id, from = ?c.phase, to = ?phase, "Call state changed.");
        c.phase = phase;
        c.deadline = deadline;
        self.touch(i);
    }

    fn new_call(&mut self, dir: Direction, call_id: String, now: Ms, lifetime: Duration) -> usize {
        self.calls.push(Call {
            lan: random_id(),
            call_id,
            dir,
            phase: Phase::Ringing,
            owner: None,
            to: None,
            from: None,
            peer: None,
            seq: 0,
            seen: HashSet::new(),
            deadline: now + ms(lifetime),
            reason: None,
            replaced_by: None,
            sid: None,
            etag: None,
            ice_servers: Vec::new(),
            answer: None,
            early: Vec::new(),
            outcome: None,
            version: 0,
        });
        let i = self.calls.len() - 1;
        self.touch(i);
        i
    }

    fn find(&self, token: &str, lan: &str) -> Result<usize, Refusal> {
        self.calls
            .iter()
            .position(|c| c.lan == lan && c.visible_to(token))
            .ok_or(Refusal::NotFound)
    }

    fn view_of(&self, c: &Call, now: Ms) -> View {
        View {
            call: c.lan.clone(),
            state: c.phase,
            direction: c.dir,
            to: c.to.clone(),
            from: c.from.clone(),
            reason: c.reason.clone(),
            replaced_by: c.replaced_by.clone(),
            expires_in_ms: c.deadline.saturating_sub(now),
            version: c.version,
        }
    }

    // ---- the LAN side ----

    /// `POST /v1/calls`: ring the hospital.
    pub fn create(&mut self, token: &str, to: &str, now: Ms) -> Result<View, Refusal> {
        if to.is_empty() || to.len() > 255 || to.chars().any(char::is_control) {
            return Err(Refusal::Bad("`to` must be 1-255 printable characters"));
        }
        if self.hospital_online == Some(false) {
            return Err(Refusal::HospitalOffline);
        }
        if self.live_calls() >= self.max_calls {
            return Err(Refusal::Busy);
        }
        let ring = self.timers.ring;
        let i = self.new_call(Direction::Outgoing, format!("c.{}", random_id()), now, ring);
        self.calls[i].owner = Some(token.to_owned());
        self.calls[i].to = Some(to.to_owned());
        self.calls[i].from = Some(token.to_owned());
        self.stats.outgoing += 1;
        let (to, from) = (to.to_owned(), token.to_owned());
        self.emit(i, Kind::Ring, ring, |e| {
            e.to = Some(to);
            e.from = Some(from);
        });
        tracing::info!(call_id = %self.calls[i].call_id, direction = "outgoing", "Call state changed: ringing.");
        Ok(self.view_of(&self.calls[i], now))
    }

    /// `POST /v1/calls/{cid}/accept`: take an incoming ring.
    pub fn accept(&mut self, token: &str, lan: &str, now: Ms) -> Result<View, Refusal> {
        let i = self.find(token, lan)?;
        let c = &self.calls[i];
        if c.dir != Direction::Incoming {
            return Err(Refusal::Conflict(
                c.phase,
                "only an incoming call can be accepted",
            ));
        }
        match c.phase {
            Phase::Ringing => {}
            Phase::Accepted if c.owner.as_deref() == Some(token) => {
                return Ok(self.view_of(c, now));
            }
            p => return Err(Refusal::Conflict(p, "the call is not ringing")),
        }
        self.calls[i].owner = Some(token.to_owned());
        let offer = self.timers.offer;
        self.emit(i, Kind::Accept, Duration::from_secs(30), |_| {});
        self.set_phase(i, Phase::Accepted, now + ms(offer));
        Ok(self.view_of(&self.calls[i], now))
    }

    /// `POST /v1/calls/{cid}/whip`: the LAN client's offer. The caller then waits for
    /// [`Machine::outcome`].
    pub fn offer(
        &mut self,
        token: &str,
        lan: &str,
        sdp: Secret,
        summary: Summary,
        now: Ms,
    ) -> Result<(), Refusal> {
        let i = self.find(token, lan)?;
        let c = &self.calls[i];
        if c.owner.as_deref() != Some(token) {
            return Err(Refusal::Conflict(c.phase, "accept the call first"));
        }
        if c.phase != Phase::Accepted {
            return Err(Refusal::Conflict(
                c.phase,
                "an offer is taken only once the call is accepted, and only once",
            ));
        }
        let answer = self.timers.answer;
        let c = &mut self.calls[i];
        c.sid = Some(random_id());
        c.etag = Some(format!("\"{}\"", &random_id()[..16]));
        tracing::info!(
            call_id = %c.call_id,
            offer_bytes = summary.bytes,
            media_sections = summary.media,
            host = summary.candidates.host,
            srflx = summary.candidates.srflx,
            relay = summary.candidates.relay,
            "Offer from the LAN client."
        );
        self.emit(i, Kind::Invite, answer, |e| {
            e.offer = Some(Description {
                kind: "offer".into(),
                sdp,
            });
        });
        self.set_phase(i, Phase::Negotiating, now + ms(answer));
        Ok(())
    }

    /// How the held offer ended, once it has (taken once).
    pub fn outcome(&mut self, token: &str, lan: &str) -> Result<Option<Outcome>, Refusal> {
        let i = self.find(token, lan)?;
        Ok(self.calls[i].outcome.take())
    }

    /// `PATCH …/whip/{sid}`: trickled candidates from the LAN client.
    pub fn patch(
        &mut self,
        token: &str,
        lan: &str,
        sid: &str,
        if_match: Option<&str>,
        frag: Frag,
    ) -> Result<Counts, Refusal> {
        let i = self.find(token, lan)?;
        let c = &self.calls[i];
        if c.owner.as_deref() != Some(token) || c.sid.as_deref() != Some(sid) {
            return Err(Refusal::NotFound);
        }
        if c.phase != Phase::Active {
            return Err(Refusal::Conflict(c.phase, "the session is not established"));
        }
        let Some(tag) = if_match else {
            return Err(Refusal::PreconditionRequired);
        };
        if tag.trim() == "*" || frag.restart {
            return Err(Refusal::RestartUnsupported);
        }
        if c.etag.as_deref() != Some(tag.trim()) {
            return Err(Refusal::PreconditionFailed);
        }
        let counts = Counts::of(&frag.candidates);
        if !frag.candidates.is_empty() {
            tracing::info!(call_id = %c.call_id, host = counts.host, srflx = counts.srflx, relay = counts.relay, end = counts.end, "Candidates from the LAN client.");
            self.emit(i, Kind::Candidates, Duration::from_secs(30), |e| {
                e.candidates = Some(frag.candidates);
            });
        }
        Ok(counts)
    }

    /// `DELETE /v1/calls/{cid}` or `…/whip/{sid}`: hang up, cancel the ring, or decline.
    pub fn hangup(
        &mut self,
        token: &str,
        lan: &str,
        sid: Option<&str>,
        now: Ms,
    ) -> Result<(), Refusal> {
        let i = self.find(token, lan)?;
        let c = &self.calls[i];
        if let Some(sid) = sid
            && c.sid.as_deref() != Some(sid)
        {
            return Err(Refusal::NotFound);
        }
        if !c.live() {
            return Ok(());
        }
        if c.dir == Direction::Incoming && c.phase == Phase::Ringing {
            self.end(i, "user_hangup", now, Some(Kind::Reject));
        } else {
            self.end(i, "user_hangup", now, Some(Kind::Hangup));
        }
        Ok(())
    }

    /// `GET /v1/calls/{cid}`.
    pub fn view(&self, token: &str, lan: &str, now: Ms) -> Result<View, Refusal> {
        let i = self.find(token, lan)?;
        Ok(self.view_of(&self.calls[i], now))
    }

    /// `GET /v1/calls`: the token's calls and unclaimed incoming rings.
    pub fn list(&self, token: &str, now: Ms) -> Vec<View> {
        self.calls
            .iter()
            .filter(|c| c.visible_to(token))
            .map(|c| self.view_of(c, now))
            .collect()
    }

    /// The highest version among what `token` sees (the list's ETag).
    pub fn list_version(&self, token: &str) -> u64 {
        self.calls
            .iter()
            .filter(|c| c.visible_to(token))
            .map(|c| c.version)
            .max()
            .unwrap_or(0)
    }

    // ---- the hospital side ----

    /// The hospital's retained presence changed.
    pub fn hospital_presence(&mut self, online: bool, now: Ms) {
        let was = self.hospital_online.replace(online);
        if was != Some(online) {
            tracing::info!(online, "The hospital's signalling presence changed.");
        }
        if !online {
            for i in 0..self.calls.len() {
                if self.calls[i].live() {
                    self.end(i, "hospital_offline", now, Some(Kind::Hangup));
                }
            }
        }
    }

    /// The gateway stops: every live call is hung up.
    pub fn shutdown(&mut self, now: Ms) {
        for i in 0..self.calls.len() {
            if self.calls[i].live() {
                self.end(i, "gateway_shutdown", now, Some(Kind::Hangup));
            }
        }
    }

    /// An event from `sig/down`.
    pub fn down(&mut self, e: Event, now: Ms) {
        let Some(i) = self.calls.iter().position(|c| c.call_id == e.call_id) else {
            if e.kind == Kind::Ring {
                self.ring_in(e, now);
            } else {
                self.stats.unknown += 1;
                tracing::debug!(call_id = %e.call_id, kind = ?e.kind, "Event for an unknown call dropped.");
            }
            return;
        };
        if !self.calls[i].seen.insert((e.party_id.clone(), e.seq)) {
            self.stats.duplicates += 1;
            tracing::debug!(call_id = %e.call_id, seq = e.seq, "Duplicate event dropped.");
            return;
        }
        if !self.calls[i].live() {
            self.stats.late += 1;
            if !matches!(e.kind, Kind::Hangup | Kind::Reject) {
                let reason = self.calls[i].reason.clone().unwrap_or_default();
                tracing::debug!(call_id = %e.call_id, kind = ?e.kind, "Late event for an ended call: answering hangup.");
                self.emit(i, Kind::Hangup, Duration::from_secs(60), |h| {
                    h.reason = Some(reason)
                });
            }
            return;
        }
        match &self.calls[i].peer {
            Some(p) if *p != e.party_id => {
                self.stats.foreign_party += 1;
                tracing::warn!(call_id = %e.call_id, "Event from a party that does not hold the call dropped.");
                return;
            }
            Some(_) => {}
            None => self.calls[i].peer = Some(e.party_id.clone()),
        }
        let (phase, dir) = (self.calls[i].phase, self.calls[i].dir);
        match (e.kind, phase, dir) {
            (Kind::Accept, Phase::Ringing, Direction::Outgoing) => {
                self.calls[i].ice_servers = e.ice_servers.unwrap_or_default();
                let offer = self.timers.offer;
                self.set_phase(i, Phase::Accepted, now + ms(offer));
            }
            (Kind::Reject, _, _) | (Kind::Hangup, _, _) => {
                let reason = e.reason.unwrap_or_else(|| {
                    if e.kind == Kind::Reject {
                        "rejected"
                    } else {
                        "user_hangup"
                    }
                    .to_owned()
                });
                let reason = if reason.len() <= 64 && super::wire::valid_id(&reason) {
                    reason
                } else {
                    "unknown_error".to_owned()
                };
                self.end(i, &reason, now, None);
            }
            (Kind::Answer, Phase::Negotiating, _) if self.calls[i].answer.is_none() => {
                let Some(d) = e.answer.filter(|d| d.kind == "answer") else {
                    self.stats.unexpected += 1;
                    return;
                };
                let Ok((sdp, summary)) = sdp::check(d.sdp.expose().as_bytes()) else {
                    tracing::warn!(call_id = %e.call_id, "The hospital's answer is not a valid SDP; hanging up.");
                    self.end(i, "unknown_error", now, Some(Kind::Hangup));
                    return;
                };
                tracing::info!(call_id = %e.call_id, answer_bytes = summary.bytes, host = summary.candidates.host, srflx = summary.candidates.srflx, relay = summary.candidates.relay, "Answer from the hospital.");
                let early = std::mem::take(&mut self.calls[i].early);
                let sdp = if early.is_empty() {
                    sdp
                } else {
                    sdp::splice(sdp.expose(), &early)
                };
                let complete = sdp::complete(sdp.expose());
                self.calls[i].answer = Some(sdp);
                if complete {
                    self.activate(i, now);
                } else {
                    let batch = self.timers.answer_batch;
                    self.calls[i].deadline = self.calls[i].deadline.min(now + ms(batch));
                }
            }
            (Kind::Candidates, Phase::Negotiating, _) => {
                let cands = e.candidates.unwrap_or_default();
                let c = &mut self.calls[i];
                match &c.answer {
                    Some(a) => {
                        let spliced = sdp::splice(a.expose(), &cands);
                        let complete = sdp::complete(spliced.expose());
                        c.answer = Some(spliced);
                        if complete {
                            self.activate(i, now);
                        }
                    }
                    None => {
                        let room = sdp::MAX_CANDIDATES.saturating_sub(c.early.len());
                        c.early.extend(cands.into_iter().take(room));
                    }
                }
            }
            (Kind::Candidates, Phase::Active, _) => {
                let n = e.candidates.map_or(0, |c| c.len()) as u64;
                self.stats.late_candidates += n;
                tracing::debug!(call_id = %e.call_id, count = n, "Candidates after the answer cannot reach a WHIP client; dropped.");
            }
            (kind, phase, _) => {
                self.stats.unexpected += 1;
                tracing::debug!(call_id = %e.call_id, kind = ?kind, phase = ?phase, "Event unexpected in this phase dropped.");
            }
        }
    }

    fn activate(&mut self, i: usize, now: Ms) {
        let max = self.timers.max_call;
        let c = &mut self.calls[i];
        let (Some(sdp), Some(sid), Some(etag)) = (c.answer.take(), c.sid.clone(), c.etag.clone())
        else {
            return;
        };
        c.outcome = Some(Outcome::Answered(Answer {
            sid,
            etag,
            sdp,
            ice_servers: c.ice_servers.clone(),
        }));
        self.set_phase(i, Phase::Active, now + ms(max));
    }

    fn ring_in(&mut self, e: Event, now: Ms) {
        let lifetime = e
            .lifetime_ms
            .map_or(self.timers.ring, Duration::from_millis)
            .min(self.timers.ring);
        // Crossing rings: our own ring is out and not yet accepted. Both sides apply the same rule
        // (Matrix): the lesser call_id wins.
        let crossing = self
            .calls
            .iter()
            .position(|c| c.live() && c.dir == Direction::Outgoing && c.phase == Phase::Ringing);
        if let Some(ours) = crossing
            && self.live_calls() == 1
        {
            self.stats.glare += 1;
            if e.call_id < self.calls[ours].call_id {
                tracing::info!(ours = %self.calls[ours].call_id, theirs = %e.call_id, "Crossing rings: the hospital's call wins.");
                let owner = self.calls[ours].owner.clone();
                let j = self.incoming(e, now, lifetime);
                self.calls[j].owner = owner;
                let lan = self.calls[j].lan.clone();
                self.calls[ours].replaced_by = Some(lan);
                self.end(ours, "replaced", now, Some(Kind::Hangup));
            } else {
                tracing::info!(ours = %self.calls[ours].call_id, theirs = %e.call_id, "Crossing rings: our call wins.");
                self.refuse_ring(&e, "replaced");
            }
            return;
        }
        if self.live_calls() >= self.max_calls {
            self.refuse_ring(&e, "user_busy");
            return;
        }
        self.incoming(e, now, lifetime);
    }

    fn incoming(&mut self, e: Event, now: Ms, lifetime: Duration) -> usize {
        let i = self.new_call(Direction::Incoming, e.call_id.clone(), now, lifetime);
        let c = &mut self.calls[i];
        c.seen.insert((e.party_id.clone(), e.seq));
        c.peer = Some(e.party_id);
        c.to = e.to;
        c.from = e.from;
        c.ice_servers = e.ice_servers.unwrap_or_default();
        self.stats.incoming += 1;
        tracing::info!(call_id = %c.call_id, direction = "incoming", "Call state changed: ringing.");
        i
    }

    fn refuse_ring(&mut self, e: &Event, reason: &str) {
        tracing::info!(call_id = %e.call_id, reason, "Ring refused.");
        let mut r = Event::new(Kind::Reject, &e.call_id, &self.party, 1);
        r.reason = Some(reason.to_owned());
        r.lifetime_ms = Some(30_000);
        self.out.push(Up {
            event: r,
            lifetime: Duration::from_secs(30),
        });
    }

    /// Fires every timer due at `now`.
    pub fn tick(&mut self, now: Ms) {
        let mut i = 0;
        while i < self.calls.len() {
            if self.calls[i].deadline > now {
                i += 1;
                continue;
            }
            match self.calls[i].phase {
                Phase::Ended => {
                    // Forgotten; the Secrets it held were wiped when it ended.
                    self.calls.remove(i);
                    continue;
                }
                Phase::Ringing => self.end(i, "invite_timeout", now, Some(Kind::Hangup)),
                Phase::Accepted => self.end(i, "unknown_error", now, Some(Kind::Hangup)),
                Phase::Negotiating if self.calls[i].answer.is_some() => self.activate(i, now),
                Phase::Negotiating => {
                    self.calls[i].outcome = Some(Outcome::AnswerTimeout);
                    self.end(i, "answer_timeout", now, Some(Kind::Hangup));
                }
                Phase::Active => self.end(i, "unknown_error", now, Some(Kind::Hangup)),
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests;
