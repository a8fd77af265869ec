//! examples/chat.c, compiled and run: its output must equal the same conversation run in-process.
use super::common::*;
use qwen_rt::ffi::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

/// `target/<profile>` of this test binary (`target/<profile>/deps/c_abi-HASH`), after making sure the
/// cdylib is built there: `cargo test` builds the library for the tests as an rlib only, so this runs
/// `cargo build --lib` with the same cargo, manifest, profile and target directory (a no-op when it
/// is up to date).
fn built_library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir =
            exe.parent().and_then(Path::parent).expect("test binary in target/<profile>/deps").to_path_buf();
        let profile = profile_dir.file_name().unwrap().to_str().unwrap().to_string();
        let above = profile_dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--lib", "--manifest-path", concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")]);
        cmd.args(["--profile", if profile == "debug" { "dev" } else { &profile }]);
        // target/<profile> or target/<triple>/<profile> (a triple has at least two dashes).
        let above_name = above.file_name().unwrap().to_str().unwrap();
        if above.join("CACHEDIR.TAG").exists() || above_name.matches('-').count() < 2 {
            cmd.arg("--target-dir").arg(above);
        } else {
            // target/<triple>/<profile>
            cmd.args(["--target", above_name]);
            cmd.arg("--target-dir").arg(above.parent().unwrap());
        }
        let status = cmd.status().expect("run cargo build --lib");
        assert!(status.success(), "{cmd:?} failed");
        let so = profile_dir.join(if cfg!(target_os = "macos") { "libqwen_rt.dylib" } else { "libqwen_rt.so" });
        assert!(so.exists(), "{} missing after cargo build --lib", so.display());
        profile_dir
    })
}

/// Compile examples/chat.c (strict warnings as errors) and link it against libqwen_rt.so.
fn build_chat_example(out_dir: &Path) -> PathBuf {
    let lib_dir = built_library_dir();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let triple = host_triple();
    let compiler = cc::Build::new()
        .target(&triple)
        .host(&triple)
        .opt_level(1)
        .cargo_metadata(false)
        .warnings(true)
        .extra_warnings(true)
        .warnings_into_errors(true)
        .flag("-std=c11")
        .flag("-pedantic")
        .get_compiler();
    let exe = out_dir.join("chat");
    let mut cmd = compiler.to_command();
    cmd.arg("-I").arg(root.join("include")).arg(root.join("examples/chat.c")).arg("-o").arg(&exe);
    cmd.arg(format!("-L{}", lib_dir.display())).arg("-lqwen_rt");
    cmd.arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    cmd.args(["-lpthread", "-ldl", "-lm"]);
    let out = cmd.output().expect("run the C compiler");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

#[test]
fn c_chat_example_builds_and_chats() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_chat_example(dir.path());
    let script = "Hello there!\n\nWhat can you do?\n/reset\nWhat can you do?\n/exit\nnot read\n";
    let mut child = Command::new(&exe)
        .args([":tiny:", "6"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chat");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stderr.contains(&format!("qwen-rt {}", env!("CARGO_PKG_VERSION"))), "{stderr}");

    // The same conversation in-process, with the options chat.c uses (NULL model options, the model's
    // session defaults, max_new_tokens 6): the program must print exactly these answers.
    let mut m = null_mut();
    ok(unsafe { qwen_model_load(TINY.as_ptr(), null(), &mut m) });
    let mut o = session_options(m, 6, false);
    o.system = null();
    let mut s = null_mut();
    ok(unsafe { qwen_session_create(m, &o, &mut s) });
    let a1 = send(s, "Hello there!").0;
    let a2 = send(s, "What can you do?").0;
    ok(unsafe { qwen_session_reset(s) });
    let a3 = send(s, "What can you do?").0;
    assert!(!a1.is_empty() && !a2.is_empty() && !a3.is_empty());
    let expected = format!("qwen> {a1}\nqwen> {a2}\n(conversation reset)\nqwen> {a3}\n");
    assert_eq!(stdout, expected, "stderr:\n{stderr}");
    unsafe {
        ok(qwen_session_free(s));
        ok(qwen_model_free(m));
    }
}

#[test]
fn c_chat_example_reports_a_bad_model_path() {
    let dir = tempfile::tempdir().unwrap();
    let exe = build_chat_example(dir.path());
    let out = Command::new(&exe).arg("/nonexistent/model").stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("qwen_model_load: QWEN_ERR_IO: qwen_model_load: /nonexistent/model"), "{stderr}");
}
