//! Library functions stay under ~80 lines and files under ~600, or say why:
//! `scripts/check-sizes.py` passes on the workspace, and fails on a crate with a long function
//! or file that gives no reason, naming each.

use std::path::Path;

fn check(args: &[&Path]) -> (Option<i32>, String) {
    logo_tests::python_script("check-sizes.py", args)
}

#[test]
fn every_long_function_and_file_of_the_workspace_says_why() {
    let (code, text) = check(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(", 0 without a reason"), "{text}");
}

/// `n` lines of a function body.
fn body(n: usize) -> String {
    (0..n).map(|i| format!("    let _x{i} = {i};\n")).collect()
}

#[test]
fn long_items_without_a_reason_are_named_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |name: &str, text: &str| std::fs::write(src.join(name), text).unwrap();
    // 81 lines (signature, 79 body lines, brace): too long; 80: fine.
    write(
        "a.rs",
        &format!(
            "pub fn long() {{\n{}}}\n\npub fn fits() {{\n{}}}\n",
            body(79),
            body(78)
        ),
    );
    // With its reason in the doc comment, a long function passes.
    write(
        "b.rs",
        &format!(
            "/// Why this function is over 80 lines: one table.\npub fn table() {{\n{}}}\n",
            body(90)
        ),
    );
    // A 601-line file fails unless its module doc says why; its test module and a
    // declaration without a body do not count.
    let filler: String = (0..601).map(|i| format!("const C{i}: u8 = 0;\n")).collect();
    write("c.rs", &filler);
    write(
        "d.rs",
        &format!("//! Why this file is over 600 lines: data.\n{filler}"),
    );
    write(
        "e.rs",
        &format!(
            "extern \"C\" {{\n    fn ext(\n{}    );\n}}\n#[cfg(test)]\nmod tests {{\n{filler}}}\n",
            "        a: u8,\n".repeat(90)
        ),
    );
    write("tests.rs", &format!("fn huge() {{\n{}}}\n", body(200)));
    let (code, text) = check(&[src]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("81 lines  fn "), "{text}");
    assert!(text.contains("a.rs:1 long  (NO REASON)"), "{text}");
    assert!(!text.contains("fits"), "{text}");
    assert!(text.contains("b.rs:2 table  (reason given)"), "{text}");
    assert!(text.contains("601 lines  file "), "{text}");
    assert!(text.contains("c.rs  (NO REASON)"), "{text}");
    assert!(text.contains("d.rs  (reason given)"), "{text}");
    assert!(!text.contains("e.rs") && !text.contains("huge"), "{text}");
    assert!(
        text.contains("2 function(s) over 80 lines, 2 file(s) over 600 lines, 2 without a reason"),
        "{text}"
    );
}
