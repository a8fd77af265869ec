//! Place in the flow: backend::cuda, beside it: the backend's switches as data (read once at load).
//! The CUDA backend's switches as data: one [`Tuning`] value, read from the environment once when a
//! model is loaded (`CudaModel::load`, `Tuning::from_env`), kept by the model, passed down to the
//! launchers and printed by `qwen-run bench`. No launcher reads the environment.
//!
//! Verified by default (issue 13): `Tuning::VERIFIED`, the default, is exactly the path H200 runs
//! verified: run 4 (commit 9a9a5b1, 2026-11-26) and, for the prefill attention, run 5 (commit
//! 8be7cb9, 2026-12-04: `attention_prefill_mma`, +15 % prefill at 2,048 tokens, +31 % at 8,000;
//! cuda/README.md has the table). Every kernel, fused path and
//! tuning value added since is opt-in by its switch, and `Tuning::unverified` names the ones that are
//! on, so that `qwen-run` says them once on stderr. A value a switch does not know is said once per
//! reading, and the verified default is used: an A/B run must not measure the default while
//! believing it measures something else.
//!
//! | switch | verified (default) | opt-in (compiled + emulator-checked, not verified on a GPU) |
//! |---|---|---|
//! | QWEN_CUDA_GRAPH | on | 0 / off: kernel by kernel (a debugging aid, verified in run 4 too) |
//! | QWEN_PDL | on (sm_90+) | 0 / off (verified in run 4 too) |
//! | QWEN_FUSE | off | 1 / on: fused GEMV epilogues, fused attention combine, the gf_* GEMV stream |
//! | QWEN_ATTN | mma (`attention_prefill_mma`, run 5); run4 (run 4's WMMA kernel, verified too) | wmma (longest tile first), splitk |
//! | QWEN_SAMPLER | run4 (process + one-block bisection draw) | block (radix draw + greedy kernel), auto (+ multi-block top-p) |
//! | QWEN_GEMV | 2,8 (run 4's gemv) | STAGES,BLOCKS_PER_SM (run 4's kernel); a PREFETCH_MB > 0 runs the gf_* stream |
//! | QWEN_ADEC_SPLIT | the split by capacity | KEYS (a positive multiple of 16) |
//! | QWEN_ADEC_GRID | capacity (grid sized by the cache) | length (grid sized by the current length, captured per bucket) |
//! | QWEN_NF4 | warp (`gemv_nf4`) | rows (`gemv_nf4_rows`: four rows per warp, conflict-free codebook) |
//! | QWEN_INT8 | warp (`gemv_int8`) | rows (`gemv_int8_rows`: four rows per warp sharing each lane's converted x) |
//! | QWEN_GPTQ_DEQUANT | grid (`dequant_gptq*`) | tile (`dequant_gptq*_tile`: the prefill's GPTQ dequantization through a shared-memory tile, coalesced stores) |
use super::launch::{GemvConfig, GemvKernel, GptqDequant, Int8Kernel, Nf4Kernel, PrefillKernel, SamplerPath};

/// How the decode attention's grid is sized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdecGrid {
    /// `n_splits` for the whole cache (run 4): splits past the current length exit at once.
    Capacity,
    /// `n_splits` for the current length rounded up to a power-of-two bucket of splits; the decode
    /// graph is captured once per bucket (`launch::adec_bucket_splits`).
    Length,
}

/// Every switch of the CUDA backend, as one value (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// QWEN_CUDA_GRAPH: replay the decode step as one captured graph.
    pub graph: bool,
    /// QWEN_PDL: programmatic dependent launch on sm_90+.
    pub pdl: bool,
    /// QWEN_FUSE: the decode step's fused GEMV epilogues (gemv_qkv_rope, gemv_swiglu,
    /// gemv_residual_rmsnorm) and the split attention's fused combine; also runs the plain GEMVs on
    /// the same post-run-4 stream (`GemvKernel::Stream`).
    pub fuse: bool,
    /// QWEN_ATTN: the prefill attention kernel; None = the split-K decode kernel on query slices.
    pub attn: Option<PrefillKernel>,
    /// QWEN_SAMPLER: which sampling kernels.
    pub sampler: SamplerPath,
    /// QWEN_GEMV: the GEMV's kernel and configuration.
    pub gemv: GemvConfig,
    /// QWEN_ADEC_SPLIT: keys per decode-attention split (None: by capacity, `DecodeSplit::for_capacity`).
    pub adec_split: Option<usize>,
    /// QWEN_ADEC_GRID: the decode attention's grid.
    pub adec_grid: AdecGrid,
    /// QWEN_NF4: the NF4 decode GEMV (quantized models only).
    pub nf4: Nf4Kernel,
    /// QWEN_INT8: the Int8 decode GEMV (quantized models only).
    pub int8: Int8Kernel,
    /// QWEN_GPTQ_DEQUANT: the prefill's GPTQ dequantization kernel (GPTQ models only).
    pub gptq_dequant: GptqDequant,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::VERIFIED
    }
}

impl Tuning {
    /// What H200 runs 4 and 5 verified (commits 9a9a5b1 and 8be7cb9): the default.
    pub const VERIFIED: Tuning = Tuning {
        graph: true,
        pdl: true,
        fuse: false,
        attn: Some(PrefillKernel::Mma),
        sampler: SamplerPath::Run4,
        gemv: GemvConfig::DEFAULT,
        adec_split: None,
        adec_grid: AdecGrid::Capacity,
        nf4: Nf4Kernel::Warp,
        int8: Int8Kernel::Warp,
        gptq_dequant: GptqDequant::Grid,
    };

    /// The environment's switches; every value a switch does not know is said on stderr (one line
    /// each) and the verified default used.
    pub fn from_env() -> Tuning {
        let (t, warnings) = Tuning::read(|name| std::env::var(name).ok());
        for w in warnings {
            eprintln!("warning: {w}");
        }
        t
    }

    /// The switches as `lookup` gives them (a variable's value, None when unset), and one message
    /// per value that is not understood.
    pub fn read(lookup: impl Fn(&str) -> Option<String>) -> (Tuning, Vec<String>) {
        let mut warnings = Vec::new();
        let v = Tuning::VERIFIED;
        let mut w = |m: Option<String>| warnings.extend(m);
        let (graph, m) = on_off(&lookup, "QWEN_CUDA_GRAPH", v.graph);
        w(m);
        let (pdl, m) = on_off(&lookup, "QWEN_PDL", v.pdl);
        w(m);
        let (fuse, m) = on_off(&lookup, "QWEN_FUSE", v.fuse);
        w(m);
        let attns = [
            ("run4", Some(PrefillKernel::Run4)),
            ("mma", Some(PrefillKernel::Mma)),
            ("wmma", Some(PrefillKernel::Wmma)),
            ("splitk", None),
        ];
        let (attn, m) = choice(&lookup, "QWEN_ATTN", &attns, v.attn, "mma (attention_prefill_mma)");
        w(m);
        let samplers = [("run4", SamplerPath::Run4), ("block", SamplerPath::Block), ("auto", SamplerPath::Auto)];
        let (sampler, m) = choice(&lookup, "QWEN_SAMPLER", &samplers, v.sampler, "run4 (the bisection draw)");
        w(m);
        let mut gemv = match lookup("QWEN_GEMV") {
            None => v.gemv,
            Some(s) => GemvConfig::parse(&s).unwrap_or_else(|| {
                let d = v.gemv;
                w(Some(format!(
                    "QWEN_GEMV={s:?} is not STAGES,BLOCKS_PER_SM[,PREFETCH_MB] with STAGES 1 or 2; using {},{}",
                    d.stages, d.blocks_per_sm
                )));
                d
            }),
        };
        if fuse {
            gemv.kernel = GemvKernel::Stream;
        }
        let adec_split = lookup("QWEN_ADEC_SPLIT").and_then(|s| match s.trim().parse::<usize>() {
            Ok(n) if n > 0 && n % 16 == 0 => Some(n),
            _ => {
                w(Some(format!("QWEN_ADEC_SPLIT={s:?} is not a positive multiple of 16; using the split by capacity")));
                None
            }
        });
        let grids = [("capacity", AdecGrid::Capacity), ("length", AdecGrid::Length)];
        let (adec_grid, m) = choice(&lookup, "QWEN_ADEC_GRID", &grids, v.adec_grid, "capacity");
        w(m);
        let nf4s = [("warp", Nf4Kernel::Warp), ("rows", Nf4Kernel::Rows)];
        let (nf4, m) = choice(&lookup, "QWEN_NF4", &nf4s, v.nf4, "warp (gemv_nf4)");
        w(m);
        let int8s = [("warp", Int8Kernel::Warp), ("rows", Int8Kernel::Rows)];
        let (int8, m) = choice(&lookup, "QWEN_INT8", &int8s, v.int8, "warp (gemv_int8)");
        w(m);
        let gptqs = [("grid", GptqDequant::Grid), ("tile", GptqDequant::Tile)];
        let (gptq_dequant, m) = choice(&lookup, "QWEN_GPTQ_DEQUANT", &gptqs, v.gptq_dequant, "grid (dequant_gptq)");
        w(m);
        (Tuning { graph, pdl, fuse, attn, sampler, gemv, adec_split, adec_grid, nf4, int8, gptq_dequant }, warnings)
    }

    /// The paths this tuning runs that no GPU run has verified yet (empty for `VERIFIED`), each
    /// named by its switch and what it turns on.
    pub fn unverified(&self) -> Vec<String> {
        let mut u = Vec::new();
        if self.fuse {
            u.push(
                "QWEN_FUSE=1 (gemv_qkv_rope, gemv_swiglu, gemv_residual_rmsnorm, attention_decode_fused, gemv_plain)"
                    .into(),
            );
        }
        match self.attn {
            Some(PrefillKernel::Run4) | Some(PrefillKernel::Mma) => {}
            Some(PrefillKernel::Wmma) => u.push("QWEN_ATTN=wmma (attention_prefill_wmma, longest tile first)".into()),
            None => u.push("QWEN_ATTN=splitk (split-K decode attention for prefill)".into()),
        }
        match self.sampler {
            SamplerPath::Run4 => {}
            SamplerPath::Block => u.push("QWEN_SAMPLER=block (sample_draw_radix_f32, sample_greedy_f32)".into()),
            SamplerPath::Auto => {
                u.push("QWEN_SAMPLER=auto (multi-block top-p, sample_draw_radix_f32, sample_greedy_f32)".into())
            }
        }
        if self.gemv.kernel == GemvKernel::Stream && !self.fuse {
            u.push("QWEN_GEMV with PREFETCH_MB > 0 (gemv_plain with the L2 prefetch)".into());
        } else if self.gemv.prefetch_mb > 0 {
            u.push("QWEN_GEMV with PREFETCH_MB > 0 (the L2 prefetch)".into());
        }
        if let Some(n) = self.adec_split {
            u.push(format!("QWEN_ADEC_SPLIT={n}"));
        }
        if self.adec_grid == AdecGrid::Length {
            u.push("QWEN_ADEC_GRID=length (decode attention grid per length bucket)".into());
        }
        if self.nf4 == Nf4Kernel::Rows {
            u.push("QWEN_NF4=rows (gemv_nf4_rows)".into());
        }
        if self.int8 == Int8Kernel::Rows {
            u.push("QWEN_INT8=rows (gemv_int8_rows)".into());
        }
        if self.gptq_dequant == GptqDequant::Tile {
            u.push("QWEN_GPTQ_DEQUANT=tile (dequant_gptq4_tile, dequant_gptq8_tile)".into());
        }
        u
    }

    /// One line for `qwen-run bench` and logs: every switch's value, `verified` or what is not.
    pub fn describe(&self) -> String {
        let attn = match self.attn {
            Some(PrefillKernel::Run4) => "run4",
            Some(PrefillKernel::Mma) => "mma",
            Some(PrefillKernel::Wmma) => "wmma",
            None => "splitk",
        };
        let sampler = match self.sampler {
            SamplerPath::Run4 => "run4",
            SamplerPath::Block => "block",
            SamplerPath::Auto => "auto",
        };
        let g = self.gemv;
        let kernel = match g.kernel {
            GemvKernel::Run4 => "run4",
            GemvKernel::Stream => "stream",
        };
        let split = self.adec_split.map_or("capacity".to_string(), |n| n.to_string());
        let grid = match self.adec_grid {
            AdecGrid::Capacity => "capacity",
            AdecGrid::Length => "length",
        };
        let nf4 = match self.nf4 {
            Nf4Kernel::Warp => "warp",
            Nf4Kernel::Rows => "rows",
        };
        let int8 = match self.int8 {
            Int8Kernel::Warp => "warp",
            Int8Kernel::Rows => "rows",
        };
        let gptq_dequant = match self.gptq_dequant {
            GptqDequant::Grid => "grid",
            GptqDequant::Tile => "tile",
        };
        let u = self.unverified();
        format!(
            "graph={} pdl={} fuse={} attn={attn} sampler={sampler} gemv={kernel}:{},{},{} adec_split={split} adec_grid={grid} nf4={nf4} int8={int8} gptq_dequant={gptq_dequant} ({})",
            self.graph as u8,
            self.pdl as u8,
            self.fuse as u8,
            g.stages,
            g.blocks_per_sm,
            g.prefetch_mb,
            if u.is_empty() { "all verified on a GPU, runs 4-5".to_string() } else { format!("{} unverified", u.len()) }
        )
    }
}

/// `name`'s value among `choices` (value, meaning); `default` when unset, and when not one of them
/// (then with a message naming `default_words`, the words for the default).
fn choice<T: Copy>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    choices: &[(&str, T)],
    default: T,
    default_words: &str,
) -> (T, Option<String>) {
    let Some(v) = lookup(name) else { return (default, None) };
    if let Some(&(_, t)) = choices.iter().find(|(c, _)| *c == v.trim()) {
        return (t, None);
    }
    let names: Vec<&str> = choices.iter().map(|(c, _)| *c).collect();
    (default, Some(format!("{name}={v:?} is not one of {}; using {default_words}", names.join(", "))))
}

/// An on/off switch: "1" / "on" and "0" / "off"; unset is `default`, anything else is said.
fn on_off(lookup: &impl Fn(&str) -> Option<String>, name: &str, default: bool) -> (bool, Option<String>) {
    let words = if default { "the default (on)" } else { "the default (off)" };
    choice(lookup, name, &[("1", true), ("on", true), ("0", false), ("off", false)], default, words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::launch::GemvConfig;

    fn read(vars: &[(&str, &str)]) -> (Tuning, Vec<String>) {
        Tuning::read(|n| vars.iter().find(|(k, _)| *k == n).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn defaults_are_the_verified_path() {
        let (t, w) = read(&[]);
        assert_eq!(t, Tuning::VERIFIED);
        assert!(w.is_empty());
        assert!(t.unverified().is_empty(), "{:?}", t.unverified());
        assert_eq!(t, Tuning::default());
        // The verified set, spelled out: graph + PDL, nothing fused, run 5's mma.sync prefill
        // attention, run 4's sampler and GEMV (2 stages, 8 blocks per SM, no prefetch), split and grid
        // by capacity, NF4 by gemv_nf4, Int8 by gemv_int8, GPTQ dequantized by dequant_gptq.
        assert!(t.graph && t.pdl && !t.fuse);
        assert_eq!(t.attn, Some(PrefillKernel::Mma));
        assert_eq!(t.nf4, Nf4Kernel::Warp);
        assert_eq!(t.int8, Int8Kernel::Warp);
        assert_eq!(t.gptq_dequant, GptqDequant::Grid);
        assert_eq!(t.sampler, SamplerPath::Run4);
        assert_eq!(t.gemv, GemvConfig { kernel: GemvKernel::Run4, stages: 2, blocks_per_sm: 8, prefetch_mb: 0 });
        assert_eq!((t.adec_split, t.adec_grid), (None, AdecGrid::Capacity));
        assert!(t.describe().contains("all verified"), "{}", t.describe());
    }

    #[test]
    fn each_switch_value_maps_to_its_path() {
        let one = |k: &str, v: &str| {
            let (t, w) = read(&[(k, v)]);
            assert!(w.is_empty(), "{k}={v}: {w:?}");
            t
        };
        assert!(!one("QWEN_CUDA_GRAPH", "0").graph);
        assert!(!one("QWEN_CUDA_GRAPH", "off").graph);
        assert!(!one("QWEN_PDL", "0").pdl);
        assert!(one("QWEN_PDL", "on").pdl);
        let f = one("QWEN_FUSE", "1");
        assert!(f.fuse && f.gemv.kernel == GemvKernel::Stream);
        assert!(!one("QWEN_FUSE", "0").fuse);
        assert_eq!(one("QWEN_ATTN", "run4").attn, Some(PrefillKernel::Run4));
        assert_eq!(one("QWEN_ATTN", "mma").attn, Some(PrefillKernel::Mma));
        assert_eq!(one("QWEN_ATTN", "wmma").attn, Some(PrefillKernel::Wmma));
        assert_eq!(one("QWEN_ATTN", "splitk").attn, None);
        assert_eq!(one("QWEN_SAMPLER", "run4").sampler, SamplerPath::Run4);
        assert_eq!(one("QWEN_SAMPLER", "block").sampler, SamplerPath::Block);
        assert_eq!(one("QWEN_SAMPLER", " auto ").sampler, SamplerPath::Auto);
        assert_eq!(one("QWEN_GEMV", "1,0").gemv, GemvConfig::new(1, 0));
        let p = one("QWEN_GEMV", "2,8,24").gemv;
        assert_eq!((p.kernel, p.prefetch_mb), (GemvKernel::Stream, 24), "a prefetch runs the stream kernel");
        assert_eq!(one("QWEN_ADEC_SPLIT", "512").adec_split, Some(512));
        assert_eq!(one("QWEN_ADEC_GRID", "length").adec_grid, AdecGrid::Length);
        // Every opt-in value is named as unverified; the verified ones are not.
        for (k, v) in [
            ("QWEN_FUSE", "1"),
            ("QWEN_ATTN", "wmma"),
            ("QWEN_ATTN", "splitk"),
            ("QWEN_SAMPLER", "block"),
            ("QWEN_SAMPLER", "auto"),
            ("QWEN_GEMV", "2,8,24"),
            ("QWEN_ADEC_SPLIT", "256"),
            ("QWEN_ADEC_GRID", "length"),
            ("QWEN_NF4", "rows"),
            ("QWEN_INT8", "rows"),
            ("QWEN_GPTQ_DEQUANT", "tile"),
        ] {
            let u = one(k, v).unverified();
            assert_eq!(u.len(), 1, "{k}={v}: {u:?}");
            assert!(u[0].starts_with(k), "{k}={v}: {u:?}");
        }
        for (k, v) in [
            ("QWEN_CUDA_GRAPH", "0"),
            ("QWEN_PDL", "0"),
            ("QWEN_GEMV", "1,0"),
            ("QWEN_ATTN", "run4"),
            ("QWEN_ATTN", "mma"),
            ("QWEN_NF4", "warp"),
            ("QWEN_INT8", "warp"),
            ("QWEN_GPTQ_DEQUANT", "grid"),
        ] {
            assert!(one(k, v).unverified().is_empty(), "{k}={v} was verified in run 4 or 5");
        }
        assert_eq!(one("QWEN_NF4", "rows").nf4, Nf4Kernel::Rows);
        assert_eq!(one("QWEN_INT8", "rows").int8, Int8Kernel::Rows);
        assert_eq!(one("QWEN_INT8", " warp ").int8, Int8Kernel::Warp);
        let d = one("QWEN_INT8", "rows").describe();
        assert!(d.contains("int8=rows") && d.contains("1 unverified"), "{d}");
        assert_eq!(one("QWEN_GPTQ_DEQUANT", "tile").gptq_dequant, GptqDequant::Tile);
        assert_eq!(one("QWEN_GPTQ_DEQUANT", " grid ").gptq_dequant, GptqDequant::Grid);
        let d = one("QWEN_GPTQ_DEQUANT", "tile").describe();
        assert!(d.contains("gptq_dequant=tile") && d.contains("1 unverified"), "{d}");
    }

    #[test]
    fn unknown_values_are_said_and_the_verified_default_used() {
        for (k, v) in [
            ("QWEN_FUSE", "yes"),
            ("QWEN_PDL", "2"),
            ("QWEN_CUDA_GRAPH", "false"),
            ("QWEN_ATTN", "MMA"),
            ("QWEN_SAMPLER", "multi"),
            ("QWEN_GEMV", "3,4"),
            ("QWEN_ADEC_SPLIT", "100"),
            ("QWEN_ADEC_GRID", "len"),
            ("QWEN_NF4", "row"),
            ("QWEN_INT8", "ROWS"),
            ("QWEN_GPTQ_DEQUANT", "tiles"),
        ] {
            let (t, w) = read(&[(k, v)]);
            assert_eq!(t, Tuning::VERIFIED, "{k}={v}");
            assert_eq!(w.len(), 1, "{k}={v}: {w:?}");
            assert!(w[0].contains(k) && w[0].contains(v), "{k}={v}: {w:?}");
        }
        let (_, w) = read(&[("QWEN_FUSE", "yes"), ("QWEN_ATTN", "x")]);
        assert_eq!(w.len(), 2, "one line per bad switch: {w:?}");
    }
}
