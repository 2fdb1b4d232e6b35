//! Plain-text tables for people (`status`, the dead-letter listing): each column padded to its
//! widest cell, two spaces between columns, no trailing blanks.

/// The table of `header` and `rows`, one line each, every line ending in a newline.
pub(crate) fn render<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells.zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    for row in rows {
        out += &line(&mut row.iter().map(String::as_str));
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
}
