//! The bus's identity, and its claim on the targets.
//!
//! The writers of a bus record their progress on a target under keys named by the bus's
//! `stream_prefix` (`<source>@bus-<prefix>`, see the module doc of `crate::bus`), which every
//! writer of the bus shares whatever its state directory. Two buses with the same prefix (on
//! two NATS servers, say the default prefix twice) writing into one target database (or one
//! MariaDB server, whose `duplex.positions` is server-wide) with a source of the same name
//! would share those rows, and each would skip the transactions the other's row already
//! passed: rows lost without a word. So a bus has an identity of its own, a UUID kept in the
//! stream `<prefix>-identity` (one message, never expiring; made by the first process that
//! needs it, by a compare-and-set publish so two never make two), and its writers claim their
//! position row on each target for it in `duplex.claims` (scope: the row's key,
//! `<source>@bus-<prefix>`) before they apply anything there: a second bus with a source of
//! the same name finds the claim another's and stops, saying what to change.

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use duplex_connectors::apply::{ApplyError, ApplyOptions, WriterClaim};
use duplex_connectors::{AnyApplier, SiteConnection};

use super::{Bus, BusError};

/// The identity stream's name: `<prefix>-identity` (no one-way stream `<prefix>_<site>` can
/// be it).
pub(crate) fn stream_name(bus: &Bus) -> String {
    format!("{}-identity", bus.config.stream_prefix)
}

/// Its one subject, three tokens like the merge subjects (`<prefix>.bus.identity`), so no
/// one-way subject `<prefix>.<site>` is it.
pub(crate) fn subject(bus: &Bus) -> String {
    format!("{}.bus.identity", bus.config.stream_prefix)
}

/// The bus's identity (`bus-<prefix>/<uuid>`), made and kept in the identity stream the first
/// time it is asked for.
pub(crate) async fn identity(bus: &Bus) -> Result<String, BusError> {
    let name = stream_name(bus);
    let what = format!("reading the bus's identity in stream {name}");
    let stream = bus
        .context
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject(bus)],
            max_messages_per_subject: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::jetstream(what.clone(), e))?;
    loop {
        match stream.get_last_raw_message_by_subject(&subject(bus)).await {
            Ok(message) => return Ok(String::from_utf8_lossy(&message.payload).into_owned()),
            Err(error) if error.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(error) => return Err(BusError::jetstream(what, error)),
        }
        let made = format!(
            "bus-{}/{}",
            bus.config.stream_prefix,
            uuid::Uuid::new_v4().simple()
        );
        let message = PublishMessage::build()
            .payload(made.clone().into_bytes().into())
            .expected_last_subject_sequence(0);
        let ack = match bus.context.send_publish(subject(bus), message).await {
            Ok(future) => future.await,
            Err(error) => Err(error),
        };
        match ack {
            Ok(_) => return Ok(made),
            // Another process made it first: read theirs.
            Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {}
            Err(error) => return Err(BusError::jetstream(what, error)),
        }
    }
}

/// Claims the position row `scope` (`<source>@bus-<prefix>`) on site `site` for the bus
/// `identity`, through a session of its own: recorded where no bus claimed it, kept where this one did; a stop naming the other bus
/// where another did. The writers' own sessions are not fenced by it: a claim row removed
/// while they run (`duplex teardown --site` of another database of the same MariaDB server)
/// is made again by the next writer that starts.
pub(crate) async fn claim_target(
    bus: &Bus,
    identity: &str,
    scope: &str,
    site: &SiteConnection,
) -> Result<(), ClaimError> {
    let mut target = AnyApplier::connect(site, Vec::new(), ApplyOptions::default())
        .await
        .map_err(ClaimError::Apply)?;
    let claim = WriterClaim {
        scope: scope.to_owned(),
        deployment: identity.to_owned(),
    };
    let site = &site.name;
    match target.claim(claim, None).await {
        Ok(_) => Ok(()),
        Err(ApplyError::Claimed { scope, owner, .. }) => Err(ClaimError::Shared {
            site: site.to_owned(),
            scope,
            owner,
            ours: identity.to_owned(),
            url: bus.config.url.clone(),
        }),
        Err(error) => Err(ClaimError::Apply(error)),
    }
}

/// A target could not be claimed for the bus.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// Another bus of the same `stream_prefix` claimed the target.
    #[error(
        "duplex.claims on site {site} names {owner} as the bus whose writers record their positions here under {scope}, and this bus (NATS {url}) is {ours}: two bus deployments with the same stream_prefix and a source of the same name write into this database (on MariaDB: into this server), and would share the duplex.positions row {scope}, each skipping transactions the other's row already passed. Give each deployment its own stream_prefix in [bus], and copy the mappings this bus backfilled into this site again (`duplex backfill --resync`): a backfill made meanwhile may have skipped ranges. If this is the same bus and its NATS storage was made anew (a new identity), delete the old claim instead: DELETE FROM duplex.claims WHERE scope = '{scope}'"
    )]
    Shared {
        /// The target site.
        site: String,
        /// The claim's scope: the position row's key (`<source>@bus-<prefix>`).
        scope: String,
        /// The bus holding it.
        owner: String,
        /// This bus.
        ours: String,
        /// This bus's NATS server.
        url: String,
    },
    /// Talking to the target failed.
    #[error(transparent)]
    Apply(ApplyError),
}
