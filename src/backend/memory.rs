//! Device memory statistics, as a backend with its own memory manager reports them
//! (`Backend::memory_stats`). The CPU reference allocates from the host heap and reports none.

use serde::{Deserialize, Serialize};

/// Counters of a caching device allocator since the backend was made.
///
/// "In use" is memory held by live buffers; "reserved" adds the freed buffers kept in the
/// cache for reuse, and is what the device actually holds (compare with PyTorch's
/// `max_memory_reserved`; "in use" compares with `max_memory_allocated`). Sizes are the
/// allocator's size classes, not the bytes asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MemoryStats {
    /// Allocations that took new memory from the device.
    pub fresh_allocs: u64,
    /// Allocations served by a cached buffer of the same size class.
    pub cached_allocs: u64,
    pub in_use_bytes: u64,
    pub peak_in_use_bytes: u64,
    pub reserved_bytes: u64,
    pub peak_reserved_bytes: u64,
    /// bf16 GEMM operands read from a weight's bf16 shadow instead of being converted.
    pub shadow_hits: u64,
    /// Copies from device memory to the host the backend asked for (`Device::download`), and
    /// their bytes: what a loop that should keep its data on the device (decoding) must not
    /// grow with the vocabulary. The emulator's own host-side work (its stand-in GEMM) is not
    /// counted.
    pub downloads: u64,
    pub downloaded_bytes: u64,
    /// Copies from the host to device memory (`Device::upload` and `Device::write`), and their
    /// bytes: each a driver call of several microseconds on a GPU, so what a launch-bound
    /// loop (a decode step) must not multiply per layer or per sequence.
    pub uploads: u64,
    pub uploaded_bytes: u64,
}

impl MemoryStats {
    /// `"peak 12.3 MiB in use, 14.0 MiB reserved; 95% of allocations from the cache"`.
    pub fn summary(&self) -> String {
        let total = self.fresh_allocs + self.cached_allocs;
        let hit = if total == 0 { 0.0 } else { 100.0 * self.cached_allocs as f64 / total as f64 };
        format!(
            "peak {} in use, {} reserved; {hit:.0}% of {total} allocations from the cache",
            human_bytes(self.peak_in_use_bytes),
            human_bytes(self.peak_reserved_bytes)
        )
    }
}

/// Bytes in binary units with one decimal ("512 B", "1.5 KiB", "3.2 GiB").
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
