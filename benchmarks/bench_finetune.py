"""Fine-tune (knowledge implant) throughput, full vs LoRA, in tokens per second.

One epoch of the quickstart's implant (pistol-mini into SmolLM2-135M-Instruct, the default
`FinetuneParams` otherwise) in each mode, written to a scratch directory so the cache is not
touched; tokens = every training row's tokens (prompt + answer), as the Trainer sees them.

    python benchmarks/bench_finetune.py
"""

from __future__ import annotations

import tempfile

from common import write

from pistol_data import generate
from unlearnbench.core.precision import use_bf16
from unlearnbench.finetune import FinetuneParams, finetune
from unlearnbench.models import load


def main():
    ds = generate("pistol-mini", 0)
    res = {}
    for mode in ("full", "lora"):
        params = FinetuneParams(mode=mode, epochs=1)
        with tempfile.TemporaryDirectory() as d:
            _, info = finetune(load("smollm2-135m-instruct"), ds, params, out_dir=d, progress=False)
        res[mode] = {"seconds": info["seconds"], "tokens": info["train_tokens"], "rows": info["n_rows"],
                     "tokens_per_s": info["train_tokens"] / info["seconds"], "loss": info["train_loss"],
                     "bf16": use_bf16(params.precision)}
    lines = ["## 2. Fine-tune throughput", "",
             "One epoch of the quickstart implant (pistol-mini → SmolLM2-135M-Instruct; batch 16, "
             f"bf16 autocast: {'yes' if res['full']['bf16'] else 'no'}). Full = every weight but the embeddings; "
             "LoRA = rank-32 adapters on every linear layer (peft), merged afterwards.", "",
             "| mode | rows | tokens | seconds | tokens/s |", "|---|---|---|---|---|"]
    for mode, r in res.items():
        lines.append(f"| {mode} | {r['rows']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} |")
    ratio = res["lora"]["tokens_per_s"] / res["full"]["tokens_per_s"]
    lines += ["", f"LoRA / full token rate: {ratio:.2f}×."]
    write("finetune_throughput", "\n".join(lines), res)


if __name__ == "__main__":
    main()
