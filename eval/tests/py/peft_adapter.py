"""Independent reference for eval/tests/peft_adapter.rs: a LoRA adapter written by PEFT itself.

Reads a JSON spec {"model": HF folder, "adapter": out folder, "input_ids": [...],
"logits": out file}; loads the folder with transformers (f32), wraps it with a PEFT LoRA
(r 4, alpha 8, attention and MLP targets), draws every lora_B from N(0, 0.02²) (seeded, so the
adapter is not a no-op), saves the adapter with `save_pretrained` (PEFT's own files and names),
and writes the next-token logits [V] of the adapted model for `input_ids` to `logits`
(safetensors, key "logits", f32).
"""
import json
import sys

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import LlamaForCausalLM


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(spec["model"], torch_dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    peft_model.eval()
    peft_model.save_pretrained(spec["adapter"])
    ids = torch.tensor([spec["input_ids"]], dtype=torch.long)
    with torch.no_grad():
        # An all-ones mask: transformers v5 treats mask-less inputs as possibly packed.
        out = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids))
    save_file({"logits": out.logits[0, -1].float().contiguous()}, spec["logits"])


if __name__ == "__main__":
    main()
