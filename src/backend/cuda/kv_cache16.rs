//! KV caches in bf16 storage (`Backend::kv_cache_buf`).
//!
//! A rollout's decode steps read every cached key and value row of every layer once per new
//! token: at Qwen2.5-0.5B with 512 responses of ~600 tokens, 7.5 GB a step in f32, some 15x
//! the bf16 weights the step also reads, and the cache itself is the rollout's largest buffer
//! (14.5 GB for 512 x 1,152 tokens). Under flash attention the kernels that multiply K and V
//! already round them to bf16 (the forward of a training step or a prefill at its tensor
//! cores), so the cache keeps those roundings alone: half the memory and half the bytes a
//! decode step reads, and the decode kernels, which compute in f32 on what they read, now use
//! the K and V values the training forward uses (they read the f32 values before).
//!
//! Writers: `qkv_epilogue` (its cache rows) and `scatter_rows` round f32 rows into the cache.
//! Readers: the flash decode kernels (`_bf16` forms, widening as they read: the same bits as an
//! f32 cache holding the rounded values) and the flash forward (its `_bf16` kernels read K and V
//! in bf16 storage already). Any other op given the cache panics (`DevBuf::mem`), and
//! `download` widens it. Only where the flash kernels serve the shape (`use_flash`): the f32
//! reference attention has no bf16 form. `MMR1_KV_CACHE=f32` keeps f32 caches, to compare.

use super::device::{env_choice, Arg, Device};
use super::{CudaBackend, DevBuf};
use crate::backend::{AttnShape, Backend};

/// How a KV cache stores its values under flash attention (`MMR1_KV_CACHE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KvCacheStorage {
    /// The bf16 roundings alone, where the flash kernels serve the attention shape.
    #[default]
    Bf16,
    /// f32 values (the decode kernels then compute on unrounded K and V).
    F32,
}

impl KvCacheStorage {
    /// From `MMR1_KV_CACHE` (`bf16` or `f32`); unset means `Bf16`.
    pub fn from_env() -> Result<Self, String> {
        let choices = [("bf16", KvCacheStorage::Bf16), ("f32", KvCacheStorage::F32)];
        Ok(env_choice("MMR1_KV_CACHE", &choices)?.unwrap_or_default())
    }
}

/// A cache buffer as the kernels that write it take it: an (f32, bf16) pair of pointers, one
/// of them null.
pub(super) fn cache_dest<M>(buf: &DevBuf<M>) -> [Arg<'_, M>; 2] {
    match buf.bf16_mem() {
        Some(m) => [Arg::Null, Arg::Ptr(m)],
        None => [Arg::Ptr(buf.mem()), Arg::Null],
    }
}

impl<D: Device> CudaBackend<D> {
    /// Selects how KV caches made from now on store their values (see `KvCacheStorage`).
    pub fn set_kv_cache_storage(&mut self, s: KvCacheStorage) {
        self.kv_cache = s;
    }
    /// `set_kv_cache_storage` by value.
    pub fn with_kv_cache_storage(mut self, s: KvCacheStorage) -> Self {
        self.kv_cache = s;
        self
    }

    /// Whether `kv_cache_buf(_, shape)` stores bf16: asked for, and every kernel that will
    /// read the cache (flash decode and forward) has a bf16 form for the shape.
    pub(super) fn kv_cache_is_bf16(&self, shape: AttnShape) -> bool {
        self.kv_cache == KvCacheStorage::Bf16 && self.use_flash(shape)
    }

    /// `Backend::kv_cache_buf`.
    pub(super) fn new_kv_cache_buf(&self, n: usize, shape: AttnShape) -> DevBuf<D::Mem> {
        if !self.kv_cache_is_bf16(shape) {
            return self.zeros(n);
        }
        // Zeroed as f32 words (the bits of two bf16 zeros each).
        let words = n.div_ceil(2).max(1);
        let mem = self.dev.alloc(words * 4);
        self.elementwise(
            "fill_f32",
            words,
            &[Arg::Ptr(&mem), Arg::I64(words as i64), Arg::F32(0.0)],
        );
        DevBuf { stored: mem, len: n, bf16: true }
    }
}

/// `Backend::copy_rows_within` on either storage: `copy_rows_f32` moving 4-byte words (the
/// bits as they are: an f32 value, or two bf16 ones), source and destination the same memory.
/// The caller checked the rows (distinct destinations, none a source).
pub(super) fn copy_rows_within<D: Device>(
    be: &CudaBackend<D>,
    buf: &DevBuf<D::Mem>,
    src: &[usize],
    dst: &[usize],
    width: usize,
) {
    let words = if buf.bf16 {
        assert!(width.is_multiple_of(2), "copy_rows_within: an odd row width in bf16 storage");
        width / 2
    } else {
        width
    };
    let mem = Arg::Ptr(&buf.stored);
    be.launch_copy_rows([mem, Arg::Null], Some(dst), mem, Some(src), src.len(), words);
}
