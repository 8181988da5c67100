//! Holds the Rust writer to FORMAT.md: files written by `Encryptor` must be
//! decrypted byte for byte by `tests/tools/decrypt.py`, an independent Python
//! implementation written from FORMAT.md alone, and damaged files must be
//! rejected by it. Both format versions: 2, which mesbak writes, and 1,
//! which it wrote before and which stays readable.
//!
//! Needs `/usr/bin/python3` with the `cryptography` package (`dev/test`
//! installs `python3-cryptography`). Without them these tests fail: a format
//! nobody can decrypt without mesbak is the failure they exist to catch.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use mesbak_format::{EncryptOptions, Encryptor, HEADER_LEN_V1, HEADER_LEN_V2, Key, TAG_LEN};

const PYTHON: &str = "/usr/bin/python3";
const SECRET: &[u8] = b"plant key: 0xMES, with spaces inside\n";

/// Small chunks and cheap key stretching, so many chunk boundaries are
/// crossed quickly. One test below uses the defaults.
const SMALL: EncryptOptions = EncryptOptions {
    chunk_size: 4096,
    kdf_iterations: 1000,
};

/// The format version of a file the tests write.
#[derive(Debug, Clone, Copy)]
enum Version {
    V1,
    V2,
}

const VERSIONS: [Version; 2] = [Version::V1, Version::V2];

impl Version {
    fn header_len(self) -> usize {
        match self {
            Version::V1 => HEADER_LEN_V1,
            Version::V2 => HEADER_LEN_V2,
        }
    }

    fn writer(
        self,
        file: BufWriter<File>,
        key: &Key,
        options: EncryptOptions,
    ) -> Encryptor<BufWriter<File>> {
        match self {
            Version::V1 => Encryptor::with_options_v1(file, key, options),
            Version::V2 => Encryptor::with_options(file, key, options),
        }
        .unwrap()
    }

    /// Offset of chunk `index` in a file written with `options`.
    fn chunk_start(self, index: usize, options: EncryptOptions) -> usize {
        self.header_len() + index * (options.chunk_size as usize + TAG_LEN)
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tools/decrypt.py")
}

/// Fails loudly, once, when the interpreter or its `cryptography` module is
/// missing.
fn require_python() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let output = Command::new(PYTHON)
            .args([
                "-c",
                "import cryptography; from cryptography.hazmat.primitives.ciphers.aead import AESGCM",
            ])
            .output()
            .map_err(|err| format!("cannot run {PYTHON}: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "{PYTHON} has no usable `cryptography` module: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        if !script().is_file() {
            return Err(format!("{} is missing", script().display()));
        }
        Ok(())
    });
    if let Err(why) = checked {
        panic!(
            "the independent decrypter cannot run: {why}; install python3 and python3-cryptography (dev/test does)"
        );
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    key_file: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        require_python();
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("backup.key");
        std::fs::write(&key_file, SECRET).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Fixture { dir, key_file }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Encrypts `data` into a new file, in uneven writes.
    fn encrypt(&self, name: &str, data: &[u8], options: EncryptOptions) -> PathBuf {
        self.encrypt_as(
            Version::V2,
            &Key::from_file(&self.key_file).unwrap(),
            name,
            data,
            options,
        )
    }

    fn encrypt_as(
        &self,
        version: Version,
        key: &Key,
        name: &str,
        data: &[u8],
        options: EncryptOptions,
    ) -> PathBuf {
        let path = self.path(&format!("{version:?}-{name}"));
        let file = BufWriter::new(File::create(&path).unwrap());
        let mut writer = version.writer(file, key, options);
        for piece in data.chunks(1000 + 3) {
            writer.write_all(piece).unwrap();
        }
        writer.finish().unwrap().flush().unwrap();
        path
    }

    /// Runs the Python decrypter with `--key-file` and no key in the
    /// environment.
    fn python_decrypt(&self, input: &Path, output: &Path) -> Output {
        Command::new(PYTHON)
            .arg(script())
            .arg("--key-file")
            .arg(&self.key_file)
            .arg(input)
            .arg(output)
            .env_remove("BACKUP_ENCRYPTION_KEY")
            .output()
            .unwrap()
    }

    /// Asserts the Python decrypter turns `input` back into `expected`.
    fn assert_decrypts(&self, input: &Path, expected: &[u8]) {
        let output = input.with_extension("out");
        let run = self.python_decrypt(input, &output);
        assert!(
            run.status.success(),
            "decrypt.py failed on {} ({} payload bytes): {}",
            input.display(),
            expected.len(),
            String::from_utf8_lossy(&run.stderr)
        );
        let decrypted = std::fs::read(&output).unwrap();
        assert_eq!(decrypted.len(), expected.len(), "{}", input.display());
        assert!(
            decrypted == expected,
            "{}: contents differ",
            input.display()
        );
    }

    /// Asserts the Python decrypter refuses `input` with a message containing
    /// `reason`, and leaves no output behind.
    fn assert_rejects(&self, input: &Path, reason: &str) {
        let output = input.with_extension("out");
        let run = self.python_decrypt(input, &output);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success(),
            "decrypt.py accepted {} (expected: {reason})",
            input.display()
        );
        assert!(
            stderr.contains(reason),
            "decrypt.py rejected {} but said {stderr:?}, expected {reason:?}",
            input.display()
        );
        assert!(
            !output.exists(),
            "a rejected file left {}",
            output.display()
        );
        let leftovers: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".part"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}

/// Deterministic bytes that are not a repeating pattern at any chunk size.
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ len as u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn python_decrypts_edge_sizes_byte_for_byte() {
    let fixture = Fixture::new();
    let key = Key::from_file(&fixture.key_file).unwrap();
    let chunk = SMALL.chunk_size as usize;
    for version in VERSIONS {
        for len in [0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk, 3_000_000 + 17] {
            let data = payload(len);
            let file = fixture.encrypt_as(version, &key, &format!("edge-{len}.enc"), &data, SMALL);
            fixture.assert_decrypts(&file, &data);
        }
    }
}

#[test]
fn python_decrypts_a_file_written_with_default_options() {
    let fixture = Fixture::new();
    let data = payload(2 * mesbak_format::DEFAULT_CHUNK_SIZE as usize + 12_345);
    let file = fixture.encrypt("default.enc", &data, EncryptOptions::default());
    fixture.assert_decrypts(&file, &data);
    // Exactly one default chunk: the final chunk is a full one.
    let data = payload(mesbak_format::DEFAULT_CHUNK_SIZE as usize);
    let file = fixture.encrypt("default-one-chunk.enc", &data, EncryptOptions::default());
    fixture.assert_decrypts(&file, &data);
}

#[test]
fn python_decrypts_many_files_of_one_key_salt_and_of_several() {
    // What WAL shipping writes: one Key (one key salt) for many files, a
    // new Key (a new key salt) when the agent starts again.
    let fixture = Fixture::new();
    let first = Key::from_file(&fixture.key_file).unwrap();
    let second = Key::from_file(&fixture.key_file).unwrap();
    for (i, key) in [&first, &first, &first, &second, &second]
        .into_iter()
        .enumerate()
    {
        let data = payload(5000 + i);
        let file = fixture.encrypt_as(Version::V2, key, &format!("segment-{i}.enc"), &data, SMALL);
        fixture.assert_decrypts(&file, &data);
    }
    let salts: Vec<Vec<u8>> = (0..5)
        .map(|i| {
            std::fs::read(fixture.path(&format!("V2-segment-{i}.enc"))).unwrap()[14..46].to_vec()
        })
        .collect();
    assert!(salts[..3].iter().all(|s| s[..16] == salts[0][..16]));
    assert!(salts[3..].iter().all(|s| s[..16] == salts[3][..16]));
    assert_ne!(salts[0][..16], salts[3][..16]);
    for (i, a) in salts.iter().enumerate() {
        for b in &salts[i + 1..] {
            assert_ne!(a[16..], b[16..], "two files with one file salt");
        }
    }
}

#[test]
fn python_takes_the_key_from_the_environment_and_streams_stdin_to_stdout() {
    let fixture = Fixture::new();
    let key = Key::from_file(&fixture.key_file).unwrap();
    for version in VERSIONS {
        let data = payload(3 * SMALL.chunk_size as usize + 99);
        let file = fixture.encrypt_as(version, &key, "env.enc", &data, SMALL);
        let run = Command::new(PYTHON)
            .arg(script())
            .args(["-", "-"])
            .env(
                "BACKUP_ENCRYPTION_KEY",
                // The same key without the trailing newline of the key file.
                std::str::from_utf8(SECRET).unwrap().trim_end(),
            )
            .stdin(File::open(&file).unwrap())
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{version:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(run.stdout == data, "{version:?}: contents differ");
    }
}

#[test]
fn python_rejects_a_flipped_byte_in_a_middle_chunk() {
    let fixture = Fixture::new();
    let key = Key::from_file(&fixture.key_file).unwrap();
    for version in VERSIONS {
        let data = payload(10 * SMALL.chunk_size as usize + 5);
        let file = fixture.encrypt_as(version, &key, "flip.enc", &data, SMALL);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[version.chunk_start(5, SMALL) + 1234] ^= 0x04;
        std::fs::write(&file, &bytes).unwrap();
        fixture.assert_rejects(
            &file,
            &format!(
                "damaged: chunk 5 (byte offset {})",
                version.chunk_start(5, SMALL)
            ),
        );
    }
}

#[test]
fn python_rejects_truncated_files() {
    let fixture = Fixture::new();
    let key = Key::from_file(&fixture.key_file).unwrap();
    for version in VERSIONS {
        let file = fixture.encrypt_as(
            version,
            &key,
            "whole.enc",
            &payload(6 * SMALL.chunk_size as usize + 5),
            SMALL,
        );
        let bytes = std::fs::read(&file).unwrap();
        let start = |i| version.chunk_start(i, SMALL);
        let header_len = version.header_len();
        // (cut, what the decrypter must say): at a chunk boundary the last chunk
        // present authenticates as non-final; inside a chunk its tag fails.
        let cuts = [
            (start(6), "truncated"),
            (start(3), "truncated"),
            (bytes.len() - 1, "damaged: chunk 6"),
            (start(2) + 100, "damaged: chunk 2"),
            (header_len, "truncated"),
            (header_len - 1, "truncated"),
            (9, "truncated"),
            (8, "truncated"),
        ];
        for (cut, reason) in cuts {
            let path = fixture.path(&format!("{version:?}-cut-{cut}.enc"));
            std::fs::write(&path, &bytes[..cut]).unwrap();
            fixture.assert_rejects(&path, reason);
        }
    }
}

#[test]
fn python_rejects_a_wrong_key_before_writing_anything() {
    let fixture = Fixture::new();
    let key = Key::from_file(&fixture.key_file).unwrap();
    let other = fixture.path("other.key");
    std::fs::write(&other, b"another plant's key\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    for version in VERSIONS {
        let file = fixture.encrypt_as(version, &key, "key.enc", &payload(50_000), SMALL);
        let output = fixture.path("key.out");
        let run = Command::new(PYTHON)
            .arg(script())
            .arg("--key-file")
            .arg(&other)
            .arg(&file)
            .arg(&output)
            .env_remove("BACKUP_ENCRYPTION_KEY")
            .output()
            .unwrap();
        assert!(!run.status.success());
        assert!(
            String::from_utf8_lossy(&run.stderr).contains("wrong key"),
            "{version:?}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(!output.exists());
    }
}

#[test]
fn python_rejects_trailing_data_reordered_chunks_and_foreign_files() {
    let fixture = Fixture::new();
    let key = Key::from_file(&fixture.key_file).unwrap();
    let options = SMALL;
    for version in VERSIONS {
        let start = |i| version.chunk_start(i, options);
        let data = payload(4 * options.chunk_size as usize);
        let file = fixture.encrypt_as(version, &key, "tamper.enc", &data, options);
        let bytes = std::fs::read(&file).unwrap();

        let mut trailing = bytes.clone();
        trailing.extend_from_slice(b"appended");
        let path = fixture.path(&format!("{version:?}-trailing.enc"));
        std::fs::write(&path, &trailing).unwrap();
        fixture.assert_rejects(&path, "trailing data");

        let mut swapped = bytes[..start(1)].to_vec();
        swapped.extend_from_slice(&bytes[start(2)..start(3)]);
        swapped.extend_from_slice(&bytes[start(1)..start(2)]);
        swapped.extend_from_slice(&bytes[start(3)..]);
        assert_eq!(swapped.len(), bytes.len());
        let path = fixture.path(&format!("{version:?}-swapped.enc"));
        std::fs::write(&path, &swapped).unwrap();
        fixture.assert_rejects(&path, "damaged: chunk 1");

        // A flipped byte in each salt: the CRC says so; with the CRC fixed
        // up, the key check (key salt) or the first chunk (file salt) does.
        let crc_at = version.header_len() - 4;
        for (at, fixed_reason) in [(20, "wrong key"), (40, "damaged: chunk 0")] {
            if at >= crc_at {
                continue;
            }
            let mut damaged_header = bytes.clone();
            damaged_header[at] ^= 0x80;
            let path = fixture.path(&format!("{version:?}-header-{at}.enc"));
            std::fs::write(&path, &damaged_header).unwrap();
            fixture.assert_rejects(&path, "damaged header");
            let crc = crc32fast::hash(&damaged_header[..crc_at]);
            damaged_header[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
            std::fs::write(&path, &damaged_header).unwrap();
            let reason = match (version, at) {
                // Version 1's byte 40 is in the key check.
                (Version::V1, 40) => "wrong key",
                _ => fixed_reason,
            };
            fixture.assert_rejects(&path, reason);
        }

        // Another version's number on this header: the length, the CRC's
        // range and the KDF id no longer fit.
        let mut relabelled = bytes.clone();
        relabelled[8] = match version {
            Version::V1 => 2,
            Version::V2 => 1,
        };
        let path = fixture.path(&format!("{version:?}-relabelled.enc"));
        std::fs::write(&path, &relabelled).unwrap();
        fixture.assert_rejects(&path, "damaged header");

        let mut future = bytes.clone();
        future[8] = 3;
        let path = fixture.path(&format!("{version:?}-future.enc"));
        std::fs::write(&path, &future).unwrap();
        fixture.assert_rejects(&path, "unsupported format version 3");
    }

    let path = fixture.path("plain.sql.gz");
    std::fs::write(&path, b"\x1f\x8b\x08\x00 not encrypted").unwrap();
    fixture.assert_rejects(&path, "not a mesbak backup file");
}

/// The worked examples of FORMAT.md 6, taken from the document itself (its
/// hex blocks, in order) with the payloads the text gives: the Rust reader
/// and the Python decrypter both turn them back into those payloads.
#[test]
fn the_documents_worked_examples_decrypt() {
    let fixture = Fixture::new();
    let expected: [(u8, &[u8]); 6] = [
        (2, b"hello\n"),
        (2, b"hello, mesbak\n"),
        (2, b""),
        (1, b"hello\n"),
        (1, b"hello, mesbak\n"),
        (1, b""),
    ];
    let document =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../FORMAT.md"))
            .unwrap();
    let examples = hex_blocks(&document);
    assert_eq!(examples.len(), expected.len(), "hex blocks in FORMAT.md");
    let key = Key::from_secret(b"correct horse battery staple\n").unwrap();
    let key_file = fixture.path("horse.key");
    std::fs::write(&key_file, b"correct horse battery staple\n").unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (i, (file, (version, payload))) in examples.iter().zip(expected).enumerate() {
        assert_eq!(file[8], version, "example {i}");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut mesbak_format::Decryptor::new(&file[..], &key).unwrap(),
            &mut plain,
        )
        .unwrap();
        assert_eq!(plain, payload, "example {i} in Rust");
        let input = fixture.path(&format!("example-{i}.enc"));
        std::fs::write(&input, file).unwrap();
        let output = fixture.path(&format!("example-{i}.out"));
        let run = Command::new(PYTHON)
            .arg(script())
            .arg("--key-file")
            .arg(&key_file)
            .arg(&input)
            .arg(&output)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "example {i}: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert_eq!(
            std::fs::read(&output).unwrap(),
            payload,
            "example {i} in Python"
        );
    }
}

/// The contents of the code blocks that hold only hex: dump lines
/// (`0010  b2 53 ...`) or lines of hex digits.
fn hex_blocks(document: &str) -> Vec<Vec<u8>> {
    let mut blocks = Vec::new();
    for block in document.split("```").skip(1).step_by(2) {
        let mut hex = String::new();
        let mut only_hex = !block.trim().is_empty();
        for line in block.lines().filter(|line| !line.trim().is_empty()) {
            let digits = match line.split_once("  ") {
                Some((offset, bytes)) if offset.len() == 4 => bytes.replace(' ', ""),
                _ => line.trim().to_owned(),
            };
            only_hex &= digits.bytes().all(|b| b.is_ascii_hexdigit());
            hex.push_str(&digits);
        }
        if only_hex {
            blocks.push(hex::decode(&hex).expect("an even number of hex digits"));
        }
    }
    blocks
}
