"""Independent reference for eval/tests/committed_adapters.rs: adapters loaded by PEFT itself.

Reads a JSON spec {"model": HF folder, "adapters": [folders], "input_ids": [...],
"out": folder}; loads the base with transformers (f32) and, for adapter i, wraps it with
`PeftModel.from_pretrained` (PEFT's own reader of adapter_config.json and
adapter_model.safetensors), checks that every tensor of the file became a LoRA weight of the
model (same count, same values), and writes the next-token logits [V] for `input_ids` to
`out/logits-{i}.safetensors` (key "logits", f32) and the loaded weights' count to
`out/loaded-{i}.json`.
"""
import json
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    ids = torch.tensor([spec["input_ids"]], dtype=torch.long)
    for i, adapter in enumerate(spec["adapters"]):
        base = LlamaForCausalLM.from_pretrained(spec["model"], torch_dtype=torch.float32)
        model = PeftModel.from_pretrained(base, adapter)
        model.eval()
        stored = load_file(f"{adapter}/adapter_model.safetensors")
        params = {n: p for n, p in model.named_parameters() if "lora_" in n}
        matched = 0
        for key, value in stored.items():
            # PEFT stores "base_model.model.X.lora_A.weight" and names the parameter
            # "base_model.model.X.lora_A.default.weight"; an embedding's factors are stored as
            # "X.lora_embedding_A" and named "X.lora_embedding_A.default".
            name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                ".lora_B.weight", ".lora_B.default.weight")
            if name.endswith((".lora_embedding_A", ".lora_embedding_B")):
                name += ".default"
            if name not in params:
                sys.exit(f"{adapter}: {key} did not become a parameter of the PEFT model")
            if not torch.equal(params[name].detach().float(), value.float()):
                sys.exit(f"{adapter}: {key} loaded with other values")
            matched += 1
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
        save_file({"logits": out.logits[0, -1].float().contiguous()},
                  f"{spec['out']}/logits-{i}.safetensors")
        json.dump({"stored": len(stored), "matched": matched, "lora_params": len(params)},
                  open(f"{spec['out']}/loaded-{i}.json", "w"))


if __name__ == "__main__":
    main()
