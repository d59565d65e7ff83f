//! Small read-only index arrays uploaded once and reused while their contents repeat.
//!
//! A decode step calls `rope` twice per layer with the same positions and the same inverse
//! frequencies, writes the K and V cache rows of every layer with the same row list, and
//! gives every layer's attention the same work items: uploaded per call, that was ~4 small
//! host->device copies per layer (each a driver call of several microseconds on a GPU, the
//! step being launch bound). Kept here by content, each is copied once per step (the
//! positions, rows and items change every step) or once per run (the frequency table).
//!
//! Only for arrays no kernel writes: a cached buffer is shared by every call that uploads the
//! same bytes. Lookups compare bytes (small: at most `MAX_BYTES`), so a hit is exact.

use std::sync::{Arc, Mutex};

/// Entries kept, most recently used first. A decode step uses about six distinct arrays.
const CAPACITY: usize = 16;
/// Larger arrays (a long prefill's positions) are uploaded every time and not kept.
const MAX_BYTES: usize = 64 << 10;

pub(crate) struct UploadCache<M> {
    entries: Mutex<Vec<(Vec<u8>, Arc<M>)>>,
}

impl<M> Default for UploadCache<M> {
    fn default() -> Self {
        UploadCache { entries: Mutex::new(Vec::new()) }
    }
}

impl<M> UploadCache<M> {
    /// The device copy of `bytes`: a kept one with the same contents, else `upload(bytes)`
    /// (kept when small).
    pub(crate) fn get(&self, bytes: &[u8], upload: impl FnOnce(&[u8]) -> M) -> Arc<M> {
        if bytes.len() > MAX_BYTES {
            return Arc::new(upload(bytes));
        }
        let mut e = self.entries.lock().expect("upload cache");
        if let Some(i) = e.iter().position(|(k, _)| k.as_slice() == bytes) {
            let hit = e.remove(i);
            let mem = hit.1.clone();
            e.insert(0, hit);
            return mem;
        }
        let mem = Arc::new(upload(bytes));
        e.insert(0, (bytes.to_vec(), mem.clone()));
        e.truncate(CAPACITY);
        mem
    }

    /// Forgets every kept array (their memory goes back to the allocator once no caller
    /// holds it).
    pub(crate) fn clear(&self) {
        self.entries.lock().expect("upload cache").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn same_bytes_upload_once_and_the_oldest_entry_goes_first() {
        let cache = UploadCache::<Vec<u8>>::default();
        let n = Cell::new(0);
        let up = |b: &[u8]| {
            n.set(n.get() + 1);
            b.to_vec()
        };
        assert_eq!(*cache.get(&[1, 2], up), vec![1, 2]);
        assert_eq!(*cache.get(&[1, 2], up), vec![1, 2]);
        assert_eq!(n.get(), 1, "a repeat is a hit");
        assert_eq!(*cache.get(&[1, 3], up), vec![1, 3]);
        assert_eq!(n.get(), 2, "other bytes are a miss");
        for i in 0..CAPACITY as u8 {
            cache.get(&[9, i], up);
        }
        let before = n.get();
        cache.get(&[1, 2], up);
        assert_eq!(n.get(), before + 1, "evicted after CAPACITY newer entries");
        cache.get(&vec![0u8; MAX_BYTES + 1], up);
        cache.get(&vec![0u8; MAX_BYTES + 1], up);
        assert_eq!(n.get(), before + 3, "large arrays are not kept");
    }
}
