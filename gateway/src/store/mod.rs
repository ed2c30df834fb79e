//! The outbox: every reading is here from the commit that took it from its source until the broker's
//! PUBACK for the packet that carried it.
//!
//! # Design constraints
//! * **One writer.** A dedicated OS thread owns the only read-write SQLite connection and is fed
//!   by a bounded channel; no SQLite call ever runs on the async runtime. Appends from all sources
//!   are batched into one transaction while they queue up.
//! * **Committed means taken.** [`Outbox::append`] returns only after its transaction committed;
//!   only then may a source ack its device or advance its cursor. A source's cursor is written in
//!   the *same* transaction as its readings ([`Append::cursors`]), so after `kill -9` the readings
//!   and the cursor agree.
//! * **`synchronous = FULL` in WAL mode.** `NORMAL` survives a process crash but may lose the last
//!   commits on power loss; a home gateway loses power routinely (a pulled plug), and a reading the
//!   device has already deleted on our ack would then be gone. `FULL` costs one `fsync` per
//!   transaction, which batching amortises.
//! * **Ids are monotonic within a lane while rows exist**, and the uplink sends in id order, so
//!   readings from one device leave in the order they were taken. The priority lane (alerts) is
//!   sent before the routine lane.
//! * **Rows are deleted only on PUBACK** ([`Outbox::ack`]), batched; a crash before the delete
//!   commits means redelivery, which the stable reading id makes harmless.
//! * **Never drop silently.** At [`store.max_bytes`](crate::config::StoreConfig) the writer stops
//!   taking appends (the sources wait and keep their readings) and raises an alarm; a full disk
//!   fails the append with [`Error::DiskFull`] and the source retries.

mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use heim_shared_types::Reading;
use tokio::sync::{mpsc, oneshot, watch};

pub use schema::MIGRATIONS;

/// Outbox errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The disk (or the file system's quota) is full; nothing of this append was stored.
    #[error("the disk is full; the append was not stored")]
    DiskFull,
    /// The store file was written by a newer Heim (schema version above what this build knows).
    #[error("the store has schema version {found}, newer than this build's {known}")]
    SchemaTooNew {
        /// Found in the file.
        found: i64,
        /// Known to this build.
        known: i64,
    },
    /// A stored row could not be decoded (corruption or a bug); the row is kept, not dropped.
    #[error("stored row {id} cannot be decoded: {source}")]
    Corrupt {
        /// Row id.
        id: i64,
        /// Decoder error.
        #[source]
        source: postcard::Error,
    },
    /// The writer thread has stopped (shutdown, or it failed at start).
    #[error("the outbox writer has stopped")]
    Closed,
    /// Could not start the writer thread or open the file.
    #[error("cannot open the store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Whether trying again later may succeed (a supervisor backs off and retries).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::DiskFull => true,
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::SystemIoFailure
            ),
            _ => false,
        }
    }
}

/// Which queue a row waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Sent before anything in the routine lane (alerts).
    Priority,
    /// Everything else, in order.
    Routine,
}

impl Lane {
    pub(crate) const fn to_sql(self) -> i64 {
        match self {
            Lane::Priority => 0,
            Lane::Routine => 1,
        }
    }
    pub(crate) const fn from_sql(v: i64) -> Self {
        if v == 0 {
            Lane::Priority
        } else {
            Lane::Routine
        }
    }
}

/// A durable non-reading message (an alert event, a DetectedIssue), sent QoS 1 like readings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Topic below `heim/v1/{gateway_id}/`, e.g. `events`.
    pub topic: String,
    /// The payload, sent as is.
    pub payload: Vec<u8>,
    /// Its lane.
    pub lane: Lane,
}

/// One atomic append: all of it commits, or none of it.
#[derive(Debug, Clone, Default)]
pub struct Append {
    /// Readings, each with its lane.
    pub readings: Vec<(Reading, Lane)>,
    /// Durable events.
    pub events: Vec<Event>,
    /// Source cursors upserted in the same transaction (`key` → opaque value).
    pub cursors: Vec<(String, Vec<u8>)>,
}

impl Append {
    /// An append of routine readings and one cursor.
    pub fn readings(readings: Vec<Reading>, cursor: Option<(String, Vec<u8>)>) -> Self {
        Self {
            readings: readings.into_iter().map(|r| (r, Lane::Routine)).collect(),
            events: Vec::new(),
            cursors: cursor.into_iter().collect(),
        }
    }

    fn len(&self) -> usize {
        self.readings.len() + self.events.len()
    }
}

/// What a stored row carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// A reading.
    Reading(Reading),
    /// An event for the topic `heim/v1/{gw}/{topic}`.
    Event {
        /// Topic suffix.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
    },
}

/// A row waiting to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Row id (monotonic while rows exist).
    pub id: i64,
    /// Lane.
    pub lane: Lane,
    /// Content.
    pub body: Body,
}

/// A snapshot of the outbox for status and alarms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Rows waiting for a PUBACK.
    pub pending: u64,
    /// Bytes the database uses (pages in use).
    pub used_bytes: u64,
    /// The configured limit.
    pub max_bytes: u64,
    /// At or above 90 % of the limit.
    pub near_full: bool,
    /// At the limit: sources are held back.
    pub full: bool,
    /// The last append failed because the disk is full.
    pub disk_full: bool,
    /// Free space on the store's file system is below the reserve: sources are held back.
    pub disk_low: bool,
    /// Free bytes on the store's file system, when known.
    pub disk_free_bytes: Option<u64>,
    /// Readings stored since start.
    pub appended: u64,
    /// Rows deleted on PUBACK since start.
    pub acked: u64,
}

/// Options for opening the outbox.
#[derive(Debug, Clone)]
pub struct Options {
    /// The SQLite file.
    pub path: PathBuf,
    /// Size limit in bytes.
    pub max_bytes: u64,
    /// Readings per transaction at most.
    pub write_batch: usize,
}

type Job = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

enum Command {
    Append(Append, oneshot::Sender<Result<(), Error>>),
    Fetch {
        after: [i64; 2],
        max: usize,
        reply: oneshot::Sender<Result<Vec<Row>, Error>>,
    },
    Ack(Vec<i64>),
    Cursor(String, oneshot::Sender<Result<Option<Vec<u8>>, Error>>),
    WithConn(Job),
    Flush(oneshot::Sender<()>),
}

/// Looks at every append before it is stored, and may add to it: the care plan links readings,
/// moves alerting readings to the priority lane and adds alert events. It must never fail or
/// drop the append (a broken plan never stops readings flowing).
pub trait Tap: Send + Sync + std::fmt::Debug {
    /// Called in [`Outbox::append`] before the append goes to the writer.
    fn tap<'a>(
        &'a self,
        append: &'a mut Append,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

/// Handle to the outbox writer. Cheap to clone; the writer stops when every handle is dropped.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Command>,
    stats: watch::Receiver<Stats>,
    appended: Arc<tokio::sync::Notify>,
    path: Arc<Path>,
    tap: Option<Arc<dyn Tap>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Append(..) => "Append",
            Command::Fetch { .. } => "Fetch",
            Command::Ack(_) => "Ack",
            Command::Cursor(..) => "Cursor",
            Command::WithConn(_) => "WithConn",
            Command::Flush(_) => "Flush",
        })
    }
}

impl Outbox {
    /// Opens (creating and migrating) the store and starts its writer thread.
    pub fn open(opts: Options) -> Result<(Self, std::thread::JoinHandle<()>), Error> {
        let (tx, rx) = mpsc::channel(256);
        let appended = Arc::new(tokio::sync::Notify::new());
        let path: Arc<Path> = Arc::from(opts.path.as_path());
        let (conn, initial) = writer::open(&opts).map_err(|e| Error::Open {
            path: opts.path.clone(),
            source: Box::new(e),
        })?;
        let (stats_tx, stats) = watch::channel(initial);
        let notify = appended.clone();
        let join = std::thread::Builder::new()
            .name("heim-outbox".into())
            .spawn(move || writer::run(conn, initial, opts, rx, stats_tx, notify))
            .map_err(|e| Error::Open {
                path: path.to_path_buf(),
                source: Box::new(Error::Sqlite(rusqlite::Error::ToSqlConversionFailure(
                    Box::new(e),
                ))),
            })?;
        Ok((
            Self {
                tx,
                stats,
                appended,
                path,
                tap: None,
            },
            join,
        ))
    }

    /// Stores readings, events and cursors in one transaction; returns after it committed.
    /// Waits (backpressure) while the outbox is at its size limit.
    pub async fn append(&self, mut append: Append) -> Result<(), Error> {
        if append.len() == 0 && append.cursors.is_empty() {
            return Ok(());
        }
        if let Some(tap) = &self.tap {
            tap.tap(&mut append).await;
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append(append, reply))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// A handle whose appends pass through `tap` first (handed to sources).
    pub fn with_tap(&self, tap: Arc<dyn Tap>) -> Outbox {
        Outbox {
            tap: Some(tap),
            ..self.clone()
        }
    }

    /// The up to `max` oldest rows, priority lane first, with ids above `after[lane]`.
    pub async fn fetch(&self, after: [i64; 2], max: usize) -> Result<Vec<Row>, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Fetch { after, max, reply })
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Rows whose PUBACK arrived: deleted in a later batched transaction.
    pub async fn ack(&self, ids: Vec<i64>) -> Result<(), Error> {
        self.tx
            .send(Command::Ack(ids))
            .await
            .map_err(|_| Error::Closed)
    }

    /// A source cursor.
    pub async fn cursor(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Cursor(key.to_owned(), reply))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Runs `f` on the writer thread with the connection (for other components' own tables).
    pub async fn with_conn<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut rusqlite::Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = reply.send(f(conn).map_err(Error::from));
        });
        self.tx
            .send(Command::WithConn(job))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Waits until every ack sent so far has been committed (used at shutdown and in tests).
    pub async fn flush(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Flush(reply))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Outbox statistics, updated after every write.
    pub fn stats(&self) -> watch::Receiver<Stats> {
        self.stats.clone()
    }

    /// Notified after every append that stored rows.
    pub fn appended(&self) -> Arc<tokio::sync::Notify> {
        self.appended.clone()
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;
