//! The Ignition tar walker (`TarWalker`), which follows the volume's tar
//! stream as it passes: never panics; gives the same answer however the
//! stream is cut into blocks; and where it accepts a complete archive, the
//! `tar` crate reads the same entries and the same root folder.
//!
//! Input: [split count][split points: 2 bytes each][archive...].

#![no_main]

use libfuzzer_sys::fuzz_target;
use mesbak_agent::ignition::tar::TarWalker;

#[derive(Debug, PartialEq)]
struct Walked {
    result: Result<(), String>,
    entries: u64,
    complete: bool,
    root_mode: Option<u32>,
}

fn walk(pieces: &[&[u8]]) -> Walked {
    let mut walker = TarWalker::default();
    let mut result = Ok(());
    for piece in pieces {
        result = walker.feed(piece);
        if result.is_err() {
            break;
        }
    }
    Walked {
        result,
        entries: walker.entries,
        complete: walker.complete(),
        root_mode: walker.root.map(|root| root.mode),
    }
}

/// What the `tar` crate reads: entries and the first entry's mode if it
/// is the root folder; `Err` when it fails. `Ok(None)` when its reading
/// cannot be trusted: it splits PAX records at newlines rather than by
/// their lengths, so a PAX value holding a newline (a valid file name) is
/// lost to it.
fn oracle(archive: &[u8]) -> Result<Option<(u64, Option<u32>)>, String> {
    let mut reader = tar::Archive::new(archive);
    let mut entries = 0u64;
    let mut root_mode = None;
    for entry in reader.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        match entry.pax_extensions() {
            Ok(None) => {}
            Ok(Some(records)) => {
                if records.into_iter().any(|r| r.is_err()) {
                    return Ok(None);
                }
            }
            Err(_) => return Ok(None),
        }
        if entries == 0 && entry.header().entry_type() == tar::EntryType::Directory {
            let path = entry.path_bytes();
            if path.as_ref() == b"." || path.as_ref() == b"./" {
                root_mode = Some(entry.header().mode().map_err(|e| e.to_string())? & 0o7777);
            }
        }
        entries += 1;
    }
    Ok(Some((entries, root_mode)))
}

fuzz_target!(|data: &[u8]| {
    let Some((&splits, rest)) = data.split_first() else {
        return;
    };
    let splits = usize::from(splits % 8);
    if rest.len() < splits * 2 {
        return;
    }
    let (points, archive) = rest.split_at(splits * 2);
    let mut cuts: Vec<usize> = points
        .chunks(2)
        .map(|p| usize::from(u16::from_le_bytes([p[0], p[1]])) % (archive.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(&archive[start..cut]);
        start = cut;
    }
    pieces.push(&archive[start..]);

    let whole = walk(&[archive]);
    let cut = walk(&pieces);
    assert_eq!(whole, cut, "the answer depends on how the stream is cut");

    if whole.result.is_ok() && whole.complete {
        match oracle(archive) {
            Ok(Some(read)) => assert_eq!(
                read,
                (whole.entries, whole.root_mode),
                "the walker accepted an archive the tar crate reads differently"
            ),
            Ok(None) => {}
            Err(err) => panic!("the walker accepted an archive the tar crate refuses: {err}"),
        }
    }
});
