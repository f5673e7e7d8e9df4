//! NIAH, QA and perplexity on the embedded SmolLM2-135M-Instruct and real data (skipped with
//! a message where the model or `../shared/data` is absent).

mod common;
#[path = "../../trainer/tests/common/numeric.rs"]
mod numeric;

use logo_policy::model::Policy;

use logo_eval::generate::Generator;
use logo_eval::metrics::QaScores;
use logo_eval::niah::{build_prompt, load_haystack, run_niah, NeedleSet, NiahCase, NiahConfig};
use logo_eval::perplexity::{run_perplexity, window_nll, PerplexityConfig};
use logo_eval::qa::{run_qa, QaConfig};
use logo_formats::rejects::Rejects;
use logo_policy::tokenizer::encode_text;
use tch::{Device, Kind, Tensor};

#[test]
fn niah_prompt_has_the_exact_length_and_needles_after_sentence_ends() {
    let test = "niah_prompt_has_the_exact_length_and_needles_after_sentence_ends";
    let (Some(cfg), Some(hay)) = (
        common::embedded(test),
        common::shared_data(test, "haystack"),
    ) else {
        return;
    };
    let tok = logo_policy::tokenizer::load_tokenizer(&cfg).unwrap();
    let template = logo_policy::tokenizer::ChatTemplate::from_tokenizer(&tok).unwrap();
    let text = load_haystack(&hay).unwrap();
    assert!(text.len() > 500_000, "49 essays, {} bytes", text.len());
    let haystack = encode_text(&tok, &text[..20_000]).unwrap();
    let period = encode_text(&tok, ".").unwrap();
    for needles in [NeedleSet::sandwich(), NeedleSet::pizza()] {
        let needle_ids: Vec<Vec<u32>> = needles
            .needles
            .iter()
            .map(|n| encode_text(&tok, &format!(" {n}")).unwrap())
            .collect();
        for (len, depth) in [(512, 0.0), (700, 50.0), (1000, 100.0), (2048, 33.0)] {
            let case = NiahCase {
                context_length: len,
                depth_percent: depth,
            };
            let p = build_prompt(&tok, &template, &haystack, &needles, case).unwrap();
            assert_eq!(p.input_ids.len(), len);
            assert_eq!(p.needle_offsets.len(), needles.needles.len());
            // The prefix (system turn + user header) comes first; find where the context starts.
            let (empty, seg) = template
                .prompt(&tok, logo_eval::niah::SYSTEM_PROMPT, &[], "q")
                .unwrap();
            let start = seg[0] as usize;
            assert!(start < empty.len());
            let context = &p.input_ids[start..];
            for (k, &off) in p.needle_offsets.iter().enumerate() {
                let ids = &needle_ids[k];
                assert_eq!(
                    &context[off..off + ids.len()],
                    &ids[..],
                    "needle {k} at {off}"
                );
                // Right after a sentence end, at the very start, or appended at depth 100 %.
                let after_period = off > 0 && period.contains(&context[off - 1]);
                assert!(
                    off == 0 || depth == 100.0 || after_period,
                    "needle {k} at {off}"
                );
            }
            if depth == 0.0 {
                assert_eq!(p.needle_offsets[0], 0);
            }
        }
    }
    // Needles alone longer than the prompt: a named error.
    let case = NiahCase {
        context_length: 40,
        depth_percent: 0.0,
    };
    let e = build_prompt(&tok, &template, &haystack, &NeedleSet::pizza(), case).unwrap_err();
    assert!(e.to_string().starts_with("niah_lengths"), "{e}");
}

/// At a short length the 135M model must find the needle: recall is asserted.
#[test]
fn niah_on_the_embedded_model_recalls_the_needle() {
    let test = "niah_on_the_embedded_model_recalls_the_needle";
    let (Some(cfg), Some(hay)) = (
        common::embedded(test),
        common::shared_data(test, "haystack"),
    ) else {
        return;
    };
    let policy = Policy::load(&cfg).unwrap();
    let text = load_haystack(&hay).unwrap();
    let niah = NiahConfig {
        context_lengths: vec![512, 1024],
        depths: vec![0.0, 50.0, 100.0],
        needles: NeedleSet::sandwich(),
        max_new_tokens: 32,
        decoding: logo_eval::Decoding::default(),
    };
    niah.validate(policy.max_positions()).unwrap();
    let (backend, tokenizer, template) = common::engine_backend(policy);
    let generator = Generator {
        kind: "engine",
        backend: &backend,
        tokenizer,
        template,
    };
    let r = run_niah(&generator, &text, &niah).unwrap();
    assert_eq!(r.results.len(), 6);
    for x in &r.results {
        eprintln!(
            "{} {}%: {:.2} {:?}",
            x.case.context_length, x.case.depth_percent, x.recall, x.answer
        );
        assert_eq!(x.prompt_tokens, x.case.context_length);
    }
    // Observed: every cell 1.0 ("...eat a sandwich and sit in Dolores Park on a sunny day").
    assert!(r.mean_recall >= 0.8, "mean recall {}", r.mean_recall);
    assert!(r.results.iter().all(|x| x.recall >= 0.5));
}

#[test]
fn qa_on_leval_scores_and_truncates_in_the_middle() {
    let test = "qa_on_leval_scores_and_truncates_in_the_middle";
    let (Some(cfg), Some(file)) = (
        common::embedded(test),
        common::shared_data(test, "leval/multidoc_qa.jsonl"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // A second file with one bad row among good ones: the bad row is rejected, the rest runs.
    let mixed = dir.path().join("mixed.jsonl");
    std::fs::write(
        &mixed,
        "{\"input\": \"Tom has a red bike. Anna has a blue car.\", \"instructions\": [\"What colour is Anna's car?\"], \"outputs\": [\"blue\"]}\n\
         {\"input\": \"broken\", \"instructions\": [\"q\"], \n\
         {\"input\": \"The meeting is on Friday at 3 pm in room 12.\", \"instructions\": [\"Which room is the meeting in?\"], \"outputs\": [\"room 12\"]}\n",
    )
    .unwrap();
    let policy = Policy::load(&cfg).unwrap();
    let rejects = Rejects::create(&dir.path().join("rejects.jsonl")).unwrap();
    let qa = QaConfig {
        files: vec![file, mixed],
        questions_per_file: 2,
        questions_per_document: 1,
        max_length: 1024,
        max_new_tokens: 32,
        decoding: logo_eval::Decoding::default(),
    };
    qa.validate(policy.max_positions()).unwrap();
    let (backend, tokenizer, template) = common::engine_backend(policy);
    let generator = Generator {
        kind: "engine",
        backend: &backend,
        tokenizer,
        template,
    };
    let r = run_qa(&generator, &qa, &rejects).unwrap();
    assert_eq!(r.files.len(), 2);
    assert_eq!(r.files[0].questions, 2);
    // multidoc_qa documents have ≥ 2,201 words: all cut to fit 1024 tokens.
    assert_eq!(r.files[0].truncated, 2);
    assert_eq!(r.files[1].questions, 2);
    assert_eq!(r.files[1].truncated, 0);
    assert_eq!(r.rejected_rows, 1);
    let rejected = std::fs::read_to_string(dir.path().join("rejects.jsonl")).unwrap();
    assert!(
        rejected.contains("mixed.jsonl") && rejected.contains("malformed JSON"),
        "{rejected}"
    );
    for item in &r.items {
        eprintln!(
            "{}: {:?} → {:?} {:?}",
            item.file, item.question, item.prediction, item.scores
        );
        assert!(item.prompt_tokens + qa.max_new_tokens <= qa.max_length);
        // The stored scores are the metrics of the stored prediction.
        assert_eq!(
            item.scores,
            QaScores::best_of(&item.prediction, &item.references)
        );
    }
    // Per-file means and the macro mean over files.
    let f1 = |i: usize| r.files[i].mean.f1;
    let mean0 = (r.items[0].scores.f1 + r.items[1].scores.f1) / 2.0;
    assert!((f1(0) - mean0).abs() < 1e-12);
    assert!((r.mean.f1 - (f1(0) + f1(1)) / 2.0).abs() < 1e-12);
    // The easy questions are answered: "blue" / "room 12" appear in the answers.
    assert!(r.files[1].mean.f1 > 0.0, "{:?}", r.items);
}

#[test]
fn perplexity_windows_match_one_full_forward() {
    let Some(cfg) = common::embedded("perplexity_windows_match_one_full_forward") else {
        return;
    };
    let tok = logo_policy::tokenizer::load_tokenizer(&cfg).unwrap();
    let text =
        "It was a bright cold day in April, and the clocks were striking thirteen. ".repeat(40);
    let tokens: Vec<u32> = encode_text(&tok, &text).unwrap()[..600].to_vec();
    let model =
        logo_trainer::model::Llama::load(&cfg.path, None, Device::Cpu, Kind::Float).unwrap();
    // Independent: full logits of one forward, log-softmax (f32, as ours and HF's loss),
    // gather, sum over tokens 1..n.
    let n = tokens.len() as i64;
    let ids =
        Tensor::from_slice(&tokens.iter().map(|&t| t as i64).collect::<Vec<_>>()).view([1, n]);
    let pos = Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]);
    let logits = tch::no_grad(|| model.forward(&ids, &pos))
        .unwrap()
        .squeeze_dim(0);
    let logp = logits.narrow(0, 0, n - 1).log_softmax(-1, Kind::Float);
    let targets = ids.squeeze_dim(0).narrow(0, 1, n - 1).unsqueeze(1);
    let full = -logp
        .gather(1, &targets, false)
        .sum(Kind::Double)
        .double_value(&[]);
    let ours = window_nll(&model, &tokens, 1).unwrap();
    numeric::assert_within(
        "perplexity window vs full forward, NLL sum",
        (ours - full).abs() / full,
        1e-5,
    );
    // One window as long as the text: the same sum; shorter windows score every token once
    // and, with less context, give a higher perplexity on this repetitive text.
    let cfg = PerplexityConfig {
        context_lengths: vec![64, 600],
        stride_fraction: 0.5,
        max_tokens: 600,
        batch: 1,
    };
    let r = run_perplexity(&model, &tokens, &cfg).unwrap();
    // Batched windows (4 at a time; the last, shorter window alone): the same sums.
    let batched = run_perplexity(
        &model,
        &tokens,
        &PerplexityConfig {
            batch: 4,
            ..cfg.clone()
        },
    )
    .unwrap();
    for (a, b) in r.points.iter().zip(&batched.points) {
        assert!(
            (a.nll_sum - b.nll_sum).abs() / a.nll_sum < 1e-5,
            "L = {}: {} vs {} batched",
            a.context_length,
            a.nll_sum,
            b.nll_sum
        );
    }
    assert_eq!(r.points.len(), 2);
    let (short, long) = (&r.points[0], &r.points[1]);
    assert_eq!(long.windows, 1);
    numeric::assert_within(
        "perplexity run (one window) vs full forward, NLL sum",
        (long.nll_sum - full).abs() / full,
        1e-5,
    );
    assert_eq!(short.scored_tokens, 599);
    assert_eq!(long.scored_tokens, 599);
    assert_eq!(short.stride, 32);
    assert!(
        short.perplexity > long.perplexity,
        "{} vs {}",
        short.perplexity,
        long.perplexity
    );
    assert!(!long.beyond_model_limit);
}
