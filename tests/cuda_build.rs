//! The CUDA side as far as a machine without a GPU can check it: the kernels were compiled and
//! embedded (required in CI via QWEN_REQUIRE_KERNELS=1) as a fatbin holding SASS for exactly the
//! architectures `kernels.rs` names plus the compute_80 PTX, every entry point is in the PTX, and
//! asking for the CUDA backend gives a clear error instead of a panic (`--backend auto` falls back to
//! the CPU). What cannot run here says `SKIP: ...` on the terminal (not through the test's captured
//! output), and QWEN_REQUIRE_KERNELS=1 / QWEN_REQUIRE_GPU=1 turn those skips into failures.
use qwen_rt::backend::{self, cuda, kernels, BackendKind, LoadOptions};
use qwen_rt::checkpoint::Checkpoint;
use std::io::Write;
use std::path::Path;

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Written to the stderr handle, not with eprintln!, so libtest's capture cannot hide it.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: {why}");
}

/// The architectures build.rs compiles SASS for: `QWEN_CUDA_ARCHS` when set (a comma list;
/// tools/gpu_build.sh builds only 90 and runs this test with it), else sm_80/86/89/90
/// (`kernels::KERNELS_FATBIN`'s doc).
fn sass_archs() -> Vec<u32> {
    let mut archs: Vec<u32> = match std::env::var("QWEN_CUDA_ARCHS") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').map(|a| a.trim().parse().expect("QWEN_CUDA_ARCHS: SM numbers like 90")).collect()
        }
        _ => vec![80, 86, 89, 90],
    };
    archs.sort_unstable();
    archs.dedup();
    archs
}

/// (kind, arch) of every entry of a fatbin: kind 1 = PTX, 2 = ELF (SASS). Layout (CUDA's
/// fatbinary.h): a 16-byte header {magic 0xBA55ED50 u32, version u16, header size u16, body size
/// u64}, then entries {kind u16, version u16, header size u32, payload size u64, …, arch u32 at
/// byte 28}, each followed by its payload.
fn fatbin_entries(fb: &[u8]) -> Vec<(u16, u32)> {
    let u16_at = |o: usize| u16::from_le_bytes(fb[o..o + 2].try_into().unwrap());
    let u32_at = |o: usize| u32::from_le_bytes(fb[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(fb[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(u32_at(0), 0xBA55ED50, "not a fatbin");
    let (start, body) = (u16_at(6) as usize, u64_at(8));
    assert!(start + body <= fb.len(), "fatbin body of {body} bytes past the end ({} bytes)", fb.len());
    let mut entries = Vec::new();
    let mut o = start;
    while o < start + body {
        let (kind, header, size) = (u16_at(o), u32_at(o + 4) as usize, u64_at(o + 8));
        assert!(header >= 32 && o + header + size <= start + body, "fatbin entry at {o}: bad sizes");
        entries.push((kind, u32_at(o + 28)));
        o += header + size;
    }
    entries
}

#[test]
fn kernels_embedded_when_required() {
    if !kernels::KERNELS_BUILT {
        assert!(!required("QWEN_REQUIRE_KERNELS"), "QWEN_REQUIRE_KERNELS=1 but the crate was built without kernels");
        // Without kernels the CUDA backend must say why.
        let e = cuda::probe().expect_err("no kernels, yet the CUDA backend probes as usable");
        assert!(e.to_string().contains("no CUDA kernels"), "{e}");
        skip("built without nvcc, no kernels embedded (QWEN_REQUIRE_KERNELS=1 makes this a failure)");
        return;
    }
    let ptx = std::str::from_utf8(kernels::KERNELS_PTX).expect("PTX is text");
    assert!(ptx.contains(".target sm_80"), "PTX targets compute_80");
    for name in kernels::ENTRY_POINTS {
        assert!(ptx.contains(&format!(".entry {name}(")), "entry point {name} missing from the PTX");
    }
    // Every kernel in the PTX is one the runtime knows (a kernel added without its entry is caught).
    let in_ptx = ptx.matches(".entry ").count();
    assert_eq!(in_ptx, kernels::ENTRY_POINTS.len(), "PTX has {in_ptx} entries, ENTRY_POINTS lists a different number");
    let entries = fatbin_entries(kernels::KERNELS_FATBIN);
    let mut sass: Vec<u32> = entries.iter().filter(|e| e.0 == 2).map(|e| e.1).collect();
    sass.sort_unstable();
    sass.dedup();
    assert_eq!(sass, sass_archs(), "SASS architectures in the fatbin ({entries:?})");
    let ptx_archs: Vec<u32> = entries.iter().filter(|e| e.0 == 1).map(|e| e.1).collect();
    assert_eq!(ptx_archs, [80], "PTX in the fatbin ({entries:?})");
}

#[test]
fn asking_for_cuda_without_a_gpu_is_a_clear_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/models/tiny-bf16");
    let ck = Checkpoint::open(&dir).unwrap();
    let opts = |backend| LoadOptions { backend, threads: 1, ..Default::default() };
    match cuda::probe() {
        Ok(()) => {
            let m = backend::load_model(&ck, &opts(BackendKind::Cuda)).unwrap();
            assert_eq!(m.backend_name(), "cuda");
            assert_eq!(backend::load_model(&ck, &opts(BackendKind::Auto)).unwrap().backend_name(), "cuda");
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("backend unavailable: ") && msg.len() > 30, "{msg}");
            // --backend cuda: the same clear error, no panic; --backend auto: the CPU.
            let err = backend::load_model(&ck, &opts(BackendKind::Cuda)).err().expect("cuda without a GPU loaded");
            assert_eq!(err.to_string(), msg);
            assert_eq!(backend::load_model(&ck, &opts(BackendKind::Auto)).unwrap().backend_name(), "cpu");
            assert!(!required("QWEN_REQUIRE_GPU"), "QWEN_REQUIRE_GPU=1 but {msg}");
            skip(&format!("no CUDA device ({msg}): the CUDA backend's load was not run"));
        }
    }
}
