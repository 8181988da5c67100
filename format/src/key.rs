//! The backup key: a secret string from a protected key file or from
//! `BACKUP_ENCRYPTION_KEY`. It is never printed; `Debug` shows a placeholder.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;
use nix::unistd::geteuid;
use openssl::md::Md;
use openssl::pkey::Id;
use openssl::pkey_ctx::PkeyCtx;
use zeroize::Zeroizing;

use crate::header::{KEY_CHECK_LEN, Kdf, SALT_LEN};

/// Environment variable the seed stack's `.env` uses for the key.
pub const ENV_KEY_VAR: &str = "BACKUP_ENCRYPTION_KEY";
/// Larger key files are certainly not key files.
const MAX_KEY_FILE_LEN: u64 = 4096;
/// Random bytes in a key made by `mesbakctl keygen`.
const GENERATED_KEY_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path} does not exist (nor is {ENV_KEY_VAR} set)", path = .0.display())]
    Missing(PathBuf),
    #[error("key file {path} is a symbolic link; point the configuration at the real file", path = .0.display())]
    Symlink(PathBuf),
    #[error("key file {path} is not a regular file; point the configuration at the key file itself", path = .0.display())]
    NotRegular(PathBuf),
    #[error("key file {path} is owned by uid {owner}; it must be owned by root: run `chown root:root {path}`", path = .path.display())]
    WrongOwner { path: PathBuf, owner: u32 },
    #[error("key file {path} has mode {mode:04o}; it must be readable by its owner only: run `chmod 600 {path}`", path = .path.display())]
    LooseMode { path: PathBuf, mode: u32 },
    #[error("key file {path} is larger than {MAX_KEY_FILE_LEN} bytes, so it is not a key file; check the path", path = .0.display())]
    TooLarge(PathBuf),
    #[error("the key is empty; put the key in the key file or in {ENV_KEY_VAR}")]
    Empty,
    #[error("{path} already exists; refusing to overwrite a key (backups made with it would become unreadable)", path = .0.display())]
    AlreadyExists(PathBuf),
    #[error("cannot read key file {path}: {source}", path = .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}", path = .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The secret key material. Trailing whitespace (the newline editors add) is
/// not part of the key.
///
/// Clones share the key salt of the files they write and the PBKDF2
/// results already computed, so a process that keeps one `Key` pays for
/// PBKDF2 once per key salt, not once per file.
#[derive(Clone)]
pub struct Key {
    material: Zeroizing<Vec<u8>>,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The key salt of every version 2 file written with this key (and its
    /// clones), drawn when the first one is written.
    key_salt: Mutex<Option<[u8; SALT_LEN]>>,
    /// PBKDF2 outputs already computed, so writing many files, and reading
    /// a file twice (authenticate, then restore), costs one PBKDF2 per
    /// salt.
    stretched: Mutex<StretchCache>,
    /// PBKDF2 computations actually run, for the tests.
    #[cfg(test)]
    pbkdf2_runs: std::sync::atomic::AtomicUsize,
}

/// PBKDF2 outputs by (salt, iterations): a version 2 file's entry is its
/// key salt's master key, shared by every file written with that salt (a
/// handful of entries: one per writer process); a version 1 file's entry is
/// its own AES key, one entry per file.
///
/// The bound stays at 16,384 for the version 1 files: segments shipped
/// before the upgrade are restored for as long as they are kept, a
/// point-in-time restore reads every one twice (authenticated first, then
/// recovered) and each derivation costs a quarter of a CPU-second; 16,384
/// covers eleven days of minute-by-minute segments. That many entries
/// (about 150 bytes each, 2.5 MB at most) are found through a hash map,
/// not by a search through all of them; the queue beside it says which to
/// drop first (the oldest inserted).
#[derive(Default)]
struct StretchCache {
    entries: HashMap<StretchInput, Arc<OnceLock<Stretched>>>,
    order: VecDeque<StretchInput>,
}

type StretchInput = ([u8; SALT_LEN], u32);

const STRETCH_CACHE: usize = 16_384;

/// What PBKDF2 (48 bytes) gives: 32 bytes of key (version 1: the AES key;
/// version 2: the master key) and the key check.
#[derive(Clone)]
struct Stretched {
    key: Zeroizing<[u8; 32]>,
    key_check: [u8; KEY_CHECK_LEN],
}

/// HKDF's `info` for a version 2 file key (FORMAT.md 3).
const FILE_KEY_INFO: &[u8] = b"mesbak v2 file key";

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// A file's AES key and the key check its header carries.
pub(crate) struct DerivedKey {
    pub cipher_key: Zeroizing<[u8; 32]>,
    pub key_check: [u8; KEY_CHECK_LEN],
}

impl Key {
    pub fn from_secret(secret: &[u8]) -> Result<Key, KeyError> {
        let end = secret
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |last| last + 1);
        if end == 0 {
            return Err(KeyError::Empty);
        }
        Ok(Key {
            material: Zeroizing::new(secret[..end].to_vec()),
            shared: Default::default(),
        })
    }

    /// The key in `BACKUP_ENCRYPTION_KEY`, if that variable is set.
    pub fn from_env() -> Option<Result<Key, KeyError>> {
        let value = std::env::var_os(ENV_KEY_VAR)?;
        Some(Key::from_secret(std::os::unix::ffi::OsStrExt::as_bytes(
            value.as_os_str(),
        )))
    }

    /// Reads a key file, refusing symlinks, non-regular files, files not
    /// owned by root (or by the user running this program) and files any
    /// other user could read or write.
    pub fn from_file(path: &Path) -> Result<Key, KeyError> {
        let mut file = File::options()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| match source.raw_os_error() {
                Some(nix::libc::ELOOP) => KeyError::Symlink(path.to_owned()),
                _ if source.kind() == std::io::ErrorKind::NotFound => {
                    KeyError::Missing(path.to_owned())
                }
                _ => KeyError::Read {
                    path: path.to_owned(),
                    source,
                },
            })?;
        let meta = file.metadata().map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(KeyError::NotRegular(path.to_owned()));
        }
        if meta.uid() != 0 && meta.uid() != geteuid().as_raw() {
            return Err(KeyError::WrongOwner {
                path: path.to_owned(),
                owner: meta.uid(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o7177 != 0 {
            return Err(KeyError::LooseMode {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::TooLarge(path.to_owned()));
        }
        let mut secret = Zeroizing::new(Vec::new());
        file.read_to_end(&mut secret)
            .map_err(|source| KeyError::Read {
                path: path.to_owned(),
                source,
            })?;
        Key::from_secret(&secret)
    }

    /// A new random key as the text a key file holds: 32 random bytes in
    /// base64, then a newline.
    pub fn generate_text() -> Zeroizing<String> {
        let mut random = Zeroizing::new([0u8; GENERATED_KEY_BYTES]);
        openssl::rand::rand_bytes(&mut random[..]).expect("the system random generator works");
        let mut text =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&random[..]));
        text.push('\n');
        text
    }

    /// Creates `path` with a new random key, mode 0600, never overwriting
    /// and never following a symlink.
    pub fn generate_file(path: &Path) -> Result<(), KeyError> {
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    KeyError::AlreadyExists(path.to_owned())
                } else {
                    KeyError::Write {
                        path: path.to_owned(),
                        source,
                    }
                }
            })?;
        let write = |file: &mut File| -> std::io::Result<()> {
            // The umask may have narrowed the mode; never widened it, but make
            // it exact.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            file.write_all(Key::generate_text().as_bytes())?;
            file.sync_all()
        };
        write(&mut file).map_err(|source| {
            let _ = std::fs::remove_file(path);
            KeyError::Write {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// Whether `other` holds the same key text. A caller that reads the
    /// key again (to notice a changed key file) keeps using its earlier
    /// `Key` when it is the same, and so its key salt and derivations.
    pub fn same_secret(&self, other: &Key) -> bool {
        self.material.len() == other.material.len()
            && openssl::memcmp::eq(&self.material, &other.material)
    }

    /// The key salt of the version 2 files this key writes: drawn at random
    /// the first time, the same for every later file (and every clone).
    pub(crate) fn writer_key_salt(&self) -> std::io::Result<[u8; SALT_LEN]> {
        let mut slot = self
            .shared
            .key_salt
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(salt) = *slot {
            return Ok(salt);
        }
        let mut salt = [0u8; SALT_LEN];
        openssl::rand::rand_bytes(&mut salt).map_err(std::io::Error::other)?;
        *slot = Some(salt);
        Ok(salt)
    }

    /// The AES key of a file whose header says `kdf` and `iterations`, and
    /// the key check that header must carry for this key.
    pub(crate) fn derive(&self, kdf: &Kdf, iterations: u32) -> DerivedKey {
        match kdf {
            Kdf::Pbkdf2 { salt } => {
                let stretched = self.stretch(salt, iterations);
                DerivedKey {
                    cipher_key: stretched.key,
                    key_check: stretched.key_check,
                }
            }
            Kdf::Pbkdf2Hkdf {
                key_salt,
                file_salt,
            } => {
                let master = self.stretch(key_salt, iterations);
                DerivedKey {
                    cipher_key: hkdf_sha256(&master.key[..], file_salt, FILE_KEY_INFO),
                    key_check: master.key_check,
                }
            }
        }
    }

    /// PBKDF2 of this key over `salt`, from the cache when it was computed
    /// before. The lock is held only to find or add the entry: different
    /// salts are stretched at the same time on different threads (a restore
    /// authenticates version 1 files side by side), while threads wanting
    /// the same salt wait for the one computing it instead of repeating it.
    fn stretch(&self, salt: &[u8; SALT_LEN], iterations: u32) -> Stretched {
        let cell = {
            let mut cache = self
                .shared
                .stretched
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let input = (*salt, iterations);
            match cache.entries.get(&input) {
                Some(cell) => cell.clone(),
                None => {
                    if cache.order.len() == STRETCH_CACHE {
                        let oldest = cache.order.pop_front().expect("a full queue");
                        cache.entries.remove(&oldest);
                    }
                    let cell = Arc::new(OnceLock::new());
                    cache.entries.insert(input, cell.clone());
                    cache.order.push_back(input);
                    cell
                }
            }
        };
        cell.get_or_init(|| self.pbkdf2(salt, iterations)).clone()
    }

    fn pbkdf2(&self, salt: &[u8; SALT_LEN], iterations: u32) -> Stretched {
        #[cfg(test)]
        self.shared
            .pbkdf2_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut output = Zeroizing::new([0u8; 32 + KEY_CHECK_LEN]);
        openssl::pkcs5::pbkdf2_hmac(
            &self.material,
            salt,
            iterations as usize,
            openssl::hash::MessageDigest::sha256(),
            &mut output[..],
        )
        .expect("PBKDF2 with SHA-256 is always available");
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&output[..32]);
        Stretched {
            key,
            key_check: output[32..].try_into().expect("16 bytes"),
        }
    }

    /// PBKDF2 computations run by this key and its clones so far.
    #[cfg(test)]
    pub(crate) fn pbkdf2_runs(&self) -> usize {
        self.shared
            .pbkdf2_runs
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// HKDF-SHA256 (RFC 5869, extract then expand) with a 32-byte output.
fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut okm = Zeroizing::new([0u8; 32]);
    let derive = |okm: &mut [u8]| -> Result<usize, openssl::error::ErrorStack> {
        let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
        ctx.derive_init()?;
        ctx.set_hkdf_md(Md::sha256())?;
        ctx.set_hkdf_key(ikm)?;
        ctx.set_hkdf_salt(salt)?;
        ctx.add_hkdf_info(info)?;
        ctx.derive(Some(okm))
    };
    let len = derive(&mut okm[..]).expect("HKDF with SHA-256 is always available");
    assert_eq!(len, 32, "HKDF gave {len} bytes, not 32");
    okm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_whitespace_is_not_part_of_the_key() {
        let a = Key::from_secret(b"secret\n").unwrap();
        let b = Key::from_secret(b"secret").unwrap();
        assert_eq!(*a.material, *b.material);
        assert!(matches!(Key::from_secret(b" \n"), Err(KeyError::Empty)));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = Key::from_secret(b"hunter2").unwrap();
        assert!(!format!("{key:?}").contains("hunter2"));
    }

    #[test]
    fn generated_text_is_base64_of_32_bytes() {
        let text = Key::generate_text();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(text.trim_end())
            .unwrap();
        assert_eq!(decoded.len(), 32);
    }

    #[test]
    fn hkdf_matches_rfc_5869() {
        // RFC 5869 A.1; HKDF-Expand's first 32 bytes do not depend on L.
        let okm = hkdf_sha256(
            &[0x0b; 22],
            &hex::decode("000102030405060708090a0b0c").unwrap(),
            &hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap(),
        );
        assert_eq!(
            hex::encode(&okm[..]),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
        );
    }

    fn options() -> crate::EncryptOptions {
        crate::EncryptOptions {
            chunk_size: 64,
            kdf_iterations: 1000,
        }
    }

    fn write(key: &Key, v1: bool) -> Vec<u8> {
        use std::io::Write;
        let mut writer = if v1 {
            crate::Encryptor::with_options_v1(Vec::new(), key, options())
        } else {
            crate::Encryptor::with_options(Vec::new(), key, options())
        }
        .unwrap();
        writer.write_all(b"a small file").unwrap();
        writer.finish().unwrap()
    }

    #[test]
    fn one_key_runs_pbkdf2_once_for_many_version_2_files() {
        let key = Key::from_secret(b"shipping key").unwrap();
        let files: Vec<_> = (0..200).map(|_| write(&key.clone(), false)).collect();
        assert_eq!(key.pbkdf2_runs(), 1);
        // A restore in another process: its own Key, one PBKDF2 for them all.
        let reader = Key::from_secret(b"shipping key").unwrap();
        for file in &files {
            assert_eq!(crate::verify(&file[..], &reader).unwrap(), 12);
        }
        assert_eq!(reader.pbkdf2_runs(), 1);
        // Other iterations: another master key under the same key salt.
        let mut other = options();
        other.kdf_iterations = 999;
        let file = crate::Encryptor::with_options(Vec::new(), &key, other)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(key.pbkdf2_runs(), 2);
        assert_eq!(file[14..30], files[0][14..30]);
    }

    #[test]
    fn version_1_files_run_pbkdf2_once_each_and_are_cached() {
        let key = Key::from_secret(b"old key").unwrap();
        let files: Vec<_> = (0..20).map(|_| write(&key, true)).collect();
        assert_eq!(key.pbkdf2_runs(), 20);
        let reader = Key::from_secret(b"old key").unwrap();
        for _ in 0..2 {
            for file in &files {
                crate::verify(&file[..], &reader).unwrap();
            }
        }
        assert_eq!(reader.pbkdf2_runs(), 20);
    }

    #[test]
    fn clones_share_the_key_salt_and_other_keys_draw_their_own() {
        let key = Key::from_secret(b"k").unwrap();
        let salt = key.clone().writer_key_salt().unwrap();
        assert_eq!(key.writer_key_salt().unwrap(), salt);
        let again = Key::from_secret(b"k").unwrap();
        assert_ne!(again.writer_key_salt().unwrap(), salt);
    }

    #[test]
    fn threads_wanting_one_salt_wait_for_one_pbkdf2() {
        let key = Key::from_secret(b"parallel").unwrap();
        let kdf = Kdf::Pbkdf2 { salt: [3; 16] };
        let checks: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| key.derive(&kdf, 20_000).key_check))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(checks.windows(2).all(|pair| pair[0] == pair[1]));
        assert_eq!(key.pbkdf2_runs(), 1);
    }

    #[test]
    fn the_cache_is_bounded_and_drops_the_oldest_first() {
        let key = Key::from_secret(b"bounded").unwrap();
        let salt = |i: usize| {
            let mut salt = [0u8; 16];
            salt[..8].copy_from_slice(&(i as u64).to_be_bytes());
            Kdf::Pbkdf2 { salt }
        };
        for i in 0..STRETCH_CACHE + 10 {
            key.derive(&salt(i), 1);
        }
        {
            let cache = key.shared.stretched.lock().unwrap();
            assert_eq!(cache.entries.len(), STRETCH_CACHE);
            assert_eq!(cache.order.len(), STRETCH_CACHE);
        }
        let runs = key.pbkdf2_runs();
        key.derive(&salt(STRETCH_CACHE + 9), 1);
        assert_eq!(key.pbkdf2_runs(), runs, "the newest is kept");
        key.derive(&salt(0), 1);
        assert_eq!(key.pbkdf2_runs(), runs + 1, "the oldest was dropped");
    }

    #[test]
    fn same_secret_compares_the_trimmed_key_text() {
        let a = Key::from_secret(b"secret\n").unwrap();
        assert!(a.same_secret(&Key::from_secret(b"secret").unwrap()));
        assert!(!a.same_secret(&Key::from_secret(b"secret2").unwrap()));
        assert!(!a.same_secret(&Key::from_secret(b"secreT").unwrap()));
    }
}
