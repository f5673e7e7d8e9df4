//! Tests of [`super`] (`source.rs`).

use super::*;

/// The `parquet_source` fuzz target's crash (a column chunk at a negative offset, on which the
/// parquet crate asserts while reading its pages): refused before any decoding by the page
/// header check, one reject for the file, no crash.
#[test]
fn a_parquet_file_the_reader_panics_on_is_a_reject() {
    let bytes = include_bytes!(
        "../../../tests/fuzz/parquet_source/crash-45f57ec5dcdb2a5992227f84dd158a0a8cd64fbf"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.parquet");
    std::fs::write(&path, bytes).unwrap();
    let plan = plan_units(std::slice::from_ref(&path), 4, None).unwrap();
    let mut src = Source::for_units(&plan, plan.units.clone(), 3, true);
    let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
    while let Some(b) = src.next_batch(&rejects, &stats) {
        b.unwrap();
    }
    assert_eq!(src.documents(), 0);
    assert_eq!(rejects.total(), 1);
}

#[test]
fn control_characters_are_escaped_only_inside_strings() {
    let line = "{\"input\": \"a\tb\u{1}c\", \"q\": \"\\\"x\\\"\"}";
    let fixed = escape_control_chars(line);
    assert_eq!(
        fixed,
        "{\"input\": \"a\\u0009b\\u0001c\", \"q\": \"\\\"x\\\"\"}"
    );
    let raw = parse_json_line(line).unwrap();
    assert_eq!(raw.context.as_deref(), Some("a\tb\u{1}c"));
}

/// Regressions: the last, partial batch of the last file was dropped; a byte order mark
/// made row 1 malformed.
#[test]
fn rows_do_not_depend_on_batch_size_or_limit_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..7)
        .map(|i| format!(r#"{{"context": "doc {i}", "instructions": ["q{i}a", "q{i}b"]}}"#))
        .collect();
    // a.jsonl starts with a UTF-8 byte order mark: its first row is still a row.
    std::fs::write(
        dir.path().join("a.jsonl"),
        format!("\u{feff}{}", lines[..4].join("\n")),
    )
    .unwrap();
    std::fs::write(dir.path().join("b.jsonl"), lines[4..].join("\n") + "\n").unwrap();
    let read = |batch_size: usize, limit: Option<usize>| -> Vec<String> {
        let yaml = format!(
            "source: {{paths: ['*.jsonl'], batch_size: {batch_size}}}\nmodel: {{path: m.gguf}}\n"
        );
        let cfg = PipelineConfig::from_yaml_str(&yaml, dir.path()).unwrap();
        let mut src = Source::try_new(&cfg, limit).unwrap();
        let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
        let mut ids = Vec::new();
        while let Some(b) = src.next_batch(&rejects, &stats) {
            ids.extend(
                DocumentRecord::from_batch(&b.unwrap())
                    .unwrap()
                    .into_iter()
                    .map(|d| d.key.sample_id),
            );
        }
        ids
    };
    let all = read(1, None);
    assert_eq!(all.len(), 14);
    assert_eq!(all[0], "a:1#q0");
    assert_eq!(all[13], "b:3#q1");
    for bs in [2, 3, 5, 8] {
        assert_eq!(read(bs, None), all, "batch_size {bs}");
    }
    assert_eq!(read(3, Some(5)), all[..10].to_vec());
}

#[test]
fn layouts_are_recognised() {
    let raw = parse_json_line(
        r#"{"input": "doc", "instructions": ["q1", "q2"], "outputs": ["a1", "a2"]}"#,
    )
    .unwrap();
    assert_eq!(raw.context.as_deref(), Some("doc"));
    assert_eq!(
        raw.questions.unwrap(),
        vec![Some("q1".into()), Some("q2".into())]
    );
    assert_eq!(
        raw.answers.unwrap(),
        vec![Some("a1".into()), Some("a2".into())]
    );
    let raw = parse_json_line(r#"{"context": "doc", "question": "q", "answer": "a"}"#).unwrap();
    assert_eq!(raw.questions.unwrap(), vec![Some("q".into())]);
    // LongBench: question in `input`, several references of which the first is kept.
    let raw = parse_json_line(
        r#"{"context": "doc", "input": "q", "answers": ["a", "b"], "dataset": "qasper"}"#,
    )
    .unwrap();
    assert_eq!(raw.context.as_deref(), Some("doc"));
    assert_eq!(raw.questions.unwrap(), vec![Some("q".into())]);
    assert_eq!(raw.answers.unwrap(), vec![Some("a".into())]);
    // A raw document in `input` alone stays a document without question.
    let raw = parse_json_line(r#"{"input": "doc"}"#).unwrap();
    assert_eq!(raw.context.as_deref(), Some("doc"));
    assert_eq!(raw.questions, None);
    let e = parse_json_line(r#"{"context": 3}"#).unwrap_err();
    assert_eq!(e, (Some("context".into()), "expected a string".into()));
    let e = parse_json_line("[1]").unwrap_err();
    assert_eq!(e.1, "malformed JSON: a line must hold an object");
}
