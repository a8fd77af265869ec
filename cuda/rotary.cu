// rotary.cu — after the QKV matmul: bias add, rotary embedding, logN query scaling, and the K/V
// append into the cache, fused in one pass over the f32 matmul output.
//
// What:    per token t at absolute position p = *pos0 + t, with row = qkv[t, :] + bias (f32 add,
//          bias widened from T) split as q_raw = row[0:P], k_raw = row[P:2P], v = row[2P:3P]
//          (head h = columns h·D .. h·D+D of each part):
//            rotate-half RoPE (GPT-NeoX) of q and k, for j < D/2:
//              theta = (float)p * inv_freq[j] (one f32 multiply), c = cosf(theta), s = sinf(theta)
//              x'[j] = x[j]·c - x[j+D/2]·s ;  x'[j+D/2] = x[j+D/2]·c + x[j]·s
//            logN (q only): q' *= (use_logn && p+1 > S) ? (float)(log(p+1) / log(S)) [double] : 1
//            q[t] = T(q'),  k_cache[p] = T(k'),  v_cache[p] = T(v).
//          A token with p >= cap writes nothing at all (neither its q row nor any cache row), so a
//          garbage *pos0 can never write out of bounds (p is computed in 64 bits: no wrap-around).
//          Arithmetic matches the CPU oracle operation for operation: products with __fmul_rn, sums
//          with __fadd_rn / __fsub_rn, so nvcc cannot contract them into FMAs; cosf / sinf are the
//          full-precision CUDA functions (max 2 ulp over the whole range; theta reaches ~32767 rad
//          at 32K positions), not __cosf — the only source of difference from Rust's f32::cos /
//          sin (glibc, < 1 ulp).
// Layout:  qkv [T, 3P] f32, bias [3P] T, inv_freq [D/2] f32, pos0 [1] u32, q [T, P] T,
//          k_cache / v_cache [cap, P] T (row = absolute position). P = H·D, D even (the launcher also
//          asks D <= 256, the config's limit; the kernel itself loops over any D).
// Launch:  grid (T, H), block (ROPE_BLOCK = 64), no dynamic smem. Block (t, h) does head h of
//          token t: thread j < D/2 (looping when D/2 > 64) computes cos / sin of its own pair j
//          (recomputed per head: D/2 cosf + sinf per block, cheap next to the loads), rotates
//          q[j], q[j+D/2], k[j], k[j+D/2]; then the D values of v are copied (biased). Thread 0
//          computes the logN factor into shared memory (one f64 log pair per block, not per
//          thread: FP64 is slow on consumer GPUs). Consecutive threads touch consecutive columns:
//          coalesced f32 loads, 2-byte stores. All accesses scalar (no alignment assumption).
//          At decode (T = 1) that is H blocks, each thread waiting for about one memory latency.
// Oracle:  per token: matmul output + bias, backend::cpu::rope on q and on k, model::logn_scale on q;
//          launcher launch::qkv_rope_append (src/backend/cuda/launch/rotary.rs).
#include "common.cuh"

namespace {

constexpr uint32_t ROPE_BLOCK = 64;

template <typename T>
__device__ __forceinline__ void rope_impl(const float* __restrict__ qkv, const T* __restrict__ bias,
                                          const float* __restrict__ inv_freq, const uint32_t* __restrict__ pos0,
                                          T* __restrict__ q, T* __restrict__ k_cache, T* __restrict__ v_cache,
                                          uint32_t Tn, uint32_t H, uint32_t D, uint32_t cap, uint32_t S,
                                          uint32_t use_logn) {
    __shared__ float rope_scale;  // logN factor of q at position p
    const uint32_t t = blockIdx.x, h = blockIdx.y;
    const uint32_t half = D / 2;
    // Uniform per block, before the barrier: the whole block leaves together.
    if (t >= Tn || h >= H) return;
    const uint64_t p64 = (uint64_t)(*pos0) + t;
    if (p64 >= cap) return;
    const uint32_t p = (uint32_t)p64;  // < cap <= u32 max

    if (threadIdx.x == 0) {
        float sc = 1.0f;
        if (use_logn != 0 && p64 + 1 > (uint64_t)S) sc = (float)(log((double)p64 + 1.0) / log((double)S));
        rope_scale = sc;
    }
    __syncthreads();
    const float scale = rope_scale;

    const size_t P = (size_t)H * D;
    const size_t hd = (size_t)h * D;                  // first column of head h in each part
    const float* qr = qkv + (size_t)t * 3 * P + hd;   // [D] raw q of head h
    const float* kr = qr + P;                         // [D] raw k
    const float* vr = qr + 2 * P;                     // [D] raw v
    const T* qb = bias + hd;                          // [D] bias of q, head h
    const T* kb = qb + P;                             // [D] bias of k
    const T* vb = qb + 2 * P;                         // [D] bias of v
    T* q_out = q + (size_t)t * P + hd;                // [D]
    T* k_out = k_cache + (size_t)p * P + hd;          // [D] cache row p, head h
    T* v_out = v_cache + (size_t)p * P + hd;          // [D]
    const float pos_f = (float)p;                     // round to nearest, as Rust's `usize as f32`

    for (uint32_t j = threadIdx.x; j < half; j += blockDim.x) {
        const uint32_t j2 = j + half;
        const float theta = __fmul_rn(pos_f, inv_freq[j]);
        const float cs = cosf(theta), sn = sinf(theta);
        {  // query
            const float x1 = __fadd_rn(qr[j], to_f32(qb[j]));
            const float x2 = __fadd_rn(qr[j2], to_f32(qb[j2]));
            const float r1 = __fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn));
            const float r2 = __fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn));
            q_out[j] = from_f32<T>(__fmul_rn(r1, scale));
            q_out[j2] = from_f32<T>(__fmul_rn(r2, scale));
        }
        {  // key
            const float x1 = __fadd_rn(kr[j], to_f32(kb[j]));
            const float x2 = __fadd_rn(kr[j2], to_f32(kb[j2]));
            k_out[j] = from_f32<T>(__fsub_rn(__fmul_rn(x1, cs), __fmul_rn(x2, sn)));
            k_out[j2] = from_f32<T>(__fadd_rn(__fmul_rn(x2, cs), __fmul_rn(x1, sn)));
        }
    }
    for (uint32_t c = threadIdx.x; c < D; c += blockDim.x) {
        v_out[c] = from_f32<T>(__fadd_rn(vr[c], to_f32(vb[c])));
    }
}

}  // namespace

extern "C" __global__ void __launch_bounds__(ROPE_BLOCK)
    qkv_rope_append_bf16(const float* qkv, const __nv_bfloat16* bias, const float* inv_freq, const uint32_t* pos0,
                         __nv_bfloat16* q, __nv_bfloat16* k_cache, __nv_bfloat16* v_cache, uint32_t T, uint32_t H,
                         uint32_t D, uint32_t cap, uint32_t S, uint32_t use_logn) {
    pdl_begin();
    rope_impl(qkv, bias, inv_freq, pos0, q, k_cache, v_cache, T, H, D, cap, S, use_logn);
}

extern "C" __global__ void __launch_bounds__(ROPE_BLOCK)
    qkv_rope_append_f16(const float* qkv, const __half* bias, const float* inv_freq, const uint32_t* pos0,
                        __half* q, __half* k_cache, __half* v_cache, uint32_t T, uint32_t H, uint32_t D,
                        uint32_t cap, uint32_t S, uint32_t use_logn) {
    pdl_begin();
    rope_impl(qkv, bias, inv_freq, pos0, q, k_cache, v_cache, T, H, D, cap, S, use_logn);
}
