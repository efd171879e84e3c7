//! The error a response body ends with when the application fails after
//! its head was sent.

use std::error::Error;
use std::fmt;

/// The application failed after the response had started: an exception
/// from the iterable, a chunk that is not `bytes`, or a body that breaks
/// its own `Content-Length`. The traceback went to the log; hyper closes
/// the connection, so the client sees a truncated response, never one
/// that looks whole.
#[derive(Debug)]
pub struct AppError {
    message: String,
}

impl AppError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "wsgi application failed: {}", self.message)
    }
}

impl Error for AppError {}

/// The application could not be imported (see [`Wsgi::load`]); its
/// traceback went to the log.
///
/// [`Wsgi::load`]: crate::Wsgi::load
#[derive(Debug)]
pub struct LoadError {
    message: String,
}

impl LoadError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Error for LoadError {}
