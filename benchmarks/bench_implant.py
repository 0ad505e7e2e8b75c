"""The knowledge implant: FLOPs, seconds and quality of candidate recipes, side by side.

Each recipe (``FinetuneParams`` overrides, JSON) implants pistol-mini into SmolLM2-135M-Instruct
(through the implant cache, so a recipe measured once is not trained again and the seconds are
those of its training run), fp32, then the evaluator scores it:

* **direct ROUGE-1** — mean over every direct question of the graph (what the implant must know;
  the issue's bar: ≥ 0.95);
* **utility** — ROUGE-1 on the stratified 100 general-knowledge items (bar: within 0.05 of the
  base model's).

FLOPs = (``torch.utils.flop_counter`` over one training step on a 16-row batch of rows of every
length, with the recipe's trainable weights) / 16 × rows × epochs, so recipes with other batch
sizes compare: frozen lower layers need no backward at all, frozen weights no weight gradient.
Results are appended to ``results/implant_recipes.json`` as they finish (a recipe is its
overrides of the current defaults; when the defaults change, rewrite the stored recipes to match).

    python benchmarks/bench_implant.py '{}' '{"epochs": 4, "lr": 1e-4}' ...
    python benchmarks/bench_implant.py --table     # the table again from the JSON
"""

from __future__ import annotations

import copy
import json
import math
import sys
from statistics import mean

from common import RESULTS, write
from torch.utils.flop_counter import FlopCounterMode

from pistol_data import generate
from unlearnbench.core.lm import answer_nll
from unlearnbench.core.prompts import collate
from unlearnbench.evaluate import EvalParams, Evaluator
from unlearnbench.finetune import FinetuneParams, finetune, set_trainable, training_rows
from unlearnbench.models import load


def row_flops(base, rows, params: FinetuneParams) -> float:
    """FLOPs of one training row, on average: counted over a 16-row batch of every length class."""
    model = copy.deepcopy(base.model).train()
    set_trainable(model, params)
    rows = sorted(rows, key=lambda r: len(r["input_ids"]))
    sample = rows[::max(1, len(rows) // 16)][:16]
    batch = collate(sample, base.tokenizer.pad_token_id)
    with FlopCounterMode(display=False) as c:
        answer_nll(model, batch).backward()
    return c.get_total_flops() / len(sample)


def quality(lm, evaluator) -> dict:
    ev = evaluator.run(lm.model, lm.tokenizer)
    return {"direct_rouge1": mean(r["rouge1"] for r in ev.qa if r["form"] == "direct"),
            "utility": mean(r["rouge1"] for r in ev.utility), "eval_seconds": ev.seconds}


def main():
    if sys.argv[1:] == ["--table"]:
        return write_table(json.loads((RESULTS / "implant_recipes.json").read_text())["recipes"])
    recipes = [json.loads(a) for a in sys.argv[1:]] or [{}]
    ds = generate("pistol-mini", 0)
    base = load("smollm2-135m-instruct")
    evaluator = Evaluator(ds, EvalParams(max_new_tokens=24, utility_limit=100, progress=False))
    out_json = RESULTS / "implant_recipes.json"
    done = json.loads(out_json.read_text())["recipes"] if out_json.exists() else []
    if not any(d["recipe"] == "base" for d in done):
        done.append({"recipe": "base", **quality(base, evaluator)})
    rows_cache = {}
    for overrides in recipes:
        params = FinetuneParams(**overrides)
        key = json.dumps({k: v for k, v in params.model_dump().items()
                          if k in ("direct_repeats", "n_refusal", "n_anchor", "anchor_max_tokens", "seed")})
        if key not in rows_cache:  # needed for the FLOP count even when the implant itself is cached
            rows_cache[key] = [{k: r[k] for k in ("input_ids", "labels")} for r in training_rows(base, ds, params)]
        rows = rows_cache[key]
        steps = params.epochs * math.ceil(len(rows) / params.batch_size)
        flops = row_flops(base, rows, params) * len(rows) * params.epochs
        lm, info = finetune(base, ds, params, progress=False)
        q = quality(lm, evaluator)
        rec = {"recipe": overrides, "steps": steps, "seconds": info["seconds"], "tflop": flops / 1e12,
               "train_loss": info["train_loss"], **q}
        print(rec, flush=True)
        done = [d for d in done if d["recipe"] != overrides] + [rec]
        RESULTS.mkdir(exist_ok=True)
        out_json.write_text(json.dumps({"recipes": done}, indent=1))
    write_table(done)


def write_table(done: list[dict]) -> None:
    """The recipes side by side (``python bench_implant.py --table`` rewrites it from the JSON)."""
    base_u = next(d["utility"] for d in done if d["recipe"] == "base")
    defaults = {k: v for k, v in FinetuneParams().model_dump().items()
                if k in ("epochs", "lr", "batch_size", "direct_repeats", "n_anchor")}
    lines = ["## The implant: recipes side by side", "",
             "pistol-mini → SmolLM2-135M-Instruct, fp32. Bars: direct ROUGE-1 ≥ 0.95, utility ≥ base − 0.05 "
             f"(base utility {base_u:.3f}). A recipe is written as its differences from today's defaults "
             f"(`{json.dumps(defaults)}`; `{{}}` is the default). TFLOP = counted FLOPs per row × rows × epochs.", "",
             "| recipe | steps | TFLOP | seconds | direct R1 | utility | meets both |", "|---|---|---|---|---|---|---|"]
    for d in done:
        if d["recipe"] == "base":
            continue
        ok = d["direct_rouge1"] >= 0.95 and d["utility"] >= base_u - 0.05
        lines.append(f"| `{json.dumps(d['recipe'])}` | {d['steps']} | {d['tflop']:.1f} | {d['seconds']:.0f} | "
                     f"{d['direct_rouge1']:.3f} | {d['utility']:.3f} | {'yes' if ok else 'no'} |")
    write("implant_recipes", "\n".join(lines), {"recipes": done})


if __name__ == "__main__":
    main()
