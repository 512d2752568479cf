"""Our C-Eval / CMMLU numbers are lm-evaluation-harness's: same prompts, same choices, same accuracy.

lm-eval's own `ceval-valid_*` and `cmmlu_*` task files are loaded with only the data source swapped
for our local CSVs (`dataset_path: csv`, nothing from a hub), and run with lm-eval's own `hf`
model on a transformers folder exported from one of our models. Skipped without lm_eval.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
lm_eval = pytest.importorskip("lm_eval")

from test_eval_support import (  # noqa: E402
    CEVAL_HEADER, shipped_tokenizer, tiny_lm, write_ceval, write_cmmlu, write_csv,
)

from minimind.eval import Settings, evaluate  # noqa: E402
from minimind.eval.lmeval_tasks import write_lmeval_ppl_task, write_lmeval_tasks  # noqa: E402
from minimind.eval.mcq import build_prompt, choice_strings  # noqa: E402
from minimind.eval.mcq_data import read_suite  # noqa: E402
from minimind.interop import export_hf  # noqa: E402
from minimind.tokenizer import default_tokenizer_dir  # noqa: E402

CEVAL = {"computer_network": (5, 12), "logic": (5, 8)}
CMMLU = {"agronomy": (5, 10), "arts": (5, 6)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval")
    roots = {"ceval": write_ceval(d / "ceval", CEVAL), "cmmlu": write_cmmlu(d / "cmmlu", CMMLU)}
    tasks = d / "tasks"
    names = {fam: write_lmeval_tasks(fam, roots[fam], list(subj), tasks)
             for fam, subj in (("ceval", CEVAL), ("cmmlu", CMMLU))}
    from lm_eval.tasks import TaskManager

    return {"roots": roots, "names": names, "tm": TaskManager(include_path=str(tasks)), "dir": d}


def _lm_eval_task(setup, family: str, subject: str, shots: int):
    return _build_requests(setup["tm"], setup["names"][family][subject], shots)


def _build_requests(tm, name: str, shots: int):
    """lm-eval's task `name` with its requests (prompt, continuation) built for `shots` examples."""
    if hasattr(tm, "load"):
        task = tm.load([name])["tasks"][name]
    else:  # lm-eval before 0.4.10
        from lm_eval.tasks import get_task_dict

        task = get_task_dict([name], tm)[name]
    task.set_config("num_fewshot", shots)
    task.build_all_requests(limit=None, rank=0, world_size=1, apply_chat_template=False)
    return task


@pytest.mark.parametrize("family,shots", [("ceval", 0), ("ceval", 3), ("cmmlu", 0), ("cmmlu", 5)])
def test_prompts_equal_the_harness_byte_for_byte(setup, family, shots):
    suite = read_suite(family, setup["roots"][family])
    for subject in (CEVAL if family == "ceval" else CMMLU):
        task = _lm_eval_task(setup, family, subject, shots)
        theirs = [inst.args for inst in sorted(task.instances, key=lambda i: (i.doc_id, i.idx))]
        ours = [(build_prompt(q, suite.fewshot[subject][:shots], family), " " + c)
                for q in suite.questions if q.subject == subject for c in choice_strings(q)]
        assert ours == theirs


def _load_lm_eval_api():
    try:
        import accelerate  # noqa: F401  (lm-eval's hf model imports it)
    except ImportError:
        pytest.skip("lm_eval's hf model needs accelerate: pip install 'lm-eval[hf]'")


@pytest.mark.parametrize("family,shots", [("ceval", 0), ("cmmlu", 5)])
def test_same_choices_and_accuracy_as_lm_eval_hf(setup, family, shots):
    _load_lm_eval_api()
    hf = setup["dir"] / "hf_model"
    if not hf.is_dir():
        export_hf(tiny_lm(), hf, tokenizer_dir=default_tokenizer_dir())
    names = list(setup["names"][family].values())
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={hf},device=cpu,dtype=float32",
                                  tasks=names, task_manager=setup["tm"], num_fewshot=shots, log_samples=True,
                                  batch_size=4)
    theirs_pred, theirs_ll, hits = [], [], 0
    for subject, name in setup["names"][family].items():
        for s in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
            lls = [r[0] for r in s["filtered_resps"]]
            theirs_ll.append(lls)
            theirs_pred.append("ABCD"[max(range(4), key=lambda i: (lls[i], -i))])
        hits += out["results"][name]["acc,none"] * out["results"][name]["sample_len"]
    ours = evaluate(hf, family, setup["roots"][family], Settings(shots=shots, batch_size=3))
    preds = [p["pred"] for p in ours["predictions"]]
    agree = sum(a == b for a, b in zip(preds, theirs_pred))
    gap = max(abs(a - b) for p, t in zip(ours["predictions"], theirs_ll) for a, b in zip(p["logprobs"], t))
    print(f"{family} {shots}-shot: lm-eval accuracy {hits / len(preds):.4f}, ours {ours['accuracy']:.4f}, "
          f"per-question agreement {agree}/{len(preds)}, max |logprob difference| {gap:.2e}")
    assert len(set(preds)) > 1  # the model's answers depend on the question: agreement means something
    assert preds == theirs_pred
    assert ours["accuracy"] == pytest.approx(hits / len(preds))
    for subject, name in setup["names"][family].items():
        assert ours["per_subject"][subject] == pytest.approx(out["results"][name]["acc,none"])
    for mine, theirs in zip(ours["predictions"], theirs_ll):
        assert mine["logprobs"] == pytest.approx(theirs, abs=1e-4)


def test_a_subject_lm_eval_does_not_know_is_a_user_error(tmp_path):
    from minimind.errors import UserError

    with pytest.raises(UserError, match="no ceval task for subject 'arithmetic'"):
        write_lmeval_tasks("ceval", tmp_path, ["arithmetic"], tmp_path / "tasks")
    with pytest.raises(UserError, match="not 'mcq'"):
        write_lmeval_tasks("mcq", tmp_path, ["logic"], tmp_path / "tasks")


def test_numeric_choices_reach_lm_eval_as_written(tmp_path):
    """Choices such as "15" or "007" stay strings: read through the CSV loader of `datasets`, lm-eval
    saw floats and its prompt read "A. 15.0" (our copy as JSON lines keeps the text)."""
    from lm_eval.tasks import TaskManager

    rows = [[str(i), f"{i} + 14 = ?", "15", "2.50", "007", "-3", "A", ""] for i in range(3)]
    for split in ("val", "dev"):
        write_csv(tmp_path / "ceval" / split / f"logic_{split}.csv", CEVAL_HEADER, rows)
    names = write_lmeval_tasks("ceval", tmp_path / "ceval", ["logic"], tmp_path / "tasks")
    task = _build_requests(TaskManager(include_path=str(tmp_path / "tasks")), names["logic"], 1)
    prompts = {inst.args[0] for inst in task.instances}
    assert len(prompts) == 3
    # Each prompt shows the choices twice: the 1-shot example and the question.
    assert all(p.count("A. 15\nB. 2.50\nC. 007\nD. -3\n答案：") == 2 for p in prompts)


def test_bits_per_byte_equal_lm_eval_rolling_loglikelihood(tmp_path):
    """`--task ppl` = lm-eval's `loglikelihood_rolling` with our EOS as its prefix token and disjoint
    windows (`--stride` = the context): documents shorter and longer than the 48-token context."""
    _load_lm_eval_api()
    from lm_eval.tasks import TaskManager

    hf = tmp_path / "hf"
    export_hf(tiny_lm(max_seq_len=48), hf, tokenizer_dir=default_tokenizer_dir())
    texts = ["短文。", "The quick brown fox jumps over the lazy dog. " * 6, "数据 " * 40 + "end", "x"]
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    name = write_lmeval_ppl_task(docs, tmp_path / "tasks")
    eos = shipped_tokenizer().eos_id
    out = lm_eval.simple_evaluate(model="hf", tasks=[name], batch_size=2,
                                  model_args=f"pretrained={hf},device=cpu,dtype=float32,prefix_token_id={eos}",
                                  task_manager=TaskManager(include_path=str(tmp_path / "tasks")))
    ours = evaluate(hf, "ppl", docs, Settings(stride=48, batch_size=2))
    assert ours["tokens"] > 2 * 48  # some documents span several windows
    assert ours["bits_per_byte"] == pytest.approx(out["results"][name]["bits_per_byte,none"], rel=1e-5)
