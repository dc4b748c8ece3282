//! The merge bench's conflict case (`concurrent_counts`): the three sites add 1 to the same
//! few rows' `a` at the same time, so most changes conflict. Run once with `a = "delta"` and
//! once under plain last-writer-wins: the time to converge is the overhead of deciding
//! column by column, and the sums show what last-writer-wins loses.
//!
//! Rows 1..=`HOT_ROWS` are inserted at the store with `a = 0` and waited for everywhere; then
//! each site sends `TXNS / 3` single-statement transactions `UPDATE bench SET a = a + 1 WHERE
//! id = k` (k cycling over the rows), `TXNS_PER_MESSAGE` per message, all three at once. After
//! the loads, each site inserts a marker row; the case ends at the first poll that finds the
//! three markers at every site and the same sum of `a` everywhere (with `delta`: the number of
//! updates). `txn_per_s` counts the updates over that span; `sum` / `expected_sum` and
//! `lost_updates` say what the policy kept.

use super::*;

/// Rows the three sites update at once.
const HOT_ROWS: i64 = 20;
/// Ids of the markers (one per site).
const MARKER: i64 = 1_000_000;

impl Conn {
    /// The sum of `a` over the hot rows and the number of markers.
    async fn hot(&mut self) -> BenchResult<(i64, i64)> {
        match self {
            Conn::Pg(client, _) => {
                let row = client
                    .query_one(
                        "SELECT coalesce(sum(a) FILTER (WHERE id <= $1), 0)::bigint, count(*) FILTER (WHERE id >= $2) FROM bench",
                        &[&HOT_ROWS, &MARKER],
                    )
                    .await?;
                Ok((row.try_get(0)?, row.try_get(1)?))
            }
            Conn::Maria(conn) => {
                let row: Option<(i64, i64)> = conn
                    .exec_first(
                        "SELECT CAST(coalesce(sum(CASE WHEN id <= ? THEN a ELSE 0 END), 0) AS SIGNED), CAST(sum(id >= ?) AS SIGNED) FROM bench",
                        (HOT_ROWS, MARKER),
                    )
                    .await?;
                Ok(row.unwrap_or((0, 0)))
            }
        }
    }
}

/// The `[mappings.column_conflict]` lines of the case.
pub(super) fn columns(delta: bool) -> &'static str {
    if delta {
        "[mappings.column_conflict]\na = \"delta\"\n"
    } else {
        ""
    }
}

/// Sends `count` increments of the hot rows from a new connection to `db`.
async fn increments(
    db: &Db,
    site: usize,
    count: u64,
) -> BenchResult<tokio::task::JoinHandle<BenchResult<(Instant, Instant)>>> {
    let mut conn = Conn::open(db).await?;
    let statements: Vec<String> = (0..count as i64)
        .map(|k| {
            let id = (k + site as i64 * 7) % HOT_ROWS + 1;
            format!("START TRANSACTION; UPDATE bench SET a = a + 1 WHERE id = {id}; COMMIT;")
        })
        .collect();
    let messages: Vec<String> = statements
        .chunks(TXNS_PER_MESSAGE)
        .map(|chunk| chunk.concat())
        .collect();
    Ok(tokio::spawn(async move {
        let start = Instant::now();
        for message in &messages {
            conn.execute(message).await?;
        }
        let end = Instant::now();
        conn.close().await;
        Ok((start, end))
    }))
}

/// Case 4: the three sites increment the same rows at once (see the module documentation).
pub(super) async fn concurrent_counts(
    case: &mut Case,
    conns: &mut [Conn],
    sizes: Sizes,
    delta: bool,
) -> BenchResult<Value> {
    let rows: String = (1..=HOT_ROWS)
        .map(|id| format!("INSERT INTO bench VALUES ({id}, 0, 'hot {id}');"))
        .collect();
    conns[STORE].execute(&rows).await?;
    case.wait_all(conns, &[1, 2], &[(1, HOT_ROWS)], sizes.timeout)
        .await?;
    let per_site = (sizes.txns / 3).max(1);
    let mut loads = Vec::new();
    for site in 0..3 {
        loads.push(increments(&case.sites[site], site, per_site).await?);
    }
    let mut spans = Vec::new();
    for load in loads {
        spans.push(load.await??);
    }
    for (site, conn) in conns.iter_mut().enumerate() {
        let id = MARKER + site as i64;
        conn.execute(&format!("INSERT INTO bench VALUES ({id}, 0, 'marker')"))
            .await?;
    }
    let expected = 3 * per_site as i64;
    let deadline = Instant::now() + sizes.timeout;
    let sum = loop {
        let mut seen = Vec::new();
        for conn in conns.iter_mut() {
            seen.push(conn.hot().await?);
        }
        let same = seen.iter().all(|s| *s == seen[0]);
        if same && seen[0].1 == 3 && (!delta || seen[0].0 == expected) {
            break seen[0].0;
        }
        case.check_running()?;
        if Instant::now() > deadline {
            return Err(format!(
                "timed out: (sum, markers) per site {seen:?}, expected sum {expected}"
            )
            .into());
        }
        tokio::time::sleep(POLL).await;
    };
    let last = Instant::now();
    let begin = spans.iter().map(|s| s.0).min().ok_or("no loads")?;
    let source_done = spans.iter().map(|s| s.1).max().ok_or("no loads")?;
    let mut result = load_figures("txn", expected as u64, begin, source_done, last, POLL);
    result["policy"] = json!(if delta {
        "a: delta"
    } else {
        "last-writer-wins"
    });
    result["sum"] = json!(sum);
    result["expected_sum"] = json!(expected);
    result["lost_updates"] = json!(expected - sum);
    let local = expected as u64 + HOT_ROWS as u64 + 3 + 1;
    case.finish(conns, local, &mut result).await?;
    Ok(result)
}
