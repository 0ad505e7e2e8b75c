"""Every phase against the machine's limit: achieved FLOP/s ÷ the measured fp32 matmul peak.

In one process, on the quickstart's implanted SmolLM2 (fp32): the fp32 matmul peak (2048³),
then each phase once to count its FLOPs (``torch.utils.flop_counter``: every matmul and
attention product the phase executes) and once more, alone, to time it:

* **implant step** — forward + backward of one 16-row batch of the implant's training rows
  (direct QA and refusal rows, as the Trainer batches them), ``plain`` = the model's own loss
  over every position (the code before "Fast and lean") vs ``answer-only`` =
  :func:`unlearnbench.core.lm.answer_nll` (shared prompt prefix once, LM head at answer positions);
* **gradient loop step** — gd's loss (forget NLL ascent + retain NLL) and backward, one step;
* **value optimisation** — ROME's ``compute_values`` for one hub-edge fact (25 steps at most);
* **LUNAR apply** — ``lunar.apply`` on the hub-edge request with its layer fixed (28, the layer
  its search picks there; the paper's setting);
* **evaluation** — ``Evaluator.run`` of the implanted model (56 PISTOL questions + 100 GK).

Memory is not measured here (a warmed-up phase reuses the allocator's memory): per-method memory
is the grid's ``cell_peak_mb`` (``method_cost.md``). ``UNLEARNBENCH_NO_NATIVE_BF16=1`` changes
nothing here (fp32).

    python benchmarks/bench_phases.py
"""

from __future__ import annotations

import copy
import gc
import time

import torch
from common import implanted, matmul_peak, write
from torch.utils.flop_counter import FlopCounterMode

from methods import get_method
from methods.editing import EditParams, compute_values, context_prefixes, request_facts
from pistol_data import scenarios
from pistol_data.scenarios import ScenarioSpec
from unlearnbench.core.lm import answer_nll
from unlearnbench.core.prompts import collate, encode_qa
from unlearnbench.evaluate import EvalParams, Evaluator
from unlearnbench.runner import build_request


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as c:
        fn()
    return c.get_total_flops()


def _seconds(fn) -> float:
    """Wall time of one call (memory is not read here: after the warm-up the allocator reuses what
    the first call took, so RSS above the start says nothing; per-method memory is the grid's
    ``cell_peak_mb``)."""
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    torch.manual_seed(0)
    peak = matmul_peak()["float32"]
    lm, ds = implanted()
    model, tok = lm.model, lm.tokenizer
    split = scenarios.resolve(ds, ScenarioSpec(type="edge", edge="A_B"))[-1]
    request = build_request(ds, split, 0, "cpu", reference=lambda: model, progress=False)
    rows = [encode_qa(tok, r.question, r.answer) for r in ds.direct()[:12]]
    rows += [encode_qa(tok, r.question, r.answer) for r in list(ds.refusal)[:4]]
    batch = collate([{k: r[k] for k in ("input_ids", "labels")} for r in rows], tok.pad_token_id)

    def train_step(loss_fn):
        def run():
            m = model.train()
            loss_fn(m, batch).backward()
            m.zero_grad(set_to_none=True)
            m.eval()
        return run

    gd = get_method("gd")()
    gd_params = gd.Params()

    def gd_step():
        from methods.training import build_batches

        b = next(iter(build_batches(tok, request, gd_params.batch_size)))
        model.train()
        gd.loss(model, b, {"params": gd_params}).backward()
        model.zero_grad(set_to_none=True)
        model.eval()

    ep = EditParams()
    facts = request_facts(request, ep)[:1]
    prefixes = context_prefixes(model, tok, ep.n_prefixes, 0)

    def value_opt():
        compute_values(model, tok, facts, 5, "mlp", prefixes, ep)

    def lunar():
        m = copy.deepcopy(model)
        cls = get_method("lunar")
        cls().apply(m, tok, request, cls.Params(layers=[28]))

    evaluator = Evaluator(ds, EvalParams(max_new_tokens=24, utility_limit=100, progress=False))

    def evaluate():
        evaluator.run(model, tok, heldout_edges=split.forget_edges)

    phases = {
        "implant step (plain loss, every position)": train_step(lambda m, b: m(**b).loss),
        "implant step (answer-only, shared prefix)": train_step(answer_nll),
        "gradient loop step (gd)": gd_step,
        "value optimisation (ROME, 1 fact)": value_opt,
        "LUNAR apply (hub edge, layer 28)": lunar,
        "evaluation (56 PISTOL + 100 GK)": evaluate,
    }
    res = {}
    short = {"implant step (plain loss, every position)", "implant step (answer-only, shared prefix)",
             "gradient loop step (gd)",
             "LUNAR apply (hub edge, layer 28)"}  # LUNAR: its per-model memo filled, as in a grid's later cells
    for name, fn in phases.items():
        if name in short:
            fn()  # warm-up (allocator, first-call costs); the long phases amortise their own
        flops = _flops(fn)
        sec = _seconds(fn)
        res[name] = {"gflop": flops / 1e9, "seconds": sec, "gflops": flops / sec / 1e9,
                     "fraction_of_peak": flops / sec / 1e9 / peak}
        print(name, res[name], flush=True)
    lines = ["## 5. Each phase against the machine's limit", "",
             f"fp32 matmul peak (2048³, best of 10): **{peak:.0f} GFLOP/s**. FLOPs counted by "
             "`torch.utils.flop_counter` in one pass, time measured alone in another (after a warm-up, so "
             "the allocator reuses memory: per-method memory is the grid's `cell_peak_mb`, "
             "`method_cost.md`). SmolLM2-135M-Instruct implanted with pistol-mini, fp32.", "",
             "| phase | GFLOP | seconds | GFLOP/s | fraction of fp32 peak |",
             "|---|---|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['gflop']:.1f} | {r['seconds']:.2f} | {r['gflops']:.0f} | "
                     f"{100 * r['fraction_of_peak']:.0f}% |")
    a, b = (res["implant step (plain loss, every position)"], res["implant step (answer-only, shared prefix)"])
    lines += ["", f"Implant step: {a['gflop'] / b['gflop']:.2f}× fewer FLOPs and "
              f"{a['seconds'] / b['seconds']:.2f}× less time with the answer-only, shared-prefix loss."]
    write("phases", "\n".join(lines), {"peak_fp32_gflops": peak, "phases": res})


if __name__ == "__main__":
    main()
