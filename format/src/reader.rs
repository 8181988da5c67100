use std::io::{self, Read};

use openssl::symm::{Cipher, Crypter, Mode};
use zeroize::Zeroizing;

use crate::header::{Header, read_full};
use crate::{FormatError, Key, TAG_LEN, chunk_nonce};

/// Decrypts a backup file. The key is checked against the header before any
/// chunk is read, and each chunk's plaintext is released only after its tag
/// verified, so a reader never sees a byte that was not authenticated.
pub struct Decryptor<R: Read> {
    inner: R,
    header: Header,
    /// The header's exact bytes, the associated data of every chunk.
    header_bytes: Vec<u8>,
    cipher_key: Zeroizing<[u8; 32]>,
    chunk_size: usize,
    /// One sealed chunk plus one byte of look-ahead: a chunk is the last one
    /// exactly when no byte follows it.
    sealed: Vec<u8>,
    carried: usize,
    plaintext: Zeroizing<Vec<u8>>,
    plaintext_len: usize,
    position: usize,
    next_index: u64,
    /// File offset of the next chunk.
    offset: u64,
    finished: bool,
    /// Errors are sticky: once a chunk failed, every later read fails too.
    failure: Option<FormatErrorKind>,
}

/// A copy of a failure that can be handed out again on the next read.
#[derive(Clone, Copy)]
enum FormatErrorKind {
    Corrupt { index: u64, offset: u64 },
    Truncated { offset: u64 },
    Trailing { offset: u64 },
}

impl From<FormatErrorKind> for FormatError {
    fn from(kind: FormatErrorKind) -> FormatError {
        match kind {
            FormatErrorKind::Corrupt { index, offset } => {
                FormatError::CorruptChunk { index, offset }
            }
            FormatErrorKind::Truncated { offset } => FormatError::Truncated { offset },
            FormatErrorKind::Trailing { offset } => FormatError::TrailingData { offset },
        }
    }
}

impl<R: Read> Decryptor<R> {
    /// Reads the header and checks the key. A wrong key is reported here,
    /// before any data is read.
    pub fn new(mut inner: R, key: &Key) -> Result<Self, FormatError> {
        let (header, header_bytes) = Header::read_from(&mut inner)?;
        let derived = key.derive(&header.kdf, header.kdf_iterations);
        if !openssl::memcmp::eq(&derived.key_check, &header.key_check) {
            return Err(FormatError::WrongKey);
        }
        let chunk_size = header.chunk_size as usize;
        let offset = header_bytes.len() as u64;
        Ok(Decryptor {
            inner,
            header,
            header_bytes,
            cipher_key: derived.cipher_key,
            chunk_size,
            sealed: vec![0u8; chunk_size + TAG_LEN + 1],
            carried: 0,
            plaintext: Zeroizing::new(vec![0u8; chunk_size + Cipher::aes_256_gcm().block_size()]),
            plaintext_len: 0,
            position: 0,
            next_index: 0,
            offset,
            finished: false,
            failure: None,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Reads, authenticates and decrypts the next chunk into `plaintext`.
    fn next_chunk(&mut self) -> Result<(), FormatError> {
        let full = self.chunk_size + TAG_LEN;
        let read = read_full(&mut self.inner, &mut self.sealed[self.carried..])?;
        let available = self.carried + read;
        let last = available <= full;
        let body_len = available.min(full);
        let index = self.next_index;
        let offset = self.offset;
        if body_len < TAG_LEN {
            return Err(self.fail(FormatErrorKind::Truncated {
                offset: offset + body_len as u64,
            }));
        }
        match self.open(body_len, index, last) {
            Some(len) => self.plaintext_len = len,
            None => {
                // Tell truncation and appended data apart from damage: the
                // chunk authenticates under the other end-of-stream flag.
                let failure = match (last, self.open(body_len, index, !last)) {
                    (true, Some(_)) => FormatErrorKind::Truncated {
                        offset: offset + body_len as u64,
                    },
                    (false, Some(_)) => FormatErrorKind::Trailing {
                        offset: offset + body_len as u64,
                    },
                    (_, None) => FormatErrorKind::Corrupt { index, offset },
                };
                self.plaintext_len = 0;
                return Err(self.fail(failure));
            }
        }
        self.position = 0;
        self.next_index += 1;
        self.offset += body_len as u64;
        if last {
            self.finished = true;
            self.carried = 0;
        } else {
            self.sealed[0] = self.sealed[full];
            self.carried = 1;
        }
        Ok(())
    }

    /// Decrypts `sealed[..body_len]` into `plaintext`; `None` when the tag
    /// does not verify.
    fn open(&mut self, body_len: usize, index: u64, last: bool) -> Option<usize> {
        let nonce = chunk_nonce(index, last);
        let (ciphertext, tag) = self.sealed[..body_len].split_at(body_len - TAG_LEN);
        let mut crypter = Crypter::new(
            Cipher::aes_256_gcm(),
            Mode::Decrypt,
            &self.cipher_key[..],
            Some(&nonce),
        )
        .ok()?;
        crypter.aad_update(&self.header_bytes).ok()?;
        let mut len = crypter.update(ciphertext, &mut self.plaintext).ok()?;
        crypter.set_tag(tag).ok()?;
        len += crypter.finalize(&mut self.plaintext[len..]).ok()?;
        Some(len)
    }

    fn fail(&mut self, kind: FormatErrorKind) -> FormatError {
        self.failure = Some(kind);
        kind.into()
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(kind) = self.failure {
                return Err(FormatError::from(kind).into_io());
            }
            if self.position < self.plaintext_len {
                let n = buf.len().min(self.plaintext_len - self.position);
                buf[..n].copy_from_slice(&self.plaintext[self.position..self.position + n]);
                self.position += n;
                return Ok(n);
            }
            if self.finished {
                return Ok(0);
            }
            self.next_chunk().map_err(FormatError::into_io)?;
        }
    }
}

/// Authenticates a whole file without keeping any of it; returns the
/// plaintext length.
pub fn verify(reader: impl Read, key: &Key) -> Result<u64, FormatError> {
    let mut decryptor = Decryptor::new(reader, key)?;
    io::copy(&mut decryptor, &mut io::sink()).map_err(FormatError::from_io_owned)
}
