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
    /// The last bytes of that line.
    tail: Vec<u8>,
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
    /// The payload carries the database's own settings, grants and comment
    /// (mesbak's epilogue; an old stack's dump does not).
    pub database_facts: bool,
}

impl DumpReader {
    /// How much of a line is looked at: statements are recognised by their
    /// start (identifiers are at most 63 bytes)...
    const LINE_PREFIX: usize = 4096;
    /// ...and a COPY by its end, which may be far beyond (a wide table's
    /// column list).
    const LINE_TAIL: usize = 16;

    /// Whether the stream ended inside a table's COPY data (cut short).
    pub fn in_copy(&self) -> Option<&str> {
        self.copying.as_ref().map(|(table, _)| table.as_str())
    }

    /// Reads the next block of the dump. Complete lines are looked at in
    /// place; only a line split across blocks is copied (its first 4 KiB
    /// and its last bytes), and either way a line is judged by the same
    /// bytes, so the result does not depend on where blocks end.
    pub fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(at) = memchr::memchr(b'\n', rest) {
            let (part, after) = (&rest[..at], &rest[at + 1..]);
            if self.line.is_empty() && !self.line_truncated {
                let tail = &part[part.len().saturating_sub(Self::LINE_TAIL)..];
                let prefix = &part[..part.len().min(Self::LINE_PREFIX)];
                self.end_line(prefix, part.len() > Self::LINE_PREFIX, tail);
            } else {
                self.push_partial(part);
                let line = std::mem::take(&mut self.line);
                let tail = std::mem::take(&mut self.tail);
                let truncated = std::mem::replace(&mut self.line_truncated, false);
                self.end_line(&line, truncated, &tail);
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
        self.tail
            .extend_from_slice(&part[part.len().saturating_sub(Self::LINE_TAIL)..]);
        let excess = self.tail.len().saturating_sub(Self::LINE_TAIL);
        self.tail.drain(..excess);
    }

    /// One line: its first bytes (`prefix`, all of it unless `truncated`)
    /// and its last bytes (`tail`).
    fn end_line(&mut self, prefix: &[u8], truncated: bool, tail: &[u8]) {
        if let Some((table, rows)) = &mut self.copying {
            if prefix == b"\\." && !truncated {
                let (table, rows) = (std::mem::take(table), *rows);
                self.table_rows.insert(table, rows);
                self.copying = None;
            } else {
                *rows += 1;
            }
            return;
        }
        let text = match std::str::from_utf8(prefix) {
            Ok(text) => text,
            // The cut may split a character.
            Err(err) if truncated && err.error_len().is_none() => {
                std::str::from_utf8(&prefix[..err.valid_up_to()]).unwrap_or_default()
            }
            Err(_) => return,
        };
        if let Some(rest) = text.strip_prefix("COPY ") {
            if tail.ends_with(b" FROM stdin;") {
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
        } else if text.starts_with(super::facts::MARKER) {
            self.database_facts = true;
        } else if let Some(rest) = text.strip_prefix("CREATE SCHEMA ") {
            if let Some((name, _)) = split_ident(rest) {
                self.schemas.push(name);
            }
        }
    }
}

/// `schema.table` from the start of a COPY statement.
pub fn qualified_name(text: &str) -> Option<String> {
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

    /// Found by fuzzing (fuzz/fuzz_targets/dump_reader.rs): a COPY line
    /// longer than 4 KiB (a wide table's column list) was recognised when
    /// it arrived in one block but not when split across two, so its rows
    /// were not counted.
    #[test]
    fn long_lines_read_the_same_however_the_blocks_fall() {
        let columns: Vec<String> = (0..600).map(|i| format!("column_{i}")).collect();
        let mut dump = format!(
            "COPY mes_core.wide ({}) FROM stdin;\n1\n2\n\\.\n",
            columns.join(", ")
        )
        .into_bytes();
        // A long line that is cut in the middle of a character, then a
        // schema.
        dump.extend_from_slice(b"-- ");
        dump.extend(std::iter::repeat_n("é".as_bytes(), 3000).flatten());
        dump.extend_from_slice(b"\nCREATE SCHEMA mes_audit;\n");
        let whole = {
            let mut reader = DumpReader::default();
            reader.feed(&dump);
            reader
        };
        assert_eq!(whole.table_rows["mes_core.wide"], 2);
        assert_eq!(whole.schemas, vec!["mes_audit"]);
        for split in [1, 100, 4095, 4096, 4097, 4200, 6000, 6500, dump.len() - 1] {
            let mut reader = DumpReader::default();
            reader.feed(&dump[..split]);
            reader.feed(&dump[split..]);
            assert_eq!(reader.table_rows, whole.table_rows, "split at {split}");
            assert_eq!(reader.schemas, whole.schemas, "split at {split}");
        }
        for block in [1, 7, 4096] {
            let mut reader = DumpReader::default();
            for piece in dump.chunks(block) {
                reader.feed(piece);
            }
            assert_eq!(reader.table_rows, whole.table_rows, "blocks of {block}");
        }
    }
}
