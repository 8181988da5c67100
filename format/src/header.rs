//! The header: 71 bytes in format version 2 (written), 55 in version 1
//! (still read). See FORMAT.md.

use std::io::Read;

use crate::FormatError;

/// First 8 bytes of every backup file. The high-bit first byte and the
/// newline catch 7-bit and newline-translating transfers, as in PNG.
pub const MAGIC: [u8; 8] = *b"\x89MESBAK\n";
/// Format version 1: one PBKDF2 per file (read only).
pub const VERSION_1: u8 = 1;
/// Format version 2: PBKDF2 per key salt, then HKDF per file.
pub const VERSION_2: u8 = 2;
/// The version mesbak writes.
pub const VERSION: u8 = VERSION_2;
/// KDF id of version 1: PBKDF2-HMAC-SHA256 over the file's salt.
pub const KDF_PBKDF2_HMAC_SHA256: u8 = 1;
/// KDF id of version 2: PBKDF2-HMAC-SHA256 over the key salt, then
/// HKDF-SHA256 over the file salt.
pub const KDF_PBKDF2_HKDF_SHA256: u8 = 2;
pub const CIPHER_AES_256_GCM: u8 = 1;
pub const HEADER_LEN_V1: usize = 55;
pub const HEADER_LEN_V2: usize = 71;
/// The longest header of any version read (a buffer for any header).
pub const MAX_HEADER_LEN: usize = HEADER_LEN_V2;
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
/// Bytes before the version-specific part: the magic and the version.
const PREFIX_LEN: usize = MAGIC.len() + 1;

/// How a file's AES key comes from the key text, with the salts the header
/// carries for it. The variant is the format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kdf {
    /// Version 1: `PBKDF2(key, salt)` gives the AES key and the key check;
    /// the salt is fresh for every file.
    Pbkdf2 { salt: [u8; SALT_LEN] },
    /// Version 2: `PBKDF2(key, key_salt)` gives a master key and the key
    /// check, shared by every file written with that key salt;
    /// `HKDF(master, file_salt)` gives the file's AES key.
    Pbkdf2Hkdf {
        key_salt: [u8; SALT_LEN],
        file_salt: [u8; SALT_LEN],
    },
}

/// The parsed header. Its exact bytes are the associated data of every chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kdf: Kdf,
    pub kdf_iterations: u32,
    pub chunk_size: u32,
    /// Bytes 32..48 of the PBKDF2 output: proves the key before any data is read.
    pub key_check: [u8; KEY_CHECK_LEN],
}

impl Header {
    pub fn version(&self) -> u8 {
        match self.kdf {
            Kdf::Pbkdf2 { .. } => VERSION_1,
            Kdf::Pbkdf2Hkdf { .. } => VERSION_2,
        }
    }

    /// The header's length in the file: where the first chunk starts.
    pub fn encoded_len(&self) -> usize {
        header_len(self.version()).expect("a version this crate writes")
    }

    /// The PBKDF2 salt: the file's own in version 1, the key salt in
    /// version 2.
    pub fn pbkdf2_salt(&self) -> &[u8; SALT_LEN] {
        match &self.kdf {
            Kdf::Pbkdf2 { salt } => salt,
            Kdf::Pbkdf2Hkdf { key_salt, .. } => key_salt,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        match &self.kdf {
            Kdf::Pbkdf2 { salt } => {
                out.extend_from_slice(&[VERSION_1, KDF_PBKDF2_HMAC_SHA256]);
                out.extend_from_slice(&self.kdf_iterations.to_be_bytes());
                out.extend_from_slice(salt);
            }
            Kdf::Pbkdf2Hkdf {
                key_salt,
                file_salt,
            } => {
                out.extend_from_slice(&[VERSION_2, KDF_PBKDF2_HKDF_SHA256]);
                out.extend_from_slice(&self.kdf_iterations.to_be_bytes());
                out.extend_from_slice(key_salt);
                out.extend_from_slice(file_salt);
            }
        }
        out.push(CIPHER_AES_256_GCM);
        out.extend_from_slice(&self.chunk_size.to_be_bytes());
        out.extend_from_slice(&self.key_check);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        debug_assert_eq!(out.len(), self.encoded_len());
        out
    }

    /// Reads and checks a header of any supported version, returning it
    /// with its exact bytes.
    pub fn read_from(reader: &mut impl Read) -> Result<(Header, Vec<u8>), FormatError> {
        let mut bytes = vec![0u8; PREFIX_LEN];
        let magic_len = read_full(reader, &mut bytes[..MAGIC.len()])?;
        if magic_len < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(FormatError::NotMesbak);
        }
        if read_full(reader, &mut bytes[8..9])? < 1 {
            return Err(FormatError::Truncated { offset: 8 });
        }
        let version = bytes[8];
        let len = header_len(version).ok_or(FormatError::UnsupportedVersion(version))?;
        bytes.resize(len, 0);
        let rest = read_full(reader, &mut bytes[PREFIX_LEN..])?;
        if rest < len - PREFIX_LEN {
            return Err(FormatError::Truncated {
                offset: (PREFIX_LEN + rest) as u64,
            });
        }
        let (body, crc) = bytes.split_at(len - 4);
        if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().expect("4 bytes")) {
            return Err(FormatError::CorruptHeader("checksum mismatch"));
        }
        // Fields after the version, in order; the salts are the only
        // difference between the versions.
        let mut fields = Fields(&body[PREFIX_LEN..]);
        let kdf_id = fields.take::<1>()[0];
        let kdf_iterations = u32::from_be_bytes(fields.take());
        let kdf = match version {
            VERSION_1 if kdf_id == KDF_PBKDF2_HMAC_SHA256 => Kdf::Pbkdf2 {
                salt: fields.take(),
            },
            VERSION_2 if kdf_id == KDF_PBKDF2_HKDF_SHA256 => Kdf::Pbkdf2Hkdf {
                key_salt: fields.take(),
                file_salt: fields.take(),
            },
            _ => return Err(FormatError::Unsupported("key derivation function")),
        };
        if fields.take::<1>()[0] != CIPHER_AES_256_GCM {
            return Err(FormatError::Unsupported("cipher"));
        }
        let header = Header {
            kdf,
            kdf_iterations,
            chunk_size: u32::from_be_bytes(fields.take()),
            key_check: fields.take(),
        };
        debug_assert!(fields.0.is_empty());
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

/// The header length of format `version`, `None` for a version this crate
/// does not read.
pub fn header_len(version: u8) -> Option<usize> {
    match version {
        VERSION_1 => Some(HEADER_LEN_V1),
        VERSION_2 => Some(HEADER_LEN_V2),
        _ => None,
    }
}

/// The header's fields, taken from the front one after the other.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (field, rest) = self.0.split_at(N);
        self.0 = rest;
        field.try_into().expect("N bytes")
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

    fn v1() -> Header {
        Header {
            kdf: Kdf::Pbkdf2 {
                salt: [7; SALT_LEN],
            },
            kdf_iterations: 1000,
            chunk_size: 4096,
            key_check: [9; KEY_CHECK_LEN],
        }
    }

    fn v2() -> Header {
        Header {
            kdf: Kdf::Pbkdf2Hkdf {
                key_salt: [7; SALT_LEN],
                file_salt: [5; SALT_LEN],
            },
            kdf_iterations: 1000,
            chunk_size: 4096,
            key_check: [9; KEY_CHECK_LEN],
        }
    }

    #[test]
    fn headers_round_trip() {
        for (sample, len) in [(v1(), HEADER_LEN_V1), (v2(), HEADER_LEN_V2)] {
            let bytes = sample.to_bytes();
            assert_eq!(bytes.len(), len);
            assert_eq!(sample.encoded_len(), len);
            let (parsed, raw) = Header::read_from(&mut &bytes[..]).unwrap();
            assert_eq!(parsed, sample);
            assert_eq!(raw, bytes);
        }
    }

    #[test]
    fn v2_layout_is_the_documented_one() {
        let bytes = v2().to_bytes();
        assert_eq!(bytes[..8], MAGIC);
        assert_eq!(bytes[8..10], [2, 2]);
        assert_eq!(bytes[10..14], 1000u32.to_be_bytes());
        assert_eq!(bytes[14..30], [7; 16]);
        assert_eq!(bytes[30..46], [5; 16]);
        assert_eq!(bytes[46], 1);
        assert_eq!(bytes[47..51], 4096u32.to_be_bytes());
        assert_eq!(bytes[51..67], [9; 16]);
        assert_eq!(bytes[67..71], crc32fast::hash(&bytes[..67]).to_be_bytes());
    }

    #[test]
    fn any_flipped_header_byte_is_detected() {
        for sample in [v1(), v2()] {
            let bytes = sample.to_bytes();
            for position in 0..bytes.len() {
                let mut damaged = bytes.clone();
                damaged[position] ^= 0x01;
                let err = Header::read_from(&mut &damaged[..]).unwrap_err();
                let version = sample.version() ^ 0x01;
                match position {
                    0..=7 => assert!(matches!(err, FormatError::NotMesbak), "{position}: {err:?}"),
                    // 1 becomes 0, unknown; 2 becomes 3, unknown.
                    8 => assert!(
                        matches!(err, FormatError::UnsupportedVersion(v) if v == version),
                        "{err:?}"
                    ),
                    _ => assert!(
                        matches!(err, FormatError::CorruptHeader(_)),
                        "{position}: {err:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn a_version_with_the_other_versions_kdf_is_unsupported() {
        for (sample, foreign) in [(v1(), 2), (v2(), 1)] {
            let mut bytes = sample.to_bytes();
            bytes[9] = foreign;
            let end = bytes.len() - 4;
            let crc = crc32fast::hash(&bytes[..end]).to_be_bytes();
            bytes[end..].copy_from_slice(&crc);
            let err = Header::read_from(&mut &bytes[..]).unwrap_err();
            assert!(
                matches!(err, FormatError::Unsupported("key derivation function")),
                "{err:?}"
            );
        }
    }

    #[test]
    fn short_inputs_are_classified() {
        for sample in [v1(), v2()] {
            let bytes = sample.to_bytes();
            assert!(matches!(
                Header::read_from(&mut &bytes[..0]),
                Err(FormatError::NotMesbak)
            ));
            assert!(matches!(
                Header::read_from(&mut &bytes[..8]),
                Err(FormatError::Truncated { offset: 8 })
            ));
            assert!(matches!(
                Header::read_from(&mut &bytes[..20]),
                Err(FormatError::Truncated { offset: 20 })
            ));
            let cut = bytes.len() - 1;
            assert!(matches!(
                Header::read_from(&mut &bytes[..cut]),
                Err(FormatError::Truncated { offset }) if offset == cut as u64
            ));
        }
    }
}
