//! Place in the flow: backend::cpu: **ops** → matmul → the executor (mod.rs).
//! The oracle ops: each is the oracle of the CUDA kernel with the same name (`rmsnorm` <->
//! `rmsnorm_bf16` …); they run on the current rayon pool (the model's pool inside `forward`, the
//! global one elsewhere). Shapes use the letters of mod.rs.
use crate::checkpoint::TensorView;
use crate::error::{Error, Result};
use crate::model;
use rayon::prelude::*;

/// Dot product with 16 independent f32 accumulators (vectorisable: 2 AVX / 4 SSE registers of
/// independent chains), then a fixed-order tree sum. The order is the same on every CPU.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const W: usize = 16;
    let (ca, cb) = (a.chunks_exact(W), b.chunks_exact(W));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    let mut acc = [0f32; W];
    for (x, y) in ca.zip(cb) {
        for i in 0..W {
            acc[i] += x[i] * y[i];
        }
    }
    let mut h = [0f32; 8];
    for i in 0..8 {
        h[i] = acc[i] + acc[i + 8];
    }
    let mut s = ((h[0] + h[4]) + (h[1] + h[5])) + ((h[2] + h[6]) + (h[3] + h[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// `out[t] = wte[tokens[t]]`: wte `[V, C]` (any dtype), out `[T, C]`.
pub fn embedding(wte: &TensorView, tokens: &[u32], out: &mut [f32]) -> Result<()> {
    let [v, c] = wte.shape[..] else {
        return Err(wte.error(format!("embedding: expected [V, C], got {:?}", wte.shape)));
    };
    if out.len() != tokens.len() * c {
        return Err(Error::invalid(format!(
            "embedding: output holds {} values, need {} x {c}",
            out.len(),
            tokens.len()
        )));
    }
    for (i, (&id, row)) in tokens.iter().zip(out.chunks_exact_mut(c)).enumerate() {
        if id as usize >= v {
            return Err(Error::invalid(format!("token id {id} at position {i} is out of range (vocab size {v})")));
        }
        wte.read_f32(id as usize * c, row);
    }
    Ok(())
}

/// RMSNorm per row with f32 statistics: `y = x * rsqrt(mean(x²) + eps) * w`.
/// x, out `[T, C]`, w `[C]`.
///
/// # Panics
/// If the lengths are not `[T, C]` / `[C]` (internal invariant: sizes come from the config).
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let c = w.len();
    assert!(c > 0 && x.len() % c == 0 && out.len() == x.len(), "rmsnorm: bad shapes");
    for (xr, yr) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        let inv = 1.0 / (dot(xr, xr) / c as f32 + eps).sqrt();
        for ((y, &xv), &wv) in yr.iter_mut().zip(xr).zip(w) {
            *y = (xv * inv) * wv;
        }
    }
}

/// Rotary embedding, rotate-half (GPT-NeoX) layout, in place. x `[T, H*D]`; row t is at absolute
/// position `pos0 + t`; θ_j = pos · inv_freq[j] (f32 multiply, like torch's outer product),
/// `x'[j] = x[j]·cos θ_j − x[j+D/2]·sin θ_j`, `x'[j+D/2] = x[j+D/2]·cos θ_j + x[j]·sin θ_j`.
///
/// # Panics
/// If `inv_freq.len() != D/2` or x is not `[T, H*D]` (internal invariant).
pub fn rope(x: &mut [f32], h: usize, d: usize, pos0: usize, inv_freq: &[f32]) {
    let half = d / 2;
    assert!(d % 2 == 0 && inv_freq.len() == half && h > 0 && x.len() % (h * d) == 0, "rope: bad shapes");
    let (mut cos, mut sin) = (vec![0f32; half], vec![0f32; half]);
    for (t, row) in x.chunks_exact_mut(h * d).enumerate() {
        let pos = (pos0 + t) as f32;
        for j in 0..half {
            let theta = pos * inv_freq[j];
            (cos[j], sin[j]) = (theta.cos(), theta.sin());
        }
        for head in row.chunks_exact_mut(d) {
            let (lo, hi) = head.split_at_mut(half);
            for j in 0..half {
                let (x1, x2) = (lo[j], hi[j]);
                lo[j] = x1 * cos[j] - x2 * sin[j];
                hi[j] = x2 * cos[j] + x1 * sin[j];
            }
        }
    }
}

/// Causal attention with an offset, per head, parallel over (token, head).
/// q `[T, H*D]` (after RoPE and logN), k / v `[Tk, H*D]` with Tk >= pos0 + T (cache rows),
/// out `[T, H*D]`. The query of row t is at absolute position p = pos0 + t and attends keys 0..=p:
/// `softmax(q·kᵀ / √D)` in f32 with max subtraction, then the weighted sum of v.
///
/// # Panics
/// If the shapes disagree (internal invariant).
pub fn attention(q: &[f32], k: &[f32], v: &[f32], pos0: usize, h: usize, d: usize, out: &mut [f32]) {
    let w = h * d;
    assert!(w > 0 && q.len() % w == 0 && out.len() == q.len() && k.len() == v.len(), "attention: bad shapes");
    let t = q.len() / w;
    assert!(k.len() >= (pos0 + t) * w, "attention: {} key rows, need {}", k.len() / w, pos0 + t);
    let scale = model::attention_scale(d);
    // out as [T*H, D]: chunk i is token i / H, head i % H.
    out.par_chunks_mut(d).enumerate().for_each_init(Vec::new, |scores: &mut Vec<f32>, (i, o)| {
        let (ti, head) = (i / h, i % h);
        let qh = &q[ti * w + head * d..][..d];
        attend_one(qh, k, v, pos0 + ti, w, head * d, scale, scores, o);
    });
}

/// One query row of one head at position p: keys/values rows 0..=p, columns `col..col+D` of the
/// `[rows, W]` cache; `scores` is scratch, `o` `[D]` receives the output.
#[allow(clippy::too_many_arguments)]
#[inline]
fn attend_one(
    qh: &[f32],
    k: &[f32],
    v: &[f32],
    p: usize,
    w: usize,
    col: usize,
    scale: f32,
    scores: &mut Vec<f32>,
    o: &mut [f32],
) {
    let d = qh.len();
    scores.clear();
    scores.extend((0..=p).map(|j| dot(qh, &k[j * w + col..][..d]) * scale)); // [p+1]
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    o.fill(0.0);
    for (j, &e) in scores.iter().enumerate() {
        let pj = e / sum;
        for (ov, &vv) in o.iter_mut().zip(&v[j * w + col..][..d]) {
            *ov += pj * vv;
        }
    }
}

/// SwiGLU of the Qwen MLP: `out = up * silu(gate)`, silu(g) = g / (1 + e^-g).
/// up = w1(x), gate = w2(x) (w2 is the gate). All `[T, F]`.
///
/// # Panics
/// If the lengths differ (internal invariant).
pub fn swiglu(up: &[f32], gate: &[f32], out: &mut [f32]) {
    assert!(up.len() == gate.len() && out.len() == up.len(), "swiglu: bad shapes");
    for ((o, &u), &g) in out.iter_mut().zip(up).zip(gate) {
        *o = u * (g / (1.0 + (-g).exp()));
    }
}

/// Residual add: `x += y`.
///
/// # Panics
/// If the lengths differ (internal invariant).
pub fn add(x: &mut [f32], y: &[f32]) {
    assert_eq!(x.len(), y.len(), "add: bad shapes");
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let naive: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - naive).abs() < 1e-5);
    }

    #[test]
    fn attention_first_query_sees_only_first_key() {
        // H=1, D=2, T=2, pos0=0: query 0 must return v[0] exactly whatever the keys.
        let q = [1.0, 0.0, 0.5, 0.5];
        let k = [0.3, -1.0, 9.0, 9.0];
        let v = [2.0, 3.0, -7.0, 5.0];
        let mut out = [0f32; 4];
        attention(&q, &k, &v, 0, 1, 2, &mut out);
        assert_eq!(&out[..2], &[2.0, 3.0]);
        // Query 1 attends both keys with softmax weights.
        let s = [(0.5 * 0.3 - 0.5) / 2f32.sqrt(), 9.0 / 2f32.sqrt()];
        let m = s[1];
        let e = [(s[0] - m).exp(), 1.0];
        let p0 = e[0] / (e[0] + e[1]);
        let want = [p0 * 2.0 + (1.0 - p0) * -7.0, p0 * 3.0 + (1.0 - p0) * 5.0];
        assert!((out[2] - want[0]).abs() < 1e-5 && (out[3] - want[1]).abs() < 1e-5, "{out:?} vs {want:?}");
    }

    #[test]
    fn rope_position_zero_is_identity_and_rotation_preserves_norm() {
        let inv = [1.0f32, 0.1];
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0, 0.5, -1.0, 2.0, 0.25]; // T=2, H=1, D=4
        let orig = x.clone();
        rope(&mut x, 1, 4, 0, &inv);
        assert_eq!(&x[..4], &orig[..4]);
        let n0: f32 = orig[4..].iter().map(|e| e * e).sum();
        let n1: f32 = x[4..].iter().map(|e| e * e).sum();
        assert!((n0 - n1).abs() < 1e-5);
        // pair (j=0): (x[0], x[2]) rotated by θ = 1 · 1.0
        let (c, s) = (1f32.cos(), 1f32.sin());
        assert!((x[4] - (0.5 * c - 2.0 * s)).abs() < 1e-6 && (x[6] - (2.0 * c + 0.5 * s)).abs() < 1e-6);
    }
}
