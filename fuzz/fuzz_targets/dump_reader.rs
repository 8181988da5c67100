//! The pg_dump stream reader (`DumpReader`), which counts rows per table
//! and finds schemas as the dump passes: never panics, and reads the same
//! however the stream is cut into blocks.
//!
//! Input: [split count][split points: 2 bytes each][dump...].

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesbak_agent::postgres::DumpReader;

#[derive(Debug, PartialEq)]
struct Read {
    table_rows: Vec<(String, u64)>,
    copy_order: Vec<String>,
    schemas: Vec<String>,
    timescaledb: bool,
    timescaledb_version: Option<String>,
}

fn read(pieces: &[&[u8]]) -> Read {
    let mut reader = DumpReader::default();
    for piece in pieces {
        reader.feed(piece);
    }
    Read {
        table_rows: reader.table_rows.into_iter().collect(),
        copy_order: reader.copy_order,
        schemas: reader.schemas,
        timescaledb: reader.timescaledb,
        timescaledb_version: reader.timescaledb_version,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&splits, rest)) = data.split_first() else {
        return;
    };
    let splits = usize::from(splits % 8);
    if rest.len() < splits * 2 {
        return;
    }
    let (points, dump) = rest.split_at(splits * 2);
    let mut cuts: Vec<usize> = points
        .chunks(2)
        .map(|p| usize::from(u16::from_le_bytes([p[0], p[1]])) % (dump.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(&dump[start..cut]);
        start = cut;
    }
    pieces.push(&dump[start..]);
    let whole = read(&[dump]);
    let cut = read(&pieces);
    assert_eq!(whole, cut, "the answer depends on how the stream is cut");
    // Every COPY that ended has its count.
    for (table, _) in &whole.table_rows {
        assert!(whole.copy_order.contains(table));
    }
});
