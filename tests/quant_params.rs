//! cuda/quant_params.h (the quantized-weight kernels' by-value parameter structs) against its Rust
//! mirror in `backend::cuda::launch::gemv_quant`: for each struct, bindgen's field names in order, each
//! C `T*` a `u64` device address and each `uint32_t` a `u32` on the Rust side, and bindgen's size and
//! field offsets equal to Rust's `size_of` / `offset_of!`. A drift between the header and the launcher
//! (a field added, moved or retyped on one side) fails here instead of as garbage kernel arguments.
use qwen_rt::backend::cuda::launch::{QuantGptqParams, QuantInt8Params, QuantNf4Params};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The compiler's own headers (a pip libclang has no builtin stddef.h).
fn c_compiler_include_dir() -> Option<PathBuf> {
    let out = Command::new("cc").arg("-print-file-name=include").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("stddef.h").exists().then_some(dir)
}

fn bindgen_header() -> String {
    let header = Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda/quant_params.h");
    let mut builder = bindgen::Builder::default()
        .header(header.to_str().unwrap())
        .allowlist_type("Quant.*Params")
        .formatter(bindgen::Formatter::None)
        .clang_arg("-std=c11");
    if let Some(dir) = c_compiler_include_dir() {
        builder = builder.clang_arg(format!("-isystem{}", dir.display()));
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate())) {
        Ok(Ok(b)) => b.to_string(),
        Ok(Err(e)) => panic!("bindgen failed on {}: {e}", header.display()),
        Err(_) => panic!(
            "bindgen could not load libclang (LIBCLANG_PATH={:?}); see tests/c_abi/header.rs for how to install it",
            std::env::var("LIBCLANG_PATH").ok()
        ),
    }
}

/// bindgen's fields of struct `name`: (field, canonical type: "ptr" for any raw pointer, else the type).
fn c_fields(src: &str, name: &str) -> Vec<(String, String)> {
    let file = syn::parse_file(src).expect("bindgen output parses");
    for item in file.items {
        if let syn::Item::Struct(s) = item {
            if s.ident == name {
                return s
                    .fields
                    .iter()
                    .map(|f| {
                        let ty = match &f.ty {
                            syn::Type::Ptr(_) => "ptr".to_string(),
                            syn::Type::Path(p) => p.path.segments.last().unwrap().ident.to_string(),
                            other => panic!("{name}: unexpected field type {other:?}"),
                        };
                        (f.ident.as_ref().unwrap().to_string(), ty)
                    })
                    .collect();
            }
        }
    }
    panic!("bindgen output has no struct {name}")
}

/// The number in bindgen's layout assertion `["<what>"][... - N usize]`.
fn layout(src: &str, what: &str) -> usize {
    let at = src.find(&format!("\"{what}\"")).unwrap_or_else(|| panic!("bindgen has no layout line {what:?}"));
    let rest = &src[at..];
    let end = rest.find("usize]").expect("usize]");
    let start = rest[..end].rfind('-').expect("- N") + 1;
    rest[start..end].trim().parse().expect("a number")
}

/// Compare one struct: `rust` is (field, Rust type name, offset) in declaration order.
fn compare(src: &str, name: &str, size: usize, rust: &[(&str, &str, usize)]) -> Vec<String> {
    let mut problems = Vec::new();
    let c = c_fields(src, name);
    let names_c: Vec<&str> = c.iter().map(|(n, _)| n.as_str()).collect();
    let names_r: Vec<&str> = rust.iter().map(|(n, _, _)| *n).collect();
    if names_c != names_r {
        problems.push(format!("{name}: fields {names_c:?} in the header, {names_r:?} in Rust"));
        return problems;
    }
    for ((field, cty), (_, rty, off)) in c.iter().zip(rust) {
        let want = match cty.as_str() {
            "ptr" => "u64",
            "u32" => "u32",
            other => other,
        };
        if *rty != want {
            problems.push(format!("{name}::{field}: C {cty} needs Rust {want}, mirror has {rty}"));
        }
        let c_off = layout(src, &format!("Offset of field: {name}::{field}"));
        if c_off != *off {
            problems.push(format!("{name}::{field}: offset {c_off} in C, {off} in Rust"));
        }
    }
    let c_size = layout(src, &format!("Size of {name}"));
    if c_size != size {
        problems.push(format!("{name}: size {c_size} in C, {size} in Rust"));
    }
    problems
}

macro_rules! fields {
    ($t:ty: $($f:ident $ty:ident),* $(,)?) => {
        &[$((stringify!($f), stringify!($ty), offset_of!($t, $f))),*]
    };
}

#[test]
fn quant_params_header_matches_the_rust_mirror() {
    let src = bindgen_header();
    let mut problems = Vec::new();
    problems.extend(compare(
        &src,
        "QuantNf4Params",
        size_of::<QuantNf4Params>(),
        fields!(QuantNf4Params: codes u64, absmax u64, x u64, out u64, n u32, k u32),
    ));
    problems.extend(compare(
        &src,
        "QuantInt8Params",
        size_of::<QuantInt8Params>(),
        fields!(QuantInt8Params: codes u64, scb u64, x u64, out u64, n u32, k u32),
    ));
    problems.extend(compare(
        &src,
        "QuantGptqParams",
        size_of::<QuantGptqParams>(),
        fields!(QuantGptqParams: qweight u64, row_group u64, perm u64, scales u64, zeros u64, x u64, out u64,
            n u32, k u32, rows u32, groups u32),
    ));
    assert!(problems.is_empty(), "cuda/quant_params.h and launch::gemv_quant disagree:\n  {}", problems.join("\n  "));
}
