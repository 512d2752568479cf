"""Greedy generation equals transformers' generate(do_sample=False) on the same exported weights."""

from __future__ import annotations

import pytest
import torch
from infer_support import tiny_model

from minimind.infer import Engine, SamplingParams
from minimind.interop import export_hf

transformers = pytest.importorskip("transformers")

PROMPTS = [[5, 6, 7], [9, 8, 7, 6, 5, 4, 3, 10, 11, 12, 13], [60, 61], list(range(20, 47))]


@pytest.mark.parametrize("sharp", [True, False])
def test_greedy_matches_transformers(tmp_path, sharp):
    model = tiny_model(sharp=sharp, seed=1)
    out = export_hf(model, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = Engine(model).generate(PROMPTS, SamplingParams(max_new_tokens=16, temperature=0, stop_token_ids=[]))
    for prompt, seq in zip(PROMPTS, ours):
        ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=16, min_new_tokens=16, eos_token_id=None,
                          pad_token_id=0)
        assert seq.output_ids == ref[0, len(prompt):].tolist()


def test_eos_stops_like_transformers(tmp_path):
    model = tiny_model(seed=2)
    prompt = [5, 6, 7]
    free = Engine(model).generate([prompt], SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=[]))[0]
    eos = free.output_ids[4]
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "hf")).eval()
    ref = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12, eos_token_id=eos, pad_token_id=0)
    ours = Engine(model).generate([prompt], SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=[eos]))[0]
    assert ours.output_ids == ref[0, 3:].tolist() == free.output_ids[:free.output_ids.index(eos) + 1]
