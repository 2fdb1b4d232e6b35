//! TLS to PostgreSQL through `es_postgres::connect` (sqlx with rustls): a private server started
//! with `ssl=on` and a certificate signed by a CA made here with `openssl`, and checks that
//! `sslmode=require` encrypts (`pg_stat_ssl`), that `verify-full` with the right CA connects,
//! and that `verify-full` with another CA is refused with a message a person can act on.
//!
//! The server is started as `scripts/lib/postgres.sh` does (initdb and pg_ctl from Debian's
//! packages, as the `postgres` user when we are root, on a free port) and stopped at the end.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A private PostgreSQL with TLS, stopped and deleted on drop.
struct TlsServer {
    dir: PathBuf,
    bindir: PathBuf,
    port: u16,
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn is_root() -> bool {
    let output = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// A command run as the cluster's owner: `postgres` when we are root (PostgreSQL refuses root).
fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect(
            "PostgreSQL's server binaries (Debian's postgresql package; scripts/test installs it)",
        )
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| d.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA (`name.crt`, `name.key`).
fn make_ca(dir: &Path, name: &str) {
    run(Command::new("openssl")
        .current_dir(dir)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &format!("/CN=es-test {name}")])
        .args([
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ]));
}

impl TlsServer {
    fn start() -> Self {
        let bindir = bindir();
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dir = root.join(format!("pg-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        // The certificates: a CA, and the server's, for localhost and 127.0.0.1, signed by it.
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n",
        )
        .unwrap();
        run(Command::new("openssl")
            .current_dir(&dir)
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
            ])
            .args(["-keyout", "server.key", "-out", "server.csr"]));
        run(Command::new("openssl")
            .current_dir(&dir)
            .args(["x509", "-req", "-in", "server.csr", "-days", "2"])
            .args(["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"])
            .args(["-extfile", "san.ext", "-out", "server.crt"]));
        if is_root() {
            if Command::new("id")
                .arg("postgres")
                .output()
                .unwrap()
                .status
                .code()
                != Some(0)
            {
                run(Command::new("useradd").args([
                    "--system",
                    "--home-dir",
                    "/var/lib/postgresql",
                    "--shell",
                    "/bin/sh",
                    "postgres",
                ]));
            }
            run(Command::new("chown").arg("-R").arg("postgres").arg(&dir));
        }
        // PostgreSQL refuses a key others may read.
        run(Command::new("chmod").arg("600").arg(dir.join("server.key")));
        run(as_owner(&bindir.join("initdb"))
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
            ]));
        let port = free_port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={dir} \
             -c fsync=off -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key",
            dir = dir.display()
        );
        run(as_owner(&bindir.join("pg_ctl"))
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-o", &options, "-l"])
            .arg(dir.join("server.log"))
            .args(["-w", "-t", "60", "start"]));
        TlsServer { dir, bindir, port }
    }

    fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?{query}",
            self.port
        )
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = as_owner(&self.bindir.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn tls_connects_encrypted_verifies_the_server_and_refuses_another_ca() {
    let server = TlsServer::start();
    let timeout = Duration::from_secs(10);

    let pool = es_postgres::connect(&server.url("sslmode=require"), 2, timeout)
        .await
        .unwrap();
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(ssl, "sslmode=require encrypts the connection");
    assert!(version.is_some_and(|v| v.starts_with("TLS")));
    pool.close().await;

    let ca = server.dir.join("ca.crt");
    let url = server.url(&format!("sslmode=verify-full&sslrootcert={}", ca.display()));
    let pool = es_postgres::connect(&url, 2, timeout).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ssl);
    pool.close().await;

    let other = server.dir.join("other-ca.crt");
    let url = server.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other.display()
    ));
    let error = es_postgres::connect(&url, 2, timeout).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("cannot connect to localhost:{}", server.port))
            && message.contains(
                "TLS: the server's certificate is not signed by a trusted CA (check sslrootcert)"
            ),
        "{message}"
    );
    assert!(!message.contains('{'), "no Debug dump: {message}");
}
