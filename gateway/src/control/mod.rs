//! The local control socket: `heim status` and device commands talk to the running daemon here.
//!
//! Protocol: a Unix stream socket, one JSON request per line (`{"cmd": "status", …}`), one JSON
//! reply per line (`{"ok": …}` or `{"error": "…"}`). The socket file is created mode 0660, so only
//! the `heim` user and its group (the nurse's tools run as a member) can use it.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

/// Control-socket errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be created.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No daemon answers on the socket.
    #[error("no Heim daemon answers on {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed.
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The reply was not JSON.
    #[error("the daemon sent an unreadable reply: {0}")]
    Reply(#[from] serde_json::Error),
    /// The daemon answered with an error.
    #[error("{0}")]
    Remote(String),
}

type Reply = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;
type HandlerFn = dyn Fn(Value) -> Reply + Send + Sync;

/// Commands the daemon answers, by name.
#[derive(Clone, Default)]
pub struct Commands {
    map: HashMap<String, Arc<HandlerFn>>,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.map.keys()).finish()
    }
}

impl Commands {
    /// Adds a command; `f` gets the whole request object.
    pub fn add<F, Fut>(&mut self, name: &str, f: F)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.map
            .insert(name.to_owned(), Arc::new(move |v| Box::pin(f(v)) as Reply));
    }
}

/// Serves the socket until shutdown, then removes the socket file.
pub async fn serve(
    path: PathBuf,
    commands: Commands,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let listener = bind(&path)?;
    tracing::info!(socket = %path.display(), "Control socket ready.");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let commands = commands.clone();
                    tokio::spawn(async move {
                        if let Err(error) = session(stream, commands).await {
                            tracing::debug!(%error, "A control client went away.");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "Control socket accept failed.");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

fn bind(path: &Path) -> Result<UnixListener, Error> {
    let err = |source| Error::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket file left by a killed daemon: remove it only if nothing answers there.
    if path.exists() {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {
                return Err(err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another Heim daemon is running with this socket",
                )));
            }
            Err(_) => std::fs::remove_file(path).map_err(err)?,
        }
    }
    let l = UnixListener::bind(path).map_err(err)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(l)
}

async fn session(stream: UnixStream, commands: Commands) -> Result<(), Error> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(req) => {
                let name = req.get("cmd").and_then(Value::as_str).unwrap_or_default();
                match commands.map.get(name) {
                    Some(h) => match h(req.clone()).await {
                        Ok(v) => json!({ "ok": v }),
                        Err(e) => json!({ "error": e }),
                    },
                    None => json!({ "error": format!("unknown command {name:?}") }),
                }
            }
            Err(e) => json!({ "error": format!("request is not JSON: {e}") }),
        };
        let mut out = serde_json::to_vec(&reply)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

/// Sends one request to the daemon behind `path` and returns its `ok` value.
pub async fn request(path: &Path, req: Value) -> Result<Value, Error> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(&req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    let mut lines = BufReader::new(r).lines();
    let reply = lines
        .next_line()
        .await?
        .ok_or_else(|| Error::Remote("the daemon closed the connection".into()))?;
    let mut v: Value = serde_json::from_str(&reply)?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(Error::Remote(e.to_owned()));
    }
    Ok(v.get_mut("ok").map(Value::take).unwrap_or(Value::Null))
}
