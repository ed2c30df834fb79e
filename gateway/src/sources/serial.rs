//! Sensor nodes on a serial line (`[[source]] kind = "serial"`): our own firmware speaking the
//! [`wire`](heim_shared_types::wire) protocol in [frames](heim_shared_types::frame).
//!
//! * The port is opened by path (a `/dev/serial/by-id/…` link survives re-enumeration); when it
//!   vanishes (cable pulled) the source closes it and reopens it with back-off, without a restart.
//! * Garbage and broken frames are counted and logged; decoding resynchronises at the next frame
//!   delimiter and carries on.
//! * A node's readings are accepted in order per boot: the next one is `seq` = last committed + 1.
//!   The last committed `seq` of every `(node, boot)` is an outbox cursor written in the same
//!   transaction as the readings, so a retransmitted reading — after a lost ack, a node reboot or a
//!   gateway `kill -9` — is recognised and re-acked, never stored twice.
//! * `Ack` is sent only after the outbox transaction committed.
//! * When the gateway's clock is synchronised, the node's clock is set (`SetClock`) on `Hello`.
//!
//! The protocol logic is generic over `AsyncRead + AsyncWrite`, so tests can drive it through a
//! pseudo-terminal (as here) or an in-memory pipe.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use heim_shared_types::frame::{self, Decoder, Feed, FrameError, MAX_FRAME};
use heim_shared_types::wire::{GatewayMsg, NodeMsg};
use heim_shared_types::{DeviceId, DeviceTime, Reading};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_serial::SerialPortBuilderExt;

use super::Context;
use crate::store::Append;

/// `[[source]] kind = "serial"`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Name, unique among sources.
    pub name: String,
    /// The serial device, preferably a stable `/dev/serial/by-id/…` link.
    pub path: PathBuf,
    /// Line speed.
    #[serde(default = "default_baud")]
    pub baud: u32,
}

const fn default_baud() -> u32 {
    115_200
}

/// Why a session on an open port ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The port failed or went away.
    #[error("serial I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The port reached end of file (the other side closed).
    #[error("the serial line was closed")]
    Closed,
    /// The outbox has stopped.
    #[error("the outbox has stopped")]
    Outbox,
}

/// The serial source.
#[derive(Debug)]
pub struct SerialSource {
    cfg: SerialConfig,
}

/// The key of a node boot's cursor (last committed `seq`) in the outbox.
pub fn cursor_key(node_id: u64, boot_id: u32) -> String {
    format!("serial:{node_id:016x}:{boot_id:08x}")
}

/// The stable id of a node's reading.
pub fn reading_id(node_id: u64, boot_id: u32, seq: u32) -> heim_shared_types::ReadingId {
    crate::reading_id::derive(
        "node",
        &[
            &node_id.to_be_bytes(),
            &boot_id.to_be_bytes(),
            &seq.to_be_bytes(),
        ],
    )
}

impl SerialSource {
    /// A source from its config.
    pub fn new(cfg: SerialConfig) -> Self {
        Self { cfg }
    }

    /// Opens the port, runs the protocol, and reopens it with back-off whenever it goes away,
    /// until shutdown.
    pub async fn run(self, ctx: Context) {
        let mut backoff = Duration::from_millis(100);
        let mut reported_absent = false;
        let mut cursors = Cursors::default();
        loop {
            if ctx.shutdown.is_cancelled() {
                return;
            }
            let opened = tokio_serial::new(self.cfg.path.to_string_lossy(), self.cfg.baud)
                .open_native_async();
            match opened {
                Ok(port) => {
                    tracing::info!(source = %self.cfg.name, port = %self.cfg.path.display(), "Serial port open.");
                    ctx.status.set_detail("port", "open".into());
                    reported_absent = false;
                    backoff = Duration::from_millis(100);
                    let result = tokio::select! {
                        r = session(port, &ctx, &mut cursors) => r,
                        _ = ctx.shutdown.cancelled() => return,
                    };
                    ctx.status.set_detail("port", "closed".into());
                    if let Err(error) = result {
                        tracing::warn!(%error, source = %self.cfg.name, "Serial session ended; reopening.");
                    }
                }
                Err(error) => {
                    ctx.status.set_detail("port", "absent".into());
                    if !reported_absent {
                        tracing::warn!(%error, source = %self.cfg.name, port = %self.cfg.path.display(), "Serial port not available; retrying with back-off.");
                        reported_absent = true;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = ctx.shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Last committed `seq` per `(node, boot)`, loaded from the outbox on first use.
#[derive(Debug, Default)]
struct Cursors {
    map: HashMap<(u64, u32), u32>,
}

impl Cursors {
    async fn get(&mut self, ctx: &Context, node: u64, boot: u32) -> Result<u32, Error> {
        if let Some(c) = self.map.get(&(node, boot)) {
            return Ok(*c);
        }
        let v = ctx
            .outbox
            .cursor(&cursor_key(node, boot))
            .await
            .map_err(|_| Error::Outbox)?
            .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
            .map_or(0, u32::from_be_bytes);
        self.map.insert((node, boot), v);
        Ok(v)
    }
}

/// One session on an open line: until it fails or closes.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut port: S,
    ctx: &Context,
    cursors: &mut Cursors,
) -> Result<(), Error> {
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = port.read(&mut buf).await?;
        if n == 0 {
            return Err(Error::Closed);
        }
        let mut msgs = Vec::new();
        for b in &buf[..n] {
            match decoder.push::<NodeMsg>(*b) {
                Feed::Incomplete => {}
                Feed::Frame(m) => msgs.push(m),
                Feed::Bad(e) => bad_frame(ctx, e),
            }
        }
        handle(&mut port, ctx, cursors, msgs).await?;
    }
}

fn bad_frame(ctx: &Context, error: FrameError) {
    ctx.status.error();
    tracing::warn!(error = ?error, source = %ctx.name, "Dropped a corrupt frame.");
}

async fn send<S: AsyncWrite + Unpin>(port: &mut S, msg: &GatewayMsg) -> Result<(), Error> {
    let mut out = [0u8; MAX_FRAME];
    // Gateway messages are a few bytes; encoding cannot run out of room.
    if let Ok(f) = frame::encode(msg, &mut out) {
        port.write_all(f).await?;
        port.flush().await?;
    }
    Ok(())
}

async fn handle<S: AsyncWrite + Unpin>(
    port: &mut S,
    ctx: &Context,
    cursors: &mut Cursors,
    msgs: Vec<NodeMsg>,
) -> Result<(), Error> {
    // Readings that extend a boot's committed run, grouped so one transaction takes a burst.
    let mut batch: Vec<Reading> = Vec::new();
    let mut advanced: HashMap<(u64, u32), u32> = HashMap::new();
    let mut reack: Vec<(u32, u32)> = Vec::new();
    let now = ctx.clock.now();
    for m in msgs {
        match m {
            NodeMsg::Hello {
                node_id,
                firmware_version,
                boot_id,
                dropped,
                ..
            } => {
                tracing::info!(
                    node = format_args!("{node_id:016x}"),
                    boot = boot_id,
                    firmware = format_args!(
                        "{}.{}.{}",
                        firmware_version >> 16,
                        (firmware_version >> 8) & 0xff,
                        firmware_version & 0xff
                    ),
                    dropped,
                    "Sensor node says hello."
                );
                ctx.status
                    .set_detail("node", format!("{node_id:016x}").into());
                ctx.status.set_detail("node_dropped", dropped.into());
                if ctx.clock.synchronized() {
                    send(
                        port,
                        &GatewayMsg::SetClock {
                            unix_millis: ctx.clock.now().unix_millis,
                        },
                    )
                    .await?;
                }
            }
            NodeMsg::Status {
                queued, dropped, ..
            } => {
                ctx.status.set_detail("node_queued", queued.into());
                ctx.status.set_detail("node_dropped", dropped.into());
            }
            NodeMsg::Reading {
                node_id,
                boot_id,
                seq,
                node_time_ms,
                clock_set,
                measurement,
            } => {
                let key = (node_id, boot_id);
                let committed = match advanced.get(&key) {
                    Some(s) => *s,
                    None => cursors.get(ctx, node_id, boot_id).await?,
                };
                if seq <= committed {
                    // A retransmission of something already stored: only the ack was lost.
                    reack.push((boot_id, committed));
                    continue;
                }
                if seq != committed + 1 {
                    // A gap (a corrupt frame before it): wait for the node to resend in order.
                    tracing::debug!(
                        seq,
                        committed,
                        "Out-of-order reading ignored until the gap is resent."
                    );
                    continue;
                }
                advanced.insert(key, seq);
                batch.push(Reading {
                    id: reading_id(node_id, boot_id, seq),
                    device: DeviceId::Node(node_id),
                    device_time: clock_set
                        .then(|| i64::try_from(node_time_ms).ok().map(DeviceTime::UnixMillis))
                        .flatten(),
                    device_time_trusted: clock_set,
                    received: now,
                    measurement,
                });
            }
        }
    }
    if !batch.is_empty() {
        let cursors_update: Vec<(String, Vec<u8>)> = advanced
            .iter()
            .map(|((n, b), s)| (cursor_key(*n, *b), s.to_be_bytes().to_vec()))
            .collect();
        let n = batch.len() as u64;
        let append = Append {
            readings: batch
                .into_iter()
                .map(|r| (r, crate::store::Lane::Routine))
                .collect(),
            events: Vec::new(),
            cursors: cursors_update,
        };
        match ctx.outbox.append(append).await {
            Ok(()) => {
                ctx.status.readings_taken(n, now);
                for ((node, boot), seq) in advanced {
                    cursors.map.insert((node, boot), seq);
                    send(port, &GatewayMsg::Ack { boot_id: boot, seq }).await?;
                }
            }
            Err(crate::store::Error::Closed) => return Err(Error::Outbox),
            Err(error) => {
                // Not stored, not acked: the node keeps them and sends them again.
                ctx.status.error();
                tracing::warn!(%error, source = %ctx.name, "Append failed; the node keeps its readings.");
            }
        }
    }
    reack.sort_unstable();
    reack.dedup();
    for (boot_id, seq) in reack {
        send(port, &GatewayMsg::Ack { boot_id, seq }).await?;
    }
    Ok(())
}
