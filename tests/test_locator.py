"""The on-disk layout has one owner, `minimind.locator`: run directories, HF and adapter folders, tokenizers.

Run directories here are written by the trainer's own writer (`train.checkpointing.save_checkpoint`
with `checkpoint.save_model`), so the tests read exactly the layout a training run leaves.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from infer_support import tiny_model

import minimind
from minimind import locator
from minimind.checkpoint import load_model, model_state_dict, read_safetensors, save_model
from minimind.cli import main
from minimind.devices import torch_dtype, training_dtype
from minimind.errors import UserError
from minimind.infer.loading import load_engine
from minimind.locator import CheckpointError
from minimind.tokenizer import default_tokenizer_dir
from minimind.train import lora
from minimind.train.checkpointing import save_checkpoint

SRC = Path(minimind.__file__).parent


def write_run(run_dir: Path, model, steps=(1, 2), tokenizer=True) -> Path:
    """A run directory with a trainer checkpoint per step, as `minimind train` leaves it."""
    for step in steps:
        def write(folder: Path) -> None:
            save_model(model, folder, tokenizer_dir=default_tokenizer_dir() if tokenizer else None)
            (folder / locator.STATE_PT).write_bytes(b"")
        save_checkpoint(run_dir, step, write, {"tokens": step}, keep_last=5)
    return run_dir / "checkpoints" / f"step-{steps[-1]:07d}"


def same_weights(a, b) -> bool:
    sa, sb = model_state_dict(a), model_state_dict(b)
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- run directories and `latest` ----------------------------------------------------------------


def test_a_run_directory_means_its_latest_checkpoint(tmp_path):
    model = tiny_model(seed=1)
    newest = write_run(tmp_path / "run", model, steps=(1, 2, 3))
    assert newest.name == "step-0000003"
    assert locator.resolve_checkpoint(tmp_path / "run") == newest
    assert locator.latest_checkpoint(tmp_path / "run") == newest
    assert locator.resolve_checkpoint(newest) == newest  # a checkpoint folder is itself
    assert locator.run_dir_of(newest) == tmp_path / "run"
    assert locator.latest_checkpoint(tmp_path / "fresh") is None  # no checkpoint yet: not an error
    assert same_weights(load_model(tmp_path / "run"), model)


@pytest.mark.parametrize("content, needle", [
    (b"", "holds ''"),                              # a kill between create and write
    (b"../elsewhere\n", "holds '../elsewhere'"),    # never a folder outside checkpoints/
    (b"step-0000009\n", "names step-0000009, which is not a complete checkpoint"),
    (b"\xff\xfe\x00", "cannot read"),               # not text at all
])
def test_a_broken_latest_is_a_one_line_error_naming_the_file(tmp_path, capsys, content, needle):
    write_run(tmp_path / "run", tiny_model())
    (tmp_path / "elsewhere").mkdir()
    save_model(tiny_model(seed=9), tmp_path / "elsewhere")  # what "../elsewhere" would have loaded
    latest = tmp_path / "run" / "checkpoints" / "latest"
    latest.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        locator.resolve_checkpoint(tmp_path / "run")
    assert str(latest) in str(err.value) and needle in str(err.value)
    assert main(["generate", "--ckpt", str(tmp_path / "run"), "--prompt", "hi", "--max-new-tokens", "2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(latest) in lines[0], lines


def test_a_latest_naming_an_incomplete_trainer_checkpoint_is_refused_for_resume(tmp_path):
    newest = write_run(tmp_path / "run", tiny_model())
    (newest / locator.STATE_JSON).unlink()
    with pytest.raises(CheckpointError, match="names step-0000002, which is not a complete trainer checkpoint"):
        locator.latest_checkpoint(tmp_path / "run")


# -- Hugging Face folders ----------------------------------------------------------------------


def test_hf_folders_are_recognised_and_ours_are_never_mistaken_for_one(tmp_path):
    from minimind.interop import export_hf

    model = tiny_model(seed=2)
    export_hf(model, tmp_path / "hf")  # config.json + model.safetensors
    assert locator.is_hf_folder(tmp_path / "hf")
    assert locator.model_folder(tmp_path / "hf") == tmp_path / "hf"
    ours = tmp_path / "ours"
    save_model(model, ours)
    # A config.json of another model beside ours (a user copied it in): still our checkpoint.
    (ours / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    assert not locator.is_hf_folder(ours)
    assert same_weights(minimind.load_model(ours), model)
    for name, text in (("no_type", "{}"), ("not_json", "{"), ("a_list", "[1]")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(text)
        assert not locator.is_hf_folder(tmp_path / name)
    assert not locator.is_hf_folder(tmp_path / "hf" / "model.safetensors")


def test_a_registered_importer_reads_its_model_type(tmp_path, monkeypatch):
    model = tiny_model(vocab_size=6400, seed=3)  # the shipped tokenizer's vocabulary: the engine's fallback
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "toy-format"}))
    seen = []

    def read_toy(path: Path):
        seen.append(path)
        return model

    monkeypatch.setitem(locator._IMPORTERS, "toy-format", read_toy)  # restored after the test
    assert load_model(folder) is model and seen == [folder]
    assert load_engine(folder, device="cpu").model is model  # the engine goes through the same door
    monkeypatch.delitem(locator._IMPORTERS, "toy-format")
    monkeypatch.delitem(locator._IMPORTERS, None, raising=False)
    with pytest.raises(CheckpointError, match="no reader for Hugging Face model_type 'toy-format'"):
        load_model(folder)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions, as absolute names."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "minimind" if node.level else ""
            found |= {f"{base}.{node.module or ''}".strip("."), *(f"{base}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return found


def test_the_locator_and_checkpoint_import_no_converter():
    converters = {"minimind.interop", "minimind.upstream", "minimind.gguf"}
    for name in ("locator.py", "checkpoint.py"):
        assert not _imports(SRC / name) & converters, name
    code = ("import sys, minimind.locator, minimind.checkpoint\n"
            "loaded = [m for m in ('minimind.interop', 'minimind.upstream', 'minimind.gguf', 'torch')"
            " if m in sys.modules]\n"
            "print(loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['torch']"  # checkpoint needs torch, never a converter
    out = subprocess.run([sys.executable, "-c", "import sys, minimind.locator; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"  # the locator is cheap for every layer


def test_minimind_load_model_registers_the_hf_importer_itself(tmp_path):
    """In a fresh process nothing has imported minimind.interop: the public loader must."""
    from minimind.interop import export_hf

    export_hf(tiny_model(seed=5), tmp_path / "hf")
    code = ("import sys, minimind\n"
            f"m = minimind.load_model({str(tmp_path / 'hf')!r})\n"
            "print(m.config.hidden_size)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "64", done.stderr[-400:]


# -- LoRA adapters -------------------------------------------------------------------------------


def test_an_adapter_run_directory_resolves_to_its_adapter_and_its_base(tmp_path):
    base = tiny_model(seed=6)
    save_model(base, tmp_path / "base")
    adapted = tiny_model(seed=6)
    lora.add_lora(adapted, "*q_proj", rank=2, alpha=4.0)
    with torch.no_grad():
        for _, adapter in lora.adapters(adapted):
            adapter.B.normal_(std=0.5)
    config = {"rank": 2, "alpha": 4.0, "targets": "*q_proj", "base": str(tmp_path / "base")}

    def write(folder: Path) -> None:
        lora.save_adapter(adapted.state_dict(), folder, config)
    save_checkpoint(tmp_path / "run", 4, write, {}, keep_last=2)
    step = tmp_path / "run" / "checkpoints" / "step-0000004"
    assert locator.adapter_folder(tmp_path / "run") == step
    assert locator.adapter_base(tmp_path / "run") == tmp_path / "base"
    merged = lora.load_lora_model(tmp_path / "run")  # base read from the adapter config
    lora.merge_lora(adapted)
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(merged(x).logits, adapted(x).logits, atol=1e-5)
    (step / locator.ADAPTER_CONFIG).write_text(json.dumps({"rank": 2, "alpha": 4.0}))
    with pytest.raises(CheckpointError, match="no \"base\" model recorded"):
        lora.load_lora_model(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-0000001\n")
    with pytest.raises(CheckpointError, match="names step-0000001, which is not a complete LoRA adapter"):
        lora.load_lora_model(tmp_path / "run")


# -- the tokenizer beside the weights ----------------------------------------------------------


def test_the_tokenizer_is_found_beside_the_weights_or_reported_missing(tmp_path, capsys):
    model = tiny_model()
    newest = write_run(tmp_path / "run", model)
    assert locator.tokenizer_beside(tmp_path / "run") == newest
    save_model(model, tmp_path / "bare")
    assert locator.tokenizer_beside(tmp_path / "bare") is None
    with pytest.raises(UserError, match=r"bare: no tokenizer.json there \(--tokenizer names a tokenizer folder\)"):
        locator.require_tokenizer(tmp_path / "bare", "--tokenizer names a tokenizer folder")
    assert locator.require_tokenizer(newest, "unused") == newest
    # The upstream importer's --tokenizer goes through the same check, before anything loads.
    rc = main(["import", "minimind", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "out"),
               "--tokenizer", str(tmp_path / "bare")])
    assert rc == 2 and not (tmp_path / "out").exists()
    assert "bare: no tokenizer.json there" in capsys.readouterr().err


# -- dtype names -------------------------------------------------------------------------------


def test_both_dtype_spellings_name_the_same_torch_dtype(tmp_path):
    cpu = torch.device("cpu")
    for short, long in (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")):
        assert torch_dtype(short) is torch_dtype(long) is getattr(torch, long)
    assert training_dtype(cpu, "auto") is torch.float32 and training_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(UserError, match="fp16 needs CUDA"):
        training_dtype(cpu, "fp16")
    with pytest.raises(UserError, match="--dtype must be auto, fp32, bf16, fp16; got 'bfloat16'"):
        training_dtype(cpu, "bfloat16")
    from minimind.interop import export_hf

    export_hf(tiny_model(), tmp_path / "hf", dtype="bf16")  # the training spelling, written as HF spells it
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert read_safetensors(tmp_path / "hf" / "model.safetensors")["lm_head.weight"].dtype is torch.bfloat16
