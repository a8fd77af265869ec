//! Place in the flow: beside it, below checkpoint (the weight maps it holds).
//! Read-only memory maps of weight files that turn "the file was truncated (or failed to read) while
//! mapped" into an error instead of a SIGBUS that kills the whole (embedding) process.
//!
//! A page of a `MAP_SHARED` file map that lies past the file's current end, or whose read fails
//! (EIO), raises SIGBUS on access. The CPU backend reads the map on every forward pass, so a shard
//! truncated under a loaded model (a re-download, `cp` over it, a full disk) would kill the program.
//!
//! What happens instead:
//! 1. Every [`MappedFile`] registers its address range in a fixed table of atomics ([`SLOTS`]).
//! 2. A process-wide SIGBUS handler (installed on the first map) looks the fault address up in the
//!    table. If it lies in a registered map, the handler maps anonymous zero pages over the map from
//!    the faulting page to its end (`MAP_FIXED`), records the fault in the slot and returns: the read
//!    is retried and sees zeros. Any other SIGBUS goes to the handler that was installed before ours
//!    (Rust's own, or the embedder's), or, when that was the default action, kills the process as
//!    it would have without us.
//! 3. Whoever reads weights checks [`MappedFile::fault`] after reading (the page-in with its
//!    finiteness check, the CUDA upload, and every CPU forward pass), and returns an error naming the
//!    file. The zeros read in the meantime are never returned as a result. The check also `fstat`s the
//!    file: a truncation inside the last page (which reads as zeros and never faults) or of pages not
//!    read yet is caught the same way.
//!
//! A file rewritten in place with the same size does not fault: the map shows the new bytes (as with
//! every mmap-based loader). Replace model files by writing a new file and renaming it over the old
//! one; the loaded model keeps the old inode.
//!
//! `QWEN_MMAP_GUARD=0` in the environment (read once, at the first map) leaves SIGBUS alone, for
//! embedders that handle it themselves; a truncated file then kills the process.
use crate::error::{Error, Result};
use memmap2::Mmap;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// Maps registered at once (the 7B checkpoint has 8 shards; a process rarely holds more than a few models).
const NUM_SLOTS: usize = 1024;
/// `fault` value of a slot whose map has not faulted.
const NO_FAULT: usize = usize::MAX;

/// One registered map: `[start, start + len)`; `start == 0` marks a free slot. Written only under
/// [`REGISTER`]; read (lock-free) by the signal handler.
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    /// Lowest offset (from `start`) that faulted, or NO_FAULT.
    fault: AtomicUsize,
}

#[allow(clippy::declare_interior_mutable_const)]
const FREE: Slot = Slot { start: AtomicUsize::new(0), len: AtomicUsize::new(0), fault: AtomicUsize::new(NO_FAULT) };
static SLOTS: [Slot; NUM_SLOTS] = [FREE; NUM_SLOTS];
/// Serialises registration (never taken by the signal handler).
static REGISTER: Mutex<()> = Mutex::new(());
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// The SIGBUS disposition before ours; written once, before our handler is installed.
struct Prev(libc::sigaction);
// SAFETY: plain data written once before the handler can run, then only read.
unsafe impl Sync for Prev {}
static PREV: OnceLock<Prev> = OnceLock::new();
/// Whether our handler is installed (false: `QWEN_MMAP_GUARD=0`, or sigaction failed).
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Install the handler once per process (unless `QWEN_MMAP_GUARD=0`). Returns whether it is active.
fn install() -> bool {
    *INSTALLED.get_or_init(|| {
        if std::env::var("QWEN_MMAP_GUARD").is_ok_and(|v| v == "0" || v == "off") {
            return false;
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if page > 0 {
            PAGE.store(page as usize, Ordering::Relaxed);
        }
        // SAFETY: zeroed sigaction structs are valid; sigaction reads `new` and writes `old`.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut old) != 0 {
                return false;
            }
            if PREV.set(Prev(old)).is_err() {
                return false;
            }
            let mut new: libc::sigaction = std::mem::zeroed();
            new.sa_sigaction = on_sigbus as *const () as usize;
            new.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut new.sa_mask);
            libc::sigaction(libc::SIGBUS, &new, std::ptr::null_mut()) == 0
        }
    })
}

/// The SIGBUS handler. Async-signal-safe: atomics, `mmap` and `sigaction` only.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = PAGE.load(Ordering::Relaxed);
    for slot in &SLOTS {
        let start = slot.start.load(Ordering::Acquire);
        if start == 0 || addr < start {
            continue;
        }
        let len = slot.len.load(Ordering::Acquire);
        if addr - start >= len {
            continue;
        }
        let from = addr & !(page - 1);
        let end = (start + len).div_ceil(page) * page;
        // SAFETY: [from, end) lies inside this live map (memmap2 maps whole pages from a page-aligned
        // start), so MAP_FIXED only replaces pages of the map itself, with zero pages. The map is
        // unmapped by its owner later as usual.
        let r = unsafe {
            libc::mmap(
                from as *mut libc::c_void,
                end - from,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r == libc::MAP_FAILED {
            break; // cannot repair: let the previous disposition handle the fault
        }
        slot.fault.fetch_min(addr - start, Ordering::AcqRel);
        return;
    }
    chain(sig, info, ctx);
}

/// Hand a SIGBUS that is not ours to the disposition installed before us.
fn chain(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let prev = PREV.get().map(|p| p.0.sa_sigaction).unwrap_or(libc::SIG_DFL);
    let flags = PREV.get().map(|p| p.0.sa_flags).unwrap_or(0);
    if prev == libc::SIG_DFL || prev == libc::SIG_IGN {
        // Restore the default and return: the faulting access runs again and the default action
        // (terminate with a core dump) happens, as it would have without this module.
        // SAFETY: a zeroed sigaction with SIG_DFL is valid.
        unsafe {
            let mut dfl: libc::sigaction = std::mem::zeroed();
            dfl.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &dfl, std::ptr::null_mut());
        }
    } else if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the previous handler was installed with SA_SIGINFO, so it has this signature.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(prev) };
        f(sig, info, ctx);
    } else {
        // SAFETY: a plain handler takes the signal number.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev) };
        f(sig);
    }
}

/// A read-only map of a whole file, registered with the SIGBUS guard while it lives.
pub struct MappedFile {
    mmap: Mmap,
    /// Index into SLOTS, None when the guard is off or the map is empty.
    slot: Option<usize>,
    /// The mapped file (None for anonymous memory), to notice a truncation that did not fault: one
    /// inside the last page, or of pages nobody has read yet.
    file: Option<File>,
}

impl MappedFile {
    /// Map `file` (opened from `path`, named in errors) read-only.
    pub fn map(file: &File, path: &Path) -> Result<Self> {
        // SAFETY: a read-only shared map. Truncation while mapped is turned into an error by the
        // guard (module doc); content rewritten in place shows through, as documented there.
        let mmap = unsafe { Mmap::map(file) }.map_err(|e| Error::io(path, e))?;
        let slot = if mmap.is_empty() || !install() { None } else { Some(register(&mmap, path)?) };
        let file = file.try_clone().map_err(|e| Error::io(path, e))?;
        Ok(MappedFile { mmap, slot, file: Some(file) })
    }

    /// A map of anonymous memory (no file, cannot fault): for in-memory tensors.
    pub fn anonymous(mmap: Mmap) -> Self {
        MappedFile { mmap, slot: None, file: None }
    }

    /// What went wrong with the file since it was mapped, if anything: a read of the map faulted (the
    /// file was truncated or hit an I/O error; what was read is zeros), or the file is now shorter than
    /// the map. Either way the bytes of the map can no longer be trusted. One `fstat`.
    pub fn fault(&self) -> Option<String> {
        if let Some(i) = self.slot {
            let off = SLOTS[i].fault.load(Ordering::Acquire);
            if off != NO_FAULT {
                return Some(format!("could not be read at byte {off} (truncated, or an I/O error)"));
            }
        }
        let size = self.file.as_ref()?.metadata().map(|m| m.len()).ok()?;
        (size < self.mmap.len() as u64)
            .then(|| format!("was truncated to {size} bytes (it had {} when it was opened)", self.mmap.len()))
    }
}

fn register(mmap: &Mmap, path: &Path) -> Result<usize> {
    let _g = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
    let i = SLOTS.iter().position(|s| s.start.load(Ordering::Relaxed) == 0).ok_or_else(|| {
        Error::bad_file(path, format!("cannot map: {NUM_SLOTS} model files are already memory-mapped in this process"))
    })?;
    let s = &SLOTS[i];
    s.fault.store(NO_FAULT, Ordering::Relaxed);
    s.len.store(mmap.len(), Ordering::Release);
    s.start.store(mmap.as_ptr() as usize, Ordering::Release);
    Ok(i)
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            let _g = REGISTER.lock().unwrap_or_else(|e| e.into_inner());
            // Nobody reads the map any more (we own it), so no fault can be in flight for it.
            SLOTS[i].start.store(0, Ordering::Release);
            SLOTS[i].len.store(0, Ordering::Release);
        }
    }
}

impl std::ops::Deref for MappedFile {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mmap
    }
}
