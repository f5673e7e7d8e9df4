//! Links libtorch so that a binary runs without LD_LIBRARY_PATH and keeps CUDA; shared by the
//! build scripts of every crate with a tch binary (trainer, eval).
//!
//! torch-sys (a direct dependency, `links = "tch"`) exports the libtorch folder as
//! `DEP_TCH_LIBTORCH_LIB`. Without an rpath the binary needs LD_LIBRARY_PATH, and with the
//! linker's default `--as-needed` the unreferenced `libtorch_cuda.so` is dropped, so CUDA
//! silently vanishes (tch-rs issue #980): link `-ltorch` with `--no-as-needed`.

/// Prints the cargo directives (rpath, search path, `--no-as-needed -ltorch`).
pub fn emit() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-link-search=native={lib}");
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}
