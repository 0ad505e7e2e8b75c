"""unlearnbench's ROME side by side with EasyEdit's ROME: seconds per edit and edit quality.

The same implanted SmolLM2 (the quickstart's), the same facts (the hub edge's first ``--edits``
forget questions → the refusal sentence), the same settings (layer 5, 25 value steps at lr 0.5,
weight decay 1e-3, clamp 4, KL 0.0625, 20 context prefixes, no second-moment adjustment:
EasyEdit's Llama defaults), fp32, the same threads, edits applied one after another to one
model, as ROME is used for unlearning (arXiv 2505.19855). Each implementation starts from the
implanted weights; quality is read after all edits:

* **efficacy** — the edited question's greedy answer is a refusal;
* **paraphrase** — the paraphrased questions of the same facts are refused;
* **specificity** — the greedy answers to 24 retain questions (other edges) are unchanged.

EasyEdit is optional and never vendored: ``--easyedit PATH`` is a local checkout
(``git clone https://github.com/zjunlp/EasyEdit``); its ROME modules are loaded without running
``easyeditor/__init__.py`` (which imports every editor and their dependencies). Its prompt is
our chat-template rendering with the subject as ``{}``; its context templates go before the
template (ours inside the user turn) and its target is " I don't know." (ours ends with EOS).

    python benchmarks/bench_rome_vs_easyedit.py [--easyedit ~/EasyEdit] [--edits 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from common import implanted, write

from methods import get_method
from methods.editing import request_facts
from pistol_data import scenarios
from pistol_data.scenarios import ScenarioSpec
from unlearnbench.core.generation import generate_answers
from unlearnbench.core.prompts import prompt
from unlearnbench.metrics import is_refusal
from unlearnbench.runner import build_request

LAYER, N_PREFIXES = 5, 20


def _easyedit_rome(root: Path):
    """EasyEdit's ROME package from a checkout, its parent packages as bare namespaces."""
    root = root.expanduser().resolve()
    pkg = root / "easyeditor"
    if not (pkg / "models" / "rome" / "rome_main.py").is_file():
        raise SystemExit(f"--easyedit {root}: no easyeditor/models/rome/rome_main.py there")
    for name, path in (("easyeditor", pkg), ("easyeditor.models", pkg / "models"), ("easyeditor.util", pkg / "util")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(path)]
        sys.modules[name] = mod
    try:
        main = importlib.import_module("easyeditor.models.rome.rome_main")
        hp = importlib.import_module("easyeditor.models.rome.rome_hparams")
    except ImportError as e:
        raise SystemExit(f"EasyEdit's ROME needs a package this environment lacks: {e}")
    return main, hp.ROMEHyperParams


def _quality(model, tok, facts_q, para_q, spec_q, spec_before) -> dict:
    ans = generate_answers(model, tok, facts_q + para_q + spec_q, max_new_tokens=24, desc=None)
    a_f, a_p, a_s = ans[:len(facts_q)], ans[len(facts_q):len(facts_q) + len(para_q)], ans[len(facts_q) + len(para_q):]
    return {"efficacy": sum(map(is_refusal, a_f)) / len(a_f),
            "paraphrase": sum(map(is_refusal, a_p)) / max(len(a_p), 1),
            "specificity": sum(a == b for a, b in zip(a_s, spec_before)) / len(a_s)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--easyedit", type=Path, help="a local EasyEdit checkout (optional)")
    ap.add_argument("--edits", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm, ds = implanted()
    model, tok = lm.model, lm.tokenizer
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    split = scenarios.resolve(ds, ScenarioSpec(type="edge", edge="A_B"))[-1]
    request = build_request(ds, split, 0, "cpu", progress=False)
    request = dataclasses.replace(request, forget=list(request.forget)[:args.edits])
    cls = get_method("rome")
    params = cls.Params(layer=LAYER, n_prefixes=N_PREFIXES, mom2_adjustment=False)
    facts = request_facts(request, params)
    facts_q = [f.question for f in facts]
    keys = {(r.edge, r.attribute) for r in request.forget}
    para_q = [r.question for r in ds.by_form("paraphrase") if (r.edge, r.attribute) in keys]
    spec_q = [r.question for r in ds.direct() if r.edge not in split.forget_edges][:24]
    spec_before = generate_answers(model, tok, spec_q, max_new_tokens=24, desc=None)

    res = {}
    for name, p in (("unlearnbench", params),
                    ("unlearnbench, its defaults (C⁻¹ key adjustment, 5 prefixes)", cls.Params(layer=LAYER))):
        t = time.perf_counter()
        cls().apply(model, tok, request, p)
        res[name] = {"seconds_per_edit": (time.perf_counter() - t) / len(facts),
                     **_quality(model, tok, facts_q, para_q, spec_q, spec_before)}
        print(name, res[name], flush=True)
        model.load_state_dict(saved)

    if args.easyedit:
        rome_main, HP = _easyedit_rome(args.easyedit)
        hp = HP(alg_name="ROME", model_name="smollm2", device="cpu", layers=[LAYER], fact_token="subject_last",
                v_num_grad_steps=params.v_steps, v_lr=params.v_lr, v_loss_layer=model.config.num_hidden_layers - 1,
                v_weight_decay=params.v_weight_decay, clamp_norm_factor=params.clamp_norm_factor,
                kl_factor=params.kl_factor, mom2_adjustment=False, context_template_length_params=[[5, 10], [10, 10]],
                rewrite_module_tmp="model.layers.{}.mlp.down_proj", layer_module_tmp="model.layers.{}",
                mlp_module_tmp="model.layers.{}.mlp", attn_module_tmp="model.layers.{}.self_attn",
                ln_f_module="model.norm", lm_head_module="lm_head", mom2_dataset="wikipedia",
                mom2_n_samples=100000, mom2_dtype="float32", stats_dir=str(Path(tempfile.gettempdir()) / "easyedit-stats"))
        side = tok.padding_side
        tok.padding_side = "right"  # compute_v places the targets at the end of each unpadded row
        t = time.perf_counter()
        for f in facts:
            text = prompt(tok, f.question)
            req = {"prompt": text.replace(f.subject, "{}"), "subject": f.subject, "target_new": f.target}
            rome_main.apply_rome_to_model(model, tok, [req], hp)
        sec = (time.perf_counter() - t) / len(facts)
        tok.padding_side = side
        res["EasyEdit"] = {"seconds_per_edit": sec,
                           **_quality(model, tok, facts_q, para_q, spec_q, spec_before)}
        print("EasyEdit", res["EasyEdit"], flush=True)
        model.load_state_dict(saved)

    lines = ["## ROME side by side with EasyEdit", "",
             f"SmolLM2-135M-Instruct implanted with pistol-mini, fp32, {args.threads} threads; {len(facts)} hub-edge "
             f"facts → refusal, edited one after another; layer {LAYER}, {params.v_steps} value steps, "
             f"{N_PREFIXES} context prefixes, no second-moment adjustment (EasyEdit's Llama defaults).", "",
             "| implementation | s / edit | efficacy | paraphrase | specificity |", "|---|---|---|---|---|"]
    for name, r in res.items():
        lines.append(f"| {name} | {r['seconds_per_edit']:.1f} | {r['efficacy']:.2f} | {r['paraphrase']:.2f} | "
                     f"{r['specificity']:.2f} |")
    if "EasyEdit" not in res:
        lines += ["", "EasyEdit not run (pass `--easyedit PATH`, a local checkout)."]
    write("rome_vs_easyedit", "\n".join(lines), {"edits": len(facts), "threads": args.threads, "results": res})


if __name__ == "__main__":
    main()
