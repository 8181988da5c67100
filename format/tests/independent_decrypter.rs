//! Holds the Rust writer to FORMAT.md: files written by `Encryptor` must be
//! decrypted byte for byte by `tests/tools/decrypt.py`, an independent Python
//! implementation written from FORMAT.md alone, and damaged files must be
//! rejected by it.
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

use mesbak_format::{EncryptOptions, Encryptor, HEADER_LEN, Key, TAG_LEN};

const PYTHON: &str = "/usr/bin/python3";
const SECRET: &[u8] = b"plant key: 0xMES, with spaces inside\n";

/// Small chunks and cheap key stretching, so many chunk boundaries are
/// crossed quickly. One test below uses the defaults.
const SMALL: EncryptOptions = EncryptOptions {
    chunk_size: 4096,
    kdf_iterations: 1000,
};

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
        let path = self.path(name);
        let key = Key::from_file(&self.key_file).unwrap();
        let file = BufWriter::new(File::create(&path).unwrap());
        let mut writer = Encryptor::with_options(file, &key, options).unwrap();
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

fn chunk_start(index: usize, options: EncryptOptions) -> usize {
    HEADER_LEN + index * (options.chunk_size as usize + TAG_LEN)
}

#[test]
fn python_decrypts_edge_sizes_byte_for_byte() {
    let fixture = Fixture::new();
    let chunk = SMALL.chunk_size as usize;
    for len in [0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk, 3_000_000 + 17] {
        let data = payload(len);
        let file = fixture.encrypt(&format!("edge-{len}.enc"), &data, SMALL);
        fixture.assert_decrypts(&file, &data);
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
fn python_takes_the_key_from_the_environment_and_streams_stdin_to_stdout() {
    let fixture = Fixture::new();
    let data = payload(3 * SMALL.chunk_size as usize + 99);
    let file = fixture.encrypt("env.enc", &data, SMALL);
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
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.stdout == data, "contents differ");
}

#[test]
fn python_rejects_a_flipped_byte_in_a_middle_chunk() {
    let fixture = Fixture::new();
    let file = fixture.encrypt(
        "flip.enc",
        &payload(10 * SMALL.chunk_size as usize + 5),
        SMALL,
    );
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[chunk_start(5, SMALL) + 1234] ^= 0x04;
    std::fs::write(&file, &bytes).unwrap();
    fixture.assert_rejects(&file, "damaged: chunk 5");
}

#[test]
fn python_rejects_truncated_files() {
    let fixture = Fixture::new();
    let file = fixture.encrypt(
        "whole.enc",
        &payload(6 * SMALL.chunk_size as usize + 5),
        SMALL,
    );
    let bytes = std::fs::read(&file).unwrap();
    // (cut, what the decrypter must say): at a chunk boundary the last chunk
    // present authenticates as non-final; inside a chunk its tag fails.
    let cuts = [
        (chunk_start(6, SMALL), "truncated"),
        (chunk_start(3, SMALL), "truncated"),
        (bytes.len() - 1, "damaged: chunk 6"),
        (chunk_start(2, SMALL) + 100, "damaged: chunk 2"),
        (HEADER_LEN, "truncated"),
        (HEADER_LEN - 1, "truncated"),
    ];
    for (cut, reason) in cuts {
        let path = fixture.path(&format!("cut-{cut}.enc"));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        fixture.assert_rejects(&path, reason);
    }
}

#[test]
fn python_rejects_a_wrong_key_before_writing_anything() {
    let fixture = Fixture::new();
    let file = fixture.encrypt("key.enc", &payload(50_000), SMALL);
    let other = fixture.path("other.key");
    std::fs::write(&other, b"another plant's key\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
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
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(!output.exists());
}

#[test]
fn python_rejects_trailing_data_reordered_chunks_and_foreign_files() {
    let fixture = Fixture::new();
    let options = SMALL;
    let data = payload(4 * options.chunk_size as usize);
    let file = fixture.encrypt("tamper.enc", &data, options);
    let bytes = std::fs::read(&file).unwrap();

    let mut trailing = bytes.clone();
    trailing.extend_from_slice(b"appended");
    let path = fixture.path("trailing.enc");
    std::fs::write(&path, &trailing).unwrap();
    fixture.assert_rejects(&path, "trailing data");

    let (one, two) = (chunk_start(1, options), chunk_start(2, options));
    let mut swapped = bytes[..one].to_vec();
    swapped.extend_from_slice(&bytes[two..chunk_start(3, options)]);
    swapped.extend_from_slice(&bytes[one..two]);
    swapped.extend_from_slice(&bytes[chunk_start(3, options)..]);
    assert_eq!(swapped.len(), bytes.len());
    let path = fixture.path("swapped.enc");
    std::fs::write(&path, &swapped).unwrap();
    fixture.assert_rejects(&path, "damaged: chunk 1");

    let mut damaged_header = bytes.clone();
    damaged_header[20] ^= 0x80;
    let path = fixture.path("header.enc");
    std::fs::write(&path, &damaged_header).unwrap();
    fixture.assert_rejects(&path, "damaged header");

    let path = fixture.path("plain.sql.gz");
    std::fs::write(&path, b"\x1f\x8b\x08\x00 not encrypted").unwrap();
    fixture.assert_rejects(&path, "not a mesbak backup file");
}
