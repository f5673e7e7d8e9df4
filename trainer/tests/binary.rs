//! The binary runs without LD_LIBRARY_PATH (build.rs sets the rpath) and keeps libtorch_cuda
//! in its dependency closure (`--no-as-needed -ltorch`, tch-rs issue #980), so the same binary
//! finds CUDA on a GPU machine.

use std::process::Command;

#[test]
fn starts_without_ld_library_path_and_keeps_cuda() {
    let exe = env!("CARGO_BIN_EXE_logo-trainer");
    let out = Command::new(exe)
        .arg("--version")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("logo-trainer "));

    let ldd = Command::new("ldd")
        .arg(exe)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    let libs = String::from_utf8_lossy(&ldd.stdout);
    assert!(!libs.contains("not found"), "{libs}");
    assert!(libs.contains("libtorch.so =>"), "{libs}");
    // The PyPI wheel is a CUDA build: libtorch_cuda must stay reachable.
    let torch_lib = libs
        .lines()
        .find(|l| l.contains("libtorch.so =>"))
        .and_then(|l| l.split("=>").nth(1))
        .and_then(|p| p.split_whitespace().next())
        .map(|p| std::path::Path::new(p).parent().unwrap().to_path_buf())
        .unwrap();
    if torch_lib.join("libtorch_cuda.so").exists() {
        assert!(
            libs.contains("libtorch_cuda.so =>"),
            "libtorch_cuda dropped:\n{libs}"
        );
    } else {
        eprintln!(
            "libtorch at {} is a CPU build; CUDA part not checked",
            torch_lib.display()
        );
    }
}
