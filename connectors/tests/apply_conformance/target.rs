//! What the suite needs from a kind of target database, and the `items` table every kind
//! creates.

pub mod mssql;
pub mod mysql;
pub mod postgres;

use std::future::Future;
use std::time::Duration;

use duplex_connectors::{ApplyError, Op, Position, SiteConnection, TableName, Value, ValueKind};

/// The columns of the target table `items`, in the order [`Target::read_item`] returns them:
/// (target column, how its values read back). Source column `label` is written into `t`;
/// `untouched` is not routed and keeps its default, `'default'`.
pub const ITEM_COLUMNS: &[(&str, ValueKind)] = &[
    ("id", ValueKind::Int),
    ("i2", ValueKind::Int),
    ("i4", ValueKind::Int),
    ("i8", ValueKind::Int),
    ("n", ValueKind::Decimal),
    ("f4", ValueKind::Float),
    ("f8", ValueKind::Float),
    ("t", ValueKind::Text),
    ("vc", ValueKind::Text),
    ("bs", ValueKind::Bytes),
    ("d", ValueKind::Date),
    ("tm", ValueKind::Time),
    ("ts", ValueKind::Timestamp),
    ("tz", ValueKind::TimestampTz),
    ("u", ValueKind::Uuid),
    ("j", ValueKind::Json),
    ("untouched", ValueKind::Text),
];

/// How long a fixture waits for a server state before the test fails.
const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` every 10 ms until it says true; fails the test naming `what` after
/// [`DEADLINE`].
pub async fn poll_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh database of one kind on the shared test server, holding the table `items`:
///
/// ```text
/// id     64-bit integer, primary key    tm  time of day, microseconds
/// i2     16-bit integer                 ts  timestamp without time zone, microseconds
/// i4     32-bit integer                 tz  timestamp with time zone (1970..2038), microseconds
/// i8     64-bit integer                 u   uuid
/// n      decimal(38+,10)                j   json (kept as its text)
/// f4     32-bit float                   t   long text
/// f8     64-bit float                   vc  varchar(20)
/// bs     long binary                    untouched  varchar(20) DEFAULT 'default'
/// ```
///
/// Dropping it drops the database.
pub trait Target: Sized {
    /// What [`Target::hold_position`] returns: a second session inside an open transaction.
    type Held;

    /// Whether the kind's applier upserts (backfill's `--allow-nonempty`); the suite's upsert
    /// cases run only where it does.
    const UPSERTS: bool = true;
    /// Whether an applier that meets another's uncommitted first position of its source fails
    /// on the key once the other commits (its position check sees no row and waits for
    /// nothing), rather than waiting for that row in the check and skipping the transaction.
    const RACING_FIRST_POSITION_FAILS: bool;
    /// The type of `i2` as a value refusal names it.
    const SMALLINT: &'static str;

    /// Creates the database and `items`, and connects a session for the test's own queries;
    /// `None` (having said why) when this kind's test server is not available here.
    fn create() -> impl Future<Output = Option<Self>>;

    /// How an applier reaches the database.
    fn site(&self) -> SiteConnection;

    /// The source site name the test's transactions come from, unique to this database
    /// (MySQL's `duplex.positions` is shared by the whole server).
    fn source(&self) -> &str;

    /// The target table `name` of this database (`public.name`, `<database>.name`).
    fn table(&self, name: &str) -> TableName;

    /// A position of the source, of this kind's log, growing with `offset`.
    fn position(&self, offset: u64) -> Position;

    /// Runs SQL statements (separated by `;`) in the test's session; panics on error.
    fn execute(&self, sql: &str) -> impl Future<Output = ()>;

    /// The rows of a query as text (NULL as `None`).
    fn query(&self, sql: &str) -> impl Future<Output = Vec<Vec<Option<String>>>>;

    /// The row of `items` with key `id`, as canonical values in [`ITEM_COLUMNS`] order: integers
    /// as `Int`, floats bit for bit, timestamps with time zone in UTC.
    fn read_item(&self, id: i64) -> impl Future<Output = Option<Vec<Value>>>;

    /// When the source's position was last written, as text.
    fn applied_at(&self) -> impl Future<Output = Option<String>>;

    /// Breaks every connection an applier holds to the database.
    fn kill_applier_connections(&self) -> impl Future<Output = ()>;

    /// Opens a second session that records `position` for the source in `duplex.positions`
    /// inside a transaction it leaves open.
    fn hold_position(&self, position: &Position) -> impl Future<Output = Self::Held>;

    /// Commits what [`Target::hold_position`] holds.
    fn commit_held(&self, held: Self::Held) -> impl Future<Output = ()>;

    /// Returns once an applier's session waits for a lock another session holds.
    fn wait_for_blocked_applier(&self) -> impl Future<Output = ()>;

    /// The target table and change of an error a row write got from the server.
    fn write_error(err: &ApplyError) -> Option<(&TableName, Op)>;

    /// The SQLSTATE the server gave for the error (SQL Server: the SQLSTATE of its error
    /// number), if it came from the server.
    fn sqlstate(err: &ApplyError) -> Option<String>;

    /// Whether the server refused a write for a duplicate key.
    fn is_duplicate_key(err: &ApplyError) -> bool;
}
