//! NATS fixtures for publisher tests: a private nats-server that a test can kill and restart at
//! the same port and store (for tests that restart the broker), the shared one of `$NATS_URL`
//! otherwise (scripts/test starts it; without it a private one is started), a JetStream stream
//! read back, and the check that it holds the log exactly once, each stream in order.
//!
//! Included with `#[path = "common/nats.rs"] mod nats_common;` (also by examples' tests, with
//! their own relative path): it uses only crates both packages depend on.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use es_core::StreamId;
use es_projections::nats::async_nats;
use es_projections::nats::{self as nats, JetStreamOptions};
use futures::StreamExt;

/// A nats-server of the test's own, with JetStream on and its store in a directory under the
/// target dir; killed (and its store deleted) when dropped.
pub struct NatsServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// The nats-server binary: `$NATS_SERVER_BIN`, else `nats-server` on the `PATH`, else Debian's
/// `/usr/sbin/nats-server`.
fn binary() -> PathBuf {
    if let Ok(bin) = std::env::var("NATS_SERVER_BIN") {
        return bin.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    });
    let bin = on_path.unwrap_or_else(|| "/usr/sbin/nats-server".into());
    assert!(
        bin.is_file(),
        "nats-server not found: install the 'nats-server' package, or run through scripts/test"
    );
    bin
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl NatsServer {
    /// Starts a server on a free local port and waits until it accepts clients with JetStream.
    pub fn start() -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("nats-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            port: free_port(),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .unwrap();
        let port = self.port.to_string();
        let store = self.dir.join("jetstream");
        let child = Command::new(binary())
            .args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the server's greeting says JetStream is on.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log =
                        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    panic!("nats-server exited with {status}:\n{log}");
                }
            }
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                stream
                    .set_read_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                let mut info = String::new();
                if BufReader::new(stream).read_line(&mut info).is_ok()
                    && info.contains("\"jetstream\":true")
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: no clean shutdown) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The broker of a test that does not restart it: `$NATS_URL`, or a private server.
pub struct Broker {
    pub url: String,
    _own: Option<NatsServer>,
}

pub fn shared_broker() -> Broker {
    match std::env::var("NATS_URL") {
        Ok(url) if !url.is_empty() => Broker { url, _own: None },
        _ => {
            let own = NatsServer::start();
            Broker {
                url: own.url(),
                _own: Some(own),
            }
        }
    }
}

/// Options with a stream and subject prefix of this test's own, so that tests sharing a server
/// (and runs sharing it over time) never see each other's messages.
pub fn unique_options() -> JetStreamOptions {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tag = &tag[..12];
    JetStreamOptions {
        stream: format!("TEST_{}", tag.to_uppercase()),
        subject_prefix: format!("t{tag}"),
        ack_timeout: Duration::from_secs(2),
        ..JetStreamOptions::default()
    }
}

/// A message as JetStream stored it.
#[derive(Clone, Debug)]
pub struct Stored {
    pub sequence: u64,
    pub subject: String,
    pub msg_id: String,
    pub stream: String,
    pub version: i64,
    pub position: i64,
    pub event_type: String,
    pub schema_version: u32,
    pub headers: HashMap<String, String>,
    pub payload: serde_json::Value,
}

/// Every message of JetStream stream `name`, in stream sequence order (the order JetStream
/// stored them in).
pub async fn read_back(url: &str, name: &str) -> Vec<Stored> {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(name).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    if state.messages == 0 {
        return Vec::new();
    }
    let stream = &stream;
    let stored: Vec<Stored> = futures::stream::iter(state.first_sequence..=state.last_sequence)
        .map(|sequence| async move {
            let message = stream.get_raw_message(sequence).await.unwrap();
            let header = |name: &str| {
                message
                    .headers
                    .get(name)
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_else(|| panic!("message {sequence} lacks header {name}"))
            };
            let mut headers = HashMap::new();
            for (name, values) in message.headers.iter() {
                if let Some(value) = values.first() {
                    headers.insert(name.to_string(), value.as_str().to_string());
                }
            }
            Stored {
                sequence,
                subject: message.subject.to_string(),
                msg_id: header(nats::HEADER_MESSAGE_ID),
                stream: header(nats::HEADER_STREAM),
                version: header(nats::HEADER_STREAM_VERSION).parse().unwrap(),
                position: header(nats::HEADER_POSITION).parse().unwrap(),
                event_type: header(nats::HEADER_EVENT_TYPE),
                schema_version: header(nats::HEADER_SCHEMA_VERSION).parse().unwrap(),
                headers,
                payload: serde_json::from_slice(&message.payload).unwrap(),
            }
        })
        .buffered(32)
        .collect()
        .await;
    assert_eq!(stored.len() as u64, state.messages, "no gaps in the stream");
    stored
}

/// An event of the log, as the checks need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    pub event_id: uuid::Uuid,
    pub stream: String,
    pub version: i64,
    pub position: i64,
}

/// Every event of the log.
pub async fn log_of(pool: &sqlx::PgPool) -> Vec<Logged> {
    let rows: Vec<(uuid::Uuid, String, i64, i64)> = sqlx::query_as(
        "SELECT event_id, stream_id, stream_version, global_position FROM es_events ORDER BY global_position",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(event_id, stream, version, position)| Logged {
            event_id,
            stream,
            version,
            position,
        })
        .collect()
}

/// Asserts that JetStream holds every event of `log` exactly once (by message id, the event
/// id), with its stream, version and position, on its stream's subject, and each stream's
/// messages stored in version order 1, 2, ..., n.
pub fn assert_published_once_in_order(stored: &[Stored], log: &[Logged], prefix: &str) {
    let ids: HashSet<&str> = stored.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(
        (stored.len(), ids.len()),
        (log.len(), log.len()),
        "as many messages and distinct message ids as events"
    );
    let by_id: HashMap<String, &Logged> = log.iter().map(|e| (e.event_id.to_string(), e)).collect();
    let mut versions: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for message in stored {
        let event = by_id
            .get(&message.msg_id)
            .unwrap_or_else(|| panic!("message {} is no event of the log", message.msg_id));
        assert_eq!(
            (message.stream.as_str(), message.version, message.position),
            (event.stream.as_str(), event.version, event.position),
            "message {} describes its event",
            message.sequence
        );
        let stream = StreamId::new(message.stream.clone()).unwrap();
        assert_eq!(message.subject, nats::subject_for(prefix, &stream));
        assert_eq!(
            nats::stream_of_subject(prefix, &message.subject),
            Some(stream)
        );
        versions
            .entry(&message.stream)
            .or_default()
            .push(message.version);
    }
    for (stream, versions) in versions {
        let expected: Vec<i64> = (1..=versions.len() as i64).collect();
        assert_eq!(
            versions, expected,
            "stream {stream} stored in version order"
        );
    }
}
