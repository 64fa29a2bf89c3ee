//! How the control plane's commands print: aligned tables for listings, `key: value` lines
//! for one record, and `--json` (the admin API's own JSON, so scripts read one shape
//! whichever way the command ran).

use std::io::Write;

use serde::Serialize;

use super::plane::Failure;

/// Prints `v` as JSON on standard output.
pub(super) fn json(v: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Failure::refused(format!("cannot print JSON: {e}")))?;
    say(&format!("{text}\n"))
}

/// Writes to standard output; a closed pipe (`| head`) ends the command quietly.
pub(super) fn say(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::refused(format!("standard output: {e}"))),
    }
}

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `key: value` lines, the keys padded to line up.
pub(super) fn record(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    fields
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

/// An optional time as a table shows it.
pub(super) fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_string()
}

/// An expiry as a table shows it.
pub(super) fn expiry(v: Option<&str>) -> String {
    v.unwrap_or("never").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_line_up() {
        let t = table(
            &["ID", "NAME", "STATE"],
            &[
                vec!["lic_a".into(), "Big Bank".into(), "active".into()],
                vec!["lic_bbbbbb".into(), "X".into(), "revoked".into()],
            ],
        );
        assert_eq!(
            t,
            "ID          NAME      STATE\n\
             lic_a       Big Bank  active\n\
             lic_bbbbbb  X         revoked\n"
        );
        assert_eq!(
            record(&[("id", "lic_a".into()), ("customer", "Big Bank".into())]),
            "id:       lic_a\ncustomer: Big Bank\n"
        );
    }
}
