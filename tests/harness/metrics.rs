//! Reading `/metrics`, `/health` and `duplex status --json` of a running duplex.

use std::io::{Read, Write};
use std::time::Duration;

use super::Duplex;

/// A free port of 127.0.0.1 for the metrics endpoint.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on the metrics endpoint: (status code, body), or why not.
pub fn get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no header end in {response:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    Ok((code, body.to_owned()))
}

/// The value of the sample `name{labels}` in a `/metrics` text, the labels given in order.
pub fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

/// Whether `/metrics` text exports `name`: a sample of it, or its declaration (a counter with
/// no labelled sample yet is declared without `_total`).
pub fn exported(text: &str, name: &str) -> bool {
    let family = name.strip_suffix("_total").unwrap_or(name);
    text.lines().any(|l| {
        l.starts_with(&format!("{name}{{"))
            || l.starts_with(&format!("{name} "))
            || l.starts_with(&format!("# TYPE {family} "))
    })
}

/// `duplex status --json`: (exit code, parsed output).
pub fn status(duplex: &Duplex) -> (i32, serde_json::Value) {
    let output = duplex.command(&["status", "--json"]);
    let json = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().unwrap_or(-1), json)
}

/// The value of the first sample of metric `name` in a `/metrics` text whose labels include
/// every `key="value"` of `labels`.
pub fn sample_with(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let prefix = format!("{name}{{");
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(&prefix)?;
        let (set, value) = rest.rsplit_once("} ")?;
        labels
            .iter()
            .all(|(key, value)| set.contains(&format!("{key}=\"{value}\"")))
            .then(|| value.trim().parse().ok())?
    })
}
