"""``unlearnbench plan`` at paper scale: every method on Llama-2-7B and Llama-3-8B configurations
(the PISTOL and LUNAR papers' models) on one 80 GB GPU, bf16 weights (``weights: auto`` on CUDA),
the gradient methods with full fine-tuning and with LoRA (r = 16), on PISTOL's sample dataset 1's
hub edge. Prediction only (no weights are loaded); the model behind it is validated against
measured peaks in ``plan_validation*.md``. Writes ``results/plan_paper_scale.{md,json}``.

    python benchmarks/plan_paper_scale.py [--memory-gb 80]
"""

from __future__ import annotations

import argparse

from common import write

from unlearnbench.config import RunConfig
from unlearnbench.plan import GB, plan

MODELS = ("llama-2-7b", "llama-3-8b")
LORA = {"r": 16}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory-gb", type=float, default=80.0)
    a = ap.parse_args()
    import methods
    from methods.training import TrainParams

    hub = [{"type": "edge", "edge": "A_B", "name": "hub"}]
    every = RunConfig(methods="all", scenarios=hub).method_entries()
    entries = [{"name": e.name} for e in every]
    entries += [{"name": e.name, "label": f"{e.name}-lora", "params": {"lora": LORA}} for e in every
                if issubclass(methods.get_method(e.name).Params, TrainParams)]
    rows, out = [], {}
    for model in MODELS:
        cfg = RunConfig(name="paper-scale", model=model, device="cuda", finetune=None,
                        data={"preset": "pistol-1", "seed": 0}, methods=entries,
                        scenarios=hub, seeds=[0])
        p = plan(cfg, device="cuda", memory_gb=a.memory_gb)
        out[model] = p
        for c in p["cells"]:
            rows.append(f"| {model} | {c['cell'].rsplit('__', 1)[0]} | {p['weights_gb']:.1f} | {c['peak_bytes'] / GB:.1f} "
                        f"({c['peak_phase']}) | {(p['weights_gb'] * GB + c['peak_bytes']) / GB:.1f} | "
                        f"{c['host_bytes'] / GB:.1f} | {'yes' if c['fits'] else 'no — ' + c['advice']} |")
    fit = {m: sum(c["fits"] for c in p["cells"]) for m, p in out.items()}
    md = "\n".join([
        f"## Paper scale: predicted peak per cell on one {a.memory_gb:.0f} GB GPU", "",
        "`unlearnbench plan`, bf16 weights on CUDA (trained tensors of a full fine-tune in fp32, AdamW state fp32), "
        "PISTOL sample dataset 1 (`pistol-1`), hub edge; `-lora` rows: LoRA r = 16 on every linear layer. "
        "Host = what the editors hold in CPU memory (key statistics, float64).", "",
        "| model | cell | weights GB | above the weights GB (phase) | total GB | host GB | fits |",
        "|---|---|---|---|---|---|---|", *rows, "",
        "Fit: " + "; ".join(f"{m} {fit[m]} of {len(out[m]['cells'])} cells" for m in MODELS) + "."])
    write("plan_paper_scale", md, {m: p for m, p in out.items()})


if __name__ == "__main__":
    main()
