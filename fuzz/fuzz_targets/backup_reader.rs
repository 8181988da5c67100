//! The backup file reader (`Decryptor`): never panics, never hands out a
//! byte that is not the plaintext that was encrypted, and refuses damage.
//!
//! The first input byte picks a mode:
//! - 0: the input is a whole file (skipped when its header asks for more
//!   than a cheap key derivation);
//! - 1: a valid header for the key, then the input as the chunks;
//! - 2: the input is a plaintext; it is encrypted (small chunks, format
//!   version 1 when the chunk-size byte's high bit is set, else 2), the file
//!   damaged as the input's last bytes say (flips and a cut), and then
//!   read: the result must be the plaintext exactly, or an error when the
//!   file was changed.

#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mesbak_format::{Decryptor, EncryptOptions, Encryptor, Header, Key};

fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| Key::from_secret(b"fuzzing key, not a secret").unwrap())
}

fn options(chunk_size: u32) -> EncryptOptions {
    EncryptOptions {
        chunk_size,
        kdf_iterations: 1,
    }
}

fn encrypt(plain: &[u8], chunk_size: u32, v1: bool) -> Vec<u8> {
    let mut encryptor = if v1 {
        Encryptor::with_options_v1(Vec::new(), key(), options(chunk_size))
    } else {
        Encryptor::with_options(Vec::new(), key(), options(chunk_size))
    }
    .unwrap();
    std::io::Write::write_all(&mut encryptor, plain).unwrap();
    encryptor.finish().unwrap()
}

/// Reads a whole file, in reads of `step` bytes.
fn decrypt(file: &[u8], step: usize) -> Result<Vec<u8>, String> {
    let mut decryptor = Decryptor::new(file, key()).map_err(|err| err.to_string())?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; step.max(1)];
    loop {
        match decryptor.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(err) => {
                // Sticky: the next read fails too.
                assert!(decryptor.read(&mut buf).is_err(), "error not sticky: {err}");
                return Err(err.to_string());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok((header, _)) = Header::read_from(&mut &rest[..]) {
                if header.kdf_iterations > 16 {
                    return;
                }
            }
            let _ = decrypt(rest, 4096);
        }
        1 => {
            let prefix = encrypt(b"", 64, false);
            let header_len = Header::read_from(&mut &prefix[..]).unwrap().0.encoded_len();
            let mut file = prefix[..header_len].to_vec();
            file.extend_from_slice(rest);
            // Random chunks never authenticate.
            assert!(decrypt(&file, 100).is_err());
        }
        _ => {
            // [chunk size][flips][cut: 2 bytes][plaintext...]
            if rest.len() < 4 {
                return;
            }
            let chunk_size = u32::from(rest[0] % 64) + 1;
            let v1 = rest[0] & 0x80 != 0;
            let flips = usize::from(rest[1] % 4);
            let cut = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
            let rest = &rest[4..];
            if rest.len() < flips * 3 {
                return;
            }
            let (edits, plain) = rest.split_at(flips * 3);
            let original = encrypt(plain, chunk_size, v1);
            let mut file = original.clone();
            for edit in edits.chunks(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % file.len();
                file[at] ^= edit[2];
            }
            // cut 0 keeps the whole file.
            if cut != 0 && cut < file.len() {
                file.truncate(cut);
            }
            let step = usize::from(chunk_size as u16 * 3 / 2);
            match decrypt(&file, step) {
                Ok(out) => {
                    assert_eq!(file, original, "a changed file was accepted");
                    assert_eq!(out, plain, "the plaintext came back different");
                }
                Err(err) => assert_ne!(file, original, "an intact file was refused: {err}"),
            }
        }
    }
});
