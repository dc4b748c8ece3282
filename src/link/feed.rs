//! Where a link's transactions come from: the source's own change stream (one process, or the
//! bus reader role), or a JetStream stream a bus reader fills (the bus writer role, see
//! `crate::bus`). Both deliver whole transactions in commit order, the parts of a large one
//! before it, and take acknowledgements of what every target committed.

use duplex_connectors::{AnyStream, Position, StreamItem, TableName};

use super::LinkError;
use crate::bus::BusFeed;

/// A link's source of transactions.
pub(crate) enum Feed {
    /// The source database's change stream.
    Source(AnyStream),
    /// A bus stream (a writer role).
    Bus(Box<BusFeed>),
}

impl Feed {
    /// The next item; `site` names the source in errors.
    pub(crate) async fn next(&mut self, site: &str) -> Result<StreamItem, LinkError> {
        match self {
            Feed::Source(stream) => stream.next().await.map_err(|source| LinkError::Source {
                site: site.to_owned(),
                source,
            }),
            Feed::Bus(feed) => feed.next().await.map_err(|source| LinkError::Bus {
                site: site.to_owned(),
                source: Box::new(source),
            }),
        }
    }

    /// Every target committed everything up to `position`.
    pub(crate) fn ack(&self, position: &Position) {
        match self {
            Feed::Source(stream) => stream.ack(position),
            Feed::Bus(feed) => feed.ack(position),
        }
    }

    /// Whether acknowledged positions are recorded in the state store first (a PostgreSQL
    /// slot's; a bus stream is the reader's business).
    pub(crate) fn records_acknowledged(&self) -> bool {
        matches!(self, Feed::Source(_))
    }

    /// See [`AnyStream::start_position`]; `None` for a bus stream.
    pub(crate) fn start_position(&self) -> Option<Position> {
        match self {
            Feed::Source(stream) => stream.start_position(),
            Feed::Bus(_) => None,
        }
    }

    /// See [`AnyStream::table_identities`]; the bus reader checks them, so none here.
    pub(crate) fn table_identities(&self) -> (Vec<(TableName, u64)>, Vec<TableName>) {
        match self {
            Feed::Source(stream) => stream.table_identities(),
            Feed::Bus(_) => (Vec::new(), Vec::new()),
        }
    }

    /// Ends the feed cleanly.
    pub(crate) async fn shutdown(self) {
        match self {
            Feed::Source(stream) => stream.shutdown().await,
            Feed::Bus(feed) => feed.shutdown().await,
        }
    }
}
