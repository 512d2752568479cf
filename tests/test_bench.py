"""The benchmark commands run end to end on the tiny preset and report sane figures."""

import json

from minimind.cli import main
from minimind.model.cpu_linear import replaces_mkl


def test_bench_train_reports_throughput_and_mfu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "train", "--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps", "1",
                 "--warmup", "1", "--dtype", "fp32", "--no-data-bench", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    modes = [("eager+mkl", "float32"), ("eager+onednn", "float32")] if replaces_mkl() else [("eager", "float32")]
    assert [(r["mode"], r["dtype"]) for r in rows] == modes
    for row in rows:
        assert row["tokens_per_s"] > 0 and 0 < row["mfu"] < 5  # CPU MFU is relative to a measured matmul
    assert "tokens/s" in capsys.readouterr().out
    assert main(["bench", "train", "--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--steps", "1",
                 "--warmup", "0", "--dtype", "fp32", "--no-data-bench", "--cpu-matmul", "mkl", "--json", str(out)]) == 0
    assert [r["mode"] for r in json.loads(out.read_text())] == (["eager+mkl"] if replaces_mkl() else ["eager"])


def test_bench_infer_runs_against_transformers(capsys):
    assert main(["bench", "infer", "--preset", "tiny", "--prompt-len", "8", "--new-tokens", "4",
                 "--batch-sizes", "1,2", "--repeats", "1", "--threads", "1", "--no-server"]) == 0
    printed = capsys.readouterr().out
    assert "transformers" in printed and "minimind" in printed
    hf_rows = [line for line in printed.splitlines() if line.startswith("| transformers")]
    # its own ratio, best-of and repeat by repeat
    assert len(hf_rows) == 2 and all(line.rstrip().endswith("| 1.00x | 1.00x (1.00-1.00) |") for line in hf_rows)


def test_bench_infer_cpu_clock_reports_ratio_to_transformers(capsys):
    assert main(["bench", "infer", "--preset", "tiny", "--prompt-len", "8", "--new-tokens", "4",
                 "--batch-sizes", "2", "--repeats", "1", "--threads", "1", "--no-server", "--clock", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "cpu clock" in printed
    (ours,) = [line for line in printed.splitlines() if line.startswith("| minimind |")]
    ratio = float(ours.split("|")[-3].strip().rstrip("x"))
    median = float(ours.split("|")[-2].split()[0].rstrip("x"))
    assert ratio > 0 and median == ratio  # one repeat: the best is the only one


def test_bench_infer_compile_checks_the_compiled_step_against_eager(capsys):
    assert main(["bench", "infer", "--preset", "tiny", "--prompt-len", "8", "--new-tokens", "6",
                 "--batch-sizes", "3", "--repeats", "1", "--no-hf", "--no-server", "--compile"]) == 0
    printed = capsys.readouterr().out
    assert "| minimind, compiled decode | 3 |" in printed
    assert "compiled decode, batch 3: greedy tokens identical to eager (3/3 rows)" in printed
