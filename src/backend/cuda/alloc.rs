//! The caching device allocator behind both CUDA devices (GPU and emulator).
//!
//! Freed buffers go back to a free list of their size class and the next allocation of that
//! class takes one, so a training step that repeats the shapes of the one before allocates
//! nothing from the device (device allocation synchronizes and costs microseconds to
//! milliseconds per call; a step makes thousands). The same idea as PyTorch's
//! CUDACachingAllocator, much simplified: one stream (every op of the backend is ordered on
//! it, so a block freed by one op can be handed to the next without an event), no block
//! splitting, and size classes instead of best fit.
//!
//! Size classes: 512 bytes and below share one class; above, 8 classes per power of two
//! (`2^k * (1 + j/8)`), so at most 12.5% of a buffer is rounding.
//!
//! `MMR1_CACHING_ALLOCATOR=0` turns the cache off (every free returns memory to the device,
//! every allocation is fresh; statistics are still kept), to measure what the cache buys.

use crate::backend::memory::MemoryStats;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The smallest size class, bytes.
pub const MIN_CLASS: usize = 512;

/// The size class (bytes actually reserved) of an allocation of `bytes`.
pub fn size_class(bytes: usize) -> usize {
    if bytes <= MIN_CLASS {
        return MIN_CLASS;
    }
    // base < bytes <= 2 * base; round up to a multiple of base / 8.
    let base = 1usize << (usize::BITS - 1 - (bytes - 1).leading_zeros());
    let step = base / 8;
    bytes.div_ceil(step) * step
}

/// Whether freed memory is cached, from `MMR1_CACHING_ALLOCATOR` (`1`/unset: on, `0`: off).
/// Panics on another value, naming the variable.
pub fn caching_from_env() -> bool {
    match std::env::var("MMR1_CACHING_ALLOCATOR").as_deref() {
        Err(_) | Ok("") | Ok("1") | Ok("on") => true,
        Ok("0") | Ok("off") => false,
        Ok(v) => panic!("MMR1_CACHING_ALLOCATOR={v:?}: expected 1 (cache freed memory) or 0"),
    }
}

/// Where a bf16 GEMM gets one of its operands (`Pool::bf16_operand` decides, so the GPU and
/// the emulator decide alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Operand {
    /// The buffer's bf16 shadow, made earlier and still valid.
    Shadow,
    /// Convert now and keep the conversion as the buffer's shadow (`refresh_bf16_shadow`).
    ConvertAndKeep,
    /// Convert now into a temporary dropped after the GEMM.
    Convert,
}

/// Free lists of blocks `R` (device memory that frees itself when dropped) by size class,
/// with the statistics. Shared (`Arc`) by the device and every buffer it handed out, so a
/// buffer can come home whenever it is dropped.
pub struct Pool<R> {
    caching: bool,
    state: Mutex<State<R>>,
    /// bf16 shadow copies of f32 buffers by the f32 buffer's address (see `shadow_*`).
    shadows: Mutex<HashMap<u64, Shadow<R>>>,
    /// How many shadows exist: lets the common case (none) skip the lock.
    n_shadows: AtomicUsize,
}

/// A bf16 copy of the first `elems` values of an f32 buffer, made right after the buffer was
/// last written (by the optimizer) or on first use of an uploaded buffer no kernel has written
/// (a loaded weight), and valid until anything else touches that buffer. `block` is None for
/// such an uploaded buffer before its first bf16 use ("pristine").
pub struct Shadow<R> {
    pub block: Option<R>,
    class: usize,
    pub elems: usize,
    /// The pool the block goes back to (a replayed stretch's own, `StretchPools`); None: this.
    home: Option<Arc<Pool<R>>>,
}

struct State<R> {
    free: BTreeMap<usize, Vec<R>>,
    stats: MemoryStats,
}

/// A block of device memory as the pool sees it: its address orders the free lists.
pub trait Block {
    fn addr(&self) -> u64;
}

impl Block for Vec<u8> {
    fn addr(&self) -> u64 {
        self.as_ptr() as u64
    }
}

impl<R: Block> Pool<R> {
    pub fn new(caching: bool) -> Arc<Self> {
        Arc::new(Pool {
            caching,
            state: Mutex::new(State { free: BTreeMap::new(), stats: MemoryStats::default() }),
            shadows: Mutex::new(HashMap::new()),
            n_shadows: AtomicUsize::new(0),
        })
    }

    pub fn caching(&self) -> bool {
        self.caching
    }

    /// A block for a request of size class `class`: a cached block of that class, else a
    /// cached one of the smallest larger class up to twice the size (a step whose shapes
    /// vary, or whose workspace took blocks its temporaries freed, then still allocates
    /// nothing), else `fresh(class)`. Returns the block, its class (give it back under that
    /// class) and whether it was cached (its contents are whatever its last user left).
    pub fn take(&self, class: usize, fresh: impl FnOnce(usize) -> R) -> (R, usize, bool) {
        self.take_preferring(class, &[], fresh)
    }

    /// [`Pool::take`], but a cached block at one of the addresses `prefer` (in order of
    /// preference) is taken first when one is free in the classes `take` would look at. A
    /// replayed decode step asks for the blocks the captured step got (`cuda::replay`), so
    /// that its work repeats address for address.
    ///
    /// Free lists hand out their lowest address first: which block a request gets depends on
    /// which blocks are free, not on the order they came back in, so a stretch of work that
    /// repeats from the same free blocks gets the same addresses whatever ran in between.
    pub fn take_preferring(
        &self,
        class: usize,
        prefer: &[u64],
        fresh: impl FnOnce(usize) -> R,
    ) -> (R, usize, bool) {
        let mut st = self.state.lock().unwrap();
        let range = class..=class.saturating_mul(2);
        let preferred = prefer.iter().find_map(|&a| {
            st.free
                .range(range.clone())
                .find_map(|(c, v)| v.iter().position(|r| r.addr() == a).map(|i| (*c, i)))
        });
        let cached = match preferred {
            Some((c, i)) => {
                let v = st.free.get_mut(&c).expect("the class just found");
                Some((v.remove(i), c))
            }
            None => st
                .free
                .range_mut(range)
                .find(|(_, v)| !v.is_empty())
                .map(|(c, v)| (v.pop().unwrap(), *c)),
        };
        let s = &mut st.stats;
        let got = cached.as_ref().map_or(class, |(_, c)| *c);
        s.in_use_bytes += got as u64;
        s.peak_in_use_bytes = s.peak_in_use_bytes.max(s.in_use_bytes);
        match cached {
            Some((r, c)) => {
                s.cached_allocs += 1;
                (r, c, true)
            }
            None => {
                s.fresh_allocs += 1;
                s.reserved_bytes += class as u64;
                s.peak_reserved_bytes = s.peak_reserved_bytes.max(s.reserved_bytes);
                drop(st);
                (fresh(class), class, false)
            }
        }
    }

    /// Returns a block of size class `class` (the buffer holding it was dropped).
    pub fn give_back(&self, class: usize, r: R) {
        let mut st = self.state.lock().unwrap();
        st.stats.in_use_bytes -= class as u64;
        if self.caching {
            // Kept in descending address order: `pop` gives the lowest.
            let v = st.free.entry(class).or_default();
            let at = v.partition_point(|x| x.addr() > r.addr());
            v.insert(at, r);
        } else {
            st.stats.reserved_bytes -= class as u64;
            drop(st);
            drop(r);
        }
    }

    /// Records `block` (size class `class`, from `take`) as the bf16 shadow of the buffer at
    /// `addr`, holding its first `elems` values; a previous shadow of it is freed.
    pub fn shadow_insert(&self, addr: u64, block: R, class: usize, elems: usize) {
        self.shadow_entry(addr, Shadow { block: Some(block), class, elems, home: None });
    }

    /// [`Pool::shadow_insert`] of a block taken from `home` (another pool), which gets it back
    /// when the shadow goes.
    pub fn shadow_insert_from(
        &self,
        addr: u64,
        block: R,
        class: usize,
        elems: usize,
        home: Arc<Pool<R>>,
    ) {
        self.shadow_entry(addr, Shadow { block: Some(block), class, elems, home: Some(home) });
    }

    /// Frees a shadow's block into the pool it came from.
    fn release(&self, s: Shadow<R>) {
        if let Some(b) = s.block {
            match s.home {
                Some(h) => h.give_back(s.class, b),
                None => self.give_back(s.class, b),
            }
        }
    }

    /// Marks the buffer at `addr` as uploaded and not written since: its first bf16 GEMM
    /// converts it into a shadow that later GEMMs reuse.
    pub fn mark_pristine(&self, addr: u64) {
        self.shadow_entry(addr, Shadow { block: None, class: 0, elems: 0, home: None });
    }

    fn shadow_entry(&self, addr: u64, entry: Shadow<R>) {
        let old = self.shadows.lock().unwrap().insert(addr, entry);
        match old {
            Some(o) => self.release(o),
            None => {
                self.n_shadows.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Forgets (and frees) the shadow of the buffer at `addr`, if any: the buffer is being
    /// written, or freed.
    pub fn shadow_forget(&self, addr: u64) {
        if self.n_shadows.load(Ordering::Relaxed) == 0 {
            return;
        }
        let old = self.shadows.lock().unwrap().remove(&addr);
        if let Some(o) = old {
            self.n_shadows.fetch_sub(1, Ordering::Relaxed);
            self.release(o);
        }
    }

    /// Forgets (and frees) every shadow whose block came from `home` (a replayed stretch's
    /// pool, at the start of its next step: those are the last step's activations, which the
    /// step writes again before reading; freed, they leave the pool in the same state at the
    /// start of every step).
    pub fn shadow_forget_from(&self, home: &Arc<Pool<R>>) {
        if self.n_shadows.load(Ordering::Relaxed) == 0 {
            return;
        }
        let gone: Vec<Shadow<R>> = {
            let mut map = self.shadows.lock().unwrap();
            let keys: Vec<u64> = map
                .iter()
                .filter(|(_, s)| s.home.as_ref().is_some_and(|h| Arc::ptr_eq(h, home)))
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        self.n_shadows.fetch_sub(gone.len(), Ordering::Relaxed);
        for s in gone {
            self.release(s);
        }
    }

    /// Where a bf16 GEMM gets its operand at `addr`, of which it reads `elems` values: the
    /// buffer's shadow if one covers them (counted in `shadow_hits`); else a conversion kept
    /// as its shadow if the buffer is pristine (a loaded weight) or `keep` (activation
    /// shadows: any operand, so that the next GEMM reading the unchanged buffer finds it);
    /// else a temporary conversion. Ask for one operand at a time and make its shadow before
    /// asking for the next: a GEMM of a buffer with itself then converts it once.
    pub fn bf16_operand(&self, addr: u64, elems: usize, keep: bool) -> Bf16Operand {
        let fallback = if keep { Bf16Operand::ConvertAndKeep } else { Bf16Operand::Convert };
        if self.n_shadows.load(Ordering::Relaxed) == 0 {
            return fallback;
        }
        let found = match self.shadows.lock().unwrap().get(&addr) {
            Some(Shadow { block: Some(_), elems: e, .. }) if *e >= elems => Bf16Operand::Shadow,
            Some(Shadow { block: None, .. }) => Bf16Operand::ConvertAndKeep,
            _ => fallback,
        };
        if found == Bf16Operand::Shadow {
            self.state.lock().unwrap().stats.shadow_hits += 1;
        }
        found
    }

    /// Runs `f` on the shadows of the buffers at `keys[i].0` that cover `keys[i].1` values
    /// (None where there is none).
    pub fn with_shadows<T, const N: usize>(
        &self,
        keys: [(u64, usize); N],
        f: impl FnOnce([Option<&R>; N]) -> T,
    ) -> T {
        if self.n_shadows.load(Ordering::Relaxed) == 0 {
            return f([None; N]);
        }
        let map = self.shadows.lock().unwrap();
        let found = keys.map(|(addr, elems)| {
            map.get(&addr).filter(|s| s.elems >= elems).and_then(|s| s.block.as_ref())
        });
        f(found)
    }

    /// How many buffers have a bf16 shadow now.
    pub fn shadow_count(&self) -> usize {
        if self.n_shadows.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.shadows.lock().unwrap().values().filter(|s| s.block.is_some()).count()
    }

    /// Counts one copy of `bytes` bytes from the device to the host (`MemoryStats::downloads`).
    pub fn note_download(&self, bytes: usize) {
        let mut st = self.state.lock().unwrap();
        st.stats.downloads += 1;
        st.stats.downloaded_bytes += bytes as u64;
    }

    /// Counts one copy of `bytes` bytes from the host to the device (`MemoryStats::uploads`).
    pub fn note_upload(&self, bytes: usize) {
        let mut st = self.state.lock().unwrap();
        st.stats.uploads += 1;
        st.stats.uploaded_bytes += bytes as u64;
    }

    pub fn stats(&self) -> MemoryStats {
        self.state.lock().unwrap().stats
    }

    /// Frees every cached block (the device keeps only memory in use); returns the bytes freed.
    pub fn empty_cache(&self) -> u64 {
        let blocks: Vec<(usize, Vec<R>)> = {
            let mut st = self.state.lock().unwrap();
            let freed: u64 = st.free.iter().map(|(c, v)| (*c * v.len()) as u64).sum();
            st.stats.reserved_bytes -= freed;
            std::mem::take(&mut st.free).into_iter().collect()
        };
        blocks.iter().map(|(c, v)| (*c * v.len()) as u64).sum()
    }
}

/// The pools of repeated stretches (`cuda::replay`): while a stretch of tag `t` is open, the
/// device allocates from tag `t`'s own pool, whose blocks come back to it wherever they are
/// freed. What else runs between two steps (a sampler's temporaries, a download) then never
/// moves a step's blocks, so each step gets the addresses the captured step got. A few
/// shapes are kept (a rollout's tail shrinks the step shape by shape), least recently used
/// first out; an evicted pool frees its blocks once the last of them comes back.
pub struct StretchPools<R> {
    pools: Mutex<Vec<(u64, Arc<Pool<R>>)>>,
    open: Mutex<Option<Arc<Pool<R>>>>,
    /// Tags seen lately: a pool is made for a tag seen before (a step shape that repeats),
    /// not for one-off shapes (a prefill of some length), which would only hold memory.
    seen: Mutex<Vec<u64>>,
}

/// Stretch pools kept at once.
const STRETCH_POOLS: usize = 16;

impl<R: Block> Default for StretchPools<R> {
    fn default() -> Self {
        StretchPools {
            pools: Mutex::new(Vec::new()),
            open: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
        }
    }
}

impl<R: Block> StretchPools<R> {
    /// Allocations go to tag `tag`'s pool until `leave`, if the tag was seen before (true);
    /// the first time, nothing changes (false: the caller runs that stretch as plain work).
    pub fn enter(&self, tag: u64) -> bool {
        {
            let mut seen = self.seen.lock().unwrap();
            if !seen.contains(&tag) {
                seen.insert(0, tag);
                seen.truncate(4 * STRETCH_POOLS);
                return false;
            }
        }
        let mut pools = self.pools.lock().unwrap();
        let pool = match pools.iter().position(|(t, _)| *t == tag) {
            Some(i) => pools.remove(i).1,
            None => Pool::new(true),
        };
        pools.insert(0, (tag, pool.clone()));
        pools.truncate(STRETCH_POOLS);
        *self.open.lock().unwrap() = Some(pool);
        true
    }
    pub fn leave(&self) {
        *self.open.lock().unwrap() = None;
    }
    /// The open stretch's pool, if one is open.
    pub fn current(&self) -> Option<Arc<Pool<R>>> {
        self.open.lock().unwrap().clone()
    }
    /// Frees every cached block of every stretch pool (out of device memory).
    pub fn empty_caches(&self) {
        for (_, p) in self.pools.lock().unwrap().iter() {
            p.empty_cache();
        }
    }
    /// `main`'s counters with the stretch pools' memory added (peaks added too: an upper bound).
    pub fn stats_with(&self, main: MemoryStats) -> MemoryStats {
        let mut s = main;
        for (_, p) in self.pools.lock().unwrap().iter() {
            let z = p.stats();
            s.fresh_allocs += z.fresh_allocs;
            s.cached_allocs += z.cached_allocs;
            s.in_use_bytes += z.in_use_bytes;
            s.peak_in_use_bytes += z.peak_in_use_bytes;
            s.reserved_bytes += z.reserved_bytes;
            s.peak_reserved_bytes += z.peak_reserved_bytes;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_the_request_with_at_most_an_eighth_of_rounding() {
        for bytes in (1..5000).chain([1 << 20, (1 << 20) + 1, 3 << 29, usize::MAX >> 8]) {
            let c = size_class(bytes);
            assert!(c >= bytes, "{bytes} -> {c}");
            assert!(c == MIN_CLASS || (c - bytes) * 8 <= bytes, "{bytes} -> {c}");
            assert_eq!(size_class(c), c, "a class is its own class");
        }
        assert_eq!(size_class(513), 576);
        assert_eq!(size_class(1024), 1024);
        assert_eq!(size_class(1025), 1152);
    }

    #[test]
    fn freed_blocks_are_reused_by_class_and_counted() {
        let pool = Pool::<Vec<u8>>::new(true);
        let (a, _, hit) = pool.take(1024, |c| vec![0; c]);
        assert!(!hit);
        let (b, _, _) = pool.take(2048, |c| vec![0; c]);
        pool.give_back(1024, a);
        let (_, _, hit) = pool.take(2048, |c| vec![0; c]);
        assert!(!hit, "another class is not reused");
        let (_, _, hit) = pool.take(1024, |c| vec![0; c]);
        assert!(hit);
        pool.give_back(2048, b);
        let s = pool.stats();
        assert_eq!((s.fresh_allocs, s.cached_allocs), (3, 1));
        assert_eq!(s.in_use_bytes, 1024 + 2048);
        assert_eq!(s.peak_in_use_bytes, 1024 + 2048 + 2048);
        assert_eq!(s.reserved_bytes, 1024 + 2048 + 2048);
        assert_eq!(pool.empty_cache(), 2048);
        assert_eq!(pool.stats().reserved_bytes, 1024 + 2048);
    }

    #[test]
    fn a_shadow_is_found_until_forgotten_and_its_memory_comes_back() {
        use Bf16Operand::*;
        let pool = Pool::<Vec<u8>>::new(true);
        let (b, _, _) = pool.take(512, |c| vec![7; c]);
        pool.shadow_insert(0x1000, b, 512, 100);
        pool.mark_pristine(0x3000);
        let ask = |addr, elems| pool.bf16_operand(addr, elems, false);
        assert_eq!(
            [ask(0x1000, 100), ask(0x1000, 101), ask(0x3000, 1), ask(0x5000, 1)],
            [Shadow, Convert, ConvertAndKeep, Convert],
            "found, too short, pristine, absent"
        );
        assert_eq!(pool.stats().shadow_hits, 1);
        let found = pool.with_shadows([(0x1000, 100), (0x1000, 101), (0x3000, 1)], |s| {
            s.map(|x| x.is_some_and(|v| v[0] == 7))
        });
        assert_eq!(found, [true, false, false]);
        let (b2, _, _) = pool.take(512, |c| vec![8; c]);
        pool.shadow_insert(0x1000, b2, 512, 100);
        assert_eq!((pool.shadow_count(), pool.stats().in_use_bytes), (1, 512));
        pool.shadow_forget(0x3000);
        assert_eq!(ask(0x3000, 1), Convert, "no longer pristine");
        pool.shadow_forget(0x1000);
        assert_eq!((pool.shadow_count(), pool.stats().in_use_bytes), (0, 0));
        assert!(pool.with_shadows([(0x1000, 1)], |[s]| s.is_none()));
        assert_eq!(pool.stats().shadow_hits, 1, "only a found shadow counts");
    }

    #[test]
    fn with_activation_shadows_every_operand_without_a_shadow_keeps_its_conversion() {
        use Bf16Operand::*;
        let pool = Pool::<Vec<u8>>::new(true);
        // No shadow exists at all (the lock-free path) and with some.
        assert_eq!(pool.bf16_operand(0x1000, 4, true), ConvertAndKeep);
        let (b, _, _) = pool.take(512, |c| vec![0; c]);
        pool.shadow_insert(0x1000, b, 512, 4);
        assert_eq!(pool.bf16_operand(0x1000, 4, true), Shadow);
        assert_eq!(pool.bf16_operand(0x1000, 5, true), ConvertAndKeep, "too short: redo it");
        assert_eq!(pool.bf16_operand(0x2000, 4, true), ConvertAndKeep);
        assert_eq!(pool.bf16_operand(0x2000, 4, false), Convert);
    }

    #[test]
    fn a_larger_free_block_up_to_twice_the_size_serves_a_request() {
        let pool = Pool::<Vec<u8>>::new(true);
        let (a, _, _) = pool.take(2048, |c| vec![0; c]);
        pool.give_back(2048, a);
        let (_, class, hit) = pool.take(512, |c| vec![0; c]);
        assert!(!hit && class == 512, "4x larger is not used");
        let (b, class, hit) = pool.take(1152, |c| vec![0; c]);
        assert!(hit && class == 2048 && b.len() == 2048);
        assert_eq!(pool.stats().in_use_bytes, 512 + 2048);
        pool.give_back(class, b);
        assert_eq!(pool.stats().reserved_bytes, 512 + 2048);
    }

    #[test]
    fn without_caching_every_allocation_is_fresh() {
        let pool = Pool::<Vec<u8>>::new(false);
        let (a, _, _) = pool.take(1024, |c| vec![0; c]);
        pool.give_back(1024, a);
        let (_, _, hit) = pool.take(1024, |c| vec![0; c]);
        assert!(!hit);
        let s = pool.stats();
        assert_eq!((s.fresh_allocs, s.cached_allocs, s.reserved_bytes), (2, 0, 1024));
        assert_eq!(s.peak_reserved_bytes, 1024);
    }
}
