//! No module of any crate imports another that imports it back:
//! `scripts/check-import-cycles.py` passes on the workspace, and fails, naming the circle and
//! the imports that make it, on a crate where one is planted.

use std::path::Path;

fn check(args: &[&Path]) -> (Option<i32>, String) {
    logo_tests::python_script("check-import-cycles.py", args)
}

#[test]
fn the_workspace_has_no_import_circles() {
    let (code, text) = check(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("no import circles in 8 crate(s)"), "{text}");
}

#[test]
fn a_planted_circle_is_found_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |name: &str, text: &str| std::fs::write(src.join(name), text).unwrap();
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n");
    // a → b → c → a is a circle; d → a is not part of it; the test module's import of d
    // from c, a comment and a string naming crate::d are not imports.
    write("a.rs", "use crate::b::B;\npub struct A(pub B);\n");
    write("b.rs", "pub struct B(pub crate::c::C);\n");
    write(
        "c.rs",
        "// crate::d::D\npub struct C;\npub fn f() -> Option<crate::a::A> { let _ = \"crate::d\"; None }\n\
         #[cfg(test)]\nmod tests { use crate::d::D; }\n",
    );
    write("d.rs", "pub struct D(pub crate::a::A);\n");
    std::fs::create_dir(src.join("sub")).unwrap();
    // A parent and its child importing each other are one unit, not a circle.
    write("sub.rs", "mod inner;\npub use inner::X;\npub struct Y;\n");
    std::fs::write(src.join("sub/inner.rs"), "pub struct X(pub super::Y);\n").unwrap();
    let (code, text) = check(&[src]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("import circle among a, b, c:"), "{text}");
    assert!(text.contains("a -> b  (crate::b::B)"), "{text}");
    assert!(text.contains("c -> a  (crate::a::A)"), "{text}");
    assert!(!text.contains("d ->") && !text.contains("-> d"), "{text}");
    assert!(!text.contains("sub"), "{text}");
    assert!(text.contains("1 import circle(s)"), "{text}");
}
