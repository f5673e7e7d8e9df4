//! Links libtorch into the binary; see `libtorch_link.rs`.
#[path = "libtorch_link.rs"]
mod libtorch_link;

fn main() {
    libtorch_link::emit();
}
