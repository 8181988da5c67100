//! The mesbak backup file format: a short authenticated header followed by the
//! payload in fixed-size chunks, each sealed with AES-256-GCM.
//!
//! `FORMAT.md` at the top of the repository is the normative description; this
//! crate is one implementation of it and `tests/tools/decrypt.py` another.
//!
//! Both directions stream in constant memory (one chunk), and [`Decryptor`]
//! never hands out plaintext before the tag of the chunk holding it verified.

mod error;
mod header;
mod key;
mod reader;
mod writer;

pub use error::FormatError;
pub use header::{
    CIPHER_AES_256_GCM, DEFAULT_CHUNK_SIZE, DEFAULT_KDF_ITERATIONS, HEADER_LEN_V1, HEADER_LEN_V2,
    Header, KDF_PBKDF2_HKDF_SHA256, KDF_PBKDF2_HMAC_SHA256, Kdf, MAGIC, MAX_CHUNK_SIZE,
    MAX_HEADER_LEN, MAX_KDF_ITERATIONS, SALT_LEN, TAG_LEN, VERSION, VERSION_1, VERSION_2,
    header_len,
};
pub use key::{ENV_KEY_VAR, Key, KeyError};
pub use reader::{Decryptor, verify};
pub use writer::{EncryptOptions, Encryptor};

/// The 12-byte AES-GCM nonce of chunk `index`: the index as a big-endian
/// 64-bit integer, three zero bytes, then 1 for the final chunk and 0 for any
/// other. Binding the position and the end marker into the nonce is what makes
/// reordered, removed and truncated chunks fail authentication.
pub fn chunk_nonce(index: u64, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..8].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}
