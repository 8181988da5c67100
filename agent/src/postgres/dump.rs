//! Reading a plain pg_dump stream as it passes: rows per table, schemas,
//! TimescaleDB.

use std::collections::BTreeMap;

use super::split_ident;

/// Reads a plain pg_dump stream as it passes: rows per table (one line per
/// row between `COPY ... FROM stdin;` and `\.`) and the schemas created.
/// The counts match the dump's own snapshot exactly.
#[derive(Default)]
pub struct DumpReader {
    /// The start of a line that continues in the next block.
    line: Vec<u8>,
    line_truncated: bool,
    /// The table whose COPY data is passing, and its rows so far.
    copying: Option<(String, u64)>,
    pub table_rows: BTreeMap<String, u64>,
    /// Tables in the order their COPY statements come.
    pub copy_order: Vec<String>,
    pub schemas: Vec<String>,
    /// The dump creates the `timescaledb` extension.
    pub timescaledb: bool,
    /// The TimescaleDB version mesbak's prologue names, if the payload has one.
    pub timescaledb_version: Option<String>,
}

impl DumpReader {
    const LINE_PREFIX: usize = 4096;

    /// Reads the next block of the dump. Complete lines are looked at in
    /// place; only a line split across blocks is copied (its first 4 KiB).
    pub fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            let (part, after) = (&rest[..at], &rest[at + 1..]);
            if self.line.is_empty() && !self.line_truncated {
                self.end_line(part, false);
            } else {
                self.push_partial(part);
                let line = std::mem::take(&mut self.line);
                let truncated = std::mem::replace(&mut self.line_truncated, false);
                self.end_line(&line, truncated);
            }
            rest = after;
        }
        self.push_partial(rest);
    }

    fn push_partial(&mut self, part: &[u8]) {
        let room = Self::LINE_PREFIX.saturating_sub(self.line.len());
        if part.len() > room {
            self.line_truncated = true;
        }
        self.line.extend_from_slice(&part[..part.len().min(room)]);
    }

    fn end_line(&mut self, line: &[u8], truncated: bool) {
        if let Some((table, rows)) = &mut self.copying {
            if line == b"\\." {
                let (table, rows) = (std::mem::take(table), *rows);
                self.table_rows.insert(table, rows);
                self.copying = None;
            } else {
                *rows += 1;
            }
            return;
        }
        if truncated {
            return;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return;
        };
        if let Some(rest) = text.strip_prefix("COPY ") {
            if text.ends_with(" FROM stdin;") {
                if let Some(name) = qualified_name(rest) {
                    self.copy_order.push(name.clone());
                    self.copying = Some((name, 0));
                }
            }
        } else if text.starts_with("CREATE EXTENSION") && text.contains(" timescaledb ") {
            self.timescaledb = true;
        } else if let Some(rest) = text.strip_prefix(super::timescale::MARKER) {
            if let Some((version, _)) = rest.split_once(':') {
                self.timescaledb_version = Some(version.to_owned());
            }
        } else if let Some(rest) = text.strip_prefix("CREATE SCHEMA ") {
            if let Some((name, _)) = split_ident(rest) {
                self.schemas.push(name);
            }
        }
    }
}

/// `schema.table` from the start of a COPY statement.
fn qualified_name(text: &str) -> Option<String> {
    let (schema, rest) = split_ident(text)?;
    let rest = rest.strip_prefix('.')?;
    let (table, _) = split_ident(rest)?;
    Some(format!("{schema}.{table}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_reader_counts_rows_per_table_across_blocks() {
        let dump = "SET x = 1;\nCREATE SCHEMA mes_core;\nCREATE SCHEMA \"Odd \"\"Name\"\"\";\n\
                    COPY mes_core.asset (id, name) FROM stdin;\n1\ta\n2\tb\\nc\n3\t\\.x\n\\.\n\n\
                    COPY \"Odd \"\"Name\"\"\".\"Line Name\" (id) FROM stdin;\n\\.\n\
                    COPY public.t (v) FROM stdin;\nx\n\\.\n\
                    CREATE EXTENSION IF NOT EXISTS timescaledb WITH SCHEMA public;\n\
                    -- mesbak: TimescaleDB 2.19.3: Timescale's logical restore\n";
        for block_size in [1, 2, 7, 1000] {
            let mut reader = DumpReader::default();
            for block in dump.as_bytes().chunks(block_size) {
                reader.feed(block);
            }
            assert_eq!(reader.table_rows["mes_core.asset"], 3);
            assert_eq!(reader.table_rows["Odd \"Name\".Line Name"], 0);
            assert_eq!(reader.table_rows["public.t"], 1);
            assert_eq!(reader.schemas, vec!["mes_core", "Odd \"Name\""]);
            assert!(reader.timescaledb);
            assert_eq!(reader.timescaledb_version.as_deref(), Some("2.19.3"));
            assert_eq!(
                reader.copy_order,
                vec!["mes_core.asset", "Odd \"Name\".Line Name", "public.t"]
            );
        }
    }
}
