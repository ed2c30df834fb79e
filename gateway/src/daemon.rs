//! The daemon: wires the components from a validated [`Config`], runs them, and shuts them down in
//! order on SIGTERM/SIGINT: sources stop taking readings → the uplink lets in-flight messages be
//! acknowledged and publishes `offline` → the outbox commits its pending deletes → exit.
//!
//! It speaks systemd's notify protocol: `READY=1` once the outbox is open and the control socket
//! listens, `WATCHDOG=1` only while the outbox writer answers (a wedged writer gets us restarted),
//! `STOPPING=1` on shutdown.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::{Config, SourceConfig};
use crate::control::{self, Commands};
use crate::sources::{self, Registry};
use crate::store::{self, Outbox};
use crate::uplink::{self, Uplink};

/// Why the daemon could not start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The outbox could not be opened.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The TLS material is unusable.
    #[error(transparent)]
    Tls(#[from] uplink::tls::Error),
    /// The control socket could not be created.
    #[error(transparent)]
    Control(#[from] control::Error),
    /// The care plan could not be loaded.
    #[error(transparent)]
    Careplan(#[from] crate::careplan::Error),
    /// Signalling could not start.
    #[error(transparent)]
    Signalling(#[from] crate::signalling::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

/// Extra status members components publish (care plan, BLE adapter …), merged into `heim status`
/// and the retained status topic.
pub type StatusParts = Vec<watch::Receiver<serde_json::Map<String, Value>>>;

/// Runs the daemon until `shutdown` is cancelled (the binary cancels it on SIGTERM/SIGINT).
pub async fn run(cfg: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let outbox_opts = store::Options {
        path: cfg.store_path(),
        max_bytes: cfg.store.max_bytes,
        write_batch: cfg.store.write_batch,
    };
    let (outbox, writer) = Outbox::open(outbox_opts)?;
    let clock = Clock::new(cfg.clock.sync);
    let tls = uplink::tls::client_config(
        &cfg.resolve(cfg.uplink.ca.get_ref()),
        &cfg.resolve(cfg.uplink.cert.get_ref()),
        &cfg.resolve(cfg.uplink.key.get_ref()),
    )?;
    let settings = uplink::Settings {
        host: cfg.uplink.host.get_ref().clone(),
        port: cfg.uplink.port,
        client_id: cfg
            .uplink
            .client_id
            .clone()
            .unwrap_or_else(|| format!("heim-{}", cfg.gateway_id.get_ref())),
        topic_root: cfg.topic_root(),
        tls,
        batch: cfg.uplink.batch,
        inflight: cfg.uplink.inflight,
        keep_alive: Duration::from_secs(cfg.uplink.keep_alive_s),
        backoff_min: Duration::from_millis(cfg.uplink.backoff_min_ms),
        backoff_max: Duration::from_millis(cfg.uplink.backoff_max_ms),
    };
    let renderer = uplink::fhir::Renderer::new(cfg.gateway_id.get_ref(), cfg.patient.get_ref());
    let (status_extra_tx, status_extra) = watch::channel(serde_json::Map::new());
    let uplink_settings = settings.clone();
    let (uplink, uplink_handle) = Uplink::new(settings, outbox.clone(), renderer);
    let mut uplink = uplink.with_status_extra(status_extra);
    if cfg.careplan.is_some() {
        uplink = uplink.with_careplan_links();
    }

    let registry = Registry::default();
    let mut parts: StatusParts = Vec::new();
    let mut commands = Commands::default();

    // The care plan: readings pass through its tap (links, alerts to the priority lane).
    let careplan = match &cfg.careplan {
        Some(c) => Some(start_careplan(&cfg, c, &outbox, &clock).await?),
        None => None,
    };
    let sources_outbox = match &careplan {
        Some(cp) => {
            parts.push(cp.status());
            outbox.with_tap(cp.tap())
        }
        None => outbox.clone(),
    };
    let careplan_stop = CancellationToken::new();
    let careplan_task = careplan.map(|cp| {
        tokio::spawn(cp.run(
            uplink_handle.clone(),
            cfg.topic_root(),
            careplan_stop.clone(),
        ))
    });

    // Signalling: the LAN API and the sig/* topics, on the uplink's connection; presence on its own.
    let sig_stop = CancellationToken::new();
    let mut presence_task = None;
    let signalling = match &cfg.signalling {
        Some(sc) => {
            let s = start_signalling(&cfg, sc, &uplink_handle, sig_stop.clone()).await?;
            parts.push(s.status.clone());
            presence_task = Some(tokio::spawn(crate::signalling::presence(
                uplink_settings,
                sc.max_calls,
                sig_stop.clone(),
            )));
            Some(s)
        }
        None => None,
    };

    let sources_stop = shutdown.child_token();
    let sources = TaskTracker::new();
    let ble_nearby = sources::ble::Nearby::default();
    let mut has_ble = false;
    for (i, src) in cfg.sources.iter().enumerate() {
        let ctx = sources::Context {
            index: i as u16,
            name: src.name().to_owned(),
            outbox: sources_outbox.clone(),
            shutdown: sources_stop.clone(),
            status: registry.handle(
                src.name(),
                match src {
                    SourceConfig::Simulated(_) => "simulated",
                    SourceConfig::Ble(_) => "ble",
                    SourceConfig::Serial(_) => "serial",
                },
            ),
            clock: clock.clone(),
        };
        match src.clone() {
            SourceConfig::Simulated(c) => {
                sources.spawn(sources::simulated::Simulated::new(c).run(ctx));
            }
            SourceConfig::Serial(c) => {
                sources.spawn(sources::serial::SerialSource::new(c).run(ctx));
            }
            SourceConfig::Ble(c) => {
                has_ble = true;
                let (alarms, part) = watch::channel(serde_json::Map::new());
                parts.push(part);
                let source = sources::ble::BleSource::new(c)
                    .with_nearby(ble_nearby.clone())
                    .with_alarms(alarms);
                sources.spawn(source.run_supervised(ctx));
            }
        }
    }
    sources.close();
    if has_ble {
        sources::ble::commands::register(&mut commands, outbox.clone(), ble_nearby);
    } else {
        sources::ble::commands::register_unconfigured(&mut commands);
    }
    drop(sources_outbox);

    {
        let outbox = outbox.clone();
        let uplink_state = uplink_handle.state();
        let registry = registry.clone();
        let parts = parts.clone();
        let gateway_id = cfg.gateway_id.get_ref().clone();
        commands.add("status", move |_| {
            let v = status_json(&gateway_id, &outbox, &uplink_state, &registry, &parts);
            async move { Ok(v) }
        });
    }

    // Merge component alarms into the retained status topic.
    {
        let parts = parts.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                let mut merged = serde_json::Map::new();
                let mut alarms = Vec::new();
                for p in &parts {
                    for (k, v) in p.borrow().iter() {
                        if k == "alarms" {
                            alarms.extend(v.as_array().cloned().unwrap_or_default());
                        }
                    }
                }
                merged.insert("alarms".into(), Value::Array(alarms));
                status_extra_tx.send_replace(merged);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }

    let uplink_stop = CancellationToken::new();
    let uplink_task = tokio::spawn(uplink.run(uplink_stop.clone()));
    let control_stop = CancellationToken::new();
    let control_task = tokio::spawn(control::serve(
        cfg.socket_path(),
        commands,
        control_stop.clone(),
    ));
    // Fail fast if the socket could not be bound (e.g. another daemon runs on this config).
    tokio::time::sleep(Duration::from_millis(20)).await;
    if control_task.is_finished() {
        if let Ok(Err(e)) = control_task.await {
            return Err(e.into());
        }
        return Ok(());
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    tracing::info!(
        gateway_id = %cfg.gateway_id.get_ref(),
        sources = cfg.sources.len(),
        backlog = outbox.stats().borrow().pending,
        "Heim is running."
    );
    let watchdog = spawn_watchdog(outbox.clone(), shutdown.clone());

    shutdown.cancelled().await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    tracing::info!("Shutting down.");
    sources_stop.cancel();
    if tokio::time::timeout(Duration::from_secs(10), sources.wait())
        .await
        .is_err()
    {
        tracing::warn!("Some sources did not stop within 10 s.");
    }
    sig_stop.cancel();
    if let Some(s) = signalling {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.join()).await;
    }
    if let Some(t) = presence_task {
        let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
    }
    careplan_stop.cancel();
    if let Some(t) = careplan_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    uplink_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), uplink_task).await;
    control_stop.cancel();
    let _ = control_task.await;
    if let Some(w) = watchdog {
        w.abort();
    }
    let _ = outbox.flush().await;
    drop(outbox);
    drop(uplink_handle);
    // The writer thread exits once the last handle is gone; wait for its final checkpoint.
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    tracing::info!("Stopped.");
    Ok(())
}

async fn start_signalling(
    cfg: &Config,
    sc: &crate::config::SignallingConfig,
    uplink: &uplink::Handle,
    stop: CancellationToken,
) -> Result<crate::signalling::Service, crate::signalling::Error> {
    use crate::signalling::{self, machine::Timers, tls};
    let (cert, key) = match (&sc.cert, &sc.key) {
        (Some(c), Some(k)) => (cfg.resolve(c.get_ref()), cfg.resolve(k.get_ref())),
        _ => {
            let g = tls::ensure(&cfg.signalling_dir(), cfg.gateway_id.get_ref(), &sc.names)?;
            (g.cert, g.key)
        }
    };
    let settings = signalling::Settings {
        // Validated by the config.
        listen: sc
            .listen
            .get_ref()
            .parse()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 8443))),
        cert,
        key,
        tokens: cfg.signalling_tokens(),
        topic_root: cfg.topic_root(),
        party: format!("gw.{}", cfg.gateway_id.get_ref()),
        hospital_presence: sc.hospital_presence.clone(),
        timers: Timers {
            ring: Duration::from_secs(sc.ring_s),
            offer: Duration::from_secs(sc.offer_s),
            answer: Duration::from_secs(sc.answer_s),
            answer_batch: Duration::from_secs(2),
            max_call: Duration::from_secs(sc.max_call_s),
            tombstone: Duration::from_secs(sc.tombstone_s),
        },
        max_calls: sc.max_calls,
        rate_per_minute: sc.rate_per_minute,
        rate_burst: sc.rate_burst,
        inbound_per_minute: sc.inbound_per_minute,
        hospital_keys: {
            let mut keys = crate::careplan::envelope::TrustedKeys::default();
            for k in &sc.hospital_keys {
                keys.add_file(&k.kid, &cfg.resolve(k.public_key.get_ref()))
                    .map_err(|e| {
                        signalling::Error::Tls(tls::Error::File {
                            path: cfg.resolve(k.public_key.get_ref()),
                            what: e.to_string(),
                        })
                    })?;
            }
            keys
        },
        gateway_id: cfg.gateway_id.get_ref().clone(),
        signer: if sc.hospital_keys.is_empty() {
            None
        } else {
            let dir = cfg.signalling_dir();
            Some(std::sync::Arc::new(signalling::signing_key(&dir).map_err(
                |e| {
                    signalling::Error::Tls(tls::Error::File {
                        path: signalling::signing_key_paths(&dir).0,
                        what: e.to_string(),
                    })
                },
            )?))
        },
    };
    signalling::start(settings, uplink.clone(), stop).await
}

async fn start_careplan(
    cfg: &Config,
    c: &crate::config::CareplanConfig,
    outbox: &Outbox,
    clock: &Clock,
) -> Result<crate::careplan::Careplan, crate::careplan::Error> {
    let mut keys = crate::careplan::envelope::TrustedKeys::default();
    for k in &c.keys {
        keys.add_file(&k.kid, &cfg.resolve(k.public_key.get_ref()))?;
    }
    let settings = crate::careplan::Settings {
        gateway_id: cfg.gateway_id.get_ref().clone(),
        patient: cfg.patient.get_ref().clone(),
        keys,
        evaluate_every: Duration::from_secs(c.evaluate_every_s),
    };
    crate::careplan::Careplan::open(settings, outbox.clone(), clock.clone()).await
}

fn status_json(
    gateway_id: &str,
    outbox: &Outbox,
    uplink: &watch::Receiver<uplink::State>,
    registry: &Registry,
    parts: &StatusParts,
) -> Value {
    let stats = *outbox.stats().borrow();
    let up = uplink.borrow().clone();
    let mut alarms: Vec<Value> = Vec::new();
    if stats.full {
        alarms.push("outbox_full".into());
    } else if stats.near_full {
        alarms.push("outbox_near_full".into());
    }
    if stats.disk_full {
        alarms.push("disk_full".into());
    }
    if stats.disk_low {
        alarms.push("disk_low".into());
    }
    let mut v = json!({
        "gateway_id": gateway_id,
        "outbox_pending": stats.pending,
        "uplink": if up.connected { "connected" } else { "disconnected" },
        "uplink_detail": up,
        "outbox": stats,
        "sources": registry.snapshot(),
    });
    for p in parts {
        for (k, val) in p.borrow().iter() {
            if k == "alarms" {
                alarms.extend(val.as_array().cloned().unwrap_or_default());
            } else {
                v[k] = val.clone();
            }
        }
    }
    v["alarms"] = Value::Array(alarms);
    v
}

fn spawn_watchdog(outbox: Outbox, stop: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    // As sd_watchdog_enabled(3): WATCHDOG_USEC enables it; WATCHDOG_PID, when set, must be us.
    // (The sd-notify crate also requires WATCHDOG_PID to be present, which libsystemd does not.)
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    if usec == 0 {
        return None;
    }
    let period = Duration::from_micros(usec / 2);
    Some(tokio::spawn(async move {
        loop {
            // Ping only if the writer thread answers: a wedged SQLite writer must get us restarted.
            let alive = tokio::time::timeout(period, outbox.cursor("")).await;
            if matches!(alive, Ok(Ok(_))) {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!("The outbox writer did not answer; withholding the watchdog ping.");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
        }
    }))
}
