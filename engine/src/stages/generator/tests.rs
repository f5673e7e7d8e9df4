//! Tests of [`super`] (`generator.rs`).

use super::*;
use crate::model::tests::{in_process, shared_policy_and_tokenizer};
use crate::model::ChatTemplate;
use logo_schemas::SampleKey;

fn chatml(tok: &Tokenizer) -> PromptTemplate {
    PromptTemplate::ChatMl(ChatTemplate::from_tokenizer(tok).unwrap())
}
use crate::stage::{Rejects, RunStats};

fn config(extra: &str) -> PipelineConfig {
    PipelineConfig::from_yaml_str(
        &format!(
            "source: {{paths: [d.jsonl]}}\nmodel: {{path: m.gguf}}\n\
             generator: {{max_new_tokens: 48, on_length: regenerate{extra}}}\n\
             sampler: {{num_chunks: 2}}\nchunker: {{chunk_size: 64}}\n"
        ),
        std::path::Path::new("/"),
    )
    .unwrap()
}

fn row(tok: &Tokenizer, id: &str) -> SampledRecord {
    let texts = [
        "The Eiffel Tower is in Paris. It was finished in 1889.",
        "Bananas are yellow fruits rich in potassium.",
        "The river Thames flows through London.",
    ];
    SampledRecord {
        key: SampleKey {
            sample_id: id.into(),
            document_id: "doc:1".into(),
            question_index: 0,
            source_file: "doc.jsonl".into(),
            source_row: 1,
            question: Some("When was the Eiffel Tower finished?".into()),
            answer: Some("In 1889.".into()),
            question_origin: "source".into(),
        },
        chunk_input_ids: texts.iter().map(|t| encode_text(tok, t).unwrap()).collect(),
        chunk_text: texts.iter().map(|t| t.to_string()).collect(),
        chunk_scores: vec![7, 0, 1],
        context_chunk_ids: vec![0, 2],
        chosen_chunk_ids: vec![0],
        rejected_chunk_ids: vec![vec![1], vec![1, 0]],
        rejected_strategy: vec!["irrelevant".into(), "partial".into()],
    }
}

#[test]
fn generates_chosen_and_m_rejected() {
    let Some((policy, tok)) = shared_policy_and_tokenizer("generates_chosen_and_m_rejected") else {
        return;
    };
    let mut stage =
        GeneratorStage::try_new(&config(""), in_process(&policy), tok.clone(), chatml(&tok))
            .unwrap();
    let mut bad = row(&tok, "doc:1#q1");
    bad.rejected_chunk_ids[0] = vec![9];
    let input = SampledRecord::to_batch(&[row(&tok, "doc:1#q0"), bad]).unwrap();
    let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
    let ctx = StageContext {
        rejects: &rejects,
        stats: &stats,
    };
    let out = stage.process(input, &ctx).unwrap();
    assert_eq!(rejects.counts().get(STAGE), Some(&1));
    let recs = out
        .first()
        .map(|b| GeneratedRecord::from_batch(b).unwrap())
        .unwrap_or_default();
    let snap = stats.snapshot();
    assert_eq!(recs.len(), 1, "skipped: {:?}", snap.skipped);
    assert_eq!(out[0].schema(), logo_schemas::generations_schema());
    let r = &recs[0];
    // SmolLM2-135M q8_0 greedy, observed: chosen (from chunk 0) "The Eiffel Tower was
    // finished in 1889"; rejected[0] (bananas only) "The Eiffel Tower was finished on July
    // 14," (a hallucination, P'); rejected[1] (bananas + chunk 0) "... in 1889".
    assert!(r.chosen.contains("1889"), "{:?}", r.chosen);
    assert_eq!(r.key.sample_id, "doc:1#q0");
    assert_eq!(r.rejected.len(), 2);
    assert_eq!(r.rejected_input_ids.len(), 2);
    assert_eq!(r.rejected_strategy, vec!["irrelevant", "partial"]);
    assert_eq!(r.context_chunk_scores, vec![7, 1]);
    assert_eq!(r.chosen_origin, "generated");
    assert_eq!(r.generator, "Smollm2 135M 8k Lc100K Mix1 Ep2");
    let settings: serde_json::Value = serde_json::from_str(&r.generator_settings).unwrap();
    assert_eq!(settings["weights"], "f32");
    assert_eq!(settings["max_new_tokens"], 48);
    assert_eq!(settings["backend"]["backend"], "in_process");
    for ids in std::iter::once(&r.chosen_input_ids).chain(&r.rejected_input_ids) {
        assert_eq!(ids.last(), Some(&2), "{ids:?}"); // <|im_end|>
        assert!(ids.len() >= 2 && ids.len() <= 49);
        assert!(!ids[..ids.len() - 1].contains(&2));
    }
    // The training prompt: prefix + 2 chunks + suffix.
    assert_eq!(r.prompt_segments.len(), 4);
    assert_eq!(
        r.prompt_segments.iter().sum::<u32>() as usize,
        r.prompt_input_ids.len()
    );
    let input = row(&tok, "x");
    assert_eq!(
        r.prompt_segments[1] as usize,
        input.chunk_input_ids[0].len()
    );
    assert_eq!(
        r.prompt_segments[2] as usize,
        input.chunk_input_ids[2].len()
    );
    let generated: u64 = r.chosen_input_ids.len() as u64 - 1
        + r.rejected_input_ids
            .iter()
            .map(|x| x.len() as u64 - 1)
            .sum::<u64>();
    // Every generated token is counted, those of regenerated responses too.
    assert!(snap.tokens.get(STAGE).is_some_and(|&t| t >= generated));
    // The pair carries a preference: no rejected response equals the chosen one.
    for x in &r.rejected {
        assert_ne!(normalise(x), normalise(&r.chosen));
    }
    assert_eq!(r.chosen_finish_reason, "stop");
    assert_eq!(r.rejected_finish_reason, vec!["stop", "stop"]);
    assert_eq!(r.chosen_chunk_ids, vec![0]);
    assert_eq!(r.rejected_chunk_ids, vec![vec![1], vec![1, 0]]);
    assert_eq!(r.generator_model, r.generator);
    assert_eq!(
        r.chosen_seed,
        Some(derive_seed(42, &[STAGE, "doc:1#q0", "0"]))
    );

    // Same seed, same sample: same responses whatever the batch holds.
    let again = stage
        .process(
            SampledRecord::to_batch(&[row(&tok, "doc:1#q0")]).unwrap(),
            &ctx,
        )
        .unwrap();
    let again = GeneratedRecord::from_batch(&again[0]).unwrap();
    assert_eq!(again[0], recs[0]);
}

#[test]
fn sampled_output_ignores_batch_boundaries() {
    let Some((policy, tok)) =
        shared_policy_and_tokenizer("sampled_output_ignores_batch_boundaries")
    else {
        return;
    };
    let cfg = config(", temperature: 1.0, top_p: 0.95");
    let mut stage =
        GeneratorStage::try_new(&cfg, in_process(&policy), tok.clone(), chatml(&tok)).unwrap();
    let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
    let ctx = StageContext {
        rejects: &rejects,
        stats: &stats,
    };
    let mut run = |rows: &[SampledRecord]| -> Vec<GeneratedRecord> {
        let out = stage
            .process(SampledRecord::to_batch(rows).unwrap(), &ctx)
            .unwrap();
        out.iter()
            .flat_map(|b| GeneratedRecord::from_batch(b).unwrap())
            .collect()
    };
    let alone = run(&[row(&tok, "doc:1#q7")]);
    let batched = run(&[row(&tok, "doc:1#q3"), row(&tok, "doc:1#q7")]);
    let find = |v: &[GeneratedRecord]| v.iter().find(|r| r.key.sample_id == "doc:1#q7").cloned();
    assert_eq!(find(&alone), find(&batched));
    assert!(
        find(&alone).is_some(),
        "skipped: {:?}",
        stats.snapshot().skipped
    );
    let settings: serde_json::Value = serde_json::from_str(&alone[0].generator_settings).unwrap();
    assert_eq!(settings["temperature"], 1.0);
    assert_eq!(settings["seed"], 42);
}

#[test]
fn reference_chosen_is_tokenised_with_end_of_turn() {
    let Some((policy, tok)) =
        shared_policy_and_tokenizer("reference_chosen_is_tokenised_with_end_of_turn")
    else {
        return;
    };
    let cfg = config(", chosen: reference");
    let mut stage =
        GeneratorStage::try_new(&cfg, in_process(&policy), tok.clone(), chatml(&tok)).unwrap();
    let mut no_answer = row(&tok, "doc:1#q1");
    no_answer.key.answer = None;
    let mut with_control = row(&tok, "doc:1#q0");
    with_control.key.answer = Some("1889 <|im_end|>".into());
    let (rejects, stats) = (Rejects::in_memory(), RunStats::default());
    let ctx = StageContext {
        rejects: &rejects,
        stats: &stats,
    };
    let out = stage
        .process(
            SampledRecord::to_batch(&[with_control, no_answer]).unwrap(),
            &ctx,
        )
        .unwrap();
    let snap = stats.snapshot();
    assert_eq!(snap.skipped.get("generator: no reference answer"), Some(&1));
    let recs = GeneratedRecord::from_batch(&out[0]).unwrap();
    assert_eq!(recs.len(), 1, "skipped: {:?}", snap.skipped);
    let r = &recs[0];
    assert_eq!(r.chosen_origin, "reference");
    assert_eq!(r.chosen, "1889 <|im_end|>");
    // The answer's "<|im_end|>" is text; the only control id is the appended end of turn.
    let mut expected = encode_text(&tok, "1889 <|im_end|>").unwrap();
    expected.push(2);
    assert_eq!(r.chosen_input_ids, expected);
    assert_eq!(r.chosen_input_ids.iter().filter(|&&t| t == 2).count(), 1);
    assert_eq!(r.rejected.len(), 2);
}

fn completion(text: &str, finish_reason: FinishReason) -> Completion {
    Completion {
        token_ids: vec![5],
        text: text.into(),
        finish_reason,
        model: "m".into(),
        retries: 0,
    }
}

fn plan_with(results: Vec<Completion>) -> Plan {
    let texts = ["a"];
    Plan {
        row: SampledRecord {
            key: SampleKey {
                sample_id: "d#q0".into(),
                document_id: "d".into(),
                question_index: 0,
                source_file: "d.jsonl".into(),
                source_row: 1,
                question: Some("q?".into()),
                answer: None,
                question_origin: "source".into(),
            },
            chunk_input_ids: vec![vec![5]],
            chunk_text: texts.iter().map(|t| t.to_string()).collect(),
            chunk_scores: vec![1],
            context_chunk_ids: vec![0],
            chosen_chunk_ids: vec![0],
            rejected_chunk_ids: vec![vec![0], vec![0]],
            rejected_strategy: vec!["irrelevant".into(), "partial".into()],
        },
        prompt_input_ids: vec![1],
        prompt_segments: vec![1],
        reference: None,
        slots: results
            .into_iter()
            .map(|c| {
                Some(Slot {
                    prompt: vec![1],
                    attempt: 0,
                    seed: 0,
                    result: Some(c),
                    pending: false,
                })
            })
            .collect(),
        skipped: None,
    }
}

/// The judging rules on hand-made completions (no model needed).
#[test]
fn duplicates_and_cut_responses_are_regenerated_then_skipped() {
    let Some((policy, tok)) =
        shared_policy_and_tokenizer("duplicates_and_cut_responses_are_regenerated_then_skipped")
    else {
        return;
    };
    let ctx_stats = RunStats::default();
    let rejects = Rejects::in_memory();
    let ctx = StageContext {
        rejects: &rejects,
        stats: &ctx_stats,
    };
    assert_eq!(
        normalise("  The  Tower\n is IN Paris. "),
        "the tower is in paris."
    );
    let stage = |extra: &str| {
        GeneratorStage::try_new(
            &config(extra),
            in_process(&policy),
            tok.clone(),
            chatml(&tok),
        )
        .unwrap()
    };
    // rejected[0] equals the chosen one up to case and whitespace: redone with attempt 1.
    let s = stage("");
    let mut plan = plan_with(vec![
        completion("In Paris.", FinishReason::Stop),
        completion("  in   PARIS. ", FinishReason::Stop),
        completion("In Lyon.", FinishReason::Stop),
    ]);
    s.judge(&mut plan, &ctx);
    assert_eq!(plan.skipped, None);
    let pending: Vec<(bool, usize)> = plan
        .slots
        .iter()
        .flatten()
        .map(|x| (x.pending, x.attempt))
        .collect();
    assert_eq!(pending, vec![(false, 0), (true, 1), (false, 0)]);
    // Attempt 1 uses another seed and at least regenerate_temperature.
    let (a, b) = (s.options("d#q0", 1, 0), s.options("d#q0", 1, 1));
    assert_ne!(a.seed, b.seed);
    assert_eq!((a.temperature, b.temperature), (0.0, 0.8));
    // No regeneration allowed: the duplicate skips the sample.
    let s0 = stage(", max_regenerations: 0");
    let mut plan = plan_with(vec![
        completion("In Paris.", FinishReason::Stop),
        completion("In Lyon.", FinishReason::Stop),
        completion("in lyon.", FinishReason::Stop),
    ]);
    s0.judge(&mut plan, &ctx);
    assert_eq!(plan.skipped, Some(SKIP_DUPLICATE));
    let outcome = s0.finish(plan).unwrap();
    assert_eq!(outcome, RowOutcome::Skip(SKIP_DUPLICATE));
    assert_eq!(outcome.settle(STAGE, &ctx).unwrap(), None);
    // A cut response: regenerated under on_length: regenerate, skipped under skip (the rule
    // for both roles when on_length is one value).
    let mut plan = plan_with(vec![
        completion("In Paris.", FinishReason::Length),
        completion("In Lyon.", FinishReason::Stop),
        completion("In Rome.", FinishReason::Stop),
    ]);
    s.judge(&mut plan, &ctx);
    assert!(plan.slots[0].as_ref().unwrap().pending);
    let skip = GeneratorStage::try_new(
        &PipelineConfig::from_yaml_str(
            "source: {paths: [d.jsonl]}\nmodel: {path: m.gguf}\n\
             generator: {max_new_tokens: 48, on_length: skip}\nsampler: {num_chunks: 2}\n\
             chunker: {chunk_size: 64}\n",
            std::path::Path::new("/"),
        )
        .unwrap(),
        in_process(&policy),
        tok.clone(),
        chatml(&tok),
    )
    .unwrap();
    let mut plan = plan_with(vec![
        completion("In Paris.", FinishReason::Length),
        completion("In Lyon.", FinishReason::Stop),
        completion("In Rome.", FinishReason::Stop),
    ]);
    skip.judge(&mut plan, &ctx);
    assert_eq!(plan.skipped, Some(SKIP_LENGTH));
    assert_eq!(
        skip.finish(plan).unwrap().settle(STAGE, &ctx).unwrap(),
        None
    );
    let snap = ctx_stats.snapshot();
    assert_eq!(
        snap.skipped
            .get("generator: rejected equal to another response"),
        Some(&1)
    );
    assert_eq!(
        snap.skipped.get("generator: response hit max_new_tokens"),
        Some(&1)
    );
    assert_eq!(
        snap.events
            .get("generator: regenerations after a duplicate"),
        Some(&1)
    );
    assert_eq!(
        snap.events.get("generator: regenerations after length"),
        Some(&1)
    );
}

/// The default `on_length: {chosen: regenerate, rejected: keep}`: a cut rejected response is
/// kept with exactly the ids the model wrote (no end of turn appended) and `length` recorded;
/// a cut chosen response is regenerated, never kept.
#[test]
fn a_cut_rejected_response_is_kept_without_an_end_of_turn() {
    let Some((policy, tok)) =
        shared_policy_and_tokenizer("a_cut_rejected_response_is_kept_without_an_end_of_turn")
    else {
        return;
    };
    let stats = RunStats::default();
    let rejects = Rejects::in_memory();
    let ctx = StageContext {
        rejects: &rejects,
        stats: &stats,
    };
    let cfg = PipelineConfig::from_yaml_str(
        "source: {paths: [d.jsonl]}\nmodel: {path: m.gguf}\n\
         generator: {max_new_tokens: 48}\nsampler: {num_chunks: 2}\n\
         chunker: {chunk_size: 64}\n",
        std::path::Path::new("/"),
    )
    .unwrap();
    let stage =
        GeneratorStage::try_new(&cfg, in_process(&policy), tok.clone(), chatml(&tok)).unwrap();
    let end = stage.template.end_of_turn();
    let with_ids = |ids: Vec<u32>, text: &str, f: FinishReason| Completion {
        token_ids: ids,
        ..completion(text, f)
    };
    let mut plan = plan_with(vec![
        with_ids(vec![11, 12], "In Paris.", FinishReason::Stop),
        with_ids(vec![21, 22, 23], "In Lyon, which is", FinishReason::Length),
        with_ids(vec![31], "In Rome.", FinishReason::Stop),
    ]);
    stage.judge(&mut plan, &ctx);
    assert_eq!(plan.skipped, None);
    assert!(plan.slots.iter().flatten().all(|s| !s.pending));
    let RowOutcome::Keep(row) = stage.finish(plan).unwrap() else {
        panic!("a sample with a cut rejected response is kept");
    };
    assert_eq!(row.chosen_input_ids, vec![11, 12, end]);
    assert_eq!(row.chosen_finish_reason, "stop");
    assert_eq!(
        row.rejected_input_ids,
        vec![vec![21, 22, 23], vec![31, end]]
    );
    assert_eq!(row.rejected_finish_reason, vec!["length", "stop"]);
    assert_eq!(row.rejected, vec!["In Lyon, which is", "In Rome."]);
    // A cut chosen response is regenerated (attempt 1), not kept.
    let mut plan = plan_with(vec![
        with_ids(vec![11, 12], "In Paris, the", FinishReason::Length),
        with_ids(vec![21], "In Lyon.", FinishReason::Stop),
        with_ids(vec![31], "In Rome.", FinishReason::Stop),
    ]);
    stage.judge(&mut plan, &ctx);
    let pending: Vec<(bool, usize)> = plan
        .slots
        .iter()
        .flatten()
        .map(|x| (x.pending, x.attempt))
        .collect();
    assert_eq!(pending, vec![(true, 1), (false, 0), (false, 0)]);
    assert_eq!(
        stats
            .snapshot()
            .events
            .get("generator: regenerations after length"),
        Some(&1)
    );
}
