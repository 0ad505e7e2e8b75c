"""WISE: lifelong editing with a side memory and a router (Wang et al., arXiv 2405.14768; public
code in EasyEdit, easyeditor/models/wise).

One block's MLP down-projection (the *main memory*, never changed) gets a copy, the *side
memory*, which edits train (:class:`SideMemory`). For each edit (batch of one, sequentially):

1. rows: the edited prompt with its target, and one *out-of-scope* prompt taken from the
   request's ``preserve`` corpus (everyday prompts, disjoint from every evaluation set);
2. loss = the target's NLL with the side memory in place + the **routing loss** on the activation
   score Δ_act(x) = ‖A(x)(W_side − W_main)‖ averaged over a row's question tokens:
   ReLU(Δ_out − α) + ReLU(β − Δ_in) + ReLU(Δ_out − Δ_in + γ) (α 5, β 20, γ 10);
3. SGD (lr 1.0, weight decay 1e-5) on the side memory, its gradient multiplied by the shard's
   **random mask** (each entry trains with probability ``mask_ratio`` = 0.2; a new mask for each
   shard of ``save_freq`` edits: *knowledge sharding*); entries kept within ±1.0 of the main
   memory's;
4. the edit's in-scope score is kept: a memory's routing threshold is ``act_ratio`` (0.88) × the
   smallest one of its edits.

Every ``merge_freq`` edits finished shards are merged with **TIES** (trim to the 53% largest
changes, elect signs, disjoint mean; ``peft``'s implementation). WISE-Retrieve (the default, as
EasyEdit's Llama settings) keeps the merged memories apart and routes to the one a token
activates most; WISE-Merge (``retrieve: false``) keeps one merged side memory (pending shards are
merged at the end of ``apply`` so that they are routed). The **router**: a token reads the side
memory with the highest score above its threshold, else the main memory — an out-of-scope input
gets the original layer's output bit for bit. Requests are applied sequentially.

Defaults: EasyEdit's Llama hyper-parameters; the layer is 27/32 of the depth (EasyEdit's layer 27
of Llama's 32; SmolLM2-135M: 25 of 30).

Deviations (one line each):
* routing is per token (EasyEdit: per forward call, the mean score over its tokens), so a
  decision is the same in a batch or alone, with or without a shared-prefix KV cache, teacher-forced
  or generated;
* training scores average over a row's real tokens, the chat template's shared prefix counted as
  out of scope only (it is the same for every input; EasyEdit: every token of each row);
* the activation score is the plain output-difference norm of the paper (EasyEdit applies the
  MLP activation function to both outputs first);
* an edit's training stops once its loss is ≤ ``stop_loss`` (EasyEdit: loss ≤ 0.02 and stable);
* WISE-Merge merges all shards with equal TIES weights (EasyEdit weights an earlier merge 0.6);
* weight decay is masked with the gradient, so entries outside a shard's mask never move (EasyEdit's
  SGD decays every entry);
* no replay of earlier edits (EasyEdit's ``replay``, off in its settings too);
* blocks below the side memory run once per edit, not once per step.
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from unlearnbench.core.prompts import IGNORE, encode_qa, prompt, template_prefix_len

from ..base import UnlearnRequest, register_method
from ..editing import EditMethod, default_layers
from ..editing.upper import UpperRows, wrapped_mlp_out
from .config import WiseParams
from .memory import SideMemory, activation_score

__all__ = ["SideMemory", "Wise", "WiseParams", "activation_score"]

log = logging.getLogger(__name__)


@register_method("wise")
class Wise(EditMethod):
    """WISE: edits go to a side memory of one layer; a router picks main or side memory per token."""

    Params = WiseParams
    changes_structure = True

    def apply(self, model, tokenizer, request: UnlearnRequest, params: WiseParams):
        if not request.preserve:
            raise ValueError("wise needs out-of-scope prompts for its routing loss: the request's preserve "
                             "corpus is empty")
        if params.merge_freq % params.save_freq:
            raise ValueError(f"wise: merge_freq ({params.merge_freq}) must be a multiple of save_freq "
                             f"({params.save_freq})")
        layer = params.layer if params.layer is not None else default_layers(model, 27 / 32, 1)[0]
        facts = self.facts(model, tokenizer, request, params)
        mem = wrapped_mlp_out(model, layer, SideMemory, lambda mod: SideMemory(mod, params.act_ratio))
        mem.act_ratio = params.act_ratio
        skip = template_prefix_len(tokenizer)
        outside = [tokenizer(prompt(tokenizer, q), add_special_tokens=False)["input_ids"]
                   for q in request.preserve[:params.preserve_rows]]
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        g = torch.Generator(device="cpu").manual_seed(request.seed)
        w0 = mem.layer.weight
        losses, scores = [], []
        try:
            for f in tqdm(facts, desc="wise edits", disable=not request.progress, leave=False):
                if mem.edits % params.save_freq == 0:
                    mem.new_mask(params.mask_ratio, g)
                row = encode_qa(tokenizer, f.question, f.target)
                ids = outside[mem.edits % len(outside)]
                up = UpperRows(model, layer, [row, {"input_ids": ids, "labels": [IGNORE] * len(ids)}],
                               tokenizer.pad_token_id)
                mask = up.inputs["attention_mask"].clone()
                mask[0, :skip] = 0  # in scope: the question's tokens; the template prefix is out of scope
                w = mem.current.weight.requires_grad_(True)
                opt = torch.optim.SGD([w], lr=params.edit_lr)
                mem.editing = True
                for _ in range(params.n_iter):
                    nll = up.nll()[0]
                    s = (mem.scores * mask).sum(1) / mask.sum(1).clamp(min=1)
                    s_in, s_out = s[0], s[1]
                    relu = torch.nn.functional.relu
                    loss = nll + relu(s_out - params.alpha) + relu(params.beta - s_in) + relu(s_out - s_in + params.gamma)
                    if loss.item() <= params.stop_loss:
                        break
                    opt.zero_grad()
                    loss.backward()
                    w.grad.add_(w.detach(), alpha=params.weight_decay).mul_(mem.mask)  # decay inside the shard too
                    opt.step()
                    if params.norm_constraint is not None:
                        with torch.no_grad():
                            w.copy_(torch.minimum(torch.maximum(w, w0 - params.norm_constraint),
                                                  w0 + params.norm_constraint))
                mem.editing = False
                w.requires_grad_(False)
                losses.append(round(loss.item(), 4))
                scores.append(round(s_in.item(), 3))
                mem.finish_edit(s_in.item(), params.save_freq, params.merge_freq, params.retrieve, params.density)
            if not params.retrieve and mem.shards:
                mem.merge(False, 0, params.density)
        finally:
            mem.editing = False
            mem.scores = None  # the last step's scores hold its graph (a copy of the model would fail)
            mem.current.weight.requires_grad_(False)
            for p, fl in zip(model.parameters(), flags):
                p.requires_grad_(fl)
        log.info("WISE: %d edits at layer %d; %d side memories + the current one", len(facts), layer, len(mem.memories))
        return self.result(model, {"layer": layer, "edits": len(facts), "memories": len(mem.memories),
                                   "thresholds": [round(t, 3) for _, t in mem.candidates()],
                                   "final_loss": losses, "in_scope_score": scores})
