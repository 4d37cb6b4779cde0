//! The SSH communicator's own errors, mapped once into [`aib_core::Error`]: a connection that
//! drops or cannot be made is [`aib_core::Error::Disconnected`] (retryable), a refused key
//! [`aib_core::Error::Unauthenticated`], a file that cannot be read [`aib_core::Error::Io`].

use std::path::PathBuf;

const BACKEND: &str = "ssh";

/// What goes wrong talking SSH to a build VM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// The TCP or SSH connection could not be made or was lost.
    #[error("SSH transport")]
    Transport(#[source] russh::Error),
    /// The server refused the public key.
    #[error("public key of user `{user}` refused")]
    AuthRefused {
        /// The user.
        user: String,
    },
    /// One connect attempt took too long.
    #[error("the attempt timed out")]
    AttemptTimedOut,
    /// The SFTP subsystem failed.
    #[error("SFTP: {what}")]
    Sftp {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: aib_core::BoxError,
    },
    /// A local file to upload could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing to the channel failed.
    #[error("writing to the SSH channel")]
    Write(#[source] std::io::Error),
    /// The upload content is of a kind this communicator cannot send.
    #[error("unsupported upload content")]
    UnsupportedContent,
}

impl From<SshError> for aib_core::Error {
    fn from(e: SshError) -> Self {
        match e {
            SshError::AuthRefused { .. } => aib_core::Error::Unauthenticated { backend: BACKEND, source: Box::new(e) },
            SshError::Read { path, source } => aib_core::Error::io(path, source),
            SshError::UnsupportedContent => aib_core::Error::Unsupported { operation: "this upload content".into(), backend: BACKEND },
            e @ (SshError::Transport(_) | SshError::AttemptTimedOut | SshError::Write(_)) => {
                aib_core::Error::Disconnected { backend: BACKEND, source: Box::new(e) }
            }
            e @ SshError::Sftp { .. } => aib_core::Error::generic(BACKEND, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_maps_to_its_meaning() {
        let e: aib_core::Error = SshError::AuthRefused { user: "aib".into() }.into();
        assert!(matches!(e, aib_core::Error::Unauthenticated { .. }) && !e.is_retryable());
        let e: aib_core::Error = SshError::AttemptTimedOut.into();
        assert!(matches!(e, aib_core::Error::Disconnected { .. }) && e.is_retryable());
        let e: aib_core::Error = SshError::Read { path: "/x".into(), source: std::io::ErrorKind::NotFound.into() }.into();
        assert!(matches!(e, aib_core::Error::Io { path: Some(_), .. }));
    }
}
