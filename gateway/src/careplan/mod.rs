//! The patient's care plan on the edge (issue 5).
//!
//! The plan arrives as a signed, retained MQTT message on `heim/v1/{gateway_id}/careplan`, and
//! the gateway then works from it with or without a connection:
//!
//! * [`envelope`]: verifying the JWS (ES256, `kid`, `aud`, `seq`, `exp`) and the refusal reasons;
//! * [`plan`]: the FHIR Bundle (CarePlan + ServiceRequests, tolerance and alert-range extensions);
//! * [`timing`]: measurement windows in the plan's time zone, DST-correct;
//! * [`link`]: which ServiceRequest and window a reading answers, its ranges and interpretation,
//!   and the Observation fields saying so;
//! * [`missed`]: windows that fall due without enough readings → FHIR `DetectedIssue`.
//!
//! [`Careplan`] is the stateful part. It owns three tables (migration `0002_careplan.sql`), used
//! through [`Outbox::with_conn`]:
//! * `careplan`: the current plan's envelope and `seq`, replaced in one SQLite transaction, so a
//!   plan is either wholly stored or not at all, and survives `kill -9`;
//! * `careplan_link`: every linked reading, written **before** the reading's own outbox append
//!   (so a stored reading always has its link; a crash in between leaves a link whose reading the
//!   source re-sends with the same id, and the stored link is reused);
//! * `careplan_window`: a ledger of judged windows.
//!
//! # Invariants
//! * **A broken plan never stops readings.** The [`Tap`](crate::store::Tap) logs and counts its
//!   failures and lets the append through unlinked.
//! * **Judged exactly once.** Due windows are judged over `(judged_until, now]`, and
//!   `judged_until` is the outbox cursor `careplan:judged`, committed in the *same* transaction as
//!   the DetectedIssue events it covers. Windows that closed while the gateway was stopped are
//!   judged at the first evaluation after restart; none twice.
//! * **Clock honesty.** Nothing is judged while the clock is unsynchronised; readings whose time
//!   cannot be trusted are linked as `Unresolved`.
//! * **Alerts first.** A red or yellow reading goes to the priority lane, with an alert event on
//!   `events`, in the same append.

pub mod envelope;
pub mod link;
pub mod missed;
pub mod plan;
pub mod timing;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use heim_shared_types::{Reading, ReadingId};
use rumqttc::v5::mqttbytes::QoS;
use rusqlite::OptionalExtension;
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::{self, Append, Event, Lane, Outbox};
use crate::uplink;
use envelope::{Intake, Refusal, Stored, TrustedKeys};
use link::Linked;
use plan::{Level, Plan};

/// The outbox cursor holding how far due windows have been judged.
pub const JUDGED_CURSOR: &str = "careplan:judged";
/// Links older than this are pruned.
const LINK_RETENTION: chrono::Duration = chrono::Duration::days(60);

/// Care-plan errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// A trusted key could not be loaded.
    #[error(transparent)]
    Key(#[from] envelope::KeyError),
}

/// What the care plan needs from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This gateway's id (`aud`, topics, DetectedIssue identifiers).
    pub gateway_id: String,
    /// The patient's logical id.
    pub patient: String,
    /// Trusted plan-signing keys.
    pub keys: TrustedKeys,
    /// How often due windows are judged.
    pub evaluate_every: Duration,
}

#[derive(Debug, Clone)]
struct Current {
    plan: Arc<Plan>,
    seq: u64,
    applied_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
struct Counters {
    linked: u64,
    link_errors: u64,
    alerts: u64,
    missed: u64,
    refused: u64,
    last_refusal: Option<Value>,
}

#[derive(Debug)]
struct Shared {
    settings: Settings,
    outbox: Outbox,
    clock: Clock,
    current: RwLock<Option<Current>>,
    counters: std::sync::Mutex<Counters>,
    status: watch::Sender<Map<String, Value>>,
}

/// The care-plan component (cheap to clone).
#[derive(Debug, Clone)]
pub struct Careplan {
    shared: Arc<Shared>,
}

/// The retained `careplan/status` message.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusMessage(pub Value);

impl Careplan {
    /// Loads the stored plan (if any) and returns the component. A stored plan whose key is no
    /// longer trusted is not applied (removing a key from the config revokes its plans).
    pub async fn open(settings: Settings, outbox: Outbox, clock: Clock) -> Result<Self, Error> {
        let (status, _) = watch::channel(Map::new());
        let cp = Careplan {
            shared: Arc::new(Shared {
                settings,
                outbox,
                clock,
                current: RwLock::new(None),
                counters: Default::default(),
                status,
            }),
        };
        let stored = cp
            .shared
            .outbox
            .with_conn(|c| {
                c.query_row(
                    "SELECT envelope, seq, applied_at FROM careplan WHERE id = 1 AND envelope IS NOT NULL",
                    [],
                    |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
                )
                .optional()
            })
            .await?;
        if let Some((env, seq, applied_ms)) = stored {
            let s = &cp.shared.settings;
            // Expiry was checked on intake; a plan that lapsed while we were stopped still bounds
            // its windows by its own period.
            match envelope::accept(&env, &s.keys, &s.gateway_id, &s.patient, i64::MIN, None) {
                Ok(Intake::New(a)) => {
                    tracing::info!(plan = %a.plan.id, seq, "Care plan loaded.");
                    *cp.write() = Some(Current {
                        plan: Arc::new(a.plan),
                        seq: seq as u64,
                        applied_at: DateTime::from_timestamp_millis(applied_ms).unwrap_or_default(),
                    });
                }
                Ok(Intake::Same) => {}
                Err(r) => tracing::warn!(
                    reason = r.code(),
                    "The stored care plan is no longer valid; not applied."
                ),
            }
        }
        cp.refresh_status().await;
        Ok(cp)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Current>> {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<Current>> {
        self.shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The plan in force.
    pub fn plan(&self) -> Option<Arc<Plan>> {
        self.read().as_ref().map(|c| c.plan.clone())
    }

    /// The tap to put on the sources' outbox handle ([`Outbox::with_tap`]).
    pub fn tap(&self) -> Arc<dyn store::Tap> {
        Arc::new(self.clone())
    }

    /// `heim status` members (`careplan`, `alarms`), refreshed after every change.
    pub fn status(&self) -> watch::Receiver<Map<String, Value>> {
        self.shared.status.subscribe()
    }

    /// Handles one message from the plan topic: verify, store, apply — or refuse. Returns the
    /// retained status message to publish.
    pub async fn intake(&self, payload: &[u8]) -> Result<StatusMessage, Error> {
        let now = self.shared.clock.now();
        let at = DateTime::from_timestamp_millis(now.unix_millis).unwrap_or_default();
        let at_s = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let stored = self
            .shared
            .outbox
            .with_conn(|c| {
                c.query_row(
                    "SELECT seq, digest, envelope IS NOT NULL FROM careplan WHERE id = 1",
                    [],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, bool>(2)?,
                        ))
                    },
                )
                .optional()
            })
            .await?;
        if payload.is_empty() {
            self.shared
                .outbox
                .with_conn(|c| c.execute("UPDATE careplan SET envelope = NULL WHERE id = 1", []))
                .await?;
            *self.write() = None;
            tracing::info!("Care plan cleared (empty retained message).");
            self.refresh_status().await;
            return Ok(StatusMessage(json!({
                "plan_id": null,
                "seq": stored.as_ref().map(|s| s.0),
                "status": "cleared",
                "applied_at": at_s,
            })));
        }
        let s = &self.shared.settings;
        let stored_ref = stored.as_ref().map(|(seq, d, _)| Stored {
            seq: *seq as u64,
            digest: d.as_slice().try_into().unwrap_or([0; 32]),
        });
        let outcome = envelope::accept(
            payload,
            &s.keys,
            &s.gateway_id,
            &s.patient,
            now.unix_millis.div_euclid(1000),
            stored_ref,
        );
        match outcome {
            Ok(Intake::Same) if stored.as_ref().is_some_and(|s| s.2) => {
                let cur = self.read().clone();
                Ok(StatusMessage(json!({
                    "plan_id": cur.as_ref().map(|c| c.plan.id.clone()),
                    "seq": cur.as_ref().map(|c| c.seq),
                    "status": "applied",
                    "applied_at": cur.map(|c| c.applied_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                })))
            }
            // The same envelope after a clear: a replay of a cleared plan, refused like a rollback.
            Ok(Intake::Same) => Ok(self.refused(
                &Refusal::NotNewer {
                    seq: stored_ref.map_or(0, |s| s.seq),
                    stored: stored_ref.map_or(0, |s| s.seq),
                },
                None,
                &at_s,
            )),
            Ok(Intake::New(a)) => {
                // Judge what fell due under the outgoing plan first, so no window slips between.
                if let Err(error) = self.evaluate().await {
                    tracing::warn!(%error, "Judging the outgoing plan's windows failed.");
                }
                let seq = a.header.seq;
                // A clock running behind (a Pi before NTP) must not move `applied_at` into the
                // past: the plan was issued no earlier than `iat`.
                let at = a
                    .header
                    .iat
                    .and_then(|s| DateTime::from_timestamp(s, 0))
                    .map_or(at, |iat| at.max(iat));
                let at_s = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let env = payload.to_vec();
                let digest = envelope::digest(payload).to_vec();
                let ms = at.timestamp_millis();
                self.shared
                    .outbox
                    .with_conn(move |c| {
                        c.execute(
                            "INSERT INTO careplan (id, seq, digest, envelope, applied_at) VALUES (1, ?1, ?2, ?3, ?4)
                             ON CONFLICT (id) DO UPDATE SET seq = ?1, digest = ?2, envelope = ?3, applied_at = ?4",
                            rusqlite::params![seq as i64, digest, env, ms],
                        )
                    })
                    .await?;
                let plan_id = a.plan.id.clone();
                tracing::info!(plan = %plan_id, seq, regimes = a.plan.requests.len(), "Care plan applied.");
                *self.write() = Some(Current {
                    plan: Arc::new(a.plan),
                    seq,
                    applied_at: at,
                });
                self.refresh_status().await;
                Ok(StatusMessage(json!({
                    "plan_id": plan_id,
                    "seq": seq,
                    "status": "applied",
                    "applied_at": at_s,
                })))
            }
            Err(r) => Ok(self.refused(&r, seq_claim(payload), &at_s)),
        }
    }

    fn refused(&self, r: &Refusal, seq: Option<u64>, at: &str) -> StatusMessage {
        tracing::warn!(reason = r.code(), detail = %r, "Care plan refused; the current plan stays.");
        let cur = self.read().clone();
        let v = json!({
            "plan_id": cur.as_ref().map(|c| c.plan.id.clone()),
            "seq": seq,
            "status": "rejected",
            "reason": r.code(),
            "detail": r.to_string(),
            "applied_seq": cur.as_ref().map(|c| c.seq),
            "at": at,
        });
        let mut c = self.counters();
        c.refused += 1;
        c.last_refusal = Some(v.clone());
        StatusMessage(v)
    }

    /// Links the readings of an append, moves alerting ones to the priority lane and adds their
    /// alert events. Never fails: errors are logged, counted, and the append goes on unlinked.
    pub async fn link_append(&self, append: &mut Append) {
        let Some(cur) = self.read().clone() else {
            return;
        };
        if append.readings.is_empty() {
            return;
        }
        let readings: Vec<Reading> = append.readings.iter().map(|(r, _)| *r).collect();
        let plan = cur.plan.clone();
        let now_ms = self.shared.clock.now().unix_millis;
        let result = self
            .shared
            .outbox
            .with_conn(move |c| link_and_record(c, &plan, &readings, now_ms))
            .await;
        let links = match result {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "Could not link readings to the care plan; storing them unlinked.");
                self.counters().link_errors += 1;
                return;
            }
        };
        let mut alerts = 0;
        for ((reading, lane), l) in append.readings.iter_mut().zip(&links) {
            let Some(l) = l else { continue };
            if let Some(level) = l.alert() {
                *lane = Lane::Priority;
                let payload = link::alert_event(
                    &self.shared.settings.gateway_id,
                    reading,
                    l,
                    level,
                    cur.plan.tz,
                );
                append.events.push(Event {
                    topic: "events".into(),
                    payload: payload.to_string().into_bytes(),
                    lane: Lane::Priority,
                });
                alerts += 1;
            }
        }
        {
            let mut c = self.counters();
            c.linked += links.iter().flatten().count() as u64;
            c.alerts += alerts;
        }
        if alerts > 0 {
            tracing::info!(
                alerts,
                "Out-of-range reading: alert queued on the priority lane."
            );
            self.refresh_status().await;
        }
    }

    /// Judges the windows that fell due up to now (if the clock can be trusted). Returns how many
    /// DetectedIssues were raised.
    pub async fn evaluate(&self) -> Result<usize, Error> {
        let now = self.shared.clock.now();
        if !now.synchronized {
            tracing::debug!("Clock not synchronised: no window is judged.");
            self.refresh_status().await;
            return Ok(0);
        }
        self.evaluate_at(DateTime::from_timestamp_millis(now.unix_millis).unwrap_or_default())
            .await
    }

    /// [`evaluate`](Self::evaluate) with an explicit "now" (the caller vouches for the clock).
    pub async fn evaluate_at(&self, now: DateTime<Utc>) -> Result<usize, Error> {
        let Some(cur) = self.read().clone() else {
            return Ok(0);
        };
        let from = match self.shared.outbox.cursor(JUDGED_CURSOR).await? {
            Some(v) => match serde_json::from_slice::<Value>(&v) {
                Ok(j) if j["seq"].as_u64() == Some(cur.seq) => j["until"]
                    .as_i64()
                    .and_then(DateTime::from_timestamp_millis)
                    .unwrap_or(cur.applied_at),
                _ => cur.applied_at,
            },
            None => cur.applied_at,
        };
        // Never judge before the plan was applied (a new plan does not raise its own past).
        let from = from.max(cur.applied_at);
        if now <= from {
            return Ok(0);
        }
        let plan = cur.plan.clone();
        let due = missed::due_between(&plan, from, now);
        let keys: Vec<(String, i64)> = due
            .iter()
            .map(|d| (d.request.id.clone(), d.window.start.timestamp_millis()))
            .collect();
        let counts = self
            .shared
            .outbox
            .with_conn(move |c| {
                let mut q = c.prepare_cached(
                    "SELECT count(*) FROM careplan_link WHERE request = ?1 AND window_start = ?2 AND status = 'Resolved'",
                )?;
                keys.iter()
                    .map(|(r, s)| q.query_row(rusqlite::params![r, s], |row| row.get::<_, u32>(0)))
                    .collect::<Result<Vec<u32>, _>>()
            })
            .await?;
        let s = &self.shared.settings;
        let mut events = Vec::new();
        let mut ledger: Vec<(String, String, i64, u32, u32)> = Vec::with_capacity(due.len());
        for (d, got) in due.iter().zip(counts) {
            if got < d.window.expected {
                let issue = missed::detected_issue(&s.gateway_id, &s.patient, &plan, d, got);
                events.push(Event {
                    topic: "events".into(),
                    payload: issue.to_string().into_bytes(),
                    lane: Lane::Priority,
                });
            }
            ledger.push((
                d.request.id.clone(),
                d.request.version.clone(),
                d.window.start.timestamp_millis(),
                got,
                d.window.expected,
            ));
        }
        let raised = events.len();
        let cursor = json!({"seq": cur.seq, "until": now.timestamp_millis()})
            .to_string()
            .into_bytes();
        // Issues and the judged-until mark commit together: exactly once across restarts.
        self.shared
            .outbox
            .append(Append {
                readings: Vec::new(),
                events,
                cursors: vec![(JUDGED_CURSOR.to_owned(), cursor)],
            })
            .await?;
        let judged_at = now.timestamp_millis();
        let prune_before = (now - LINK_RETENTION).timestamp_millis();
        self.shared
            .outbox
            .with_conn(move |c| {
                let tx = c.transaction()?;
                for (r, v, start, got, exp) in &ledger {
                    tx.execute(
                        "INSERT OR IGNORE INTO careplan_window VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        rusqlite::params![r, v, start, got, exp, judged_at],
                    )?;
                }
                tx.execute(
                    "DELETE FROM careplan_link WHERE linked_at < ?1",
                    [prune_before],
                )?;
                tx.execute(
                    "DELETE FROM careplan_window WHERE judged_at < ?1",
                    [prune_before],
                )?;
                tx.commit()
            })
            .await?;
        if raised > 0 {
            self.counters().missed += raised as u64;
            tracing::info!(raised, "Missed measurement windows: DetectedIssues queued.");
        }
        self.refresh_status().await;
        Ok(raised)
    }

    /// Recomputes the `heim status` members.
    pub async fn refresh_status(&self) {
        let cur = self.read().clone();
        let mut m = Map::new();
        let (counters, last_refusal) = {
            let c = self.counters();
            (
                json!({"linked": c.linked, "link_errors": c.link_errors, "alerts": c.alerts, "missed": c.missed, "refused": c.refused}),
                c.last_refusal.clone(),
            )
        };
        let mut alarms = Vec::new();
        let v = match cur {
            None => json!({"plan": null, "counters": counters, "last_refusal": last_refusal}),
            Some(cur) => {
                let since = (Utc::now() - chrono::Duration::hours(24)).timestamp_millis();
                let q = self
                    .shared
                    .outbox
                    .with_conn(move |c| {
                        let mut last = HashMap::new();
                        let mut st = c.prepare(
                            "SELECT request, max(linked_at) FROM careplan_link GROUP BY request",
                        )?;
                        for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                            let (r, t) = row?;
                            last.insert(r, t);
                        }
                        let red: i64 = c.query_row(
                            "SELECT count(*) FROM careplan_link WHERE alert = 'red' AND linked_at >= ?1",
                            [since],
                            |r| r.get(0),
                        )?;
                        let yellow: i64 = c.query_row(
                            "SELECT count(*) FROM careplan_link WHERE alert = 'yellow' AND linked_at >= ?1",
                            [since],
                            |r| r.get(0),
                        )?;
                        let missed: i64 = c.query_row(
                            "SELECT count(*) FROM careplan_window WHERE received < expected AND judged_at >= ?1",
                            [since],
                            |r| r.get(0),
                        )?;
                        Ok((last, red, yellow, missed))
                    })
                    .await;
                let (last, red, yellow, missed) = q.unwrap_or_default();
                if red > 0 {
                    alarms.push(json!("careplan_red_reading"));
                }
                let now = Utc::now();
                let tz = cur.plan.tz;
                let measurements: Vec<Value> = cur
                    .plan
                    .requests
                    .iter()
                    .map(|r| {
                        let next = r.schedule.next_window(tz, now);
                        json!({
                            "request": r.id,
                            "version": r.version,
                            "kind": r.kind.name(),
                            "next_window": next.map(|w| json!({
                                "start": timing::local_rfc3339(tz, w.start),
                                "end": timing::local_rfc3339(tz, w.end),
                                "expected": w.expected,
                            })),
                            "last_reading": last.get(&r.id).and_then(|t| DateTime::from_timestamp_millis(*t)).map(|t| timing::local_rfc3339(tz, t)),
                        })
                    })
                    .collect();
                json!({
                    "judging": if self.shared.clock.synchronized() { "active" } else { "paused: clock not synchronised" },
                    "plan": {
                        "id": cur.plan.id,
                        "version": cur.plan.version,
                        "seq": cur.seq,
                        "tz": tz.name(),
                        "applied_at": timing::local_rfc3339(tz, cur.applied_at),
                    },
                    "measurements": measurements,
                    "open_alerts": {"red_24h": red, "yellow_24h": yellow, "missed_24h": missed},
                    "counters": counters,
                    "last_refusal": last_refusal,
                })
            }
        };
        m.insert("careplan".into(), v);
        m.insert("alarms".into(), Value::Array(alarms));
        self.shared.status.send_replace(m);
    }

    /// Runs intake and the missed-window judge until `shutdown`.
    pub async fn run(
        self,
        uplink: uplink::Handle,
        topic_root: String,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let plan_topic = format!("{topic_root}/careplan");
        let status_topic = format!("{topic_root}/careplan/status");
        let mut rx = match uplink.subscribe(&plan_topic, 4).await {
            Ok(rx) => Some(rx),
            Err(error) => {
                tracing::warn!(%error, "Cannot subscribe to the care-plan topic; working from the stored plan.");
                None
            }
        };
        let mut tick = tokio::time::interval(self.shared.settings.evaluate_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                m = async { match rx.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } } => {
                    let Some(m) = m else { rx = None; continue };
                    if m.topic != plan_topic {
                        continue;
                    }
                    match self.intake(&m.payload).await {
                        Ok(StatusMessage(v)) => {
                            let msg = uplink::Message {
                                topic: status_topic.clone(),
                                payload: Bytes::from(v.to_string()),
                                retain: true,
                                qos: QoS::AtLeastOnce,
                                expires_at: None,
                                content_type: None,
                                user_properties: Vec::new(),
                            };
                            if uplink.publish(msg).await.is_err() {
                                tracing::warn!("The uplink has stopped; care-plan status not published.");
                            }
                            // A new plan may make windows due right away.
                            if let Err(error) = self.evaluate().await {
                                tracing::warn!(%error, "Judging care-plan windows failed; retrying later.");
                            }
                        }
                        Err(error) => tracing::warn!(%error, "Care-plan intake failed (store); the broker redelivers the retained plan on reconnect."),
                    }
                }
                _ = tick.tick() => {
                    if let Err(error) = self.evaluate().await {
                        tracing::warn!(%error, "Judging care-plan windows failed; retrying later.");
                    }
                }
            }
        }
    }
}

impl store::Tap for Careplan {
    fn tap<'a>(
        &'a self,
        append: &'a mut Append,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.link_append(append))
    }
}

/// The `seq` an envelope claims, for the refusal status (unverified: information only).
fn seq_claim(payload: &[u8]) -> Option<u64> {
    use base64::Engine as _;
    let text = std::str::from_utf8(payload).ok()?;
    let h = if text.trim_start().starts_with('{') {
        serde_json::from_str::<Value>(text).ok()?["protected"]
            .as_str()?
            .to_owned()
    } else {
        text.split('.').next()?.to_owned()
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h.trim())
        .ok()?;
    serde_json::from_slice::<Value>(&bytes).ok()?["seq"].as_u64()
}

fn link_and_record(
    c: &mut rusqlite::Connection,
    plan: &Plan,
    readings: &[Reading],
    now_ms: i64,
) -> Result<Vec<Option<Linked>>, rusqlite::Error> {
    let tx = c.transaction()?;
    let mut out = Vec::with_capacity(readings.len());
    for r in readings {
        // Re-sent by its source after a crash: the first link stands.
        let known: Option<String> = tx
            .query_row(
                "SELECT linked FROM careplan_link WHERE reading_id = ?1",
                [r.id.0.as_slice()],
                |row| row.get(0),
            )
            .optional()?;
        if let Some(s) = known {
            out.push(serde_json::from_str(&s).ok());
            continue;
        }
        let mut failed = None;
        let l = {
            let mut count = |req: &str, w: &timing::Window| {
                tx.query_row(
                    "SELECT count(*) FROM careplan_link WHERE request = ?1 AND window_start = ?2 AND status = 'Resolved'",
                    rusqlite::params![req, w.start.timestamp_millis()],
                    |row| row.get::<_, u32>(0),
                )
                .unwrap_or_else(|e| {
                    failed = Some(e);
                    u32::MAX
                })
            };
            link::link(plan, r, &mut count)
        };
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(l) = &l {
            let alert = l.alert().map(|a| match a {
                Level::Red => "red",
                Level::Yellow => "yellow",
            });
            tx.execute(
                "INSERT INTO careplan_link (reading_id, request, window_start, status, alert, linked, linked_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                rusqlite::params![
                    r.id.0.as_slice(),
                    l.request,
                    l.window_start_ms,
                    l.window_status.code(),
                    alert,
                    serde_json::to_string(l).unwrap_or_default(),
                    now_ms
                ],
            )?;
        }
        out.push(l);
    }
    tx.commit()?;
    Ok(out)
}

/// The stored links of these readings, for the FHIR renderer: merge
/// [`Linked::to_fhir_fields`] into each reading's Observation.
pub async fn links(
    outbox: &Outbox,
    ids: Vec<ReadingId>,
) -> Result<HashMap<ReadingId, Linked>, store::Error> {
    outbox
        .with_conn(move |c| {
            let mut q =
                c.prepare_cached("SELECT linked FROM careplan_link WHERE reading_id = ?1")?;
            let mut out = HashMap::new();
            for id in ids {
                let s: Option<String> = q
                    .query_row([id.0.as_slice()], |row| row.get(0))
                    .optional()?;
                if let Some(l) = s.and_then(|s| serde_json::from_str(&s).ok()) {
                    out.insert(id, l);
                }
            }
            Ok(out)
        })
        .await
}

#[cfg(test)]
mod tests;
