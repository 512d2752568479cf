"""Readers and validation: every record shape, gzip and Parquet, errors with file:line, skip counts."""

import gzip

import pytest

from minimind.data.formats import ReadStats, iter_examples, normalize_record, RecordError
from minimind.data.reading import iter_raw
from minimind.errors import UserError
from support import write_jsonl


SFT = {"conversations": [
    {"role": "system", "content": "You are MiniMind.", "tools": '[{"name": "add"}]'},
    {"role": "user", "content": "你是谁？"},
    {"role": "assistant", "content": "我是 MiniMind。", "reasoning_content": "问身份"},
    {"role": "user", "content": "1+2?"},
    {"role": "assistant", "content": "", "tool_calls": '[{"name": "add", "arguments": {"a": 1, "b": 2}}]'},
    {"role": "tool", "content": "3"},
    {"role": "assistant", "content": "3"},
]}


def test_pretrain_and_sft_shapes():
    assert normalize_record("pretrain", {"text": "hello", "meta": 1}) == "hello"
    ex = normalize_record("sft", SFT)
    assert ex["tools"] is None
    assert [m["role"] for m in ex["messages"]] == ["system", "user", "assistant", "user", "assistant", "tool", "assistant"]
    assert ex["messages"][0] == {"role": "system", "content": "You are MiniMind.", "tools": '[{"name": "add"}]'}
    assert ex["messages"][2] == {"role": "assistant", "content": "我是 MiniMind。", "reasoning_content": "问身份"}
    assert ex["messages"][4]["tool_calls"].startswith("[{")


def test_parquet_style_nulls_are_dropped():
    # Parquet fills missing struct fields with None: they must read as absent, not as errors
    rec = {"conversations": [{"role": "user", "content": "hi", "reasoning_content": None, "tool_calls": None},
                             {"role": "assistant", "content": "yo", "reasoning_content": None, "tool_calls": None}]}
    assert normalize_record("sft", rec)["messages"] == [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "yo"}]


def test_dpo_shape():
    rec = {"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "good"}],
           "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "bad"}]}
    ex = normalize_record("dpo", rec)
    assert ex["chosen"][-1]["content"] == "good" and ex["rejected"][-1]["content"] == "bad"
    with pytest.raises(RecordError, match="'rejected' must end with an assistant message"):
        normalize_record("dpo", {"chosen": rec["chosen"], "rejected": rec["rejected"][:1]})


def test_rl_shapes():
    # SFT shape: the final assistant turn becomes the reference answer and leaves the prompt
    ex = normalize_record("rl", {"conversations": [{"role": "user", "content": "2+3=?"},
                                                   {"role": "assistant", "content": "5"}]})
    assert ex == {"messages": [{"role": "user", "content": "2+3=?"}], "answer": "5", "gt": None, "tools": None}
    ex = normalize_record("rl", {"conversations": [{"role": "user", "content": "q"}]})
    assert ex["answer"] is None and ex["messages"] == [{"role": "user", "content": "q"}]
    ex = normalize_record("rl", {"prompt": "7*6?", "answer": 42, "gt": ["42"]})
    assert ex == {"messages": [{"role": "user", "content": "7*6?"}], "answer": "42", "gt": ["42"], "tools": None}
    assert normalize_record("rl", {"prompt": "x", "gt": ["a", "b"]})["answer"] == "a"
    with pytest.raises(RecordError, match="'gt' must be a list"):
        normalize_record("rl", {"prompt": "x", "gt": "a"})


@pytest.mark.parametrize("record, message", [
    ({"txt": "a"}, "missing key 'text' (keys present: txt)"),
    ({"text": ""}, "'text' is empty"),
    ({"text": 5}, "'text' must be a string, got int"),
])
def test_pretrain_errors(record, message):
    with pytest.raises(RecordError) as err:
        normalize_record("pretrain", record)
    assert str(err.value) == message


@pytest.mark.parametrize("conv, message", [
    ([], "'conversations' is an empty conversation"),
    ([{"role": "bot", "content": "x"}], "conversations[0] has role 'bot'; expected one of system, user, assistant, tool"),
    ([{"content": "x"}], "conversations[0] has no 'role'"),
    ([{"role": "user"}], "conversations[0] (user) has no 'content'"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "b"}],
     "conversations[1] is a system message but not the first message"),
    ([{"role": "user", "content": "a"}], "conversation has no assistant message (nothing to learn from)"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool_calls": "[{oops"}],
     "conversations[1] 'tool_calls' is a string but not valid JSON (Expecting property name enclosed in double quotes)"),
    ("nope", "'conversations' must be a list of messages, got str"),
])
def test_sft_errors(conv, message):
    with pytest.raises(RecordError) as err:
        normalize_record("sft", {"conversations": conv})
    assert str(err.value) == message


def test_error_names_file_and_line(tmp_path):
    good = {"text": "fine"}
    # line 4 is blank (not a record, still counted as a line); line 7 is bad JSON
    path = write_jsonl(tmp_path / "file.jsonl", [good, good, good, "", good, good, '{"text": "broken'])
    with pytest.raises(UserError) as err:
        list(iter_examples("pretrain", [path]))
    assert str(err.value).startswith(f"{path}:7: bad JSON: ")
    path2 = write_jsonl(tmp_path / "b.jsonl", [good, {"conversations": []}])
    with pytest.raises(UserError, match=r"b\.jsonl:2: missing key 'text'"):
        list(iter_examples("pretrain", [path2]))
    path3 = tmp_path / "c.jsonl"
    path3.write_bytes(b'{"text": "ok"}\n[1, 2]\n{"text": "\xff\xfe"}\n')
    with pytest.raises(UserError, match=r"c\.jsonl:2: expected a JSON object, got list"):
        list(iter_examples("pretrain", [path3]))


def test_skip_bad_counts_everything(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"text": "a"}\n\n{"text": \n{"txt": "b"}\n{"text": "c"}\n{"text": "\xff"}\n')
    stats = ReadStats()
    out = list(iter_examples("pretrain", [path], skip_bad=True, stats=stats))
    assert out == ["a", "c"]
    assert (stats.records, stats.skipped) == (2, 3)
    assert stats.examples[0].startswith(f"{path}:3: bad JSON")
    assert stats.examples[1] == f"{path}:4: missing key 'text' (keys present: txt)"
    assert stats.examples[2].startswith(f"{path}:6: not valid UTF-8")


def test_gzip_reads_like_plain(tmp_path):
    recs = [SFT, {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    plain = write_jsonl(tmp_path / "s.jsonl", recs)
    gz = tmp_path / "s.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    assert list(iter_examples("sft", [gz])) == list(iter_examples("sft", [plain]))
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="not a valid gzip file"):
        list(iter_examples("sft", [bad]))


def test_parquet_reads_like_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    recs = [{"chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"good{i}"}],
             "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"bad{i}"}]}
            for i in range(5)]
    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet", row_group_size=2)
    plain = write_jsonl(tmp_path / "d.jsonl", recs)
    assert list(iter_examples("dpo", [tmp_path / "d.parquet"])) == list(iter_examples("dpo", [plain]))
    # row numbers name the bad row like line numbers do
    pq.write_table(pa.Table.from_pylist([{"text": "a"}, {"text": ""}]), tmp_path / "p.parquet")
    with pytest.raises(UserError, match=r"p\.parquet:2: 'text' is empty"):
        list(iter_examples("pretrain", [tmp_path / "p.parquet"]))
    assert [n for n, _ in iter_raw(tmp_path / "p.parquet")] == [1, 2]


def test_unknown_files_and_kinds(tmp_path):
    with pytest.raises(UserError, match="no such data file"):
        list(iter_examples("pretrain", [tmp_path / "missing.jsonl"]))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="unknown data file type"):
        list(iter_examples("pretrain", [tmp_path / "x.csv"]))
    with pytest.raises(UserError, match="unknown data kind 'chat'"):
        list(iter_examples("chat", [tmp_path / "x.csv"]))


@pytest.mark.slow
def test_demo_data_is_valid_in_every_shape(tmp_path):
    # The embedded demo set must read without a single bad record in the shape of its kind.
    from minimind.cli import main

    assert main(["data", "demo", "--out", str(tmp_path)]) == 0
    for kind in ("pretrain", "sft", "dpo", "rl"):
        for name in (f"{kind}.jsonl", f"{kind}_eval.jsonl"):
            stats = ReadStats()
            examples = list(iter_examples(kind, [tmp_path / name], skip_bad=True, stats=stats))
            assert stats.skipped == 0 and len(examples) == stats.records > 0, name
    rl = list(iter_examples("rl", [tmp_path / "rl.jsonl"]))
    # RL records carry an explicit short answer; the reference reply left the prompt
    assert all(ex["answer"] and ex["messages"][-1]["role"] == "user" for ex in rl)
