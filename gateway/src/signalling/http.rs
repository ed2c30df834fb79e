//! The LAN API: HTTPS, WHIP-shaped (RFC 9725) with a ring/accept step in front.
//!
//! ```text
//! POST   /v1/calls                  {"to": "..."}            → 201 Location: /v1/calls/{cid}
//! GET    /v1/calls[?wait=s]         calls of this token and unclaimed incoming rings (long-poll)
//! GET    /v1/calls/{cid}[?wait=s]   one call; with If-None-Match: its ETag, waits for a change → 304
//! POST   /v1/calls/{cid}/accept     take an incoming ring
//! POST   /v1/calls/{cid}/whip       application/sdp offer → 201 + Location + ETag + answer + Link ice-server
//! PATCH  /v1/calls/{cid}/whip/{sid} application/trickle-ice-sdpfrag → 204 (428 / 412 / 422)
//! DELETE /v1/calls/{cid}/whip/{sid} and DELETE /v1/calls/{cid} → 200 (hang up, cancel, decline)
//! ```
//!
//! Every request but CORS preflight needs `Authorization: Bearer` with an enrolled token; a call is
//! visible only to the token that made or accepted it (others get 404, as for a call that does not
//! exist). Access logs name the route template, never the ids in the path.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::machine::{Machine, Ms, Outcome, Refusal, Up};
use super::sdp::{self, MAX_SDP, SdpError};
use super::tokens::{RateLimit, Tokens};

/// Longest long-poll.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Concurrent LAN connections at most (a health room has a handful of devices).
const MAX_CONNECTIONS: usize = 64;

/// State shared by the HTTP handlers, the MQTT side and the timer task.
#[derive(Debug)]
pub struct Shared {
    machine: Mutex<Machine>,
    epoch: Instant,
    changed: watch::Sender<u64>,
    up: mpsc::Sender<Up>,
    tokens: Tokens,
    limit: RateLimit,
    auth_failures: RateLimit,
    answer_wait: Duration,
}

impl Shared {
    /// Wires a machine to its outputs.
    pub fn new(
        machine: Machine,
        up: mpsc::Sender<Up>,
        tokens: Tokens,
        limit: RateLimit,
        answer_wait: Duration,
    ) -> Self {
        Self {
            machine: Mutex::new(machine),
            epoch: Instant::now(),
            changed: watch::channel(0).0,
            up,
            tokens,
            limit,
            // Wrong tokens from one address: 10 at once, then one every 6 s.
            auth_failures: RateLimit::new(10, 10),
            answer_wait,
        }
    }

    /// Milliseconds since start (the machine's clock).
    pub fn now(&self) -> Ms {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant of a machine time.
    pub fn instant(&self, at: Ms) -> Instant {
        self.epoch + Duration::from_millis(at)
    }

    /// Runs `f` on the machine, then publishes what it emitted and wakes the waiters.
    pub fn with<T>(&self, f: impl FnOnce(&mut Machine, Ms) -> T) -> T {
        let now = self.now();
        let (r, ups, changed) = {
            let mut m = self.machine.lock().unwrap_or_else(|p| p.into_inner());
            let r = f(&mut m, now);
            let (ups, changed) = m.drain();
            (r, ups, changed)
        };
        for u in ups {
            if self.up.try_send(u).is_err() {
                tracing::warn!("The signalling publisher is backed up; an event was dropped.");
            }
        }
        if changed {
            self.changed.send_modify(|v| *v += 1);
        }
        r
    }

    /// A receiver woken on every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

type Body = Full<Bytes>;

fn reply(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(v).unwrap_or_default(),
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": msg }))
}

fn refusal(r: &Refusal) -> Response<Body> {
    let status = match r {
        Refusal::NotFound => StatusCode::NOT_FOUND,
        Refusal::Conflict(..) => StatusCode::CONFLICT,
        Refusal::Busy | Refusal::HospitalOffline => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
        Refusal::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        Refusal::RestartUnsupported => StatusCode::UNPROCESSABLE_ENTITY,
        Refusal::Bad(_) => StatusCode::BAD_REQUEST,
    };
    let mut resp = error(status, &r.to_string());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("30"));
    }
    resp
}

fn sdp_refusal(e: &SdpError) -> Response<Body> {
    let status = match e {
        SdpError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, &e.to_string())
}

fn content_type_is(h: &HeaderMap, want: &str) -> bool {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(want))
}

fn wait_param(req: &Request<Incoming>) -> Duration {
    req.uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("wait="))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(Duration::ZERO, |s| Duration::from_secs(s).min(MAX_WAIT))
}

async fn body(req: Request<Incoming>, max: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than the {max} bytes allowed"),
            ))
        }
        Err(_) => Err(error(StatusCode::BAD_REQUEST, "the body could not be read")),
    }
}

fn cors(h: &mut HeaderMap) {
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, ETag, Link, Retry-After"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Quoted, `\` and `"` escaped, for Link parameters.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

/// Handles one request.
pub async fn handle(
    shared: Arc<Shared>,
    peer: IpAddr,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let method = req.method().clone();
    let segs: Vec<String> = req
        .uri()
        .path()
        .trim_end_matches('/')
        .split('/')
        .skip(1)
        .map(str::to_owned)
        .collect();
    let route = route_name(&segs);
    let mut resp = if method == Method::OPTIONS {
        preflight()
    } else {
        authorised(&shared, peer, &method, &segs, req).await
    };
    cors(resp.headers_mut());
    tracing::debug!(%method, route, status = resp.status().as_u16(), "LAN request.");
    Ok(resp)
}

fn route_name(segs: &[String]) -> &'static str {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["v1", "calls"] => "/v1/calls",
        ["v1", "calls", _] => "/v1/calls/{cid}",
        ["v1", "calls", _, "accept"] => "/v1/calls/{cid}/accept",
        ["v1", "calls", _, "whip"] => "/v1/calls/{cid}/whip",
        ["v1", "calls", _, "whip", _] => "/v1/calls/{cid}/whip/{sid}",
        _ => "other",
    }
}

fn preflight() -> Response<Body> {
    let mut r = reply(StatusCode::NO_CONTENT);
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match, If-None-Match"),
    );
    h.insert("accept-post", HeaderValue::from_static("application/sdp"));
    h.insert(
        "accept-patch",
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    r
}

async fn authorised(
    shared: &Arc<Shared>,
    peer: IpAddr,
    method: &Method,
    segs: &[String],
    req: Request<Incoming>,
) -> Response<Body> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let token = bearer.and_then(|b| shared.tokens.check(b));
    let Some(token) = token else {
        let key = peer.to_string();
        if let Err(wait) = shared.auth_failures.take(&key, Instant::now()) {
            tracing::warn!(%peer, "Too many requests with a missing or wrong token.");
            return too_many(wait);
        }
        tracing::warn!(%peer, given = bearer.is_some(), "LAN request without a valid token refused.");
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "an enrolled bearer token is required (heim sig enrol)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"heim\""),
        );
        return r;
    };
    if matches!(*method, Method::POST | Method::PATCH | Method::DELETE)
        && let Err(wait) = shared.limit.take(&token, Instant::now())
    {
        tracing::warn!(client = %token, "Rate limit reached.");
        return too_many(wait);
    }
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (method, s.as_slice()) {
        (&Method::POST, ["v1", "calls"]) => create(shared, &token, req).await,
        (&Method::GET, ["v1", "calls"]) => list(shared, &token, req).await,
        (&Method::GET, ["v1", "calls", cid]) => view(shared, &token, cid, req).await,
        (&Method::DELETE, ["v1", "calls", cid]) => {
            match shared.with(|m, now| m.hangup(&token, cid, None, now)) {
                Ok(()) => reply(StatusCode::OK),
                Err(r) => refusal(&r),
            }
        }
        (&Method::POST, ["v1", "calls", cid, "accept"]) => {
            match shared.with(|m, now| m.accept(&token, cid, now)) {
                Ok(v) => json(StatusCode::OK, &v),
                Err(r) => refusal(&r),
            }
        }
        (&Method::POST, ["v1", "calls", cid, "whip"]) => offer(shared, &token, cid, req).await,
        (&Method::PATCH, ["v1", "calls", cid, "whip", sid]) => {
            patch(shared, &token, cid, sid, req).await
        }
        (&Method::DELETE, ["v1", "calls", cid, "whip", sid]) => {
            match shared.with(|m, now| m.hangup(&token, cid, Some(sid), now)) {
                Ok(()) => reply(StatusCode::OK),
                Err(r) => refusal(&r),
            }
        }
        (&Method::GET, ["v1", "calls", _, "whip"] | ["v1", "calls", _, "whip", _]) => {
            reply(StatusCode::NO_CONTENT)
        }
        (_, ["v1", "calls", ..]) => error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

fn too_many(wait: Duration) -> Response<Body> {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests; slow down",
    );
    let secs = wait.as_secs().max(1).to_string();
    if let Ok(v) = HeaderValue::from_str(&secs) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    to: String,
    #[serde(default)]
    #[allow(dead_code)]
    note: Option<String>,
}

async fn create(shared: &Arc<Shared>, token: &str, req: Request<Incoming>) -> Response<Body> {
    if !content_type_is(req.headers(), "application/json") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/json: {\"to\": \"team:…\"}",
        );
    }
    let b = match body(req, 4096).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(c) = serde_json::from_slice::<CreateBody>(&b) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be {\"to\": \"…\", \"note\": \"…\"}",
        );
    };
    match shared.with(|m, now| m.create(token, &c.to, now)) {
        Ok(v) => {
            let mut r = json(StatusCode::CREATED, &v);
            if let Ok(loc) = HeaderValue::from_str(&format!("/v1/calls/{}", v.call)) {
                r.headers_mut().insert(header::LOCATION, loc);
            }
            etag(&mut r, v.version);
            r
        }
        Err(r) => refusal(&r),
    }
}

fn etag(r: &mut Response<Body>, version: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("\"v{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
}

fn if_none_match(h: &HeaderMap) -> Option<String> {
    h.get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_owned())
}

/// Waits (up to `wait`) until `version()` differs from the client's ETag.
async fn long_poll(
    shared: &Arc<Shared>,
    known: Option<String>,
    wait: Duration,
    mut version: impl FnMut() -> Result<u64, Refusal>,
) -> Result<Option<u64>, Refusal> {
    let mut rx = shared.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let v = version()?;
        if known.as_deref() != Some(format!("\"v{v}\"").as_str()) {
            return Ok(Some(v));
        }
        if wait.is_zero() {
            return Ok(None);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => return Ok(None),
        }
    }
}

async fn view(
    shared: &Arc<Shared>,
    token: &str,
    cid: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    let known = if_none_match(req.headers());
    let wait = wait_param(&req);
    let polled = long_poll(shared, known, wait, || {
        shared.with(|m, now| m.view(token, cid, now).map(|v| v.version))
    })
    .await;
    match polled {
        Ok(None) => reply(StatusCode::NOT_MODIFIED),
        Ok(Some(_)) => match shared.with(|m, now| m.view(token, cid, now)) {
            Ok(v) => {
                let mut r = json(StatusCode::OK, &v);
                etag(&mut r, v.version);
                r
            }
            Err(r) => refusal(&r),
        },
        Err(r) => refusal(&r),
    }
}

async fn list(shared: &Arc<Shared>, token: &str, req: Request<Incoming>) -> Response<Body> {
    let known = if_none_match(req.headers());
    let wait = wait_param(&req);
    let polled = long_poll(shared, known, wait, || {
        Ok(shared.with(|m, _| m.list_version(token)))
    })
    .await;
    match polled {
        Ok(None) => reply(StatusCode::NOT_MODIFIED),
        _ => {
            let (calls, version) =
                shared.with(|m, now| (m.list(token, now), m.list_version(token)));
            let mut r = json(StatusCode::OK, &serde_json::json!({ "calls": calls }));
            etag(&mut r, version);
            r
        }
    }
}

/// Hangs the call up if the held POST is dropped (the client went away) before it was answered.
struct HeldOffer<'a> {
    shared: &'a Arc<Shared>,
    token: &'a str,
    cid: &'a str,
    done: bool,
}

impl Drop for HeldOffer<'_> {
    fn drop(&mut self) {
        if !self.done {
            tracing::info!("The LAN client went away during negotiation; hanging up.");
            let _ = self
                .shared
                .with(|m, now| m.hangup(self.token, self.cid, None, now));
        }
    }
}

async fn offer(
    shared: &Arc<Shared>,
    token: &str,
    cid: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    if !content_type_is(req.headers(), "application/sdp") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the offer must be application/sdp",
        );
    }
    let b = match body(req, MAX_SDP).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let (sdp, summary) = match sdp::check(&b) {
        Ok(x) => x,
        Err(e) => return sdp_refusal(&e),
    };
    drop(b);
    let mut rx = shared.subscribe();
    if let Err(r) = shared.with(|m, now| m.offer(token, cid, sdp, summary, now)) {
        return refusal(&r);
    }
    let mut held = HeldOffer {
        shared,
        token,
        cid,
        done: false,
    };
    // The machine's answer timer decides; this is only a backstop.
    let backstop = tokio::time::Instant::now() + shared.answer_wait + Duration::from_secs(5);
    loop {
        match shared.with(|m, _| m.outcome(token, cid)) {
            Err(r) => {
                held.done = true;
                return refusal(&r);
            }
            Ok(Some(Outcome::Answered(a))) => {
                held.done = true;
                let mut r =
                    Response::new(Full::new(Bytes::copy_from_slice(a.sdp.expose().as_bytes())));
                *r.status_mut() = StatusCode::CREATED;
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/sdp"),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("/v1/calls/{cid}/whip/{}", a.sid)) {
                    h.insert(header::LOCATION, v);
                }
                if let Ok(v) = HeaderValue::from_str(&a.etag) {
                    h.insert(header::ETAG, v);
                }
                for s in &a.ice_servers {
                    for url in &s.urls {
                        let mut link = format!("<{url}>; rel=\"ice-server\"");
                        if let Some(u) = &s.username {
                            link.push_str(&format!("; username={}", quote(u)));
                        }
                        if let Some(c) = &s.credential {
                            link.push_str(&format!(
                                "; credential={}; credential-type=\"password\"",
                                quote(c.expose())
                            ));
                        }
                        if let Ok(v) = HeaderValue::from_str(&link) {
                            h.append(header::LINK, v);
                        }
                    }
                }
                return r;
            }
            Ok(Some(Outcome::AnswerTimeout)) => {
                held.done = true;
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the hospital did not answer in time; the call is over",
                );
            }
            Ok(Some(Outcome::Ended(reason))) => {
                held.done = true;
                return error(
                    StatusCode::CONFLICT,
                    &format!("the call ended before it was answered: {reason}"),
                );
            }
            Ok(None) => {}
        }
        match tokio::time::timeout_at(backstop, rx.changed()).await {
            Ok(Ok(())) => {}
            _ => {
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the hospital did not answer in time",
                );
            }
        }
    }
}

async fn patch(
    shared: &Arc<Shared>,
    token: &str,
    cid: &str,
    sid: &str,
    req: Request<Incoming>,
) -> Response<Body> {
    if !content_type_is(req.headers(), "application/trickle-ice-sdpfrag") {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "PATCH takes application/trickle-ice-sdpfrag",
        );
    }
    let if_match = req
        .headers()
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let b = match body(req, MAX_SDP).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let frag = match sdp::parse_frag(&b) {
        Ok(f) => f,
        Err(e) => return sdp_refusal(&e),
    };
    match shared.with(|m, _| m.patch(token, cid, sid, if_match.as_deref(), frag)) {
        Ok(_) => reply(StatusCode::NO_CONTENT),
        Err(r) => refusal(&r),
    }
}

/// Serves the API until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let conns = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Accepting a LAN connection failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "Too many LAN connections; refusing one.");
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let _permit = permit;
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed.");
                        return;
                    }
                    Err(_) => return,
                };
            let ip = peer.ip();
            let svc = hyper::service::service_fn(move |req| handle(shared.clone(), ip, req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(tls), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "LAN connection ended with an error.");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn).await;
                }
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(Duration::from_secs(3), conns.wait()).await;
}
