//! The BLE source task: scan, connect to registered devices when they advertise, take their
//! measurements, back-fill glucose records, and keep the scanner alive.
//!
//! Rules this module keeps (issue 3):
//! * **Only registered devices.** An advertising device whose identity address is not in the
//!   [`registry`] is counted as seen and nothing more: no connection, no reading.
//! * **Connection slots.** At most `max_connections` sessions at once (a semaphore); a device that
//!   advertises while every slot is taken is picked up at its next advertisement.
//! * **Short links.** A session connects, subscribes, takes what the device sends, and disconnects
//!   after `idle_disconnect_ms` of silence: battery devices would rather sleep than hold a link.
//!   A device that had nothing to send is left alone for `cooldown_ms` even if it keeps
//!   advertising.
//! * **Taken means committed.** Readings are appended to the outbox before anything else happens.
//!   GATT indications are confirmed by BlueZ itself on receipt (the protocol gives the application
//!   no say), so the durable hand-over the gateway controls is the glucose RACP cursor: it
//!   advances in the *same* transaction as the record it covers, and no "delete stored records"
//!   is ever sent; a record the meter re-sends after a lost link is recognised by its sequence
//!   number and its stable reading id.
//! * **Notifications before subscribe.** The notification stream is taken before the first
//!   `subscribe`, or a value sent right after the CCCD write is lost (design/ble-sim.md P1).
//! * **A stalled scanner is recovered.** A scan that fails to start (`InProgress`, `NotReady`) or
//!   that BlueZ stopped on its own is restarted, power-cycling the adapter over D-Bus when a restart
//!   is refused; if that keeps failing the status shows `scanner.state = "alarm"` and a durable
//!   alarm event is sent.
//! * **Clock and battery.** The device clock (Current Time) is set only when the gateway's clock
//!   is synchronised; battery level goes to the status, and a low level raises an event once.
//!
//! Logs carry device addresses and error reasons, never measurement values.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btleplug::api::{
    Central, CentralEvent, CharPropFlags, Characteristic as GattChar, Manager as _,
    Peripheral as _, ScanFilter, ValueNotification, WriteType,
};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use std::panic::AssertUnwindSafe;

use futures::{FutureExt, StreamExt};
use heim_shared_types::{DeviceId, DeviceTime, GatewayTime, Reading};
use serde_json::json;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::adapter;
use super::config::BleConfig;
use super::profiles::{
    self, Characteristic, Decoded, ToMeasurements, battery, datetime,
    racp::{Request, Response, ResponseCode},
};
use super::registry::{self, Device, DeviceKind, format_address};
use crate::sources::Context;
use crate::store::{self, Append, Event, Lane};

/// BLE source errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// btleplug / BlueZ failed.
    #[error("bluetooth: {0}")]
    Ble(#[from] btleplug::Error),
    /// No adapter (or not the configured one).
    #[error("no Bluetooth adapter {0}")]
    NoAdapter(String),
    /// The outbox failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// The adapter could not be recovered over D-Bus.
    #[error(transparent)]
    Adapter(#[from] adapter::Error),
    /// The link dropped during a session.
    #[error("the device disconnected")]
    Disconnected,
    /// A step took too long.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The device lacks a characteristic its kind needs.
    #[error("the device has no characteristic {0:#06x}")]
    MissingCharacteristic(u16),
    /// The meter refused or failed the RACP request.
    #[error("the meter answered the record request with {0:?}")]
    Racp(ResponseCode),
    /// BlueZ's event stream ended.
    #[error("the BlueZ event stream ended")]
    EventsEnded,
    /// A session task panicked (a bug); the device is retried with backoff.
    #[error("the session panicked")]
    SessionPanicked,
}

/// The BLE source.
#[derive(Debug)]
pub struct BleSource {
    cfg: BleConfig,
    nearby: Nearby,
    alarms: Option<watch::Sender<serde_json::Map<String, serde_json::Value>>>,
}

/// How long a device that stopped advertising stays in [`Nearby`].
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// What the scanner has heard lately, for `heim device scan`: every advertising health device,
/// registered or not. Shared between the source and the control-socket commands.
#[derive(Debug, Clone, Default)]
pub struct Nearby {
    inner: Arc<Mutex<NearbyInner>>,
}

#[derive(Debug, Default)]
struct NearbyInner {
    adapter: Option<String>,
    seen: HashMap<[u8; 6], Seen>,
}

/// One advertising device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seen {
    /// `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    /// Advertised name.
    pub name: Option<String>,
    /// Last RSSI, dBm.
    pub rssi: Option<i16>,
    /// The health device kind its advertised services say.
    pub kind: Option<&'static str>,
    /// Whether it is in the registry.
    pub known: bool,
    #[serde(skip)]
    last_seen: Option<Instant>,
}

impl Nearby {
    fn lock(&self) -> std::sync::MutexGuard<'_, NearbyInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The adapter the source uses (`hci0`), once it has started.
    pub fn adapter(&self) -> Option<String> {
        self.lock().adapter.clone()
    }

    /// Devices heard within `window`, strongest first.
    pub fn within(&self, window: Duration) -> Vec<Seen> {
        let mut v: Vec<Seen> = self
            .lock()
            .seen
            .values()
            .filter(|s| s.last_seen.is_some_and(|t| t.elapsed() <= window))
            .cloned()
            .collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.rssi.unwrap_or(i16::MIN)));
        v
    }

    /// What was last heard from `address`.
    pub fn get(&self, address: &[u8; 6]) -> Option<Seen> {
        self.lock().seen.get(address).cloned()
    }

    fn record(
        &self,
        address: [u8; 6],
        name: Option<String>,
        rssi: Option<i16>,
        kind: Option<DeviceKind>,
        known: bool,
    ) {
        let mut g = self.lock();
        let e = g.seen.entry(address).or_insert_with(|| Seen {
            address: format_address(&address),
            name: None,
            rssi: None,
            kind: None,
            known,
            last_seen: None,
        });
        e.name = name.or(e.name.take());
        e.rssi = rssi.or(e.rssi);
        e.kind = kind.map(DeviceKind::name).or(e.kind);
        e.known = known;
        e.last_seen = Some(Instant::now());
    }

    fn prune(&self, older_than: Duration) {
        self.lock()
            .seen
            .retain(|_, s| s.last_seen.is_some_and(|t| t.elapsed() < older_than));
    }

    fn needs_refresh(&self, address: &[u8; 6]) -> bool {
        self.lock()
            .seen
            .get(address)
            .and_then(|s| s.last_seen)
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
    }
}

/// What the daemon-wide state of one device looks like in `heim status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct DeviceStatus {
    kind: &'static str,
    connected: bool,
    battery_pct: Option<u8>,
    /// Device clock minus gateway clock (local wall time), seconds, as read before setting it.
    clock_offset_s: Option<i64>,
    readings: u64,
    last_error: Option<String>,
}

/// State shared by the main loop and the session tasks.
#[derive(Debug)]
struct Shared {
    cfg: BleConfig,
    ctx: Context,
    devices: Mutex<BTreeMap<String, DeviceStatus>>,
    low_battery: Mutex<HashSet<[u8; 6]>>,
}

impl Shared {
    fn device<R>(&self, dev: &Device, f: impl FnOnce(&mut DeviceStatus) -> R) -> R {
        let mut map = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(format_address(&dev.address))
            .or_insert_with(|| DeviceStatus {
                kind: dev.kind.name(),
                ..DeviceStatus::default()
            });
        let r = f(entry);
        let snapshot = json!(*map);
        drop(map);
        self.ctx.status.set_detail("devices", snapshot);
        r
    }
}

impl BleSource {
    /// A source with this config.
    pub fn new(cfg: BleConfig) -> Self {
        Self {
            cfg,
            nearby: Nearby::default(),
            alarms: None,
        }
    }

    /// Shares what the scanner hears with `heim device scan`.
    pub fn with_nearby(mut self, nearby: Nearby) -> Self {
        self.nearby = nearby;
        self
    }

    /// Publishes this source's alarms (`{"alarms": ["ble_scanner_stalled"]}`) for the daemon to
    /// merge into `heim status` and the retained status topic.
    pub fn with_alarms(
        mut self,
        tx: watch::Sender<serde_json::Map<String, serde_json::Value>>,
    ) -> Self {
        self.alarms = Some(tx);
        self
    }

    /// Runs until `ctx.shutdown` is cancelled, restarting after failures (no adapter yet, BlueZ
    /// restarted, the event stream ended) with a growing delay (1 s … 60 s), so the gateway keeps
    /// running and picks the adapter up when it appears.
    pub async fn run_supervised(self, ctx: Context) {
        let mut delay = Duration::from_secs(1);
        loop {
            let started = Instant::now();
            let attempt = BleSource {
                cfg: self.cfg.clone(),
                nearby: self.nearby.clone(),
                alarms: self.alarms.clone(),
            };
            match attempt.run(ctx.clone()).await {
                Ok(()) => return,
                Err(e) => {
                    ctx.status.error();
                    ctx.status.set_detail("error", json!(e.to_string()));
                    warn!(source = %ctx.name, error = %e, retry_in_s = delay.as_secs(), "The BLE source failed; restarting it.");
                }
            }
            if started.elapsed() > Duration::from_secs(300) {
                delay = Duration::from_secs(1);
            }
            tokio::select! {
                () = ctx.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
    }

    /// Runs until `ctx.shutdown` is cancelled; returns the first failure.
    pub async fn run(self, ctx: Context) -> Result<(), Error> {
        let manager = Manager::new().await?;
        let central = pick_adapter(&manager, self.cfg.adapter.as_deref()).await?;
        let info = central.adapter_info().await?;
        let adapter_name = info.split_whitespace().next().unwrap_or("hci0").to_owned();
        info!(adapter = %adapter_name, source = %ctx.name, "BLE source started.");
        self.nearby.lock().adapter = Some(adapter_name.clone());
        let mut events = central.events().await?;
        let shared = Arc::new(Shared {
            cfg: self.cfg.clone(),
            ctx: ctx.clone(),
            devices: Mutex::default(),
            low_battery: Mutex::default(),
        });
        let slots = Arc::new(Semaphore::new(self.cfg.max_connections));
        let mut registry = Registry::default();
        registry.refresh(&ctx).await;
        let mut scanner = Scanner::new(adapter_name, &self.cfg, self.alarms.clone());
        scanner.start(&central, &ctx).await;

        let mut sessions: JoinSet<(PeripheralId, [u8; 6], Result<usize, Error>)> = JoinSet::new();
        let mut links: HashMap<PeripheralId, CancellationToken> = HashMap::new();
        let mut backoff: HashMap<[u8; 6], (Instant, Duration)> = HashMap::new();
        let mut cooldown: HashMap<[u8; 6], Instant> = HashMap::new();
        let mut unknown: HashSet<[u8; 6]> = HashSet::new();
        let tick_every =
            Duration::from_millis((self.cfg.scan_stall_s * 1000 / 4).clamp(250, 30_000));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let result = loop {
            tokio::select! {
                () = ctx.shutdown.cancelled() => break Ok(()),
                ev = events.next() => {
                    let Some(ev) = ev else { break Err(Error::EventsEnded) };
                    let id = match ev {
                        CentralEvent::DeviceDisconnected(id) => {
                            if let Some(t) = links.get(&id) {
                                t.cancel();
                            }
                            continue;
                        }
                        CentralEvent::DeviceDiscovered(id)
                        | CentralEvent::DeviceUpdated(id)
                        | CentralEvent::RssiUpdate { id, .. }
                        | CentralEvent::ServicesAdvertisement { id, .. }
                        | CentralEvent::ServiceDataAdvertisement { id, .. }
                        | CentralEvent::ManufacturerDataAdvertisement { id, .. } => id,
                        _ => continue,
                    };
                    scanner.last_advert = Instant::now();
                    if links.contains_key(&id) {
                        continue;
                    }
                    let Ok(periph) = central.peripheral(&id).await else { continue };
                    let address = periph.address().into_inner();
                    if self.nearby.needs_refresh(&address) {
                        let props = periph.properties().await.ok().flatten();
                        let (name, rssi, kind) = props.map_or((None, None, None), |p| {
                            (p.local_name, p.rssi, p.services.iter().find_map(DeviceKind::from_service))
                        });
                        self.nearby.record(address, name, rssi, kind, registry.get(&address).is_some());
                    }
                    // A device added with `heim device add` a moment ago: look again (at most
                    // once a second) before calling it unknown.
                    if registry.get(&address).is_none() && registry.age() > Duration::from_secs(1) {
                        registry.refresh(&ctx).await;
                    }
                    let Some(dev) = registry.get(&address) else {
                        if unknown.insert(address) {
                            debug!(address = %format_address(&address), "Saw an unregistered device; ignoring it.");
                            ctx.status.set_detail("unregistered_seen", json!(unknown.len()));
                        }
                        continue;
                    };
                    unknown.remove(&address);
                    if backoff.get(&address).is_some_and(|(t, _)| Instant::now() < *t)
                        || cooldown.get(&address).is_some_and(|t| Instant::now() < *t)
                    {
                        continue;
                    }
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        debug!(address = %format_address(&address), "Every connection slot is taken; waiting for the next advertisement.");
                        continue;
                    };
                    let link_lost = CancellationToken::new();
                    links.insert(id.clone(), link_lost.clone());
                    let sh = shared.clone();
                    sessions.spawn(async move {
                        // A panic in one session must not leave its device marked busy forever.
                        let r = AssertUnwindSafe(session(&sh, &periph, &dev, &link_lost))
                            .catch_unwind()
                            .await
                            .unwrap_or(Err(Error::SessionPanicked));
                        drop(permit);
                        (id, address, r)
                    });
                }
                Some(done) = sessions.join_next() => {
                    let Ok((id, address, r)) = done else { continue };
                    links.remove(&id);
                    let addr = format_address(&address);
                    match r {
                        Ok(n) => {
                            backoff.remove(&address);
                            if n == 0 {
                                cooldown.insert(address, Instant::now() + Duration::from_millis(self.cfg.cooldown_ms));
                            } else {
                                cooldown.remove(&address);
                            }
                            debug!(address = %addr, readings = n, "BLE session finished.");
                        }
                        Err(e) => {
                            let min = Duration::from_millis(self.cfg.backoff_min_ms);
                            let next = backoff.get(&address).map_or(min, |(_, d)| (*d * 2).min(Duration::from_secs(60)));
                            backoff.insert(address, (Instant::now() + next, next));
                            ctx.status.error();
                            warn!(address = %addr, error = %e, retry_in_ms = next.as_millis() as u64, "BLE session failed.");
                        }
                    }
                }
                _ = tick.tick() => {
                    registry.refresh(&ctx).await;
                    // Neighbours come and go (and private addresses rotate): remember only the
                    // last ten minutes, so memory stays flat over months.
                    self.nearby.prune(FORGET_AFTER);
                    if unknown.len() > 256 {
                        unknown.clear();
                    }
                    scanner.check(&central, &ctx, !links.is_empty()).await;
                }
            }
        };
        // Sessions see the same shutdown token and end their own links.
        let drain = async { while sessions.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .is_err()
        {
            sessions.abort_all();
        }
        let _ = central.stop_scan().await;
        result
    }
}

async fn pick_adapter(manager: &Manager, want: Option<&str>) -> Result<Adapter, Error> {
    for a in manager.adapters().await? {
        let info = a.adapter_info().await?;
        if want.is_none_or(|w| info.split_whitespace().next() == Some(w)) {
            return Ok(a);
        }
    }
    Err(Error::NoAdapter(want.unwrap_or("(any)").to_owned()))
}

/// The in-memory copy of the registry, refreshed on every tick so `heim device add/remove`
/// takes effect without a restart.
#[derive(Debug, Default)]
struct Registry {
    devices: HashMap<[u8; 6], Device>,
    refreshed: Option<Instant>,
}

impl Registry {
    fn age(&self) -> Duration {
        self.refreshed.map_or(Duration::MAX, |t| t.elapsed())
    }

    async fn refresh(&mut self, ctx: &Context) {
        self.refreshed = Some(Instant::now());
        match registry::list(&ctx.outbox).await {
            Ok(list) => self.devices = list.into_iter().map(|d| (d.address, d)).collect(),
            Err(e) => {
                warn!(error = %e, "Could not read the BLE device registry; keeping the last copy.")
            }
        }
    }

    fn get(&self, address: &[u8; 6]) -> Option<Device> {
        self.devices.get(address).cloned()
    }
}

/// Keeps discovery running.
#[derive(Debug)]
struct Scanner {
    adapter: String,
    filter: ScanFilter,
    stall: Duration,
    last_advert: Instant,
    restarts: u64,
    power_cycles: u64,
    alarm: bool,
    alarms: Option<watch::Sender<serde_json::Map<String, serde_json::Value>>>,
}

impl Scanner {
    fn new(
        adapter: String,
        cfg: &BleConfig,
        alarms: Option<watch::Sender<serde_json::Map<String, serde_json::Value>>>,
    ) -> Self {
        Self {
            adapter,
            filter: ScanFilter {
                services: DeviceKind::ALL.iter().map(|k| k.service()).collect(),
            },
            stall: Duration::from_secs(cfg.scan_stall_s),
            last_advert: Instant::now(),
            restarts: 0,
            power_cycles: 0,
            alarm: false,
            alarms,
        }
    }

    /// Puts the alarm on (or takes it off) the daemon's status.
    fn set_alarm(&mut self, on: bool) {
        self.alarm = on;
        if let Some(tx) = &self.alarms {
            let mut m = serde_json::Map::new();
            let list: Vec<serde_json::Value> = if on {
                vec![json!("ble_scanner_stalled")]
            } else {
                Vec::new()
            };
            m.insert("alarms".into(), serde_json::Value::Array(list));
            tx.send_replace(m);
        }
    }

    fn publish(&self, ctx: &Context, state: &str) {
        ctx.status.set_detail(
            "scanner",
            json!({"state": state, "restarts": self.restarts, "power_cycles": self.power_cycles}),
        );
    }

    /// Starts discovery; a refused start power-cycles the adapter and tries again (three times),
    /// then raises the alarm.
    async fn start(&mut self, central: &Adapter, ctx: &Context) {
        for attempt in 0..3u32 {
            match central.start_scan(self.filter.clone()).await {
                Ok(()) => {
                    self.last_advert = Instant::now();
                    if self.alarm {
                        self.set_alarm(false);
                        info!(adapter = %self.adapter, "The BLE scanner recovered.");
                    }
                    self.publish(ctx, "scanning");
                    return;
                }
                Err(e) => {
                    warn!(adapter = %self.adapter, error = %e, attempt, "BlueZ refused to start the scan; power-cycling the adapter.");
                    self.publish(ctx, "recovering");
                    self.power_cycles += 1;
                    if let Err(e) = adapter::power_cycle(self.adapter.clone()).await {
                        warn!(adapter = %self.adapter, error = %e, "Power-cycling the adapter failed.");
                    }
                }
            }
        }
        if !self.alarm {
            self.set_alarm(true);
            warn!(adapter = %self.adapter, "The BLE scanner cannot be restarted; raising an alarm.");
            let event = Event {
                topic: "alarms".into(),
                payload: json!({"type": "ble_scanner_stalled", "adapter": self.adapter, "source": ctx.name})
                    .to_string()
                    .into_bytes(),
                lane: Lane::Priority,
            };
            if let Err(e) = ctx
                .outbox
                .append(Append {
                    events: vec![event],
                    ..Append::default()
                })
                .await
            {
                warn!(error = %e, "Could not store the scanner alarm.");
            }
        }
        self.publish(ctx, "alarm");
    }

    /// Called on every tick: restarts a scan that BlueZ stopped on its own, or that has heard
    /// nothing for `scan_stall_s`.
    async fn check(&mut self, central: &Adapter, ctx: &Context, links_active: bool) {
        let discovering = adapter::discovering(self.adapter.clone())
            .await
            .unwrap_or(true);
        let silent = self.last_advert.elapsed() >= self.stall;
        // While connected to a device nothing else may be advertising; silence then is normal.
        if self.alarm || !discovering || (silent && !links_active) {
            if !discovering {
                warn!(adapter = %self.adapter, "BlueZ stopped discovering on its own; restarting the scan.");
            } else if silent {
                info!(adapter = %self.adapter, silent_s = self.stall.as_secs(), "No advertisements; restarting the scan.");
            }
            self.restarts += 1;
            let _ = central.stop_scan().await;
            self.start(central, ctx).await;
        }
    }
}

/// One connection to one registered device. Returns how many readings it took.
async fn session(
    sh: &Shared,
    periph: &Peripheral,
    dev: &Device,
    link_lost: &CancellationToken,
) -> Result<usize, Error> {
    let timeout = Duration::from_secs(sh.cfg.connect_timeout_s);
    let addr = format_address(&dev.address);
    debug!(address = %addr, kind = dev.kind.name(), "Connecting.");
    tokio::time::timeout(timeout, periph.connect())
        .await
        .map_err(|_| Error::Timeout("connect"))??;
    sh.device(dev, |s| s.connected = true);
    let result = connected(sh, periph, dev, link_lost, timeout).await;
    // Never hold a link a battery device would rather drop.
    let _ = periph.disconnect().await;
    sh.device(dev, |s| {
        s.connected = false;
        s.last_error = result.as_ref().err().map(ToString::to_string);
    });
    result
}

async fn connected(
    sh: &Shared,
    periph: &Peripheral,
    dev: &Device,
    link_lost: &CancellationToken,
    timeout: Duration,
) -> Result<usize, Error> {
    tokio::time::timeout(timeout, periph.discover_services())
        .await
        .map_err(|_| Error::Timeout("service discovery"))??;
    let chars = periph.characteristics();
    let find = |c: Characteristic| chars.iter().find(|x| x.uuid == c.uuid()).cloned();
    // Before any subscribe: a value sent right after the CCCD write must not be lost.
    let mut notifs = periph.notifications().await?;

    if let Some(ct) = find(Characteristic::CurrentTime) {
        set_clock(sh, periph, dev, &ct).await;
    }
    if let Some(b) = find(Characteristic::BatteryLevel) {
        read_battery(sh, periph, dev, &b).await;
    }
    match dev.kind {
        DeviceKind::Glucose => backfill(sh, periph, dev, &find, &mut notifs, link_lost).await,
        _ => {
            let ch = find(dev.kind.measurement()).ok_or(Error::MissingCharacteristic(
                dev.kind.measurement().uuid16(),
            ))?;
            periph.subscribe(&ch).await?;
            let idle = Duration::from_millis(sh.cfg.idle_disconnect_ms);
            let mut taken = 0;
            loop {
                tokio::select! {
                    biased;
                    () = sh.ctx.shutdown.cancelled() => break,
                    n = tokio::time::timeout(idle, notifs.next()) => match n {
                        Err(_) | Ok(None) => break,
                        Ok(Some(v)) if v.uuid == ch.uuid => {
                            taken += take(sh, dev, dev.kind.measurement(), &v, None).await?;
                        }
                        Ok(Some(_)) => {}
                    },
                    // A device that hangs up after sending is doing what it should; values it
                    // sent before hanging up were taken above (biased order).
                    () = link_lost.cancelled() => break,
                }
            }
            Ok(taken)
        }
    }
}

/// Glucose back-fill: "report stored records with sequence number ≥ cursor + 1", each record
/// committed together with the cursor it advances, until the meter's final response.
async fn backfill(
    sh: &Shared,
    periph: &Peripheral,
    dev: &Device,
    find: &impl Fn(Characteristic) -> Option<GattChar>,
    notifs: &mut (impl futures::Stream<Item = ValueNotification> + Unpin),
    link_lost: &CancellationToken,
) -> Result<usize, Error> {
    let missing = |c: Characteristic| Error::MissingCharacteristic(c.uuid16());
    let glm = find(Characteristic::GlucoseMeasurement)
        .ok_or_else(|| missing(Characteristic::GlucoseMeasurement))?;
    let racp = find(Characteristic::RecordAccessControlPoint)
        .ok_or_else(|| missing(Characteristic::RecordAccessControlPoint))?;
    let key = cursor_key(&dev.address);
    let cursor = sh
        .ctx
        .outbox
        .cursor(&key)
        .await?
        .and_then(|v| <[u8; 2]>::try_from(v.as_slice()).ok())
        .map(u16::from_le_bytes);
    periph.subscribe(&glm).await?;
    if let Some(glc) = find(Characteristic::GlucoseMeasurementContext) {
        periph.subscribe(&glc).await?;
    }
    // The RACP write fails (ATT 0x81) unless its indications are enabled first.
    periph.subscribe(&racp).await?;
    let mut request = match cursor {
        None => Request::report_all(),
        // Sequence numbers are uint16; what a meter does after 65535 is not specified.
        Some(c) => Request::report_from(c.saturating_add(1)),
    };
    let wait = Duration::from_secs(sh.cfg.racp_timeout_s);
    let mut taken = 0;
    let mut last = cursor;
    // Set while asking for the meter's most recent record to check for a numbering restart.
    let mut probing = false;
    let mut reset_done = false;
    let mut newest_seen: Option<u16> = None;
    loop {
        debug!(address = %format_address(&dev.address), request = ?request, "Writing a RACP request.");
        periph
            .write(&racp, &request.encode(), WriteType::WithResponse)
            .await?;
        let code = loop {
            // Biased: records already received when the link drops are still taken (BlueZ
            // delivers them before the disconnect), so the cursor covers everything the meter
            // sent.
            let v = tokio::select! {
                biased;
                () = sh.ctx.shutdown.cancelled() => {
                    let _ = periph.write(&racp, &Request::abort().encode(), WriteType::WithResponse).await;
                    return Ok(taken);
                }
                n = tokio::time::timeout(wait, notifs.next()) => match n {
                    Err(_) => return Err(Error::Timeout("stored glucose records")),
                    Ok(None) => return Err(Error::Disconnected),
                    Ok(Some(v)) => v,
                },
                () = link_lost.cancelled() => return Err(Error::Disconnected),
            };
            if v.uuid == glm.uuid {
                let seq = match profiles::glucose::decode(&v.value) {
                    Ok(m) => m.sequence_number,
                    Err(e) => {
                        sh.ctx.status.error();
                        warn!(address = %format_address(&dev.address), error = %e, "Dropped an undecodable glucose record.");
                        continue;
                    }
                };
                newest_seen = newest_seen.max(Some(seq));
                if last.is_some_and(|c| seq <= c) {
                    debug!(address = %format_address(&dev.address), seq, "Skipped a glucose record already stored.");
                    continue;
                }
                let cursor = (key.clone(), seq.to_le_bytes().to_vec());
                taken += take(
                    sh,
                    dev,
                    Characteristic::GlucoseMeasurement,
                    &v,
                    Some(cursor),
                )
                .await?;
                last = Some(seq);
            } else if v.uuid == racp.uuid {
                match profiles::racp::decode_response(&v.value) {
                    Ok(Response::ResponseCode { code, .. }) => break code,
                    Ok(Response::NumberOfRecords(_)) => {}
                    Err(e) => {
                        warn!(address = %format_address(&dev.address), error = %e, "Undecodable RACP indication.")
                    }
                }
            }
            // Context records (0x2A34) are not readings; they are matched by sequence number
            // when the FHIR side needs them.
        };
        match code {
            ResponseCode::Success | ResponseCode::NoRecordsFound => {}
            other => return Err(Error::Racp(other)),
        }
        match (probing, cursor) {
            // Nothing new above the cursor: check the meter did not restart its numbering (a
            // reset, or a replacement meter at the same address), which would hide every new
            // record below the cursor.
            (false, Some(_)) if code == ResponseCode::NoRecordsFound && !reset_done => {
                probing = true;
                request = Request::report_last();
            }
            (true, Some(c)) if newest_seen.is_some_and(|n| n < c) => {
                warn!(address = %format_address(&dev.address), cursor = c, newest = ?newest_seen, "The meter's record numbers restarted; fetching all its records again.");
                // The stored cursor is replaced in the same transaction as the first record;
                // records seen before keep their ids (sequence number and base time), so a
                // re-sent one is recognised downstream.
                last = None;
                probing = false;
                reset_done = true;
                request = Request::report_all();
            }
            _ => return Ok(taken),
        }
    }
}

/// The outbox cursor key holding a meter's last committed sequence number.
pub fn cursor_key(address: &[u8; 6]) -> String {
    format!("ble/{}/glucose_seq", format_address(address))
}

/// Decodes one value, appends its readings (with `cursor` in the same transaction) and returns
/// how many were stored. An undecodable value is counted and dropped; a store failure ends the
/// session (the device keeps the record, or re-sends it).
async fn take(
    sh: &Shared,
    dev: &Device,
    ch: Characteristic,
    v: &ValueNotification,
    cursor: Option<(String, Vec<u8>)>,
) -> Result<usize, Error> {
    let addr = format_address(&dev.address);
    let decoded = match profiles::decode(ch, &v.value, None) {
        Ok(d) => d,
        Err(e) => {
            sh.ctx.status.error();
            warn!(address = %addr, characteristic = ch.uuid16(), error = %e, "Dropped an undecodable measurement.");
            return Ok(0);
        }
    };
    let received = sh.ctx.clock.now();
    let readings = readings(dev, ch, &v.value, &decoded, received);
    let n = readings.len();
    sh.ctx
        .outbox
        .append(Append::readings(readings, cursor))
        .await?;
    if n > 0 {
        sh.ctx.status.readings_taken(n as u64, received);
        sh.device(dev, |s| s.readings += n as u64);
        debug!(address = %addr, readings = n, "Took BLE readings.");
    }
    Ok(n)
}

/// The readings one decoded value carries, with ids derived from what the device can repeat: a
/// glucose record's sequence number and base time; otherwise the device's own timestamp and the
/// payload (a re-sent indication gets the same id), or the payload and reception time when the
/// device gives no time.
pub fn readings(
    dev: &Device,
    ch: Characteristic,
    raw: &[u8],
    decoded: &Decoded,
    received: GatewayTime,
) -> Vec<Reading> {
    let device_time = decoded.device_time();
    let trusted = decoded.device_time_trusted();
    let identity: Vec<u8> = match decoded {
        Decoded::Glucose(m) => {
            let mut v = m.sequence_number.to_le_bytes().to_vec();
            v.extend_from_slice(&datetime::encode_date_time(&m.base_time));
            v
        }
        _ => match device_time.filter(|_| trusted) {
            Some(t) => datetime::encode_date_time(&t)
                .iter()
                .chain(raw)
                .copied()
                .collect(),
            None => raw
                .iter()
                .copied()
                .chain(received.unix_millis.to_le_bytes())
                .collect(),
        },
    };
    decoded
        .measurements()
        .into_iter()
        .map(|m| Reading {
            id: crate::reading_id::derive(
                "ble",
                &[
                    &dev.address,
                    &ch.uuid16().to_le_bytes(),
                    &identity,
                    m.kind().name().as_bytes(),
                ],
            ),
            device: DeviceId::Ble(dev.address),
            device_time: device_time.map(DeviceTime::Local),
            device_time_trusted: trusted,
            received,
            measurement: m,
        })
        .collect()
}

/// Writes Current Time when the gateway's clock is synchronised and the device allows it; best
/// effort (devices may refuse with an ATT application error).
async fn set_clock(sh: &Shared, periph: &Peripheral, dev: &Device, ch: &GattChar) {
    // Read first: how far off the device was is what lets its stored time stamps be judged
    // (the PHD IG's coincident time stamp); only a synchronised gateway clock gives a reference.
    if !sh.ctx.clock.synchronized() {
        return;
    }
    if ch.properties.contains(CharPropFlags::READ)
        && let Ok(raw) = periph.read(ch).await
    {
        match profiles::datetime::decode_current_time(&raw) {
            Ok(ct) => {
                let offset = profiles::datetime::to_naive(&ct.date_time)
                    .map(|t| (t - chrono::Local::now().naive_local()).num_seconds());
                sh.device(dev, |s| s.clock_offset_s = offset);
            }
            Err(e) => {
                sh.ctx.status.error();
                warn!(address = %format_address(&dev.address), error = %e, "Undecodable device clock.");
            }
        }
    }
    if !ch.properties.contains(CharPropFlags::WRITE) {
        return;
    }
    let Some(ct) = profiles::datetime::CurrentTime::from_naive(&chrono::Local::now().naive_local())
    else {
        return;
    };
    match periph
        .write(ch, &ct.encode(), WriteType::WithResponse)
        .await
    {
        Ok(()) => debug!(address = %format_address(&dev.address), "Set the device clock."),
        Err(e) => {
            debug!(address = %format_address(&dev.address), error = %e, "The device refused the clock write.");
        }
    }
}

/// Reads the battery level into the status; a level at or below the limit raises one event until
/// the level recovers.
async fn read_battery(sh: &Shared, periph: &Peripheral, dev: &Device, ch: &GattChar) {
    if !ch.properties.contains(CharPropFlags::READ) {
        return;
    }
    let level = match periph.read(ch).await.map(|v| battery::decode(&v)) {
        Ok(Ok(level)) => level,
        Ok(Err(e)) => {
            sh.ctx.status.error();
            warn!(address = %format_address(&dev.address), error = %e, "Undecodable battery level.");
            return;
        }
        Err(e) => {
            debug!(address = %format_address(&dev.address), error = %e, "Could not read the battery level.");
            return;
        }
    };
    sh.device(dev, |s| s.battery_pct = Some(level));
    let low = level <= sh.cfg.low_battery_pct;
    let newly_low = {
        let mut set = sh.low_battery.lock().unwrap_or_else(|e| e.into_inner());
        if low {
            set.insert(dev.address)
        } else {
            // Recovered (new batteries): a later low level raises the event again.
            set.remove(&dev.address);
            false
        }
    };
    if newly_low {
        info!(address = %format_address(&dev.address), level, "Device battery low.");
        let payload = json!({
            "type": "battery_low",
            "device": DeviceId::Ble(dev.address).to_string(),
            "kind": dev.kind.name(),
            "level_pct": level,
        });
        let event = Event {
            topic: "events".into(),
            payload: payload.to_string().into_bytes(),
            lane: Lane::Routine,
        };
        if let Err(e) = sh
            .ctx
            .outbox
            .append(Append {
                events: vec![event],
                ..Append::default()
            })
            .await
        {
            warn!(error = %e, "Could not store the low-battery event.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> Device {
        Device {
            address: [0xC0, 0xFF, 0xEE, 0, 0x18, 0x10],
            kind: DeviceKind::BloodPressure,
            name: None,
            bonded: false,
            feeds: None,
            added_unix_ms: 0,
        }
    }

    fn at(ms: i64) -> GatewayTime {
        GatewayTime {
            unix_millis: ms,
            synchronized: true,
        }
    }

    #[test]
    fn a_resent_indication_keeps_its_ids() {
        let ch = Characteristic::BloodPressureMeasurement;
        // Time stamp 2024-05-01 08:30:00 and pulse: two readings.
        let raw = crate::sources::ble::cli::parse_hex("06780050005d00e8070501081e004800").unwrap();
        let d = profiles::decode(ch, &raw, None).unwrap();
        let first = readings(&device(), ch, &raw, &d, at(1_000));
        let again = readings(&device(), ch, &raw, &d, at(9_000));
        assert_eq!(first.len(), 2);
        assert_eq!(
            first.iter().map(|r| r.id).collect::<Vec<_>>(),
            again.iter().map(|r| r.id).collect::<Vec<_>>()
        );
        assert_ne!(first[0].id, first[1].id, "BP and pulse are two readings");
        // Without a device time, reception time tells two identical payloads apart.
        let raw = crate::sources::ble::cli::parse_hex("00780050005d00").unwrap();
        let d = profiles::decode(ch, &raw, None).unwrap();
        assert_ne!(
            readings(&device(), ch, &raw, &d, at(1_000))[0].id,
            readings(&device(), ch, &raw, &d, at(9_000))[0].id
        );
    }

    #[test]
    fn glucose_ids_follow_sequence_number_and_base_time() {
        let ch = Characteristic::GlucoseMeasurement;
        let rec = |seq: u8, minute: u8| {
            vec![
                0x02, seq, 0x00, 0xE8, 0x07, 5, 1, 8, minute, 0, 0x5B, 0xB0, 0x11,
            ]
        };
        let id = |raw: Vec<u8>, ms| {
            let d = profiles::decode(ch, &raw, None).unwrap();
            readings(&device(), ch, &raw, &d, at(ms))[0].id
        };
        assert_eq!(id(rec(1, 0), 1), id(rec(1, 0), 2), "re-sent record");
        assert_ne!(id(rec(1, 0), 1), id(rec(2, 0), 1));
        // A meter whose numbering restarted: same number, another record.
        assert_ne!(id(rec(1, 0), 1), id(rec(1, 5), 1));
    }
}
