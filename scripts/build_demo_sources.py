"""Maintainer tool: rebuild the real text shipped in `src/minimind/data/demo/sources/` (not run by users).

The demo data (`minimind.data.demo.write_demo`) must be reproducible byte for byte on any machine
without network access, so the real prose is extracted once, here, and the result is committed:
`sources/pretrain_text.jsonl.gz` ({"src", "lang", "text", "split"}) and `sources/dialogues.jsonl.gz`
({"src", "lang", "turns"}). Provenance and licences: src/minimind/data/demo/README.md.

    npm pack chinese-poetry@2.0.1 && mkdir cp && tar xzf chinese-poetry-2.0.1.tgz -C cp
    pip download --no-deps chatterbot-corpus==1.3.3 -d . && unzip -qo chatterbot_corpus-1.3.3-*.whl -d cc
    pip install --target /tmp/occ opencc-purepy==1.5.0          # traditional -> simplified, build time only
    PYTHONPATH=/tmp/occ python scripts/build_demo_sources.py cp/package/dist cc/chatterbot_corpus/data

Chinese: public-domain classical texts (pre-1900 prose and poetry) from the `chinese-poetry` npm
package (MIT), converted to simplified characters; the packages' modern abstracts, biographies and
annotations are left out. English: Python's and NumPy's own documentation (run with Python 3.11 and
NumPy 2.4.6 to reproduce the bytes). The held-out split is chosen here: every 25th document is a
candidate, kept as held out only if it shares no 13-gram with any other document.
It imports numpy (docstrings), PyYAML (chatterbot corpus) and opencc_purepy (conversion).
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
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import minimind.data.demo as demo
from minimind.data.demo.evalsets import NGRAM, ngrams

OUT_DIR = Path(demo.__file__).parent / "sources"
EVAL_EVERY = 25                # every 25th document is a held-out candidate
DOC_CHARS = 1500               # documents are chapters or groups of poems of about this many characters
# UTF-8 bytes kept from the large poetry collections (the prose and the small collections are kept whole).
CAPS = {"quantangshi/tang": 1_500_000, "songci": 1_000_000, "yuanqu": 400_000}
# User turns asking who the bot is: the corpus answers in a persona ("a man in a mask") that
# would contradict the identity turns, so those dialogues are dropped.
IDENTITY_QUESTIONS = {"who are you", "what are you", "what is your name", "what's your name", "are you a robot",
                      "are you a bot", "你是谁", "你叫什么", "你叫什么名字", "你是机器人吗", "那么你呢"}
MIN_DOC_CHARS = 150            # docstrings shorter than this are mostly signatures, not prose
QUOTES = str.maketrans({"「": "“", "」": "”", "『": "‘", "』": "’"})
# Editorial marks of the source edition: variant readings "（一作…）", restored characters "[爽]".
NOTE_RE = re.compile(r"（[^（）]*）|\([^()]*\)")
BRACKETS = str.maketrans("", "", "[]〖〗")
DAMAGED = re.compile(r"[□○●{}0-9=/]")  # lost characters or leftover markup: the poem is skipped


# ---------------------------------------------------------------- Chinese: chinese-poetry (npm) 2.0.1

def _converter() -> Callable[[str], str]:
    from opencc_purepy import OpenCC  # build-time only; not a dependency of minimind

    t2s = OpenCC("t2s")
    return lambda s: t2s.convert(s).translate(QUOTES)


def _clean(line: str) -> str:
    return NOTE_RE.sub("", line).translate(BRACKETS).strip()


def _load(dist: Path, rel: str):
    return json.loads((dist / rel).read_text(encoding="utf-8"))


def _chapters(node, title: str = "") -> Iterator[tuple[str, list[str]]]:
    """Walk the nested {"title"|"chapter", "content"|"paragraphs"} layout of the prose files."""
    if isinstance(node, list):
        for x in node:
            yield from _chapters(x, title)
        return
    name = node.get("chapter") or node.get("title") or title
    if node.get("paragraphs"):
        yield name, node["paragraphs"]
    if isinstance(node.get("content"), list):
        yield from _chapters(node["content"], name)


PROSE = {  # src -> (file, book title); abstracts and prefaces of the package are not used
    "guwenguanzhi": ("mengxue/guwenguanzhi.json", "古文观止"), "lunyu": ("lunyu/lunyu.json", "论语"),
    "mengzi": ("sishuwujing/mengzi.json", "孟子"), "daxue": ("sishuwujing/daxue.json", "大学"),
    "zhongyong": ("sishuwujing/zhongyong.json", "中庸"), "sanzijing": ("mengxue/sanzijing-new.json", "三字经"),
    "qianziwen": ("mengxue/qianziwen.json", "千字文"), "dizigui": ("mengxue/dizigui.json", "弟子规"),
    "zengguangxianwen": ("mengxue/zengguangxianwen.json", "增广贤文"),
    "youxueqionglin": ("mengxue/youxueqionglin.json", "幼学琼林"),
    "zhuzijiaxun": ("mengxue/zhuzijiaxun.json", "朱子家训"), "shenglvqimeng": ("mengxue/shenglvqimeng.json", "声律启蒙"),
}


def _chunks(title: str, paragraphs: list[str]) -> list[str]:
    """Split a long chapter at paragraph boundaries into documents of about DOC_CHARS characters."""
    docs, cur = [], [title]
    for p in paragraphs:
        if len(cur) > 1 and sum(map(len, cur)) + len(p) > DOC_CHARS:
            docs.append("\n".join(cur))
            cur = [title]
        cur.append(p)
    return docs + (["\n".join(cur)] if len(cur) > 1 else [])


def zh_prose(dist: Path, conv: Callable[[str], str]) -> list[dict]:
    out = []
    for src, (rel, book) in PROSE.items():
        data = _load(dist, rel)
        # The author of 古文观止's pieces is their own (data field), the anthology's compilers are not.
        for chapter, paras in _chapters(data, book):
            paras = [conv(_clean(p)) for p in paras if _clean(p)]
            head = conv(f"{book}·{chapter}" if chapter != book else book)
            out += [{"src": f"chinese-poetry/{src}", "text": t} for t in _chunks(head, paras)]
    entries = _load(dist, "youmengying/youmengying.json")  # 幽梦影: aphorisms with contemporaries' comments
    for i in range(0, len(entries), 12):
        text = "\n".join(e["content"] + "\n" + "\n".join(e.get("comment", [])) for e in entries[i:i + 12])
        out.append({"src": "chinese-poetry/youmengying", "text": conv("幽梦影\n" + _clean(text))})
    return out


def _poems(dist: Path) -> Iterator[tuple[str, str, str, list[str]]]:
    """(collection, title, author, lines) in a fixed order; small collections first."""
    for p in _load(dist, "shijing/shijing.json"):
        yield "shijing", f"诗经·{p['chapter']}·{p['section']}·{p['title']}", "", p["content"]
    for p in _load(dist, "chuci/chuci.json"):
        yield "chuci", f"楚辞·{p['title']}", p.get("author", ""), p["content"]
    for p in _load(dist, "quantangshi/唐诗三百首.json"):
        yield "tangshisanbaishou", p["title"], p["author"], p["paragraphs"]
    for p in _load(dist, "caocaoshiji/caocao.json"):
        yield "caocaoshiji", p["title"], "曹操", p["paragraphs"]
    for f in sorted((dist / "wudaishici/huajianji").glob("huajianji-*-juan.json")):
        for p in json.loads(f.read_text(encoding="utf-8")):  # the modern "notes" are not used
            yield "huajianji", p["title"], p["author"], p["paragraphs"]
    for p in _load(dist, "nalanxingde/纳兰性德诗集.json"):
        yield "nalanxingde", p["title"], p["author"], p["para"]
    key = lambda f: int(f.stem.rsplit(".", 1)[1])  # noqa: E731 - numeric file order
    for f in sorted((dist / "quantangshi").glob("poet.tang.*.json"), key=key):
        for p in json.loads(f.read_text(encoding="utf-8")):
            yield "quantangshi/tang", p["title"], p["author"], p["paragraphs"]
    for f in sorted((dist / "songci").glob("ci.song.*.json"), key=lambda f: f.stem):
        if f.stem.split(".")[-1].isdigit():
            for p in json.loads(f.read_text(encoding="utf-8")):
                yield "songci", p["rhythmic"], p["author"], p["paragraphs"]
    for p in _load(dist, "yuanqu/yuanqu.json"):
        yield "yuanqu", p["title"], p["author"], p["paragraphs"]


def zh_poetry(dist: Path, conv: Callable[[str], str]) -> list[dict]:
    """Poems rendered as title / author / lines, grouped per collection into documents; repeats
    (the same poem in two anthologies) and poems with lost characters are skipped."""
    seen, used, groups = set(), {}, {}
    for coll, title, author, lines in _poems(dist):
        lines = [_clean(x) for x in lines]
        body = "\n".join(x for x in lines if x)
        if not body or DAMAGED.search(body + title) or used.get(coll, 0) >= CAPS.get(coll, 1 << 60):
            continue
        poem = conv("\n".join(x for x in (_clean(title), author.strip(), body) if x))
        key = re.sub(r"[^\u4e00-\u9fff]", "", poem.split("\n", 2 if author else 1)[-1])
        if key in seen:
            continue
        seen.add(key)
        used[coll] = used.get(coll, 0) + len(poem.encode("utf-8"))
        groups.setdefault(coll, []).append(poem)
    out = []
    for coll, poems in groups.items():
        cur: list[str] = []
        for p in poems:
            cur.append(p)
            if sum(map(len, cur)) >= DOC_CHARS * 2 // 3:
                out.append({"src": f"chinese-poetry/{coll}", "text": "\n\n".join(cur)})
                cur = []
        if cur:
            out.append({"src": f"chinese-poetry/{coll}", "text": "\n\n".join(cur)})
    return out


# ---------------------------------------------------------------- English: Python + NumPy documentation

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


# ---------------------------------------------------------------- held-out split and output

def assign_splits(records: list[dict]) -> None:
    """Every EVAL_EVERY-th document is a held-out candidate; it stays held out only if none of its
    13-grams occurs in any other document (quotations, repeated stanzas and shared boilerplate
    would otherwise let a model score well on "held-out" text it has memorised)."""
    candidates = {i: ngrams(r["text"], NGRAM) for i, r in enumerate(records) if i % EVAL_EVERY == 0}
    owner: dict[tuple, set[int]] = {}
    for i, grams in candidates.items():
        for g in grams:
            owner.setdefault(g, set()).add(i)
    clashing: set[int] = set()
    for j, r in enumerate(records):
        for g in ngrams(r["text"], NGRAM):
            clashing |= owner.get(g, set()) - {j}
    for i, r in enumerate(records):
        r["split"] = "eval" if i in candidates and i not in clashing else "train"


def write_gz(path: Path, records: list[dict]) -> None:
    # mtime=0 and a fixed filename in the header: the same input gives the same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("poetry_dir", type=Path, help="the unpacked chinese-poetry-2.0.1 npm package's dist/ folder")
    ap.add_argument("chatterbot_dir", type=Path, help="unpacked chatterbot_corpus/data folder")
    args = ap.parse_args()
    conv = _converter()
    zh = zh_prose(args.poetry_dir, conv) + zh_poetry(args.poetry_dir, conv)
    records = [{"src": r["src"], "lang": "zh", "text": r["text"]} for r in zh]
    records += [{"src": "python+numpy/docs", "lang": "en", "text": t} for t in en_docs()]
    assign_splits(records)
    OUT_DIR.mkdir(exist_ok=True)
    write_gz(OUT_DIR / "pretrain_text.jsonl.gz", records)
    write_gz(OUT_DIR / "dialogues.jsonl.gz", dialogues(args.chatterbot_dir))
    for lang in ("zh", "en"):
        recs = [r for r in records if r["lang"] == lang]
        size = sum(len(r["text"].encode()) for r in recs)
        held = sum(r["split"] == "eval" for r in recs)
        print(f"{lang}: {len(recs)} documents ({held} held out), {size / 1e6:.2f} MB")
    by_src: dict[str, int] = {}
    for r in records:
        by_src[r["src"]] = by_src.get(r["src"], 0) + len(r["text"].encode())
    for src, size in by_src.items():
        print(f"  {src:<40} {size / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
