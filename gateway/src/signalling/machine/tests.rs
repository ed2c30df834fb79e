//! Every transition and every timer of the call state machine, on a hand-driven clock.

use super::*;
use crate::signalling::sdp;

const S: u64 = 1000;
const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-ufrag:abcd\r\na=ice-pwd:secretsecretsecretsecret\r\na=fingerprint:sha-256 AA:BB\r\na=candidate:1 1 udp 2122260223 10.0.0.2 5000 typ host\r\n";
const ANSWER: &str = "v=0\r\no=- 2 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=ice-pwd:theirs\r\na=candidate:2 1 udp 2122260223 10.0.0.3 6000 typ host\r\na=end-of-candidates\r\n";

fn machine() -> Machine {
    Machine::new("gw.test".into(), Timers::default(), 1)
}

fn down(kind: Kind, call_id: &str, seq: u64) -> Event {
    Event::new(kind, call_id, "hosp.dr-x", seq)
}

fn answer(call_id: &str, seq: u64, sdp: &str) -> Event {
    let mut e = down(Kind::Answer, call_id, seq);
    e.answer = Some(Description {
        kind: "answer".into(),
        sdp: Secret::new(sdp.into()),
    });
    e
}

fn ups(m: &mut Machine) -> Vec<Event> {
    m.drain().0.into_iter().map(|u| u.event).collect()
}

fn kinds(m: &mut Machine) -> Vec<(Kind, Option<String>)> {
    ups(m).into_iter().map(|e| (e.kind, e.reason)).collect()
}

fn offer(m: &mut Machine, token: &str, lan: &str, now: Ms) -> Result<(), Refusal> {
    let (sdp, sum) = sdp::check(OFFER.as_bytes()).unwrap();
    m.offer(token, lan, sdp, sum, now)
}

fn frag(body: &str) -> Frag {
    sdp::parse_frag(body.as_bytes()).unwrap()
}

/// Rings out, gets accepted; returns (lan id, wire call id).
fn accepted_outgoing(m: &mut Machine, now: Ms) -> (String, String) {
    let v = m.create("hl2", "team:ortopedi", now).unwrap();
    let ring = ups(m).remove(0);
    let mut acc = down(Kind::Accept, &ring.call_id, 1);
    acc.ice_servers = Some(vec![IceServer {
        urls: vec!["turns:turn.example.no:443?transport=tcp".into()],
        username: Some("u".into()),
        credential: Some(Secret::new("c".into())),
    }]);
    m.down(acc, now);
    assert_eq!(m.view("hl2", &v.call, now).unwrap().state, Phase::Accepted);
    (v.call, ring.call_id)
}

fn active_outgoing(m: &mut Machine, now: Ms) -> (String, String, Answer) {
    let (lan, cid) = accepted_outgoing(m, now);
    offer(m, "hl2", &lan, now).unwrap();
    ups(m);
    m.down(answer(&cid, 2, ANSWER), now);
    let Some(Outcome::Answered(a)) = m.outcome("hl2", &lan).unwrap() else {
        panic!("answered")
    };
    (lan, cid, a)
}

#[test]
fn outgoing_call_from_ring_to_hangup() {
    let mut m = machine();
    let v = m.create("hl2", "team:ortopedi", 0).unwrap();
    assert_eq!(
        (v.state, v.direction),
        (Phase::Ringing, Direction::Outgoing)
    );
    assert_eq!(v.expires_in_ms, 90 * S);
    assert_eq!(v.call.len(), 22, "128 random bits, base64url");
    let (up, changed) = m.drain();
    assert!(changed);
    let ring = &up[0].event;
    assert_eq!(ring.kind, Kind::Ring);
    assert_eq!(up[0].lifetime, Duration::from_secs(90));
    assert_eq!(ring.lifetime_ms, Some(90_000));
    assert_eq!(
        (ring.to.as_deref(), ring.from.as_deref()),
        (Some("team:ortopedi"), Some("hl2"))
    );
    assert_ne!(ring.call_id, v.call, "the LAN id is not the wire id");
    assert_eq!((ring.party_id.as_str(), ring.seq), ("gw.test", 1));
    let cid = ring.call_id.clone();

    // Offer before accept is refused.
    assert!(matches!(
        offer(&mut m, "hl2", &v.call, 1),
        Err(Refusal::Conflict(Phase::Ringing, _))
    ));

    let mut acc = down(Kind::Accept, &cid, 1);
    acc.ice_servers = Some(vec![IceServer {
        urls: vec!["stun:stun.example.no".into()],
        username: None,
        credential: None,
    }]);
    m.down(acc, 5 * S);
    let v2 = m.view("hl2", &v.call, 5 * S).unwrap();
    assert_eq!(v2.state, Phase::Accepted);
    assert!(v2.version > v.version);
    assert_eq!(v2.expires_in_ms, 30 * S);

    offer(&mut m, "hl2", &v.call, 6 * S).unwrap();
    let inv = ups(&mut m).remove(0);
    assert_eq!((inv.kind, inv.seq), (Kind::Invite, 2));
    assert_eq!(inv.offer.as_ref().unwrap().sdp.expose(), OFFER);
    assert_eq!(
        m.view("hl2", &v.call, 6 * S).unwrap().state,
        Phase::Negotiating
    );
    assert!(m.outcome("hl2", &v.call).unwrap().is_none());
    // A second offer on the same call is refused.
    assert!(matches!(
        offer(&mut m, "hl2", &v.call, 6 * S),
        Err(Refusal::Conflict(Phase::Negotiating, _))
    ));

    m.down(answer(&cid, 2, ANSWER), 7 * S);
    let Some(Outcome::Answered(a)) = m.outcome("hl2", &v.call).unwrap() else {
        panic!()
    };
    assert_eq!(a.sdp.expose(), ANSWER);
    assert_eq!(a.ice_servers[0].urls[0], "stun:stun.example.no");
    assert!(a.etag.starts_with('"') && a.etag.ends_with('"'));
    assert_eq!(m.view("hl2", &v.call, 7 * S).unwrap().state, Phase::Active);
    assert_eq!(
        m.view("hl2", &v.call, 7 * S).unwrap().expires_in_ms,
        7200 * S
    );

    // Trickle: ETag rules of RFC 9725.
    let body = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=candidate:3 1 udp 1686052607 198.51.100.7 5000 typ srflx raddr 0.0.0.0 rport 0\r\na=end-of-candidates\r\n";
    assert_eq!(
        m.patch("hl2", &v.call, &a.sid, None, frag(body)),
        Err(Refusal::PreconditionRequired)
    );
    assert_eq!(
        m.patch("hl2", &v.call, &a.sid, Some("\"stale\""), frag(body)),
        Err(Refusal::PreconditionFailed)
    );
    assert_eq!(
        m.patch("hl2", &v.call, &a.sid, Some("*"), frag(body)),
        Err(Refusal::RestartUnsupported)
    );
    assert_eq!(
        m.patch(
            "hl2",
            &v.call,
            &a.sid,
            Some(&a.etag),
            frag("a=ice-ufrag:n\r\na=ice-pwd:new\r\n")
        ),
        Err(Refusal::RestartUnsupported)
    );
    assert_eq!(
        m.patch("hl2", &v.call, "other-sid", Some(&a.etag), frag(body)),
        Err(Refusal::NotFound)
    );
    let counts = m
        .patch("hl2", &v.call, &a.sid, Some(&a.etag), frag(body))
        .unwrap();
    assert_eq!((counts.srflx, counts.end), (1, 1));
    let c = ups(&mut m).remove(0);
    assert_eq!(c.kind, Kind::Candidates);
    assert_eq!(c.candidates.as_ref().unwrap().len(), 2);

    m.hangup("hl2", &v.call, Some(&a.sid), 60 * S).unwrap();
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("user_hangup".into()))]
    );
    let end = m.view("hl2", &v.call, 60 * S).unwrap();
    assert_eq!(
        (end.state, end.reason.as_deref()),
        (Phase::Ended, Some("user_hangup"))
    );
    // Idempotent.
    m.hangup("hl2", &v.call, None, 61 * S).unwrap();
    assert!(ups(&mut m).is_empty());
    // Tombstone: kept 60 s, then forgotten.
    m.tick(119 * S);
    assert!(m.view("hl2", &v.call, 119 * S).is_ok());
    m.tick(120 * S);
    assert_eq!(m.view("hl2", &v.call, 120 * S), Err(Refusal::NotFound));
    assert_eq!(m.held_calls(), 0);
    assert_eq!(m.stats().ended.get("user_hangup"), Some(&1));
}

#[test]
fn incoming_call_is_visible_to_all_until_one_token_accepts_it() {
    let mut m = machine();
    let mut ring = down(Kind::Ring, "h.call1", 1);
    ring.from = Some("dr-x".into());
    ring.lifetime_ms = Some(45_000);
    m.down(ring, 0);
    assert!(ups(&mut m).is_empty());
    let seen_a = m.list("a", 0);
    let seen_b = m.list("b", 0);
    assert_eq!(seen_a.len(), 1);
    assert_eq!(seen_a, seen_b);
    let v = &seen_a[0];
    assert_eq!(
        (v.state, v.direction, v.from.as_deref()),
        (Phase::Ringing, Direction::Incoming, Some("dr-x"))
    );
    assert_eq!(
        v.expires_in_ms,
        45 * S,
        "the ring's own lifetime when shorter"
    );

    m.accept("a", &v.call, S).unwrap();
    let acc = ups(&mut m).remove(0);
    assert_eq!(
        (acc.kind, acc.call_id.as_str(), acc.seq),
        (Kind::Accept, "h.call1", 1)
    );
    // Now bound to token a.
    assert_eq!(m.view("b", &v.call, S), Err(Refusal::NotFound));
    assert_eq!(m.accept("b", &v.call, S), Err(Refusal::NotFound));
    assert!(m.list("b", S).is_empty());
    assert_eq!(
        m.accept("a", &v.call, S).unwrap().state,
        Phase::Accepted,
        "idempotent"
    );

    offer(&mut m, "a", &v.call, 2 * S).unwrap();
    assert_eq!(ups(&mut m)[0].kind, Kind::Invite);
    m.down(answer("h.call1", 2, ANSWER), 3 * S);
    assert!(matches!(
        m.outcome("a", &v.call).unwrap(),
        Some(Outcome::Answered(_))
    ));
    let mut h = down(Kind::Hangup, "h.call1", 3);
    h.reason = Some("user_hangup".into());
    m.down(h, 10 * S);
    assert!(ups(&mut m).is_empty(), "no hangup echoed back");
    let end = m.view("a", &v.call, 10 * S).unwrap();
    assert_eq!(
        (end.state, end.reason.as_deref()),
        (Phase::Ended, Some("user_hangup"))
    );
}

#[test]
fn declining_an_incoming_ring_rejects_it() {
    let mut m = machine();
    m.down(down(Kind::Ring, "h.1", 1), 0);
    let lan = m.list("a", 0)[0].call.clone();
    m.hangup("a", &lan, None, S).unwrap();
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Reject, Some("user_hangup".into()))]
    );
}

#[test]
fn ring_timers_both_ways() {
    let mut m = machine();
    let v = m.create("hl2", "team", 0).unwrap();
    ups(&mut m);
    m.tick(90 * S - 1);
    assert!(ups(&mut m).is_empty());
    m.tick(90 * S);
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("invite_timeout".into()))]
    );
    assert_eq!(
        m.view("hl2", &v.call, 90 * S).unwrap().reason.as_deref(),
        Some("invite_timeout")
    );

    let mut m = machine();
    m.down(down(Kind::Ring, "h.1", 1), 0);
    m.tick(90 * S);
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("invite_timeout".into()))]
    );
    assert_eq!(m.list("a", 90 * S)[0].state, Phase::Ended);
}

#[test]
fn accept_to_offer_timer() {
    let mut m = machine();
    let (lan, _) = accepted_outgoing(&mut m, 0);
    m.tick(30 * S - 1);
    assert!(ups(&mut m).is_empty());
    m.tick(30 * S);
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("unknown_error".into()))]
    );
    assert_eq!(m.view("hl2", &lan, 30 * S).unwrap().state, Phase::Ended);
}

#[test]
fn answer_wait_timer_gives_504() {
    let mut m = machine();
    let (lan, cid) = accepted_outgoing(&mut m, 0);
    offer(&mut m, "hl2", &lan, S).unwrap();
    ups(&mut m);
    m.tick(21 * S - 1);
    assert!(m.outcome("hl2", &lan).unwrap().is_none());
    m.tick(21 * S);
    assert!(matches!(
        m.outcome("hl2", &lan).unwrap(),
        Some(Outcome::AnswerTimeout)
    ));
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("answer_timeout".into()))]
    );
    // The answer that comes too late gets a hangup from the tombstone.
    m.down(answer(&cid, 2, ANSWER), 22 * S);
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("answer_timeout".into()))]
    );
    assert_eq!(m.stats().late, 1);
}

#[test]
fn incomplete_answer_waits_for_trickled_candidates() {
    let mut m = machine();
    let (lan, cid) = accepted_outgoing(&mut m, 0);
    // A candidate that arrives before the answer is kept for it.
    let mut early = down(Kind::Candidates, &cid, 2);
    early.candidates = Some(vec![Candidate {
        candidate: Secret::new("candidate:7 1 udp 1 10.0.0.7 7000 typ relay".into()),
        sdp_mid: Some("0".into()),
        sdp_mline_index: Some(0),
    }]);
    offer(&mut m, "hl2", &lan, S).unwrap();
    m.down(early, S);
    let partial = ANSWER.replace("a=end-of-candidates\r\n", "");
    m.down(answer(&cid, 3, &partial), 2 * S);
    assert!(
        m.outcome("hl2", &lan).unwrap().is_none(),
        "waits for end-of-candidates"
    );
    let mut more = down(Kind::Candidates, &cid, 4);
    more.candidates = Some(vec![Candidate {
        candidate: Secret::new("candidate:8 1 udp 1 10.0.0.8 8000 typ srflx".into()),
        sdp_mid: Some("0".into()),
        sdp_mline_index: None,
    }]);
    m.down(more, 3 * S);
    assert!(m.outcome("hl2", &lan).unwrap().is_none());
    // The 2 s batching deadline (from the answer) completes it.
    m.tick(4 * S);
    let Some(Outcome::Answered(a)) = m.outcome("hl2", &lan).unwrap() else {
        panic!()
    };
    let s = a.sdp.expose();
    assert!(
        s.contains("a=candidate:7 ")
            && s.contains("a=candidate:8 ")
            && s.contains("a=candidate:2 ")
    );
    assert_eq!(m.view("hl2", &lan, 4 * S).unwrap().state, Phase::Active);
    // After the answer, WHIP has no way to pass candidates on: counted and dropped.
    let mut late = down(Kind::Candidates, &cid, 5);
    late.candidates = Some(vec![Candidate {
        candidate: Secret::new("candidate:9 1 udp 1 10.0.0.9 9 typ host".into()),
        sdp_mid: None,
        sdp_mline_index: Some(0),
    }]);
    m.down(late, 5 * S);
    assert_eq!(m.stats().late_candidates, 1);

    // An end-of-candidates marker completes it at once.
    let mut m = machine();
    let (lan, cid) = accepted_outgoing(&mut m, 0);
    offer(&mut m, "hl2", &lan, S).unwrap();
    m.down(answer(&cid, 2, &partial), 2 * S);
    let mut end = down(Kind::Candidates, &cid, 3);
    end.candidates = Some(vec![Candidate {
        candidate: Secret::new(String::new()),
        sdp_mid: Some("0".into()),
        sdp_mline_index: None,
    }]);
    m.down(end, 2 * S);
    assert!(matches!(
        m.outcome("hl2", &lan).unwrap(),
        Some(Outcome::Answered(_))
    ));
}

#[test]
fn max_call_duration() {
    let mut m = machine();
    let (lan, _, _) = active_outgoing(&mut m, 0);
    ups(&mut m);
    m.tick(7200 * S - 1);
    assert!(ups(&mut m).is_empty());
    m.tick(7200 * S);
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("unknown_error".into()))]
    );
    assert_eq!(m.view("hl2", &lan, 7200 * S).unwrap().state, Phase::Ended);
}

#[test]
fn hangup_during_negotiation_ends_the_held_offer() {
    let mut m = machine();
    let (lan, cid) = accepted_outgoing(&mut m, 0);
    offer(&mut m, "hl2", &lan, S).unwrap();
    let mut h = down(Kind::Hangup, &cid, 2);
    h.reason = Some("user_media_failed".into());
    m.down(h, 2 * S);
    let Some(Outcome::Ended(r)) = m.outcome("hl2", &lan).unwrap() else {
        panic!()
    };
    assert_eq!(r, "user_media_failed");
}

#[test]
fn reject_of_our_ring() {
    let mut m = machine();
    let v = m.create("hl2", "team", 0).unwrap();
    let cid = ups(&mut m)[0].call_id.clone();
    let mut r = down(Kind::Reject, &cid, 1);
    r.reason = Some("user_busy".into());
    m.down(r, S);
    let e = m.view("hl2", &v.call, S).unwrap();
    assert_eq!(
        (e.state, e.reason.as_deref()),
        (Phase::Ended, Some("user_busy"))
    );
    // A reason outside the alphabet is not passed on.
    let mut m = machine();
    m.create("hl2", "team", 0).unwrap();
    let cid = ups(&mut m)[0].call_id.clone();
    let mut r = down(Kind::Reject, &cid, 1);
    r.reason = Some("<script>".into());
    m.down(r, S);
    assert_eq!(m.list("hl2", S)[0].reason.as_deref(), Some("unknown_error"));
}

#[test]
fn crossing_rings_lesser_call_id_wins() {
    // The hospital's id is lesser: our ring gives way, its ring is offered to our caller.
    let mut m = machine();
    let ours = m.create("hl2", "team", 0).unwrap();
    let our_cid = ups(&mut m)[0].call_id.clone();
    assert!(our_cid.starts_with("c."));
    m.down(down(Kind::Ring, "a.hospital", 1), S);
    assert_eq!(kinds(&mut m), vec![(Kind::Hangup, Some("replaced".into()))]);
    let old = m.view("hl2", &ours.call, S).unwrap();
    assert_eq!(
        (old.state, old.reason.as_deref()),
        (Phase::Ended, Some("replaced"))
    );
    let new_lan = old.replaced_by.unwrap();
    let new = m.view("hl2", &new_lan, S).unwrap();
    assert_eq!(
        (new.state, new.direction),
        (Phase::Ringing, Direction::Incoming)
    );
    assert_eq!(
        m.view("other", &new_lan, S),
        Err(Refusal::NotFound),
        "bound to the caller"
    );
    assert_eq!(m.stats().glare, 1);

    // Ours is lesser: the hospital's ring is refused, ours goes on.
    let mut m = machine();
    let ours = m.create("hl2", "team", 0).unwrap();
    ups(&mut m);
    m.down(down(Kind::Ring, "z.hospital", 1), S);
    let out = ups(&mut m);
    assert_eq!(
        (
            out[0].kind,
            out[0].call_id.as_str(),
            out[0].reason.as_deref()
        ),
        (Kind::Reject, "z.hospital", Some("replaced"))
    );
    assert_eq!(m.view("hl2", &ours.call, S).unwrap().state, Phase::Ringing);
    assert_eq!(m.list("hl2", S).len(), 1);
}

#[test]
fn one_call_at_a_time() {
    let mut m = machine();
    let (_lan, _, _) = active_outgoing(&mut m, 0);
    ups(&mut m);
    assert_eq!(m.create("hl2", "team", S), Err(Refusal::Busy));
    m.down(down(Kind::Ring, "a.x", 1), S);
    let out = ups(&mut m);
    assert_eq!(
        (out[0].kind, out[0].reason.as_deref()),
        (Kind::Reject, Some("user_busy"))
    );
    assert_eq!(m.live_calls(), 1);
}

#[test]
fn duplicates_late_unknown_and_foreign_events() {
    let mut m = machine();
    let (lan, cid) = accepted_outgoing(&mut m, 0);
    // The same accept again (QoS 1 redelivery) is dropped.
    m.down(down(Kind::Accept, &cid, 1), S);
    assert_eq!(m.stats().duplicates, 1);
    // Another hospital party cannot take over the call.
    let mut other = Event::new(Kind::Hangup, &cid, "hosp.mallory", 9);
    other.reason = Some("user_hangup".into());
    m.down(other, S);
    assert_eq!(m.stats().foreign_party, 1);
    assert_eq!(m.view("hl2", &lan, S).unwrap().state, Phase::Accepted);
    // An invite from the hospital makes no sense (the LAN client is always the offerer).
    m.down(down(Kind::Invite, &cid, 2), S);
    assert_eq!(m.stats().unexpected, 1);
    // Unknown call.
    m.down(down(Kind::Answer, "nobody", 1), S);
    assert_eq!(m.stats().unknown, 1);
    assert!(ups(&mut m).is_empty());
    // Late events after the end get a hangup, except hangups and rejects.
    m.hangup("hl2", &lan, None, 2 * S).unwrap();
    ups(&mut m);
    m.down(down(Kind::Candidates, &cid, 3), 3 * S);
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("user_hangup".into()))]
    );
    m.down(down(Kind::Hangup, &cid, 4), 3 * S);
    assert!(ups(&mut m).is_empty());
    assert_eq!(m.stats().late, 2);
    // A duplicate of a late event is still a duplicate.
    m.down(down(Kind::Candidates, &cid, 3), 3 * S);
    assert!(ups(&mut m).is_empty());
    assert_eq!(m.stats().duplicates, 2);
}

#[test]
fn calls_are_bound_to_their_token() {
    let mut m = machine();
    let (lan, _, a) = active_outgoing(&mut m, 0);
    assert_eq!(m.view("intruder", &lan, S), Err(Refusal::NotFound));
    assert_eq!(m.hangup("intruder", &lan, None, S), Err(Refusal::NotFound));
    assert_eq!(
        m.patch(
            "intruder",
            &lan,
            &a.sid,
            Some(&a.etag),
            frag("a=end-of-candidates\r\n")
        ),
        Err(Refusal::NotFound)
    );
    assert!(matches!(
        m.outcome("intruder", &lan),
        Err(Refusal::NotFound)
    ));
    assert!(m.list("intruder", S).is_empty());
    assert_eq!(m.view("hl2", &lan, S).unwrap().state, Phase::Active);
}

#[test]
fn hospital_presence_offline_hangs_up() {
    let mut m = machine();
    m.hospital_presence(true, 0);
    let (lan, _, _) = active_outgoing(&mut m, 0);
    ups(&mut m);
    m.hospital_presence(false, S);
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("hospital_offline".into()))]
    );
    assert_eq!(
        m.view("hl2", &lan, S).unwrap().reason.as_deref(),
        Some("hospital_offline")
    );
    assert_eq!(m.create("hl2", "team", S), Err(Refusal::HospitalOffline));
    m.hospital_presence(true, 2 * S);
    assert!(m.create("hl2", "team", 2 * S).is_ok());
}

#[test]
fn shutdown_hangs_up_every_live_call() {
    let mut m = machine();
    let (lan, _, _) = active_outgoing(&mut m, 0);
    ups(&mut m);
    m.shutdown(S);
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("gateway_shutdown".into()))]
    );
    assert_eq!(m.view("hl2", &lan, S).unwrap().state, Phase::Ended);
}

#[test]
fn bad_create_and_bad_answer() {
    let mut m = machine();
    assert!(matches!(m.create("hl2", "", 0), Err(Refusal::Bad(_))));
    assert!(matches!(m.create("hl2", "a\nb", 0), Err(Refusal::Bad(_))));
    let (lan, cid) = accepted_outgoing(&mut m, 0);
    offer(&mut m, "hl2", &lan, S).unwrap();
    ups(&mut m);
    m.down(answer(&cid, 2, "not sdp"), S);
    assert_eq!(
        kinds(&mut m),
        vec![(Kind::Hangup, Some("unknown_error".into()))]
    );
    assert!(matches!(
        m.outcome("hl2", &lan).unwrap(),
        Some(Outcome::Ended(_))
    ));
}
