"""Loading and exporting never lose work and never answer bad files with a traceback (issue 16: 3, 11, 12).

Each test damages one thing the way a user or a disk would -- a truncated weights file, a config
value of the wrong type, a stray shard, an --out that is a checkpoint -- and checks the command
refuses it in one line (`error: ...`, exit 2) naming the file, and that nothing finished is touched.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from infer_support import tiny_checkpoint
from safetensors.torch import load_file, save_file

from minimind import ModelConfig, load_model
from minimind.checkpoint import model_state_dict
from minimind.cli import main
from minimind.config import LIMITS, ConfigError
from minimind.errors import UserError
from minimind.fsutil import replace_dir
from minimind.interop import export_hf
from minimind.locator import CheckpointError


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """One tiny checkpoint (model + its tokenizer), built once; tests work on copies."""
    return tiny_checkpoint(tmp_path_factory.mktemp("built"))[0]


@pytest.fixture
def ckpt(built, tmp_path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "ckpt"))


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# -- truncated / corrupt weights ------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 6, 200, -16])  # empty, tiny, inside the header, inside the data
@pytest.mark.parametrize("command", ["generate", "export"])
def test_truncated_weights_are_a_one_line_error(ckpt, tmp_path, capsys, keep, command):
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[:keep] if keep >= 0 else data[:len(data) + keep])
    argv = (["generate", "--ckpt", str(ckpt), "--prompt", "hi", "--max-new-tokens", "2"] if command == "generate"
            else ["export", "hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf")])
    code, err = run_cli(capsys, *argv)
    assert code == 2
    assert_one_line_error(err, str(weights), "truncated or corrupt")
    assert not (tmp_path / "hf").exists()


def test_garbage_weights_of_a_lora_adapter_are_a_user_error(ckpt, tmp_path):
    from minimind.infer.adapters import AdapterBank

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"rank": 4, "alpha": 8}))
    (adapter / "adapter.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{not json")
    with pytest.raises(UserError, match="adapter.safetensors: not a readable safetensors file"):
        AdapterBank(load_model(ckpt)).load("a", adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({"rank": "4", "alpha": 8}))
    with pytest.raises(UserError, match="adapter_config.json: rank must be a positive integer, got '4'"):
        AdapterBank(load_model(ckpt)).load("a", adapter)


# -- config values: types, ranges, consistency ----------------------------------------------------

BAD_VALUES = [
    ({"hidden_size": "192"}, "hidden_size must be an integer, got '192'"),
    ({"num_heads": 4.0}, "num_heads must be an integer, got 4.0"),
    ({"qk_norm": 1}, "qk_norm must be true or false, got 1"),
    ({"rope_theta": "1e6"}, "rope_theta must be a finite number, got '1e6'"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number, got nan"),
    ({"rope_scaling": "yarn"}, "rope_scaling must be an object or null, got 'yarn'"),
    ({"rope_scaling": {"type": "yarn", "factor": "4"}}, "rope_scaling.factor must be a finite number"),
    ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "original_max_position_embeddings must be a positive"),
    ({"vocab_size": 100_000_000_000}, "vocab_size must be in 2..16777216, got 100000000000"),
    ({"max_seq_len": 0}, "max_seq_len must be in 2..4194304, got 0"),
    ({"num_layers": -1}, "num_layers must be in 1..1024, got -1"),
    ({"eos_token_id": 10_000}, "eos_token_id (10000) is outside the vocabulary"),
    ({"bos_token_id": 300}, "bos_token_id (300) is outside the vocabulary (vocab_size 300)"),
    ({"num_kv_heads": 3}, "num_heads (4) must be a multiple of num_kv_heads (3)"),
    ({"hidden_size": 66, "head_dim": None, "intermediate_size": None, "moe_intermediate_size": None},
     "hidden_size (66) must be divisible by num_heads (4)"),
    ({"aux_loss_level": "token"}, "aux_loss_level must be 'seq' or 'batch'"),
]


@pytest.mark.parametrize("change,message", BAD_VALUES, ids=[m.split(" ")[0] for _, m in BAD_VALUES])
def test_bad_config_values_name_the_file_and_field(ckpt, change, message):
    path = ckpt / "model_config.json"
    cfg = json.loads(path.read_text())
    assert cfg["vocab_size"] == 300  # the messages above are derived from the tiny tokenizer's size
    path.write_text(json.dumps({**cfg, **change}))
    with pytest.raises(ConfigError) as info:
        load_model(ckpt)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_bad_config_value_via_cli_is_one_line(ckpt, capsys):
    path = ckpt / "model_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hidden_size": "192"}))
    code, err = run_cli(capsys, "generate", "--ckpt", str(ckpt), "--prompt", "hi")
    assert code == 2
    assert_one_line_error(err, f"{path}: hidden_size must be an integer, got '192'")


def test_every_numeric_field_has_a_declared_range():
    import dataclasses

    numeric = {f.name for f in dataclasses.fields(ModelConfig) if str(f.type).split(" |")[0] in ("int", "float")}
    assert numeric == set(LIMITS)


def test_config_that_does_not_fit_its_weights_fails_before_allocating(ckpt):
    # In range, but 2^24 x 2^16 floats is a 4 TiB embedding: it must be refused from the file's size.
    path = ckpt / "model_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "vocab_size": 1 << 24, "hidden_size": 1 << 16, "num_heads": 64,
                                "head_dim": None, "intermediate_size": None, "moe_intermediate_size": None}))
    with pytest.raises(CheckpointError, match=r"weights do not fit the config \(the file holds [\d,]+ parameters"):
        load_model(ckpt)


def test_ints_are_accepted_where_floats_are_declared():
    cfg = ModelConfig.from_dict({"vocab_size": 100, "hidden_size": 64, "num_heads": 4, "rope_theta": 10000})
    assert isinstance(cfg.rope_theta, float) and cfg.rope_theta == 10000.0


# -- Hugging Face config.json ---------------------------------------------------------------------


@pytest.fixture
def hf_folder(ckpt, tmp_path) -> Path:
    return export_hf(ckpt, tmp_path / "hf")


@pytest.mark.parametrize("change,message", [
    ({"vocab_size": None}, "required key 'vocab_size' is missing"),
    ({"num_attention_heads": 4.0}, "num_heads must be an integer, got 4.0 (read from 'num_attention_heads')"),
    ({"max_position_embeddings": 0}, "max_seq_len must be in 2..4194304, got 0 (read from 'max_position_embeddings')"),
    ({"rope_scaling": "yarn", "rope_parameters": None}, "rope_scaling / rope_parameters must be an object"),
    ({"eos_token_id": [5000]}, "eos_token_id (5000) is outside the vocabulary"),
])
def test_bad_hf_config_names_the_file_and_key(hf_folder, change, message):
    path = hf_folder / "config.json"
    cfg = {**json.loads(path.read_text()), **change}
    path.write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))
    with pytest.raises(ConfigError) as info:
        load_model(hf_folder)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


# -- HF weights: exactly what the index names -----------------------------------------------------


def shard(folder: Path) -> dict[str, torch.Tensor]:
    """Split model.safetensors into two shards plus the index transformers writes; return the tensors."""
    sd = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    keys = sorted(sd)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in halves.items():
        save_file({k: sd[k] for k in part}, str(folder / name))
    weight_map = {k: name for name, part in halves.items() for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sd


def test_stray_shards_beside_an_index_are_never_loaded(ckpt, hf_folder):
    shard(hf_folder)
    stray = {k: torch.zeros_like(v) for k, v in load_file(str(hf_folder / "model-00001-of-00002.safetensors")).items()}
    save_file(stray, str(hf_folder / "model-old.safetensors"))  # sorts after the real shards
    save_file(stray, str(hf_folder / "zz-backup.safetensors"))
    ours, back = model_state_dict(load_model(ckpt)), model_state_dict(load_model(hf_folder))
    assert ours.keys() == back.keys() and all(torch.equal(ours[k], back[k]) for k in ours)


def test_index_naming_a_missing_shard_is_an_error(hf_folder):
    shard(hf_folder)
    (hf_folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(UserError, match="names model-00002-of-00002.safetensors, which is missing"):
        load_model(hf_folder)


def test_index_cannot_point_outside_the_folder(hf_folder, tmp_path):
    shard(hf_folder)
    index = hf_folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: "../elsewhere.safetensors" for k in data["weight_map"]}
    index.write_text(json.dumps(data))
    with pytest.raises(UserError, match="is not a file name in this folder"):
        load_model(hf_folder)


def test_several_unindexed_weight_files_are_ambiguous(hf_folder):
    os.rename(hf_folder / "model.safetensors", hf_folder / "a.safetensors")
    shutil.copy(hf_folder / "a.safetensors", hf_folder / "b.safetensors")
    with pytest.raises(UserError, match="2 .safetensors files but no model.safetensors"):
        load_model(hf_folder)


# -- export / import targets ----------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("force", [False, True])
def test_export_never_writes_into_a_checkpoint_or_run_dir(ckpt, tmp_path, capsys, force):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt, run / "checkpoints" / "step-0000010")
    (run / "checkpoints" / "latest").write_text("step-0000010\n")
    other = shutil.copytree(ckpt, tmp_path / "other")  # another model's checkpoint (the case)
    for target, kind in ((other, "a MiniMind checkpoint"), (run, "a MiniMind run directory"),
                         (run / "checkpoints", "the checkpoints folder")):
        before = snapshot(target)
        code, err = run_cli(capsys, "export", "hf", "--ckpt", str(ckpt), "--out", str(target),
                            *(["--force"] if force else []))
        assert code == 2
        assert_one_line_error(err, str(target), kind)
        assert snapshot(target) == before
    load_model(other), load_model(run)  # both still load


def test_import_never_writes_into_a_checkpoint(ckpt, hf_folder, capsys):
    before = snapshot(ckpt)
    code, err = run_cli(capsys, "import", "hf", str(hf_folder), "--out", str(ckpt), "--force")
    assert code == 2 and snapshot(ckpt) == before
    assert_one_line_error(err, "is a MiniMind checkpoint")


def test_non_empty_out_needs_force_and_is_then_replaced_whole(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "model-00001-of-00009.safetensors").write_bytes(b"old shard")
    code, err = run_cli(capsys, "export", "hf", "--ckpt", str(ckpt), "--out", str(out))
    assert code == 2 and (out / "notes.txt").read_text() == "mine"
    assert_one_line_error(err, "is not empty", "--force")
    assert run_cli(capsys, "export", "hf", "--ckpt", str(ckpt), "--out", str(out), "--force")[0] == 0
    # Replaced, not merged: no old shard is left to be loaded beside the new weights.
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary left
    a, b = model_state_dict(load_model(ckpt)), model_state_dict(load_model(out))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_force_never_replaces_a_folder_with_sub_folders(ckpt, tmp_path, capsys):
    (tmp_path / "home" / "projects").mkdir(parents=True)
    code, err = run_cli(capsys, "export", "hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "home"), "--force")
    assert code == 2 and (tmp_path / "home" / "projects").is_dir()
    assert_one_line_error(err, "holds sub-folders (projects)")


def test_import_refuses_to_replace_its_own_input(hf_folder, capsys):
    code, err = run_cli(capsys, "import", "hf", str(hf_folder), "--out", str(hf_folder), "--force")
    assert code == 2 and (hf_folder / "config.json").is_file()
    assert_one_line_error(err, "would replace its own input")


def test_out_that_is_a_file(ckpt, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, err = run_cli(capsys, "export", "hf", "--ckpt", str(ckpt), "--out", str(afile))
    assert code == 2
    assert_one_line_error(err, str(afile), "is a file, not a folder")
    code, err = run_cli(capsys, "export", "hf", "--ckpt", str(ckpt), "--out", str(afile / "sub"))
    assert code == 2  # the OS says so (mkdir under a file): still one line, naming the path
    assert_one_line_error(err, str(afile))


def test_failed_export_leaves_the_old_folder_and_no_temporary(ckpt, tmp_path, capsys, monkeypatch):
    import errno

    from minimind import interop

    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")

    def full_disk(sd, path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(interop, "write_safetensors", full_disk)
    code, err = run_cli(capsys, "export", "hf", "--ckpt", str(ckpt), "--out", str(out), "--force")
    assert code == 2
    assert_one_line_error(err, "No space left on device")
    assert snapshot(out) == {"config.json": b"{}"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "out"]


def test_disk_full_while_importing_is_one_line_and_leaves_nothing(hf_folder, tmp_path):
    # RLIMIT_FSIZE makes every write past 20 kB fail with EFBIG, as a full disk fails with ENOSPC.
    script = ("import resource, signal, sys\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
              "from minimind.cli import main\n"
              "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "imported"
    proc = subprocess.run([sys.executable, "-c", script, "import", "hf", str(hf_folder), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc.stderr, "File too large", "model.safetensors")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "hf"]


def test_unexpected_os_errors_keep_their_traceback(monkeypatch):
    import errno

    from minimind.cli import model_cmds

    def bug(args):
        raise OSError(errno.EBADF, "Bad file descriptor")  # a bug in our code, not the user's problem

    monkeypatch.setattr(model_cmds, "cmd_list", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["model", "list"])


def test_stale_temporaries_of_dead_processes_are_cleaned(tmp_path):
    dead = 2 ** 22 + 1  # above the kernel's pid_max default: never a live process
    (tmp_path / f".out.tmp-{dead}").mkdir()
    (tmp_path / f".out.old-{dead}").mkdir()  # a swap killed between its two renames ...
    (tmp_path / f".out.old-{dead}" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="is not empty"):  # ... is undone: the old folder is back, and guarded
        with replace_dir(tmp_path / "out"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "config.json").read_text() == "{}"
    with replace_dir(tmp_path / "out", force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]


# -- tokenizer files, devices ---------------------------------------------------------------------


@pytest.mark.parametrize("damage", ['{"version": "1.0", "model": ', '{"model": {"type": "Nonsense"}}'])
def test_export_refuses_a_corrupt_tokenizer(ckpt, tmp_path, capsys, damage):
    (ckpt / "tokenizer.json").write_text(damage)
    code, err = run_cli(capsys, "export", "hf", "--ckpt", str(ckpt), "--out", str(tmp_path / "hf"))
    assert code == 2 and not (tmp_path / "hf").exists()
    assert_one_line_error(err, str(ckpt / "tokenizer.json"), "not a valid tokenizer file")


@pytest.mark.parametrize("device,message", [
    ("bogus", "--device"),
    *([("cuda", "CUDA is not available")] if not torch.cuda.is_available() else []),
])
def test_inference_device_is_checked(ckpt, capsys, device, message):
    code, err = run_cli(capsys, "generate", "--ckpt", str(ckpt), "--prompt", "hi", "--device", device)
    assert code == 2
    assert_one_line_error(err, message)


def test_limits_hold_every_published_preset():
    from minimind.config import PRESETS, get_preset

    for name in PRESETS:
        cfg = get_preset(name)
        for field, (lo, hi) in LIMITS.items():
            value = getattr(cfg, field)
            assert lo <= value <= hi and not (isinstance(value, float) and math.isnan(value)), (name, field)
