//! What `duplex teardown` removes of the bus: the JetStream objects this configuration's bus
//! created, and nothing else on a NATS server others may share.
//!
//! Only names the configuration itself yields are considered, never a pattern: the stream of
//! each source of the one-way mappings (`<stream_prefix>_<source>`, its consumers
//! `writer-<target>` with it), the merge stream of each site of the two-way mappings
//! (`<stream_prefix>-merge_<site>`, the coordinator's consumer with it), its outbox stream
//! (`<stream_prefix>-outbox_<site>`, its writer's consumer with it), the lease stream
//! (`<stream_prefix>_leases`) and the identity stream (`<stream_prefix>-identity`, see
//! [`super::identity`]). A prefix match
//! would take another deployment's streams whose prefix starts with this one (`duplex_eu_…`
//! under `duplex`). A stream of such a name whose subjects are not the ones duplex gives it
//! is someone else's: it is left, and named.
//!
//! With `--site S`: a source's stream (and its consumers), or, for a target, its consumer on
//! each of its sources' streams; the lease and identity streams stay (other sites' writers
//! use them, and the other sites' claims name the identity).
//!
//! Nothing is removed while a writer holds the lease of a site concerned (a writer applying
//! would re-create its consumer, or the reader its stream): [`find`] reads the leases first,
//! and the caller refuses. The reader holds no lease: it is stopped through its state
//! directory (its slot is being streamed from) or by hand.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::stream;
use futures_util::TryStreamExt;

use super::{Bus, BusError, Kind, identity, lease};
use crate::config::BusConfig;

/// What this configuration's bus holds that teardown would remove.
#[derive(Debug)]
pub struct BusLeftovers {
    bus: Bus,
    /// Streams to delete, each with its consumers (they go with it).
    streams: Vec<(String, Vec<String>)>,
    /// Consumers to delete from streams that stay: (stream, consumer).
    consumers: Vec<(String, String)>,
    /// The lease stream, when it goes too.
    leases: Option<String>,
    /// The identity stream, when it goes too.
    identity: Option<String>,
    /// Streams with this configuration's names but other subjects: left.
    pub foreign: Vec<String>,
    /// Sites whose lease a writer holds now: (site, holder).
    pub held: Vec<(String, String)>,
}

/// Finds what teardown of `site` (every site when `None`) removes from the bus of `config`
/// (`flows`: each source with its targets; `merge_sites`: the sites of two-way mappings,
/// whose merge streams go with the site), and which of the sites concerned, or of
/// `also_leases`, a writer holds the lease of. It changes nothing.
pub async fn find(
    config: &BusConfig,
    flows: &BTreeMap<String, BTreeSet<String>>,
    merge_sites: &BTreeSet<String>,
    site: Option<&str>,
    also_leases: &[String],
) -> Result<BusLeftovers, BusError> {
    let bus = Bus::connect(config).await?;
    let mut lease_sites: BTreeSet<String> = also_leases.iter().cloned().collect();
    let mut leftovers = BusLeftovers {
        bus: bus.clone(),
        streams: Vec::new(),
        consumers: Vec::new(),
        leases: None,
        identity: None,
        foreign: Vec::new(),
        held: Vec::new(),
    };
    for (source, targets) in flows {
        let whole = site.is_none_or(|site| site == source);
        let target = site.filter(|site| targets.contains(*site));
        match target {
            _ if whole => lease_sites.extend(targets.iter().cloned()),
            Some(target) => {
                lease_sites.insert(target.to_owned());
            }
            None => continue,
        }
        let name = bus.stream_name(source);
        let found = match existing(&bus, &name, &bus.subject(source)).await? {
            None => continue,
            Some(None) => {
                leftovers.foreign.push(name);
                continue;
            }
            Some(Some(found)) => found,
        };
        let names = consumer_names(&found).await?;
        if whole {
            leftovers.streams.push((name, names));
        } else if let Some(target) = target {
            let consumer = super::feed::consumer_name(target);
            if names.contains(&consumer) {
                leftovers.consumers.push((name, consumer));
            }
        }
    }
    // A two-way site's merge stream, with the coordinator's consumer (re-created at every
    // coordinator start from what its state store committed, so nothing is lost with it),
    // and its outbox stream, with its writer's consumer (every entry not yet echoed is in the
    // coordinator's state store, which publishes again what the stream lacks).
    for merge_site in merge_sites {
        if site.is_some_and(|site| site != merge_site) {
            continue;
        }
        lease_sites.insert(merge_site.clone());
        let (merge, merge_subject) = bus.names(merge_site, Kind::Merge);
        let outbox = (
            bus.outbox_stream_name(merge_site),
            bus.outbox_subject(merge_site),
        );
        for (name, subject) in [(merge, merge_subject), outbox] {
            match existing(&bus, &name, &subject).await? {
                None => {}
                Some(None) => leftovers.foreign.push(name),
                Some(Some(found)) => {
                    let names = consumer_names(&found).await?;
                    leftovers.streams.push((name, names));
                }
            }
        }
    }
    let name = lease::stream_name(&bus);
    if let Some(found) = existing(&bus, &name, &format!("{name}.*")).await? {
        match found {
            Some(leases) => {
                for site in &lease_sites {
                    if let Some(record) = lease::read(&bus, &leases, site).await? {
                        leftovers.held.push((site.clone(), record.holder));
                    }
                }
                if site.is_none() {
                    leftovers.leases = Some(name);
                }
            }
            None if site.is_none() => leftovers.foreign.push(name),
            None => {}
        }
    }
    let name = identity::stream_name(&bus);
    if site.is_none()
        && let Some(found) = existing(&bus, &name, &identity::subject(&bus)).await?
    {
        match found {
            Some(_) => leftovers.identity = Some(name),
            None => leftovers.foreign.push(name),
        }
    }
    Ok(leftovers)
}

/// The stream `name`: `None` when there is none, `Some(None)` when its subjects are not
/// exactly `subject` (not duplex's).
async fn existing(
    bus: &Bus,
    name: &str,
    subject: &str,
) -> Result<Option<Option<stream::Stream>>, BusError> {
    match bus.context.get_stream(name).await {
        Ok(stream) => {
            let ours = stream.cached_info().config.subjects == [subject];
            Ok(Some(ours.then_some(stream)))
        }
        Err(error) if error.to_string().contains("not found") => Ok(None),
        Err(error) => Err(BusError::jetstream(format!("reading stream {name}"), error)),
    }
}

/// The consumers of `stream`, sorted.
async fn consumer_names(stream: &stream::Stream) -> Result<Vec<String>, BusError> {
    let name = stream.cached_info().config.name.clone();
    let mut names: Vec<String> =
        stream.consumer_names().try_collect().await.map_err(|e| {
            BusError::jetstream(format!("listing the consumers of stream {name}"), e)
        })?;
    names.sort();
    Ok(names)
}

impl BusLeftovers {
    /// What [`BusLeftovers::remove`] removes, one line each.
    pub fn planned(&self) -> Vec<String> {
        let mut items: Vec<String> = self
            .streams
            .iter()
            .map(|(stream, consumers)| {
                if consumers.is_empty() {
                    format!("JetStream stream {stream}")
                } else {
                    format!(
                        "JetStream stream {stream} and its consumers {}",
                        consumers.join(", ")
                    )
                }
            })
            .collect();
        items.extend(
            self.consumers.iter().map(|(stream, consumer)| {
                format!("JetStream consumer {consumer} of stream {stream}")
            }),
        );
        items.extend(
            self.leases
                .iter()
                .map(|leases| format!("JetStream stream {leases} (the writers' leases)")),
        );
        items.extend(self.identity.iter().map(|identity| {
            format!("JetStream stream {identity} (the bus's identity, named by its claims)")
        }));
        items
    }

    /// Removes the streams and consumers found; the lines of what was removed (one already
    /// gone meanwhile is not counted).
    pub async fn remove(&self) -> Result<Vec<String>, BusError> {
        let planned = self.planned();
        let mut removed = Vec::new();
        let mut lines = planned.into_iter();
        for (stream, _) in &self.streams {
            let line = lines.next().expect("a line per stream");
            if self.delete_stream(stream).await? {
                removed.push(line);
            }
        }
        for (stream, consumer) in &self.consumers {
            let line = lines.next().expect("a line per consumer");
            match self
                .bus
                .context
                .delete_consumer_from_stream(consumer, stream)
                .await
            {
                Ok(_) => removed.push(line),
                Err(error) if error.to_string().contains("not found") => {}
                Err(error) => {
                    return Err(BusError::jetstream(
                        format!("deleting consumer {consumer} of stream {stream}"),
                        error,
                    ));
                }
            }
        }
        if let Some(leases) = &self.leases {
            let line = lines.next().expect("a line for the lease stream");
            if self.delete_stream(leases).await? {
                removed.push(line);
            }
        }
        if let Some(identity) = &self.identity {
            let line = lines.next().expect("a line for the identity stream");
            if self.delete_stream(identity).await? {
                removed.push(line);
            }
        }
        Ok(removed)
    }

    /// Deletes `stream`; false when it was gone already.
    async fn delete_stream(&self, stream: &str) -> Result<bool, BusError> {
        match self.bus.context.delete_stream(stream).await {
            Ok(_) => Ok(true),
            Err(error) if error.to_string().contains("not found") => Ok(false),
            Err(error) => Err(BusError::jetstream(
                format!("deleting stream {stream}"),
                error,
            )),
        }
    }
}
