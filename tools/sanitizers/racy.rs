//! Negative control for tools/sanitizers/run.sh: two threads write one static without synchronisation.
//! ThreadSanitizer must report a data race here (under the same flags and suppressions as the stress
//! test), else the stress test's clean run proves nothing.
use std::thread;

static mut COUNTER: u64 = 0;

fn bump() {
    for _ in 0..1000 {
        // SAFETY: none — this is the deliberate data race the sanitizer must report.
        unsafe {
            let p = &raw mut COUNTER;
            p.write_volatile(p.read_volatile() + 1);
        }
    }
}

fn main() {
    let a = thread::spawn(bump);
    let b = thread::spawn(bump);
    a.join().unwrap();
    b.join().unwrap();
    // SAFETY: both writers have been joined.
    println!("{}", unsafe { (&raw const COUNTER).read_volatile() });
}
