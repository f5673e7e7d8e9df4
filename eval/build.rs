//! Links libtorch into the binary, as the trainer does; see `trainer/libtorch_link.rs`.
#[path = "../trainer/libtorch_link.rs"]
mod libtorch_link;

fn main() {
    libtorch_link::emit();
}
