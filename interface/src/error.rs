use zbus::DBusError;

/// Every failure that crosses the bus, as `org.mesbak.Agent1.Error.<Variant>`
/// with a sentence a plant technician can act on. A job that fails reports
/// the same names in its `ErrorName` property.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.mesbak.Agent1.Error")]
pub enum Error {
    /// Transport-level failure (bus gone, agent not running, policy denial).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Another job that changes data is running.
    Busy(String),
    /// The caller may not do this (destructive calls need root).
    NotAuthorized(String),
    /// An argument is malformed: unknown kind, a backup id that is not a
    /// plain file name, and the like.
    InvalidArgument(String),
    /// The backup, container, volume or image named does not exist.
    NotFound(String),
    /// Not enough free space to write safely.
    NoSpace(String),
    /// A backup failed authentication: damaged, truncated or the wrong key.
    Integrity(String),
    /// The Docker engine refused or failed.
    Docker(String),
    /// PostgreSQL refused or failed.
    Database(String),
    /// The agent's configuration is invalid.
    Config(String),
    /// The job was cancelled on request (`Cancel`); the message says what
    /// was put back.
    Cancelled(String),
    /// Anything else; the message says what.
    Failed(String),
}

impl Error {
    /// The short variant name (`Busy`, `NotFound`, ...) used in job
    /// properties and in `--json` output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::ZBus(_) => "ZBus",
            Error::Busy(_) => "Busy",
            Error::NotAuthorized(_) => "NotAuthorized",
            Error::InvalidArgument(_) => "InvalidArgument",
            Error::NotFound(_) => "NotFound",
            Error::NoSpace(_) => "NoSpace",
            Error::Integrity(_) => "Integrity",
            Error::Docker(_) => "Docker",
            Error::Database(_) => "Database",
            Error::Config(_) => "Config",
            Error::Cancelled(_) => "Cancelled",
            Error::Failed(_) => "Failed",
        }
    }

    /// Rebuilds an error from a job's `ErrorName` and message.
    pub fn from_kind(kind: &str, message: String) -> Error {
        match kind {
            "Busy" => Error::Busy(message),
            "NotAuthorized" => Error::NotAuthorized(message),
            "InvalidArgument" => Error::InvalidArgument(message),
            "NotFound" => Error::NotFound(message),
            "NoSpace" => Error::NoSpace(message),
            "Integrity" => Error::Integrity(message),
            "Docker" => Error::Docker(message),
            "Database" => Error::Database(message),
            "Config" => Error::Config(message),
            "Cancelled" => Error::Cancelled(message),
            _ => Error::Failed(message),
        }
    }

    /// The human sentence, without the error name.
    pub fn message(&self) -> String {
        match self {
            Error::ZBus(err) => err.to_string(),
            Error::Busy(m)
            | Error::NotAuthorized(m)
            | Error::InvalidArgument(m)
            | Error::NotFound(m)
            | Error::NoSpace(m)
            | Error::Integrity(m)
            | Error::Docker(m)
            | Error::Database(m)
            | Error::Config(m)
            | Error::Cancelled(m)
            | Error::Failed(m) => m.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let err = Error::Busy("a backup is running".into());
        assert_eq!(
            zbus::DBusError::name(&err).as_str(),
            format!("{}.Busy", crate::ERROR_PREFIX)
        );
    }

    #[test]
    fn kinds_round_trip() {
        for err in [
            Error::Busy(String::new()),
            Error::NotAuthorized(String::new()),
            Error::InvalidArgument(String::new()),
            Error::NotFound(String::new()),
            Error::NoSpace(String::new()),
            Error::Integrity(String::new()),
            Error::Docker(String::new()),
            Error::Database(String::new()),
            Error::Config(String::new()),
            Error::Cancelled(String::new()),
            Error::Failed(String::new()),
        ] {
            assert_eq!(
                Error::from_kind(err.kind(), String::new()).kind(),
                err.kind()
            );
        }
    }
}
