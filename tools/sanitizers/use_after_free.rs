//! Negative control for tools/sanitizers/run.sh: reads a heap buffer after freeing it.
//! AddressSanitizer must report a heap-use-after-free here, else the stress test's clean run proves nothing.
fn main() {
    let v = vec![1u8; 64];
    let p = v.as_ptr();
    drop(v);
    // SAFETY: none — this is the deliberate use after free the sanitizer must report.
    let x = unsafe { p.add(7).read_volatile() };
    println!("{x}");
}
