//! A fresh, migrated database per test, on the server named by `DATABASE_URL`.
//!
//! Each [`TestDatabase`] creates `es_test_<uuid>`, applies the migrations, and drops the
//! database (terminating its connections) when it goes out of scope.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// A throw-away database for one test.
pub struct TestDatabase {
    /// A pool on the new database.
    pub pool: PgPool,
    /// Its connection URL (for child processes).
    pub url: String,
    name: String,
    admin: PgConnectOptions,
}

impl TestDatabase {
    /// Creates a migrated database with a pool of up to 20 connections.
    pub async fn create() -> Self {
        Self::with_max_connections(20).await
    }

    /// Creates a migrated database with a pool of up to `max_connections`.
    ///
    /// # Panics
    /// When `DATABASE_URL` is not set or the server cannot be reached: tests cannot run then.
    pub async fn with_max_connections(max_connections: u32) -> Self {
        let db = Self::empty(max_connections).await;
        crate::migrate(&db.pool).await.expect("apply migrations");
        db
    }

    /// Creates an empty database (no migration applied), for tests of the migrations
    /// themselves.
    ///
    /// # Panics
    /// As [`TestDatabase::with_max_connections`].
    pub async fn empty(max_connections: u32) -> Self {
        let url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL must name a PostgreSQL server for integration tests (scripts/test sets it)");
        let admin = PgConnectOptions::from_str(&url)
            .expect("DATABASE_URL is a valid PostgreSQL URL")
            .log_statements(tracing::log::LevelFilter::Trace);
        let name = format!("es_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect_with(&admin)
            .await
            .expect("connect to DATABASE_URL");
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .execute(&mut conn)
            .await
            .expect("create a test database");
        conn.close().await.ok();
        let options = admin.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options.clone())
            .await
            .expect("connect to the test database");
        let url = options.to_url_lossy().to_string();
        Self {
            pool,
            url,
            name,
            admin,
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (name, admin) = (self.name.clone(), self.admin.clone());
        // Leave the pool alone (its connections belong to the blocked test runtime): DROP ...
        // WITH (FORCE) ends them server-side.
        clean_up_from_drop(async move {
            if let Ok(mut conn) = PgConnection::connect_with(&admin).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        });
    }
}

/// Runs `cleanup` to its end from a `Drop`: on a private runtime on a plain thread, since a
/// drop may run inside the test's runtime, which is blocked while it waits here.
pub fn clean_up_from_drop(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let dropper = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(cleanup);
        }
    });
    let _ = dropper.join();
}
