//! The control socket of a running engine: how `duplex conflicts` reaches `duplex run`.
//!
//! The state store is locked by the process that has it open, so while `duplex run` works
//! another process cannot read the conflict log or settle a conflict itself. `run` therefore
//! listens on a Unix socket in the state directory (`control.sock`, mode 0600 through the
//! directory's own permissions), and each connection carries one JSON request line and gets one
//! JSON response line. Requests are handled by the coordinator between batches, so a
//! resolution is decided in order with everything else and written like any other version.

use std::path::{Path, PathBuf};

use duplex_state::ConflictRecord;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::coordinator::Input;

/// The socket's file name in the state directory.
pub const SOCKET: &str = "control.sock";

/// What `duplex conflicts` asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// The whole conflict log.
    Conflicts,
    /// Settle held conflict `id` with the version `take` holds.
    Resolve {
        /// The conflict.
        id: u64,
        /// The site whose version wins.
        take: String,
    },
}

/// What the engine answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The conflict log, by id.
    Conflicts(Vec<(u64, ConflictRecord)>),
    /// The request was carried out; what happened, for people.
    Done(String),
    /// The request was refused; why, for people.
    Refused(String),
}

/// The socket's path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Listens on the state directory's socket and hands requests to the coordinator. `None`
/// (with a warning) when the socket cannot be made; the engine works on without it.
pub(super) fn serve(state_dir: &Path, coordinator: mpsc::Sender<Input>) -> Option<JoinHandle<()>> {
    let path = socket_path(state_dir);
    // A socket file left by a process that died: this process holds the state store's lock,
    // so no other duplex is listening on it.
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot open the control socket: `duplex conflicts` will not reach this process");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let coordinator = coordinator.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                if BufReader::new(read).read_line(&mut line).await.is_err() {
                    return;
                }
                let response = match serde_json::from_str::<Request>(&line) {
                    Err(error) => Response::Refused(format!("unreadable request: {error}")),
                    Ok(request) => {
                        let (reply, answer) = oneshot::channel();
                        if coordinator
                            .send(Input::Control(request, reply))
                            .await
                            .is_err()
                        {
                            Response::Refused("the engine is stopping".into())
                        } else {
                            answer.await.unwrap_or_else(|_| {
                                Response::Refused("the engine stopped before answering".into())
                            })
                        }
                    }
                };
                if let Ok(mut text) = serde_json::to_string(&response) {
                    text.push('\n');
                    let _ = write.write_all(text.as_bytes()).await;
                }
            });
        }
    }))
}

/// Sends `request` to the `duplex run` working on `state_dir`; `Ok(None)` when none is.
pub async fn ask(state_dir: &Path, request: &Request) -> std::io::Result<Option<Response>> {
    let path = socket_path(state_dir);
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(error) => return Err(error),
    };
    let (read, mut write) = stream.into_split();
    let mut text = serde_json::to_string(request).map_err(std::io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    if line.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(std::io::Error::other)
}
