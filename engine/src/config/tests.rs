//! Tests of `pipeline.yaml` parsing and validation.

use super::*;

const MIN: &str = "source: {paths: [d.jsonl]}\nmodel: {path: m.gguf}\n";

fn parse(extra: &str) -> Result<PipelineConfig> {
    PipelineConfig::from_yaml_str(&format!("{MIN}{extra}"), Path::new("/base"))
}

#[test]
fn paper_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.chunker.chunk_size, 512);
    assert_eq!(c.sampler.num_chunks, 16);
    assert_eq!(c.sampler.threshold, 6);
    assert_eq!(c.sampler.num_negatives, 2);
    assert_eq!(c.positions.target_length, 65536);
    assert_eq!(c.positions.continuous_ratio, 0.9);
    assert_eq!(c.seed, 42);
    assert_eq!(c.source.paths, vec![PathBuf::from("/base/d.jsonl")]);
    assert_eq!(c.model.adapter, None);
}

#[test]
fn adapter_path_is_resolved_like_the_model() {
    let c = PipelineConfig::from_yaml_str(
        "source: {paths: [d.jsonl]}\nmodel: {path: m.gguf, adapter: out/adapter}\n",
        Path::new("/base"),
    )
    .unwrap();
    assert_eq!(c.model.path, PathBuf::from("/base/m.gguf"));
    assert_eq!(c.model.adapter, Some(PathBuf::from("/base/out/adapter")));
}

#[test]
fn unknown_key_is_named_with_allowed_keys() {
    let e = parse("chunker: {chunk_sise: 10}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `chunk_sise`"), "{e}");
    assert!(e.contains("expected `chunk_size`"), "{e}");
    let e = parse("sampler: {delta: 3}\n").unwrap_err().to_string();
    assert!(e.contains("`delta`") && e.contains("`threshold`"), "{e}");
}

#[test]
fn wrong_type_is_an_error() {
    let e = parse("sampler: {num_chunks: many}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("num_chunks") && e.contains("invalid type"),
        "{e}"
    );
    let e = parse("scorer: {backend: spacy}\n").unwrap_err().to_string();
    assert!(
        e.contains("unknown variant `spacy`") && e.contains("`lexical`"),
        "{e}"
    );
}

#[test]
fn out_of_range_names_key_and_range() {
    let e = parse("sampler: {num_negatives: 0}\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "config key sampler.num_negatives: must be in 1..=64 (got 0)"
    );
    let e = parse("positions: {continuous_ratio: 1.5}\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "config key positions.continuous_ratio: must be in 0.0..=1.0 (got 1.5)"
    );
    let e = parse("positions: {target_length: 1000}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("positions.target_length") && e.contains("8321"),
        "{e}"
    );
    let e = parse("sampler: {threshold: -1}\n").unwrap_err().to_string();
    assert_eq!(e, "config key sampler.threshold: must be >= 0 (got -1)");
}

#[test]
fn on_length_per_role_with_its_default_and_the_short_form() {
    let c = parse("").unwrap();
    assert_eq!(c.generator.on_length.chosen, LengthAction::Regenerate);
    assert_eq!(c.generator.on_length.rejected, LengthAction::Keep);
    let c = parse("generator: {on_length: skip}\n").unwrap();
    assert_eq!(
        c.generator.on_length,
        OnLength {
            chosen: LengthAction::Skip,
            rejected: LengthAction::Skip
        }
    );
    let c = parse("generator: {on_length: {rejected: regenerate}}\n").unwrap();
    assert_eq!(
        c.generator.on_length,
        OnLength {
            chosen: LengthAction::Regenerate,
            rejected: LengthAction::Regenerate
        }
    );
    let e = parse("generator: {on_length: {chosen: keep}}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("config key generator.on_length.chosen: keep is for rejected"),
        "{e}"
    );
    let e = parse("generator: {on_length: keep}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("generator.on_length.chosen"), "{e}");
    let e = parse("generator: {on_length: {rejectd: keep}}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("on_length") && e.contains("expected skip"),
        "{e}"
    );
}
