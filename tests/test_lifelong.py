"""GRACE and WISE on the tiny model: the codebook's and the router's mechanisms."""

import copy

import pytest
import torch

import methods
from methods.grace import GraceCodebook
from methods.wise import SideMemory, activation_score
from pistol_data import QARecord
from unlearnbench.core.arch import mlp_out
from unlearnbench.core.prompts import encode_qa
from unlearnbench.models import load


def _req(edits, **kw):
    return methods.UnlearnRequest(forget=[], retain=[], edits=edits, progress=False, **kw)


def _qa(q, a):
    return QARecord(question=q, answer=a, edge="x", form="direct", attribute="a")


def _first_token_rank(model, tok, q, a):
    """Rank of the target's first token after the prompt (0 = the model's top choice). The tiny
    random model's head cannot make any token likely (its logits span little), so the tests ask
    for the top rank, not a probability."""
    row = encode_qa(tok, q, a)
    p = row["prompt_len"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([row["input_ids"][:p]])).logits[0, -1]
    return int((logits > logits[row["input_ids"][p]]).sum())


def _logits(model, tok, text):
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


EDITS = [_qa("Who signed the contract for Alpha Mills?", "Z"),  # one-token targets: see _first_token_rank
         _qa("When did Beta Works open its office?", "Q")]


def test_grace_edits_and_leaves_other_inputs_bit_identical():
    lm = load("tiny-random-llama")
    before = copy.deepcopy(lm.model)
    r0 = [_first_token_rank(before, lm.tokenizer, e.question, e.answer) for e in EDITS]
    out = methods.get_method("grace")().apply(lm.model, lm.tokenizer, _req(EDITS),
                                              methods.get_method("grace").Params(layer=1, n_iter=30))
    book = mlp_out(out.model, 1)
    assert isinstance(book, GraceCodebook) and len(book.keys) == 2 and out.info["add"] + out.info["split"] == 2
    r1 = [_first_token_rank(out.model, lm.tokenizer, e.question, e.answer) for e in EDITS]
    assert min(r0) > 10 and r1 == [0, 0], (r0, r1)
    # the wrapped layer's own weights are untouched, and an unrelated input, outside every radius,
    # gets the unedited model's logits bit for bit
    assert torch.equal(book.layer.weight, mlp_out(before, 1).weight)
    text = "A sentence about something else entirely."
    seen = {}
    h = book.layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    edited = _logits(out.model, lm.tokenizer, text)
    h.remove()
    dist, idx = book.nearest(seen["x"])
    assert bool((dist > book.eps[idx]).all())
    assert torch.equal(edited, _logits(before, lm.tokenizer, text))


def test_grace_codebook_places_widens_and_splits():
    book = GraceCodebook(torch.nn.Linear(4, 3), 4, 3)
    a, b = (1, 2), (3, 4)
    assert book.place(torch.zeros(4), a, 1.0, "coverage") == (0, "add")
    # within ε_init + ε of key 0, same label: key 0's radius widens to reach it
    assert book.place(torch.tensor([1.5, 0, 0, 0]), a, 1.0, "coverage") == (0, "expand")
    assert book.eps[0].item() == pytest.approx(1.5)
    # within reach, another label: a new key; both radii split at half the distance
    assert book.place(torch.tensor([0, 2.0, 0, 0]), b, 1.0, "coverage") == (1, "split")
    assert book.eps.tolist() == pytest.approx([1.0 - 1e-5, 1.0])
    assert book.place(torch.tensor([9.0, 9, 9, 9]), b, 1.0, "coverage") == (2, "add")
    # inference: inside a radius → that key's value; outside every radius → the layer's own output
    book.values.data[:] = torch.arange(9.0).view(3, 3)
    x = torch.stack([torch.tensor([0.1, 0, 0, 0]), torch.tensor([5.0, -5, 5, -5])])[None]
    y = book(x)
    assert torch.equal(y[0, 0], book.values[0]) and torch.equal(y[0, 1], book.layer(x)[0, 1])


def test_grace_is_sequential():
    lm = load("tiny-random-llama")
    g = methods.get_method("grace")
    p = g.Params(layer=1, n_iter=5)
    m = g().apply(lm.model, lm.tokenizer, _req(EDITS[:1]), p).model
    m = g().apply(m, lm.tokenizer, _req(EDITS[1:]), p).model
    assert len(mlp_out(m, 1).keys) == 2


def _wise_params(**kw):
    return methods.get_method("wise").Params(layer=1, **{"n_iter": 20, **kw})


PRESERVE = ["What is the capital of France?", "How do plants grow?", "Name a prime number."]


def test_wise_router_sends_out_of_scope_tokens_to_the_main_memory():
    main = torch.nn.Linear(4, 3, bias=False)
    mem = SideMemory(main, act_ratio=0.5)
    x = torch.tensor([[[1.0, 0, 0, 0], [0, 0, 0, 2.0]]])  # token 0 out of scope, token 1 in scope
    assert torch.equal(mem(x), main(x))  # no edits: the main memory
    with torch.no_grad():
        mem.current.weight[:, 3] += 1.0  # the side memory differs only along in-scope inputs
    mem.current_acts = [2.0]  # threshold 0.5 × 2.0 = 1.0
    y = mem(x)
    assert torch.equal(y[0, 0], main(x)[0, 0])  # score 0 → main memory, bit for bit
    assert torch.equal(y[0, 1], mem.current(x)[0, 1])  # score √3·2 ≥ 1 → side memory
    # among several memories, the one a token activates most
    strong = copy.deepcopy(mem.current)
    with torch.no_grad():
        strong.weight[:, 3] += 1.0
    mem.memories.append(strong)
    mem.min_acts.append(2.0)
    assert torch.equal(mem(x)[0, 1], strong(x)[0, 1]) and torch.equal(mem(x)[0, 0], main(x)[0, 0])


def test_wise_edits_its_side_memory_within_the_shard_mask():
    lm = load("tiny-random-llama")
    before = copy.deepcopy(lm.model)
    r0 = [_first_token_rank(before, lm.tokenizer, e.question, e.answer) for e in EDITS]
    out = methods.get_method("wise")().apply(lm.model, lm.tokenizer, _req(EDITS, preserve=PRESERVE), _wise_params())
    mem = mlp_out(out.model, 1)
    assert isinstance(mem, SideMemory) and mem.edits == 2 and len(mem.current_acts) == 2
    copy.deepcopy(out.model)  # no graph left on the module: the attacks copy the edited model
    assert torch.equal(mem.layer.weight, mlp_out(before, 1).weight)  # the main memory never changes
    moved = mem.current.weight != mem.layer.weight
    assert bool(moved.any()) and not bool((moved & (mem.mask == 0)).any())  # knowledge sharding
    with torch.no_grad():  # the side memory alone (router bypassed) says the targets
        mem.editing = True
        r_side = [_first_token_rank(out.model, lm.tokenizer, e.question, e.answer) for e in EDITS]
        mem.editing = False
    assert all(b < a / 10 for a, b in zip(r0, r_side)), (r0, r_side)
    # a routed forward is the main memory's wherever the side memory's score is under its threshold
    text = "How do plants grow?"
    seen = {}
    h = mem.layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0], main=o))
    ids = torch.tensor([lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out.model(input_ids=ids)
        h.remove()
        routed = mem(seen["x"])
    [(side, threshold)] = mem.candidates()
    below = activation_score(side(seen["x"]), seen["main"]) < threshold
    assert torch.equal(routed[below], seen["main"][below])


def test_wise_shards_and_merges():
    lm = load("tiny-random-llama")
    edits = EDITS + [_qa("Where is Gamma Corp based?", "M")]
    w = methods.get_method("wise")
    mem = mlp_out(w().apply(lm.model, lm.tokenizer, _req(edits, preserve=PRESERVE),
                            _wise_params(save_freq=1, merge_freq=2, n_iter=3)).model, 1)
    # Retrieve: edits 1+2 merged into one memory, edit 3 its own → two memories, no current edits
    assert len(mem.memories) == 2 and not mem.current_acts and mem.edits == 3
    lm2 = load("tiny-random-llama")
    mem2 = mlp_out(w().apply(lm2.model, lm2.tokenizer, _req(edits, preserve=PRESERVE),
                             _wise_params(save_freq=1, merge_freq=2, n_iter=3, retrieve=False)).model, 1)
    assert len(mem2.memories) == 1 and not mem2.shards  # Merge: one side memory
    with pytest.raises(ValueError, match="preserve corpus is empty"):
        w().apply(lm2.model, lm2.tokenizer, _req(edits), _wise_params())


def test_self_improved_targets_are_written_once_and_recorded(mini, monkeypatch):
    from pistol_data import scenarios
    from unlearnbench.core import targets

    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    req = methods.UnlearnRequest(forget=split.request(mini)[:3], retain=split.retain(mini)[:4],
                                 refusal_targets=["I don't know."], entities=sorted(mini.entity_names()),
                                 progress=False, preserve=PRESERVE)
    made = []
    real = targets.generate_answers
    monkeypatch.setattr(targets, "generate_answers", lambda *a, **k: made.append(1) or real(*a, **k))
    lm = load("tiny-random-llama")
    g = methods.get_method("grace")
    out = g().apply(copy.deepcopy(lm.model), lm.tokenizer, req, g.Params(layer=1, n_iter=2, target="self_improve"))
    written = out.info["targets"]
    assert list(written) == [r.question for r in req.forget] and all(written.values()) and made == [1]
    # the prompt shows the demonstrations and ends with the question
    p = targets.self_improve_prompt(req.forget[0].question)
    assert all(a in p for _, a in targets.DEMONSTRATIONS) and p.endswith(req.forget[0].question + "\nAnswer:")
    # DPO prefers the same sentences; the cache answers (nothing generated again)
    d = methods.get_method("dpo")
    req.reference_model = lambda: copy.deepcopy(lm.model)
    out = d().apply(copy.deepcopy(lm.model), lm.tokenizer, req, d.Params(epochs=1, target="self_improve"))
    assert out.info["targets"] == written and made == [1]
    # the default stays the plain refusal
    out = g().apply(copy.deepcopy(lm.model), lm.tokenizer, req, g.Params(layer=1, n_iter=2))
    assert "targets" not in out.info


def test_a_self_written_target_that_states_the_answer_falls_back(monkeypatch):
    """A model that memorised the fact answers instead of declining (SmolLM2 on the implanted hub
    edge): such a target would edit toward the answer, so the plain refusal replaces it."""
    from unlearnbench.core import targets

    monkeypatch.setattr(targets, "generate_answers", lambda m, t, prompts, **k: [
        "22-04-1986.", "I'm sorry, I can't say when.\nQuestion: next", "They sold paint buckets, I believe."])
    monkeypatch.setattr(targets, "weight_hash", lambda m: "stub")
    qs = ["When?", "When again?", "What good?"]
    model = torch.nn.Linear(1, 1)
    out = targets.self_improved_refusals(model, None, qs, "I don't know.", answers=["22-04-1986.", "22-04-1986.",
                                                                                  "Paint buckets."])
    assert out == ["I don't know.", "I'm sorry, I can't say when.", "I don't know."]
    # without the answers nothing is checked (and the cache keys differ)
    assert targets.self_improved_refusals(model, None, qs, "I don't know.")[0] == "22-04-1986."
    assert targets.states("The date was 22-04-1986, I think.", "22-04-1986.")
    assert not targets.states("about 110 units", "11.")
