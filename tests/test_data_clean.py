"""Cleaning: normalisation, filters, exact + MinHash dedup on planted duplicates, weighted mixing."""

import json

import pytest

from minimind.cli import main
from minimind.data.clean import (CleanConfig, clean, even_pick, interleave_schedule, letter_ratio, mix_quotas,
                                 normalize_text, repetition_ratio)
from minimind.errors import UserError
from support import write_jsonl

EN = ("The river runs through the old town, past the mill and the market square, where farmers sell "
      "apples, cheese and fresh bread every Saturday morning while children play by the fountain.")
ZH = ("春天来了，公园里的花都开了。孩子们在草地上放风筝，老人们坐在长椅上聊天，湖面上有几只小船慢慢地划过，"
      "远处传来悠扬的歌声。傍晚时分，夕阳把天空染成了橘红色，散步的人们三三两两地回家，街边的小店亮起了灯。")


def read_texts(path):
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_normalize_text():
    assert normalize_text("ＡＢＣ１２３") == "ABC123"                      # NFKC folds full-width forms
    assert normalize_text("a \t  b\r\n\n\n\nc  \n") == "a b\n\nc"
    assert normalize_text("zero\u200bwidth\ufeff") == "zerowidth"
    assert normalize_text("ＡＢＣ", "none") == "ＡＢＣ"
    # Chinese punctuation stays full-width (strict NFKC would make it ASCII); letters still fold
    assert normalize_text("你好，世界！（ＡＩ）") == "你好，世界！（AI）"
    assert normalize_text("你好，世界！（ＡＩ）", "NFKC-strict") == "你好,世界!(AI)"


def test_quality_measures():
    assert repetition_ratio("ab" * 50) == pytest.approx(1 - 2 / 91)       # 91 10-grams, 2 distinct
    assert repetition_ratio("abcdefghijklmnop") == 0.0
    assert letter_ratio("ab12") == 0.5 and letter_ratio("中文 12") == 0.5 and letter_ratio("   ") == 0.0


def test_planted_exact_and_near_duplicates(tmp_path):
    distinct = [EN, ZH, "A completely different story about a lighthouse keeper and his cat on a stormy night."]
    planted = [
        EN.replace(" ", "  "),                               # exact dup after whitespace normalisation
        ZH.replace("，", "\uff0c"),                           # identical -> exact dup
        EN.replace("Saturday", "Sunday"),                    # one word changed -> near dup
        ZH.replace("小船", "小舟"),                            # one Chinese word changed -> near dup
        "short",                                             # too short
        "ha" * 60,                                           # repetitive
        "1234 5678 9012 3456 7890 1234 5678 !!!",            # few letters
    ]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in distinct[:1] + planted + distinct[1:]])
    report = clean([src], tmp_path / "out.jsonl", CleanConfig())
    removed = {k: v[0] for k, v in report.removed.items()}
    assert removed == {"bad": 0, "too_short": 1, "too_long": 0, "repetitive": 1, "low_letters": 1,
                       "exact_dup": 2, "near_dup": 2}
    assert read_texts(tmp_path / "out.jsonl") == [normalize_text(t) for t in distinct]
    assert report.kept == [3] and report.read == [10]
    # with MinHash off, the near duplicates stay
    off = clean([src], tmp_path / "off.jsonl", CleanConfig(minhash_threshold=0))
    assert off.removed["near_dup"] == [0] and off.kept == [5]


def test_conversations_are_normalised_in_place(tmp_path):
    rec = {"conversations": [{"role": "user", "content": "Ｈｅｌｌｏ,  how are you today my friend?"},
                             {"role": "assistant", "content": "Fine,\t\tthanks for asking!"}], "id": 7}
    src = write_jsonl(tmp_path / "c.jsonl", [rec, rec])
    report = clean([src], tmp_path / "o.jsonl")
    out = [json.loads(x) for x in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert out == [{"conversations": [{"role": "user", "content": "Hello, how are you today my friend?"},
                                      {"role": "assistant", "content": "Fine, thanks for asking!"}], "id": 7}]
    assert report.removed["exact_dup"] == [1] and report.normalised_changed == [2]


def test_mixing_weights_are_respected(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": f"source A document number {i} " + EN[:40 + i]} for i in range(40)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"text": f"来源B的第{i}篇文档：" + ZH[:30 + i]} for i in range(40)])
    cfg = CleanConfig(minhash_threshold=0)
    report = clean([a, b], tmp_path / "mix.jsonl", cfg, weights=[3, 1])
    assert report.kept == [40, 40] and report.written == [60, 20]
    out = read_texts(tmp_path / "mix.jsonl")
    is_a = [t.startswith("source A") for t in out]
    # every prefix is already mixed 3:1 (within one document)
    for k in range(1, len(out) + 1):
        assert abs(sum(is_a[:k]) - 0.75 * k) <= 1
    # A is upsampled: all 40 once, then 20 of them again; B is subsampled evenly (every other one)
    a_docs = [t for t in out if t.startswith("source A")]
    assert len(set(a_docs)) == 40
    b_ids = [int(t[5:t.index("篇")]) for t in out if not t.startswith("source A")]
    assert b_ids == list(range(1, 40, 2))
    again = clean([a, b], tmp_path / "mix2.jsonl", cfg, weights=[3, 1])
    assert again.written == report.written
    assert (tmp_path / "mix2.jsonl").read_bytes() == (tmp_path / "mix.jsonl").read_bytes()


def test_mixing_helpers():
    assert mix_quotas([3, 2], [1, 1]) == [3, 2]            # largest remainder: sums to the total
    assert mix_quotas([10, 10], None) == [10, 10]
    assert even_pick(4, 6).tolist() == [0, 1, 2, 3, 1, 3]
    assert even_pick(5, 2).tolist() == [2, 4]
    assert list(interleave_schedule([1, 3])) == [1, 0, 1, 1]
    with pytest.raises(UserError, match="--weights has 1 values for 2 data files"):
        mix_quotas([1, 1], [1.0])


def test_bad_records_and_cli(tmp_path, capsys):
    src = tmp_path / "x.jsonl"
    src.write_text(json.dumps({"text": EN}) + "\n" + "{oops\n" + json.dumps({"meta": 1}) + "\n")
    assert main(["data", "clean", "--data", str(src), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {src}:2: bad JSON")
    assert not (tmp_path / "o.jsonl").exists()
    assert main(["data", "clean", "--data", str(src), "--out", str(tmp_path / "o.jsonl"), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 bad record(s)" in out and "wrote 1 documents" in out
    assert "- near_dup" in out and "- exact_dup" in out
