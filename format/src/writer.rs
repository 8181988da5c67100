use std::io::{self, Write};

use openssl::symm::{Cipher, Crypter, Mode};
use zeroize::Zeroizing;

use crate::header::{DEFAULT_CHUNK_SIZE, DEFAULT_KDF_ITERATIONS, Header, Kdf, SALT_LEN};
use crate::{FormatError, Key, TAG_LEN, chunk_nonce};

/// Tunables of a file being written. The defaults are what mesbak writes;
/// tests use fewer KDF iterations and small chunks to exercise edge cases.
#[derive(Debug, Clone, Copy)]
pub struct EncryptOptions {
    pub chunk_size: u32,
    pub kdf_iterations: u32,
}

impl Default for EncryptOptions {
    fn default() -> Self {
        EncryptOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            kdf_iterations: DEFAULT_KDF_ITERATIONS,
        }
    }
}

/// Encrypts everything written to it into `inner`. Call [`Encryptor::finish`]
/// at the end: it seals the final chunk, without which the file reads as
/// truncated.
pub struct Encryptor<W: Write> {
    inner: W,
    /// The header's bytes, the associated data of every chunk.
    header: Vec<u8>,
    cipher_key: Zeroizing<[u8; 32]>,
    plaintext: Zeroizing<Vec<u8>>,
    sealed: Vec<u8>,
    chunk_size: usize,
    next_index: u64,
}

impl<W: Write> Encryptor<W> {
    pub fn new(inner: W, key: &Key) -> Result<Self, FormatError> {
        Encryptor::with_options(inner, key, EncryptOptions::default())
    }

    /// Writes a format version 2 file: the key salt is `key`'s own (the
    /// same for every file it writes, so PBKDF2 runs once per `Key`), the
    /// file salt fresh from the random generator, so every file has its own
    /// AES key.
    pub fn with_options(inner: W, key: &Key, options: EncryptOptions) -> Result<Self, FormatError> {
        let key_salt = key.writer_key_salt()?;
        let kdf = Kdf::Pbkdf2Hkdf {
            key_salt,
            file_salt: random_salt()?,
        };
        Encryptor::with_kdf(inner, key, options, kdf)
    }

    /// Writes a format version 1 file (one PBKDF2 per file), which mesbak
    /// no longer writes; for tests that hold readers to old files.
    #[doc(hidden)]
    pub fn with_options_v1(
        inner: W,
        key: &Key,
        options: EncryptOptions,
    ) -> Result<Self, FormatError> {
        let kdf = Kdf::Pbkdf2 {
            salt: random_salt()?,
        };
        Encryptor::with_kdf(inner, key, options, kdf)
    }

    fn with_kdf(
        mut inner: W,
        key: &Key,
        options: EncryptOptions,
        kdf: Kdf,
    ) -> Result<Self, FormatError> {
        assert!(
            options.chunk_size > 0 && options.chunk_size <= crate::MAX_CHUNK_SIZE,
            "chunk size out of range"
        );
        assert!(
            options.kdf_iterations > 0,
            "KDF iterations must be positive"
        );
        let derived = key.derive(&kdf, options.kdf_iterations);
        let header = Header {
            kdf,
            kdf_iterations: options.kdf_iterations,
            chunk_size: options.chunk_size,
            key_check: derived.key_check,
        }
        .to_bytes();
        inner.write_all(&header)?;
        let chunk_size = options.chunk_size as usize;
        Ok(Encryptor {
            inner,
            header,
            cipher_key: derived.cipher_key,
            plaintext: Zeroizing::new(Vec::with_capacity(chunk_size)),
            sealed: vec![0u8; chunk_size + Cipher::aes_256_gcm().block_size() + TAG_LEN],
            chunk_size,
            next_index: 0,
        })
    }

    /// Seals the final chunk, flushes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_chunk(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// The inner writer, e.g. to fsync the file before [`Encryptor::finish`].
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let nonce = chunk_nonce(self.next_index, last);
        let mut crypter = Crypter::new(
            Cipher::aes_256_gcm(),
            Mode::Encrypt,
            &self.cipher_key[..],
            Some(&nonce),
        )
        .map_err(io::Error::other)?;
        crypter.aad_update(&self.header).map_err(io::Error::other)?;
        let mut len = crypter
            .update(&self.plaintext, &mut self.sealed)
            .map_err(io::Error::other)?;
        len += crypter
            .finalize(&mut self.sealed[len..])
            .map_err(io::Error::other)?;
        crypter
            .get_tag(&mut self.sealed[len..len + TAG_LEN])
            .map_err(io::Error::other)?;
        self.inner.write_all(&self.sealed[..len + TAG_LEN])?;
        self.plaintext.clear();
        self.next_index += 1;
        Ok(())
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            // A full chunk is sealed only once more data shows it is not the
            // last one; `finish` seals whatever is left as the last chunk.
            if self.plaintext.len() == self.chunk_size {
                self.seal_chunk(false)?;
            }
            let take = rest.len().min(self.chunk_size - self.plaintext.len());
            self.plaintext.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn random_salt() -> io::Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    openssl::rand::rand_bytes(&mut salt).map_err(io::Error::other)?;
    Ok(salt)
}
