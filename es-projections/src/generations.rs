//! Blue/green: a projection's generations after a shadow rebuild, and the way back.
//!
//! A projection has one live generation (readers see it through views), at most one shadow
//! (built by `rebuild NAME --shadow`, ready for a switch) and at most one retired generation
//! (live before the last switch, ready for a rollback). Workers keep every built generation of
//! their code version caught up, so each of them is always within a batch of the head:
//!
//! - [`compare`] reads the live generation and the other one (the shadow, else the retired one)
//!   in one snapshot: row counts, checksums and a sample of the rows only one of them has;
//! - [`switch`] makes the shadow live and the live one retired;
//! - [`rollback`] makes the retired generation live again and the live one a shadow, so that
//!   `switch` goes forward again;
//! - [`drop_retired`] drops the retired generation once the way back is no longer wanted, and
//!   [`abandon_shadow`] drops a shadow.
//!
//! **A switch (or a rollback) is one transaction.** It first takes the incoming generation's lease
//! with an epoch bump (`checkpoint::fence`), which waits for the batch its worker has in flight
//! and fences out the next one. Then, in one transaction: the projection's DDL lock; the live row
//! `FOR UPDATE`, which waits for the live worker's batch in flight (it holds that row from its
//! `hold` to its commit) and keeps its next one out; the incoming generation catches up to the
//! head as this transaction sees it, with this binary's code; the views are pointed at its
//! tables; the live row is demoted and the incoming one promoted (both epochs bumped). Readers
//! see the old views or the new ones, never a mix: PostgreSQL's DDL is transactional and the
//! views are replaced inside the transaction (`CREATE VIEW`, "Notes": views are ordinary catalog
//! rows, visible at commit). The workers that held either generation find their lease gone at
//! their next batch, before applying anything, and take whatever their role now holds.
//!
//! **Versions.** Each generation records the version of the projector code that builds it
//! ([`Projector::VERSION`](crate::Projector::VERSION)). A worker applies only generations of its
//! own version, and a switch or rollback catches the incoming generation up only with the code
//! of its version. So old and new binaries may run at once: each keeps its own generations
//! caught up and never writes the other's; see `docs/operations.md`, "Deploying a new projector
//! version".
//!
//! PostgreSQL facts relied on, beyond those of `crate::checkpoint`:
//! - `SELECT ... FOR UPDATE` waits for a concurrent holder of the row lock and then sees the row
//!   as committed ("The Locking Clause" in the `SELECT` reference; "Row-Level Locks" in
//!   "Explicit Locking"): the live worker's batch commits before the switch reads the head.
//! - A unique index that is not deferrable is checked at once, as each row is written, not at
//!   commit ("Index Uniqueness Checks" in "Index Access Method Interface"; `CREATE TABLE`,
//!   "Compatibility", "Non-Deferred Uniqueness Constraints"); the partial unique indexes
//!   `es_projections_one_live` / `_one_shadow` therefore require the demotion to run in a
//!   statement before the promotion, which `checkpoint::swap_live` does.
//! - A `REPEATABLE READ` transaction sees one snapshot for all its statements ("Transaction
//!   Isolation"): [`compare`] reads both generations' tables and checkpoints as of one instant.

use std::fmt;

use es_core::GlobalPosition;
use es_postgres::{log_head, read_batch, LogCursor};
use sqlx::{PgConnection, Row};
use tracing::{info, warn};

use crate::checkpoint::{self, GenerationRow, Lease, Role};
use crate::dead_letters;
use crate::engine::DynProjector;
use crate::error::ProjectionError;
use crate::projector::Tables;
use crate::rebuild::{apply_fenced, fenced_out, RebuildOptions, REBUILD_REFUSED, REBUILD_TTL};
use crate::table;
use crate::views;
use crate::worker::{default_owner, Worker};

/// What a switch or a rollback did.
#[derive(Clone, Debug)]
pub struct Switched {
    /// The projection.
    pub projection: String,
    /// The generation that was live before.
    pub from: i32,
    /// The generation live now.
    pub to: i32,
    /// Events the incoming generation applied under the switch's lock to reach the head.
    pub applied: u64,
}

/// A generation as [`compare`] saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationSummary {
    /// Its number (`deals_g<N>`).
    pub generation: i32,
    /// `live`, `shadow` or `retired`.
    pub role: String,
    /// The version of the projector code it is built by.
    pub code_version: i32,
    /// Its checkpoint's watermark.
    pub position: GlobalPosition,
}

/// One table's count and checksum in one generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDigest {
    /// How many rows.
    pub rows: i64,
    /// An order-independent checksum of the rows' text form.
    pub checksum: String,
    /// Its columns and types, in order.
    pub columns: String,
}

/// One logical table compared across two generations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableComparison {
    /// The logical table (the view readers query).
    pub table: String,
    /// In the live generation; None when its table does not exist.
    pub live: Option<TableDigest>,
    /// In the other generation; None when its table does not exist.
    pub other: Option<TableDigest>,
    /// A sample of rows the live generation has and the other does not, in text form.
    pub only_live: Vec<String>,
    /// A sample of rows the other generation has and the live one does not.
    pub only_other: Vec<String>,
}

impl TableComparison {
    /// Whether both generations hold the same rows.
    pub fn same(&self) -> bool {
        match (&self.live, &self.other) {
            (Some(a), Some(b)) => a == b,
            (None, None) => true,
            _ => false,
        }
    }
}

/// The live generation against the shadow (or the retired one), read in one snapshot.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The projection.
    pub projection: String,
    /// The live generation.
    pub live: GenerationSummary,
    /// The shadow, or the retired generation when there is no shadow.
    pub other: GenerationSummary,
    /// Each logical table.
    pub tables: Vec<TableComparison>,
}

impl Comparison {
    /// Whether every table holds the same rows in both generations.
    pub fn same(&self) -> bool {
        self.tables.iter().all(TableComparison::same)
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (live, other) = (&self.live, &self.other);
        writeln!(
            f,
            "{}: live generation {} (version {}, at position {}) against {} generation {} (version {}, at position {})",
            self.projection,
            live.generation,
            live.code_version,
            live.position,
            other.role,
            other.generation,
            other.code_version,
            other.position,
        )?;
        let other_role = other.role.to_uppercase();
        let (other_rows, other_sum) = (
            format!("{other_role} ROWS"),
            format!("{other_role} CHECKSUM"),
        );
        let header = [
            "TABLE",
            "LIVE ROWS",
            &other_rows,
            "LIVE CHECKSUM",
            &other_sum,
            "SAME",
        ];
        let digest = |d: &Option<TableDigest>| match d {
            Some(d) => (d.rows.to_string(), d.checksum.clone()),
            None => ("-".into(), "no table".into()),
        };
        let rows: Vec<[String; 6]> = self
            .tables
            .iter()
            .map(|t| {
                let (live_rows, live_sum) = digest(&t.live);
                let (other_rows, other_sum) = digest(&t.other);
                [
                    t.table.clone(),
                    live_rows,
                    other_rows,
                    live_sum,
                    other_sum,
                    if t.same() { "yes" } else { "no" }.into(),
                ]
            })
            .collect();
        f.write_str(&table::render(header, &rows))?;
        for t in &self.tables {
            if let (Some(a), Some(b)) = (&t.live, &t.other) {
                if a.columns != b.columns {
                    writeln!(
                        f,
                        "{}: the columns differ\n  live:  {}\n  {}: {}",
                        t.table, a.columns, other.role, b.columns
                    )?;
                    continue;
                }
            }
            for (side, rows) in [("live", &t.only_live), (other.role.as_str(), &t.only_other)] {
                if rows.is_empty() {
                    continue;
                }
                writeln!(
                    f,
                    "{}: rows only in {side} (first {}):",
                    t.table,
                    rows.len()
                )?;
                for row in rows {
                    writeln!(f, "  {}", printable(row))?;
                }
            }
        }
        if live.position != other.position {
            writeln!(
                f,
                "the generations stand at different positions: a difference may be events one of them has not applied yet; run compare again"
            )?;
        }
        Ok(())
    }
}

/// A row's text with control and invisible characters escaped, so that it cannot deceive the
/// person reading it (a bidirectional override reordering what follows, say).
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}') {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Compares the live generation of `name` with its shadow, or with its retired generation when
/// it has no shadow: per logical table, row counts, checksums and up to `sample` rows each way
/// that only one of them has. Read-only: a role that may only `SELECT` can run it.
pub async fn compare(
    worker: &Worker,
    name: &str,
    sample: usize,
) -> Result<Comparison, ProjectionError> {
    let projector = worker.projector(name, REBUILD_REFUSED)?.clone();
    let mut tx = worker.pool().begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let generations = checkpoint::generations(&mut tx, name).await?;
    let live = find(&generations, Role::Live).ok_or_else(|| no_checkpoint(name))?;
    let other = find(&generations, Role::Shadow)
        .or_else(|| find(&generations, Role::Retired))
        .ok_or_else(|| ProjectionError::Generations {
            projection: name.to_string(),
            reason: format!(
                "there is only the live generation: build a shadow to compare with (`rebuild {name} --shadow`)"
            ),
        })?;
    let live_tables = Tables::new(projector.tables(), live.generation)?;
    let other_tables = Tables::new(projector.tables(), other.generation)?;
    let limit = i64::try_from(sample).unwrap_or(i64::MAX);
    let mut tables = Vec::new();
    for ((logical, a), (_, b)) in live_tables.iter().zip(other_tables.iter()) {
        let live_digest = digest(&mut tx, a).await?;
        let other_digest = digest(&mut tx, b).await?;
        let comparable = matches!((&live_digest, &other_digest), (Some(x), Some(y)) if x.columns == y.columns && x != y);
        let (only_live, only_other) = if comparable && sample > 0 {
            (
                only_in(&mut tx, a, b, limit).await?,
                only_in(&mut tx, b, a, limit).await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        tables.push(TableComparison {
            table: logical.to_string(),
            live: live_digest,
            other: other_digest,
            only_live,
            only_other,
        });
    }
    tx.commit().await?;
    Ok(Comparison {
        projection: name.to_string(),
        live: summary(live),
        other: summary(other),
        tables,
    })
}

fn find(generations: &[GenerationRow], role: Role) -> Option<&GenerationRow> {
    generations.iter().find(|g| g.role == role.as_str())
}

fn summary(g: &GenerationRow) -> GenerationSummary {
    GenerationSummary {
        generation: g.generation,
        role: g.role.clone(),
        code_version: g.code_version,
        position: g.watermark,
    }
}

fn no_checkpoint(name: &str) -> ProjectionError {
    ProjectionError::NoCheckpoint(name.to_string())
}

/// A physical table's columns, count and checksum; None when it does not exist.
async fn digest(
    conn: &mut PgConnection,
    physical: &str,
) -> Result<Option<TableDigest>, ProjectionError> {
    let columns: Option<String> = sqlx::query_scalar(include_str!("sql/compare_columns.sql"))
        .bind(physical)
        .fetch_one(&mut *conn)
        .await?;
    let Some(columns) = columns else {
        return Ok(None);
    };
    // The name was validated by Tables::new: safe to interpolate.
    let sql = include_str!("sql/compare_digest.sql").replace("{table}", physical);
    let row = sqlx::query(&sql).fetch_one(&mut *conn).await?;
    Ok(Some(TableDigest {
        rows: row.try_get("row_count")?,
        checksum: row.try_get("checksum")?,
        columns,
    }))
}

/// Up to `limit` rows of `left` that `right` does not have, in text form.
async fn only_in(
    conn: &mut PgConnection,
    left: &str,
    right: &str,
    limit: i64,
) -> Result<Vec<String>, ProjectionError> {
    // Both names were validated by Tables::new: safe to interpolate.
    let sql = include_str!("sql/compare_only_in.sql")
        .replace("{left}", left)
        .replace("{right}", right);
    Ok(sqlx::query_scalar(&sql)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?)
}

/// Makes the shadow generation of `name` live and retires the live one, keeping it (caught up by
/// workers of its version) for a [`rollback`] until [`drop_retired`]; an older retired generation
/// is dropped. The shadow must be built (its rebuild finished) and of this binary's version: the
/// switch applies the events it has not seen yet with this code.
pub async fn switch(worker: &Worker, name: &str) -> Result<Switched, ProjectionError> {
    let projector = worker.projector(name, REBUILD_REFUSED)?.clone();
    let generations = read_generations(worker, name).await?;
    check_incoming(projector.as_ref(), &generations, Role::Shadow)?;
    take_and_swap(worker, projector.as_ref(), Role::Shadow, Role::Retired).await
}

/// Makes the retired generation of `name` live again and turns the live one into the shadow, so
/// that [`switch`] goes forward again. The retired generation must be of this binary's version:
/// the rollback applies the events it has not seen yet with this code (so roll back with the old
/// binary). Refused while the projection has a shadow.
pub async fn rollback(worker: &Worker, name: &str) -> Result<Switched, ProjectionError> {
    let projector = worker.projector(name, REBUILD_REFUSED)?.clone();
    let generations = read_generations(worker, name).await?;
    if let Some(shadow) = find(&generations, Role::Shadow) {
        return Err(ProjectionError::Generations {
            projection: name.to_string(),
            reason: format!(
                "it has a shadow generation ({}): a rollback makes the live generation the shadow, so switch to that one or drop it (`rebuild {name} --abandon`) first",
                shadow.generation
            ),
        });
    }
    check_incoming(projector.as_ref(), &generations, Role::Retired)?;
    take_and_swap(worker, projector.as_ref(), Role::Retired, Role::Shadow).await
}

async fn read_generations(
    worker: &Worker,
    name: &str,
) -> Result<Vec<GenerationRow>, ProjectionError> {
    let mut conn = worker.pool().acquire().await?;
    checkpoint::generations(&mut conn, name).await
}

/// Checks that the generation of `role` can be made live by this binary.
fn check_incoming(
    projector: &dyn DynProjector,
    generations: &[GenerationRow],
    role: Role,
) -> Result<(), ProjectionError> {
    let name = projector.name();
    if find(generations, Role::Live).is_none() {
        return Err(no_checkpoint(name));
    }
    let refuse = |reason: String| ProjectionError::Generations {
        projection: name.to_string(),
        reason,
    };
    let Some(g) = find(generations, role) else {
        return Err(refuse(match role {
            Role::Retired => "there is no retired generation to roll back to (none was switched away from, or it was dropped)".into(),
            _ => format!("there is no shadow generation to switch to: build one with `rebuild {name} --shadow`"),
        }));
    };
    match g.state.as_str() {
        "running" => {}
        "rebuilding" => {
            return Err(refuse(match &g.owner {
                Some(owner) => format!(
                    "the shadow generation {} is still being built by {owner}: switch when `rebuild {name} --shadow` has finished",
                    g.generation
                ),
                None => format!(
                    "the shadow generation {} is not built yet (its rebuild stopped): resume it with `rebuild {name} --shadow`",
                    g.generation
                ),
            }))
        }
        _ => {
            return Err(refuse(format!(
                "the {} generation {} stopped on an error (`status` shows it): fix the cause and let a worker resume it first",
                g.role, g.generation
            )))
        }
    }
    if g.code_version != projector.version() {
        return Err(ProjectionError::VersionMismatch {
            projection: name.to_string(),
            role: role.as_str(),
            generation: g.generation,
            built: g.code_version,
            ours: projector.version(),
            hint: "run this command with a binary of that version: it applies the generation's last events with its own code",
        });
    }
    Ok(())
}

/// Takes the lease of the generation of `from` and swaps it with the live one.
async fn take_and_swap(
    worker: &Worker,
    projector: &dyn DynProjector,
    from: Role,
    to: Role,
) -> Result<Switched, ProjectionError> {
    let pool = worker.pool();
    let name = projector.name();
    let owner = format!("switch:{}", default_owner());
    let Some(lease) = checkpoint::fence(pool, name, from, &owner, REBUILD_TTL).await? else {
        return Err(checkpoint::lease_held(pool, name, from).await?);
    };
    if lease.code_version != projector.version() || lease.state != "running" {
        // Changed since it was checked: another command came first.
        checkpoint::release(pool, &lease).await?;
        return Err(fenced_out(&lease));
    }
    let options = RebuildOptions {
        batch_size: worker.config().batch_size,
        error_policy: worker.config().error_policy,
        ..RebuildOptions::default()
    };
    let cursor = lease.cursor.clone();
    match switch_leased(worker, projector, &lease, cursor, &options, from, to).await {
        Ok((old, applied)) => Ok(Switched {
            projection: name.to_string(),
            from: old,
            to: lease.generation,
            applied,
        }),
        Err(error) => {
            // Nothing was switched (one transaction): give the generation back to its workers.
            if let Err(e) = checkpoint::release(pool, &lease).await {
                warn!(projection = name, error = %e, "could not release the generation's lease");
            }
            Err(error)
        }
    }
}

/// Catches the leased generation (of role `from`) up under the live row's lock, points the views
/// at it and makes it live, the live one becoming `to` (see the module docs); returns the
/// generation that was live and the events applied meanwhile. After a switch, retired
/// generations older than the one just retired are dropped.
pub(crate) async fn switch_leased(
    worker: &Worker,
    projector: &dyn DynProjector,
    lease: &Lease,
    mut cursor: LogCursor,
    options: &RebuildOptions,
    from: Role,
    to: Role,
) -> Result<(i32, u64), ProjectionError> {
    let pool = worker.pool();
    let name = projector.name();
    let tables = Tables::new(projector.tables(), lease.generation)?;
    let mut tx = pool.begin().await?;
    // The projection's DDL lock first, as every DDL path takes it before any row: an in-place
    // reset (DDL lock, then the live row) cannot wait on us in a cycle.
    views::lock_ddl(&mut tx, name).await?;
    // Waits for the live worker's batch in flight; keeps its next one out until we commit. The
    // lock gives this transaction an id, so holes found by the reads below stay unbounded until
    // the new generation's worker reads (see es_postgres::log_reader).
    let old = checkpoint::lock_live(&mut tx, name).await?;
    // Catch up to the head as it is now, not to a head that writers keep moving: what commits
    // after is the new live generation's worker's to apply.
    let head = log_head(&mut *tx).await?.0;
    let mut applied = 0u64;
    let mut blocked = dead_letters::open_streams(pool, name, lease.generation).await?;
    while cursor.watermark.0 < head {
        let batch = read_batch(&mut tx, &cursor, options.batch_size).await?;
        if batch.is_idle(&cursor) {
            break;
        }
        let next = batch.next.clone();
        applied += apply_fenced(
            &mut tx,
            worker,
            projector,
            &tables,
            lease,
            batch,
            options,
            &mut blocked,
        )
        .await?;
        cursor = next;
    }
    views::point_views(&mut tx, &tables).await?;
    if !checkpoint::swap_live(&mut tx, old, to, lease, from).await? {
        return Err(fenced_out(lease));
    }
    tx.commit().await?;
    info!(
        projection = name,
        from = old,
        to = lease.generation,
        applied,
        "the live generation changed"
    );
    if to == Role::Retired {
        // One way back is kept; dropping older tables may wait on a long reader of them. If it
        // fails, the next switch or `drop-retired` drops them.
        if let Err(error) = drop_generations(worker, projector, Role::Retired, Some(old)).await {
            warn!(projection = name, %error, "older retired generations were not dropped yet");
        }
    }
    Ok((old, applied))
}

/// Drops the retired generation of `name` (its tables, checkpoint and ledger): there is no way
/// back after this. Returns the generations dropped.
pub async fn drop_retired(worker: &Worker, name: &str) -> Result<Vec<i32>, ProjectionError> {
    let projector = worker.projector(name, REBUILD_REFUSED)?.clone();
    let dropped = drop_generations(worker, projector.as_ref(), Role::Retired, None).await?;
    if !dropped.is_empty() {
        info!(projection = name, generations = ?dropped, "retired generations dropped");
    }
    Ok(dropped)
}

/// Drops the shadow generation of `name` (after a failed or unwanted shadow rebuild): its tables,
/// its row and its ledger. Refused while a shadow rebuild holds it; a worker keeping a built
/// shadow caught up is fenced out. Returns the generation dropped, if there was one.
pub async fn abandon_shadow(worker: &Worker, name: &str) -> Result<Option<i32>, ProjectionError> {
    let projector = worker.projector(name, REBUILD_REFUSED)?.clone();
    let pool = worker.pool();
    let owner = format!("abandon:{}", default_owner());
    let Some(lease) = checkpoint::fence(pool, name, Role::Shadow, &owner, REBUILD_TTL).await?
    else {
        let mut conn = pool.acquire().await?;
        let generations = checkpoint::generations(&mut conn, name).await?;
        if find(&generations, Role::Shadow).is_none() {
            return Ok(None);
        }
        return Err(checkpoint::lease_held(pool, name, Role::Shadow).await?);
    };
    drop_generations(worker, projector.as_ref(), Role::Shadow, None).await?;
    info!(
        projection = name,
        generation = lease.generation,
        "shadow generation abandoned"
    );
    Ok(Some(lease.generation))
}

/// Deletes the generations of `role` but `except`, and drops their tables, in one transaction.
async fn drop_generations(
    worker: &Worker,
    projector: &dyn DynProjector,
    role: Role,
    except: Option<i32>,
) -> Result<Vec<i32>, ProjectionError> {
    let name = projector.name();
    let mut tx = worker.pool().begin().await?;
    views::lock_ddl(&mut tx, name).await?;
    let dropped = checkpoint::delete_generations(&mut tx, name, role, except).await?;
    for &generation in &dropped {
        views::drop_tables(&mut tx, &Tables::new(projector.tables(), generation)?).await?;
    }
    tx.commit().await?;
    Ok(dropped)
}
