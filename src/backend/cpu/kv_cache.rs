//! Place in the flow: backend::cpu: the executor's KV cache (mod.rs is its only user).
//! KV cache of one sequence on the CPU: post-RoPE keys and values per layer, f32.
//!
//! Layout per layer: K and V each `[rows, W]` row-major, W = H*D, row = absolute position.
//! Memory grows on demand (at least `GROW_ROWS` rows at a time, at most doubling, never past the
//! capacity), so a 7B sequence with capacity 8192 does not pre-allocate 8 GiB of f32.
use crate::error::{Error, Result};

/// Smallest growth step, in rows (token positions).
const GROW_ROWS: usize = 256;

pub struct KvCache {
    /// Per layer: keys `[rows_allocated, W]`.
    k: Vec<Vec<f32>>,
    /// Per layer: values `[rows_allocated, W]`.
    v: Vec<Vec<f32>>,
    /// W = H*D.
    width: usize,
    /// Tokens stored (rows 0..len are valid in every layer).
    len: usize,
    /// Most tokens this cache may hold.
    capacity: usize,
    /// Rows currently allocated in every layer.
    rows: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers of width `width` (= H*D), holding at most `capacity`
    /// tokens. Allocates nothing yet.
    pub fn new(num_layers: usize, width: usize, capacity: usize) -> Self {
        KvCache { k: vec![Vec::new(); num_layers], v: vec![Vec::new(); num_layers], width, len: 0, capacity, rows: 0 }
    }

    /// Tokens stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Most tokens the cache may hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows currently allocated per layer (memory in use = 2 * L * rows * W * 4 bytes).
    pub fn allocated_rows(&self) -> usize {
        self.rows
    }

    /// Forget every token (memory is kept for reuse).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Make room for `rows` rows in every layer. `ContextFull` past the capacity; an error (not an
    /// abort) if the memory cannot be allocated. Rows past `len` are scratch until `advance`.
    pub fn reserve(&mut self, rows: usize) -> Result<()> {
        if rows > self.capacity {
            return Err(Error::ContextFull(format!(
                "{rows} tokens do not fit in a KV cache of {} tokens",
                self.capacity
            )));
        }
        if rows <= self.rows {
            return Ok(());
        }
        let target = rows.max(self.rows.saturating_mul(2)).max(GROW_ROWS).min(self.capacity);
        let elems = target.checked_mul(self.width).ok_or_else(|| Error::invalid("KV cache size overflows"))?;
        for buf in self.k.iter_mut().chain(self.v.iter_mut()) {
            buf.try_reserve_exact(elems - buf.len())
                .map_err(|e| Error::Backend(format!("cannot allocate the KV cache for {target} tokens: {e}")))?;
            buf.resize(elems, 0.0);
        }
        self.rows = target;
        Ok(())
    }

    /// Write K and V rows `[T, W]` of `layer` at positions `pos..pos+T`. Call `reserve` first.
    ///
    /// # Panics
    /// If the rows were not reserved or the slices are not `[T, W]` (internal invariants).
    pub fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        assert_eq!(k.len(), v.len());
        assert_eq!(k.len() % self.width, 0);
        let start = pos * self.width;
        self.k[layer][start..start + k.len()].copy_from_slice(k);
        self.v[layer][start..start + v.len()].copy_from_slice(v);
    }

    /// Keys and values of `layer`, rows `0..rows`: `([rows, W], [rows, W])`.
    ///
    /// # Panics
    /// If `rows` exceeds the reserved rows (internal invariant).
    pub fn layer(&self, layer: usize, rows: usize) -> (&[f32], &[f32]) {
        let n = rows * self.width;
        (&self.k[layer][..n], &self.v[layer][..n])
    }

    /// Mark `t` more rows (written by `write` in every layer) as valid.
    ///
    /// # Panics
    /// If that would pass the reserved rows (internal invariant).
    pub fn advance(&mut self, t: usize) {
        assert!(self.len + t <= self.rows, "KV cache advanced past its reserved rows");
        self.len += t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_in_steps_and_stops_at_capacity() {
        let mut c = KvCache::new(2, 4, 600);
        assert_eq!(c.allocated_rows(), 0);
        c.reserve(3).unwrap();
        assert_eq!(c.allocated_rows(), GROW_ROWS);
        c.write(1, 0, &[1.0; 12], &[2.0; 12]);
        c.advance(3);
        assert_eq!(c.len(), 3);
        c.reserve(300).unwrap();
        assert_eq!(c.allocated_rows(), 512);
        let (k, v) = c.layer(1, 3);
        assert_eq!((k.len(), k[11], v[11]), (12, 1.0, 2.0));
        c.reserve(513).unwrap();
        assert_eq!(c.allocated_rows(), 600);
        assert!(matches!(c.reserve(601), Err(Error::ContextFull(_))));
        c.clear();
        assert_eq!((c.len(), c.capacity()), (0, 600));
    }
}
