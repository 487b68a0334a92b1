//! `io::Error`s that keep the kind callers match on while naming the operation that failed.

use std::io;

use nix::errno::Errno;

/// Keeps the errno's kind (callers match on it) while saying which operation on which path failed.
pub(super) fn errno_error(errno: Errno, what: String) -> io::Error {
    io::Error::new(io::Error::from(errno).kind(), format!("{what}: {errno}"))
}

pub(super) fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

pub(super) fn rustix_error(e: rustix::io::Errno, what: String) -> io::Error {
    errno_error(Errno::from_raw(e.raw_os_error()), what)
}

pub(super) fn context(e: io::Error, what: String) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
