//! Every error an operator can meet from a worker binary, produced here through the real
//! `deal-worker` against a real PostgreSQL, and held against the table in docs/operations.md
//! ("Errors an operator can meet"): each message printed here must be in the table, word for
//! word once its variable parts are named (`<host:port>`, `<db>`, `<role>`, `<n>`), and each row
//! of the table must be printed here or, where its last column names another test file, appear
//! in that file.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Command, Output};

use es_examples::deal::{load, LoadOptions};
use es_postgres::testing::TestDatabase;

fn deal_worker(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deal-worker"))
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "off")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `url` with another user, database or port.
fn with(url: &str, user: Option<&str>, database: Option<&str>, port: Option<u16>) -> String {
    let mut url = url::Url::parse(url).unwrap();
    if let Some(user) = user {
        url.set_username(user).unwrap();
        url.set_password(None).unwrap();
    }
    if let Some(database) = database {
        url.set_path(database);
    }
    if let Some(port) = port {
        url.set_port(Some(port)).unwrap();
    }
    url.to_string()
}

/// The message with its variable parts named: the given words first, then every number.
fn named(line: &str, words: &[(&str, &str)]) -> String {
    let mut line = line.trim().to_string();
    for (word, name) in words {
        line = line.replace(word, name);
    }
    // The versions a database lacks change with every migration added.
    if let Some(start) = line.find("(missing: ") {
        if let Some(end) = line[start..].find(')') {
            line.replace_range(start..start + end + 1, "(missing: …)");
        }
    }
    let mut out = String::with_capacity(line.len());
    let mut in_number = false;
    let mut in_placeholder = false;
    for c in line.chars() {
        in_placeholder = match c {
            '<' => true,
            '>' => false,
            _ => in_placeholder,
        };
        if c.is_ascii_digit() && !in_placeholder {
            if !in_number {
                out.push_str("<n>");
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

/// The first line of `output` holding `marker`.
fn line_with(output: &Output, marker: &str) -> String {
    let all = text(output);
    all.lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no line with {marker:?} in:\n{all}"))
        .to_string()
}

/// What was printed, by case.
#[derive(Default)]
struct Printed(BTreeMap<&'static str, String>);

impl Printed {
    fn failed(
        &mut self,
        case: &'static str,
        output: &Output,
        marker: &str,
        words: &[(&str, &str)],
    ) {
        assert!(!output.status.success(), "{case}: {}", text(output));
        let line = named(&line_with(output, marker), words);
        assert!(
            !line.contains(" { ") && !line.contains("Error("),
            "{case}: no Debug dump: {line}"
        );
        self.0.insert(case, line);
    }
}

/// The table's rows: (message, test file), the message in the first cell's backticks.
fn documented() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/operations.md"
    ))
    .unwrap();
    let section = doc
        .split("## Errors an operator can meet")
        .nth(1)
        .expect("operations.md has the section")
        .split("\n## ")
        .next()
        .unwrap();
    section
        .lines()
        .filter(|l| l.starts_with("| ``"))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
            // A code span of two backticks: the messages quote commands in single ones.
            let message = cells[0].trim().trim_matches('`').trim().to_string();
            let test = cells.last().unwrap().trim().trim_matches('`').to_string();
            (message, test)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_an_operator_can_meet_is_in_the_table() {
    let mut printed = Printed::default();
    let db = TestDatabase::empty(6).await;
    let url = db.url.clone();
    let name = db.name().to_string();
    let dbname = [(name.as_str(), "<db>")];

    // Connecting.
    let down = with(&url, None, None, Some(1));
    let host = url::Url::parse(&url)
        .unwrap()
        .host_str()
        .unwrap()
        .to_string();
    let endpoint = format!("{host}:1");
    let port = url::Url::parse(&url).unwrap().port().unwrap_or(5432);
    let server = format!("{host}:{port}");
    printed.failed(
        "server down",
        &deal_worker(&down, &["status"]),
        "deal-worker:",
        &[(endpoint.as_str(), "<host:port>"), dbname[0]],
    );
    printed.failed(
        "no such database",
        &deal_worker(&with(&url, None, Some("es_no_such_db"), None), &["status"]),
        "deal-worker:",
        &[(server.as_str(), "<host:port>"), ("es_no_such_db", "<db>")],
    );
    printed.failed(
        "no such role",
        &deal_worker(
            &with(&url, Some("es_no_such_role"), None, None),
            &["status"],
        ),
        "deal-worker:",
        &[
            (server.as_str(), "<host:port>"),
            dbname[0],
            ("es_no_such_role", "<role>"),
        ],
    );

    // The schema.
    printed.failed(
        "schema behind",
        &deal_worker(&url, &["status"]),
        "deal-worker:",
        &[],
    );
    let migrated = deal_worker(&url, &["migrate"]);
    assert!(migrated.status.success(), "{}", text(&migrated));
    let role = format!(
        "es_t{}_ops",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
        .execute(&db.pool)
        .await
        .unwrap();
    printed.failed(
        "role without grants",
        &deal_worker(&with(&url, Some(&role), None, None), &["status"]),
        "deal-worker:",
        &[],
    );
    printed.failed(
        "grant to a missing role",
        &deal_worker(&url, &["grant", "writer", "es_no_such_role"]),
        "deal-worker:",
        &[("es_no_such_role", "<role>")],
    );
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&db.pool)
        .await
        .unwrap();

    // Names and generations.
    printed.failed(
        "unknown projection",
        &deal_worker(&url, &["rebuild", "nosuch"]),
        "deal-worker:",
        &[("nosuch", "<name>")],
    );
    printed.failed(
        "never run",
        &deal_worker(&url, &["switch", "deals"]),
        "deal-worker:",
        &[("deals", "<name>")],
    );
    let options = LoadOptions {
        deals: 20,
        events: 200,
        concurrency: 2,
        append_batch: 10,
    };
    load(&db.pool, &options, |_| {}).await.unwrap();
    let rebuilt = deal_worker(&url, &["rebuild", "deals"]);
    assert!(rebuilt.status.success(), "{}", text(&rebuilt));
    printed.failed(
        "switch without a shadow",
        &deal_worker(&url, &["switch", "deals"]),
        "deal-worker:",
        &[("deals", "<name>")],
    );
    printed.failed(
        "rollback without a retired generation",
        &deal_worker(&url, &["rollback", "deals"]),
        "deal-worker:",
        &[("deals", "<name>")],
    );
    printed.failed(
        "compare without a shadow",
        &deal_worker(&url, &["compare", "deals"]),
        "deal-worker:",
        &[("deals", "<name>")],
    );
    let shadow = deal_worker(&url, &["rebuild", "deals", "--shadow"]);
    assert!(shadow.status.success(), "{}", text(&shadow));
    let shadow_table: String = sqlx::query_scalar(
        "SELECT tablename FROM pg_tables WHERE tablename LIKE 'deals%g2' ORDER BY 1 LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query(&format!(
        "DELETE FROM {shadow_table} WHERE ctid = (SELECT min(ctid) FROM {shadow_table})"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    printed.failed(
        "generations differ",
        &deal_worker(&url, &["compare", "deals"]),
        "rows only in",
        &[("deals", "<name>"), (shadow_table.as_str(), "<table>")],
    );
    printed.failed(
        "nothing to retry",
        &deal_worker(&url, &["retry", "deals", "--all"]),
        "nothing to do",
        &[("deals", "<name>")],
    );

    // Bad data in the log.
    sqlx::query(
        "INSERT INTO es_events (event_id, stream_id, stream_version, event_type,
             schema_version, payload)
         VALUES (gen_random_uuid(), 'deal-bad', 1, 'Configured', 2, '{\"fields\": 5}')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    printed.failed(
        "undecodable event",
        &deal_worker(&url, &["rebuild", "deals", "--restart"]),
        "deal-worker:",
        &[("deals", "<name>"), ("deal-bad", "<stream>")],
    );

    // Arguments.
    printed.failed(
        "zero poll interval",
        &deal_worker(&url, &["run", "--poll-ms", "0"]),
        "error:",
        &[],
    );

    let rows = documented();
    let mut missing = Vec::new();
    for (case, line) in &printed.0 {
        if !rows.iter().any(|(message, _)| message == line) {
            missing.push(format!("{case}: | `{line}` |"));
        }
    }
    assert!(
        missing.is_empty(),
        "printed but not in operations.md's table:\n{}",
        missing.join("\n")
    );
    for (message, test) in &rows {
        if printed.0.values().any(|line| line == message) {
            continue;
        }
        assert!(
            test.ends_with(".rs") && !test.ends_with("operator_errors.rs"),
            "a row not printed here and naming no other test: {message}"
        );
        let source = std::fs::read_to_string(
            concat!(env!("CARGO_MANIFEST_DIR"), "/..").to_string() + "/" + test,
        )
        .unwrap_or_else(|e| panic!("{test}: {e}"));
        // Its literal parts, between the named ones, are what that test checks.
        for part in message.split(['<', '>']).step_by(2) {
            let part = part.trim_matches([' ', ':', '(', ')', '…', '"']);
            if part.len() >= 12 {
                assert!(
                    source.contains(part) || source.contains(&part.replace('"', "\\\"")),
                    "{test} does not check {part:?} of {message}"
                );
            }
        }
    }
}
