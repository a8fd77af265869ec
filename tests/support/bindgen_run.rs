//! Running bindgen in the header drift tests (tests/c_abi/header.rs: include/qwen.h;
//! tests/kernel_params.rs: cuda/params.h, cuda/quant_params.h): the C compiler's own headers for a pip
//! libclang, and a failure that says how to install libclang. Included with `#[path]` by both.
use std::path::PathBuf;
use std::process::Command;

/// `cc -print-file-name=include`: the C compiler's own headers (a pip libclang has no stddef.h).
fn c_compiler_include_dir() -> Option<PathBuf> {
    let arch = std::env::consts::ARCH;
    let triple = match std::env::consts::OS {
        "linux" => format!("{arch}-unknown-linux-gnu"),
        "macos" => format!("{arch}-apple-darwin"),
        os => panic!("no C toolchain triple known for {arch}/{os}"),
    };
    let compiler =
        cc::Build::new().target(&triple).host(&triple).opt_level(0).cargo_metadata(false).try_get_compiler().ok()?;
    let out = Command::new(compiler.path()).arg("-print-file-name=include").output().ok()?;
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.join("stddef.h").exists().then_some(dir)
}

/// bindgen's output for `builder` (C11, with the compiler's headers) as Rust source; `what` names the
/// header in the failure messages.
pub fn generate(builder: bindgen::Builder, what: &str) -> String {
    let mut builder = builder.formatter(bindgen::Formatter::None).clang_arg("-std=c11");
    if let Some(dir) = c_compiler_include_dir() {
        builder = builder.clang_arg(format!("-isystem{}", dir.display()));
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || builder.generate())) {
        Ok(Ok(b)) => b.to_string(),
        Ok(Err(e)) => panic!("bindgen failed on {what}: {e}"),
        Err(_) => panic!(
            "bindgen could not load libclang, which this test needs to parse {what}. Install it:\n  \
             python3 -m venv /tmp/qwen-ci-tools/py && /tmp/qwen-ci-tools/py/bin/pip install libclang==18.1.1\n  \
             export LIBCLANG_PATH=$(echo /tmp/qwen-ci-tools/py/lib/python3*/site-packages/clang/native)\n\
             (or apt-get install libclang-dev), then rerun.\n(LIBCLANG_PATH={:?})",
            std::env::var("LIBCLANG_PATH").ok()
        ),
    }
}
