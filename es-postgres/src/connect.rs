//! Connecting for a binary: one attempt first, so that a server that is down or a wrong password
//! is reported within seconds as what it is ("cannot connect to HOST:PORT: connection refused"),
//! not after the pool's acquire timeout as "pool timed out"; then the pool.
//!
//! TLS is sqlx's, on rustls (no OpenSSL): `sslmode=require` encrypts without checking the
//! server's certificate, `verify-ca` checks it against `sslrootcert` (or the public CAs built
//! in), `verify-full` checks the host name too, as libpq's modes do (doc page "SSL Support",
//! table "SSL Mode Descriptions"). A certificate the client refuses is reported as what it is
//! ("not signed by a trusted CA"), not as rustls's enum name.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// Why a binary could not connect. The message names the server (host and port, or socket)
/// and the database, never the password.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to {server} (database {database}): {reason}")]
pub struct ConnectError {
    /// host:port or the socket directory.
    pub server: String,
    /// The database name.
    pub database: String,
    /// What the server or the network said.
    pub reason: String,
}

/// A pool of up to `max_connections` on `url`, after one connection attempt of at most
/// `timeout` that fails with a [`ConnectError`] naming the server and the cause.
pub async fn connect(
    url: &str,
    max_connections: u32,
    timeout: Duration,
) -> Result<PgPool, ConnectError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| ConnectError {
        server: "the server of DATABASE_URL".into(),
        database: "?".into(),
        reason: format!("the URL is not valid: {}", without_url(&e.to_string(), url)),
    })?;
    let server = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let database = options.get_database().unwrap_or("(default)").to_string();
    let failed = |reason: String| ConnectError {
        server: server.clone(),
        database: database.clone(),
        reason,
    };
    let options = options.log_statements(tracing::log::LevelFilter::Debug);
    match tokio::time::timeout(timeout, sqlx::PgConnection::connect_with(&options)).await {
        Err(_) => return Err(failed(format!("no answer within {timeout:?}"))),
        Ok(Err(error)) => return Err(failed(reason(&error))),
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
        }
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(timeout.max(Duration::from_secs(30)))
        .connect_with(options)
        .await
        .map_err(|e| failed(reason(&e)))
}

/// The cause as a person reads it: the server's message, or the I/O error's.
fn reason(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(io) => {
            let message = io.to_string();
            certificate_refused(&message).unwrap_or_else(|| message.to_lowercase())
        }
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Tls(tls) => {
            let message = tls.to_string();
            certificate_refused(&message).unwrap_or_else(|| format!("TLS: {message}"))
        }
        other => other.to_string(),
    }
}

/// rustls's refusal of the server's certificate ("invalid peer certificate: UnknownIssuer",
/// surfacing as an I/O error of the handshake) in words, with what to check.
fn certificate_refused(message: &str) -> Option<String> {
    let lower = message.to_lowercase();
    let (_, cause) = lower.split_once("invalid peer certificate: ")?;
    let what = if cause.starts_with("unknownissuer") {
        "the server's certificate is not signed by a trusted CA (check sslrootcert)".to_string()
    } else if cause.starts_with("notvalidforname") {
        "the server's certificate is not valid for this host name (verify-full checks it)".into()
    } else if cause.starts_with("expired") {
        "the server's certificate has expired".into()
    } else {
        format!("the server's certificate was refused ({cause})")
    };
    Some(format!("TLS: {what}"))
}

/// A message with the URL (and so its password) taken out.
fn without_url(message: &str, url: &str) -> String {
    message.replace(url, "DATABASE_URL")
}
