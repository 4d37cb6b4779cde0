//! The local backend's own errors, mapped once into [`aib_core::Error`]: semantic variants
//! first, [`aib_core::Error::Generic`] otherwise. Decisions (retry the port, name the setup
//! command) match these variants, never an error's text.

use crate::tools::{BACKEND, SETUP_HINT};
use std::process::ExitStatus;

/// What goes wrong on the build host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// A host program is not installed.
    #[error("the program `{program}` is missing: {SETUP_HINT}")]
    ToolMissing {
        /// The program.
        program: String,
    },
    /// A host program could not be started.
    #[error("cannot run `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A host program ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    ToolFailed {
        /// The command line, as run.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// QEMU could not bind the host port forwarded to the guest's SSH (another process took
    /// it between the probe and the start): another port may work.
    #[error("the host port {port} for the build VM's SSH is taken: {log}")]
    PortTaken {
        /// The port.
        port: u16,
        /// What QEMU said.
        log: String,
    },
    /// QEMU exited right after it started.
    #[error("qemu exited at start ({status}): {log}")]
    QemuExited {
        /// Its exit status.
        status: ExitStatus,
        /// What it printed.
        log: String,
    },
    /// The build VM stopped before SSH came up.
    #[error("the build VM stopped before SSH was up; console: {console}")]
    VmStopped {
        /// The last lines of its serial console.
        console: String,
    },
    /// A tool's output could not be read.
    #[error("cannot read the output of `{program}`: {message}")]
    BadOutput {
        /// The program.
        program: String,
        /// What was wrong.
        message: String,
    },
    /// The build VM is in the wrong state for the call.
    #[error("{0}")]
    VmState(String),
}

impl From<LocalError> for aib_core::Error {
    fn from(e: LocalError) -> Self {
        match e {
            LocalError::ToolMissing { program } => {
                aib_core::Error::NotFound { backend: BACKEND, what: format!("the program `{program}`: {SETUP_HINT}") }
            }
            e @ LocalError::PortTaken { .. } => aib_core::Error::Generic { backend: BACKEND, retryable: true, source: Box::new(e) },
            e => aib_core::Error::generic(BACKEND, e),
        }
    }
}

impl LocalError {
    /// Classifies QEMU's exit at start from what it printed: a port that could not be bound
    /// for the SSH forwarding is [`LocalError::PortTaken`], anything else
    /// [`LocalError::QemuExited`].
    pub(crate) fn qemu_exited(status: ExitStatus, log: String, port: u16) -> Self {
        if log.contains("host forwarding") { LocalError::PortTaken { port, log } } else { LocalError::QemuExited { status, log } }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn a_taken_port_is_retryable_and_other_exits_are_not() {
        let status = ExitStatus::from_raw(1 << 8);
        let taken =
            LocalError::qemu_exited(status, "qemu-system-x86_64: Could not set up host forwarding rule 'tcp::2222-:22'".into(), 2222);
        assert!(matches!(taken, LocalError::PortTaken { port: 2222, .. }));
        assert!(aib_core::Error::from(taken).is_retryable());
        let other = LocalError::qemu_exited(status, "qemu-system-x86_64: -drive: bad option".into(), 2222);
        assert!(matches!(other, LocalError::QemuExited { .. }));
        assert!(!aib_core::Error::from(other).is_retryable());
        let missing: aib_core::Error = LocalError::ToolMissing { program: "qemu-img".into() }.into();
        assert!(matches!(missing, aib_core::Error::NotFound { .. }) && missing.to_string().contains("setup-local.sh"));
    }
}
