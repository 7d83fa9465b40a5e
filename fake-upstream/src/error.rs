//! Errors of the fake upstream: each names the file, the address or the phase it is about.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file or directory could not be read or written.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A listener could not bind.
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A configuration or persona file (or flag) is wrong: where, and what was expected.
    Config { origin: String, message: String },
    /// TLS material could not be generated or loaded.
    Tls(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn config(origin: impl Into<String>, message: impl Into<String>) -> Error {
        Error::Config {
            origin: origin.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Config { origin, message } => write!(f, "{origin}: {message}"),
            Error::Tls(m) => write!(f, "TLS: {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::Bind { source, .. } => Some(source),
            _ => None,
        }
    }
}
