"""Independent LOGO gradients with PyTorch + HF transformers + PEFT, for
trainer/tests/grad_vs_peft.rs.

Usage: python logo_grad_reference.py SPEC.json

SPEC: {"model_dir", "adapter_dir", "out", "beta", "gamma", "sft_weight",
       "samples": [{"prompt_ids", "prompt_positions", "responses": [chosen, rejected_1..M]}],
       "dtype": "float32" (default) or "bfloat16": the base model's dtype; PEFT keeps the
       adapter in float32 either way (autocast_adapter_dtype)}

Each sequence prompt+response is run on its own (no padding) with an all-ones attention mask;
l(y) is the mean log-probability of the response tokens; the loss is the paper's Eq. 2 plus
lambda times the NLL of the chosen response, averaged over samples. Written from the paper,
not from logo's Rust code. The gradients of every trainable (LoRA) parameter are saved under
PEFT's saved key names (without the adapter name `.default`).
"""

import json
import sys

import torch
import torch.nn.functional as F
from peft import PeftModel
from safetensors.torch import save_file
from transformers import LlamaForCausalLM


def mean_logp(model, prompt, positions, response):
    ids = torch.tensor([prompt + response])
    last = positions[-1]
    pos = torch.tensor([positions + [last + 1 + i for i in range(len(response))]])
    logits = model(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids),
                   use_cache=False).logits[0]
    p = len(prompt)
    pred = logits[p - 1 : p - 1 + len(response)].float()
    lp = F.log_softmax(pred, dim=-1).gather(1, torch.tensor(response)[:, None])[:, 0]
    return lp.mean()


def main():
    spec = json.load(open(sys.argv[1]))
    dtype = getattr(torch, spec.get("dtype", "float32"))
    base = LlamaForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype)
    model = PeftModel.from_pretrained(base, spec["adapter_dir"], is_trainable=True)
    model.eval()  # lora_dropout is 0 in the spec's adapter; eval changes nothing else
    beta, gamma, lam = spec["beta"], spec["gamma"], spec["sft_weight"]
    losses = []
    for s in spec["samples"]:
        lw = mean_logp(model, s["prompt_ids"], s["prompt_positions"], s["responses"][0])
        rej = [mean_logp(model, s["prompt_ids"], s["prompt_positions"], r) for r in s["responses"][1:]]
        m = len(rej)
        z = beta * lw - beta / m * sum(rej) - gamma
        losses.append(-F.logsigmoid(z) + lam * (-lw))
    loss = torch.stack(losses).mean()
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grads[name.replace(".default", "")] = p.grad.detach().float().contiguous()
    grads["loss"] = loss.detach().reshape(1)
    save_file(grads, spec["out"])


if __name__ == "__main__":
    main()
