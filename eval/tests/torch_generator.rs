//! The torch generator (the trainer's model with a KV cache, prefill shared across the prompts
//! of a group) on the embedded SmolLM2-135M-Instruct and the essays: it answers NIAH and QA
//! as the engine's policy does, and the retrieval score (Appendix B, Eq. 5) of the base model
//! and of a random adapter. Under `CI=true` a missing model or data fails.

mod common;

use logo_policy::model::Policy;

use logo_eval::generate::{Generator, TorchBackend};
use logo_eval::niah::{load_haystack, run_niah, NeedleSet, NiahConfig};
use logo_policy::tokenizer::{load_tokenizer, ChatTemplate};
use logo_trainer::model::Llama;
use tch::{Device, Kind};

fn fixtures(test: &str) -> Option<(logo_policy::config::ModelConfig, std::path::PathBuf)> {
    let found = (
        common::embedded(test),
        common::shared_data(test, "haystack"),
    );
    match found {
        (Some(c), Some(h)) => Some((c, h)),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: fixture missing under CI=true (model or ../shared/data/haystack)")
        }
        _ => None,
    }
}

fn niah_cfg(needles: NeedleSet) -> NiahConfig {
    NiahConfig {
        context_lengths: vec![1024],
        depths: vec![0.0, 50.0, 100.0],
        needles,
        max_new_tokens: 24,
        decoding: logo_eval::Decoding::default(),
    }
}

/// Both generators answer the three depths of one length with the same text (greedy, f32;
/// the torch one prefills the shared prefix once).
#[test]
fn torch_generator_answers_as_the_engine_does() {
    let test = "torch_generator_answers_as_the_engine_does";
    let Some((cfg, hay)) = fixtures(test) else {
        return;
    };
    tch::set_num_threads(2);
    let text = load_haystack(&hay).unwrap();
    let niah = niah_cfg(NeedleSet::sandwich());
    let (backend, tokenizer, template) = common::engine_backend(Policy::load(&cfg).unwrap());
    let engine = Generator {
        kind: "engine",
        backend: &backend,
        tokenizer: tokenizer.clone(),
        template,
    };
    let engine = run_niah(&engine, &text, &niah).unwrap();
    let model = Llama::load(&cfg.path, None, Device::Cpu, Kind::Float).unwrap();
    let tg = TorchBackend::new(model, tokenizer.clone(), template, "torch");
    let torch = Generator {
        kind: "torch",
        backend: &tg,
        tokenizer,
        template,
    };
    let torch = run_niah(&torch, &text, &niah).unwrap();
    for (a, b) in engine.results.iter().zip(&torch.results) {
        eprintln!(
            "depth {}: engine {:?} / torch {:?}",
            a.case.depth_percent, a.answer, b.answer
        );
        assert_eq!(a.answer, b.answer, "depth {}", a.case.depth_percent);
    }
    assert_eq!(torch.generator, "torch");
    eprintln!(
        "engine {:.1} s, torch {:.1} s for 3 cells",
        engine.seconds, torch.seconds
    );
}

/// The retrieval score on the embedded model for the base model and a random adapter, with the
/// single needle, which the base model recalls at 1K tokens ("eat a sandwich and sit in Dolores
/// Park"): some head copies ≥ 10 % of the value tokens, and the adapter changes the scores.
/// (With the three-value pizza needle the 135M model names one ingredient in three cells:
/// 2 copied tokens of 27, below the 0.1 threshold, observed 0 retrieval heads.)
#[test]
fn retrieval_score_of_base_and_adapter() {
    let test = "retrieval_score_of_base_and_adapter";
    let Some((cfg, hay)) = fixtures(test) else {
        return;
    };
    tch::set_num_threads(2);
    let text = load_haystack(&hay).unwrap();
    let niah = niah_cfg(NeedleSet::sandwich());
    let tokenizer = load_tokenizer(&cfg).unwrap();
    let template = ChatTemplate::from_tokenizer(&tokenizer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    common::random_adapter(&cfg.path, dir.path(), 0.3);
    let base = Llama::load(&cfg.path, None, Device::Cpu, Kind::Float).unwrap();
    let lora = logo_trainer::peft::read_adapter_config(dir.path()).unwrap();
    let adapted = Llama::load(&cfg.path, Some(&lora), Device::Cpu, Kind::Float).unwrap();
    logo_trainer::peft::load_adapter(&adapted, dir.path()).unwrap();
    let mut scores = Vec::new();
    for (label, model) in [("base", base), ("adapter", adapted)] {
        let tg = TorchBackend::new(model, tokenizer.clone(), template, "torch");
        let generator = Generator {
            kind: "torch",
            backend: &tg,
            tokenizer: tokenizer.clone(),
            template,
        };
        let r = run_niah(&generator, &text, &niah).unwrap();
        let s = r
            .retrieval
            .clone()
            .expect("torch computes the retrieval score");
        eprintln!(
            "{label}: recall {:.3}, retrieval score {:.3} ({} heads >= 0.1 of {}, {} needle tokens), top {:?}; answers {:?}",
            r.mean_recall,
            s.top_mean,
            s.retrieval_heads,
            s.per_head.len(),
            s.needle_tokens,
            &s.top_heads[..s.top_heads.len().min(3)],
            r.results.iter().map(|x| &x.answer).collect::<Vec<_>>()
        );
        assert_eq!(s.per_head.len(), 30 * 9);
        assert!(s.per_head.iter().all(|&x| (0.0..=1.0).contains(&x)));
        // "sandwich" and "Dolores Park" at 3 depths.
        assert!(s.needle_tokens >= 9, "{}", s.needle_tokens);
        scores.push((r.mean_recall, s));
    }
    let (base_recall, base) = &scores[0];
    assert!(*base_recall > 0.5, "the base model finds the needle");
    assert!(
        base.retrieval_heads >= 1 && base.top_mean >= 0.1,
        "{base:?}"
    );
    assert_ne!(
        base.per_head, scores[1].1.per_head,
        "the adapter changes attention"
    );
}
