//! Deterministic simulated devices: reading `n` of a source is always the same reading, with the
//! same id, whatever happened before.
//!
//! It behaves like a device that keeps a reading until the gateway has stored it: its cursor (the
//! last number stored) is committed in the same transaction as the readings, so after `kill -9`
//! and a restart it continues exactly after the last committed reading, and the union of
//! everything ever published is readings `1..=count`.

use std::time::Duration;

use heim_shared_types::{
    AbsentReason, BodySite, DeviceId, GatewayTime, GlucoseSample, Measurement, Quantity, Reading,
    Unit, Value,
};

use super::Context;
use crate::config::SimulatedConfig;
use crate::store::Append;

/// The largest append the simulated source makes at once when running flat out.
const MAX_BATCH: u64 = 512;

/// The key of a simulated source's cursor in the outbox.
pub fn cursor_key(name: &str) -> String {
    format!("sim:{name}")
}

/// Reading number `n` (1-based) of the simulated source `name` at config index `index`.
pub fn reading(index: u16, name: &str, devices: u16, n: u64, received: GatewayTime) -> Reading {
    let device = ((n - 1) % u64::from(devices.max(1))) as u16;
    // Values wander deterministically around plausible figures.
    let w = (n % 17) as i32;
    let measurement = match (n - 1) % 6 {
        0 => Measurement::BloodPressure {
            systolic: Quantity::new(118 + w, 0, Unit::MillimetreOfMercury),
            diastolic: Quantity::new(76 + w / 2, 0, Unit::MillimetreOfMercury),
            mean: if n % 50 == 1 {
                Quantity {
                    value: Value::Absent(AbsentReason::NotANumber),
                    unit: Unit::MillimetreOfMercury,
                }
            } else {
                Quantity::new(90 + w / 2, 0, Unit::MillimetreOfMercury)
            },
        },
        1 => Measurement::PulseRate(Quantity::new(62 + w, 0, Unit::PerMinute)),
        2 => Measurement::Spo2(Quantity::new(94 + w % 6, 0, Unit::Percent)),
        3 => Measurement::BodyWeight(Quantity::new(72_400 + 10 * w, -3, Unit::Kilogram)),
        4 => Measurement::BodyTemperature {
            temperature: Quantity::new(3650 + 5 * w, -2, Unit::Celsius),
            site: Some(BodySite::Tympanum),
        },
        _ => Measurement::BloodGlucose {
            glucose: Quantity::new(52 + w, -1, Unit::MillimolePerLitre),
            sample: Some(GlucoseSample::CapillaryWholeBlood),
        },
    };
    Reading {
        id: reading_id(name, n),
        device: DeviceId::Simulated {
            source: index,
            device,
        },
        device_time: None,
        device_time_trusted: false,
        received,
        measurement,
    }
}

/// The stable id of reading `n` of source `name`.
pub fn reading_id(name: &str, n: u64) -> heim_shared_types::ReadingId {
    crate::reading_id::derive("sim", &[name.as_bytes(), &n.to_be_bytes()])
}

/// The simulated source task.
#[derive(Debug)]
pub struct Simulated {
    cfg: SimulatedConfig,
}

impl Simulated {
    /// A source from its config.
    pub fn new(cfg: SimulatedConfig) -> Self {
        Self { cfg }
    }

    /// Runs until `count` readings are stored (then idles) or shutdown.
    pub async fn run(self, ctx: Context) {
        let key = cursor_key(&self.cfg.name);
        let mut last = loop {
            match ctx.outbox.cursor(&key).await {
                Ok(v) => {
                    break v
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_be_bytes);
                }
                Err(crate::store::Error::Closed) => return,
                Err(error) => {
                    tracing::error!(%error, source = %self.cfg.name, "Cannot read the source cursor; retrying.");
                    ctx.status.error();
                    if sleep_or_stop(&ctx, Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        };
        let count = self.cfg.count.unwrap_or(u64::MAX);
        if last > 0 {
            tracing::info!(source = %self.cfg.name, resumed_after = last, "Simulated source resumes.");
        }
        let mut retry = Duration::from_millis(100);
        while last < count {
            if ctx.shutdown.is_cancelled() {
                return;
            }
            let take = if self.cfg.interval_ms == 0 {
                MAX_BATCH.min(count - last)
            } else {
                1
            };
            let now = ctx.clock.now();
            let batch: Vec<Reading> = (last + 1..=last + take)
                .map(|n| reading(ctx.index, &self.cfg.name, self.cfg.devices, n, now))
                .collect();
            let upto = last + take;
            let append = Append::readings(batch, Some((key.clone(), upto.to_be_bytes().to_vec())));
            // Not raced against shutdown: an append that was sent completes, so the cursor and the
            // readings stay together (the writer commits or refuses it as a whole either way).
            match ctx.outbox.append(append).await {
                Ok(()) => {
                    last = upto;
                    retry = Duration::from_millis(100);
                    ctx.status.readings_taken(take, now);
                }
                Err(crate::store::Error::Closed) => return,
                Err(error) => {
                    // The "device" keeps these readings; the same numbers are offered again.
                    tracing::warn!(%error, source = %self.cfg.name, "Append failed; the readings stay with the source.");
                    ctx.status.error();
                    if sleep_or_stop(&ctx, retry).await {
                        return;
                    }
                    retry = (retry * 2).min(Duration::from_secs(10));
                    continue;
                }
            }
            if self.cfg.interval_ms > 0
                && sleep_or_stop(&ctx, Duration::from_millis(self.cfg.interval_ms)).await
            {
                return;
            }
        }
        tracing::info!(source = %self.cfg.name, count, "Simulated source has handed over all its readings.");
        ctx.status
            .set_detail("finished", serde_json::Value::Bool(true));
    }
}

/// Sleeps; returns true if shutdown came first.
async fn sleep_or_stop(ctx: &Context, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = ctx.shutdown.cancelled() => true,
    }
}
