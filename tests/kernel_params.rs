//! Kernel parameter drift, without a GPU: the parameter structs of cuda/params.h (read by bindgen, as
//! tests/c_abi/header.rs reads include/qwen.h) against
//!   1. their Rust mirrors in src/backend/cuda/launch/params.rs (`launch::params::LAYOUTS`): the same
//!      structs, fields by name (case-insensitive: the header keeps the kernels' `C`, `H`, …) and type,
//!      in order, at the same offsets, with the same size and alignment;
//!   2. the kernels of cuda/*.cu: every `extern "C" __global__` entry point either takes one struct of
//!      the header by value, or is one of run 4's positional kernels (`launch::params::POSITIONAL`),
//!      whose parameter list must be, name for name and C type for C type, the fields its launcher
//!      passes (from the struct as bindgen read it; `const` is not compared: it is not part of the
//!      ABI, and a field one kernel reads and another writes is declared writable).
//!
//! A field added, removed, reordered or retyped on one side fails (`drift_is_detected` proves it on
//! tampered copies). Another header with its own mirror joins by one line in `FAMILIES`.
#[path = "support/bindgen_run.rs"]
mod bindgen_run;

use quote::ToTokens;
use qwen_rt::backend::cuda::launch::params::{ParamsLayout, LAYOUTS, POSITIONAL};
use qwen_rt::backend::cuda::launch::QUANT_LAYOUTS;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use syn::{Expr, Fields, Item, Lit, Type};

/// (header under the repository root, its Rust mirror's table): every struct of the header is
/// checked against the table and the table against the header.
const FAMILIES: &[(&str, &[ParamsLayout])] = &[("cuda/params.h", LAYOUTS), ("cuda/quant_params.h", QUANT_LAYOUTS)];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A struct as bindgen laid it out: fields (name, C type in canonical form, offset), size, align.
#[derive(Debug, Default, Clone, PartialEq)]
struct CStruct {
    fields: Vec<(String, String, usize)>,
    size: usize,
    align: usize,
}

/// A bindgen type in canonical C form: `*void`, `*f32`, `u32`, … (pointers without const: see the
/// module documentation).
fn canon(t: &Type) -> String {
    match t {
        Type::Ptr(p) => format!("*{}", canon(&p.elem)),
        Type::Path(p) => {
            let name = p.path.segments.last().expect("a path has a segment").ident.to_string();
            match name.as_str() {
                "c_void" => "void".into(),
                "c_uint" => "u32".into(),
                "c_float" => "f32".into(),
                "c_double" => "f64".into(),
                "c_ulonglong" => "u64".into(),
                "c_uchar" => "u8".into(),
                _ => name,
            }
        }
        other => other.to_token_stream().to_string(),
    }
}

/// bindgen's reading of a header's text (`name` for messages), as Rust source.
fn bindgen(name: &str, text: &str) -> String {
    bindgen_run::generate(bindgen::Builder::default().header_contents(name, text).allowlist_type(".*Params"), name)
}

/// The structs of bindgen's output: fields, then size, alignment and offsets from its layout
/// assertions (`["Size of X"][size_of::<X>() - 40usize]`, `["Offset of field: X::f"][…]`).
fn read_structs(src: &str) -> BTreeMap<String, CStruct> {
    let file = syn::parse_file(src).expect("bindgen output is Rust");
    let mut out: BTreeMap<String, CStruct> = BTreeMap::new();
    let mut layout: BTreeMap<String, usize> = BTreeMap::new();
    for item in &file.items {
        match item {
            Item::Struct(s) => {
                let Fields::Named(n) = &s.fields else { continue };
                let fields =
                    n.named.iter().map(|f| (f.ident.as_ref().unwrap().to_string(), canon(&f.ty), usize::MAX)).collect();
                out.insert(s.ident.to_string(), CStruct { fields, ..Default::default() });
            }
            Item::Const(c) if c.ident == "_" => {
                let Expr::Block(b) = &*c.expr else { continue };
                for stmt in &b.block.stmts {
                    let syn::Stmt::Expr(Expr::Index(ix), _) = stmt else { continue };
                    let (Expr::Array(arr), Expr::Binary(bin)) = (&*ix.expr, &*ix.index) else { continue };
                    let Some(Expr::Lit(syn::ExprLit { lit: Lit::Str(what), .. })) = arr.elems.first() else { continue };
                    let Expr::Lit(syn::ExprLit { lit: Lit::Int(v), .. }) = &*bin.right else { continue };
                    layout.insert(what.value(), v.base10_parse().expect("layout number"));
                }
            }
            _ => {}
        }
    }
    for (name, s) in out.iter_mut() {
        s.size = layout.get(&format!("Size of {name}")).copied().unwrap_or(usize::MAX);
        s.align = layout.get(&format!("Alignment of {name}")).copied().unwrap_or(usize::MAX);
        for f in &mut s.fields {
            f.2 = layout.get(&format!("Offset of field: {name}::{}", f.0)).copied().unwrap_or(usize::MAX);
        }
    }
    out
}

/// The header's structs against a mirror table: every difference, one line each.
fn compare_mirror(header: &str, c: &BTreeMap<String, CStruct>, rust: &[ParamsLayout]) -> Vec<String> {
    let mut problems = Vec::new();
    let rust_type = |t: &str| match t {
        "Buf" => "ptr".to_string(),
        "Dim" => "u32".to_string(),
        other => other.to_string(),
    };
    for (name, cs) in c {
        let Some(&(_, rf, size, align)) = rust.iter().find(|r| r.0 == name) else {
            problems.push(format!("{name}: in {header}, not in its Rust mirror"));
            continue;
        };
        let cf: Vec<(String, String, usize)> = cs
            .fields
            .iter()
            .map(|(n, t, o)| (n.to_lowercase(), if t.starts_with('*') { "ptr".into() } else { t.clone() }, *o))
            .collect();
        let rf: Vec<(String, String, usize)> = rf.iter().map(|&(n, t, o)| (n.to_string(), rust_type(t), o)).collect();
        if cf != rf {
            problems
                .push(format!("{name}: fields differ (name, type, offset):\n    {header}: {cf:?}\n    Rust:   {rf:?}"));
        }
        if (cs.size, cs.align) != (size, align) {
            problems.push(format!("{name}: size/align {}/{} in {header}, {size}/{align} in Rust", cs.size, cs.align));
        }
    }
    for r in rust.iter().filter(|r| !c.contains_key(r.0)) {
        problems.push(format!("{}: in the Rust mirror, not in {header}", r.0));
    }
    problems
}

/// One `extern "C" __global__` entry point: name and parameters (name, canonical C type).
#[derive(Debug)]
struct Entry {
    file: String,
    name: String,
    params: Vec<(String, String)>,
}

/// A C type as written in a kernel signature, canonical: `const` and `__restrict__` dropped, the
/// compute dtype T (`__nv_bfloat16`, `__half`) is `void` (the header's `void*`), fixed-width names.
fn canon_c(t: &str) -> String {
    let t = t.replace("__restrict__", " ").replace('*', " * ");
    let words: Vec<&str> = t.split_whitespace().filter(|w| *w != "const").collect();
    let stars = words.iter().filter(|w| **w == "*").count();
    let base = words.iter().filter(|w| **w != "*").copied().collect::<Vec<_>>().join(" ");
    let base = match base.as_str() {
        "__nv_bfloat16" | "__half" | "void" => "void",
        "float" => "f32",
        "double" => "f64",
        "uint32_t" | "unsigned" | "unsigned int" => "u32",
        "uint64_t" | "unsigned long long" => "u64",
        "uint8_t" | "unsigned char" => "u8",
        "int32_t" | "int" => "i32",
        other => other,
    };
    format!("{}{base}", "*".repeat(stars))
}

/// Every `extern "C" __global__` entry point of `src` (comments removed first).
fn entries(file: &str, src: &str) -> Vec<Entry> {
    let mut code = String::new();
    for line in src.lines() {
        code.push_str(line.split("//").next().unwrap());
        code.push('\n');
    }
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("extern \"C\" __global__") {
        rest = &rest[i + 21..];
        let open = rest.find('{').expect("a kernel body");
        let sig = &rest[..open];
        // After any __launch_bounds__(...): NAME(PARAMS)
        let sig = sig.trim_start().trim_start_matches("void").trim_start();
        let sig = if sig.starts_with("__launch_bounds__") { &sig[sig.find(')').unwrap() + 1..] } else { sig };
        let (name, params) = sig.split_once('(').expect("a parameter list");
        let params = params.trim_end().strip_suffix(')').expect("a closing parenthesis");
        let params = params
            .split(',')
            .map(|p| {
                let p = p.trim();
                let cut = p.rfind(|c: char| !(c.is_alphanumeric() || c == '_')).expect("type and name");
                (p[cut + 1..].to_string(), canon_c(&p[..=cut]))
            })
            .collect();
        out.push(Entry { file: file.to_string(), name: name.trim().to_string(), params });
    }
    out
}

/// Every entry point of the .cu sources against the header's structs and the positional table.
fn compare_kernels(
    sources: &[(String, String)],
    c: &BTreeMap<String, CStruct>,
    positional: &[(&str, &str, &[&str])],
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = vec![0usize; positional.len()];
    let mut n_entries = 0;
    for (file, src) in sources {
        for e in entries(file, src) {
            n_entries += 1;
            let base = ["_bf16", "_f16", "_f32"].iter().find_map(|s| e.name.strip_suffix(s)).unwrap_or(&e.name);
            if let Some(k) = positional.iter().position(|p| p.0 == base) {
                seen[k] += 1;
                let (_, st, fields) = positional[k];
                let Some(cs) = c.get(st) else {
                    problems.push(format!("{}: its struct {st} is not in the header", e.name));
                    continue;
                };
                // The launcher's fields, as the header names and types them.
                let want: Vec<(String, String)> = fields
                    .iter()
                    .map(|f| {
                        cs.fields.iter().find(|(n, ..)| n.eq_ignore_ascii_case(f)).map_or_else(
                            || (format!("{f} (no such field of {st})"), String::new()),
                            |(n, t, _)| (n.clone(), t.clone()),
                        )
                    })
                    .collect();
                if e.params != want {
                    problems.push(format!(
                        "{} ({}): positional parameters differ from the fields its launcher passes:\n    kernel:   {:?}\n    {st}: {want:?}",
                        e.name, e.file, e.params
                    ));
                }
            } else {
                // By value: exactly one parameter, a struct of the header.
                match e.params.as_slice() {
                    [(_, t)] if c.contains_key(t) => {}
                    other => problems.push(format!(
                        "{} ({}): neither a positional kernel of run 4 (launch::params::POSITIONAL) nor one \
                         parameter struct of the header by value: {other:?}",
                        e.name, e.file
                    )),
                }
            }
        }
    }
    for (k, n) in seen.iter().enumerate() {
        if *n == 0 {
            problems.push(format!("{}: in POSITIONAL, but no such kernel in cuda/*.cu", positional[k].0));
        }
    }
    assert!(n_entries >= 40, "only {n_entries} kernel entry points found: the signature parser is broken");
    problems
}

fn cu_sources() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("cuda"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(p).unwrap()))
        .collect()
}

fn header(path: &str) -> (String, BTreeMap<String, CStruct>) {
    let text = std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let structs = read_structs(&bindgen(path, &text));
    (text, structs)
}

#[test]
fn params_header_matches_the_rust_mirror() {
    let mut problems = Vec::new();
    for &(path, rust) in FAMILIES {
        let (_, c) = header(path);
        assert!(c.len() >= rust.len().min(1), "{path}: bindgen found no structs: {c:?}");
        problems.extend(compare_mirror(path, &c, rust));
    }
    assert!(
        problems.is_empty(),
        "kernel parameter structs and their Rust mirrors disagree:\n  {}",
        problems.join("\n  ")
    );
    // The parser must have found the structs (a parser finding nothing would pass vacuously).
    for &(path, rust) in FAMILIES {
        let (_, c) = header(path);
        assert_eq!(c.len(), rust.len(), "{path}");
        assert!(c.values().all(|s| s.size != usize::MAX && s.fields.iter().all(|f| f.2 != usize::MAX)), "{c:#?}");
    }
}

#[test]
fn kernels_take_the_params_structs() {
    let mut c = BTreeMap::new();
    for &(path, _) in FAMILIES {
        c.extend(header(path).1);
    }
    let problems = compare_kernels(&cu_sources(), &c, POSITIONAL);
    assert!(problems.is_empty(), "cuda/*.cu and the parameter structs disagree:\n  {}", problems.join("\n  "));
}

/// The checks catch drift: a field added, removed, reordered or retyped in the header, and a
/// positional kernel whose parameters were swapped or retyped, are each reported.
#[test]
fn drift_is_detected() {
    let (text, c) = header("cuda/params.h");
    assert!(compare_mirror("params.h", &c, LAYOUTS).is_empty());
    let tamper = |from: &str, to: &str| {
        assert!(text.contains(from), "tamper pattern {from:?} not in params.h");
        let t = text.replace(from, to);
        compare_mirror("tampered", &read_structs(&bindgen("tampered.h", &t)), LAYOUTS)
    };
    let added = tamper(
        "    float eps;       // layer_norm_epsilon\n} RmsnormParams;",
        "    float eps;\n    uint32_t extra;\n} RmsnormParams;",
    );
    assert!(added.iter().any(|p| p.starts_with("RmsnormParams: fields differ")), "added field: {added:?}");
    let removed = tamper("    uint32_t T;           // rows\n", "");
    assert!(removed.iter().any(|p| p.starts_with("SwigluParams: fields differ")), "removed field: {removed:?}");
    let reordered = tamper(
        "    uint32_t F;           // mlp width (half a row of upgate)\n    uint32_t T;           // rows\n",
        "    uint32_t T;\n    uint32_t F;\n",
    );
    assert!(reordered.iter().any(|p| p.starts_with("SwigluParams: fields differ")), "reordered: {reordered:?}");
    let retyped = tamper("    uint64_t key;    // the tensor's random key (synth::value)", "    uint32_t key;");
    assert!(retyped.iter().any(|p| p.starts_with("FillParams: fields differ")), "retyped: {retyped:?}");
    let renamed_struct = tamper("GemvParams", "GemvParams2");
    assert!(renamed_struct.iter().any(|p| p.contains("GemvParams: in the Rust mirror")), "{renamed_struct:?}");

    // The second family (cuda/quant_params.h) is read and compared the same way.
    let qtext = std::fs::read_to_string(root().join("cuda/quant_params.h")).unwrap();
    let from = "    uint32_t rows;\n    uint32_t groups;\n";
    assert!(qtext.contains(from), "tamper pattern {from:?} not in quant_params.h");
    let swapped = qtext.replace(from, "    uint32_t groups;\n    uint32_t rows;\n");
    let problems = compare_mirror("tampered", &read_structs(&bindgen("tampered.h", &swapped)), QUANT_LAYOUTS);
    assert!(problems.iter().any(|p| p.starts_with("QuantGptqParams: fields differ")), "quant swapped: {problems:?}");

    // The kernels' side: the untampered sources agree, a swapped or retyped positional kernel does not.
    let mut c = c;
    c.extend(header("cuda/quant_params.h").1);
    let sources = cu_sources();
    assert!(compare_kernels(&sources, &c, POSITIONAL).is_empty());
    let edit = |file: &str, from: &str, to: &str| {
        let mut s = sources.clone();
        let f = s.iter_mut().find(|(n, _)| n == file).unwrap();
        assert!(f.1.contains(from), "{from:?} not in {file}");
        f.1 = f.1.replace(from, to);
        compare_kernels(&s, &c, POSITIONAL)
    };
    let swapped = edit(
        "rmsnorm.cu",
        "rmsnorm_bf16(const float* x, const __nv_bfloat16* w, __nv_bfloat16* out, uint32_t C, float eps)",
        "rmsnorm_bf16(const float* x, const __nv_bfloat16* w, __nv_bfloat16* out, float eps, uint32_t C)",
    );
    assert!(swapped.iter().any(|p| p.starts_with("rmsnorm_bf16 (rmsnorm.cu)")), "swapped: {swapped:?}");
    let retyped = edit(
        "swiglu.cu",
        "swiglu_f16(const float* upgate, __half* out, uint32_t F, uint32_t T)",
        "swiglu_f16(const float* upgate, float* out, uint32_t F, uint32_t T)",
    );
    assert!(retyped.iter().any(|p| p.starts_with("swiglu_f16 (swiglu.cu)")), "retyped: {retyped:?}");
    let positional_by_value = edit(
        "gemv_fused.cu",
        "gemv_plain_f16(const GemvFusedParams p)",
        "gemv_plain_f16(const GemvFusedParams p, uint32_t extra)",
    );
    assert!(positional_by_value.iter().any(|p| p.starts_with("gemv_plain_f16")), "{positional_by_value:?}");
}
