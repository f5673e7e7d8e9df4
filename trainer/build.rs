//! Links libtorch into the binary (rpath, `--no-as-needed -ltorch`; see `libtorch_link.rs`)
//! and compiles the small C++ shim that reads the CUDA allocator's peak memory
//! (csrc/cuda_memory.cpp).
//!
//! The shim needs libtorch's headers (`<torch>/include`, next to `lib`) and no CUDA toolkit;
//! when they are missing or it does not compile, the build goes on without it (cfg
//! `logo_cuda_memory` unset) and the benchmark reports no CUDA peak.
use std::path::PathBuf;

#[path = "libtorch_link.rs"]
mod libtorch_link;

fn main() {
    libtorch_link::emit();
    println!("cargo:rerun-if-changed=csrc/cuda_memory.cpp");
    println!("cargo::rustc-check-cfg=cfg(logo_cuda_memory)");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
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
