//! The gap-aware log reader against PostgreSQL's real transaction horizon, one statement at a
//! time.
//!
//! Writers and the reader are real connections. A scheduler runs their steps in a chosen order,
//! each step one statement awaited to completion, so every interleaving is built exactly, not
//! hoped for: writers take transaction ids (by an unrelated write), take positions (appends of one
//! or several events), set and roll back to savepoints, commit or roll back; the reader reads a
//! batch (in a fresh transaction, or in one that already holds an id). Writers append to streams of
//! their own, so no step ever waits for another connection. After each schedule every writer has
//! finished and one last read must deliver what is still missing; then every committed event has
//! been delivered exactly once, each stream in version order, and nothing uncommitted was.
//!
//! Then, once nothing runs, its holes must settle: a reader that never forgot a hole would pass the
//! delivery checks but grow without end. The tests of this file run one at a time: the horizon
//! is cluster-wide, and another test's open transaction would hold it back and hide a hole
//! forgotten too early.
//!
//! Which schedules: every interleaving of the three-session case that lost events with the old
//! bound (the snapshot's xmax), every interleaving of its variant with a third transaction that
//! takes an id in between and ends first (which defeats the old bound moved by one), and a seeded
//! sample of random scripts over three writers. Putting the old bound back fails the first two.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use es_postgres::testing::TestDatabase;
use es_postgres::{read_batch, LogCursor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// One step of a writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// Take a transaction id with a write elsewhere (before any append).
    TakeXid,
    /// Append this many events in one statement (each takes a position).
    Append(usize),
    /// `SAVEPOINT sp`.
    Savepoint,
    /// `ROLLBACK TO SAVEPOINT sp`.
    RollbackToSavepoint,
    /// `COMMIT`.
    Commit,
    /// `ROLLBACK`.
    Rollback,
}

/// The tests of this file take turns (see the module docs).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One step of the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Read {
    /// Read a batch and commit: in a transaction of its own that holds no id yet (as a worker
    /// does), or in the one `BeginWithXid` opened.
    Batch,
    /// The same with a batch size of 1: holes and new events are cut at the limit.
    SmallBatch,
    /// Begin a transaction and take an id in it with a write; the next `Batch` reads in it.
    BeginWithXid,
}

/// Who moves next in a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Actor {
    Writer(usize),
    Reader,
}

struct Script {
    writers: Vec<Vec<Step>>,
    reads: Vec<Read>,
}

struct Writer {
    conn: PgConnection,
    stream: String,
    committed_version: i64,
    version: i64,
    in_transaction: bool,
    /// Events written by the open transaction, in version order.
    pending: Vec<Uuid>,
    /// `pending.len()` and `version` when the savepoint was set.
    savepoint: Option<(usize, i64)>,
}

/// What a schedule did, for the checks and for the failure message.
#[derive(Default)]
struct Outcome {
    committed: HashMap<Uuid, (String, i64)>,
    uncommitted: HashSet<Uuid>,
    delivered: Vec<(Uuid, String, i64, i64)>,
    trace: Vec<String>,
}

struct Explorer {
    writers: Vec<Writer>,
    reader: PgConnection,
    reader_in_transaction: bool,
    schedules: usize,
}

impl Explorer {
    async fn new(db: &TestDatabase, writers: usize) -> Self {
        let mut conns = Vec::new();
        for _ in 0..writers {
            conns.push(PgConnection::connect(&db.url).await.unwrap());
        }
        let mut reader = PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("CREATE TABLE IF NOT EXISTS scratch (id bigint GENERATED ALWAYS AS IDENTITY)")
            .execute(&mut reader)
            .await
            .unwrap();
        Self {
            writers: conns
                .into_iter()
                .map(|conn| Writer {
                    conn,
                    stream: String::new(),
                    committed_version: 0,
                    version: 0,
                    in_transaction: false,
                    pending: Vec::new(),
                    savepoint: None,
                })
                .collect(),
            reader,
            reader_in_transaction: false,
            schedules: 0,
        }
    }

    /// Runs `schedule` (each writer's steps and the reader's reads in this order) and checks the
    /// delivery; panics naming the schedule when it breaks.
    async fn run(&mut self, script: &Script, schedule: &[Actor]) {
        self.schedules += 1;
        let id = self.schedules;
        for (w, writer) in self.writers.iter_mut().enumerate() {
            writer.stream = format!("x{id}-w{w}");
            writer.committed_version = 0;
            writer.version = 0;
        }
        let head: i64 =
            sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM es_events")
                .fetch_one(&mut self.reader)
                .await
                .unwrap();
        let mut cursor = LogCursor {
            watermark: es_core::GlobalPosition(head),
            holes: Vec::new(),
        };
        let mut outcome = Outcome::default();
        let mut next_step = vec![0usize; self.writers.len()];
        let mut next_read = 0usize;
        for actor in schedule {
            match *actor {
                Actor::Writer(w) => {
                    let step = script.writers[w][next_step[w]];
                    next_step[w] += 1;
                    outcome.trace.push(format!("w{w} {step:?}"));
                    self.step(w, step, &mut outcome).await;
                }
                Actor::Reader => {
                    let read = script.reads[next_read];
                    next_read += 1;
                    self.read(read, &mut cursor, &mut outcome).await;
                }
            }
        }
        assert!(
            self.writers.iter().all(|w| !w.in_transaction),
            "a script must end every transaction"
        );
        // Everything has ended: reads until nothing comes must deliver whatever is missing.
        loop {
            let before = outcome.delivered.len();
            self.read(Read::Batch, &mut cursor, &mut outcome).await;
            if outcome.delivered.len() == before {
                break;
            }
        }
        self.check(&outcome).await;
        // And the holes settle (give autovacuum's or autoanalyze's short transactions a moment).
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cursor.holes.is_empty() {
            assert!(
                std::time::Instant::now() < until,
                "holes {:?} never settled after:\n  {}",
                cursor.holes,
                outcome.trace.join("\n  ")
            );
            self.read(Read::Batch, &mut cursor, &mut outcome).await;
        }
        assert_eq!(outcome.delivered.len(), outcome.committed.len());
    }

    async fn step(&mut self, w: usize, step: Step, outcome: &mut Outcome) {
        let writer = &mut self.writers[w];
        let conn = &mut writer.conn;
        if !writer.in_transaction {
            sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
            writer.in_transaction = true;
            writer.version = writer.committed_version;
            writer.pending.clear();
            writer.savepoint = None;
        }
        match step {
            Step::TakeXid => {
                sqlx::query("INSERT INTO scratch DEFAULT VALUES")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
            }
            Step::Append(n) => {
                let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
                sqlx::query(
                    "INSERT INTO es_events (event_id, stream_id, stream_version, event_type,
                                            schema_version, payload)
                     SELECT t.id, $2, $3 + t.n, 'Counted', 1, '{}'
                     FROM unnest($1::uuid[]) WITH ORDINALITY AS t(id, n) ORDER BY t.n",
                )
                .bind(&ids)
                .bind(&writer.stream)
                .bind(writer.version)
                .execute(&mut *conn)
                .await
                .unwrap();
                writer.version += n as i64;
                writer.pending.extend(ids);
            }
            Step::Savepoint => {
                sqlx::query("SAVEPOINT sp")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                writer.savepoint = Some((writer.pending.len(), writer.version));
            }
            Step::RollbackToSavepoint => {
                sqlx::query("ROLLBACK TO SAVEPOINT sp")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                let (len, version) = writer.savepoint.expect("a savepoint was set");
                outcome.uncommitted.extend(writer.pending.drain(len..));
                writer.version = version;
            }
            Step::Commit => {
                sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
                let first = writer.version - writer.pending.len() as i64;
                for (i, id) in writer.pending.drain(..).enumerate() {
                    outcome
                        .committed
                        .insert(id, (writer.stream.clone(), first + 1 + i as i64));
                }
                writer.committed_version = writer.version;
                writer.in_transaction = false;
            }
            Step::Rollback => {
                sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
                outcome.uncommitted.extend(writer.pending.drain(..));
                writer.in_transaction = false;
            }
        }
    }

    async fn read(&mut self, read: Read, cursor: &mut LogCursor, outcome: &mut Outcome) {
        let conn = &mut self.reader;
        if !self.reader_in_transaction {
            sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        }
        if read == Read::BeginWithXid {
            sqlx::query("INSERT INTO scratch DEFAULT VALUES")
                .execute(&mut *conn)
                .await
                .unwrap();
            self.reader_in_transaction = true;
            outcome.trace.push("reader takes an id".into());
            return;
        }
        let holding_xid = std::mem::take(&mut self.reader_in_transaction);
        let limit = if read == Read::SmallBatch { 1 } else { 10_000 };
        let batch = read_batch(conn, cursor, limit).await.unwrap();
        sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
        outcome.trace.push(format!(
            "read{}: {:?} at xmin {} xmax {} -> watermark {}, holes {:?}",
            if holding_xid { " (holding an id)" } else { "" },
            batch
                .events
                .iter()
                .map(|e| e.global_position.0)
                .collect::<Vec<_>>(),
            batch.horizon.xmin,
            batch.horizon.xmax,
            batch.next.watermark,
            batch.next.holes
        ));
        for e in batch.events {
            outcome.delivered.push((
                e.event_id,
                e.stream_id.to_string(),
                e.stream_version.0 as i64,
                e.global_position.0,
            ));
        }
        *cursor = batch.next;
    }

    async fn check(&mut self, outcome: &Outcome) {
        let trace = || outcome.trace.join("\n  ");
        let mut seen = HashSet::new();
        let mut versions: HashMap<&str, i64> = HashMap::new();
        for (id, stream, version, position) in &outcome.delivered {
            assert!(
                seen.insert(*id),
                "event at position {position} delivered twice in:\n  {}",
                trace()
            );
            assert!(
                !outcome.uncommitted.contains(id),
                "uncommitted event at position {position} delivered in:\n  {}",
                trace()
            );
            let last = versions.entry(stream).or_insert(0);
            assert_eq!(
                *version,
                *last + 1,
                "stream {stream} out of order at position {position} in:\n  {}",
                trace()
            );
            *last = *version;
        }
        for (id, (stream, version)) in &outcome.committed {
            assert!(
                seen.contains(id),
                "committed event {stream} v{version} never delivered in:\n  {}",
                trace()
            );
        }
        // The model agrees with the database: what it calls committed is what is stored.
        let streams: Vec<String> = self.writers.iter().map(|w| w.stream.clone()).collect();
        let stored: Vec<Uuid> =
            sqlx::query_scalar("SELECT event_id FROM es_events WHERE stream_id = ANY($1)")
                .bind(&streams)
                .fetch_all(&mut self.reader)
                .await
                .unwrap();
        assert_eq!(stored.len(), outcome.committed.len());
        assert!(stored.iter().all(|id| outcome.committed.contains_key(id)));
    }
}

/// Every way to interleave actors that take `counts[i]` steps each (the reader last).
fn interleavings(counts: &[usize]) -> Vec<Vec<Actor>> {
    fn go(left: &mut Vec<usize>, prefix: &mut Vec<Actor>, out: &mut Vec<Vec<Actor>>) {
        if left.iter().all(|&n| n == 0) {
            out.push(prefix.clone());
            return;
        }
        let last = left.len() - 1;
        for i in 0..left.len() {
            if left[i] == 0 {
                continue;
            }
            left[i] -= 1;
            prefix.push(if i == last {
                Actor::Reader
            } else {
                Actor::Writer(i)
            });
            go(left, prefix, out);
            prefix.pop();
            left[i] += 1;
        }
    }
    let mut out = Vec::new();
    go(&mut counts.to_vec(), &mut Vec::new(), &mut out);
    out
}

fn counts(script: &Script) -> Vec<usize> {
    let mut counts: Vec<usize> = script.writers.iter().map(Vec::len).collect();
    counts.push(script.reads.len());
    counts
}

/// Runs `script` in every interleaving of its steps (there must be `expected` of them) on a fresh
/// database, checking each.
async fn explore_every_interleaving(script: Script, expected: usize) {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = TestDatabase::create().await;
    let mut explorer = Explorer::new(&db, script.writers.len()).await;
    let schedules = interleavings(&counts(&script));
    assert_eq!(schedules.len(), expected);
    for schedule in &schedules {
        explorer.run(&script, schedule).await;
    }
    eprintln!("explored {} schedules", explorer.schedules);
}

/// The case that lost an event with the old bound, step by step: A appends, B appends, A appends
/// again and commits, the reader reads twice, B commits. B's event must arrive.
#[tokio::test]
async fn the_three_session_case_delivers_the_late_commit() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = TestDatabase::create().await;
    let mut explorer = Explorer::new(&db, 2).await;
    let script = Script {
        writers: vec![
            vec![Step::Append(1), Step::Append(1), Step::Commit],
            vec![Step::Append(1), Step::Commit],
        ],
        reads: vec![Read::Batch, Read::Batch],
    };
    use Actor::{Reader as R, Writer as W};
    explorer
        .run(&script, &[W(0), W(1), W(0), W(0), R, R, W(1)])
        .await;
}

/// Every interleaving of the three-session case: A appends twice and commits, B appends and
/// commits, the reader reads three times.
#[tokio::test]
async fn every_interleaving_of_two_writers_and_a_reader() {
    let script = Script {
        writers: vec![
            vec![Step::Append(1), Step::Append(1), Step::Commit],
            vec![Step::Append(1), Step::Commit],
        ],
        reads: vec![Read::Batch, Read::Batch, Read::Batch],
    };
    explore_every_interleaving(script, 560).await;
}

/// Every interleaving of its variant with a third transaction C that only takes an id (so it may
/// take one between A's and B's) and commits, possibly before B: the case that defeats the old
/// bound moved by one.
#[tokio::test]
async fn every_interleaving_with_a_third_transaction_in_between() {
    let script = Script {
        writers: vec![
            vec![Step::Append(1), Step::Append(1), Step::Commit],
            vec![Step::Append(1), Step::Commit],
            vec![Step::TakeXid, Step::Commit],
        ],
        reads: vec![Read::Batch, Read::Batch],
    };
    explore_every_interleaving(script, 7560).await;
}

/// A reader that took its transaction id before writers took theirs cannot bound the holes it
/// finds with it: every interleaving of two writers and a reader that takes an id, then reads
/// twice.
#[tokio::test]
async fn every_interleaving_with_a_reader_that_holds_an_older_id() {
    let script = Script {
        writers: vec![
            vec![Step::Append(1), Step::Commit],
            vec![Step::Append(1), Step::Commit],
        ],
        reads: vec![Read::BeginWithXid, Read::Batch, Read::Batch],
    };
    explore_every_interleaving(script, 210).await;
}

/// A random transaction: maybe an id taken early, appends of one to three events, maybe a
/// savepoint rolled back to or kept, then commit or rollback.
fn random_transaction(rng: &mut StdRng) -> Vec<Step> {
    let mut steps = Vec::new();
    if rng.gen_bool(0.3) {
        steps.push(Step::TakeXid);
    }
    let appends = rng.gen_range(1..=3);
    let mut savepoint = false;
    for _ in 0..appends {
        if !savepoint && rng.gen_bool(0.25) {
            steps.push(Step::Savepoint);
            savepoint = true;
        }
        steps.push(Step::Append(rng.gen_range(1..=3)));
        if savepoint && rng.gen_bool(0.3) {
            steps.push(Step::RollbackToSavepoint);
        }
    }
    steps.push(if rng.gen_bool(0.2) {
        Step::Rollback
    } else {
        Step::Commit
    });
    steps
}

/// A seeded sample of random scripts over three writers (one or two transactions each) and a
/// reader that sometimes takes an id some steps before it reads, each run in a random
/// interleaving.
#[tokio::test]
async fn a_seeded_sample_of_random_schedules() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = TestDatabase::create().await;
    let mut explorer = Explorer::new(&db, 3).await;
    let seed: u64 = std::env::var("ES_EXPLORER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20261201);
    let runs: usize = std::env::var("ES_EXPLORER_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500);
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..runs {
        let writers: Vec<Vec<Step>> = (0..3)
            .map(|_| {
                (0..rng.gen_range(1..=2))
                    .flat_map(|_| random_transaction(&mut rng))
                    .collect()
            })
            .collect();
        let mut reads = Vec::new();
        for _ in 0..rng.gen_range(2..=5) {
            if rng.gen_bool(0.25) {
                reads.push(Read::BeginWithXid);
            }
            reads.push(if rng.gen_bool(0.25) {
                Read::SmallBatch
            } else {
                Read::Batch
            });
        }
        let script = Script { writers, reads };
        // A uniformly random interleaving: shuffle the multiset of actors.
        let mut schedule: Vec<Actor> = script
            .writers
            .iter()
            .enumerate()
            .flat_map(|(w, steps)| std::iter::repeat_n(Actor::Writer(w), steps.len()))
            .chain(std::iter::repeat_n(Actor::Reader, script.reads.len()))
            .collect();
        for i in (1..schedule.len()).rev() {
            let j = rng.gen_range(0..=i);
            schedule.swap(i, j);
        }
        explorer.run(&script, &schedule).await;
    }
    eprintln!(
        "explored {} random schedules (seed {seed})",
        explorer.schedules
    );
}

/// The premise of the proof: a row's transaction id is assigned before its position, because
/// PostgreSQL evaluates column defaults in attribute order and `transaction_id` comes first.
#[tokio::test]
async fn transaction_id_is_declared_before_global_position() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = TestDatabase::create().await;
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = 'es_events'::regclass AND attname IN ('transaction_id', 'global_position')
         ORDER BY attnum",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(order, ["transaction_id", "global_position"]);
    let cache: i64 = sqlx::query_scalar(
        "SELECT cache_size FROM pg_sequences
         WHERE sequencename = pg_get_serial_sequence('es_events', 'global_position')::regclass::text",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(cache, 1, "no backend may hold a private range of positions");
}

/// A prepared transaction (two-phase commit) that took a position holds its hole until
/// `COMMIT PREPARED`, however many reads pass meanwhile, and its event then arrives. Needs a
/// server with `max_prepared_transactions > 0` (scripts/test starts one).
#[tokio::test]
async fn a_prepared_transaction_holds_its_hole_until_it_commits() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let db = TestDatabase::create().await;
    let enabled: String = sqlx::query_scalar("SHOW max_prepared_transactions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    if enabled == "0" {
        eprintln!("skipped: the server has max_prepared_transactions = 0");
        return;
    }
    let mut prepared = PgConnection::connect(&db.url).await.unwrap();
    let mut other = PgConnection::connect(&db.url).await.unwrap();
    let mut reader = PgConnection::connect(&db.url).await.unwrap();
    let append = |stream: &'static str| {
        sqlx::query(
            "INSERT INTO es_events (event_id, stream_id, stream_version, event_type, schema_version, payload)
             VALUES (gen_random_uuid(), $1, 1, 'Counted', 1, '{}') RETURNING global_position",
        )
        .bind(stream)
    };
    sqlx::query("BEGIN").execute(&mut prepared).await.unwrap();
    append("prepared").execute(&mut prepared).await.unwrap();
    let gid = format!("es-test-{}", Uuid::new_v4().simple());
    sqlx::query(&format!("PREPARE TRANSACTION '{gid}'"))
        .execute(&mut prepared)
        .await
        .unwrap();
    append("later").execute(&mut other).await.unwrap();
    let mut cursor = LogCursor::default();
    let mut delivered = Vec::new();
    for _ in 0..5 {
        let batch = read_batch(&mut reader, &cursor, 100).await.unwrap();
        delivered.extend(batch.events.iter().map(|e| e.stream_id.to_string()));
        cursor = batch.next;
        // Other transactions come and go; the prepared one stays.
        sqlx::query("SELECT pg_current_xact_id()")
            .execute(&mut other)
            .await
            .unwrap();
    }
    assert_eq!(delivered, ["later"]);
    assert_eq!(cursor.hole_positions(), 1, "the prepared position is held");
    sqlx::query(&format!("COMMIT PREPARED '{gid}'"))
        .execute(&mut other)
        .await
        .unwrap();
    let batch = read_batch(&mut reader, &cursor, 100).await.unwrap();
    let late: Vec<String> = batch
        .events
        .iter()
        .map(|e| e.stream_id.to_string())
        .collect();
    assert_eq!(late, ["prepared"]);
}
