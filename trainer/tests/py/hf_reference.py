"""Reference logits from HF transformers (and PEFT) for trainer/tests/model_vs_hf.rs.

Usage: python hf_reference.py SPEC.json

SPEC keys:
  action     "make": build a random tiny model from `config` (seed `seed`) and save it to `dir`
             with save_pretrained (safetensors); "peft": load the model in `dir` and the PEFT
             adapter in `adapter` (PeftModel.from_pretrained).
  model_class "llama" (LlamaForCausalLM, default) or "qwen2" (Qwen2ForCausalLM).
  cases      [{"input_ids": [[..]], "position_ids": [[..]]}, ...]; each is run through the
             model's forward in f32 and its logits [B,T,V] saved as `case{i}` in `out`
             (a safetensors file).

HF forward gets an all-ones attention_mask and use_cache=False: with position_ids that jump
and no mask, transformers v5 (masking_utils.find_packed_sequence_indices) would treat every jump
as the start of a new packed sequence and attend block-diagonally; LOGO needs plain causal
attention over the whole (synthesised-position) sequence, which is what logo's model does.
Nothing is downloaded: the models are created here from a config.
"""

import json
import sys

import torch
from safetensors.torch import save_file


def randomize(model, seed):
    """Weights large enough that every term matters (HF's std-0.02 init gives tiny logits):
    matrices ~ N(0, 1/in), norm weights ~ 1 + N(0, 0.1²), biases ~ N(0, 0.1²)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.ndim == 2:
                p.copy_(noise / p.shape[1] ** 0.5)
            elif name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.1 * noise)


def model_classes(kind):
    if kind == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        return Qwen2Config, Qwen2ForCausalLM
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaConfig, LlamaForCausalLM


def run_cases(model, cases):
    out = {}
    model.eval()
    with torch.no_grad():
        for i, case in enumerate(cases):
            ids = torch.tensor(case["input_ids"], dtype=torch.long)
            pos = torch.tensor(case["position_ids"], dtype=torch.long)
            logits = model(
                input_ids=ids,
                position_ids=pos,
                attention_mask=torch.ones_like(ids),
                use_cache=False,
            ).logits
            out[f"case{i}"] = logits.float().contiguous()
    return out


def main():
    spec = json.load(open(sys.argv[1]))
    config_cls, model_cls = model_classes(spec.get("model_class", "llama"))
    if spec["action"] == "make":
        torch.manual_seed(spec.get("seed", 0))
        config = config_cls(**spec["config"])
        model = model_cls(config).float()
        randomize(model, spec.get("seed", 0))
        model.save_pretrained(spec["dir"])
    elif spec["action"] == "peft":
        from peft import PeftModel

        base = model_cls.from_pretrained(spec["dir"], dtype=torch.float32)
        model = PeftModel.from_pretrained(base, spec["adapter"])
    else:
        raise SystemExit(f"unknown action {spec['action']}")
    save_file(run_cases(model, spec.get("cases", [])), spec["out"])


if __name__ == "__main__":
    main()
