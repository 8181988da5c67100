//! What many small files cost with one key, as WAL shipping writes them
//! (one file per segment) and a point-in-time restore reads them back.
//! A measurement (format.rs holds the one-PBKDF2-per-Key property):
//!
//! ```text
//! MESBAK_FILES=1000 cargo bench -p mesbak-format --bench many_files
//! ```

use std::io::{Read, Write};
use std::time::Instant;

use mesbak_format::{Decryptor, Encryptor, Key};

fn main() {
    let files: usize = std::env::var("MESBAK_FILES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let secret = b"many files, one key";
    let writer_key = Key::from_secret(secret).unwrap();
    let plain = vec![7u8; 4096];
    let started = Instant::now();
    let written: Vec<Vec<u8>> = (0..files)
        .map(|_| {
            let mut encryptor = Encryptor::new(Vec::new(), &writer_key).unwrap();
            encryptor.write_all(&plain).unwrap();
            encryptor.finish().unwrap()
        })
        .collect();
    let write = started.elapsed();
    println!("{files} files written in {:.3} s", write.as_secs_f64());
    // The restore runs in another process: a Key of its own, whose cache
    // starts empty.
    let reader_key = Key::from_secret(secret).unwrap();
    let started = Instant::now();
    for file in &written {
        let mut out = Vec::new();
        Decryptor::new(&file[..], &reader_key)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
    }
    let read = started.elapsed();
    println!(
        "{files} files of 4 KiB, default options: written in {:.3} s, read back (another Key) in {:.3} s, total {:.3} s",
        write.as_secs_f64(),
        read.as_secs_f64(),
        (write + read).as_secs_f64()
    );
}
