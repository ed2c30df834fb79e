//! The gateway's configuration: the TOML file's shape, its defaults, and its validation.
//!
//! The file is the reference: every field has a doc comment, unknown keys are refused
//! (`deny_unknown_fields`), and every refusal names the file, the line and the reason in plain words
//! (`heim check-config` runs this and nothing else; the systemd unit runs it as `ExecStartPre`).
//! Relative paths are taken relative to the directory holding the config file, so a config and its
//! certificates can move together.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// A refused config file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid, with where and why.
    #[error("{path}:{line}:{column}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, in plain words.
        reason: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This gateway's id: part of every MQTT topic (`heim/v1/{gateway_id}/…`) and of the MQTT client
    /// id. Letters, digits, `-`, `_` and `.` only.
    pub gateway_id: Spanned<String>,
    /// The patient's logical id on the hospital's FHIR server (`Patient/{patient}`), given out of
    /// band. Never a national identity number.
    pub patient: Spanned<String>,
    /// The durable outbox.
    pub store: StoreConfig,
    /// The MQTT connection to the hospital.
    pub uplink: UplinkConfig,
    /// The local control socket (`heim status`, device commands).
    #[serde(default)]
    pub control: ControlConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The gateway clock.
    #[serde(default)]
    pub clock: ClockConfig,
    /// Where readings come from.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceConfig>,
    /// The patient's care plan (optional: without it readings flow unlinked).
    #[serde(default)]
    pub careplan: Option<CareplanConfig>,
    /// HoloLens video sessions brokered as signalling only (optional: without it no LAN port is
    /// opened).
    #[serde(default)]
    pub signalling: Option<SignallingConfig>,
    /// The directory holding the config file; relative paths resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// `[store]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// The SQLite file. Its directory must be writable (WAL needs `-wal` and `-shm` beside it).
    pub path: Spanned<PathBuf>,
    /// Size limit for the outbox, in bytes. At 90 % an alarm goes on the status topic; at the limit
    /// sources are held back (they keep their readings) until the uplink has drained some.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// How many readings one outbox transaction takes at most.
    #[serde(default = "default_write_batch")]
    pub write_batch: usize,
}

const fn default_max_bytes() -> u64 {
    2 * 1024 * 1024 * 1024
}
const fn default_write_batch() -> usize {
    1024
}

/// `[uplink]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Broker host name or address.
    pub host: Spanned<String>,
    /// Broker port (MQTT over TLS, normally 8883).
    #[serde(default = "default_port")]
    pub port: u16,
    /// PEM file with the CA certificate(s) the broker's certificate must chain to.
    pub ca: Spanned<PathBuf>,
    /// PEM file with this gateway's client certificate (chain), for mutual TLS.
    pub cert: Spanned<PathBuf>,
    /// PEM file with the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Spanned<PathBuf>,
    /// The name the broker's certificate must carry; defaults to `host`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// MQTT client id; defaults to `heim-{gateway_id}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Readings per MQTT message (one FHIR transaction Bundle) when draining a backlog.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Messages published and not yet acknowledged (PUBACK) at most.
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// MQTT keep-alive, seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// First reconnect delay, milliseconds.
    #[serde(default = "default_backoff_min")]
    pub backoff_min_ms: u64,
    /// Reconnect delay cap, milliseconds. Each delay is drawn uniformly from 0..=min(cap, min·2^n)
    /// ("full jitter"), so a fleet does not reconnect in lockstep after a broker restart.
    #[serde(default = "default_backoff_max")]
    pub backoff_max_ms: u64,
}

const fn default_port() -> u16 {
    8883
}
/// 50 readings (~60 kB of JSON) per message: measured, 100 buys ~30 % more online throughput
/// (still far above need) for ~2.5 MB more peak RSS on a Pi; see README "Performance".
const fn default_batch() -> usize {
    50
}
/// 16 Bundles of 100 readings is ~2 MB that rumqttc keeps for retransmission; more buys nothing
/// on a home uplink (measured: the drain rate is at the raw ceiling with 16) and costs RSS.
const fn default_inflight() -> u16 {
    16
}
const fn default_keep_alive() -> u64 {
    30
}
const fn default_backoff_min() -> u64 {
    250
}
const fn default_backoff_max() -> u64 {
    10_000
}

/// `[control]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// The Unix socket `heim status` talks to; defaults to `heim.sock` beside the store.
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

/// `[clock]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockConfig {
    /// When the system clock counts as synchronised: `auto` (systemd-timesyncd says so),
    /// `always` (a board with a real-time clock) or `never`.
    #[serde(default)]
    pub sync: crate::clock::SyncPolicy,
}

/// `[careplan]`: plan intake on `heim/v1/{gateway_id}/careplan`, linking, alerts, missed windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CareplanConfig {
    /// `[[careplan.key]]`: the keys plan envelopes may be signed with. With none, every plan is
    /// refused (`unknown-key`).
    #[serde(default, rename = "key")]
    pub keys: Vec<CareplanKey>,
    /// How often due windows are judged, seconds.
    #[serde(default = "default_careplan_every")]
    pub evaluate_every_s: u64,
}

const fn default_careplan_every() -> u64 {
    30
}

/// `[[careplan.key]]`: one trusted plan-signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CareplanKey {
    /// The key id the envelope's `kid` names.
    pub kid: String,
    /// PEM file with the ES256 (P-256) public key (`-----BEGIN PUBLIC KEY-----`).
    pub public_key: Spanned<PathBuf>,
}

/// `[signalling]`: the LAN API for headsets and the `sig/*` topics to the hospital.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignallingConfig {
    /// Address and port of the HTTPS API on the LAN, e.g. `0.0.0.0:8443`.
    pub listen: Spanned<String>,
    /// Server certificate (PEM chain). With `key`; when both are absent the gateway makes its own
    /// (a CA of its own plus a server certificate for `names`) in `signalling/` beside the store.
    #[serde(default)]
    pub cert: Option<Spanned<PathBuf>>,
    /// The server certificate's key.
    #[serde(default)]
    pub key: Option<Spanned<PathBuf>>,
    /// Host names and addresses the generated certificate carries.
    #[serde(default = "default_sig_names")]
    pub names: Vec<String>,
    /// The enrolled clients' token hashes (`heim sig enrol`); defaults to `signalling/tokens.json`
    /// beside the store.
    #[serde(default)]
    pub tokens: Option<PathBuf>,
    /// The hospital signalling service's retained presence topic; when it says `offline`, calls
    /// are hung up and new rings refused.
    #[serde(default = "default_hospital_presence")]
    pub hospital_presence: String,
    /// Concurrent calls at most.
    #[serde(default = "default_max_calls")]
    pub max_calls: usize,
    /// Ring lifetime, seconds (both directions).
    #[serde(default = "default_ring_s")]
    pub ring_s: u64,
    /// From accept to the LAN client's offer, seconds.
    #[serde(default = "default_offer_s")]
    pub offer_s: u64,
    /// How long a `POST …/whip` is held for the hospital's answer, seconds (then 504).
    #[serde(default = "default_answer_s")]
    pub answer_s: u64,
    /// Longest call, seconds.
    #[serde(default = "default_max_call_s")]
    pub max_call_s: u64,
    /// How long an ended call answers late events with `hangup`, seconds.
    #[serde(default = "default_tombstone_s")]
    pub tombstone_s: u64,
    /// POST, PATCH and DELETE requests per token per minute.
    #[serde(default = "default_rate_per_minute")]
    pub rate_per_minute: u32,
    /// Burst above that rate.
    #[serde(default = "default_rate_burst")]
    pub rate_burst: u32,
    /// Events from the hospital (`sig/down`) per minute at most, a flood guard (a call takes about
    /// ten); beyond it events are dropped and counted.
    #[serde(default = "default_inbound_per_minute")]
    pub inbound_per_minute: u32,
    /// `[[signalling.hospital_key]]`: when any is given, every `sig/down` event must be a JWS
    /// (ES256, `typ` `heim-sig+jws`, `aud` this gateway) signed by one of them, so not even the
    /// broker can swap an answer's DTLS fingerprint. Same form as `[[careplan.key]]`.
    #[serde(default, rename = "hospital_key")]
    pub hospital_keys: Vec<CareplanKey>,
}

const fn default_inbound_per_minute() -> u32 {
    600
}

fn default_sig_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}
fn default_hospital_presence() -> String {
    "heim/v1/hospital/sig/presence".into()
}
const fn default_max_calls() -> usize {
    1
}
const fn default_ring_s() -> u64 {
    90
}
const fn default_offer_s() -> u64 {
    30
}
const fn default_answer_s() -> u64 {
    20
}
const fn default_max_call_s() -> u64 {
    7200
}
const fn default_tombstone_s() -> u64 {
    60
}
const fn default_rate_per_minute() -> u32 {
    60
}
const fn default_rate_burst() -> u32 {
    20
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `heim=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` (journald adds the timestamp) or `json`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}
const fn default_log_format() -> LogFormat {
    LogFormat::Text
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of `key=value` fields per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// `[[source]]`: one source of readings.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// Deterministic simulated devices (demo, tests, benchmarks).
    Simulated(SimulatedConfig),
    /// Bluetooth LE health devices (SIG health profiles), see [`crate::sources::ble::BleConfig`].
    Ble(crate::sources::ble::BleConfig),
    /// A sensor node on a serial line, see [`crate::sources::serial::SerialConfig`].
    Serial(crate::sources::serial::SerialConfig),
}

impl SourceConfig {
    /// The source's name (unique in the config).
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Simulated(s) => &s.name,
            SourceConfig::Ble(s) => &s.name,
            SourceConfig::Serial(s) => &s.name,
        }
    }
}

/// `[[source]] kind = "simulated"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Name, unique among sources.
    pub name: String,
    /// Stop after this many readings (numbered 1..=count); absent = forever.
    #[serde(default)]
    pub count: Option<u64>,
    /// Pause between readings, milliseconds; 0 = as fast as the store accepts.
    #[serde(default)]
    pub interval_ms: u64,
    /// How many simulated devices the readings rotate over (each device gets its own id).
    #[serde(default = "default_sim_devices")]
    pub devices: u16,
}

const fn default_sim_devices() -> u16 {
    5
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        let invalid = |span: Option<std::ops::Range<usize>>, reason: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            Error::Invalid {
                path: path.to_owned(),
                line,
                column,
                reason,
            }
        };
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let mut reason = plain_reason(e.message());
            let span = refine_span(text, e.span(), &reason);
            // Name the key when the message does not ("invalid value: integer `-5`…").
            if let Some(key) = span
                .as_ref()
                .and_then(|s| text.get(s.start..))
                .and_then(|rest| rest.lines().next())
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !reason.contains(*k))
            {
                reason = format!("{key}: {reason}");
            }
            invalid(span, reason)
        })?;
        cfg.base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        cfg.validate()
            .map_err(|(span, reason)| invalid(span, reason))?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        check_id(&self.gateway_id, "gateway_id")?;
        check_id(&self.patient, "patient")?;
        // A Norwegian national identity number (fødselsnummer) is 11 digits: refuse anything that
        // looks like one, since it must never travel in a topic or a log.
        let p = self.patient.get_ref();
        if p.len() == 11 && p.bytes().all(|b| b.is_ascii_digit()) {
            return Err((
                Some(self.patient.span()),
                "patient looks like a national identity number (11 digits); use the logical id from the hospital's FHIR server".into(),
            ));
        }
        if self.uplink.host.get_ref().is_empty() {
            return Err((Some(self.uplink.host.span()), "uplink.host is empty".into()));
        }
        if self.uplink.batch == 0 || self.uplink.batch > 10_000 {
            return Err((None, "uplink.batch must be between 1 and 10000".into()));
        }
        if self.uplink.inflight == 0 {
            return Err((None, "uplink.inflight must be at least 1".into()));
        }
        if self.uplink.backoff_min_ms == 0
            || self.uplink.backoff_min_ms > self.uplink.backoff_max_ms
        {
            return Err((
                None,
                "uplink.backoff_min_ms must be at least 1 and not above uplink.backoff_max_ms"
                    .into(),
            ));
        }
        if self.store.write_batch == 0 {
            return Err((None, "store.write_batch must be at least 1".into()));
        }
        if self.store.max_bytes < 1024 * 1024 {
            return Err((None, "store.max_bytes must be at least 1 MiB".into()));
        }
        for f in [&self.uplink.ca, &self.uplink.cert, &self.uplink.key] {
            let p = self.resolve(f.get_ref());
            if !p.is_file() {
                return Err((
                    Some(f.span()),
                    format!("{} does not exist or is not a file", p.display()),
                ));
            }
        }
        if let Some(cp) = &self.careplan {
            if cp.evaluate_every_s == 0 {
                return Err((None, "careplan.evaluate_every_s must be at least 1".into()));
            }
            self.check_keys(&cp.keys, "careplan")?;
        }
        if let Some(sig) = &self.signalling {
            if sig
                .listen
                .get_ref()
                .parse::<std::net::SocketAddr>()
                .is_err()
            {
                return Err((
                    Some(sig.listen.span()),
                    "signalling.listen must be an address and port, e.g. \"0.0.0.0:8443\"".into(),
                ));
            }
            match (&sig.cert, &sig.key) {
                (Some(c), Some(k)) => {
                    for f in [c, k] {
                        let p = self.resolve(f.get_ref());
                        if !p.is_file() {
                            return Err((
                                Some(f.span()),
                                format!("{} does not exist or is not a file", p.display()),
                            ));
                        }
                    }
                }
                (None, None) => {}
                (Some(f), None) | (None, Some(f)) => {
                    return Err((
                        Some(f.span()),
                        "signalling.cert and signalling.key go together (or leave both out to have one made)".into(),
                    ));
                }
            }
            if sig.max_calls == 0 || sig.max_calls > 4 {
                return Err((None, "signalling.max_calls must be between 1 and 4".into()));
            }
            for (v, name) in [
                (sig.ring_s, "ring_s"),
                (sig.offer_s, "offer_s"),
                (sig.answer_s, "answer_s"),
                (sig.max_call_s, "max_call_s"),
                (sig.tombstone_s, "tombstone_s"),
            ] {
                if v == 0 || v > 86_400 {
                    return Err((
                        None,
                        format!("signalling.{name} must be between 1 and 86400 seconds"),
                    ));
                }
            }
            if sig.rate_per_minute == 0 || sig.rate_burst == 0 || sig.inbound_per_minute == 0 {
                return Err((
                    None,
                    "signalling.rate_per_minute, rate_burst and inbound_per_minute must be at least 1".into(),
                ));
            }
            self.check_keys(&sig.hospital_keys, "signalling")?;
            if sig.hospital_presence.is_empty() || sig.hospital_presence.contains(['+', '#']) {
                return Err((
                    None,
                    "signalling.hospital_presence must be a topic name without wildcards".into(),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for s in &self.sources {
            if !names.insert(s.name()) {
                return Err((None, format!("two sources are named {:?}", s.name())));
            }
            match s {
                SourceConfig::Simulated(sim) if sim.devices == 0 => {
                    return Err((
                        None,
                        format!("source {:?}: devices must be at least 1", sim.name),
                    ));
                }
                SourceConfig::Simulated(_) => {}
                SourceConfig::Ble(ble) => ble.validate().map_err(|reason| (None, reason))?,
                SourceConfig::Serial(ser) if ser.baud == 0 => {
                    return Err((None, format!("source {:?}: baud must be above 0", ser.name)));
                }
                SourceConfig::Serial(_) => {}
            }
        }
        Ok(())
    }

    /// Signing keys: unique, non-empty ids, each file a P-256 public key.
    fn check_keys(
        &self,
        keys: &[CareplanKey],
        what: &str,
    ) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
        let mut kids = std::collections::HashSet::new();
        for k in keys {
            if k.kid.is_empty() || !kids.insert(k.kid.as_str()) {
                return Err((
                    Some(k.public_key.span()),
                    format!("{what} key id {:?} is empty or used twice", k.kid),
                ));
            }
            let p = self.resolve(k.public_key.get_ref());
            let mut trusted = crate::careplan::envelope::TrustedKeys::default();
            if let Err(e) = trusted.add_file(&k.kid, &p) {
                return Err((Some(k.public_key.span()), e.to_string()));
            }
        }
        Ok(())
    }

    /// A path from the config, resolved against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The store file.
    pub fn store_path(&self) -> PathBuf {
        self.resolve(self.store.path.get_ref())
    }

    /// The control socket.
    pub fn socket_path(&self) -> PathBuf {
        match &self.control.socket {
            Some(p) => self.resolve(p),
            None => {
                let store = self.store_path();
                store.with_file_name("heim.sock")
            }
        }
    }

    /// Where the gateway keeps its generated signalling certificate and, by default, the token file.
    pub fn signalling_dir(&self) -> PathBuf {
        self.store_path().with_file_name("signalling")
    }

    /// The signalling token file.
    pub fn signalling_tokens(&self) -> PathBuf {
        match self.signalling.as_ref().and_then(|s| s.tokens.as_ref()) {
            Some(p) => self.resolve(p),
            None => self.signalling_dir().join("tokens.json"),
        }
    }

    /// `heim/v1/{gateway_id}`.
    pub fn topic_root(&self) -> String {
        format!("heim/v1/{}", self.gateway_id.get_ref())
    }
}

fn check_id(
    v: &Spanned<String>,
    what: &str,
) -> Result<(), (Option<std::ops::Range<usize>>, String)> {
    let s = v.get_ref();
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err((
            Some(v.span()),
            format!(
                "{what} must be 1 to 64 letters, digits, '-', '_' or '.' (it goes into MQTT topics and FHIR ids)"
            ),
        ))
    }
}

/// Errors inside an internally tagged table (`[[source]] kind = …`) come back spanning the whole
/// table (serde buffers it to read the tag first). Point at the offending line instead: the key
/// named by "unknown field `k`", or the line whose value is the quoted token of "invalid value:
/// integer `-5`" / "unknown variant `telepathy`".
fn refine_span(
    text: &str,
    span: Option<std::ops::Range<usize>>,
    reason: &str,
) -> Option<std::ops::Range<usize>> {
    let span = span?;
    let token = reason.split('`').nth(1);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Some(span);
    };
    let is_key = reason.starts_with("unknown field");
    // The span may cover only the table header: scan to the next header.
    let body = text.get(span.start..)?;
    let mut offset = span.start;
    for (i, line) in body.split_inclusive('\n').enumerate() {
        let t = line.trim_start();
        if i > 0 && t.starts_with('[') {
            break;
        }
        let hit = match t.split_once('=') {
            Some((k, _)) if is_key => k.trim() == token,
            Some((_, v)) => {
                let v = v.split('#').next().unwrap_or("").trim().trim_matches('"');
                v == token
            }
            None => false,
        };
        if hit {
            let at = offset + (line.len() - t.len());
            return Some(at..at + t.len());
        }
        offset += line.len();
    }
    Some(span)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, column)
}

/// toml's messages are already plain ("unknown field `colour`, expected one of …"); keep the first
/// line only, since the position is given separately.
fn plain_reason(msg: &str) -> String {
    msg.lines().next().unwrap_or(msg).trim().to_string()
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_certs(extra: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "gw.pem", "gw.key"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        let text = format!(
            "gateway_id = \"gw-1\"\npatient = \"p-1\"\n[store]\npath = \"h.db\"\n[uplink]\nhost = \"127.0.0.1\"\nca = \"ca.pem\"\ncert = \"gw.pem\"\nkey = \"gw.key\"\n{extra}"
        );
        (dir, text)
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let (dir, text) = with_certs("[[source]]\nkind = \"simulated\"\nname = \"sim\"\n");
        let cfg = Config::parse(&text, &dir.path().join("heim.toml")).unwrap();
        assert_eq!(cfg.uplink.port, 8883);
        assert_eq!(cfg.sources.len(), 1);
        assert_eq!(cfg.store_path(), dir.path().join("h.db"));
        assert_eq!(cfg.topic_root(), "heim/v1/gw-1");
    }

    #[test]
    fn unknown_key_names_line() {
        let (dir, text) =
            with_certs("[[source]]\nkind = \"simulated\"\nname = \"sim\"\ncolour = 3\n");
        let err = Config::parse(&text, &dir.path().join("heim.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("heim.toml:13:"), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
    }

    #[test]
    fn ble_source_loads_with_defaults() {
        let (dir, text) =
            with_certs("[[source]]\nkind = \"ble\"\nname = \"ble\"\nadapter = \"hci1\"\n");
        let cfg = Config::parse(&text, &dir.path().join("heim.toml")).unwrap();
        let SourceConfig::Ble(ble) = &cfg.sources[0] else {
            panic!("{:?}", cfg.sources)
        };
        assert_eq!(ble.adapter.as_deref(), Some("hci1"));
        assert_eq!(ble.max_connections, 3);
        let (dir, text) =
            with_certs("[[source]]\nkind = \"ble\"\nname = \"ble\"\nmax_connections = 0\n");
        let msg = Config::parse(&text, &dir.path().join("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("max_connections"), "{msg}");
    }

    #[test]
    fn unknown_source_kind_refused() {
        let (dir, text) = with_certs("[[source]]\nkind = \"telepathy\"\nname = \"x\"\n");
        let msg = Config::parse(&text, &dir.path().join("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("telepathy"), "{msg}");
    }

    #[test]
    fn national_id_refused() {
        let (dir, text) = with_certs("");
        let text = text.replace("p-1", "01017012345");
        let msg = Config::parse(&text, &dir.path().join("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("c.toml:2:"), "{msg}");
        assert!(msg.contains("national identity"), "{msg}");
    }

    #[test]
    fn missing_cert_file_refused_with_line() {
        let (dir, text) = with_certs("");
        std::fs::remove_file(dir.path().join("gw.key")).unwrap();
        let msg = Config::parse(&text, &dir.path().join("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("c.toml:9:"), "{msg}");
    }

    #[test]
    fn bad_value_type_refused() {
        let (dir, text) = with_certs("");
        let text = text.replace("[uplink]\n", "[uplink]\nport = \"eighty\"\n");
        let msg = Config::parse(&text, &dir.path().join("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("c.toml:6:"), "{msg}");
    }

    #[test]
    fn careplan_section_with_keys() {
        let signer = crate::careplan::envelope::signer::Signer::generate();
        let (dir, text) =
            with_certs("[careplan]\n[[careplan.key]]\nkid = \"k1\"\npublic_key = \"plan.pem\"\n");
        std::fs::write(dir.path().join("plan.pem"), signer.public_pem()).unwrap();
        let cfg = Config::parse(&text, &dir.path().join("heim.toml")).unwrap();
        let cp = cfg.careplan.unwrap();
        assert_eq!(cp.keys[0].kid, "k1");
        assert_eq!(cp.evaluate_every_s, 30);
        // A key file that is not an ES256 public key is refused, naming the line.
        std::fs::write(dir.path().join("plan.pem"), "x").unwrap();
        let msg = Config::parse(&text, &dir.path().join("heim.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("heim.toml:13:") && msg.contains("P-256"),
            "{msg}"
        );
    }
}
