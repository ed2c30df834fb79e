//! The writer thread: the only read-write connection, fed by the handle's bounded channel.
//!
//! It runs a tiny current-thread runtime of its own so it can wait on the channel with a timeout
//! (deletes are batched on a timer) without any SQLite call touching the daemon's runtime.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::{Append, Body, Command, Error, Lane, Options, Row, Stats, schema};

/// Acks are deleted in one transaction once this many are pending…
const ACK_BATCH: usize = 4096;
/// …or this long after the first of them arrived.
const ACK_DELAY: Duration = Duration::from_millis(100);

pub(super) fn open(opts: &Options) -> Result<(Connection, Stats), Error> {
    if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Sqlite(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    }
    let mut conn = Connection::open_with_flags(
        &opts.path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // WAL: appends and deletes are sequential writes; readers (none today) would not block us.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL, not NORMAL: see the module docs of `store` (power loss after a device ack).
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Keep the WAL small: checkpoint every 1 MiB (256 pages) rather than 4 MiB, and truncate it
    // back to 2 MiB after a checkpoint, so a nearly full SD card keeps room for deletes.
    conn.pragma_update(None, "wal_autocheckpoint", 256)?;
    conn.pragma_update(None, "journal_size_limit", 2 * 1024 * 1024)?;
    // A small page cache: RSS must stay flat regardless of backlog (1 MiB; the access pattern is
    // append at one end, read and delete at the other, so few pages are hot).
    conn.pragma_update(None, "cache_size", -1024)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(Duration::from_secs(5))?;
    schema::migrate(&mut conn)?;
    let pending: i64 = conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?;
    let mut stats = Stats {
        pending: pending as u64,
        max_bytes: opts.max_bytes,
        ..Stats::default()
    };
    let (used, _) = used_bytes(&conn);
    stats.used_bytes = used;
    stats.near_full = used >= opts.max_bytes / 10 * 9;
    let space = free_space(&opts.path);
    let inner_free = free_pages_bytes(&conn);
    stats.disk_free_bytes = space.map(|s| s.free + inner_free);
    stats.disk_low = space.is_some_and(|s| s.free + inner_free < s.reserve);
    stats.full = used >= opts.max_bytes || stats.disk_low;
    Ok((conn, stats))
}

/// Bytes in the database's free pages.
fn free_pages_bytes(conn: &Connection) -> u64 {
    let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
    q("PRAGMA freelist_count").max(0) as u64 * q("PRAGMA page_size").max(0) as u64
}

/// Bytes in pages that hold data, and the page size.
fn used_bytes(conn: &Connection) -> (u64, u64) {
    let q = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0);
    let page_size = q("PRAGMA page_size").max(512) as u64;
    let used = (q("PRAGMA page_count") - q("PRAGMA freelist_count")).max(0) as u64;
    (used * page_size, page_size)
}

struct Writer {
    conn: Connection,
    opts: Options,
    stats: Stats,
    stats_tx: watch::Sender<Stats>,
    appended: Arc<Notify>,
    parked: VecDeque<(Append, oneshot::Sender<Result<(), Error>>)>,
    acks: Vec<i64>,
    first_ack: Option<Instant>,
    ballast: Ballast,
}

pub(super) fn run(
    conn: Connection,
    stats: Stats,
    opts: Options,
    mut rx: mpsc::Receiver<Command>,
    stats_tx: watch::Sender<Stats>,
    appended: Arc<Notify>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            tracing::error!(%error, "Cannot start the outbox writer's runtime.");
            return;
        }
    };
    let opts_path = opts.path.clone();
    let mut w = Writer {
        conn,
        stats,
        opts,
        stats_tx,
        appended,
        parked: VecDeque::new(),
        acks: Vec::new(),
        first_ack: None,
        ballast: Ballast::new(&opts_path),
    };

    rt.block_on(async move {
        let mut batch: Vec<Command> = Vec::with_capacity(64);
        loop {
            let mut wait = w
                .first_ack
                .map(|t| ACK_DELAY.saturating_sub(t.elapsed()))
                .unwrap_or(Duration::from_secs(3600));
            if w.stats.full || w.stats.disk_full {
                // Space can come back without us (another file deleted): look again each second.
                wait = wait.min(Duration::from_secs(1));
            }
            let first = match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(cmd)) => Some(cmd),
                Ok(None) => break,
                Err(_) => None,
            };
            let timed_out = first.is_none();
            batch.extend(first);
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            if timed_out && (w.stats.full || w.stats.disk_full) {
                w.refresh_size();
                w.publish();
            }
            w.handle(&mut batch);
            if w.acks.len() >= ACK_BATCH || w.first_ack.is_some_and(|t| t.elapsed() >= ACK_DELAY) {
                w.delete_acked();
            }
        }
        w.delete_acked();
        // Appends still parked at shutdown were never committed: their sources still hold them.
        for (_, reply) in w.parked.drain(..) {
            let _ = reply.send(Err(Error::Closed));
        }
        if let Err(error) = w.conn.pragma_update(None, "wal_checkpoint", "TRUNCATE") {
            tracing::warn!(%error, "Could not checkpoint the WAL at shutdown.");
        }
    });
}

impl Writer {
    fn handle(&mut self, batch: &mut Vec<Command>) {
        let mut appends: Vec<(Append, oneshot::Sender<Result<(), Error>>)> = Vec::new();
        for cmd in batch.drain(..) {
            match cmd {
                Command::Append(a, reply) => appends.push((a, reply)),
                other => {
                    // Keep order: everything appended before a fetch is visible to it.
                    self.commit_appends(&mut appends);
                    self.handle_other(other);
                }
            }
        }
        self.commit_appends(&mut appends);
    }

    fn handle_other(&mut self, cmd: Command) {
        match cmd {
            Command::Append(..) => unreachable!("appends are batched by the caller"),
            Command::Fetch { after, max, reply } => {
                let _ = reply.send(self.fetch(after, max));
            }
            Command::Ack(ids) => {
                if self.first_ack.is_none() {
                    self.first_ack = Some(Instant::now());
                }
                self.acks.extend(ids);
            }
            Command::Cursor(key, reply) => {
                let r =
                    self.conn
                        .query_row("SELECT value FROM cursor WHERE key = ?1", [&key], |r| {
                            r.get::<_, Vec<u8>>(0)
                        });
                let _ = reply.send(match r {
                    Ok(v) => Ok(Some(v)),
                    Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
                    Err(e) => Err(e.into()),
                });
            }
            Command::WithConn(job) => job(&mut self.conn),
            Command::Flush(reply) => {
                self.delete_acked();
                let _ = reply.send(());
            }
        }
    }

    fn commit_appends(&mut self, appends: &mut Vec<(Append, oneshot::Sender<Result<(), Error>>)>) {
        // Parked appends go first, in arrival order, so a source's batches stay in order.
        let mut queue: VecDeque<_> = std::mem::take(&mut self.parked);
        queue.extend(appends.drain(..));
        while !queue.is_empty() {
            if self.stats.full {
                self.parked = queue;
                return;
            }
            let mut group = Vec::new();
            let mut rows = 0;
            while let Some((a, _)) = queue.front() {
                if !group.is_empty() && rows + a.len() > self.opts.write_batch {
                    break;
                }
                rows += a.len();
                group.push(queue.pop_front().expect("front exists"));
            }
            let result = self.insert(&group);
            match result {
                Ok(n) => {
                    self.stats.pending += n;
                    self.stats.appended += n;
                    self.stats.disk_full = false;
                    self.refresh_size();
                    self.publish();
                    if n > 0 {
                        self.appended.notify_one();
                    }
                    for (_, reply) in group {
                        let _ = reply.send(Ok(()));
                    }
                }
                Err(e) => {
                    let disk_full = matches!(&e, Error::DiskFull);
                    if disk_full {
                        tracing::error!(
                            readings = rows,
                            "Disk full: the append was not stored; its sources keep the readings and retry."
                        );
                        self.stats.disk_full = true;
                        self.publish();
                    } else {
                        tracing::error!(error = %e, "An outbox append failed.");
                    }
                    for (_, reply) in group {
                        let _ = reply.send(Err(if disk_full {
                            Error::DiskFull
                        } else {
                            Error::Sqlite(rusqlite::Error::SqliteFailure(
                                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                                Some(e.to_string()),
                            ))
                        }));
                    }
                }
            }
        }
    }

    fn insert(
        &mut self,
        group: &[(Append, oneshot::Sender<Result<(), Error>>)],
    ) -> Result<u64, Error> {
        let tx = self.conn.transaction().map_err(map_full)?;
        let mut n = 0u64;
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO outbox (lane, kind, topic, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(map_full)?;
            let mut cur = tx
                .prepare_cached(
                    "INSERT INTO cursor (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .map_err(map_full)?;
            let mut buf = Vec::with_capacity(128);
            for (a, _) in group {
                for (reading, lane) in &a.readings {
                    buf.clear();
                    buf = postcard::to_extend(reading, buf).expect("Vec never runs out of room");
                    ins.execute(params![lane.to_sql(), 0i64, Option::<&str>::None, &buf])
                        .map_err(map_full)?;
                    n += 1;
                }
                for ev in &a.events {
                    ins.execute(params![ev.lane.to_sql(), 1i64, &ev.topic, &ev.payload])
                        .map_err(map_full)?;
                    n += 1;
                }
                for (k, v) in &a.cursors {
                    cur.execute(params![k, v]).map_err(map_full)?;
                }
            }
        }
        tx.commit().map_err(map_full)?;
        Ok(n)
    }

    fn fetch(&mut self, after: [i64; 2], max: usize) -> Result<Vec<Row>, Error> {
        let mut out = Vec::with_capacity(max.min(1024));
        let mut prio = self.conn.prepare_cached(
            "SELECT id, lane, kind, topic, body FROM outbox
             WHERE lane = 0 AND id > ?1 ORDER BY id LIMIT ?2",
        )?;
        read_rows(&mut prio, after[0], max, &mut out)?;
        if out.len() < max {
            let mut routine = self.conn.prepare_cached(
                "SELECT id, lane, kind, topic, body FROM outbox
                 WHERE id > ?1 AND lane = 1 ORDER BY id LIMIT ?2",
            )?;
            let left = max - out.len();
            read_rows(&mut routine, after[1], left, &mut out)?;
        }
        Ok(out)
    }

    fn delete_acked(&mut self) {
        self.first_ack = None;
        if self.acks.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.acks);
        let result = (|| -> Result<u64, rusqlite::Error> {
            let tx = self.conn.transaction()?;
            let mut n = 0;
            {
                let mut del = tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?;
                for id in &ids {
                    n += del.execute([id])? as u64;
                }
            }
            tx.commit()?;
            Ok(n)
        })();
        match result {
            Ok(n) => {
                self.stats.pending = self.stats.pending.saturating_sub(n);
                self.stats.acked += n;
                self.refresh_size();
                self.publish();
                if !self.stats.full && !self.parked.is_empty() {
                    tracing::info!("The outbox has room again; held-back sources continue.");
                    let mut none = Vec::new();
                    self.commit_appends(&mut none);
                }
            }
            Err(error) => {
                // A delete needs WAL space: on a full disk, give up the ballast and try again.
                if is_full(&error) && self.ballast.release() {
                    tracing::warn!(
                        "Disk full while deleting acknowledged rows: released the reserve file."
                    );
                    self.acks = ids;
                    self.delete_acked();
                    return;
                }
                // Keep them: they will be deleted with the next batch (or redelivered after a
                // restart, which the stable ids make harmless).
                tracing::warn!(%error, rows = ids.len(), "Could not delete acknowledged rows yet.");
                self.acks = ids;
                self.first_ack = Some(Instant::now());
            }
        }
    }

    fn refresh_size(&mut self) {
        let (used, _) = used_bytes(&self.conn);
        let was_near = self.stats.near_full;
        let was_full = self.stats.full;
        let was_low = self.stats.disk_low;
        self.stats.used_bytes = used;
        let space = free_space(&self.opts.path);
        // Free pages inside the database count as free space: the file never shrinks, but its
        // free pages take new rows before the file grows.
        let inner_free = free_pages_bytes(&self.conn);
        self.stats.disk_free_bytes = space.map(|s| s.free + inner_free);
        // The file system's free space counts like the size limit: below the reserve, sources are
        // held back, so the uplink's deletes and the WAL always have room to free space again.
        self.stats.disk_low = space.is_some_and(|s| {
            let reserve = if was_low {
                s.reserve + s.reserve / 2
            } else {
                s.reserve
            };
            s.free + inner_free < reserve
        });
        self.stats.near_full = used >= self.opts.max_bytes / 10 * 9;
        // Hysteresis: once full, take appends again only below 95 %, so sources do not flap.
        self.stats.full = self.stats.disk_low
            || if was_full {
                used >= self.opts.max_bytes / 20 * 19
            } else {
                used >= self.opts.max_bytes
            };
        if self.stats.disk_low && !was_low {
            tracing::error!(
                free_bytes = self.stats.disk_free_bytes,
                "The disk is nearly full: sources are held back until the uplink drains the outbox."
            );
        }
        if !self.stats.disk_low && was_low {
            tracing::info!(
                free_bytes = self.stats.disk_free_bytes,
                "Disk space is back."
            );
            self.ballast.restore();
        }
        if self.stats.near_full && !was_near {
            tracing::warn!(
                used_bytes = used,
                max_bytes = self.opts.max_bytes,
                "The outbox is above 90 % of its size limit."
            );
        }
        if self.stats.full && !was_full && !self.stats.disk_low {
            tracing::error!(
                used_bytes = used,
                max_bytes = self.opts.max_bytes,
                "The outbox is full: sources are held back until the uplink drains it."
            );
        }
    }

    fn publish(&self) {
        self.stats_tx.send_replace(self.stats);
    }
}

fn read_rows(
    stmt: &mut rusqlite::CachedStatement<'_>,
    after: i64,
    max: usize,
    out: &mut Vec<Row>,
) -> Result<(), Error> {
    let mut rows = stmt.query(params![after, max as i64])?;
    while let Some(r) = rows.next()? {
        let id: i64 = r.get(0)?;
        let lane = Lane::from_sql(r.get(1)?);
        let kind: i64 = r.get(2)?;
        let body = match kind {
            0 => {
                let bytes = r.get_ref(4)?.as_blob().map_err(rusqlite::Error::from)?;
                match postcard::from_bytes(bytes) {
                    Ok(reading) => Body::Reading(reading),
                    Err(source) => {
                        // Keep the row (never drop silently) but do not let it block the rest.
                        let error = Error::Corrupt { id, source };
                        tracing::error!(%error, "Skipped an undecodable outbox row; it stays in the store.");
                        continue;
                    }
                }
            }
            _ => Body::Event {
                topic: r.get(3)?,
                payload: r.get(4)?,
            },
        };
        out.push(Row { id, lane, body });
    }
    Ok(())
}

fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

/// Free space on the store's file system and the reserve kept there.
#[derive(Debug, Clone, Copy)]
struct Space {
    free: u64,
    reserve: u64,
}

fn free_space(db: &std::path::Path) -> Option<Space> {
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = st.fragment_size() as u64;
    let free = st.blocks_available() as u64 * frag;
    let size = st.blocks() as u64 * frag;
    // 5 % of the file system, at least 1 MiB, at most 64 MiB.
    let reserve = (size / 20).clamp(1 << 20, 64 << 20);
    Some(Space { free, reserve })
}

/// A small file beside the store that is given up when the disk fills, so that deleting
/// acknowledged rows (which needs WAL space) can still succeed, and recreated once space is back.
#[derive(Debug)]
pub(super) struct Ballast {
    path: std::path::PathBuf,
    present: bool,
}

const BALLAST_BYTES: usize = 512 * 1024;

impl Ballast {
    pub(super) fn new(db: &std::path::Path) -> Self {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(".reserve");
        let mut b = Self {
            path: db.with_file_name(name),
            present: false,
        };
        b.restore();
        b
    }

    fn restore(&mut self) {
        if self.present {
            return;
        }
        // Written out (not a sparse file), so the space is really held.
        self.present = std::fs::write(&self.path, vec![0u8; BALLAST_BYTES]).is_ok();
        if !self.present {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn release(&mut self) -> bool {
        if !self.present {
            return false;
        }
        self.present = false;
        std::fs::remove_file(&self.path).is_ok()
    }
}

fn map_full(e: rusqlite::Error) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull => {
            Error::DiskFull
        }
        _ => Error::Sqlite(e),
    }
}
