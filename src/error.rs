//! Place in the flow: beside it; the one error type every layer returns.
//! One error type for the whole crate. Every message names what was wrong: the file, the tensor,
//! the argument. Nothing in the library panics on bad input; it returns one of these.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// A file was read but its content is wrong (bad JSON, bad safetensors header, wrong format).
    #[error("{}: {msg}", path.display())]
    BadFile { path: PathBuf, msg: String },
    /// A tensor is missing, has the wrong dtype or shape, or its bytes are out of range.
    #[error("{}: tensor `{tensor}`: {msg}", file.display())]
    Tensor { file: PathBuf, tensor: String, msg: String },
    /// A caller-supplied value (CLI flag, C ABI argument, token id, prompt) is invalid.
    #[error("{0}")]
    InvalidArgument(String),
    /// The sequence would exceed the KV cache / context length.
    #[error("context full: {0}")]
    ContextFull(String),
    /// The requested backend is unavailable (no driver, no device, kernels not built, not implemented).
    #[error("backend unavailable: {0}")]
    Backend(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// "1 token", "2 tokens": `n` and `noun`, plural unless `n` is 1 (messages only).
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

impl Error {
    /// A failed read or open of `path`. A read that found bytes which are not valid UTF-8 text
    /// (`read_to_string`'s InvalidData) is a malformed file, so it becomes `BadFile`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if source.kind() == std::io::ErrorKind::InvalidData {
            return Error::BadFile { path: path.into(), msg: format!("not a valid text file: {source}") };
        }
        Error::Io { path: path.into(), source }
    }
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::BadFile { path: path.into(), msg: msg.into() }
    }
    pub fn tensor(file: impl Into<PathBuf>, tensor: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Tensor { file: file.into(), tensor: tensor.into(), msg: msg.into() }
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
