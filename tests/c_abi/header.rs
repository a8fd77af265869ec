//! Header drift: include/qwen.h (through bindgen) against the `extern "C"` surface of src/ffi.rs, both
//! ways. Each side is parsed with `syn` and reduced to the same `Api`: functions (parameter and return
//! types), structs (public fields, `#[repr(C)]`, bindgen's size and alignment), enums (variants and
//! values), typedefs and `QWEN_*` constants. Types are compared in a canonical form: the last path
//! segment of each name (`::std::os::raw::c_char` is `c_char`), parameter names of fn-pointer types
//! dropped.
use quote::ToTokens;
use qwen_rt::ffi::*;
use std::collections::BTreeMap;
use std::path::Path;
use syn::{Expr, Fields, FnArg, ForeignItem, GenericArgument, Item, Lit, PathArguments, ReturnType, Type, Visibility};

#[derive(Debug, Default)]
struct Api {
    /// name → (parameter types, return type)
    fns: BTreeMap<String, (Vec<String>, String)>,
    /// name → fields (name, type); opaque structs have none
    structs: BTreeMap<String, Vec<(String, String)>>,
    /// structs with fields that are not marked #[repr(C)]
    not_repr_c: Vec<String>,
    /// name → variants (name, value)
    enums: BTreeMap<String, Vec<(String, String)>>,
    aliases: BTreeMap<String, String>,
    /// QWEN_* constants → value
    consts: BTreeMap<String, String>,
    /// bindgen layout assertions: "Size of X" / "Alignment of X" → bytes
    layout: BTreeMap<String, usize>,
}

/// A type in canonical form (see the module documentation).
fn canon(t: &Type) -> String {
    match t {
        Type::Ptr(p) => format!("*{} {}", if p.mutability.is_some() { "mut" } else { "const" }, canon(&p.elem)),
        Type::Reference(r) => format!("&{}{}", if r.mutability.is_some() { "mut " } else { "" }, canon(&r.elem)),
        Type::Path(p) => {
            let seg = p.path.segments.last().expect("a path has a segment");
            let mut s = seg.ident.to_string();
            if let PathArguments::AngleBracketed(a) = &seg.arguments {
                let args: Vec<String> = a
                    .args
                    .iter()
                    .map(|g| match g {
                        GenericArgument::Type(t) => canon(t),
                        other => other.to_token_stream().to_string(),
                    })
                    .collect();
                s += &format!("<{}>", args.join(", "));
            }
            s
        }
        Type::BareFn(f) => {
            let abi = f.abi.as_ref().map_or(String::new(), |a| {
                format!("extern {:?} ", a.name.as_ref().map_or("C".to_string(), |n| n.value()))
            });
            let params: Vec<String> = f.inputs.iter().map(|a| canon(&a.ty)).collect();
            let unsafety = if f.unsafety.is_some() { "unsafe " } else { "" };
            format!("{unsafety}{abi}fn({}) -> {}", params.join(", "), ret(&f.output))
        }
        Type::Array(a) => format!("[{}; {}]", canon(&a.elem), a.len.to_token_stream()),
        Type::Paren(p) => canon(&p.elem),
        Type::Group(g) => canon(&g.elem),
        Type::Tuple(t) if t.elems.is_empty() => "()".into(),
        other => other.to_token_stream().to_string(),
    }
}

fn ret(r: &ReturnType) -> String {
    match r {
        ReturnType::Default => "()".into(),
        ReturnType::Type(_, t) => canon(t),
    }
}

fn is_qwen(name: &str) -> bool {
    name.starts_with("qwen_") || name.starts_with("QWEN_")
}

fn is_repr_c(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().filter(|a| a.path().is_ident("repr")).any(|a| {
        let mut c = false;
        let _ = a.parse_nested_meta(|m| {
            c |= m.path.is_ident("C");
            Ok(())
        });
        c
    })
}

/// A literal's value as text: strings without a trailing NUL (bindgen writes `b":tiny:\0"`), numbers
/// in base 10.
fn lit_value(e: &Expr) -> String {
    match e {
        Expr::Lit(l) => match &l.lit {
            Lit::Str(s) => s.value(),
            Lit::ByteStr(b) => {
                let v = b.value();
                String::from_utf8_lossy(v.strip_suffix(b"\0").unwrap_or(&v)).into_owned()
            }
            Lit::CStr(c) => c.value().to_string_lossy().into_owned(),
            Lit::Int(i) => i.base10_digits().to_string(),
            other => other.to_token_stream().to_string(),
        },
        Expr::Reference(r) => lit_value(&r.expr),
        other => other.to_token_stream().to_string(),
    }
}

/// bindgen's `const _: () = { ["Size of X"][size_of::<X>() - 16usize]; … };` → layout entries.
fn read_layout(e: &Expr, layout: &mut BTreeMap<String, usize>) {
    let Expr::Block(b) = e else { return };
    for stmt in &b.block.stmts {
        let syn::Stmt::Expr(Expr::Index(ix), _) = stmt else { continue };
        let (Expr::Array(arr), Expr::Binary(bin)) = (&*ix.expr, &*ix.index) else { continue };
        let Some(Expr::Lit(syn::ExprLit { lit: Lit::Str(what), .. })) = arr.elems.first() else { continue };
        let Expr::Lit(syn::ExprLit { lit: Lit::Int(n), .. }) = &*bin.right else { continue };
        let what = what.value();
        if what.starts_with("Size of ") || what.starts_with("Alignment of ") {
            layout.insert(what, n.base10_parse().expect("layout number"));
        }
    }
}

/// Record the C function `sig` (parameter and return types) in `api`.
fn add_fn(api: &mut Api, sig: &syn::Signature) {
    let name = sig.ident.to_string();
    let params = sig
        .inputs
        .iter()
        .map(|a| match a {
            FnArg::Typed(t) => canon(&t.ty),
            FnArg::Receiver(_) => panic!("fn {name}: a receiver in a C function"),
        })
        .collect();
    assert!(api.fns.insert(name.clone(), (params, ret(&sig.output))).is_none(), "fn {name} twice");
}

/// Read the C-facing items. `rust_side`: src/ffi.rs (exported fns are `extern "C" fn qwen_*`, struct
/// fields count when `pub`); else bindgen output (fns inside `extern "C" { }`, opaque structs have only
/// `_`-named fields).
fn read_api(src: &str, rust_side: bool) -> Api {
    let file = syn::parse_file(src)
        .unwrap_or_else(|e| panic!("not Rust ({}): {e}", if rust_side { "src/ffi.rs" } else { "bindgen" }));
    let mut api = Api::default();
    for item in &file.items {
        match item {
            Item::Fn(f) if rust_side && is_qwen(&f.sig.ident.to_string()) => {
                let c_abi = f.sig.abi.as_ref().is_some_and(|a| a.name.as_ref().is_none_or(|n| n.value() == "C"));
                if c_abi {
                    add_fn(&mut api, &f.sig);
                }
            }
            Item::ForeignMod(m) if !rust_side => {
                for fi in &m.items {
                    if let ForeignItem::Fn(f) = fi {
                        if is_qwen(&f.sig.ident.to_string()) && matches!(f.vis, Visibility::Public(_)) {
                            add_fn(&mut api, &f.sig);
                        }
                    }
                }
            }
            Item::Struct(s) if is_qwen(&s.ident.to_string()) => {
                let name = s.ident.to_string();
                let fields: Vec<(String, String)> = match &s.fields {
                    Fields::Named(n) => n
                        .named
                        .iter()
                        .filter(|f| {
                            let fname = f.ident.as_ref().unwrap().to_string();
                            if rust_side {
                                matches!(f.vis, Visibility::Public(_))
                            } else {
                                !fname.starts_with('_')
                            }
                        })
                        .map(|f| (f.ident.as_ref().unwrap().to_string(), canon(&f.ty)))
                        .collect(),
                    _ => Vec::new(),
                };
                if !fields.is_empty() && !is_repr_c(&s.attrs) {
                    api.not_repr_c.push(name.clone());
                }
                api.structs.insert(name, fields);
            }
            Item::Enum(e) if is_qwen(&e.ident.to_string()) => {
                let name = e.ident.to_string();
                let variants = e
                    .variants
                    .iter()
                    .map(|v| {
                        let (_, value) = v
                            .discriminant
                            .as_ref()
                            .unwrap_or_else(|| panic!("{name}::{} needs an explicit value", v.ident));
                        (v.ident.to_string(), lit_value(value))
                    })
                    .collect();
                api.enums.insert(name, variants);
            }
            Item::Type(t) if is_qwen(&t.ident.to_string()) => {
                api.aliases.insert(t.ident.to_string(), canon(&t.ty));
            }
            Item::Const(c) if is_qwen(&c.ident.to_string()) && matches!(c.vis, Visibility::Public(_)) => {
                api.consts.insert(c.ident.to_string(), lit_value(&c.expr));
            }
            Item::Const(c) if c.ident == "_" && !rust_side => read_layout(&c.expr, &mut api.layout),
            _ => {}
        }
    }
    api
}

/// (size, align) of the Rust type for a C struct or enum name.
fn rust_layout(name: &str) -> Option<(usize, usize)> {
    use std::mem::{align_of, size_of};
    macro_rules! l {
        ($t:ty) => {
            Some((size_of::<$t>(), align_of::<$t>()))
        };
    }
    match name {
        "qwen_model_options" => l!(qwen_model_options),
        "qwen_sampling" => l!(qwen_sampling),
        "qwen_session_options" => l!(qwen_session_options),
        "qwen_status" => l!(qwen_status),
        "qwen_backend" => l!(qwen_backend),
        "qwen_dtype" => l!(qwen_dtype),
        "qwen_quant" => l!(qwen_quant),
        "qwen_finish" => l!(qwen_finish),
        _ => None,
    }
}

/// bindgen's view of include/qwen.h, as Rust source.
fn bindgen_header() -> String {
    let header = Path::new(env!("CARGO_MANIFEST_DIR")).join("include/qwen.h");
    let builder = bindgen::Builder::default()
        .header(header.to_str().unwrap())
        .allowlist_item("(qwen|QWEN)_.*")
        .rustified_enum("qwen_.*");
    super::bindgen_run::generate(builder, "include/qwen.h")
}

#[test]
fn header_matches_the_rust_exports() {
    let c = read_api(&bindgen_header(), false);
    let ffi_src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi.rs")).unwrap();
    let r = read_api(&ffi_src, true);
    let mut problems = Vec::new();
    // Functions, both ways.
    for (name, (params, ret)) in &c.fns {
        match r.fns.get(name) {
            None => problems.push(format!("{name}: declared in qwen.h, not exported by src/ffi.rs")),
            Some((rp, rr)) => {
                if rp != params {
                    problems.push(format!(
                        "{name}: parameters differ:\n    qwen.h: ({})\n    ffi.rs: ({})",
                        params.join(", "),
                        rp.join(", ")
                    ));
                }
                if rr != ret {
                    problems.push(format!("{name}: return type differs: qwen.h {ret}, ffi.rs {rr}"));
                }
            }
        }
    }
    for name in r.fns.keys().filter(|n| !c.fns.contains_key(*n)) {
        problems.push(format!("{name}: exported by src/ffi.rs, not declared in qwen.h"));
    }
    // Structs: fields by name and type, in order; opaque handles stay opaque; layout as bindgen computed.
    for (name, fields) in &c.structs {
        match r.structs.get(name) {
            None => problems.push(format!("struct {name}: in qwen.h, not in src/ffi.rs")),
            Some(rf) if rf != fields => {
                problems.push(format!("struct {name}: fields differ:\n    qwen.h: {fields:?}\n    ffi.rs: {rf:?}"))
            }
            Some(_) => {}
        }
        if !fields.is_empty() {
            match rust_layout(name) {
                None => problems.push(format!("struct {name}: add it to rust_layout() in tests/c_abi.rs")),
                Some((size, align)) => {
                    let (cs, ca) =
                        (c.layout.get(&format!("Size of {name}")), c.layout.get(&format!("Alignment of {name}")));
                    if cs != Some(&size) || ca != Some(&align) {
                        problems.push(format!("struct {name}: C size/align {cs:?}/{ca:?}, Rust {size}/{align}"));
                    }
                }
            }
        }
    }
    for name in r.structs.keys().filter(|n| !c.structs.contains_key(*n)) {
        problems.push(format!("struct {name}: in src/ffi.rs, not in qwen.h"));
    }
    for name in &r.not_repr_c {
        problems.push(format!("struct {name}: not #[repr(C)] in src/ffi.rs"));
    }
    // Enums: variants and values; each as big as a C enum.
    for (name, variants) in &c.enums {
        match r.enums.get(name) {
            None => problems.push(format!("enum {name}: in qwen.h, not in src/ffi.rs")),
            Some(rv) if rv != variants => {
                problems.push(format!("enum {name}: variants differ:\n    qwen.h: {variants:?}\n    ffi.rs: {rv:?}"))
            }
            Some(_) => {}
        }
        match rust_layout(name) {
            Some((4, 4)) => {}
            other => problems
                .push(format!("enum {name}: Rust layout {other:?}, C enums are 4 bytes (add it to rust_layout())")),
        }
    }
    for name in r.enums.keys().filter(|n| !c.enums.contains_key(*n)) {
        problems.push(format!("enum {name}: in src/ffi.rs, not in qwen.h"));
    }
    if c.aliases != r.aliases {
        problems.push(format!("typedefs differ:\n    qwen.h: {:?}\n    ffi.rs: {:?}", c.aliases, r.aliases));
    }
    if c.consts != r.consts {
        problems.push(format!("macros/constants differ:\n    qwen.h: {:?}\n    ffi.rs: {:?}", c.consts, r.consts));
    }
    assert!(problems.is_empty(), "include/qwen.h and src/ffi.rs disagree:\n  {}", problems.join("\n  "));
    // The parsers must have found the surface (a parser that finds nothing would pass vacuously).
    assert!(c.fns.len() >= 10 && c.structs.len() >= 5 && c.enums.len() >= 4, "bindgen output not understood: {c:#?}");
}

/// The drift checker itself catches drift: a header with one changed parameter type, a missing
/// function, an extra field and a changed enum value is reported.
#[test]
fn header_drift_checker_detects_changes() {
    let real = bindgen_header();
    let c = read_api(&real, false);
    let ffi_src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi.rs")).unwrap();
    let tampered = ffi_src
        .replace("parse_special: i32,", "parse_special: u32,")
        .replace("pub extern \"C\" fn qwen_version()", "pub extern \"C\" fn qwen_version_renamed()")
        .replace("QWEN_ERR_BUSY = 9,", "QWEN_ERR_BUSY = 11,")
        .replace("    pub quant: i32,\n}", "    pub quant: i32,\n    pub extra: u32,\n}");
    assert_ne!(tampered, ffi_src);
    let r = read_api(&tampered, true);
    assert_ne!(c.fns["qwen_tokenize"], r.fns["qwen_tokenize"]);
    assert!(!r.fns.contains_key("qwen_version") && r.fns.contains_key("qwen_version_renamed"));
    assert_ne!(c.enums["qwen_status"], r.enums["qwen_status"]);
    assert_ne!(c.structs["qwen_model_options"], r.structs["qwen_model_options"]);
    // And the untampered source agrees on those items.
    let r = read_api(&ffi_src, true);
    assert_eq!(c.fns["qwen_tokenize"], r.fns["qwen_tokenize"]);
    assert_eq!(c.structs["qwen_model_options"], r.structs["qwen_model_options"]);
}
