"""Peak extra RSS of one training step (forward + backward) of a Llama causal LM, unpatched or
patched by ``xce.huggingface.patch``: ``python peak_memory.py {unpatched,patched}``.

One variant per process. After a short warm-up step (first-call set-up, gradient buffers), the RSS
high-water mark is reset (``/proc/self/clear_refs`` "5") and the step's ``VmHWM - VmRSS`` before
it is printed as JSON, with the loss.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers

import xce.huggingface

VOCAB, HIDDEN, BATCH, TIME = 32000, 256, 4, 512  # batch * time = 2048 positions


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main(variant: str) -> None:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=TIME,
    )
    model = transformers.LlamaForCausalLM(config)
    if variant == "patched":
        xce.huggingface.patch(model)
    ids = torch.randint(0, VOCAB, (BATCH, TIME))
    labels = ids.clone()
    labels[:, : TIME // 8] = -100  # a prompt

    def step(ids: torch.Tensor, labels: torch.Tensor) -> float:
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        return float(loss.detach())

    step(ids[:1, :16], labels[:1, :16])  # a short warm-up: gradient buffers and first-call set-up
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kib("VmRSS")
    loss = step(ids, labels)
    peak = _status_kib("VmHWM")
    print(json.dumps({"variant": variant, "extra_bytes": (peak - before) * 1024, "loss": loss}))


if __name__ == "__main__":
    main(sys.argv[1])
