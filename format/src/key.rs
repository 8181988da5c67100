//! The backup key: a secret string from a protected key file or from
//! `BACKUP_ENCRYPTION_KEY`. It is never printed; `Debug` shows a placeholder.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use nix::unistd::geteuid;
use zeroize::Zeroizing;

use crate::header::{KEY_CHECK_LEN, SALT_LEN};

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
#[derive(Clone)]
pub struct Key {
    material: Zeroizing<Vec<u8>>,
    /// Keys derived for files already opened with this key (and its
    /// clones), so reading a file twice (authenticate, then restore) pays
    /// for PBKDF2 once.
    derived: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<CachedDerivation>>>,
}

struct CachedDerivation {
    salt: [u8; SALT_LEN],
    iterations: u32,
    key: DerivedKey,
}

/// Derivations kept per key (about 80 bytes each): a restore reads its file
/// twice, a point-in-time restore every WAL segment twice (authenticated
/// first, then recovered), and each derivation costs a quarter of a
/// CPU-second. 16,384 covers eleven days of minute-by-minute segments.
const DERIVATION_CACHE: usize = 16_384;

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// What PBKDF2 derives from a key and a file's salt.
#[derive(Clone)]
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
            derived: Default::default(),
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

    pub(crate) fn derive(&self, salt: &[u8; SALT_LEN], iterations: u32) -> DerivedKey {
        let mut cache = self
            .derived
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(hit) = cache
            .iter()
            .find(|c| c.salt == *salt && c.iterations == iterations)
        {
            return hit.key.clone();
        }
        let key = self.derive_uncached(salt, iterations);
        if cache.len() == DERIVATION_CACHE {
            cache.pop_front();
        }
        cache.push_back(CachedDerivation {
            salt: *salt,
            iterations,
            key: key.clone(),
        });
        key
    }

    fn derive_uncached(&self, salt: &[u8; SALT_LEN], iterations: u32) -> DerivedKey {
        let mut output = Zeroizing::new([0u8; 32 + KEY_CHECK_LEN]);
        openssl::pkcs5::pbkdf2_hmac(
            &self.material,
            salt,
            iterations as usize,
            openssl::hash::MessageDigest::sha256(),
            &mut output[..],
        )
        .expect("PBKDF2 with SHA-256 is always available");
        let mut cipher_key = Zeroizing::new([0u8; 32]);
        cipher_key.copy_from_slice(&output[..32]);
        DerivedKey {
            cipher_key,
            key_check: output[32..].try_into().expect("16 bytes"),
        }
    }
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
}
