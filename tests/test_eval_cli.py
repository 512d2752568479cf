"""`minimind eval` end to end: JSON keys, file hashes, errors, demo suites, --compare and eval.jsonl."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from support import write_jsonl
from test_eval_support import tiny_ckpt, tool_case, write_ceval

import minimind.data.demo as demo
from minimind.cli import main
from minimind.interop import export_hf
from minimind.tokenizer import default_tokenizer_dir


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_ckpt(tmp_path_factory.mktemp("cli") / "ckpt")


def _run(argv, capsys) -> tuple[int, str, str]:
    rc = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_ceval_json_report(ckpt, tmp_path, capsys):
    data = write_ceval(tmp_path / "ceval", {"logic": (2, 3), "law": (2, 2)})
    out = tmp_path / "r.json"
    rc, text, _ = _run(["--ckpt", ckpt, "--task", "ceval", "--data", data, "--shots", "1", "--json", out], capsys)
    assert rc == 0 and "ceval" in text and "per subject" in text
    rep = json.loads(out.read_text())
    assert rep["task"] == "ceval" and rep["n"] == 5 and 0 <= rep["accuracy"] <= 1
    assert set(rep["per_subject"]) == {"law", "logic"}
    assert [(p["subject"], p["id"]) for p in rep["predictions"]] == [("law", "0"), ("law", "1"), ("logic", "0"),
                                                                     ("logic", "1"), ("logic", "2")]
    assert all(p["pred"] in "ABCD" and p["gold"] in "ABCD" for p in rep["predictions"])
    val = data / "val" / "law_val.csv"
    assert {"path": str(val), "sha256": hashlib.sha256(val.read_bytes()).hexdigest()} in rep["files"]
    assert rep["settings"]["shots"] == 1 and rep["checkpoint"] == str(ckpt)


def test_ppl_gen_toolcall_json_keys(ckpt, tmp_path, capsys):
    files = {"ppl": write_jsonl(tmp_path / "p.jsonl", [{"text": "今天天气很好。"}, {"text": "Hello world."}]),
             "gen": write_jsonl(tmp_path / "g.jsonl", [{"prompt": "1+1=?", "answer": "2"}]),
             "toolcall": write_jsonl(tmp_path / "t.jsonl", [tool_case()])}
    for task, path in files.items():
        out = tmp_path / f"{task}.json"
        rc, _, _ = _run(["--ckpt", ckpt, "--task", task, "--data", path, "--json", out, "--max-new-tokens", "4"], capsys)
        rep = json.loads(out.read_text())
        assert rc == 0 and rep["task"] == task
        if task == "ppl":
            assert rep["loss"] > 0 and rep["ppl"] > 1 and rep["bits_per_byte"] > 0 and rep["n"] == 2
        else:
            assert rep["n"] == 1 and 0 <= rep["accuracy"] <= 1


def test_hugging_face_folder_as_checkpoint(ckpt, tmp_path, capsys):
    from minimind import load_model

    hf = export_hf(load_model(ckpt), tmp_path / "hf", tokenizer_dir=default_tokenizer_dir())
    data = write_jsonl(tmp_path / "p.jsonl", [{"text": "今天天气很好。"}])
    reps = []
    for c in (ckpt, hf):
        out = tmp_path / "r.json"
        assert _run(["--ckpt", c, "--task", "ppl", "--data", data, "--json", out], capsys)[0] == 0
        reps.append(json.loads(out.read_text()))
    assert reps[0]["loss"] == pytest.approx(reps[1]["loss"], rel=1e-5)


def test_user_errors_exit_2(ckpt, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "q.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 1},
                                             {"question": "q", "choices": ["a"], "answer": 0}])
    rc, _, err = _run(["--ckpt", ckpt, "--task", "mcq", "--data", bad], capsys)
    assert rc == 2 and f"error: {bad}:2: 'choices' has 1 entry" in err
    out = tmp_path / "r.json"
    rc, _, _ = _run(["--ckpt", ckpt, "--task", "mcq", "--data", bad, "--skip-bad", "--json", out], capsys)
    assert rc == 0 and json.loads(out.read_text())["skipped"] == 1
    assert _run(["--ckpt", ckpt, "--task", "ceval"], capsys)[2].strip() == "error: --task ceval needs --data"
    assert "no such file" in _run(["--ckpt", tmp_path / "missing", "--task", "ppl", "--data", bad], capsys)[2]
    assert "--batch-size must be >= 1" in _run(["--ckpt", ckpt, "--task", "ppl", "--data", bad,
                                                "--batch-size", "0"], capsys)[2]


def _fake_demo(out_dir):
    """Tiny demo suites of the shape `write_demo_eval` promises."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"ppl": write_jsonl(out_dir / "ppl.jsonl", [{"text": "小模型也能学会说话。"}]),
            "mcq": write_ceval(out_dir / "mcq", {"arithmetic": (1, 4)}),
            "gen": write_jsonl(out_dir / "gen.jsonl", [{"conversations": [{"role": "user", "content": "2+2?"}],
                                                        "answer": "4"}]),
            "toolcall": write_jsonl(out_dir / "toolcall.jsonl", [tool_case()])}


def test_no_task_runs_the_demo_suites(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "write_demo_eval", _fake_demo)
    out = tmp_path / "demo.json"
    rc, text, _ = _run(["--ckpt", ckpt, "--json", out, "--max-new-tokens", "4"], capsys)
    rep = json.loads(out.read_text())
    assert rc == 0 and [r["task"] for r in rep["results"]] == ["ppl", "mcq", "gen", "toolcall"]
    assert all(r["suite"] == "demo" for r in rep["results"])
    assert rep["results"][1]["n"] == 4 and rep["results"][1]["files"][0]["path"] == "demo:mcq/val/arithmetic_val.csv"
    assert all(name in text for name in ("ppl", "mcq", "gen", "toolcall"))


def test_the_shipped_demo_suites_run(ckpt, tmp_path, capsys):
    out = tmp_path / "demo.json"
    rc, _, _ = _run(["--ckpt", ckpt, "--task", "demo", "--limit", "3", "--max-new-tokens", "4", "--json", out], capsys)
    rep = json.loads(out.read_text())
    # --limit is per subject for the C-Eval layout (lm-eval's --limit is per subject task): 4 subjects x 3.
    assert rc == 0 and {r["task"]: r["n"] for r in rep["results"]} == {"ppl": 3, "mcq": 12, "gen": 3, "toolcall": 3}
    mcq = rep["results"][1]
    assert sorted(mcq["per_subject"]) == ["arithmetic", "identity", "units", "vocabulary"]
    assert [p["subject"] for p in mcq["predictions"]].count("units") == 3


def test_run_directory_log_and_compare(ckpt, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(ckpt, run / "checkpoints" / "step_00000010")
    (run / "checkpoints" / "latest").write_text("step_00000010\n")
    data = write_jsonl(tmp_path / "p.jsonl", [{"text": "今天天气很好。"}])
    saved = tmp_path / "a.json"
    assert _run(["--ckpt", run, "--task", "ppl", "--data", data, "--json", saved], capsys)[0] == 0
    lines = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["task"] == "ppl" and lines[0]["checkpoint"] == "step_00000010"
    rc, text, _ = _run(["--compare", saved, ckpt, "--task", "ppl", "--data", data, "--no-log"], capsys)
    assert rc == 0 and "[1]" in text and "[2]" in text and "bits_per_byte" in text
    row = next(line for line in text.splitlines() if line.startswith("ppl") and "loss" in line)
    assert len(set(row.split()[2:])) == 1  # the same model: the same loss in both columns
    assert len((run / "eval.jsonl").read_text().splitlines()) == 1
