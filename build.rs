//! Kernel build.
//!
//! - feature `cuda`: every `kernels/*.cu` is compiled by NVRTC to PTX for compute_80 and
//!   compute_90a, and the PTX is embedded in the binary (`OUT_DIR/kernels.rs`). NVRTC is found
//!   through `NVRTC_LIB_DIR` (or `./.nvrtc`, where `scripts/setup-nvrtc.sh` installs it, or the
//!   library search path). A kernel that fails to compile fails the build with NVRTC's log.
//!   Without NVRTC the build warns and embeds the kernel sources instead; the binary then
//!   compiles them at first use on a GPU machine.
//! - feature `emu`: the same sources are compiled for the host with the CUDA execution-model
//!   emulator (`kernels/emu/cuda_emu.h`) and linked in, for tests without a GPU.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=NVRTC_LIB_DIR");
    println!("cargo:rerun-if-env-changed=CUDA_INCLUDE_DIR");
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kdir = root.join("kernels");
    let mut files: Vec<PathBuf> = fs::read_dir(&kdir)
        .expect("kernels/ directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    // One translation unit of all kernels with common.cuh inlined once: one module to load at
    // run time, and a source that needs no include callback when compiled by the binary.
    let common = fs::read_to_string(kdir.join("common.cuh")).unwrap();
    let mut all = String::new();
    writeln!(all, "#line 1 \"kernels/common.cuh\"\n{common}").unwrap();
    let mut inlined: Vec<String> = Vec::new();
    for f in &files {
        let src = fs::read_to_string(f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy();
        writeln!(all, "#line 1 \"kernels/{name}\"").unwrap();
        for (ln, line) in src.lines().enumerate() {
            // Keep line numbers: blank out the include instead of dropping the line. Other
            // kernels/*.cuh headers are inlined at their first include (NVRTC gets no include
            // callback), then blanked.
            let t = line.trim_start();
            if t.starts_with("#include \"common.cuh\"") {
                all.push('\n');
            } else if let Some(h) = local_header(t) {
                if !inlined.contains(&h) {
                    let text = fs::read_to_string(kdir.join(&h)).expect("kernels/ header");
                    writeln!(all, "#line 1 \"kernels/{h}\"\n{text}").unwrap();
                    writeln!(all, "#line {} \"kernels/{name}\"", ln + 2).unwrap();
                    inlined.push(h);
                } else {
                    all.push('\n');
                }
            } else {
                all.push_str(line);
                all.push('\n');
            }
        }
    }
    fs::write(out.join("kernels_all.cu"), &all).unwrap();

    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        #[cfg(feature = "cuda")]
        nvrtc_build(&root, &out, &all);
        #[cfg(not(feature = "cuda"))]
        write_kernels_rs(&out, None);
    }
    if env::var_os("CARGO_FEATURE_EMU").is_some() {
        #[cfg(feature = "emu")]
        emu_build(&root, &out, &files);
    }
}

/// `NAME.cuh` when `line` is `#include "NAME.cuh"` (a header of kernels/).
fn local_header(line: &str) -> Option<String> {
    let rest = line.strip_prefix("#include \"")?;
    let name = &rest[..rest.find('"')?];
    (name.ends_with(".cuh") && !name.contains('/')).then(|| name.to_string())
}

/// `OUT_DIR/kernels.rs`: the kernel source always, PTX per architecture when NVRTC ran.
fn write_kernels_rs(out: &Path, ptx: Option<&[(&str, String)]>) {
    let mut rs = String::from(
        "/// All kernels as one CUDA C++ source (compiled at run time when no PTX is embedded).\n",
    );
    rs.push_str(
        "pub const SOURCE: &str = include_str!(concat!(env!(\"OUT_DIR\"), \"/kernels_all.cu\"));\n",
    );
    rs.push_str("/// Embedded PTX as (virtual architecture, text), e.g. (\"compute_90a\", ...).\npub const PTX: &[(&str, &str)] = &[\n");
    if let Some(ptx) = ptx {
        for (arch, text) in ptx {
            let file = format!("kernels_{arch}.ptx");
            fs::write(out.join(&file), text).unwrap();
            writeln!(
                rs,
                "    (\"{arch}\", include_str!(concat!(env!(\"OUT_DIR\"), \"/{file}\"))),"
            )
            .unwrap();
        }
    }
    rs.push_str("];\n");
    fs::write(out.join("kernels.rs"), rs).unwrap();
}

#[cfg(feature = "cuda")]
fn nvrtc_build(root: &Path, out: &Path, all: &str) {
    let lib_dir = env::var_os("NVRTC_LIB_DIR").map(PathBuf::from).or_else(|| {
        let d = root.join(".nvrtc/nvidia/cuda_nvrtc/lib");
        d.is_dir().then_some(d)
    });
    // Load libnvrtc by absolute path first: cudarc then finds it by its soname.
    let mut loaded = false;
    if let Some(dir) = &lib_dir {
        if let Ok(rd) = fs::read_dir(dir) {
            let mut libs: Vec<PathBuf> = rd
                .map(|e| e.unwrap().path())
                .filter(|p| {
                    let n = p.file_name().unwrap().to_string_lossy();
                    n.starts_with("libnvrtc.so") && !n.contains("builtins") && !n.contains("alt")
                })
                .collect();
            libs.sort();
            for l in libs {
                // SAFETY: loading NVRTC runs only its initializers.
                if let Ok(lib) = unsafe { libloading::Library::new(&l) } {
                    std::mem::forget(lib); // keep it loaded for cudarc
                    loaded = true;
                    break;
                }
            }
        }
    }
    // SAFETY: only probes whether the library can be opened.
    let present = loaded || unsafe { cudarc::nvrtc::sys::is_culib_present() };
    if !present {
        println!(
            "cargo:warning=NVRTC not found (set NVRTC_LIB_DIR or run scripts/setup-nvrtc.sh): embedding kernel sources; \
             they are compiled at first use on a GPU machine"
        );
        write_kernels_rs(out, None);
        return;
    }
    let include = env::var_os("CUDA_INCLUDE_DIR").map(PathBuf::from).or_else(|| {
        // pip layout: .../nvidia/cuda_nvrtc/lib -> .../nvidia/cuda_runtime/include
        let d = lib_dir.as_ref()?.join("../../cuda_runtime/include");
        d.is_dir().then_some(d)
    });
    let mut ptx = Vec::new();
    // compute_90a: sm_90's arch-specific PTX (wgmma, kernels/wgmma.cuh), loaded on sm_90 alone;
    // compute_80 for every other GPU.
    for arch in ["compute_80", "compute_90a"] {
        let opts = cudarc::nvrtc::CompileOptions {
            arch: Some(arch),
            include_paths: include.iter().map(|p| p.display().to_string()).collect(),
            options: vec!["--std=c++17".into()],
            name: Some("kernels_all.cu".into()),
            ..Default::default()
        };
        match cudarc::nvrtc::compile_ptx_with_opts(all, opts) {
            Ok(p) => ptx.push((arch, p.to_src())),
            Err(e) => {
                let msg = match &e {
                    cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                        log.to_string_lossy().into_owned()
                    }
                    other => format!("{other:?}"),
                };
                panic!("NVRTC failed to compile the kernels for {arch}:\n{msg}");
            }
        }
    }
    let _ = root;
    write_kernels_rs(out, Some(&ptx));
}

#[cfg(feature = "emu")]
fn emu_build(root: &Path, out: &Path, files: &[PathBuf]) {
    let kdir = root.join("kernels");
    // The kernels plus the emulator's own planted-bug kernels (tests/suite/emu_strict.rs), which
    // never reach the GPU build.
    let planted = kdir.join("emu/planted_bugs.cu");
    let mut cpp = String::new();
    writeln!(cpp, "#include \"{}\"", kdir.join("emu/cuda_emu.h").display()).unwrap();
    let mut kernels = Vec::new();
    for f in files.iter().chain([&planted]) {
        writeln!(cpp, "#include \"{}\"", f.display()).unwrap();
        let src = fs::read_to_string(f).unwrap();
        if let Some((line, text)) = bare_shared(&src) {
            panic!(
                "{}:{line}: `{text}`: declare shared arrays with SHARED(T, name, dims) \
                 (kernels/common.cuh), so that the emulator can poison them per block",
                f.display()
            );
        }
        kernels.extend(entry_points(&src));
        println!("cargo:rerun-if-changed={}", f.display());
    }
    println!("cargo:rerun-if-changed={}", kdir.join("emu").display());
    // Registry: name -> thunk that unpacks cuLaunchKernel-style arguments, and the kernel's
    // __launch_bounds__ (0 = none).
    cpp.push_str("\nnamespace {\nstruct EmuKernel { const char* name; void (*thunk)(void**); unsigned bounds; };\n");
    for (n, _) in &kernels {
        writeln!(cpp, "void thunk_{n}(void** a) {{ emu::invoke(&{n}, a); }}").unwrap();
    }
    cpp.push_str("const EmuKernel kernels[] = {\n");
    for (n, bounds) in &kernels {
        writeln!(cpp, "    {{\"{n}\", thunk_{n}, {bounds}}},").unwrap();
    }
    cpp.push_str("};\n}\n");
    cpp.push_str(
        r#"
extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                          unsigned bz, size_t shmem, void** args, int order, unsigned long long seed,
                          size_t dyn_optin, char* err, size_t errlen) {
    for (const EmuKernel& k : kernels)
        if (strcmp(k.name, name) == 0) {
            emu::LaunchOpts o{k.name, k.bounds, order, seed, dyn_optin};
            return emu::launch(k.thunk, dim3(gx, gy, gz), dim3(bx, by, bz), shmem, args, o, err, errlen);
        }
    snprintf(err, errlen, "no kernel named %s", name);
    return 1;
}
"#,
    );
    let path = out.join("emu_all.cpp");
    fs::write(&path, cpp).unwrap();
    cc::Build::new()
        .cpp(true)
        .file(&path)
        .include(kdir.join("emu/include"))
        .include(&kdir)
        .flag_if_supported("-std=c++17")
        .flag_if_supported("-fno-strict-aliasing")
        // Separate multiply and add, as Rust computes them (the kernels' CPU references).
        .flag_if_supported("-ffp-contract=off")
        // The emulator runs every thread as a fiber: optimize it even in debug builds.
        .opt_level(2)
        .debug(false)
        .warnings(false)
        .compile("mmr1_emu_kernels");
}

/// The first line (1-based) that declares a static shared array with a bare `__shared__`
/// instead of `SHARED(...)`: the emulator could not poison it. `extern __shared__` (dynamic
/// shared memory, spelled through DYN_SMEM) and comments are allowed.
#[cfg(feature = "emu")]
fn bare_shared(src: &str) -> Option<(usize, String)> {
    src.lines().enumerate().find_map(|(i, l)| {
        let code = l.split("//").next().unwrap_or("").trim();
        (code.contains("__shared__")
            && !code.starts_with('#')
            && !code.contains("extern __shared__"))
        .then(|| (i + 1, code.to_string()))
    })
}

/// `(name, max threads)` of each `extern "C" __global__ void [__launch_bounds__(N)] NAME(`
/// entry point in a kernel source; max threads is 0 without `__launch_bounds__`.
#[cfg(feature = "emu")]
fn entry_points(src: &str) -> Vec<(String, u32)> {
    let key = "extern \"C\" __global__ void ";
    src.match_indices(key)
        .map(|(i, _)| {
            let mut rest = src[i + key.len()..].trim_start();
            let mut bounds = 0;
            if let Some(r) = rest.strip_prefix("__launch_bounds__(") {
                let close = r.find(')').expect("__launch_bounds__(...)");
                let first = r[..close].split(',').next().unwrap().trim();
                bounds = first.parse().unwrap_or_else(|_| {
                    panic!("__launch_bounds__({first}): write the thread count as a number")
                });
                rest = r[close + 1..].trim_start();
            }
            (rest[..rest.find('(').expect("kernel signature")].trim().to_string(), bounds)
        })
        .collect()
}
