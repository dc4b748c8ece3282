//! The Prometheus endpoint of `duplex run` (`[metrics] listen`): `/metrics` in the Prometheus
//! text format and `/health` for load balancers and probes.
//!
//! Both read one [`crate::telemetry::Snapshot`] per request, the same numbers `duplex status`
//! shows. The metrics are encoded with `prometheus-client` from that snapshot (a collector,
//! so nothing is kept twice); the HTTP side is `hyper`'s HTTP/1 server.
//!
//! `/health` answers 200 `{"healthy":true}` while every link streams (an idle link streams
//! too) and 503 `{"healthy":false,"reason":"..."}` naming each link that starts, retries or
//! stopped, and why.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::telemetry::{self, Snapshot};

/// Every metric name `/metrics` exports (as it appears in the text, counters with `_total`).
pub const NAMES: &[&str] = &[
    "duplex_link_streaming",
    "duplex_link_retries_total",
    "duplex_rows_total",
    "duplex_transactions_total",
    "duplex_apply_errors_total",
    "duplex_lag_seconds",
    "duplex_lag_bytes",
    "duplex_slot_retained_bytes",
    "duplex_queued_transactions",
    "duplex_dead_letters",
    "duplex_conflicts_total",
    "duplex_held_conflicts",
    "duplex_backfill_rows_copied",
    "duplex_backfill_rows_planned",
    "duplex_last_verify_timestamp_seconds",
    "duplex_last_verify_equal",
    "duplex_last_verify_differences",
    "duplex_bus_pending_messages",
    "duplex_bus_lag_messages",
    "duplex_bus_oldest_unapplied_seconds",
    "duplex_bus_lease_held",
];

/// Why the endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {listen} for metrics ([metrics] listen): choose a free address and port, or remove [metrics]"
)]
pub struct ListenError {
    /// The address.
    pub listen: SocketAddr,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Binds `listen` and serves `/metrics` and `/health` until the process ends.
pub async fn serve(listen: SocketAddr) -> Result<JoinHandle<()>, ListenError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ListenError { listen, source })?;
    tracing::info!(%listen, "serving Prometheus metrics on /metrics and health on /health");
    Ok(tokio::spawn(async move {
        let mut backoff = crate::backoff::Backoff::new(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(1),
        );
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::debug!(%error, "the metrics endpoint cannot accept a connection");
                    tokio::time::sleep(backoff.failed()).await;
                    continue;
                }
            };
            tokio::spawn(async move {
                let served = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
                if let Err(error) = served {
                    tracing::debug!(%error, "a metrics connection failed");
                }
            });
        }
    }))
}

async fn handle(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let snapshot = telemetry::global().snapshot();
    let (status, kind, body) = match request.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(snapshot),
        ),
        "/health" => match snapshot.unhealthy() {
            None => (
                StatusCode::OK,
                "application/json",
                serde_json::json!({ "healthy": true }).to_string(),
            ),
            Some(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                serde_json::json!({ "healthy": false, "reason": reason }).to_string(),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: duplex serves /metrics and /health\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(kind) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// The Prometheus text of a snapshot.
pub fn render(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
    text
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

/// A metric with one sample per link target: name, help, type, and the value.
type PerTarget = (
    &'static str,
    &'static str,
    MetricType,
    fn(&telemetry::TargetSnapshot) -> f64,
);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let links = &self.0.links;
        {
            let mut family = encoder.encode_descriptor(
                "duplex_link_streaming",
                "1 while the link streams (idle included), 0 while it starts, retries or stopped",
                None,
                MetricType::Gauge,
            )?;
            for link in links {
                let labels = [("link", link.name.as_str()), ("source", &link.source)];
                ConstGauge::new(i64::from(link.state.healthy()))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "duplex_link_retries",
                "Transient failures the link retried",
                None,
                MetricType::Counter,
            )?;
            for link in links {
                let labels = [("link", link.name.as_str()), ("source", &link.source)];
                ConstCounter::new(link.retries).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "duplex_rows",
                "Row changes committed on the target, by operation",
                None,
                MetricType::Counter,
            )?;
            for link in links {
                for target in &link.targets {
                    for (op, count) in [
                        ("insert", target.inserts),
                        ("update", target.updates),
                        ("delete", target.deletes),
                    ] {
                        let labels = [
                            ("link", link.name.as_str()),
                            ("source", &link.source),
                            ("target", &target.site),
                            ("op", op),
                        ];
                        ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let per_target: [PerTarget; 4] = [
            (
                "duplex_transactions",
                "Source transactions committed on the target",
                MetricType::Counter,
                |t| t.transactions as f64,
            ),
            (
                "duplex_apply_errors",
                "Failed applies on the target (retried, set aside, or stopping the link)",
                MetricType::Counter,
                |t| t.apply_errors as f64,
            ),
            (
                "duplex_lag_seconds",
                "Seconds since the source committed the oldest transaction not yet committed on the target",
                MetricType::Gauge,
                |t| t.lag_seconds,
            ),
            (
                "duplex_queued_transactions",
                "Transactions waiting for the target's writer (the merge engine: its writes for the site)",
                MetricType::Gauge,
                |t| t.queued_transactions as f64,
            ),
        ];
        for (name, help, kind, value) in per_target {
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for link in links {
                for target in &link.targets {
                    let labels = [
                        ("link", link.name.as_str()),
                        ("source", &link.source),
                        ("target", &target.site),
                    ];
                    let metric = family.encode_family(&labels)?;
                    match kind {
                        MetricType::Counter => {
                            ConstCounter::new(value(target) as u64).encode(metric)?
                        }
                        _ => ConstGauge::new(value(target)).encode(metric)?,
                    }
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "duplex_lag_bytes",
                "Bytes of the source's log after the position the target holds (read every few seconds)",
                None,
                MetricType::Gauge,
            )?;
            for link in links {
                for target in &link.targets {
                    let Some(bytes) = target.lag_bytes else {
                        continue;
                    };
                    let labels = [
                        ("link", link.name.as_str()),
                        ("source", &link.source),
                        ("target", &target.site),
                    ];
                    ConstGauge::new(i64::try_from(bytes).unwrap_or(i64::MAX))
                        .encode(family.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "duplex_slot_retained_bytes",
                "WAL the source's duplex replication slot keeps from being removed (PostgreSQL)",
                None,
                MetricType::Gauge,
            )?;
            for link in links {
                let Some(retained) = link.slot.and_then(|slot| slot.retained_bytes) else {
                    continue;
                };
                let labels = [("link", link.name.as_str()), ("source", &link.source)];
                ConstGauge::new(retained).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "duplex_conflicts",
                "Conflicts the merge engine decided, by mapping, policy and outcome (resolved or held)",
                None,
                MetricType::Counter,
            )?;
            for conflict in &self.0.conflicts {
                let labels = [
                    ("mapping", conflict.mapping.as_str()),
                    ("policy", &conflict.policy),
                    ("outcome", &conflict.outcome),
                ];
                ConstCounter::new(conflict.count).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "duplex_dead_letters",
                "Changes set aside for the target (on_error = dead-letter), waiting for `duplex dead-letters retry`",
                None,
                MetricType::Gauge,
            )?;
            for link in links {
                for target in &link.targets {
                    let Some(count) = target.dead_letters else {
                        continue;
                    };
                    let labels = [
                        ("link", link.name.as_str()),
                        ("source", &link.source),
                        ("target", &target.site),
                    ];
                    ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        for (name, help, value) in [
            (
                "duplex_backfill_rows_copied",
                "Rows a running duplex backfill copied, by mapping (ranges of earlier runs included)",
                (|b| b.copied) as fn(&telemetry::BackfillProgress) -> u64,
            ),
            (
                "duplex_backfill_rows_planned",
                "Rows the source table held when the backfill was planned (an estimate of the total)",
                |b| b.planned,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for backfill in &self.0.backfills {
                let labels = [
                    ("mapping", backfill.mapping.as_str()),
                    ("source", &backfill.source),
                ];
                ConstGauge::new(i64::try_from(value(backfill)).unwrap_or(i64::MAX))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let last = self.0.last_verify.as_ref();
        for (name, help, value) in [
            (
                "duplex_last_verify_timestamp_seconds",
                "When the last `duplex verify` finished (seconds since the epoch)",
                last.map(|l| l.at.timestamp()),
            ),
            (
                "duplex_last_verify_equal",
                "1 when the last `duplex verify` found every mapping equal (or repaired), else 0",
                last.map(|l| i64::from(l.equal)),
            ),
            (
                "duplex_last_verify_differences",
                "Rows missing, extra or differing that the last `duplex verify` found (before any repair)",
                last.map(|l| i64::try_from(l.differences).unwrap_or(i64::MAX)),
            ),
        ] {
            // Declared always; a sample once a verify ran.
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            if let Some(value) = value {
                ConstGauge::new(value).encode(family)?;
            }
        }
        self.encode_bus(&mut encoder)?;
        // Declared always (a dashboard may ask for it); a sample only with a merge engine.
        let family = encoder.encode_descriptor(
            "duplex_held_conflicts",
            "Conflicts waiting for `duplex conflicts resolve` (two-way mappings)",
            None,
            MetricType::Gauge,
        )?;
        if let Some(held) = self.0.held_conflicts {
            ConstGauge::new(held as i64).encode(family)?;
        }
        Ok(())
    }
}

/// A bus figure per consumer: name, help, and the value (none when unknown).
type PerConsumer = (
    &'static str,
    &'static str,
    fn(&crate::bus::backlog::ConsumerBacklog) -> Option<f64>,
);

impl SnapshotCollector {
    /// A bus role's streams: per consumer its pending messages, lag and lease.
    fn encode_bus(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let per_consumer: [PerConsumer; 3] = [
            (
                "duplex_bus_pending_messages",
                "Messages of the bus stream not yet delivered to the target's writer (JetStream's num_pending)",
                |c| c.pending.map(|n| n as f64),
            ),
            (
                "duplex_bus_lag_messages",
                "The bus stream's last sequence minus the newest one the target's writer committed and acknowledged",
                |c| c.lag_messages.map(|n| n as f64),
            ),
            (
                "duplex_bus_oldest_unapplied_seconds",
                "Seconds since the oldest message the target's writer has not applied was published (0 without a lag)",
                |c| c.oldest_unapplied_seconds,
            ),
        ];
        for (name, help, value) in per_consumer {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for stream in &self.0.bus {
                for consumer in &stream.consumers {
                    if let Some(value) = value(consumer) {
                        let labels = [
                            ("stream", stream.stream.as_str()),
                            ("source", &stream.source),
                            ("target", &consumer.target),
                        ];
                        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
                    }
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "duplex_bus_lease_held",
            "1 while a writer holds the target's lease (labelled with the holder), 0 while nobody does",
            None,
            MetricType::Gauge,
        )?;
        // A merge stream's coordinator takes no lease: not a lease nobody holds.
        for stream in self.0.bus.iter().filter(|stream| !stream.merge) {
            for consumer in &stream.consumers {
                let labels = [
                    ("stream", stream.stream.as_str()),
                    ("target", &consumer.target),
                    ("holder", consumer.lease_holder.as_deref().unwrap_or("")),
                ];
                ConstGauge::new(i64::from(consumer.lease_holder.is_some()))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_name_is_rendered() {
        let telemetry = telemetry::Telemetry::default();
        let link = telemetry.link("a -> b", "a", &["b".into()]);
        link.streaming();
        link.head(Ok(duplex_connectors::head::LogHead::Postgres {
            current: duplex_connectors::postgres::Lsn(5000),
            slot: Some(duplex_connectors::head::SlotWal {
                retained_bytes: Some(7000),
                behind_bytes: Some(4000),
                active: true,
            }),
        }));
        link.target(0)
            .committed_at(&duplex_connectors::Position::Postgres(
                duplex_connectors::postgres::Lsn(1000),
            ));
        telemetry.held_conflicts(0);
        telemetry.conflict("items", "hold", "held");
        telemetry.backfill(telemetry::BackfillProgress {
            mapping: "items".into(),
            source: "a".into(),
            copied: 10,
            planned: 20,
            ranges_done: 1,
            ranges: 2,
            complete: false,
        });
        let dir = tempfile::tempdir().unwrap();
        let store = duplex_state::StateStore::open(&dir.path().join("state")).unwrap();
        crate::verify::last::record(
            store.dir(),
            &crate::verify::last::LastVerify {
                at: chrono::Utc::now(),
                equal: false,
                mappings: 2,
                differences: 3,
                repaired: false,
            },
        )
        .unwrap();
        telemetry.attach_store(std::sync::Arc::new(store));
        let coordinator = crate::bus::backlog::StreamBacklog {
            stream: "duplex-merge_a".into(),
            source: "a".into(),
            merge: true,
            messages: Some(5),
            last_sequence: Some(5),
            consumers: vec![crate::bus::backlog::ConsumerBacklog {
                target: "coordinator".into(),
                consumer: "coordinator".into(),
                pending: Some(0),
                ack_pending: Some(0),
                applied_sequence: Some(5),
                lag_messages: Some(0),
                oldest_unapplied_seconds: Some(0.0),
                lease_holder: None,
                lease_since: None,
                note: None,
            }],
            note: None,
        };
        telemetry.bus_backlog(vec![
            crate::bus::backlog::StreamBacklog {
                stream: "duplex_a".into(),
                source: "a".into(),
                merge: false,
                messages: Some(12),
                last_sequence: Some(12),
                consumers: vec![crate::bus::backlog::ConsumerBacklog {
                    target: "b".into(),
                    consumer: "writer-b".into(),
                    pending: Some(3),
                    ack_pending: Some(1),
                    applied_sequence: Some(8),
                    lag_messages: Some(4),
                    oldest_unapplied_seconds: Some(2.5),
                    lease_holder: Some("host (pid 7)".into()),
                    lease_since: None,
                    note: None,
                }],
                note: None,
            },
            coordinator,
        ]);
        let text = render(telemetry.snapshot());
        // The coordinator's merge stream: its lag, and no lease (it takes none).
        assert!(
            text.contains(
                r#"duplex_bus_lag_messages{stream="duplex-merge_a",source="a",target="coordinator"} 0"#
            ) && !text.contains(r#"duplex_bus_lease_held{stream="duplex-merge_a""#),
            "{text}"
        );
        for name in NAMES {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                "{name} missing from:\n{text}"
            );
        }
        assert!(
            text.contains(
                r#"duplex_rows_total{link="a -> b",source="a",target="b",op="insert"} 0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"duplex_conflicts_total{mapping="items",policy="hold",outcome="held"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("duplex_held_conflicts 1\n"), "{text}");
        assert!(
            text.contains("duplex_last_verify_differences 3\n"),
            "{text}"
        );
        assert!(text.contains("duplex_last_verify_equal 0\n"), "{text}");
        // Nothing read yet: the target's own position counts.
        assert!(
            text.contains(r#"duplex_lag_bytes{link="a -> b",source="a",target="b"} 4000"#),
            "{text}"
        );
        assert!(
            text.contains(r#"duplex_slot_retained_bytes{link="a -> b",source="a"} 7000"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"duplex_bus_pending_messages{stream="duplex_a",source="a",target="b"} 3"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"duplex_bus_lag_messages{stream="duplex_a",source="a",target="b"} 4"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"duplex_bus_lease_held{stream="duplex_a",target="b",holder="host (pid 7)"} 1"#
            ),
            "{text}"
        );
    }
}
