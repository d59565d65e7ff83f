//! NVTX ranges around the phases of a run, so that Nsight Systems shows where a step's time
//! goes, above the kernels it launched: `rollout`, `reward`, `scoring` (VAS), `forward`,
//! `loss`, `backward`, `optimizer`, `checkpoint`. Built with `--features nvtx` (the `nvtx`
//! crate: header-only NVTX, nothing loaded at run time, a no-op unless a profiler is
//! attached); without the feature a range is an empty value and costs nothing.
//! README.md, "Profiling", says how to record and read a profile.

use std::ffi::CStr;

/// An open range on this thread's NVTX stack; it closes when dropped.
#[must_use = "a range closes when dropped: bind it to a named variable (`let _r = ...`)"]
pub struct Range {
    #[cfg(feature = "nvtx")]
    _range: nvtx::LocalRange,
}

/// Opens the range `name` (e.g. `c"forward"`) until the returned value is dropped.
#[inline]
pub fn range(name: &'static CStr) -> Range {
    #[cfg(feature = "nvtx")]
    {
        Range { _range: nvtx::LocalRange::new(name) }
    }
    #[cfg(not(feature = "nvtx"))]
    {
        let _ = name;
        Range {}
    }
}
