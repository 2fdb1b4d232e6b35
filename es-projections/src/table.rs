//! Plain-text tables for people (`status`, the dead-letter listing): each column padded to its
//! widest cell, two spaces between columns, no trailing blanks.
//!
//! Cells come from storage (stream ids, owners, error messages), and a stream id stored before
//! `StreamId::new` refused invisible characters may hold a bidirectional override or a
//! zero-width space that would make it read as another id, or a newline that would break the
//! table: every cell is shown through [`es_core::escape_for_display`] (`\u{202e}`).

use std::borrow::Cow;

/// The table of `header` and `rows`, one line each, every line ending in a newline.
pub(crate) fn render<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[Cow<'_, str>; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|cell| es_core::escape_for_display(cell)))
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells.zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in &rows {
        out += &line(&mut row.iter().map(|cell| cell.as_ref()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_are_padded_to_their_widest_cell() {
        let rows = [
            ["deals".to_string(), "0".to_string()],
            ["é".into(), "12".into()],
        ];
        assert_eq!(
            super::render(["NAME", "LAG"], &rows),
            "NAME   LAG\ndeals  0\né      12\n"
        );
    }

    #[test]
    fn invisible_and_control_characters_are_shown_escaped() {
        let rows = [
            ["deal-\u{202e}1-tnuocca".to_string(), "a\nb".to_string()],
            ["x\u{200b}".into(), "ok".into()],
        ];
        assert_eq!(
            super::render(["STREAM", "ERROR"], &rows),
            "STREAM                  ERROR\n\
             deal-\\u{202e}1-tnuocca  a\\nb\n\
             x\\u{200b}               ok\n"
        );
    }
}
