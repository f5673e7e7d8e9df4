//! Links libtorch so that the binary runs without LD_LIBRARY_PATH and keeps CUDA, and compiles
//! the small C++ shim that reads the CUDA allocator's peak memory (csrc/cuda_memory.cpp).
//!
//! torch-sys (a direct dependency, `links = "tch"`) exports the libtorch folder as
//! `DEP_TCH_LIBTORCH_LIB`. Without an rpath the binary needs LD_LIBRARY_PATH, and with the
//! linker's default `--as-needed` the unreferenced `libtorch_cuda.so` is dropped, so CUDA
//! silently vanishes (tch-rs issue #980): link `-ltorch` with `--no-as-needed`.
//!
//! The shim needs libtorch's headers (`<torch>/include`, next to `lib`) and no CUDA toolkit;
//! when they are missing or it does not compile, the build goes on without it (cfg
//! `logo_cuda_memory` unset) and the benchmark reports no CUDA peak.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo:rerun-if-changed=csrc/cuda_memory.cpp");
    println!("cargo::rustc-check-cfg=cfg(logo_cuda_memory)");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-search=native={lib}");
        let include = PathBuf::from(&lib).join("../include");
        if include.join("c10/core/CachingDeviceAllocator.h").exists() {
            let built = cc::Build::new()
                .cpp(true)
                .file("csrc/cuda_memory.cpp")
                .include(&include)
                .flag("-std=c++17")
                .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
                .warnings(false)
                .try_compile("logo_cuda_memory");
            match built {
                Ok(()) => {
                    println!("cargo:rustc-link-lib=c10");
                    println!("cargo:rustc-cfg=logo_cuda_memory");
                }
                Err(e) => println!("cargo:warning=CUDA peak-memory shim not built: {e}"),
            }
        }
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
