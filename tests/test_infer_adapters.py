"""Per-request LoRA adapters: in one batch, each row equals its own merged model."""

from __future__ import annotations

import copy

import pytest
import torch
from infer_support import tiny_model

from minimind.errors import UserError
from minimind.infer import Engine, InvalidParams, SamplingParams

lora = pytest.importorskip("minimind.train.lora")

PROMPTS = [[5, 6, 7], [9, 8, 7, 6, 5, 4], [30, 31], [40, 41, 42, 43]]


def make_adapter(base, folder, seed: int, targets: str):
    """Train-shaped adapter with random (non-zero) B so it changes the outputs; return the merged model."""
    model = copy.deepcopy(base)
    lora.add_lora(model, targets, rank=4, alpha=8.0)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, adapter in lora.adapters(model):
            adapter.B.normal_(std=0.5)
    lora.save_adapter(model.state_dict(), folder, {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": targets,
                                                   "base": None})
    lora.merge_lora(model)
    return model.eval()


def greedy_ids(model, prompts):
    params = SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=[])
    return [s.output_ids for s in Engine(model).generate(prompts, params)]


def test_rows_with_different_adapters_share_a_batch(tmp_path):
    base = tiny_model(seed=4)
    merged_a = make_adapter(base, tmp_path / "a", 1, "*_proj")
    merged_b = make_adapter(base, tmp_path / "b", 2, "*q_proj,*down_proj")
    engine = Engine(base)
    engine.load_adapter("a", tmp_path / "a")
    engine.load_adapter("b", tmp_path / "b")
    names = ["a", None, "b", "a"]
    params = SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=[])
    out = engine.generate(PROMPTS, params, adapters=names)
    expect = {None: greedy_ids(base, PROMPTS), "a": greedy_ids(merged_a, PROMPTS), "b": greedy_ids(merged_b, PROMPTS)}
    for i, (name, seq) in enumerate(zip(names, out)):
        assert seq.output_ids == expect[name][i], (i, name)
    assert expect["a"] != expect[None] and expect["b"] != expect[None]  # the adapters matter
    # The base model itself is untouched outside adapter rows.
    assert greedy_ids(base, PROMPTS) == expect[None]


def test_adapter_errors(tmp_path):
    base = tiny_model()
    engine = Engine(base)
    with pytest.raises(InvalidParams, match="unknown adapter"):
        engine.new_sequence([1, 2], SamplingParams(), adapter="nope")
    with pytest.raises(UserError, match="not a LoRA adapter folder"):
        engine.load_adapter("x", tmp_path)


def test_server_selects_adapter_by_model_name(tmp_path):
    openai = pytest.importorskip("openai")
    from infer_support import LiveServer, tiny_tokenizer

    from minimind.serve import create_app

    tok = tiny_tokenizer(tmp_path / "tok")
    base = tiny_model(tok.vocab_size, seed=5)
    make_adapter(base, tmp_path / "a", 1, "*_proj")
    engine = Engine(base, tok)
    engine.load_adapter("medical", tmp_path / "a")
    params = SamplingParams(max_new_tokens=8, temperature=0)
    prompt = "Hello world"
    ref = {name: engine.generate([tok.encode(prompt)], params, adapters=[name])[0].text for name in (None, "medical")}
    assert ref[None] != ref["medical"]
    with LiveServer(create_app(engine, "base")) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["base", "medical"]
        for model, name in (("base", None), ("medical", "medical")):
            r = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
            assert r.choices[0].text == ref[name] and r.model == model
