//! The control socket of a running engine: how `duplex conflicts` and `duplex status` reach
//! `duplex run`.
//!
//! The state store is locked by the process that has it open, so while `duplex run` works
//! another process cannot read the conflict log or settle a conflict itself. `run` therefore
//! listens on a Unix socket in the state directory (`control.sock`), and each connection carries
//! one JSON request line and gets one JSON response line. Requests are handled by the
//! coordinator between batches, so a resolution is decided in order with everything else and
//! written like any other version. A `run` without two-way mappings serves the socket too
//! ([`serve_without_engine`]): it answers [`Request::Status`] from the telemetry
//! (`crate::telemetry`) and refuses conflict requests, having none.
//!
//! # Who may ask
//!
//! Settling a conflict writes to every site, so the socket answers only the user duplex runs
//! as, and root. Three things make sure of it, each enough by itself:
//! - the socket is bound inside the state directory, which is 0700 (see
//!   [`duplex_state::store::modes`]), so no other user can reach it, not even in the moment
//!   between `bind` and `chmod`;
//! - it is then set to 0600;
//! - every connection's peer credentials (`SO_PEERCRED`) are read, and a peer whose uid is
//!   neither the socket's owner (this process's user) nor root gets a refusal and is logged
//!   ([`may_ask`]).
//!
//! # What a client may cost
//!
//! A request must be one line of at most [`MAX_REQUEST`] bytes (1 MiB; real requests are under
//! 100 bytes), sent completely within [`REQUEST_TIMEOUT`] (10 s) of connecting: a longer line is
//! refused after reading at most that much, never buffered whole, and a slower client is
//! disconnected. When `accept` fails (e.g. EMFILE, out of file descriptors) the loop waits with
//! the engine's [`Backoff`] instead of spinning, and logs it at most once per
//! [`ERROR_LOG_INTERVAL`] with the number of failures meanwhile.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use duplex_state::ConflictRecord;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::coordinator::Input;
use crate::backoff::Backoff;

/// The socket's file name in the state directory.
pub const SOCKET: &str = "control.sock";

/// The longest request line answered, in bytes (with its newline).
pub const MAX_REQUEST: usize = 1024 * 1024;
/// How long a client has, from connecting, to send its whole request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// At most one log line per this interval about failing `accept`s.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What `duplex conflicts` and `duplex status` ask.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// What every link reports now (`duplex status`).
    Status,
    /// The whole conflict log.
    Conflicts,
    /// Settle held conflict `id` with the version `take` holds.
    Resolve {
        /// The conflict.
        id: u64,
        /// The site whose version wins.
        take: String,
    },
    /// How far the engine has decided each site's log and numbered its writes (`duplex
    /// verify` waits on it).
    Progress,
    /// Make every site hold `take`'s rows of mapping `mapping` (`duplex verify --repair
    /// --take`), recorded as an operator's resolution.
    Take {
        /// The two-way mapping.
        mapping: String,
        /// The site whose rows win.
        take: String,
        /// Per row, what each site read holds now as verify read it there (its own column
        /// names; `None`: no such row); `take` is always among them.
        rows: Vec<std::collections::BTreeMap<String, Option<duplex_connectors::Row>>>,
    },
}

/// How far the engine got with one site, as the coordinator knows it between two batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteProgress {
    /// The site.
    pub site: String,
    /// The position of the site's log up to which every change is decided, and its writes
    /// queued, in this attempt (none before the first input of the attempt).
    pub decided: Option<duplex_connectors::Position>,
    /// The number of the last write queued for the site (0: none yet); it is committed there
    /// once the site's `duplex.positions` row `merge:<site>` reaches it.
    pub queued: u64,
}

/// What the engine answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    /// The conflict log, by id.
    Conflicts(Vec<(u64, ConflictRecord)>),
    /// What every link reports.
    Status(crate::telemetry::Snapshot),
    /// The request was carried out; what happened, for people.
    Done(String),
    /// The request was refused; why, for people.
    Refused(String),
    /// How far the engine got, per site.
    Progress(Vec<SiteProgress>),
    /// What a [`Request::Take`] did.
    Taken {
        /// Rows whose version of the taken site is now being written where it differs.
        written: Vec<String>,
        /// Rows left alone because writes of the engine to them are still on their way (ask
        /// again once they landed).
        busy: Vec<String>,
    },
}

/// The socket's path for a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET)
}

/// Whether a peer with user id `peer` may use the socket of a process running as `owner`:
/// the same user, or root.
pub fn may_ask(peer: u32, owner: u32) -> bool {
    peer == owner || peer == 0
}

/// Listens on the state directory's socket and hands requests to the coordinator. `None`
/// (with a warning) when the socket cannot be made; the engine works on without it.
pub(super) fn serve(state_dir: &Path, coordinator: mpsc::Sender<Input>) -> Option<JoinHandle<()>> {
    listen(state_dir, Some(coordinator))
}

/// Listens on the state directory's socket for a `run` without a merge engine: status
/// requests are answered, conflict requests refused.
pub(crate) fn serve_without_engine(state_dir: &Path) -> Option<JoinHandle<()>> {
    listen(state_dir, None)
}

fn listen(state_dir: &Path, coordinator: Option<mpsc::Sender<Input>>) -> Option<JoinHandle<()>> {
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
    // Bound inside the 0700 state directory, so nobody else could reach it meanwhile.
    let owner = match std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::metadata(&path))
    {
        Ok(meta) => meta.uid(),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot make the control socket private (mode 0600): `duplex conflicts` will not reach this process");
            let _ = std::fs::remove_file(&path);
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        let mut failures = Failures::default();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
                    stream
                }
                Err(error) => {
                    failures.note(&error);
                    tokio::time::sleep(backoff.failed()).await;
                    continue;
                }
            };
            let coordinator = coordinator.clone();
            tokio::spawn(async move {
                match stream.peer_cred() {
                    Ok(peer) if may_ask(peer.uid(), owner) => {}
                    Ok(peer) => {
                        tracing::warn!(uid = peer.uid(), pid = ?peer.pid(), "refused a control socket connection from another user (only uid {owner} and root may use it)");
                        refuse(
                            stream,
                            "only the user duplex runs as, and root, may use this socket",
                        )
                        .await;
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "refused a control socket connection whose peer cannot be identified");
                        return;
                    }
                }
                answer(stream, coordinator).await;
            });
        }
    }))
}

/// Accept errors, logged at most once per [`ERROR_LOG_INTERVAL`].
#[derive(Default)]
struct Failures {
    logged: Option<Instant>,
    since: u64,
}

impl Failures {
    fn note(&mut self, error: &std::io::Error) {
        self.since += 1;
        if self
            .logged
            .is_none_or(|at| at.elapsed() >= ERROR_LOG_INTERVAL)
        {
            tracing::warn!(%error, failures = self.since, "the control socket cannot accept connections (out of file descriptors?); retrying with backoff");
            self.logged = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// Why a request line could not be read.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    /// Longer than [`MAX_REQUEST`].
    TooLong,
    /// Not complete within [`REQUEST_TIMEOUT`].
    TooSlow,
    /// The client left or the connection failed.
    Gone,
}

/// Reads one request line of at most `limit` bytes within `timeout`.
async fn read_request(
    read: impl tokio::io::AsyncRead + Unpin,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, Unread> {
    let mut line = Vec::new();
    let mut limited = BufReader::new(read.take(limit as u64 + 1));
    match tokio::time::timeout(timeout, limited.read_until(b'\n', &mut line)).await {
        Err(_) => Err(Unread::TooSlow),
        Ok(Err(_)) => Err(Unread::Gone),
        Ok(Ok(_)) if line.len() > limit => Err(Unread::TooLong),
        Ok(Ok(_)) if line.last() != Some(&b'\n') => Err(Unread::Gone),
        Ok(Ok(_)) => Ok(line),
    }
}

/// Reads the request of `stream`, hands it to the coordinator and writes the response.
async fn answer(stream: tokio::net::UnixStream, coordinator: Option<mpsc::Sender<Input>>) {
    let (read, mut write) = stream.into_split();
    let line = match read_request(read, MAX_REQUEST, REQUEST_TIMEOUT).await {
        Ok(line) => line,
        Err(Unread::TooLong) => {
            tracing::warn!("refused a control socket request longer than {MAX_REQUEST} bytes");
            respond(
                &mut write,
                &Response::Refused(format!(
                    "request longer than {MAX_REQUEST} bytes: one JSON line is expected"
                )),
            )
            .await;
            return;
        }
        Err(Unread::TooSlow) => {
            tracing::debug!(
                "closed a control socket connection whose request did not arrive within {REQUEST_TIMEOUT:?}"
            );
            return;
        }
        Err(Unread::Gone) => return,
    };
    let response = match serde_json::from_slice::<Request>(&line) {
        Err(error) => Response::Refused(format!("unreadable request: {error}")),
        Ok(Request::Status) => Response::Status(crate::telemetry::global().snapshot()),
        Ok(_) if coordinator.is_none() => Response::Refused(
            "this process (a duplex run without two-way mappings, or a duplex backfill) holds no conflicts".into(),
        ),
        Ok(request) => {
            let coordinator = coordinator.expect("checked above");
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
    respond(&mut write, &response).await;
}

/// Refuses a connection without reading its request.
async fn refuse(mut stream: tokio::net::UnixStream, why: &str) {
    respond(&mut stream, &Response::Refused(why.to_owned())).await;
}

async fn respond(write: &mut (impl tokio::io::AsyncWrite + Unpin), response: &Response) {
    if let Ok(mut text) = serde_json::to_string(response) {
        text.push('\n');
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, write.write_all(text.as_bytes())).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_user_and_root_may_ask() {
        assert!(may_ask(1000, 1000));
        assert!(may_ask(0, 1000));
        assert!(may_ask(0, 0));
        assert!(!may_ask(65534, 1000));
        assert!(!may_ask(1001, 1000));
        assert!(!may_ask(65534, 0));
    }

    #[tokio::test]
    async fn a_line_within_the_limit_is_read() {
        let read = read_request(&b"{\"x\":1}\nmore"[..], 16, Duration::from_secs(1)).await;
        assert_eq!(read.unwrap(), b"{\"x\":1}\n");
    }

    #[tokio::test]
    async fn a_longer_line_is_refused_after_reading_at_most_the_limit() {
        let input = [b'a'; 100];
        let mut reader = &input[..];
        let read = read_request(&mut reader, 16, Duration::from_secs(1)).await;
        assert_eq!(read, Err(Unread::TooLong));
        assert!(
            reader.len() >= 100 - 17,
            "read {} bytes",
            100 - reader.len()
        );
    }

    #[tokio::test]
    async fn a_line_without_its_end_is_not_a_request() {
        let read = read_request(&b"{\"x\":1}"[..], 16, Duration::from_secs(1)).await;
        assert_eq!(read, Err(Unread::Gone));
    }

    #[tokio::test]
    async fn a_client_too_slow_is_dropped() {
        let (_client, server) = tokio::io::duplex(64);
        let read = read_request(server, 16, Duration::from_millis(50)).await;
        assert_eq!(read, Err(Unread::TooSlow));
    }
}
