//! The emulator device: kernels compiled for the host with `kernels/emu/cuda_emu.h` (see
//! build.rs), memory in host allocations, launches run synchronously.

use super::device::{Arg, Device};
use crate::backend::{cpu::Cpu, Backend, Tr};
use std::ffi::{c_char, c_int, c_void, CStr, CString};

extern "C" {
    fn emu_launch(
        name: *const c_char,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        shmem: usize,
        args: *mut *mut c_void,
        err: *mut c_char,
        errlen: usize,
    ) -> c_int;
}

/// Host memory standing in for device memory. Kernels write through raw pointers, so it is
/// held as a raw allocation rather than a Rust slice.
pub struct EmuMem {
    ptr: *mut u64,
    words: usize,
}

// SAFETY: EmuMem owns its allocation; access goes through &/&mut like any buffer.
unsafe impl Send for EmuMem {}
unsafe impl Sync for EmuMem {}

impl EmuMem {
    fn new(bytes: usize) -> Self {
        // Fresh memory reads as NaN (all ones), like poison: unwritten outputs show up.
        let words = bytes.div_ceil(8).max(1);
        let v = vec![u64::MAX; words].into_boxed_slice();
        EmuMem { ptr: Box::into_raw(v) as *mut u64, words }
    }
    fn bytes(&self) -> usize {
        self.words * 8
    }
}

impl Drop for EmuMem {
    fn drop(&mut self) {
        // SAFETY: ptr came from Box<[u64]> of `words` elements in `new`.
        unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.words))) };
    }
}

/// The CUDA execution-model emulator as a `Device`.
#[derive(Default)]
pub struct EmuDevice;

impl Device for EmuDevice {
    type Mem = EmuMem;
    fn name(&self) -> String {
        "cuda-emu (kernels on the host)".into()
    }
    fn alloc(&self, bytes: usize) -> EmuMem {
        EmuMem::new(bytes)
    }
    fn upload(&self, host: &[u8]) -> EmuMem {
        let mut m = EmuMem::new(host.len());
        self.write(&mut m, host);
        m
    }
    fn write(&self, mem: &mut EmuMem, host: &[u8]) {
        assert!(host.len() <= mem.bytes(), "emu write past the end of a buffer");
        // SAFETY: bounds checked above; the regions do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(host.as_ptr(), mem.ptr as *mut u8, host.len()) };
    }
    fn download(&self, mem: &EmuMem, bytes: usize) -> Vec<u8> {
        assert!(bytes <= mem.bytes(), "emu read past the end of a buffer");
        // SAFETY: bounds checked above.
        unsafe { std::slice::from_raw_parts(mem.ptr as *const u8, bytes).to_vec() }
    }
    fn launch(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared_bytes: u32,
        args: &[Arg<'_, EmuMem>],
    ) {
        // Every value is stored in 8 little-endian bytes; the kernel thunk reads the width of
        // its parameter type from the front, as cuLaunchKernel's argument array is read.
        let mut vals: Vec<u64> = args
            .iter()
            .map(|a| match a {
                Arg::Ptr(m) => m.ptr as u64,
                Arg::Null => 0,
                Arg::I32(v) => *v as u32 as u64,
                Arg::I64(v) => *v as u64,
                Arg::F32(v) => v.to_bits() as u64,
            })
            .collect();
        let mut ptrs: Vec<*mut c_void> =
            vals.iter_mut().map(|v| v as *mut u64 as *mut c_void).collect();
        let cname = CString::new(name).unwrap();
        let mut err = vec![0 as c_char; 512];
        // SAFETY: args point at live values; buffers outlive the synchronous launch.
        let rc = unsafe {
            emu_launch(
                cname.as_ptr(),
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                shared_bytes as usize,
                ptrs.as_mut_ptr(),
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the emulator wrote a NUL-terminated message into err.
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy();
            panic!("emulated kernel {name} failed: {msg}");
        }
    }
    fn gemm(
        &self,
        out: &mut EmuMem,
        a: &EmuMem,
        ta: Tr,
        b: &EmuMem,
        tb: Tr,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) -> bool {
        // The emulator has no cuBLAS: the CPU GEMM on host copies stands in for it.
        let f =
            |mem: &EmuMem, len: usize| -> Vec<f32> { super::f32s(&self.download(mem, len * 4)) };
        let (av, bv) = (f(a, m * k), f(b, k * n));
        let mut ov = if beta == 0.0 { vec![0.0; m * n] } else { f(out, m * n) };
        Cpu.matmul(&mut ov, &av, ta, &bv, tb, m, n, k, beta);
        self.write(out, bytemuck::cast_slice(&ov));
        true
    }
    fn synchronize(&self) {}
}
