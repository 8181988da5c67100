//! Round trips, every class of tampering, wrong keys and key-file checks.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;

use mesbak_format::{
    Decryptor, EncryptOptions, Encryptor, FormatError, HEADER_LEN_V1, HEADER_LEN_V2, Header, Kdf,
    Key, KeyError, TAG_LEN, verify,
};
use proptest::prelude::*;

/// Few KDF iterations keep the many small cases fast; one test below uses the
/// defaults.
const FAST: EncryptOptions = EncryptOptions {
    chunk_size: 1024,
    kdf_iterations: 1000,
};

fn key() -> Key {
    Key::from_secret(b"correct horse battery staple").unwrap()
}

fn payload(len: usize) -> Vec<u8> {
    // Deterministic, not all one byte, cheap to build.
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0])
        .collect()
}

/// The files mesbak writes: format version 2.
const HEADER_LEN: usize = HEADER_LEN_V2;

fn encrypt(data: &[u8], options: EncryptOptions) -> Vec<u8> {
    encrypt_with(&key(), data, options)
}

fn encrypt_with(key: &Key, data: &[u8], options: EncryptOptions) -> Vec<u8> {
    let writer = Encryptor::with_options(Vec::new(), key, options).unwrap();
    feed(writer, data)
}

/// A format version 1 file, as mesbak wrote before version 2.
fn encrypt_v1(data: &[u8], options: EncryptOptions) -> Vec<u8> {
    let writer = Encryptor::with_options_v1(Vec::new(), &key(), options).unwrap();
    feed(writer, data)
}

fn feed(mut writer: Encryptor<Vec<u8>>, data: &[u8]) -> Vec<u8> {
    // Uneven writes exercise the chunk boundary logic.
    for piece in data.chunks(777) {
        writer.write_all(piece).unwrap();
    }
    writer.finish().unwrap()
}

fn decrypt(file: &[u8], key: &Key) -> Result<Vec<u8>, FormatError> {
    let mut reader = Decryptor::new(file, key)?;
    let mut out = Vec::new();
    reader
        .read_to_end(&mut out)
        .map_err(FormatError::from_io_owned)?;
    Ok(out)
}

fn sealed_len(plain: usize, chunk: usize) -> usize {
    let chunks = if plain == 0 { 1 } else { plain.div_ceil(chunk) };
    HEADER_LEN + plain + chunks * TAG_LEN
}

#[test]
fn round_trip_at_edge_sizes() {
    let chunk = FAST.chunk_size as usize;
    for len in [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk, 3 * chunk + 5] {
        let data = payload(len);
        let file = encrypt(&data, FAST);
        assert_eq!(file.len(), sealed_len(len, chunk), "length {len}");
        assert_eq!(decrypt(&file, &key()).unwrap(), data, "length {len}");
    }
}

#[test]
fn round_trip_100_mb_with_default_options_streams() {
    let len = 100 * 1000 * 1000;
    let data = payload(len);
    let mut writer = Encryptor::new(Vec::with_capacity(len + 4096), &key()).unwrap();
    writer.write_all(&data).unwrap();
    let file = writer.finish().unwrap();
    let chunk = mesbak_format::DEFAULT_CHUNK_SIZE as usize;
    assert_eq!(file.len(), sealed_len(len, chunk));

    // Read back in small pieces; compare as we go instead of building a copy.
    let mut reader = Decryptor::new(&file[..], &key()).unwrap();
    let mut buf = vec![0u8; 64 * 1024 + 3];
    let mut at = 0;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert_eq!(&buf[..n], &data[at..at + n]);
        at += n;
    }
    assert_eq!(at, len);
}

#[test]
fn wrong_key_is_reported_before_any_data() {
    let file = encrypt(&payload(5000), FAST);
    let other = Key::from_secret(b"another key").unwrap();
    // Only the header is handed over: the key is judged from it alone.
    let err = Decryptor::new(&file[..HEADER_LEN], &other).err().unwrap();
    assert!(matches!(err, FormatError::WrongKey), "{err:?}");
    assert!(err.to_string().contains("key does not match"));
}

/// Offsets of chunk `i`'s first byte in a file written with FAST.
fn chunk_start(i: usize) -> usize {
    HEADER_LEN + i * (FAST.chunk_size as usize + TAG_LEN)
}

#[test]
fn a_flipped_byte_anywhere_is_detected() {
    let data = payload(4 * FAST.chunk_size as usize + 100);
    let file = encrypt(&data, FAST);
    let last_chunk = chunk_start(4);
    let positions = [
        0,                  // magic
        8,                  // version
        9,                  // KDF id
        12,                 // KDF iterations
        20,                 // key salt
        36,                 // file salt
        46,                 // cipher id
        48,                 // chunk size
        60,                 // key check
        69,                 // header CRC
        chunk_start(0),     // first chunk, first byte
        chunk_start(2) + 9, // middle chunk
        chunk_start(3) - 1, // a tag
        last_chunk + 3,     // last chunk body
        file.len() - 1,     // last tag
    ];
    for position in positions {
        let mut damaged = file.clone();
        damaged[position] ^= 0x20;
        let err = decrypt(&damaged, &key()).expect_err(&format!("flip at {position}"));
        let expected = match position {
            0..8 => matches!(err, FormatError::NotMesbak),
            8 => matches!(err, FormatError::UnsupportedVersion(_)),
            9..HEADER_LEN => matches!(err, FormatError::CorruptHeader(_)),
            _ => matches!(err, FormatError::CorruptChunk { .. }),
        };
        assert!(expected, "flip at {position}: {err:?}");
    }
}

#[test]
fn middle_chunk_damage_names_the_chunk_and_releases_only_earlier_chunks() {
    let data = payload(4 * FAST.chunk_size as usize);
    let mut file = encrypt(&data, FAST);
    file[chunk_start(2) + 100] ^= 1;
    let mut reader = Decryptor::new(&file[..], &key()).unwrap();
    let mut out = Vec::new();
    let err = reader.read_to_end(&mut out).unwrap_err();
    assert!(matches!(
        FormatError::from_io(&err),
        Some(FormatError::CorruptChunk { index: 2, .. })
    ));
    assert_eq!(out, data[..2 * FAST.chunk_size as usize]);
    // Errors are sticky.
    assert!(reader.read(&mut [0u8; 10]).is_err());
}

#[test]
fn truncation_at_a_chunk_boundary_is_reported_as_truncation() {
    let file = encrypt(&payload(3 * FAST.chunk_size as usize + 10), FAST);
    for cut in [chunk_start(3), chunk_start(1), HEADER_LEN, HEADER_LEN - 10] {
        let err = decrypt(&file[..cut], &key()).unwrap_err();
        assert!(
            matches!(err, FormatError::Truncated { .. }),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn truncation_inside_a_chunk_is_detected() {
    let file = encrypt(&payload(3 * FAST.chunk_size as usize + 10), FAST);
    for cut in [file.len() - 1, file.len() - TAG_LEN, chunk_start(2) + 500] {
        let err = decrypt(&file[..cut], &key()).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::CorruptChunk { .. } | FormatError::Truncated { .. }
            ),
            "cut at {cut}: {err:?}"
        );
    }
}

#[test]
fn appended_bytes_are_detected() {
    for len in [
        10,
        FAST.chunk_size as usize,
        2 * FAST.chunk_size as usize + 1,
    ] {
        let mut file = encrypt(&payload(len), FAST);
        file.extend_from_slice(b"extra");
        let err = decrypt(&file, &key()).unwrap_err();
        assert!(
            matches!(
                err,
                FormatError::TrailingData { .. } | FormatError::CorruptChunk { .. }
            ),
            "length {len}: {err:?}"
        );
    }
    // A whole extra chunk copied from the file itself.
    let mut file = encrypt(&payload(2 * FAST.chunk_size as usize + 1), FAST);
    let copy = file[chunk_start(0)..chunk_start(1)].to_vec();
    file.extend_from_slice(&copy);
    assert!(decrypt(&file, &key()).is_err());
}

#[test]
fn appended_data_after_a_full_final_chunk_is_called_trailing_data() {
    let mut file = encrypt(&payload(2 * FAST.chunk_size as usize), FAST);
    file.extend_from_slice(&[0u8; 40]);
    let err = decrypt(&file, &key()).unwrap_err();
    assert!(matches!(err, FormatError::TrailingData { .. }), "{err:?}");
}

#[test]
fn removed_and_swapped_chunks_are_detected() {
    let file = encrypt(&payload(4 * FAST.chunk_size as usize + 7), FAST);
    let chunk = |i: usize| file[chunk_start(i)..chunk_start(i + 1).min(file.len())].to_vec();

    let mut removed_middle = file[..chunk_start(1)].to_vec();
    removed_middle.extend(file[chunk_start(2)..].iter());
    let err = decrypt(&removed_middle, &key()).unwrap_err();
    assert!(
        matches!(err, FormatError::CorruptChunk { index: 1, .. }),
        "{err:?}"
    );

    let removed_last = file[..chunk_start(4)].to_vec();
    let err = decrypt(&removed_last, &key()).unwrap_err();
    assert!(matches!(err, FormatError::Truncated { .. }), "{err:?}");

    let mut swapped = file[..chunk_start(1)].to_vec();
    swapped.extend(chunk(2));
    swapped.extend(chunk(1));
    swapped.extend(file[chunk_start(3)..].iter());
    assert_eq!(swapped.len(), file.len());
    let err = decrypt(&swapped, &key()).unwrap_err();
    assert!(
        matches!(err, FormatError::CorruptChunk { index: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn a_header_from_another_file_does_not_fit() {
    let a = encrypt(&payload(3000), FAST);
    let b = encrypt(&payload(3000), FAST);
    let mut mixed = b[..HEADER_LEN].to_vec();
    mixed.extend_from_slice(&a[HEADER_LEN..]);
    assert!(matches!(
        decrypt(&mixed, &key()),
        Err(FormatError::CorruptChunk { index: 0, .. })
    ));
}

#[test]
fn not_a_backup_and_future_versions_are_named() {
    assert!(matches!(
        decrypt(b"-- PostgreSQL database dump\n", &key()),
        Err(FormatError::NotMesbak)
    ));
    assert!(matches!(decrypt(b"", &key()), Err(FormatError::NotMesbak)));
    let mut file = encrypt(b"hello", FAST);
    file[8] = 3;
    let err = decrypt(&file, &key()).unwrap_err();
    assert!(matches!(err, FormatError::UnsupportedVersion(3)), "{err:?}");
    assert!(err.to_string().contains("version 3"));
}

#[test]
fn verify_reports_the_plaintext_length() {
    let file = encrypt(&payload(12345), FAST);
    assert_eq!(verify(&file[..], &key()).unwrap(), 12345);
}

fn header(file: &[u8]) -> Header {
    Header::read_from(&mut &file[..]).unwrap().0
}

#[test]
fn mesbak_writes_version_2() {
    let file = encrypt(b"hello", FAST);
    let header = header(&file);
    assert_eq!(header.version(), 2);
    assert_eq!(header.encoded_len(), HEADER_LEN_V2);
    assert_eq!(file[8..10], [2, 2]);
    assert_eq!(file.len(), HEADER_LEN_V2 + 5 + TAG_LEN);
}

#[test]
fn files_written_with_one_key_share_the_key_salt_and_nothing_else() {
    let key = key();
    let data = payload(3000);
    let a = encrypt_with(&key, &data, FAST);
    // A clone writes with the same key salt, as the agent's threads do.
    let b = encrypt_with(&key.clone(), &data, FAST);
    let (
        Kdf::Pbkdf2Hkdf {
            key_salt: ka,
            file_salt: fa,
        },
        Kdf::Pbkdf2Hkdf {
            key_salt: kb,
            file_salt: fb,
        },
    ) = (header(&a).kdf, header(&b).kdf)
    else {
        panic!("not version 2 files");
    };
    assert_eq!(ka, kb);
    assert_ne!(fa, fb);
    // The same key check (it comes from the key salt alone)...
    assert_eq!(header(&a).key_check, header(&b).key_check);
    // ...but other AES keys: the same plaintext under the same nonces
    // encrypts differently, in every chunk.
    for i in 0..3 {
        let chunk = chunk_start(i)..chunk_start(i + 1).min(a.len());
        assert_ne!(a[chunk.clone()], b[chunk], "chunk {i}");
    }
    assert_eq!(decrypt(&a, &key).unwrap(), data);
    assert_eq!(decrypt(&b, &key).unwrap(), data);
    // Another Key (another process) draws its own key salt.
    let c = encrypt_with(
        &Key::from_secret(b"correct horse battery staple").unwrap(),
        &data,
        FAST,
    );
    let Kdf::Pbkdf2Hkdf { key_salt: kc, .. } = header(&c).kdf else {
        panic!("not a version 2 file");
    };
    assert_ne!(kc, ka);
}

#[test]
fn a_swapped_file_salt_fails_every_chunk() {
    // Another file's salt, the CRC fixed up: the header still parses and
    // the key check still matches, but the AES key and the AAD are not the
    // file's.
    let a = encrypt(&payload(2000), FAST);
    let b = encrypt(&payload(2000), FAST);
    let mut forged = a.clone();
    forged[30..46].copy_from_slice(&b[30..46]);
    let crc = crc32fast::hash(&forged[..67]);
    forged[67..71].copy_from_slice(&crc.to_be_bytes());
    let err = decrypt(&forged, &key()).unwrap_err();
    assert!(
        matches!(err, FormatError::CorruptChunk { index: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn every_version_2_header_byte_is_authenticated() {
    let file = encrypt(&payload(1500), FAST);
    for position in 0..HEADER_LEN_V2 {
        for mask in [0x01, 0x80] {
            let mut damaged = file.clone();
            damaged[position] ^= mask;
            assert!(
                decrypt(&damaged, &key()).is_err(),
                "flip {mask:#x} at {position} accepted"
            );
            // With the CRC fixed up, the key check or a chunk's tag fails.
            if (9..67).contains(&position) {
                let crc = crc32fast::hash(&damaged[..67]);
                damaged[67..71].copy_from_slice(&crc.to_be_bytes());
                let err = decrypt(&damaged, &key()).unwrap_err();
                assert!(
                    !matches!(err, FormatError::CorruptHeader("checksum mismatch")),
                    "flip {mask:#x} at {position}: {err:?}"
                );
            }
        }
    }
}

#[test]
fn wrong_key_is_reported_from_a_version_2_header_alone() {
    let key = key();
    let file = encrypt_with(&key, &payload(100), FAST);
    // A second file of the same key salt: the other key's master, once
    // derived, must not make the check pass either.
    let second = encrypt_with(&key, &payload(100), FAST);
    let other = Key::from_secret(b"another key").unwrap();
    for file in [&file, &second] {
        let err = Decryptor::new(&file[..HEADER_LEN_V2], &other)
            .err()
            .unwrap();
        assert!(matches!(err, FormatError::WrongKey), "{err:?}");
    }
}

#[test]
fn version_1_files_still_decrypt() {
    let chunk = FAST.chunk_size as usize;
    for len in [0, 1, chunk, 3 * chunk + 5] {
        let data = payload(len);
        let file = encrypt_v1(&data, FAST);
        assert_eq!(header(&file).version(), 1);
        assert_eq!(file[8..10], [1, 1]);
        let chunks = if len == 0 { 1 } else { len.div_ceil(chunk) };
        assert_eq!(file.len(), HEADER_LEN_V1 + len + chunks * TAG_LEN);
        assert_eq!(decrypt(&file, &key()).unwrap(), data, "length {len}");
        assert_eq!(verify(&file[..], &key()).unwrap(), len as u64);
    }
    let file = encrypt_v1(&payload(10), FAST);
    let other = Key::from_secret(b"another key").unwrap();
    let err = Decryptor::new(&file[..HEADER_LEN_V1], &other)
        .err()
        .unwrap();
    assert!(matches!(err, FormatError::WrongKey), "{err:?}");
}

#[test]
fn version_1_damage_is_still_detected_and_located() {
    let v1_chunk = |i: usize| HEADER_LEN_V1 + i * (FAST.chunk_size as usize + TAG_LEN);
    let file = encrypt_v1(&payload(3 * FAST.chunk_size as usize + 10), FAST);
    for position in 0..HEADER_LEN_V1 {
        let mut damaged = file.clone();
        damaged[position] ^= 0x10;
        assert!(decrypt(&damaged, &key()).is_err(), "flip at {position}");
    }
    let mut damaged = file.clone();
    damaged[v1_chunk(2) + 7] ^= 1;
    let err = decrypt(&damaged, &key()).unwrap_err();
    assert!(
        matches!(err, FormatError::CorruptChunk { index: 2, offset } if offset == v1_chunk(2) as u64),
        "{err:?}"
    );
    let err = decrypt(&file[..v1_chunk(3)], &key()).unwrap_err();
    assert!(
        matches!(err, FormatError::Truncated { offset } if offset == v1_chunk(3) as u64),
        "{err:?}"
    );
    let mut trailing = file.clone();
    trailing.push(0);
    assert!(decrypt(&trailing, &key()).is_err());
}

#[test]
fn two_hundred_files_with_default_options_cost_one_pbkdf2() {
    // 600,000 iterations are about a quarter of a CPU-second: two hundred
    // files with a PBKDF2 each would take 50 s to write and as long again
    // to read with a fresh Key. One per Key takes well under a second; the
    // bound leaves room for a loaded machine.
    let started = std::time::Instant::now();
    let writer_key = key();
    let files: Vec<_> = (0..200)
        .map(|i| {
            let mut writer = Encryptor::new(Vec::new(), &writer_key).unwrap();
            writer.write_all(format!("segment {i}").as_bytes()).unwrap();
            writer.finish().unwrap()
        })
        .collect();
    let reader_key = key();
    for (i, file) in files.iter().enumerate() {
        assert_eq!(
            decrypt(file, &reader_key).unwrap(),
            format!("segment {i}").as_bytes()
        );
    }
    let took = started.elapsed();
    assert!(took.as_secs_f64() < 10.0, "200 files took {took:?}");
}

fn key_file(contents: &[u8], mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("backup.key");
    std::fs::write(&path, contents).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    (dir, path)
}

#[test]
fn key_file_with_loose_mode_is_refused() {
    for mode in [0o644, 0o640, 0o604, 0o660, 0o700, 0o4600] {
        let (_dir, path) = key_file(b"secret\n", mode);
        let err = Key::from_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::LooseMode { .. }), "{mode:o}: {err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
    for mode in [0o600, 0o400] {
        let (_dir, path) = key_file(b"secret\n", mode);
        Key::from_file(&path).unwrap();
    }
}

#[test]
fn key_file_symlink_missing_and_empty_are_refused() {
    let (dir, path) = key_file(b"secret\n", 0o600);
    let link = dir.path().join("link.key");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(matches!(Key::from_file(&link), Err(KeyError::Symlink(_))));
    assert!(matches!(
        Key::from_file(&dir.path().join("nope")),
        Err(KeyError::Missing(_))
    ));
    let (_dir, empty) = key_file(b"\n", 0o600);
    assert!(matches!(Key::from_file(&empty), Err(KeyError::Empty)));
    assert!(matches!(
        Key::from_file(dir.path()),
        Err(KeyError::NotRegular(_)) | Err(KeyError::LooseMode { .. })
    ));
}

#[test]
fn key_file_and_environment_value_are_the_same_key() {
    let (_dir, path) = key_file(b"plant-secret\n", 0o600);
    let from_file = Key::from_file(&path).unwrap();
    let file = Encryptor::with_options(Vec::new(), &from_file, FAST)
        .unwrap()
        .finish()
        .unwrap();
    Decryptor::new(&file[..], &Key::from_secret(b"plant-secret").unwrap()).unwrap();
}

#[test]
fn generated_key_file_is_private_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.key");
    Key::generate_file(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let first = std::fs::read(&path).unwrap();
    assert!(matches!(
        Key::generate_file(&path),
        Err(KeyError::AlreadyExists(_))
    ));
    assert_eq!(std::fs::read(&path).unwrap(), first);
    Key::from_file(&path).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_length_and_chunk_size_round_trips(
        len in 0usize..20_000,
        chunk_size in 1u32..5000,
        seed in any::<u8>(),
    ) {
        let data: Vec<u8> = payload(len).into_iter().map(|b| b ^ seed).collect();
        let options = EncryptOptions { chunk_size, kdf_iterations: 1 };
        let file = encrypt(&data, options);
        prop_assert_eq!(file.len(), sealed_len(len, chunk_size as usize));
        prop_assert_eq!(&decrypt(&file, &key()).unwrap(), &data);
        let file = encrypt_v1(&data, options);
        prop_assert_eq!(file.len(), sealed_len(len, chunk_size as usize) - HEADER_LEN_V2 + HEADER_LEN_V1);
        prop_assert_eq!(decrypt(&file, &key()).unwrap(), data);
    }

    #[test]
    fn any_single_byte_change_is_detected(
        len in 1usize..6000,
        flip_at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let options = EncryptOptions { chunk_size: 1000, kdf_iterations: 1 };
        let mut file = encrypt(&payload(len), options);
        let at = flip_at.index(file.len());
        file[at] ^= mask;
        prop_assert!(decrypt(&file, &key()).is_err());
    }

    #[test]
    fn any_truncation_is_detected(len in 1usize..6000, cut in any::<prop::sample::Index>()) {
        let options = EncryptOptions { chunk_size: 1000, kdf_iterations: 1 };
        let file = encrypt(&payload(len), options);
        let keep = cut.index(file.len());
        prop_assert!(decrypt(&file[..keep], &key()).is_err());
    }
}
