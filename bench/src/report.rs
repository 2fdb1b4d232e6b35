//! Markdown output: tables and the formatting of durations, ratios and counts.

use std::fmt::Write as _;
use std::time::Duration;

/// A markdown table built row by row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles (a title starting with `>` is right-aligned).
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it must have as many cells as the header.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as markdown.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let titles: Vec<&str> = self
            .header
            .iter()
            .map(|h| h.strip_prefix('>').unwrap_or(h))
            .collect();
        let _ = writeln!(out, "| {} |", titles.join(" | "));
        let rules: Vec<&str> = self
            .header
            .iter()
            .map(|h| if h.starts_with('>') { "---:" } else { "---" })
            .collect();
        let _ = writeln!(out, "|{}|", rules.join("|"));
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

/// A duration in milliseconds with three significant digits, e.g. `0.412 ms`, `41.2 ms`.
pub fn ms(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else if ms >= 1.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.3} ms")
    }
}

/// A ratio, e.g. `1.31×`.
pub fn times(ratio: f64) -> String {
    if ratio >= 10.0 {
        format!("{ratio:.0}×")
    } else {
        format!("{ratio:.2}×")
    }
}

/// A count with thousands separators, e.g. `10,099`.
pub fn count(n: u64) -> String {
    let reversed: Vec<char> = n.to_string().chars().rev().collect();
    let mut groups: Vec<String> = reversed
        .chunks(3)
        .map(|group| group.iter().rev().collect())
        .collect();
    groups.reverse();
    groups.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(count(10_099), "10,099");
        assert_eq!(count(100), "100");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(0), "0");
        assert_eq!(ms(Duration::from_micros(412)), "0.412 ms");
        assert_eq!(ms(Duration::from_micros(41_230)), "41.2 ms");
        assert_eq!(times(1.314), "1.31×");
        let mut t = Table::new(&["a", ">b"]);
        t.row(vec!["x".into(), "1".into()]);
        assert_eq!(t.to_markdown(), "| a | b |\n|---|---:|\n| x | 1 |\n");
    }
}
