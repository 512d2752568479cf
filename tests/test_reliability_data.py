"""Issue 16, data side: no lost files, bounded records, and one-line errors for every malformed input.

Each test states the class it guards: `data prepare` deletes only what it wrote; a record over
MAX_RECORD_BYTES is refused by `file:line` without being read whole; a BOM is accepted; a lone
surrogate or a non-object tool-call `function` is a bad record `--skip-bad` can skip; malformed
files, flags and output paths give `error: ...` and exit 2, never a traceback.
"""

import errno
import gzip
import io
import json

import pytest

from minimind.cli import main
import minimind.data.reading as reading
import minimind.data.layout as layout
import minimind.data.prepare as prepare_mod
from minimind.data.clean import CleanConfig, clean
from minimind.data.formats import ReadStats, iter_examples
from minimind.data.prepare import encode_items, prepare, read_meta
from minimind.data.store import DocStore
from minimind.errors import UserError
from support import write_jsonl

TEXTS = [{"text": f"document number {i}, long enough to pass the cleaning filters"} for i in range(4)]


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


# ----------------------------------------------------------------------------------------------
# Item 2: a re-run never deletes what `data prepare` did not write


def test_rerun_refuses_an_out_with_foreign_files_and_keeps_them(tmp_path, tok):
    a = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    out = tmp_path / "out"
    prepare("pretrain", [a], out, tok, workers=1)
    (out / "run").mkdir()
    (out / "run" / "model.safetensors").write_bytes(b"weights")
    (out / "notes.txt").write_text("keep me")
    (out / "tokenizer" / "mine.txt").write_text("mine too")
    write_jsonl(a, TEXTS[:2])  # changed input: a rebuild is due
    with pytest.raises(UserError, match=r"out: holds notes\.txt, run/, tokenizer/mine\.txt, which "
                                        r"`data prepare` did not write; refusing to replace it"):
        prepare("pretrain", [a], out, tok, workers=1)
    assert (out / "run" / "model.safetensors").read_bytes() == b"weights"
    assert (out / "notes.txt").read_text() == "keep me" and (out / "tokenizer" / "mine.txt").exists()
    assert read_meta(out)["docs"] == 4  # the old result is untouched too
    # once the foreign files are gone, our own files are replaced as before
    for p in (out / "run" / "model.safetensors", out / "notes.txt", out / "tokenizer" / "mine.txt"):
        p.unlink()
    (out / "run").rmdir()
    assert prepare("pretrain", [a], out, tok, workers=1).meta["docs"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_file_that_appears_during_the_run_survives(tmp_path, tok, monkeypatch):
    a = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    out = tmp_path / "out"
    prepare("pretrain", [a], out, tok, workers=1)
    write_jsonl(a, TEXTS[:3])
    real = prepare_mod.checked_chunks

    def meanwhile(*args, **kwargs):  # the user starts writing into --out while we tokenise
        yield from real(*args, **kwargs)
        (out / "late.log").write_text("written during the run")

    monkeypatch.setattr(prepare_mod, "checked_chunks", meanwhile)
    with pytest.raises(UserError, match="holds late.log"):
        prepare("pretrain", [a], out, tok, workers=1)
    assert (out / "late.log").read_text() == "written during the run" and read_meta(out)["docs"] == 4


def test_removing_a_replaced_dir_deletes_only_our_names(tmp_path):
    d = tmp_path / ".out.old-1"
    (d / "tokenizer").mkdir(parents=True)
    for name in ("meta.json", "00000.tokens.bin", "00000.offsets.bin", "00003.records.jsonl",
                 "tokenizer/tokenizer.json", "x.tokens.bin", "tokenizer/extra.json"):
        (d / name).write_text("x")
    assert layout.remove_ours(d) == ["tokenizer/extra.json", "x.tokens.bin"]
    assert sorted(p.name for p in d.rglob("*")) == ["extra.json", "tokenizer", "x.tokens.bin"]


def test_stale_temp_dir_of_a_killed_run_keeps_foreign_files(tmp_path, tok):
    a = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    stale = tmp_path / ".out.tmp-999999999"  # no such PID: a killed run's leftovers
    stale.mkdir()
    (stale / "00000.tokens.bin").write_bytes(b"\0\0")
    (stale / "precious.txt").write_text("not ours")
    prepare("pretrain", [a], tmp_path / "out", tok, workers=1)
    assert sorted(p.name for p in stale.iterdir()) == ["precious.txt"]


def test_a_prepared_directory_is_not_input_to_prepare(tmp_path, capsys, tok):
    a = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    prepare("pretrain", [a], tmp_path / "p", tok, workers=1)
    rc, _, err = _cli(capsys, "data", "prepare", "--kind", "pretrain", "--data", str(tmp_path / "p"),
                      "--out", str(tmp_path / "q"))
    assert rc == 2 and err == f"error: {tmp_path / 'p'}: is a prepared data directory (train on it directly), not a data file\n"


@pytest.mark.parametrize("damage,message", [
    ("drop_shard", r"FileNotFoundError: .*00000\.mask\.bin"),
    ("truncate_tokens", r"ValueError: shard 00000 does not match meta\.json"),
    ("drop_key", r"meta\.json lacks 'shards'"),
])
def test_damaged_prepared_directory_is_one_line(tmp_path, tok, damage, message):
    conv = {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    out = prepare("sft", [write_jsonl(tmp_path / "s.jsonl", [conv] * 3)], tmp_path / "p", tok, workers=1).path
    if damage == "drop_shard":
        (out / "00000.mask.bin").unlink()
    elif damage == "truncate_tokens":
        (out / "00000.tokens.bin").write_bytes(b"\0\0")
    else:
        meta = json.loads((out / "meta.json").read_text())
        del meta["shards"]
        (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=rf"p: damaged prepared data directory \({message}.*\); delete it and prepare again"):
        DocStore.open(out, tok, "sft")


def test_cli_prepare_refusal_is_one_line(tmp_path, capsys, tok):
    a = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    out = tmp_path / "out"
    assert _cli(capsys, "data", "prepare", "--kind", "pretrain", "--data", str(a), "--out", str(out),
                "--workers", "1")[0] == 0
    (out / "runs").mkdir()
    write_jsonl(a, TEXTS[:1])
    rc, _, err = _cli(capsys, "data", "prepare", "--kind", "pretrain", "--data", str(a), "--out", str(out),
                      "--workers", "1")
    assert rc == 2 and err == (f"error: {out}: holds runs/, which `data prepare` did not write; refusing to "
                               f"replace it (move those out, or choose another --out)\n")
    assert (out / "runs").is_dir()


def test_disk_full_is_one_line_and_keeps_the_old_result(tmp_path, capsys, tok, monkeypatch):
    a = write_jsonl(tmp_path / "a.jsonl", TEXTS)
    out = tmp_path / "out"
    prepare("pretrain", [a], out, tok, workers=1)
    write_jsonl(a, TEXTS[:2])

    def full(self, enc):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / ".out.tmp-1" / "00000.tokens.bin"))

    monkeypatch.setattr(prepare_mod.ShardWriter, "add", full)
    rc, _, err = _cli(capsys, "data", "prepare", "--kind", "pretrain", "--data", str(a), "--out", str(out),
                      "--workers", "1")
    assert rc == 2 and err == f"error: No space left on device: {tmp_path}/.out.tmp-1/00000.tokens.bin\n"
    assert read_meta(out)["docs"] == 4
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ----------------------------------------------------------------------------------------------
# Item 13: bounded record size, UTF-8 BOM


def test_record_over_the_limit_is_refused_by_file_and_line(tmp_path, tok, monkeypatch):
    monkeypatch.setattr(reading, "MAX_RECORD_BYTES", 1000)
    at_limit = json.dumps({"text": "y" * (1000 - 12)})  # exactly 1000 bytes without its newline
    assert len(at_limit) == 1000
    src = tmp_path / "big.jsonl"
    src.write_text(json.dumps(TEXTS[0]) + "\n" + json.dumps({"text": "x" * 5000}) + "\n" + at_limit + "\n")
    with pytest.raises(UserError, match=r"big\.jsonl:2: record is 5\d{3} bytes, over the limit of 1000 bytes "
                                        r"per record \(minimind\.data\.reading\.MAX_RECORD_BYTES\)"):
        prepare("pretrain", [src], tmp_path / "out", tok, workers=1)
    res = prepare("pretrain", [src], tmp_path / "out", tok, workers=1, skip_bad=True)
    assert res.meta["records"] == 2 and res.meta["skipped"] == 1
    store = DocStore.open(res.path, tok, "pretrain")
    assert tok.decode(store.ids(1).tolist()) == "y" * 988  # line 3 follows the skipped line intact
    report = clean([src], tmp_path / "c.jsonl", CleanConfig(skip_bad=True, minhash_threshold=0))
    assert report.read == [3] and report.removed["bad"] == [1]


def test_a_long_line_is_never_held_whole(monkeypatch):
    class Spy(io.BytesIO):
        biggest = 0

        def readline(self, size=-1):
            line = super().readline(size)
            Spy.biggest = max(Spy.biggest, len(line))
            return line

    f = Spy(b'{"a": 1}\n' + b"z" * 5_000_000 + b"\n" + b'{"b": 2}')
    got = list(reading._bounded_lines(f, 10_000))
    assert got == [(1, b'{"a": 1}\n'), (2, reading.Oversized(5_000_001)), (3, b'{"b": 2}')]
    assert Spy.biggest <= 1 << 20


def test_real_limit_on_the_cli(tmp_path, capsys):
    src = tmp_path / "huge.jsonl"
    line = b'{"text": "' + b"w" * reading.MAX_RECORD_BYTES + b'"}\n'
    src.write_bytes(b'{"text": "fine"}\n' + line)
    rc, _, err = _cli(capsys, "data", "prepare", "--kind", "pretrain", "--data", str(src), "--out",
                      str(tmp_path / "o"), "--workers", "1")
    assert rc == 2 and err.startswith(f"error: {src}:2: record is 4.2 MB, over the limit of 4.2 MB per record")


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
def test_utf8_bom_is_accepted(tmp_path, tok, suffix):
    body = "\ufeff" + "".join(json.dumps(t) + "\n" for t in TEXTS)
    src = tmp_path / f"bom{suffix}"
    src.write_bytes(gzip.compress(body.encode()) if suffix.endswith(".gz") else body.encode())
    assert [ex for ex in iter_examples("pretrain", [src])] == [t["text"] for t in TEXTS]
    assert prepare("pretrain", [src], tmp_path / "out", tok, workers=1).meta["docs"] == 4
    report = clean([src], tmp_path / "c.jsonl", CleanConfig(minhash_threshold=0))
    assert report.kept == [4]


# ----------------------------------------------------------------------------------------------
# Item 11: records that crashed the renderer or the tokenizer are bad records


SURROGATE_LINE = '{"text": "broken \\ud800 escape in an otherwise fine document"}'
CONV_FN_STR = {"conversations": [{"role": "user", "content": "weather?"},
                                 {"role": "assistant", "content": "", "tool_calls": [{"function": "weather"}]}]}


@pytest.mark.parametrize("kind,bad,message", [
    ("pretrain", SURROGATE_LINE, r"text holds a lone surrogate \\ud800"),
    ("sft", json.dumps({"conversations": [{"role": "user", "content": "hi \udc00"},
                                          {"role": "assistant", "content": "ok"}]}),
     r"conversations\[0\]\.content holds a lone surrogate \\udc00"),
    ("rl", json.dumps({"prompt": "what is \ud83d?"}), r"prompt holds a lone surrogate \\ud83d"),
    ("sft", json.dumps(CONV_FN_STR), r"conversations\[1\] 'tool_calls'\[0\] 'function' must be an object"),
    ("sft", json.dumps({"conversations": [CONV_FN_STR["conversations"][0], {
        "role": "assistant", "content": "", "tool_calls": json.dumps([{"function": {"arguments": {}}}])}]}),
     r"conversations\[1\] 'tool_calls'\[0\] has no function 'name' string"),
    ("dpo", json.dumps({"chosen": CONV_FN_STR["conversations"], "rejected": CONV_FN_STR["conversations"]}),
     r"chosen\[1\] 'tool_calls'\[0\] 'function' must be an object"),
])
def test_bad_text_and_tool_calls_are_skippable_records(tmp_path, tok, capsys, kind, bad, message):
    good = {"pretrain": '{"text": "a fine document with an escaped pair \\ud83d\\ude00 (U+1F600)"}',
            "sft": {"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            "rl": {"prompt": "2+2?", "answer": "4"},
            "dpo": {"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                    "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go"}]}}[kind]
    src = write_jsonl(tmp_path / "d.jsonl", [good, bad, good])
    with pytest.raises(UserError, match=rf"d\.jsonl:2: {message}"):
        prepare(kind, [src], tmp_path / "out", tok, workers=1)
    rc, out, err = _cli(capsys, "data", "prepare", "--kind", kind, "--data", str(src), "--out",
                        str(tmp_path / "out"), "--skip-bad", "--workers", "1")
    assert rc == 0 and "skipped 1 bad record(s)" in out and err == ""
    assert read_meta(tmp_path / "out")["records"] == 2
    examples = list(iter_examples(kind, [src], skip_bad=True, stats=ReadStats()))
    assert len(examples) == 2 and (kind != "pretrain" or "\U0001F600" in examples[0])


def test_tokenizer_refusals_become_record_errors(tok):
    # Dict payloads (Parquet rows) skip the escape check, so the text reaches the encoder, which
    # refuses it (the tokenizer's TypeError, or the renderer's own check): a bad record either way.
    enc = encode_items("pretrain", tok, [(1, {"text": "ok"}), (2, {"text": "a \ud800 b"}), (3, {"text": "fine"})])
    assert [ln for ln, _ in enc.errors] == [2] and enc.n_records == 2
    assert enc.lengths.tolist() == [len(tok.encode("ok")), len(tok.encode("fine"))]
    good = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    bad = [{"role": "user", "content": "x \udfff"}, {"role": "assistant", "content": "y"}]
    for kind, rec in (("sft", {"conversations": bad}), ("rl", {"conversations": bad[:1]}),
                      ("dpo", {"chosen": bad, "rejected": good})):
        ok = {"sft": {"conversations": good}, "rl": {"conversations": good[:1]},
              "dpo": {"chosen": good, "rejected": good}}[kind]
        enc = encode_items(kind, tok, [(7, rec), (8, ok)])
        assert [ln for ln, _ in enc.errors] == [7] and enc.n_records == 1, kind


# ----------------------------------------------------------------------------------------------
# Malformed files, flags and output paths: `error: ...`, exit 2, never a traceback


def _malformed(tmp_path, name):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / name
    if name == "empty.jsonl":
        p.write_bytes(b"")
    elif name == "adir.jsonl":
        p.mkdir()
    elif name == "notjson.jsonl":
        p.write_text("this is not json\n")
    elif name == "array.jsonl":
        p.write_text("[1, 2]\n")
    elif name == "pretty.json":
        p.write_text('{\n  "text": "pretty-printed"\n}\n')
    elif name == "nested.jsonl":
        p.write_text("[" * 100_000 + "\n")
    elif name == "bigint.jsonl":
        p.write_text('{"text": ' + "9" * 5000 + "}\n")
    elif name == "plain.jsonl.gz":
        p.write_text("not gzip at all\n")
    elif name == "corrupt.jsonl.gz":
        raw = bytearray(gzip.compress(b'{"text": "hello there"}\n' * 2000))
        raw[30:40] = b"\xff" * 10
        p.write_bytes(bytes(raw))
    elif name == "text.parquet":
        p.write_text("not parquet\n")
    elif name == "torn.parquet":  # a valid footer, but the data pages are damaged
        pq.write_table(pa.table({"text": [f"row {i} " * 20 for i in range(5000)]}), p,
                       row_group_size=1000, compression="snappy")
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2:len(raw) // 2 + 4000] = b"\x07" * 4000
        p.write_bytes(bytes(raw))
    return p


@pytest.mark.parametrize("name,message", [
    ("empty.jsonl", "empty.jsonl: no pretrain records (the input is empty)"),
    ("adir.jsonl", "adir.jsonl: is a directory (give the data files inside it), not a data file"),
    ("notjson.jsonl", "notjson.jsonl:1: bad JSON: Expecting value"),
    ("array.jsonl", "array.jsonl:1: expected a JSON object, got list; data files are JSON Lines"),
    ("pretty.json", "pretty.json:1: bad JSON: Expecting property name enclosed in double quotes (column 1); "
                    "data files are JSON Lines: one complete JSON object per line"),
    ("nested.jsonl", "nested.jsonl:1: bad JSON: nested too deeply"),
    ("bigint.jsonl", "bigint.jsonl:1: bad JSON: Exceeds the limit"),
    ("plain.jsonl.gz", "plain.jsonl.gz: not a valid gzip file"),
    ("corrupt.jsonl.gz", "corrupt.jsonl.gz: gzip file is truncated or corrupt"),
    ("text.parquet", "text.parquet: not a readable Parquet file"),
    ("torn.parquet", "torn.parquet: Parquet file is corrupt after row "),
])
@pytest.mark.parametrize("command", ["prepare", "clean"])
def test_malformed_input_is_one_line(tmp_path, capsys, command, name, message):
    src = _malformed(tmp_path, name)
    args = (["prepare", "--kind", "pretrain", "--workers", "1", "--out", str(tmp_path / "o")] if command == "prepare"
            else ["clean", "--out", str(tmp_path / "o.jsonl")])
    rc, out, err = _cli(capsys, "data", *args, "--data", str(src))
    if command == "clean" and name == "empty.jsonl":
        assert rc == 0 and "wrote 0 documents" in out  # cleaning nothing is a report, not an error
        return
    assert rc == 2 and err.startswith(f"error: {tmp_path}/{message}") and err.count("\n") == 1


@pytest.mark.parametrize("argv,message", [
    (["prepare", "--kind", "pretrain", "--out", "{f}/sub"], "--out {f}/sub: {f} is a file, not a folder"),
    (["clean", "--out", "{f}/c.jsonl"], "--out {f}/c.jsonl: {f} is a file, not a folder"),
    (["clean", "--out", "{d}"], "--out {d}: is a folder; give a file path"),
    (["clean", "--out", "{src}"], "{src}: is also an input; write the cleaned data to a new file"),
    (["demo", "--out", "{f}"], "--out {f}: is a file; give a folder"),
    (["clean", "--out", "{d}/c.jsonl", "--weights", "nan"], "--weights must be finite, non-negative"),
    (["clean", "--out", "{d}/c.jsonl", "--minhash-threshold", "nan"], "--minhash-threshold must be between 0 and 1"),
    (["clean", "--out", "{d}/c.jsonl", "--max-repetition", "1.5"], "--max-repetition must be between 0 and 1"),
    (["clean", "--out", "{d}/c.jsonl", "--min-chars", "-1"], "--min-chars must be >= 0"),
])
def test_bad_out_paths_and_flags_are_one_line(tmp_path, capsys, argv, message):
    f, d = tmp_path / "afile", tmp_path / "adir"
    f.write_text("user data")
    d.mkdir()
    src = write_jsonl(tmp_path / "src.jsonl", TEXTS)
    fill = {"f": f, "d": d, "src": src}
    argv = [a.format(**fill) for a in argv]
    rc, _, err = _cli(capsys, "data", *argv, *([] if argv[0] == "demo" else ["--data", str(src)]))
    assert rc == 2 and err.startswith("error: " + message.format(**fill)) and err.count("\n") == 1
    assert f.read_text() == "user data" and src.read_text().count("\n") == 4


def test_parquet_values_json_cannot_hold(tmp_path, tok):
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    when = datetime.datetime(2020, 1, 2, 3, 4, 5)
    src = tmp_path / "rl.parquet"
    pq.write_table(pa.table({"prompt": ["what day is it?", "2+2?"], "gt": [[when], None],
                             "created": [when, when]}), src)
    with pytest.raises(UserError, match=r"rl\.parquet:1: 'gt' holds a value JSON cannot hold"):
        prepare("rl", [src], tmp_path / "out", tok, workers=1)
    res = prepare("rl", [src], tmp_path / "out", tok, workers=1, skip_bad=True)
    assert res.meta["records"] == 1 and DocStore.open(res.path, tok, "rl").record(0)["messages"][0]["content"] == "2+2?"
    # a column nobody reads does not matter to prepare, and clean keeps it as text
    report = clean([src], tmp_path / "c.jsonl", CleanConfig(min_chars=1, min_letter_ratio=0, minhash_threshold=0))
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert report.kept == [2] and rows[1]["created"] == str(when) and rows[0]["gt"] == [str(when)]


def test_demo_never_overwrites_a_foreign_file(tmp_path, capsys):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "sft.jsonl").write_text("my own sft data\n")
    rc, _, err = _cli(capsys, "data", "demo", "--out", str(out))
    assert rc == 2 and "sft.jsonl already exist(s) with other content; refusing to overwrite" in err
    assert (out / "sft.jsonl").read_text() == "my own sft data\n"
    assert sorted(p.name for p in out.iterdir()) == ["sft.jsonl"]
    (out / "sft.jsonl").unlink()
    assert _cli(capsys, "data", "demo", "--out", str(out))[0] == 0
    written = sorted(p for p in out.rglob("*"))
    assert _cli(capsys, "data", "demo", "--out", str(out))[0] == 0  # our own files: replaced again
    assert sorted(p for p in out.rglob("*")) == written and out / "sft.jsonl" in written
