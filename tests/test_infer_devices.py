"""Inference on any device: helper tensors follow the logits' device; device and dtype defaults."""

from __future__ import annotations

import pytest
import torch

from minimind.devices import inference_dtype, pick_device
from minimind.errors import UserError
from minimind.infer.sampling import SamplingParams, make_generator, sample_tokens


def test_sampling_builds_every_tensor_on_the_logits_device():
    # On CUDA the penalty, temperature, uniform draws, ranks, top-k and top-p tensors used to be
    # made on the CPU and mixed with CUDA logits: every sampled generation raised. The meta device
    # stands in for CUDA here: it refuses CPU tensors the same way.
    params = [SamplingParams(temperature=0.7, top_k=5, top_p=0.9, repetition_penalty=1.2),
              SamplingParams(temperature=0.0), SamplingParams(temperature=1.0)]
    generators = [make_generator(i) for i in range(3)]
    logits = torch.randn(3, 50, device="meta")
    seen = torch.zeros(3, 50, dtype=torch.bool, device="meta")
    assert sample_tokens(logits, params, generators, seen).device.type == "meta"


def test_auto_device_and_dtype_on_this_machine():
    if torch.cuda.is_available():
        assert pick_device("auto").type == "cuda"
        assert inference_dtype(torch.device("cuda"), "auto") in (torch.bfloat16, torch.float16)
    else:
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(UserError, match="CUDA is not available"):
            pick_device("cuda")
    assert inference_dtype(torch.device("cpu"), "auto") is None  # the stored dtype on the CPU
    assert inference_dtype(torch.device("cpu"), "bfloat16") is torch.bfloat16
    with pytest.raises(UserError, match="--device must be"):
        pick_device("gpu0")
