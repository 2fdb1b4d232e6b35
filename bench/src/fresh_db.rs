//! A throw-away database for one benchmark run: created on the server, migrated, and dropped
//! after the run whether it succeeded or not.

use std::future::Future;
use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};

use crate::BenchError;

/// Creates `es_bench_<uuid>` on the server at `url`, applies the migrations, runs `body` with a
/// pool of `max_connections` on it, then drops the database (also when `body` fails).
pub async fn with_fresh_database<T, F, Fut>(
    url: &str,
    max_connections: u32,
    body: F,
) -> Result<T, BenchError>
where
    F: FnOnce(PgPool) -> Fut,
    Fut: Future<Output = Result<T, BenchError>>,
{
    let admin = PgConnectOptions::from_str(url)?;
    let name = format!("es_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect_with(&admin).await?;
    sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE template0"))
        .execute(&mut conn)
        .await?;
    eprintln!("created database {name}");

    let result = async {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(admin.clone().database(&name))
            .await?;
        es_postgres::migrate(&pool).await?;
        let result = body(pool.clone()).await;
        pool.close().await;
        result
    }
    .await;

    let dropped = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await;
    conn.close().await.ok();
    match (&result, dropped) {
        (_, Ok(_)) => eprintln!("dropped database {name}"),
        (Ok(_), Err(error)) => return Err(format!("cannot drop database {name}: {error}").into()),
        (Err(_), Err(error)) => eprintln!("cannot drop database {name}: {error}"),
    }
    result
}
