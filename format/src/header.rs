//! The fixed 55-byte header of format version 1. See FORMAT.md.

use std::io::Read;

use crate::FormatError;

/// First 8 bytes of every backup file. The high-bit first byte and the
/// newline catch 7-bit and newline-translating transfers, as in PNG.
pub const MAGIC: [u8; 8] = *b"\x89MESBAK\n";
pub const VERSION: u8 = 1;
pub const KDF_PBKDF2_HMAC_SHA256: u8 = 1;
pub const CIPHER_AES_256_GCM: u8 = 1;
pub const HEADER_LEN: usize = 55;
pub const TAG_LEN: usize = 16;
pub const SALT_LEN: usize = 16;
pub const KEY_CHECK_LEN: usize = 16;
/// Plaintext bytes per chunk written by default (1 MiB).
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Readers refuse larger chunks so a forged header cannot make them allocate
/// without bound.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
pub const DEFAULT_KDF_ITERATIONS: u32 = 600_000;
/// Readers refuse more iterations so a forged header cannot hang them.
pub const MAX_KDF_ITERATIONS: u32 = 100_000_000;

/// The parsed header. Its exact bytes are the associated data of every chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kdf_iterations: u32,
    pub salt: [u8; SALT_LEN],
    pub chunk_size: u32,
    /// Bytes 32..48 of the PBKDF2 output: proves the key before any data is read.
    pub key_check: [u8; KEY_CHECK_LEN],
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8] = VERSION;
        out[9] = KDF_PBKDF2_HMAC_SHA256;
        out[10..14].copy_from_slice(&self.kdf_iterations.to_be_bytes());
        out[14..30].copy_from_slice(&self.salt);
        out[30] = CIPHER_AES_256_GCM;
        out[31..35].copy_from_slice(&self.chunk_size.to_be_bytes());
        out[35..51].copy_from_slice(&self.key_check);
        let crc = crc32fast::hash(&out[..51]);
        out[51..55].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads and checks a header, returning it with its exact bytes.
    pub fn read_from(reader: &mut impl Read) -> Result<(Header, [u8; HEADER_LEN]), FormatError> {
        let mut bytes = [0u8; HEADER_LEN];
        let magic_len = read_full(reader, &mut bytes[..MAGIC.len()])?;
        if magic_len < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(FormatError::NotMesbak);
        }
        if read_full(reader, &mut bytes[8..9])? < 1 {
            return Err(FormatError::Truncated { offset: 8 });
        }
        if bytes[8] != VERSION {
            return Err(FormatError::UnsupportedVersion(bytes[8]));
        }
        let rest = read_full(reader, &mut bytes[9..])?;
        if rest < HEADER_LEN - 9 {
            return Err(FormatError::Truncated {
                offset: (9 + rest) as u64,
            });
        }
        let stored_crc = u32::from_be_bytes(bytes[51..55].try_into().expect("4 bytes"));
        if crc32fast::hash(&bytes[..51]) != stored_crc {
            return Err(FormatError::CorruptHeader("checksum mismatch"));
        }
        if bytes[9] != KDF_PBKDF2_HMAC_SHA256 {
            return Err(FormatError::Unsupported("key derivation function"));
        }
        if bytes[30] != CIPHER_AES_256_GCM {
            return Err(FormatError::Unsupported("cipher"));
        }
        let header = Header {
            kdf_iterations: u32::from_be_bytes(bytes[10..14].try_into().expect("4 bytes")),
            salt: bytes[14..30].try_into().expect("16 bytes"),
            chunk_size: u32::from_be_bytes(bytes[31..35].try_into().expect("4 bytes")),
            key_check: bytes[35..51].try_into().expect("16 bytes"),
        };
        if header.kdf_iterations == 0 || header.kdf_iterations > MAX_KDF_ITERATIONS {
            return Err(FormatError::CorruptHeader(
                "key derivation iterations out of range",
            ));
        }
        if header.chunk_size == 0 || header.chunk_size > MAX_CHUNK_SIZE {
            return Err(FormatError::CorruptHeader("chunk size out of range"));
        }
        Ok((header, bytes))
    }
}

/// Reads until `buf` is full or the reader is at its end; returns the count.
pub(crate) fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kdf_iterations: 1000,
            salt: [7; SALT_LEN],
            chunk_size: 4096,
            key_check: [9; KEY_CHECK_LEN],
        }
    }

    #[test]
    fn header_round_trips() {
        let bytes = sample().to_bytes();
        let (parsed, raw) = Header::read_from(&mut &bytes[..]).unwrap();
        assert_eq!(parsed, sample());
        assert_eq!(raw, bytes);
    }

    #[test]
    fn any_flipped_header_byte_is_detected() {
        let bytes = sample().to_bytes();
        for position in 0..HEADER_LEN {
            let mut damaged = bytes;
            damaged[position] ^= 0x01;
            let err = Header::read_from(&mut &damaged[..]).unwrap_err();
            match position {
                0..=7 => assert!(matches!(err, FormatError::NotMesbak), "{position}: {err:?}"),
                8 => assert!(matches!(err, FormatError::UnsupportedVersion(0)), "{err:?}"),
                _ => assert!(
                    matches!(err, FormatError::CorruptHeader(_)),
                    "{position}: {err:?}"
                ),
            }
        }
    }

    #[test]
    fn short_inputs_are_classified() {
        let bytes = sample().to_bytes();
        assert!(matches!(
            Header::read_from(&mut &bytes[..0]),
            Err(FormatError::NotMesbak)
        ));
        assert!(matches!(
            Header::read_from(&mut &bytes[..20]),
            Err(FormatError::Truncated { offset: 20 })
        ));
    }
}
