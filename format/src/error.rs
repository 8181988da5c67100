use std::io;

/// Why a backup file could not be read. Each message is one sentence saying
/// what is wrong and what to do, fit to show a plant technician as is.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error(
        "this is not a mesbak backup file (it does not start with the mesbak header); check the path"
    )]
    NotMesbak,
    #[error(
        "this backup uses file format version {0}, which this mesbak does not support; decrypt it with a newer mesbakctl"
    )]
    UnsupportedVersion(u8),
    #[error("this backup uses an unsupported {0}; decrypt it with a newer mesbakctl")]
    Unsupported(&'static str),
    #[error(
        "the backup's header is damaged ({0}); the file cannot be decrypted, use another backup or copy this one again"
    )]
    CorruptHeader(&'static str),
    #[error(
        "the key does not match this backup (it was encrypted with a different key); use the key that was configured when the backup was made"
    )]
    WrongKey,
    #[error(
        "the backup is damaged at chunk {index} (byte offset {offset}): authentication failed, so its contents cannot be trusted; use another backup"
    )]
    CorruptChunk { index: u64, offset: u64 },
    #[error(
        "the backup is cut short: it ends at byte {offset} before its final chunk; use another backup or copy this one again"
    )]
    Truncated { offset: u64 },
    #[error(
        "the backup has unexpected data after its end (byte {offset}); it may have been tampered with, use another backup"
    )]
    TrailingData { offset: u64 },
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl FormatError {
    /// The format error carried inside an `io::Error` returned by
    /// [`crate::Decryptor`]'s `Read` implementation, if there is one.
    pub fn from_io(err: &io::Error) -> Option<&FormatError> {
        err.get_ref()?.downcast_ref::<FormatError>()
    }

    /// Converts an `io::Error` back into the format error it carries, or wraps
    /// it as an I/O error.
    pub fn from_io_owned(err: io::Error) -> FormatError {
        err.downcast::<FormatError>()
            .unwrap_or_else(FormatError::Io)
    }

    pub(crate) fn into_io(self) -> io::Error {
        match self {
            FormatError::Io(err) => err,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }
}
