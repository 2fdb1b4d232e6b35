//! The framework's migrations beside an application's own sqlx migrations, in one database, in
//! either order; a database migrated into sqlx's shared table by an earlier version adopted;
//! concurrent callers; an edited migration refused.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use es_postgres::testing::TestDatabase;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{Connection, PgPool};

/// An application's migration directory, with one migration of a typical timestamp version.
fn application_migrations() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("es-app-migrations-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("20240101000000_app_things.sql"),
        "CREATE TABLE app_things (id bigint PRIMARY KEY, name text NOT NULL);",
    )
    .unwrap();
    dir
}

async fn application(dir: &std::path::Path) -> Migrator {
    Migrator::new(dir).await.unwrap()
}

async fn framework_versions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM es_schema_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn shared_versions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn embedded() -> Vec<i64> {
    es_postgres::MIGRATOR.iter().map(|m| m.version).collect()
}

#[tokio::test]
async fn the_framework_and_an_application_migrate_one_database_in_either_order() {
    let dir = application_migrations();
    for framework_first in [true, false] {
        let db = TestDatabase::empty(4).await;
        let app = application(&dir).await;
        if framework_first {
            es_postgres::migrate(&db.pool).await.unwrap();
            app.run(&db.pool).await.unwrap();
        } else {
            app.run(&db.pool).await.unwrap();
            es_postgres::migrate(&db.pool).await.unwrap();
        }
        // Both again, as every deployment does at start-up.
        es_postgres::migrate(&db.pool).await.unwrap();
        app.run(&db.pool).await.unwrap();
        assert_eq!(framework_versions(&db.pool).await, embedded());
        assert_eq!(shared_versions(&db.pool).await, vec![20240101000000]);
        sqlx::query("INSERT INTO app_things VALUES (1, 'a')")
            .execute(&db.pool)
            .await
            .unwrap();
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM es_events")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(events, 0);
    }
}

#[tokio::test]
async fn a_database_migrated_into_the_shared_table_is_adopted() {
    let dir = application_migrations();
    let db = TestDatabase::empty(4).await;
    // As the crate did before its own ledger: sqlx's migrator, the shared table.
    es_postgres::MIGRATOR.run(&db.pool).await.unwrap();
    let app = application(&dir).await;
    // On a connection of its own: sqlx's migrator returns this error with its session lock
    // still held, and a pooled connection would keep it.
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let refused = app.run(&mut conn).await;
    conn.close().await.unwrap();
    assert!(
        matches!(refused, Err(MigrateError::VersionMissing(1))),
        "the clash this ledger removes: {refused:?}"
    );
    es_postgres::migrate(&db.pool).await.unwrap();
    assert_eq!(framework_versions(&db.pool).await, embedded());
    assert!(shared_versions(&db.pool).await.is_empty());
    app.run(&db.pool).await.unwrap();
    assert_eq!(shared_versions(&db.pool).await, vec![20240101000000]);
    es_postgres::migrate(&db.pool).await.unwrap();
}

#[tokio::test]
async fn concurrent_callers_wait_for_each_other() {
    let db = TestDatabase::empty(16).await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move { es_postgres::migrate(&pool).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(framework_versions(&db.pool).await, embedded());
}

#[tokio::test]
async fn an_applied_migration_that_was_edited_is_refused() {
    let db = TestDatabase::create().await;
    sqlx::query("UPDATE es_schema_migrations SET checksum = '\\x00' WHERE version = 3")
        .execute(&db.pool)
        .await
        .unwrap();
    let refused = es_postgres::migrate(&db.pool).await;
    assert!(
        matches!(refused, Err(MigrateError::VersionMismatch(3))),
        "{refused:?}"
    );
    // A version this binary does not know (a newer binary migrated first) is accepted.
    sqlx::query("UPDATE es_schema_migrations SET checksum = $1 WHERE version = 3")
        .bind(
            es_postgres::MIGRATOR
                .iter()
                .find(|m| m.version == 3)
                .unwrap()
                .checksum
                .as_ref(),
        )
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO es_schema_migrations (version, description, checksum, execution_ms)
         VALUES (999, 'from a newer binary', '\\x01', 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    es_postgres::migrate(&db.pool).await.unwrap();
}

#[tokio::test]
async fn letters_parked_under_the_old_rule_are_closed_by_0007() {
    let db = TestDatabase::empty(4).await;
    // A database of the release before 0007, migrated the old way (sqlx's shared table).
    let before = Migrator {
        migrations: std::borrow::Cow::Owned(
            es_postgres::MIGRATOR
                .iter()
                .filter(|m| m.version < 7)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    before.run(&db.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO es_dead_letters (projection, generation, global_position, stream_id,
             stream_version, event_type, schema_version, error)
         VALUES ('deals', 1, 42, 'deal-1', 3, 'Closed', 1, 'old')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    es_postgres::migrate(&db.pool).await.unwrap();
    assert_eq!(framework_versions(&db.pool).await, embedded());
    let (state, cause, resolved_by): (String, String, String) =
        sqlx::query_as("SELECT state, cause, resolved_by FROM es_dead_letters")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), cause.as_str(), resolved_by.as_str()),
        ("skipped", "failed", "migration 0007"),
        "an old letter does not hold its stream"
    );
}

#[tokio::test]
async fn the_read_only_check_names_what_is_missing_and_changes_nothing() {
    use es_postgres::{Applied, SchemaError};
    let db = TestDatabase::empty(4).await;
    let latest = es_postgres::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap();
    match es_postgres::check_schema(&db.pool).await {
        Err(SchemaError::Behind {
            applied: Applied::Nothing,
            required,
            ..
        }) => assert_eq!(required, latest),
        other => panic!("expected Behind, got {other:?}"),
    }
    let tables: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(tables, 0, "the check created nothing");

    es_postgres::migrate(&db.pool).await.unwrap();
    es_postgres::check_schema(&db.pool).await.unwrap();

    // A binary newer than the database: its last migration is not applied.
    let (description, checksum): (String, Vec<u8>) = sqlx::query_as(
        "DELETE FROM es_schema_migrations WHERE version = $1 RETURNING description, checksum",
    )
    .bind(latest)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let error = es_postgres::check_schema(&db.pool).await.unwrap_err();
    match &error {
        SchemaError::Behind {
            applied: Applied::UpTo(applied),
            missing,
            ..
        } => {
            assert_eq!(*applied, latest - 1);
            assert_eq!(missing, &latest.to_string());
        }
        other => panic!("expected Behind, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&format!("migrations up to {} are applied", latest - 1))
            && message.contains(&format!("needs migrations up to {latest}")),
        "{message}"
    );

    // A newer database than the binary is fine; an edited migration is not.
    sqlx::query(
        "INSERT INTO es_schema_migrations (version, description, checksum, execution_ms)
         VALUES ($1, $2, $3, 0)",
    )
    .bind(latest)
    .bind(&description)
    .bind(&checksum)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO es_schema_migrations (version, description, checksum, execution_ms)
         VALUES (99990101000000, 'from a newer binary', '\\x00', 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    es_postgres::check_schema(&db.pool).await.unwrap();
    sqlx::query("UPDATE es_schema_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&db.pool)
        .await
        .unwrap();
    assert!(matches!(
        es_postgres::check_schema(&db.pool).await,
        Err(SchemaError::Mismatch(1))
    ));
}
