//! What a launch may write, for the several-schedule comparison of [`super::EmuDevice`]: the
//! buffers it names as pointer arguments, and the buffers that device tables among those
//! arguments point into. A multi-buffer launch (`cuda::multi`: `fill_many_f32`,
//! `adamw_many_f32`) reads a table of addresses and writes buffers it never names; each
//! schedule must start from the same contents of those too, and they must come out the same,
//! or an in-place update (`p -= ...`) would be applied once per schedule and a race through
//! a table would go unseen.
//!
//! Tables are recognised by their contents, with nothing declared per kernel: every aligned
//! 8-byte word of an argument buffer that is an address inside a live emulator allocation
//! names that allocation. A float or integer pair that happens to look like one only adds a
//! buffer to the comparison, restored and compared like the others (which a buffer the kernel
//! does not write passes): a false match costs time, never a wrong result or a false report.
//! A list kept by hand could miss a new table kernel, which would then go unchecked. Only
//! launches under several schedules pay: one read of the argument buffers, beside the copies
//! the comparison makes anyway. One level deep: a table's rows are not themselves scanned.
//! Only the launching device's own allocations count: another device's buffers may be in use
//! by another thread (tests run in parallel), and restoring them would race with it.

use super::EmuMem;
use crate::backend::cuda::device::Arg;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Every live `EmuMem` of the process, base address -> (bytes, owner): the addresses of live
/// allocations are distinct, whichever device made them; the owner names the device.
static LIVE: Mutex<BTreeMap<u64, (usize, Owner)>> = Mutex::new(BTreeMap::new());

/// The device an allocation belongs to (the address of its allocator).
pub(super) type Owner = usize;

/// `mem` was handed out by the device `owner` (`EmuDevice::alloc`).
pub(super) fn note_alloc(mem: &EmuMem, owner: Owner) {
    LIVE.lock().unwrap().insert(mem.ptr as u64, (mem.bytes(), owner));
}

/// The memory at `base` went back to the pool or became a shadow block (no longer an `EmuMem`).
pub(super) fn note_free(base: u64) {
    LIVE.lock().unwrap().remove(&base);
}

/// How a launch reaches a buffer, for the report of a schedule-dependent result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Pointer argument `i` (index among all the launch's arguments).
    Arg(usize),
    /// An address in word `word` (8-byte words from the start) of the buffer of argument `arg`.
    Table { arg: usize, word: usize },
}

/// A whole allocation a launch may write.
pub(super) struct Region {
    base: *const u8,
    bytes: usize,
    via: Via,
}

/// A pointer argument of a launch: its index among the arguments, its buffer's address and
/// length. Taken when the launch is made; the buffers' contents are read when it runs (a unit
/// of work may run later: `cuda::replay`).
#[derive(Clone, Copy)]
pub(super) struct ArgBuf {
    arg: usize,
    base: usize,
    bytes: usize,
}

/// Each pointer argument of `args` once, in order.
pub(super) fn arg_bufs(args: &[Arg<'_, EmuMem>]) -> Vec<ArgBuf> {
    let mut v: Vec<ArgBuf> = Vec::new();
    for (i, a) in args.iter().enumerate() {
        if let Arg::Ptr(m) = a {
            if !v.iter().any(|b| b.base == m.ptr as usize) {
                v.push(ArgBuf { arg: i, base: m.ptr as usize, bytes: m.bytes() });
            }
        }
    }
    v
}

/// The buffers of a launch with pointer arguments `args` on the device `owner`: each argument
/// once, then each live allocation of that device an argument's words point into, once (in
/// argument and word order).
pub(super) fn regions(args: &[ArgBuf], owner: Owner) -> Vec<Region> {
    let mut v: Vec<Region> = args
        .iter()
        .map(|b| Region { base: b.base as *const u8, bytes: b.bytes, via: Via::Arg(b.arg) })
        .collect();
    // The span of live addresses, then the words inside it (without the lock: other threads
    // allocate meanwhile), then which allocations those are (with it).
    let (lo, hi) = {
        let live = LIVE.lock().unwrap();
        match (live.first_key_value(), live.last_key_value()) {
            (Some((&lo, _)), Some((&last, &(bytes, _)))) => (lo, last + bytes as u64),
            _ => return v,
        }
    };
    let mut found: Vec<(u64, usize, usize)> = Vec::new(); // address, argument, word
    for r in &v {
        let Via::Arg(arg) = r.via else { unreachable!() };
        // SAFETY: an argument's allocation holds `bytes` bytes (a whole number of u64 words,
        // 256-byte aligned); no launch runs while it is read.
        let words = unsafe { std::slice::from_raw_parts(r.base as *const u64, r.bytes / 8) };
        for (word, &w) in words.iter().enumerate() {
            if w >= lo && w < hi {
                found.push((w, arg, word));
            }
        }
    }
    if found.is_empty() {
        return v; // the common case: no argument holds an address of emulator memory
    }
    let live = LIVE.lock().unwrap();
    for (w, arg, word) in found {
        let Some((&base, &(bytes, who))) = live.range(..=w).next_back() else { continue };
        if who != owner || w >= base + bytes as u64 || v.iter().any(|r| r.base as u64 == base) {
            continue;
        }
        v.push(Region { base: base as *const u8, bytes, via: Via::Table { arg, word } });
    }
    v
}

/// The contents of every region.
pub(super) fn snapshot(regions: &[Region]) -> Vec<Vec<u8>> {
    // SAFETY: each region is a live allocation of `bytes` bytes; no launch runs during the copy.
    regions
        .iter()
        .map(|r| unsafe { std::slice::from_raw_parts(r.base, r.bytes).to_vec() })
        .collect()
}

/// Puts back the contents `snapshot` took.
pub(super) fn restore(regions: &[Region], snap: &[Vec<u8>]) {
    for (r, s) in regions.iter().zip(snap) {
        // SAFETY: the snapshot was taken from this region, same length; the memory is the
        // emulator's (written by kernels through raw pointers anyway).
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), r.base as *mut u8, s.len()) };
    }
}

/// The first difference between two snapshots of `regions`, as a sentence, or None.
pub(super) fn first_difference(regions: &[Region], a: &[Vec<u8>], b: &[Vec<u8>]) -> Option<String> {
    for ((r, x), y) in regions.iter().zip(a).zip(b) {
        if x == y {
            continue;
        }
        let words = |v: &[u8]| -> Vec<u32> {
            v.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        let (wx, wy) = (words(x), words(y));
        let diff: Vec<usize> = (0..wx.len()).filter(|&i| wx[i] != wy[i]).collect();
        let what = match r.via {
            Via::Arg(i) => format!("argument {i}"),
            Via::Table { arg, word } => format!(
                "a buffer reached through a device table (argument {arg}, its 8-byte word {word})"
            ),
        };
        let i = diff[0];
        return Some(format!(
            "{what}: {} of {} 32-bit words differ, first at index {i} ({:e} vs {:e}, bits {:08x} vs {:08x})",
            diff.len(),
            wx.len(),
            f32::from_bits(wx[i]),
            f32::from_bits(wy[i]),
            wx[i],
            wy[i]
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::device::Device;
    use crate::backend::cuda::emu::{EmuDevice, Schedule};

    /// A table's words name the allocations of the device they point into (also at an offset),
    /// once each and after the named arguments; freed memory, another device's memory and
    /// plain numbers name nothing.
    #[test]
    fn table_words_name_the_live_allocations_they_point_into() {
        let d = EmuDevice::with_schedules(&[Schedule::Forward]);
        let other = EmuDevice::with_schedules(&[Schedule::Forward]);
        let (a, b, named, elsewhere) = (d.alloc(40), d.alloc(4000), d.alloc(8), other.alloc(40));
        // Dropped: back in the pool's free list (a size class none of the others takes), not live.
        let gone = d.addr(&d.alloc(100_000));
        let rows: [u64; 7] = [
            d.addr(&a),
            7,
            d.addr(&b) + 100,
            gone,
            d.addr(&named),
            d.addr(&a) + 8,
            other.addr(&elsewhere),
        ];
        let t = d.upload(bytemuck::cast_slice(&rows));
        let args = [Arg::I32(3), Arg::Ptr(&t), Arg::Ptr(&named), Arg::Ptr(&t)];
        let r = regions(&arg_bufs(&args), d.owner());
        let got: Vec<(u64, usize, Via)> =
            r.iter().map(|r| (r.base as u64, r.bytes, r.via)).collect();
        assert_eq!(
            got,
            vec![
                (d.addr(&t), t.bytes(), Via::Arg(1)),
                (d.addr(&named), named.bytes(), Via::Arg(2)),
                (d.addr(&a), a.bytes(), Via::Table { arg: 1, word: 0 }),
                (d.addr(&b), b.bytes(), Via::Table { arg: 1, word: 2 }),
            ]
        );
    }
}
