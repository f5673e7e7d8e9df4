#!/usr/bin/env python3
"""The same LOGO training step as `logo-trainer bench`, done the way a user would with
PyTorch + Hugging Face transformers + PEFT: one padded batch of the M+1 sequences
(prompt + response), full logits, log-softmax, mean response log-probability, the LOGO loss
(paper Eq. 2 + lambda * NLL), backward, AdamW on the LoRA parameters.

Usage: python hf_peft_logo_step.py MODEL_DIR EXAMPLE.json STEPS
EXAMPLE.json: {"prompt_ids", "prompt_positions", "chosen_ids", "rejected_ids"} (the sample
`logo-trainer bench` uses). Prints JSON: step seconds, tokens/s, peak RSS.
"""
import json
import resource
import sys
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM


def main():
    model_dir, example_path, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ex = json.load(open(example_path))
    torch.manual_seed(0)
    base = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "embed_tokens"],
                     task_type="CAUSAL_LM")
    model = get_peft_model(base, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    prompt, positions = ex["prompt_ids"], ex["prompt_positions"]
    responses = [ex["chosen_ids"]] + ex["rejected_ids"]
    p = len(prompt)
    t = max(p + len(r) for r in responses)
    ids = torch.zeros(len(responses), t, dtype=torch.long)
    pos = torch.zeros(len(responses), t, dtype=torch.long)
    mask = torch.zeros(len(responses), t, dtype=torch.long)
    for i, r in enumerate(responses):
        n = p + len(r)
        ids[i, :n] = torch.tensor(prompt + r)
        pos[i, :] = torch.tensor(positions + [positions[-1] + 1 + k for k in range(t - p)])
        mask[i, :n] = 1
    tokens = int(mask.sum())
    beta, gamma, lam, m = 10.0, 3.0, 0.1, len(responses) - 1

    times, loss_value = [], None
    for step in range(steps + 1):
        start = time.perf_counter()
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False).logits
        logp = F.log_softmax(logits.float(), dim=-1)
        ells = []
        for i, r in enumerate(responses):
            pred = logp[i, p - 1 : p - 1 + len(r)]
            ells.append(pred.gather(1, torch.tensor(r)[:, None]).mean())
        lw, ll = ells[0], torch.stack(ells[1:])
        loss = -F.logsigmoid(beta * lw - beta / m * ll.sum() - gamma) + lam * (-lw)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for q in model.parameters() if q.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
        loss_value = float(loss)
        if step > 0:
            times.append(time.perf_counter() - start)
    times_sorted = sorted(times)
    median = times_sorted[len(times_sorted) // 2]
    print(json.dumps({
        "implementation": "pytorch+transformers+peft",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tokens_per_step": tokens,
        "step_seconds": times,
        "median_step_seconds": median,
        "tokens_per_second": tokens / median,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "last_loss": loss_value,
    }))


if __name__ == "__main__":
    main()
