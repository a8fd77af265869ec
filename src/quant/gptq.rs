//! GPTQ linears as AutoGPTQ packs them (the official Qwen-7B-Chat-Int4 / -Int8 checkpoints, spec
//! §7.3). The stored weight is W `[K, N]` (x·W, the transpose of `nn.Linear`):
//! - `qweight` i32 `[K·bits/32, N]`: row k = (32/bits)·r + j is bits `bits·j ..` of word `[r, n]`
//!   (LSB first);
//! - `qzeros` i32 `[G, N·bits/32]`: column n = (32/bits)·c + j in bits `bits·j ..` of word
//!   `[g, c]`; the stored zero is the true zero minus one;
//! - `scales` f16 `[G, N]`; `g_idx` i32 `[K]`: the group of input k, in any order (act-order).
//!
//! W[k, n] = scales[g, n] · (q[k, n] − (z_stored[g, n] + 1)), g = g_idx[k], computed in f32 (exact:
//! an f16 scale times an integer below 2^9 fits the f32 mantissa).

/// Bits of field j of a word (`bits` 4 or 8).
#[inline]
pub fn field(word: u32, bits: u32, j: usize) -> u32 {
    (word >> (bits as usize * j)) & ((1u32 << bits) - 1)
}

/// Unpack `qzeros` `[G, N·bits/32]` (LE i32 words) into true zeros `z_stored + 1`, `[G, N]`.
pub fn unpack_zeros(qzeros: &[u8], groups: usize, n: usize, bits: u32) -> Vec<i32> {
    let per = 32 / bits as usize;
    let cols = n / per;
    let mut out = vec![0i32; groups * n];
    for g in 0..groups {
        for c in 0..cols {
            let w = u32::from_le_bytes(qzeros[(g * cols + c) * 4..][..4].try_into().expect("4 bytes"));
            for j in 0..per {
                out[g * n + c * per + j] = field(w, bits, j) as i32 + 1;
            }
        }
    }
    out
}
