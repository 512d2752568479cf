"""Any model shape: --preset / --model-config plus shape flags, round-tripped through the saved
model_config.json; clear errors naming the flag; --init may change only the context; the one
check that --seq-len fits the model's context; `minimind model show`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from minimind import MiniMindLM, ModelConfig, get_preset
from minimind.checkpoint import load_model, save_model
from minimind.cli import main
from minimind.config import swiglu_width
from minimind.errors import UserError
from minimind.shapes import CONFIG_FIELD, ModelOverrides, parse_rope_scaling
from minimind.tokenizer import default_tokenizer_dir

RUN = ["--seq-len", "16", "--batch-size", "2", "--max-steps", "1", "--no-progress", "--eval-batches", "0",
       "--num-samples", "0"]


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    words = "the cat sat on a mat and the dog ran to the park while birds sang".split()
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("shapes") / "pre.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(40))}) + "\n"
                            for _ in range(40)))
    return path


def _saved_config(run: Path) -> dict:
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    return json.loads((ckpt / "model_config.json").read_text())


def test_every_shape_flag_round_trips_through_the_saved_config(tmp_path, text):
    flags = {"hidden-size": 64, "num-layers": 2, "num-heads": 4, "num-kv-heads": 2, "head-dim": 24,
             "intermediate-size": 96, "vocab-size": 6464, "num-experts": 3, "experts-per-token": 2,
             "shared-experts": 1, "max-seq-len": 128}
    argv = [x for k, v in flags.items() for x in (f"--{k}", str(v))]
    run = tmp_path / "run"
    assert main(["pretrain", "--preset", "small", *argv, "--qk-norm", "--rope-scaling", "yarn:4",
                 "--data", str(text), "--out", str(run), *RUN]) == 0
    saved = _saved_config(run)
    field_of = {"experts-per-token": "num_experts_per_tok", "shared-experts": "num_shared_experts"}
    for k, v in flags.items():
        assert saved[field_of.get(k, k.replace("-", "_"))] == v, k
    assert saved["qk_norm"] is True
    # yarn:4 at a 128-token context: trained at 128 / 4 = 32 positions, stretched 4x.
    assert saved["rope_scaling"] == {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    assert saved["moe_intermediate_size"] == 96  # follows --intermediate-size, as in the preset
    model = MiniMindLM(ModelConfig.from_dict(saved))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_model_config_file_is_the_base_and_flags_override_it(tmp_path, text):
    base = ModelConfig(hidden_size=48, num_layers=3, num_heads=6, num_kv_heads=3, max_seq_len=64, qk_norm=True)
    base.save(tmp_path / "shape.json")
    run = tmp_path / "run"
    assert main(["pretrain", "--model-config", str(tmp_path / "shape.json"), "--num-layers", "1",
                 "--data", str(text), "--out", str(run), *RUN]) == 0
    saved = _saved_config(run)
    expected = base.to_dict()
    expected.update(num_layers=1, extra={"overrides": "--num-layers 1"})
    assert saved == expected


def test_derived_sizes_follow_the_new_width_explicit_ones_stay():
    small = ModelOverrides(hidden_size=384, num_layers=6).apply(get_preset("small"))
    assert (small.head_dim, small.intermediate_size) == (384 // 8, swiglu_width(384)) == (48, 1024)
    qwen = ModelOverrides(hidden_size=512).apply(get_preset("qwen3-0.6b"))
    assert (qwen.head_dim, qwen.intermediate_size) == (128, 3072)  # the preset set both explicitly
    assert get_preset("small").hidden_size == 512  # the base is not modified


@pytest.mark.parametrize("flags,message", [
    (["--hidden-size", "100"], "--hidden-size 100: hidden_size (100) must be divisible by num_heads (8)"),
    (["--num-kv-heads", "3"], "--num-kv-heads 3: num_heads (8) must be a multiple of num_kv_heads (3)"),
    (["--head-dim", "7"], "--head-dim 7: head_dim must be even"),
    (["--num-layers", "0"], "--num-layers 0: num_layers must be in 1..1024"),
    (["--num-experts", "2", "--experts-per-token", "3"], "--experts-per-token 3: num_experts_per_tok must be in 1..2"),
    (["--rope-scaling", "yarn"], "--rope-scaling must be none, yarn:FACTOR"),
    (["--rope-scaling", "linear:2"], "--rope-scaling must be none, yarn:FACTOR"),
    (["--rope-scaling", '{"type": "linear", "factor": 2}'], "only YaRN rope_scaling is supported"),
    (["--num-heads", "x"], "num_heads: expected int, got 'x'"),
    (["--vocab-size", "100"], "vocabulary (--vocab-size) is 100: use --vocab-size 6400 or more"),
])
def test_invalid_shapes_are_one_line_errors_naming_the_flag(tmp_path, text, capsys, flags, message):
    run = tmp_path / "run"
    assert main(["pretrain", "--preset", "small", *flags, "--data", str(text), "--out", str(run), *RUN]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0, err


@pytest.fixture(scope="module")
def short_ckpt(tmp_path_factory) -> Path:
    """A checkpoint whose context is 32 tokens, with the shipped tokenizer beside it."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt") / "short"
    model = MiniMindLM(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, max_seq_len=32))
    save_model(model, folder, tokenizer_dir=default_tokenizer_dir())
    return folder


def test_seq_len_beyond_an_init_checkpoints_context_names_the_flag(tmp_path, text, short_ckpt, capsys):
    argv = ["pretrain", "--init", str(short_ckpt), "--data", str(text), "--out", str(tmp_path / "run"), *RUN]
    assert main([*argv, "--seq-len", "64"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --seq-len 64 exceeds the model's context 32 "
                                               "(--max-seq-len / the checkpoint's max_seq_len)")


def test_seq_len_beyond_a_preset_context_names_the_flag(tmp_path, text, capsys):
    argv = ["pretrain", "--preset", "tiny", "--max-seq-len", "16", "--data", str(text), "--out", str(tmp_path / "r")]
    assert main([*argv, *RUN, "--seq-len", "17"]) == 2
    assert "--seq-len 17 exceeds the model's context 16" in capsys.readouterr().err


def test_init_with_shape_flags_is_refused(tmp_path, text, short_ckpt, capsys):
    argv = ["pretrain", "--init", str(short_ckpt), "--data", str(text), "--out", str(tmp_path / "run"), *RUN]
    assert main([*argv, "--num-layers", "2", "--qk-norm"]) == 2
    err = capsys.readouterr().err
    assert "--num-layers, --qk-norm cannot be combined with --init" in err
    assert not (tmp_path / "run").exists()  # refused while validating flags, before the run directory


def test_context_extension_from_init_writes_yarn_and_keeps_the_weights(tmp_path, text, short_ckpt):
    run = tmp_path / "long"
    assert main(["pretrain", "--init", str(short_ckpt), "--max-seq-len", "64", "--rope-scaling", "yarn:2",
                 "--data", str(text), "--out", str(run), *RUN, "--seq-len", "64", "--lr", "1e-9"]) == 0
    saved = _saved_config(run)
    assert saved["max_seq_len"] == 64
    assert saved["rope_scaling"] == {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}
    assert (saved["hidden_size"], saved["num_layers"]) == (32, 1)
    model = load_model(run)  # rebuilt from the saved config: RoPE tables for 64 positions, stretched 2x
    assert model.rope.cos.shape[0] == 64 and model.config.rope_scaling["factor"] == 2.0


def test_parse_rope_scaling_grammar():
    assert parse_rope_scaling("yarn:4", 1024) == {"type": "yarn", "factor": 4.0,
                                                 "original_max_position_embeddings": 256}
    assert parse_rope_scaling("yarn:2.5:2048", 8192)["original_max_position_embeddings"] == 2048
    assert parse_rope_scaling("none", 1024) is None
    assert parse_rope_scaling('{"rope_type": "yarn", "factor": 8, "original_max_position_embeddings": 512}', 1)[
        "factor"] == 8
    for bad in ("yarn:0.5", "yarn:4:x", "rope:4", "yarn:1:2:3", "[1]"):
        with pytest.raises(UserError):
            parse_rope_scaling(bad, 1024)


def test_model_show_counts_a_real_model_and_states_the_flops(capsys):
    assert main(["model", "show", "--preset", "small", "--num-layers", "12", "--seq-len", "1024"]) == 0
    out = capsys.readouterr().out
    cfg = ModelOverrides(num_layers=12).apply(get_preset("small"))
    real = sum(p.numel() for p in MiniMindLM(cfg).parameters())
    assert "layers 12" in out and f"total 37.1M ({real:,})" in out
    # 6 x matmul weights (all Linear layers, the tied lm head once) + 12 * L * T * H * D attention.
    h, inter, L = 512, 1408, 12
    n = L * (h * 512 + 2 * h * 128 + 512 * h + 3 * h * inter) + 6400 * h
    flops = 6 * n + 12 * L * 1024 * 8 * 64
    assert f"{flops / 1e9:.3f} GFLOP training at seq 1024" in out


def test_model_show_moe_active_parameters(capsys):
    assert main(["model", "show", "--preset", "moe", "--num-experts", "8", "--experts-per-token", "1"]) == 0
    out = capsys.readouterr().out
    cfg = get_preset("moe")
    expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    model = MiniMindLM(ModelOverrides(num_experts=8, experts_per_token=1).apply(cfg))
    total = sum(p.numel() for p in model.parameters())
    active = total - cfg.num_layers * 7 * expert  # a token skips 7 of the 8 routed experts
    assert f"({total:,}), active" in out and f"({active:,})" in out
    assert "8 routed + 1 shared experts, top-1" in out


def test_model_show_from_a_checkpoint_and_its_context(short_ckpt, capsys):
    assert main(["model", "show", "--ckpt", str(short_ckpt), "--max-seq-len", "128",
                 "--rope-scaling", "yarn:4"]) == 0
    out = capsys.readouterr().out
    assert "max_seq_len 128" in out and '"original_max_position_embeddings": 32' in out
    assert main(["model", "show", "--ckpt", str(short_ckpt), "--hidden-size", "64"]) == 2
    assert "--hidden-size cannot be combined with --ckpt" in capsys.readouterr().err


def test_every_shape_flag_names_a_model_config_field():
    fields = set(ModelConfig.__dataclass_fields__)
    flags = [n for n in ModelOverrides.__dataclass_fields__ if n != "model_config"]
    assert all(CONFIG_FIELD.get(n, n) in fields for n in flags)
    moe = ModelOverrides(hidden_size=320).apply(get_preset("moe"))  # expert width follows the derived MLP width
    assert moe.moe_intermediate_size == moe.intermediate_size == swiglu_width(320) == 896
