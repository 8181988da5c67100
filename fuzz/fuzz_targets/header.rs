//! The backup file header parser (versions 1 and 2): never panics; what it
//! accepts it writes back byte for byte, at the length of its version, within the documented limits; and it reads the same
//! from a reader that hands out one byte at a time.

#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use mesbak_format::{Header, MAX_CHUNK_SIZE, MAX_KDF_ITERATIONS, header_len};

/// A reader that returns at most one byte per call.
struct Trickle<'a>(&'a [u8]);

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match (self.0.split_first(), buf.is_empty()) {
            (Some((&first, rest)), false) => {
                buf[0] = first;
                self.0 = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = Header::read_from(&mut &data[..]);
    let trickled = Header::read_from(&mut Trickle(data));
    match (&whole, &trickled) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("whole and trickled reads differ: {whole:?} / {trickled:?}"),
    }
    if let Ok((header, raw)) = whole {
        assert_eq!(Some(raw.len()), header_len(data[8]));
        assert_eq!(raw.len(), header.encoded_len());
        assert_eq!(raw[..], data[..raw.len()]);
        assert_eq!(header.to_bytes(), raw);
        assert!(header.chunk_size > 0 && header.chunk_size <= MAX_CHUNK_SIZE);
        assert!(header.kdf_iterations > 0 && header.kdf_iterations <= MAX_KDF_ITERATIONS);
    }
});
