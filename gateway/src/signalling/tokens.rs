//! Bearer tokens for LAN clients, issued at enrolment (`heim sig enrol NAME`), and the per-token
//! rate limit.
//!
//! The token itself (256 random bits, base64url) is shown once; the file keeps only its SHA-256, so
//! a copied file grants nothing. The daemon re-reads the file when it changes, so enrolment and
//! revocation take effect without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Token file errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a token file.
    #[error("{path}: not a Heim token file ({reason})")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why (no content quoted).
        reason: String,
    },
    /// A client of that name is already enrolled.
    #[error("a client named {0:?} is already enrolled; revoke it first")]
    Exists(String),
    /// The name is not usable.
    #[error("a client name is 1-64 characters of [0-9a-zA-Z._~-]")]
    BadName,
}

/// One enrolled client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Its name (appears as `from` in rings and in logs).
    pub name: String,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// When it was enrolled (RFC 3339).
    pub created: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    tokens: Vec<Entry>,
}

fn digest(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path) -> Result<File, Error> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::Format {
            path: path.to_owned(),
            reason: format!("line {}, column {}", e.line(), e.column()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(source) => Err(Error::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write(path: &Path, f: &File) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let body = serde_json::to_vec_pretty(f).unwrap_or_default();
    file.write_all(&body).map_err(io)?;
    file.sync_all().map_err(io)?;
    match_owner(&tmp);
    std::fs::rename(&tmp, path).map_err(io)
}

/// `heim sig enrol` is often run as root while the daemon runs as its own user: a file made in the
/// daemon's state directory gets that directory's owner, so the daemon can read it.
pub(crate) fn match_owner(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let Some(dir) = path.parent() else { return };
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let _ = nix::unistd::chown(
        path,
        Some(nix::unistd::Uid::from_raw(meta.uid())),
        Some(nix::unistd::Gid::from_raw(meta.gid())),
    );
}

/// Enrols a client: returns its token, to be shown once.
pub fn enrol(path: &Path, name: &str) -> Result<String, Error> {
    if name.len() > 64 || !super::wire::valid_id(name) {
        return Err(Error::BadName);
    }
    let mut f = read(path)?;
    if f.tokens.iter().any(|e| e.name == name) {
        return Err(Error::Exists(name.to_owned()));
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    f.tokens.push(Entry {
        name: name.to_owned(),
        sha256: digest(&token),
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    write(path, &f)?;
    Ok(token)
}

/// Revokes a client; `false` if there was none of that name.
pub fn revoke(path: &Path, name: &str) -> Result<bool, Error> {
    let mut f = read(path)?;
    let before = f.tokens.len();
    f.tokens.retain(|e| e.name != name);
    if f.tokens.len() == before {
        return Ok(false);
    }
    write(path, &f)?;
    Ok(true)
}

/// The enrolled clients.
pub fn list(path: &Path) -> Result<Vec<Entry>, Error> {
    Ok(read(path)?.tokens)
}

/// The daemon's view of the token file.
#[derive(Debug)]
pub struct Tokens {
    path: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    by_hash: HashMap<String, String>,
    mtime: Option<SystemTime>,
    checked: Option<Instant>,
}

impl Tokens {
    /// Loads the file (a missing file means nobody is enrolled yet).
    pub fn open(path: PathBuf) -> Result<Self, Error> {
        let t = Self {
            path,
            state: Mutex::new(Loaded::default()),
        };
        t.reload(true)?;
        Ok(t)
    }

    fn reload(&self, force: bool) -> Result<(), Error> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // At most one stat per second: enrolment and revocation take effect within a second.
        if !force
            && st
                .checked
                .is_some_and(|c| c.elapsed() < Duration::from_secs(1))
        {
            return Ok(());
        }
        st.checked = Some(Instant::now());
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if !force && mtime == st.mtime {
            return Ok(());
        }
        let f = read(&self.path)?;
        st.by_hash = f.tokens.into_iter().map(|e| (e.sha256, e.name)).collect();
        st.mtime = mtime;
        tracing::info!(clients = st.by_hash.len(), "Signalling tokens loaded.");
        Ok(())
    }

    /// The enrolled client a bearer token belongs to.
    pub fn check(&self, bearer: &str) -> Option<String> {
        if let Err(e) = self.reload(false) {
            tracing::warn!(error = %e, "Cannot re-read the signalling token file; keeping the last good one.");
        }
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.by_hash.get(&digest(bearer)).cloned()
    }
}

/// A token bucket per key: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug)]
pub struct RateLimit {
    per_minute: u32,
    burst: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimit {
    /// A limiter.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request for `key`, or says how long to wait.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let rate = f64::from(self.per_minute) / 60.0;
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > 10_000 {
            // Bounded memory under a flood of keys (source addresses): full buckets are dropped.
            let burst = f64::from(self.burst);
            b.retain(|_, (level, at)| {
                (*level + now.duration_since(*at).as_secs_f64() * rate) < burst
            });
        }
        let (level, at) = b
            .entry(key.to_owned())
            .or_insert((f64::from(self.burst), now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * rate).min(f64::from(self.burst));
        *at = now;
        if *level >= 1.0 {
            *level -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *level) / rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrol_check_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let t = enrol(&path, "hl2-03").unwrap();
        assert!(t.len() >= 43, "256 bits");
        assert!(matches!(enrol(&path, "hl2-03"), Err(Error::Exists(_))));
        assert!(matches!(enrol(&path, "a b"), Err(Error::BadName)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&t), "only the hash is stored");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let tokens = Tokens::open(path.clone()).unwrap();
        assert_eq!(tokens.check(&t).as_deref(), Some("hl2-03"));
        assert_eq!(tokens.check("wrong"), None);
        assert!(revoke(&path, "hl2-03").unwrap());
        assert!(!revoke(&path, "hl2-03").unwrap());
        // Revocation is seen within a second (mtime resolution permitting).
        std::thread::sleep(Duration::from_millis(1100));
        let f = std::fs::File::open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(tokens.check(&t), None);
        assert_eq!(list(&path).unwrap().len(), 0);
    }

    #[test]
    fn broken_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, "{ nope").unwrap();
        let e = Tokens::open(path).unwrap_err().to_string();
        assert!(e.contains("not a Heim token file"), "{e}");
    }

    #[test]
    fn rate_limit_bucket() {
        let rl = RateLimit::new(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            rl.take("a", t0).unwrap();
        }
        let wait = rl.take("a", t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        rl.take("b", t0).unwrap();
        rl.take("a", t0 + Duration::from_secs(1)).unwrap();
    }
}
