//! Place in the flow: engine → qwen-run (this file: its helpers that are not commands).
//! Pieces of `qwen-run` that are not commands: argument parsing, the chat-command parser, the .npy
//! writer, the inspect report and the benchmark report's formatting.
use qwen_rt::backend::bench::BenchReport;
use qwen_rt::checkpoint::Checkpoint;
use qwen_rt::quant::QuantWeights;
use qwen_rt::{Error, Result};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A line typed in `qwen-run chat`.
#[derive(Debug, PartialEq)]
pub enum ChatCommand {
    Exit,
    Reset,
    System(String),
    Empty,
    Unknown(String),
    Query(String),
}

impl ChatCommand {
    pub fn parse(line: &str) -> ChatCommand {
        let t = line.trim();
        if t.is_empty() {
            return ChatCommand::Empty;
        }
        if !t.starts_with('/') {
            return ChatCommand::Query(line.to_string());
        }
        let (cmd, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
        match cmd {
            "/exit" | "/quit" => ChatCommand::Exit,
            "/reset" => ChatCommand::Reset,
            "/system" => ChatCommand::System(rest.trim().to_string()),
            _ => ChatCommand::Unknown(cmd.to_string()),
        }
    }
}

/// "1,2,3", "1 2 3" or a JSON array "[1, 2, 3]" → ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    let body = s.trim().trim_start_matches('[').trim_end_matches(']');
    body.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, p)| {
            p.parse::<u32>().map_err(|_| Error::invalid(format!("token id #{i} `{p}` is not a non-negative integer")))
        })
        .collect()
}

pub fn parse_usize_list(s: &str, flag: &str) -> Result<Vec<usize>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| match p.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Error::invalid(format!("{flag}: `{p}` is not a positive integer"))),
        })
        .collect()
}

/// A size in bytes: a positive whole number with an optional decimal suffix KB, MB or GB (as
/// `save_pretrained`'s `max_shard_size`), e.g. `2GB`, `500MB`, `1048576`.
pub fn parse_size(s: &str, flag: &str) -> Result<u64> {
    let t = s.trim();
    let upper = t.to_ascii_uppercase();
    let (num, mult) = [("GB", 1_000_000_000u64), ("MB", 1_000_000), ("KB", 1_000), ("B", 1)]
        .iter()
        .find_map(|&(suf, m)| upper.strip_suffix(suf).map(|n| (n.trim().to_string(), m)))
        .unwrap_or((upper.clone(), 1));
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| Error::invalid(format!("{flag} {s}: expected a positive size such as 2GB, 500MB or 1048576")))
}

/// Write a little-endian float32 .npy (format 1.0) atomically: a temp file beside `path`, then rename.
pub fn write_npy_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let numel: usize = shape.iter().product();
    if numel != data.len() {
        return Err(Error::invalid(format!("npy shape {shape:?} does not match {} values", data.len())));
    }
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + data.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    write_atomic(path, &bytes)
}

/// Refuse an output path that exists and is not a regular file (a symlink, FIFO, device, directory,
/// socket): `write_atomic` would replace it with a regular file (as root, even `/dev/full`).
pub fn check_output_target(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => {
            let ft = m.file_type();
            let what = if ft.is_symlink() {
                "a symbolic link"
            } else if ft.is_dir() {
                "a directory"
            } else {
                "not a regular file (a FIFO, device or socket)"
            };
            Err(Error::invalid(format!(
                "{}: the output exists and is {what}; refusing to replace it (give a regular file path)",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Write `bytes` to the regular file `path` atomically (a temp file beside it, then rename); an
/// existing non-regular `path` is refused, never replaced (`check_output_target`).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    check_output_target(path)?;
    let name = path.file_name().ok_or_else(|| Error::invalid(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Bytes in the largest binary unit that keeps the number >= 1.
fn human(b: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.2} {}", units[i])
    }
}

/// Config, tensor table, memory per precision.
pub fn inspect_report(ck: &Checkpoint, w: &QuantWeights) -> String {
    let c = &ck.config;
    let mut s = String::new();
    let _ = writeln!(s, "model: {}", ck.dir.display());
    let _ = writeln!(
        s,
        "config: C={} L={} H={} D={} F={} V={} S(seq_length)={} max_position_embeddings={} rope_base={} eps={:e} dynamic_ntk={} logn={} tied={}",
        c.hidden_size, c.num_layers, c.num_heads, c.head_dim, c.mlp_width, c.vocab_size, c.seq_length,
        c.max_position_embeddings, c.rotary_emb_base, c.layer_norm_epsilon, c.use_dynamic_ntk, c.use_logn_attn,
        c.tie_word_embeddings
    );
    let g = &ck.generation;
    let _ = writeln!(
        s,
        "generation: chat_format={} do_sample={} temperature={} top_k={} top_p={} repetition_penalty={} max_new_tokens={} max_window_size={}",
        g.chat_format, g.do_sample, g.temperature, g.top_k, g.top_p, g.repetition_penalty, g.max_new_tokens, g.max_window_size
    );
    let _ = writeln!(s, "\n{:<48} {:>5} {:>16}  file", "tensor", "dtype", "shape");
    // Float and integer (quantized: codes, statistics) tensors in name order; bytes per dtype.
    let mut rows: Vec<(&str, &str, &[usize], &std::path::Path, usize)> = Vec::new();
    rows.extend(ck.tensors.iter().map(|(n, t)| (n.as_str(), t.dtype.name(), &t.shape[..], &**t.file, t.byte_len())));
    rows.extend(
        ck.int_tensors.iter().map(|(n, t)| (n.as_str(), t.dtype.name(), &t.shape[..], &**t.file, t.bytes().len())),
    );
    rows.sort_by_key(|r| r.0);
    let mut by_dtype = std::collections::BTreeMap::<&str, usize>::new();
    for (name, dtype, shape, file, bytes) in rows {
        let file = file.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = writeln!(s, "{:<48} {:>5} {:>16}  {}", name, dtype, format!("{shape:?}"), file);
        *by_dtype.entry(dtype).or_default() += bytes;
    }
    let stored: Vec<String> = by_dtype.iter().map(|(d, b)| format!("{d} {}", human(*b as f64))).collect();
    let quant =
        w.format.map_or("none (float)".to_string(), |f| format!("{} (linears; wte, lm_head, norms float)", f.name()));
    let _ = writeln!(s, "\nstored by dtype: {}; quantization: {quant}", stored.join(", "));
    let params = c.num_params() as f64;
    let emb = (c.vocab_size * c.hidden_size) as f64 * if c.tie_word_embeddings { 1.0 } else { 2.0 };
    let body = params - emb;
    let kv_per_tok = (2 * c.num_layers * c.proj_size()) as f64;
    let _ = writeln!(s, "\nparameters: {:.0} ({:.3} B); stored: {}", params, params / 1e9, human(w.byte_len() as f64));
    let _ = writeln!(s, "{:<44} {:>12} {:>16}", "precision", "weights", "KV/token (bf16)");
    let rows = [
        ("f32", params * 4.0),
        ("bf16 / fp16", params * 2.0),
        ("int8 per-channel (embeddings, lm_head bf16)", body * 1.0 + emb * 2.0),
        ("NF4 block 64 (4.5 bit; embeddings, lm_head bf16)", body * 4.5 / 8.0 + emb * 2.0),
    ];
    for (name, bytes) in rows {
        let _ = writeln!(s, "{:<44} {:>12} {:>16}", name, human(bytes), human(kv_per_tok * 2.0));
    }
    let _ = writeln!(
        s,
        "KV cache (bf16) at {} tokens (seq_length): {}",
        c.seq_length,
        human(kv_per_tok * 2.0 * c.seq_length as f64)
    );
    s
}

/// A temp directory removed on drop.
pub struct TempDirGuard(pub PathBuf);
impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tempdir_for(what: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("qwen-run-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// The report as a table (`qwen-run bench`).
pub fn bench_table(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "backend {} | model {} | weights {}", r.backend, r.model, human(r.weight_bytes as f64));
    if let Some(d) = &r.device {
        let _ = writeln!(
            s,
            "GPU {} | device copy {:.0} GB/s | floor {:.1} tok/s | memory in use {:.2} GiB at {} tokens of context",
            d.name,
            d.copy_bytes_per_s / 1e9,
            d.copy_bytes_per_s / r.bytes_per_token as f64,
            d.mem_used_bytes as f64 / (1u64 << 30) as f64,
            r.context
        );
    }
    let _ = writeln!(s, "{:<34} {:>12}", "measure", "value");
    if let Some((secs, how)) = &r.load {
        let _ = writeln!(
            s,
            "{:<34} {:>10.2} s  ({:.2} GB/s)",
            format!("load ({how})"),
            secs,
            r.weight_bytes as f64 / secs / 1e9
        );
    }
    let of = if r.prefill_reps > 1 { format!(" (median of {})", r.prefill_reps) } else { String::new() };
    for (n, tps) in &r.prefill {
        let _ = writeln!(s, "{:<34} {:>12.1} tok/s", format!("prefill {n} tokens{of}"), tps);
    }
    let _ = writeln!(
        s,
        "{:<34} {:>12.2} tok/s",
        format!("decode {} tokens after {}", r.decode_tokens, r.decode_prompt),
        r.decode_tok_s
    );
    let _ =
        writeln!(s, "{:<34} {:>12.2} GB/s", "decode weight bandwidth", r.decode_tok_s * r.bytes_per_token as f64 / 1e9);
    if let Some(f) = r.floor_fraction() {
        let _ = writeln!(s, "{:<34} {:>12.1} %", "decode / bandwidth floor", f * 100.0);
    }
    s
}

/// The report as one JSON line.
pub fn bench_json(r: &BenchReport) -> String {
    serde_json::json!({
        "backend": r.backend, "model": r.model, "weight_bytes": r.weight_bytes, "bytes_per_token": r.bytes_per_token,
        "load_s": r.load.as_ref().map(|l| l.0), "load_source": r.load.as_ref().map(|l| l.1.clone()),
        "prefill": r.prefill.iter().map(|(n, t)| serde_json::json!({"tokens": n, "tok_per_s": t})).collect::<Vec<_>>(),
        "prefill_reps": r.prefill_reps,
        "decode_prompt": r.decode_prompt, "decode_tokens": r.decode_tokens, "decode_tok_per_s": r.decode_tok_s,
        "gpu": r.device.as_ref().map(|d| d.name.clone()),
        "copy_gb_per_s": r.device.as_ref().map(|d| d.copy_bytes_per_s / 1e9),
        "mem_used_bytes": r.device.as_ref().map(|d| d.mem_used_bytes),
        "context_tokens": r.context,
        "floor_fraction": r.floor_fraction(),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_commands() {
        assert_eq!(ChatCommand::parse("/exit"), ChatCommand::Exit);
        assert_eq!(ChatCommand::parse("  /reset "), ChatCommand::Reset);
        assert_eq!(ChatCommand::parse("/system Be brief."), ChatCommand::System("Be brief.".into()));
        assert_eq!(ChatCommand::parse("/nope"), ChatCommand::Unknown("/nope".into()));
        assert_eq!(ChatCommand::parse("   "), ChatCommand::Empty);
        assert_eq!(ChatCommand::parse("hi /exit"), ChatCommand::Query("hi /exit".into()));
    }

    #[test]
    fn ids_parsing() {
        assert_eq!(parse_ids("1,2, 3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_ids("[4, 5]").unwrap(), vec![4, 5]);
        assert!(parse_ids("1,x").unwrap_err().to_string().contains("`x`"));
        assert!(parse_ids("-1").is_err());
        assert!(parse_ids("99999999999").is_err());
    }

    #[test]
    fn npy_header_is_aligned_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_npy_f32(&p, &[2, 3], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        let b = std::fs::read(&p).unwrap();
        let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert!(std::str::from_utf8(&b[10..10 + hlen]).unwrap().contains("'shape': (2, 3)"));
        assert_eq!(b.len(), 10 + hlen + 24);
        assert_eq!(f32::from_le_bytes(b[b.len() - 4..].try_into().unwrap()), 5.0);
        assert!(write_npy_f32(&p, &[2, 2], &[0.0]).is_err());
        assert!(write_npy_f32(&dir.path().join("missing/x.npy"), &[1], &[0.0]).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp files left behind");
    }
}
