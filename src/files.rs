//! Place in the flow: beside it, below config / checkpoint / tokenizer (the files they open).
//! Opening the files a model directory names (`config.json`, `generation_config.json`, the index, the
//! shards, `qwen.tiktoken`): regular files only, and small files read with a size bound.
//!
//! A FIFO named `config.json` or `model.safetensors` would block `open(2)` or `read(2)` forever, a
//! directory fails later with an unhelpful "Is a directory" / "No such device", and a device file can
//! be endless. Every path is `stat`ed first (symlinks followed: the Hugging Face cache links its
//! files to blobs), opened with `O_NONBLOCK` (so even a FIFO swapped in after the `stat` cannot block
//! the open) and checked again on the open descriptor before anything is read.
use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Largest JSON file (config, generation config, index) read; the real ones are a few KB.
pub const MAX_JSON_BYTES: u64 = 64 << 20;
/// Largest `qwen.tiktoken` read (the real one is 2.5 MB).
pub const MAX_VOCAB_BYTES: u64 = 256 << 20;

/// What a non-regular file is, for the error message.
fn kind(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO (named pipe)"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

fn not_regular(path: &Path, ft: &std::fs::FileType) -> Error {
    Error::bad_file(path, format!("is {}, expected a regular file", kind(ft)))
}

/// Open `path` for reading if it is a regular file (after following symlinks); returns the file and
/// its size. Never blocks on a FIFO.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta.file_type()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    // The path may have been replaced between the stat and the open: check what was opened.
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path, &meta.file_type()));
    }
    Ok((file, meta.len()))
}

/// The whole content of a regular file of at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let (file, size) = open_regular(path)?;
    if size > limit {
        return Err(Error::bad_file(path, format!("is {size} bytes, more than the {limit} this file may have")));
    }
    let mut data = Vec::with_capacity(size as usize);
    // `take`: a file that grows while being read still stops at the limit (+1 to detect it).
    file.take(limit + 1).read_to_end(&mut data).map_err(|e| Error::io(path, e))?;
    if data.len() as u64 > limit {
        return Err(Error::bad_file(path, format!("grew past {limit} bytes while being read")));
    }
    Ok(data)
}

/// A JSON file's text: regular, at most [`MAX_JSON_BYTES`], UTF-8 (else a `BadFile` naming the byte).
pub fn read_json_text(path: &Path) -> Result<String> {
    let data = read_regular(path, MAX_JSON_BYTES)?;
    String::from_utf8(data).map_err(|e| {
        Error::bad_file(path, format!("is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()))
    })
}

/// The path of a fresh, unique hidden sibling of output directory `dir` (`.NAME.tmp-PID-NANOS`, same
/// filesystem, so the final rename is atomic); not created. `what` names the command in the error
/// for a `dir` without a name (e.g. "quantize output").
pub fn temp_sibling_path(dir: &Path, what: &str) -> Result<PathBuf> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dir
        .file_name()
        .ok_or_else(|| Error::invalid(format!("{what} {} has no directory name", dir.display())))?
        .to_string_lossy()
        .into_owned();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    Ok(parent.join(format!(".{name}.tmp-{}-{nanos}", std::process::id())))
}

/// Write `v` as pretty JSON plus a newline (the model directory's JSON files, as Hugging Face writes them).
pub fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::invalid(format!("JSON: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Cut items of `sizes` bytes (in order) into shards of at most `max` bytes: the index ranges of the
/// shards (an item larger than `max` gets a shard of its own; at least one shard, maybe empty).
pub fn shard_ranges(sizes: &[u64], max: u64) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut first, mut bytes) = (0usize, 0u64);
    for (i, &b) in sizes.iter().enumerate() {
        if i > first && bytes + b > max {
            out.push(first..i);
            first = i;
            bytes = 0;
        }
        bytes += b;
    }
    out.push(first..sizes.len());
    out
}

#[cfg(test)]
mod tests {
    use super::shard_ranges;

    #[test]
    fn shard_ranges_cut_at_the_limit() {
        assert_eq!(shard_ranges(&[4, 4, 4], 8), vec![0..2, 2..3]);
        assert_eq!(shard_ranges(&[10, 1, 1], 8), vec![0..1, 1..3], "an item over the limit stands alone");
        assert_eq!(shard_ranges(&[1, 10, 1], 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(shard_ranges(&[], 8), vec![0..0]);
    }
}
