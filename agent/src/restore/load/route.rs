//! Splitting a plain pg_dump stream into what must run in order and what
//! may run beside other work, as `pg_restore -j` does with an archive.
//!
//! pg_dump heads every object it writes with a comment naming its type
//! (`-- Name: x; Type: INDEX; Schema: s; Owner: o`, `-- Data for Name: t;
//! Type: TABLE DATA; ...`). A table's COPY data, an index, and a primary
//! key, unique or exclusion constraint (type `CONSTRAINT`; foreign keys
//! are `FK CONSTRAINT`) need what came before their kind of entry, not
//! each other, so they may run in other sessions once that has finished;
//! everything else runs in the main session, in order. Session settings
//! (the header's `SET` lines, `SET default_tablespace` between objects)
//! go to every session. A table's COPY is cut into pieces at row ends, so
//! one big table is loaded by several sessions too.
//!
//! Text that is not pg_dump's (mesbak's prologue and epilogue, SQL
//! without those comments) all goes to the main session.

use bytes::{Bytes, BytesMut};

/// Where a piece of the stream goes.
#[derive(Debug, PartialEq)]
pub enum Routed {
    /// To the main session, in order; `statement` is false for blank and
    /// comment lines, which need nothing before them finished.
    Main { text: Bytes, statement: bool },
    /// A session setting: to every session, and to those started later.
    Setting(Bytes),
    /// Starts a unit of work that may run beside others.
    Start { unit: Unit, text: Bytes },
    /// More of the unit started last.
    More(Bytes),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    /// A piece of a table's COPY data: its COPY line, rows, then `\.`.
    Copy { table: String },
    /// An index or constraint of one table: its entry's text.
    Build,
}

/// Rows per piece of a table's COPY, in bytes: small enough that two
/// sessions share a 10 MiB table and that each session's queue (two
/// pieces) keeps the agent's memory flat, large enough that a piece's own
/// COPY statement costs nothing.
pub const PIECE_BYTES: usize = 1024 * 1024;
/// A line outside COPY data longer than this is not one of pg_dump's
/// markers: it is passed on without being held whole.
const LINE_CAP: usize = 1024 * 1024;
const END_OF_DATA: &[u8] = b"\\.\n";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Entry {
    /// Before pg_dump's first object: mesbak's prologue, pg_dump's header.
    Preamble,
    /// An object that runs in order.
    Serial,
    /// An index or constraint whose statement has not come yet.
    BuildPending,
    /// The text of an index or constraint entry (one unit).
    Build,
    /// A TABLE DATA entry whose COPY has not come yet.
    DataPending,
    /// After pg_dump's closing comment.
    Trailer,
}

struct Copying {
    table: String,
    /// The COPY line, newline included: each piece starts with it.
    statement: Bytes,
    /// Bytes of rows in the current piece.
    piece: usize,
    /// A row continues in the next block.
    mid_row: bool,
}

pub struct Router {
    entry: Entry,
    copy: Option<Copying>,
    /// The start of a line that continues in the next block.
    carry: BytesMut,
    /// The rest of a line too long to hold goes where its start went.
    long_line: bool,
    piece_bytes: usize,
}

impl Router {
    /// A router that cuts tables' rows into pieces of `piece_bytes`.
    pub fn with_piece_bytes(piece_bytes: usize) -> Router {
        Router {
            entry: Entry::Preamble,
            copy: None,
            carry: BytesMut::new(),
            long_line: false,
            piece_bytes: piece_bytes.max(1),
        }
    }

    /// Routes the next block of the stream.
    pub fn route(&mut self, block: &Bytes, out: &mut Vec<Routed>) {
        let mut at = 0;
        while at < block.len() {
            at = if self.copy.is_some() {
                self.copy_data(block, at, out)
            } else {
                self.statement_text(block, at, out)
            };
        }
    }

    /// The end of the stream: a last line without its newline.
    pub fn finish(&mut self, out: &mut Vec<Routed>) {
        if self.carry.is_empty() {
            return;
        }
        let rest = self.carry.split().freeze();
        if let Some(copy) = &mut self.copy {
            copy.piece += rest.len();
            out.push(Routed::More(rest));
        } else {
            self.line(rest, out);
        }
    }

    fn statement_text(&mut self, block: &Bytes, at: usize, out: &mut Vec<Routed>) -> usize {
        let newline = memchr::memchr(b'\n', &block[at..]).map(|i| at + i + 1);
        if self.long_line {
            let end = newline.unwrap_or(block.len());
            self.long_line = newline.is_none();
            self.pass_long(block.slice(at..end), out);
            return end;
        }
        match newline {
            Some(end) => {
                let line = if self.carry.is_empty() {
                    block.slice(at..end)
                } else {
                    self.carry.extend_from_slice(&block[at..end]);
                    self.carry.split().freeze()
                };
                self.line(line, out);
                end
            }
            None => {
                self.carry.extend_from_slice(&block[at..]);
                if self.carry.len() > LINE_CAP {
                    self.long_line = true;
                    let start = self.carry.split().freeze();
                    self.pass_long(start, out);
                }
                block.len()
            }
        }
    }

    /// Part of a line too long to be a marker: statement text where the
    /// entry's text goes.
    fn pass_long(&mut self, text: Bytes, out: &mut Vec<Routed>) {
        if self.entry == Entry::Build {
            out.push(Routed::More(text));
        } else {
            if matches!(self.entry, Entry::BuildPending | Entry::DataPending) {
                self.entry = Entry::Serial;
            }
            out.push(Routed::Main {
                text,
                statement: true,
            });
        }
    }

    /// One whole line outside COPY data (its newline included, but for
    /// the stream's last line).
    fn line(&mut self, line: Bytes, out: &mut Vec<Routed>) {
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if let Some(kind) = entry_type(text) {
            self.entry = match kind {
                b"INDEX" | b"CONSTRAINT" => Entry::BuildPending,
                b"TABLE DATA" => Entry::DataPending,
                _ => Entry::Serial,
            };
            out.push(Routed::Main {
                text: line,
                statement: false,
            });
            return;
        }
        if text == b"-- PostgreSQL database dump complete" {
            self.entry = Entry::Trailer;
        }
        if text.is_empty() || text.starts_with(b"--") {
            out.push(if self.entry == Entry::Build {
                Routed::More(line)
            } else {
                Routed::Main {
                    text: line,
                    statement: false,
                }
            });
            return;
        }
        if is_setting(text, self.entry == Entry::Preamble) {
            // pg_dump writes it just before the next object's comment.
            if self.entry == Entry::Build {
                self.entry = Entry::Serial;
            }
            out.push(Routed::Setting(line));
            return;
        }
        match self.entry {
            Entry::Build => out.push(Routed::More(line)),
            Entry::BuildPending if is_build(text) => {
                self.entry = Entry::Build;
                out.push(Routed::Start {
                    unit: Unit::Build,
                    text: line,
                });
            }
            Entry::DataPending => {
                self.entry = Entry::Serial;
                match copy_table(text) {
                    Some(table) => {
                        self.copy = Some(Copying {
                            table: table.clone(),
                            statement: line.clone(),
                            piece: 0,
                            mid_row: false,
                        });
                        out.push(Routed::Start {
                            unit: Unit::Copy { table },
                            text: line,
                        });
                    }
                    None => out.push(Routed::Main {
                        text: line,
                        statement: true,
                    }),
                }
            }
            _ => {
                if self.entry == Entry::BuildPending {
                    self.entry = Entry::Serial;
                }
                out.push(Routed::Main {
                    text: line,
                    statement: true,
                });
            }
        }
    }

    /// COPY data from `at`: rows in bulk, cut into pieces at row ends,
    /// until the `\.` line.
    fn copy_data(&mut self, block: &Bytes, at: usize, out: &mut Vec<Routed>) -> usize {
        let piece_bytes = self.piece_bytes;
        let copy = self.copy.as_mut().expect("in COPY data");
        let rest = &block[at..];
        if copy.mid_row {
            let end = memchr::memchr(b'\n', rest).map_or(block.len(), |i| at + i + 1);
            copy.mid_row = end == block.len() && block[end - 1] != b'\n';
            copy.piece += end - at;
            out.push(Routed::More(block.slice(at..end)));
            return end;
        }
        if !self.carry.is_empty() {
            // A line's start of at most two bytes, which might be `\.`.
            let want = END_OF_DATA.len() - self.carry.len();
            let take = memchr::memchr(b'\n', &rest[..rest.len().min(want)])
                .map_or(rest.len().min(want), |i| i + 1);
            self.carry.extend_from_slice(&rest[..take]);
            let head = &self.carry[..];
            if head == END_OF_DATA {
                self.carry.clear();
                out.push(Routed::More(Bytes::from_static(END_OF_DATA)));
                self.copy = None;
                return at + take;
            }
            if head.len() < END_OF_DATA.len() && END_OF_DATA.starts_with(head) {
                return at + take; // still undecided: the block ended
            }
            let start = self.carry.split().freeze();
            copy.mid_row = !start.ends_with(b"\n");
            copy.piece += start.len();
            out.push(Routed::More(start));
            return at + take;
        }
        if rest.starts_with(END_OF_DATA) {
            out.push(Routed::More(block.slice(at..at + END_OF_DATA.len())));
            self.copy = None;
            return at + END_OF_DATA.len();
        }
        if rest.len() < END_OF_DATA.len() && END_OF_DATA.starts_with(rest) {
            self.carry.extend_from_slice(rest);
            return block.len();
        }
        if copy.piece >= piece_bytes {
            out.push(Routed::More(Bytes::from_static(END_OF_DATA)));
            out.push(Routed::Start {
                unit: Unit::Copy {
                    table: copy.table.clone(),
                },
                text: copy.statement.clone(),
            });
            copy.piece = 0;
        }
        // Rows up to the `\.` line, the piece's end or the block's end.
        let mut end = memchr::memmem::find(rest, b"\n\\.\n").map_or(block.len(), |i| at + i + 1);
        let allowance = piece_bytes - copy.piece;
        if end - at > allowance {
            if let Some(i) = memchr::memchr(b'\n', &block[at + allowance - 1..end]) {
                end = at + allowance + i;
            }
        }
        let consumed = end;
        if end == block.len() && block[end - 1] != b'\n' {
            // The block ends inside a line: a row, or maybe the `\.` line.
            let line_start = memchr::memrchr(b'\n', &block[at..end]).map_or(at, |i| at + i + 1);
            let partial = &block[line_start..end];
            if partial.len() < END_OF_DATA.len() && END_OF_DATA.starts_with(partial) {
                self.carry.extend_from_slice(partial);
                end = line_start;
            } else {
                copy.mid_row = true;
            }
        }
        if end > at {
            copy.piece += end - at;
            out.push(Routed::More(block.slice(at..end)));
        }
        consumed
    }
}

/// The type pg_dump names in an object's heading comment.
fn entry_type(line: &[u8]) -> Option<&[u8]> {
    if !(line.starts_with(b"-- Name: ") || line.starts_with(b"-- Data for Name: ")) {
        return None;
    }
    let from = memchr::memmem::find(line, b"; Type: ")? + b"; Type: ".len();
    let rest = &line[from..];
    let to = memchr::memmem::find(rest, b"; Schema: ")?;
    Some(&rest[..to])
}

/// A line that sets something for the session: any `SET` of pg_dump's
/// header, and the tablespace and access method it sets between objects.
fn is_setting(line: &[u8], in_preamble: bool) -> bool {
    if !line.ends_with(b";") || line.contains(&b'\n') {
        return false;
    }
    (in_preamble
        && (line.starts_with(b"SET ") || line.starts_with(b"SELECT pg_catalog.set_config(")))
        || line.starts_with(b"SET default_tablespace = ")
        || line.starts_with(b"SET default_table_access_method = ")
}

/// The statement an index or constraint entry starts with.
fn is_build(line: &[u8]) -> bool {
    [
        &b"CREATE INDEX "[..],
        b"CREATE UNIQUE INDEX ",
        b"ALTER TABLE ONLY ",
        b"ALTER TABLE ",
    ]
    .iter()
    .any(|start| line.starts_with(start))
}

/// The table of a `COPY schema.table (...) FROM stdin;` line.
fn copy_table(line: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(line).ok()?;
    let rest = text.strip_prefix("COPY ")?;
    if !rest.ends_with(" FROM stdin;") {
        return None;
    }
    crate::postgres::qualified_name(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small pg_dump of two tables, an index, a primary key, a foreign
    /// key and a view, in pg_dump's order.
    const DUMP: &str = "\\restrict KEY\n\nSET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\n\n\
--\n-- Name: t; Type: TABLE; Schema: public; Owner: o\n--\n\nCREATE TABLE public.t (\n    id integer\n);\n\n\n\
--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: o\n--\n\nCOPY public.t (id) FROM stdin;\n1\n2\n\\N\n3\n\\.\n\n\n\
--\n-- Data for Name: u; Type: TABLE DATA; Schema: public; Owner: o\n--\n\nCOPY public.\"U u\" (id) FROM stdin;\n\\.\n\n\n\
SET default_tablespace = '';\n\n\
--\n-- Name: t t_pkey; Type: CONSTRAINT; Schema: public; Owner: o\n--\n\nALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\n\n\
--\n-- Name: t_idx; Type: INDEX; Schema: public; Owner: o\n--\n\nCREATE INDEX t_idx ON public.t USING btree (id);\n\n\n\
--\n-- Name: t t_fk; Type: FK CONSTRAINT; Schema: public; Owner: o\n--\n\nALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_fk FOREIGN KEY (id) REFERENCES public.t(id);\n\n\n\
--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict KEY\n\nSELECT 1;\n";

    /// What each session gets, with `|` where a unit starts.
    fn sessions(routed: &[Routed]) -> (String, String, String) {
        let (mut main, mut settings, mut beside) = (String::new(), String::new(), String::new());
        let text = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap();
        for r in routed {
            match r {
                Routed::Main { text: t, .. } => main.push_str(&text(t)),
                Routed::Setting(t) => settings.push_str(&text(t)),
                Routed::Start { unit, text: t } => {
                    beside.push_str(&format!("|{unit:?}:"));
                    beside.push_str(&text(t));
                }
                Routed::More(t) => beside.push_str(&text(t)),
            }
        }
        (main, settings, beside)
    }

    fn route_in_blocks(dump: &[u8], block: usize, piece: usize) -> Vec<Routed> {
        let mut router = Router::with_piece_bytes(piece);
        let mut out = Vec::new();
        for part in dump.chunks(block) {
            router.route(&Bytes::copy_from_slice(part), &mut out);
        }
        router.finish(&mut out);
        out
    }

    #[test]
    fn data_indexes_and_keys_go_beside_the_rest_in_order() {
        let whole = route_in_blocks(DUMP.as_bytes(), DUMP.len(), PIECE_BYTES);
        let (main, settings, beside) = sessions(&whole);
        assert_eq!(
            settings,
            "SET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\nSET default_tablespace = '';\n"
        );
        assert_eq!(
            beside,
            "|Copy { table: \"public.t\" }:COPY public.t (id) FROM stdin;\n1\n2\n\\N\n3\n\\.\n\
             |Copy { table: \"public.U u\" }:COPY public.\"U u\" (id) FROM stdin;\n\\.\n\
             |Build:ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\n\n--\n\
             |Build:CREATE INDEX t_idx ON public.t USING btree (id);\n\n\n--\n"
        );
        assert!(main.starts_with("\\restrict KEY\n"));
        assert!(main.contains("CREATE TABLE public.t (\n    id integer\n);"));
        assert!(main.contains("ADD CONSTRAINT t_fk FOREIGN KEY"));
        assert!(main.ends_with("\\unrestrict KEY\n\nSELECT 1;\n"));
        assert!(
            !main.contains("COPY")
                && !main.contains("t_pkey PRIMARY")
                && !main.contains("CREATE INDEX")
        );
        // Every byte goes somewhere, once.
        let routed: usize = whole
            .iter()
            .map(|r| match r {
                Routed::Main { text, .. }
                | Routed::Setting(text)
                | Routed::Start { text, .. }
                | Routed::More(text) => text.len(),
            })
            .sum();
        assert_eq!(routed, DUMP.len());
        // Only statements ask for what came before to be finished.
        for r in &whole {
            if let Routed::Main { text, statement } = r {
                let line = std::str::from_utf8(text).unwrap().trim_end();
                assert_eq!(
                    *statement,
                    !(line.is_empty() || line.starts_with("--")),
                    "{line:?}"
                );
            }
        }
        // The same wherever blocks end.
        for block in [1, 2, 3, 5, 64] {
            assert_eq!(
                sessions(&route_in_blocks(DUMP.as_bytes(), block, PIECE_BYTES)),
                sessions(&whole),
                "blocks of {block}"
            );
        }
    }

    #[test]
    fn a_tables_rows_are_cut_into_pieces_at_row_ends() {
        let mut dump = String::from(
            "--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: o\n--\n\nCOPY public.t (id, note) FROM stdin;\n",
        );
        let mut rows = 0;
        while dump.len() < 5000 {
            dump.push_str(&format!(
                "{rows}\tnote {} \\\\. \\N\n",
                "x".repeat(rows % 37)
            ));
            rows += 1;
        }
        dump.push_str("\\N\t\\.\n\\.\n\nSELECT 1;\n");
        rows += 1;
        for block in [1, 2, 3, 7, 100, 10_000] {
            let routed = route_in_blocks(dump.as_bytes(), block, 1000);
            let (main, _, beside) = sessions(&routed);
            assert_eq!(
                main,
                "--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: o\n--\n\n\nSELECT 1;\n",
                "blocks of {block}"
            );
            let pieces: Vec<&str> = beside
                .split("|Copy { table: \"public.t\" }:")
                .skip(1)
                .collect();
            assert!(
                pieces.len() >= 5,
                "{} pieces in blocks of {block}",
                pieces.len()
            );
            let mut seen = 0;
            for piece in &pieces {
                let body = piece
                    .strip_prefix("COPY public.t (id, note) FROM stdin;\n")
                    .and_then(|p| p.strip_suffix("\\.\n"))
                    .unwrap_or_else(|| panic!("a piece is one COPY: {piece:?}"));
                assert!(body.len() < 1000 + 60, "piece of {} bytes", body.len());
                seen += body.lines().count();
            }
            assert_eq!(seen, rows, "blocks of {block}");
        }
    }

    #[test]
    fn text_without_pg_dumps_headings_stays_in_order() {
        let sql = "CREATE TABLE t (id int);\nCOPY t (id) FROM stdin;\n1\n\\.\nCREATE INDEX i ON t (id);\nSET x = 1;\n";
        let (main, settings, beside) = sessions(&route_in_blocks(sql.as_bytes(), 4, PIECE_BYTES));
        assert_eq!(
            (main.as_str(), beside.as_str()),
            (sql.replace("SET x = 1;\n", "").as_str(), "")
        );
        assert_eq!(settings, "SET x = 1;\n");
    }

    #[test]
    fn an_index_entry_that_is_not_a_plain_statement_stays_in_order() {
        let sql =
            "--\n-- Name: i; Type: INDEX; Schema: public; Owner: o\n--\n\nDO $$ BEGIN END $$;\n";
        let (main, _, beside) = sessions(&route_in_blocks(sql.as_bytes(), 1000, PIECE_BYTES));
        assert_eq!((main.as_str(), beside.as_str()), (sql, ""));
    }
}
