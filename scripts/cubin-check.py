#!/usr/bin/env python3
"""Compiles the kernels to CUBIN with NVRTC for real architectures (sm_80, sm_90a), no GPU
needed: unlike the PTX build, this runs ptxas, so inline PTX (mma.sync, ldmatrix, cp.async in
kernels/mma.cuh) is checked too. Prints registers / spills / shared memory of the kernels whose
name contains FILTER (default: flash).

    eval "$(scripts/setup-nvrtc.sh)"
    cargo check --features emu          # writes OUT_DIR/kernels_all.cu
    scripts/cubin-check.py [FILTER]
"""
import ctypes, glob, multiprocessing, os, re, sys

src_path = max(glob.glob("target/*/build/mmr1-fast-*/out/kernels_all.cu"), key=os.path.getmtime)
flt = sys.argv[1] if len(sys.argv) > 1 else "flash"


def compile_for(arch):
    """(return code, ptxas log) of one architecture; run in its own process."""
    lib = ctypes.CDLL(os.path.join(os.environ["NVRTC_LIB_DIR"], "libnvrtc.so.12"))
    inc = os.environ["CUDA_INCLUDE_DIR"]
    src = open(src_path, "rb").read()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"kernels_all.cu", 0, None, None) == 0
    opts = [f"--gpu-architecture={arch}".encode(), b"--std=c++17", f"-I{inc}".encode(), b"--ptxas-options=-v"]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetProgramLog(prog, log)
    return rc, log.value.decode(errors="replace")


archs = ["sm_80", "sm_90a"]
# One process per architecture: each compile is single-threaded (~20 s), CI has two cores.
with multiprocessing.Pool(len(archs)) as pool:
    results = pool.map(compile_for, archs)
rc_all = 0
for arch, (rc, text) in zip(archs, results):
    print(f"== {arch}: {'ok' if rc == 0 else 'FAILED'} ({src_path})")
    if rc != 0:
        print(text)
        rc_all = 1
        continue
    cur = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            cur = m.group(1)
        elif cur and flt in cur and ("registers" in line or "spill" in line):
            info = re.sub(r"^ptxas\s+(info\s+:)?[\s.]*", "", line).strip()
            print(f"{cur}: {info}")
sys.exit(rc_all)
