"""GRACE: lifelong editing with discrete key-value adaptors (Hartvigsen et al., arXiv 2211.11031;
public code Thartvigsen/GRACE, ported to Llama-style models in EasyEdit).

A codebook wraps one block's MLP down-projection (:class:`GraceCodebook`). For each edit, one at a
time (the paper's batch of one):

1. the **query** is the down-projection's input at the edited prompt's last token;
2. the codebook **places** it (Alg. 1): no key within ε_init + ε_nearest → a new key with radius
   ε_init; the nearest key within reach and the same target → that key, its radius widened to
   cover the query ("coverage"); a different target → a new key, and both radii split at half
   their distance;
3. the key's **value** (cold: uniform random; warm: the layer's own output there) is trained with
   Adam (lr 1.0) so that, replacing the layer's output at that token, the model says the target
   (teacher-forced NLL over the target and EOS).

At inference a token within its nearest key's radius gets that key's value; every other token's
output is the layer's own, bit for bit — the original weights are never changed. Requests are
applied sequentially: ``apply`` on a model that already carries a codebook keeps growing it.
Unlearning mode gives every fact the same target (the refusal), so nearby keys widen instead of
splitting; edit mode's distinct answers split.

Defaults: EasyEdit's Llama hyper-parameters (ε 1.0, Euclidean distance, cold values, lr 1.0, 50
steps, coverage expansion); the layer is 27/32 of the depth as EasyEdit's layer 27 of Llama's 32.

Deviations (one line each):
* every token is checked against the codebook at inference, not only the input's last one — the
  same edit then fires in a batch, in a teacher-forced pass and in KV-cached generation, and a
  token outside every radius is untouched either way;
* target labels are compared as exact token sequences (the public code compares their mean id);
* a value's training stops once the target's NLL is below ``stop_nll`` (the paper: fixed steps);
* blocks below the codebook run once per edit, not once per step (they do not depend on the value).
"""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from unlearnbench.core.prompts import encode_qa

from ..base import UnlearnRequest, register_method
from ..editing import EditMethod, default_layers
from ..editing.upper import UpperRows, wrapped_mlp_out
from .codebook import GraceCodebook
from .config import GraceParams

__all__ = ["Grace", "GraceCodebook", "GraceParams"]

log = logging.getLogger(__name__)


def _codebook(mod) -> GraceCodebook:
    w = mod.weight
    d_in, d_out = (w.shape[0], w.shape[1]) if type(mod).__name__ == "Conv1D" else (w.shape[1], w.shape[0])
    return GraceCodebook(mod, d_in, d_out)


@register_method("grace")
class Grace(EditMethod):
    """GRACE: a key-value codebook with deferral radii around one layer; the weights stay as they are."""

    Params = GraceParams
    changes_structure = True

    def apply(self, model, tokenizer, request: UnlearnRequest, params: GraceParams):
        layer = params.layer if params.layer is not None else default_layers(model, 27 / 32, 1)[0]
        facts = self.facts(model, tokenizer, request, params)
        book = wrapped_mlp_out(model, layer, GraceCodebook, _codebook)
        device = book.keys.device
        flags = [p.requires_grad for p in model.parameters()]
        for p in model.parameters():
            p.requires_grad_(False)
        g = torch.Generator(device="cpu").manual_seed(request.seed)
        seen: dict = {}
        hook = book.layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach(), y=o.detach()))
        placed, nlls = {"add": 0, "expand": 0, "split": 0}, []
        try:
            for f in tqdm(facts, desc="grace edits", disable=not request.progress, leave=False):
                row = encode_qa(tokenizer, f.question, f.target)
                pos = row["prompt_len"] - 1
                up = UpperRows(model, layer, [row], tokenizer.pad_token_id)
                with torch.no_grad():
                    up.hidden()  # the hook reads the layer's input (the query) and output at ``pos``
                i, how = book.place(seen["x"][0, pos], tuple(row["input_ids"][row["prompt_len"]:]), params.eps,
                                    params.eps_expand)
                placed[how] += 1
                start = (torch.rand(book.values.shape[1], generator=g) if params.value_init == "cold"
                         else seen["y"][0, pos].float().cpu())
                value = start.to(device=device, dtype=torch.float32).requires_grad_(True)
                opt = torch.optim.Adam([value], lr=params.edit_lr)
                book.slot = (0, pos, value)
                for _ in range(params.n_iter):
                    nll = up.nll()[0]
                    if nll.item() < params.stop_nll:
                        break
                    opt.zero_grad()
                    nll.backward()
                    opt.step()
                book.slot = None
                book.values.data[i] = value.detach().to(book.values.dtype)
                nlls.append(round(nll.item(), 4))
        finally:
            hook.remove()
            book.slot = None
            for p, fl in zip(model.parameters(), flags):
                p.requires_grad_(fl)
        log.info("GRACE: %d edits at layer %d, %d keys (%s)", len(facts), layer, len(book.keys), placed)
        return self.result(model, {"layer": layer, "edits": len(facts), "keys": len(book.keys), **placed,
                                   "final_nll": nlls})
