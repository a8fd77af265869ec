//! The Rust mirror of `cuda/params.h`: one `#[repr(C)]` parameter struct per kernel family, field for
//! field (names lower-cased; shapes and units are documented once, in the header).
//!
//! Each struct is generic over how it holds buffers and dimensions: the launchers take
//! `XParams<DevSlice, usize>` (buffers with their lengths, so that the launcher checks each against
//! the shape; dimensions as the host counts them) and launch its kernel view `XParams` =
//! `XParams<DevPtr, u32>` ([`XParams::kernel`]: every buffer as its address, every dimension checked
//! to fit the kernel's `uint32_t`), which has exactly the C layout. Fields marked "(launcher)" in
//! the header are set by the launcher; the caller leaves them at their default.
//!
//! Kernels added since H200 run 4 take the kernel view by value ([`Gpu::launch_params`]). Run 4's
//! verified kernels keep their positional parameters until a GPU session converts and verifies them
//! (cuda/README.md); their argument lists are built from the struct in [`positional`], from one list
//! of field names per kernel ([`POSITIONAL`]).
//!
//! Checked without a GPU by `tests/kernel_params.rs`: every struct here against bindgen's reading of
//! cuda/params.h (fields, order, types, size and alignment), and each entry of [`POSITIONAL`] against
//! its kernel's parameter list in cuda/*.cu (names and C types, in order).
//!
//! [`Gpu::launch_params`]: crate::backend::cuda::device::Gpu::launch_params
use super::dim_u32;
use crate::backend::cuda::device::{Arg, DevPtr, DevSlice, KernelParams};
use crate::error::Result;

/// One field of a kernel view, from the host form: a buffer's address, a dimension checked into a
/// `u32`, any other value as it is.
pub trait KernelField {
    type Kernel;
    fn kernel(self, what: &str) -> Result<Self::Kernel>;
}

impl KernelField for DevSlice {
    type Kernel = DevPtr;
    fn kernel(self, _: &str) -> Result<DevPtr> {
        Ok(self.ptr)
    }
}

impl KernelField for usize {
    type Kernel = u32;
    fn kernel(self, what: &str) -> Result<u32> {
        dim_u32(self, what)
    }
}

macro_rules! plain_field {
    ($($t:ty),*) => {$(
        impl KernelField for $t {
            type Kernel = $t;
            fn kernel(self, _: &str) -> Result<$t> {
                Ok(self)
            }
        }
    )*};
}
plain_field!(f32, f64, u64);

impl From<DevPtr> for Arg {
    fn from(p: DevPtr) -> Arg {
        Arg::Ptr(p)
    }
}
impl From<u32> for Arg {
    fn from(v: u32) -> Arg {
        Arg::U32(v)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Arg {
        Arg::F32(v)
    }
}
impl From<u64> for Arg {
    fn from(v: u64) -> Arg {
        Arg::U64(v)
    }
}
impl From<f64> for Arg {
    /// A `double` parameter: the same 8 bytes.
    fn from(v: f64) -> Arg {
        Arg::U64(v.to_bits())
    }
}

/// A field of a mirror struct: its name, its type as written here (`Buf`, `Dim`, `f32`, `f64`, `u64`)
/// and its byte offset in the kernel view.
pub type Field = (&'static str, &'static str, usize);

/// A mirror struct as the drift test sees it: C name, fields in order, size and alignment of the
/// kernel view.
pub type ParamsLayout = (&'static str, &'static [Field], usize, usize);

/// Declares the mirror structs (each `#[repr(C)]`; generic over `Buf`, a buffer: `DevPtr` in the
/// kernel view, and `Dim`, a dimension: `u32` in the kernel view, where the struct has one), their
/// kernel views and `$all`, the table the drift test reads. `host <...>` names the launchers' form.
macro_rules! kernel_params {
    ($all:ident; $(
        $(#[$m:meta])*
        pub struct $name:ident<$($g:ident = $gd:ty),*> host<$($h:ty),*> { $( $(#[$fm:meta])* pub $f:ident: $t:ident, )* }
    )*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Clone, Copy, Debug, Default, PartialEq)]
            pub struct $name<$($g = $gd),*> {
                $( $(#[$fm])* pub $f: $t, )*
            }

            impl $name<$($h),*> {
                /// The kernel's view: buffers as addresses, dimensions checked to fit a `u32`.
                pub fn kernel(&self) -> Result<$name> {
                    Ok($name { $( $f: self.$f.kernel(concat!(stringify!($name), ".", stringify!($f)))?, )* })
                }
            }

            // SAFETY: `#[repr(C)]` with the fields of the header's struct of the same name (cuda/params.h,
            // or cuda/quant_params.h for gemv_quant's `QUANT_LAYOUTS`), in its order and with its types (u32, f32, f64, u64, and DevPtr, a transparent u64 device
            // address); checked against bindgen by tests/kernel_params.rs.
            unsafe impl KernelParams for $name {}
        )*

        /// Every mirror struct: (name, fields, size, alignment of the kernel view).
        pub const $all: &[ParamsLayout] = &[$(
            (
                stringify!($name),
                &[$( (stringify!($f), stringify!($t), std::mem::offset_of!($name, $f)), )*],
                std::mem::size_of::<$name>(),
                std::mem::align_of::<$name>(),
            ),
        )*];
    };
}

pub(crate) use kernel_params;

kernel_params! {
    LAYOUTS;

    /// embedding.cu: `embedding`.
    pub struct EmbeddingParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub wte: Buf,
        pub ids: Buf,
        pub out: Buf,
        pub v: Dim,
        pub c: Dim,
    }

    /// fill.cu: `fill_uniform`.
    pub struct FillParams<Buf = DevPtr> host<DevSlice> {
        pub out: Buf,
        pub n: u64,
        pub key: u64,
        pub offset: f32,
        pub scale: f32,
    }

    /// rmsnorm.cu: `rmsnorm`, `add_rmsnorm` (y).
    pub struct RmsnormParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub x: Buf,
        pub y: Buf,
        pub w: Buf,
        pub out: Buf,
        pub c: Dim,
        pub eps: f32,
    }

    /// swiglu.cu: `swiglu`.
    pub struct SwigluParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub upgate: Buf,
        pub out: Buf,
        pub f: Dim,
        pub t: Dim,
    }

    /// rotary.cu: `qkv_rope_append`.
    pub struct RopeParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub qkv: Buf,
        pub bias: Buf,
        pub inv_freq: Buf,
        pub pos0: Buf,
        pub q: Buf,
        pub k_cache: Buf,
        pub v_cache: Buf,
        pub t: Dim,
        pub h: Dim,
        pub d: Dim,
        pub cap: Dim,
        pub s: Dim,
        pub use_logn: Dim,
    }

    /// attention_prefill.cu (positional), attention_prefill_mma.cu, attention_prefill_wmma.cu.
    pub struct AttentionPrefillParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub q: Buf,
        pub k_cache: Buf,
        pub v_cache: Buf,
        pub out: Buf,
        pub pos0: Buf,
        pub t: Dim,
        pub h: Dim,
        pub d: Dim,
        pub cap: Dim,
        pub scale: f32,
    }

    /// attention_decode.cu (positional), attention_decode_fused.cu.
    pub struct AttentionDecodeParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub q: Buf,
        pub k_cache: Buf,
        pub v_cache: Buf,
        pub part_o: Buf,
        pub part_ml: Buf,
        pub pos0: Buf,
        pub h: Dim,
        pub d: Dim,
        pub cap: Dim,
        pub split_len: Dim,
        pub n_splits: Dim,
        pub scale: f32,
        pub out: Buf,
        pub counters: Buf,
    }

    /// gemv.cu: run 4's `gemv`.
    pub struct GemvParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub w: Buf,
        pub x: Buf,
        pub y: Buf,
        pub n: Dim,
        pub k: Dim,
        pub b: Dim,
        pub stages: Dim,
    }

    /// gemv_fused.cu: `gemv_plain`, `gemv_swiglu`, `gemv_qkv_rope`, `gemv_residual_rmsnorm`.
    pub struct GemvFusedParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub w: Buf,
        pub x: Buf,
        pub k: Dim,
        pub b: Dim,
        pub cfg: Dim,
        pub y: Buf,
        pub n: Dim,
        pub f: Dim,
        pub out: Buf,
        pub bias: Buf,
        pub inv_freq: Buf,
        pub pos0: Buf,
        pub q: Buf,
        pub k_cache: Buf,
        pub v_cache: Buf,
        pub h: Dim,
        pub d: Dim,
        pub cap: Dim,
        pub s: Dim,
        pub use_logn: Dim,
        pub c: Dim,
        pub resid: Buf,
        pub w_ln: Buf,
        pub a: Buf,
        pub partials: Buf,
        pub counter: Buf,
        pub eps: f32,
    }

    /// sampling.cu (positional), sampling_fast.cu, sampling_topp.cu.
    pub struct SampleParams<Buf = DevPtr, Dim = u32> host<DevSlice, usize> {
        pub logits: Buf,
        pub v: Dim,
        pub vocab_len: Dim,
        pub flags: Buf,
        pub penalty: f32,
        pub ctx_ids: Buf,
        pub n_ctx: Dim,
        pub greedy: Dim,
        pub temperature: f32,
        pub top_k: Dim,
        pub top_p: f32,
        pub thr: f32,
        pub u: f64,
        pub probs: Buf,
        pub out_id: Buf,
        pub part: Buf,
        pub counter: Buf,
        pub state: Buf,
    }
}

/// Declares the positional argument lists of run 4's kernels: `[$kernel]` (the entry point without its
/// dtype suffix) takes these fields of `$ty`, in this order. Makes [`POSITIONAL`] (read by the drift
/// test) and one function per kernel in [`positional`] from the same list.
macro_rules! positional {
    ($( $kernel:ident($ty:ident) = [$($f:ident),* $(,)?]; )*) => {
        /// Run 4's kernels with positional parameters: (entry point without `_bf16` / `_f16` / `_f32`,
        /// struct, the fields it takes in order).
        pub const POSITIONAL: &[(&str, &str, &[&str])] =
            &[$( (stringify!($kernel), stringify!($ty), &[$(stringify!($f)),*]), )*];

        /// The argument list of each positional kernel, built from its family's struct.
        pub mod positional {
            use super::*;
            $(
                #[doc = concat!("`", stringify!($kernel), "`'s arguments.")]
                pub fn $kernel(p: &$ty) -> Vec<Arg> {
                    vec![$(Arg::from(p.$f)),*]
                }
            )*
        }
    };
}

positional! {
    embedding(EmbeddingParams) = [wte, ids, out, v, c];
    fill_uniform(FillParams) = [out, n, key, offset, scale];
    rmsnorm(RmsnormParams) = [x, w, out, c, eps];
    add_rmsnorm(RmsnormParams) = [x, y, w, out, c, eps];
    swiglu(SwigluParams) = [upgate, out, f, t];
    qkv_rope_append(RopeParams) = [qkv, bias, inv_freq, pos0, q, k_cache, v_cache, t, h, d, cap, s, use_logn];
    attention_prefill(AttentionPrefillParams) = [q, k_cache, v_cache, out, pos0, t, h, d, cap, scale];
    attention_decode(AttentionDecodeParams) =
        [q, k_cache, v_cache, part_o, part_ml, pos0, h, d, cap, split_len, n_splits, scale];
    attention_decode_combine(AttentionDecodeParams) = [part_o, part_ml, out, pos0, h, d, cap, split_len, n_splits];
    gemv(GemvParams) = [w, x, y, n, k, b, stages];
    sample_mark(SampleParams) = [ctx_ids, n_ctx, flags, v];
    sample_process(SampleParams) = [logits, v, vocab_len, flags, penalty];
    sample_draw(SampleParams) = [logits, v, greedy, temperature, top_k, top_p, u, probs, out_id];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_view_checks_dimensions_and_keeps_the_order() {
        let buf = |a: u64| DevSlice::new(DevPtr(a), 64);
        let p = RmsnormParams { x: buf(0x100), y: buf(0x200), w: buf(0x300), out: buf(0x400), c: 4096, eps: 1e-6 };
        let k = p.kernel().unwrap();
        assert_eq!(
            (k.x, k.y, k.w, k.out, k.c, k.eps),
            (DevPtr(0x100), DevPtr(0x200), DevPtr(0x300), DevPtr(0x400), 4096, 1e-6)
        );
        let args: Vec<u64> = positional::rmsnorm(&k).iter().map(|a| a.slot()).collect();
        assert_eq!(args, [0x100, 0x300, 0x400, 4096, 1e-6f32.to_bits() as u64], "x, w, out, C, eps: y skipped");
        let big = RmsnormParams { c: 1 << 32, ..p };
        let e = big.kernel().unwrap_err().to_string();
        assert!(e.contains("RmsnormParams.c"), "{e}");
        // The table the drift test reads has every struct, with the kernel view's layout.
        let (name, fields, size, align) = LAYOUTS.iter().find(|s| s.0 == "RmsnormParams").unwrap();
        assert_eq!((*name, fields.len(), *size, *align), ("RmsnormParams", 6, 40, 8));
        assert_eq!(fields[4], ("c", "Dim", 32));
    }
}
