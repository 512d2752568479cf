"""Verifiable tasks for the demo data: arithmetic, counting, unit conversion, comparison, sequences,
word problems; in Chinese and English.

Contract: `make_task(rng, lang, kind=None)` returns a `Task` whose `answer` is the bare reference
answer as a canonical string (integers without separators, decimals without trailing zeros), whose
`question` is the user prompt, and whose `reasoning` is a short correct derivation (used as
`reasoning_content` in SFT). `check_task(task)` recomputes the answer from the task's parameters
alone, so tests (and GRPO reward code) can trust every answer. Everything depends only on the
`random.Random` passed in: same seed, same tasks. `rl_records(rng, n, exclude)` turns tasks into
RL records {"conversations": [user, assistant], "answer", "kind"} with no repeated question.

Tool tasks: `make_tool_task(rng, lang, kind=None)` returns a `ToolTask` that needs a built-in tool
(`minimind.tools`) to answer: multi-digit arithmetic (calculator), unit conversion, date
arithmetic, a capital lookup, text length; two calculations at once (one reply with two calls),
or a chain (a calculation whose result is then converted: two tool rounds). Its `rounds` are the
calls each tool-using reply makes, with the results the built-in tools return for them (computed
by those very functions, so a transcript's tool messages equal what the agent loop appends), its
`final` the closing reply, and `answer` the bare checkable answer (None for two calculations).
Arguments copy the question's own text (the expression as written, the unit names as asked).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from ... import tools as T

KINDS = ("add", "sub", "mul", "compare", "count_letter", "count_items", "unit", "sequence", "word_problem")

WORDS_EN = ("strawberry", "banana", "mississippi", "bookkeeper", "committee", "assessment", "balloon",
            "coffee", "letter", "parallel", "success", "pepper", "address", "tomorrow", "cucumber",
            "engineering", "programming", "necessary", "occurrence", "referee", "giraffe", "hippopotamus")
LETTERS_ZH = "天地人山水火木金土日月风雨花草鱼鸟"
ITEMS = (("apple", "apples", "苹果"), ("book", "books", "本书"), ("pencil", "pencils", "支铅笔"),
         ("egg", "eggs", "个鸡蛋"), ("card", "cards", "张卡片"), ("coin", "coins", "枚硬币"))
NAMES = (("Tom", "小明"), ("Anna", "小红"), ("Leo", "小刚"), ("Mia", "小丽"))
# (en from, en to, zh from, zh to, factor): value_to = value_from * factor
UNITS = (("kilometers", "meters", "千米", "米", 1000), ("meters", "centimeters", "米", "厘米", 100),
         ("kilograms", "grams", "千克", "克", 1000), ("hours", "minutes", "小时", "分钟", 60),
         ("minutes", "seconds", "分钟", "秒", 60), ("liters", "milliliters", "升", "毫升", 1000),
         ("days", "hours", "天", "小时", 24), ("meters", "kilometers", "米", "千米", Fraction(1, 1000)),
         ("grams", "kilograms", "克", "千克", Fraction(1, 1000)), ("minutes", "hours", "分钟", "小时", Fraction(1, 60)))


@dataclass
class Task:
    kind: str
    lang: str
    question: str
    answer: str
    reasoning: str
    params: dict = field(default_factory=dict)

    def reply(self) -> str:
        """A one-line final answer that contains the bare answer."""
        return f"答案是 {self.answer}。" if self.lang == "zh" else f"The answer is {self.answer}."


def fmt(x) -> str:
    """Canonical number text: 12, 3.5, 0.25 (exact for the fractions our tasks produce)."""
    x = Fraction(x)
    if x.denominator == 1:
        return str(x.numerator)
    text = f"{float(x):.6f}".rstrip("0").rstrip(".")
    if Fraction(text) != x:
        raise ValueError(f"{x} has no short decimal form")
    return text


def _pick(lang: str, en: str, zh: str) -> str:
    return zh if lang == "zh" else en


def _column_add(a: int, b: int, lang: str) -> str:
    # Digit-by-digit addition with carries: the derivation a small model can imitate.
    steps, carry, pos = [], 0, 0
    x, y = a, b
    while x or y or carry:
        da, db = x % 10, y % 10
        s = da + db + carry
        steps.append((f"第{pos + 1}位：{da}+{db}+{carry}={s}，写 {s % 10} 进 {s // 10}" if lang == "zh"
                      else f"digit {pos + 1}: {da}+{db}+{carry}={s}, write {s % 10} carry {s // 10}"))
        carry, x, y, pos = s // 10, x // 10, y // 10, pos + 1
    return "\n".join(steps)


def _add(rng: random.Random, lang: str, zh: bool, kind: str) -> Task:
    a, b = rng.randint(10, 9999), rng.randint(10, 9999)
    q = _pick(lang, f"What is {a} + {b}?", f"计算 {a} + {b} 等于多少？")
    r = _column_add(a, b, lang) + (f"\n所以 {a} + {b} = {a + b}。" if zh else f"\nSo {a} + {b} = {a + b}.")
    return Task(kind, lang, q, fmt(a + b), r, {"a": a, "b": b})


def _sub(rng: random.Random, lang: str, zh: bool, kind: str) -> Task:
    a, b = sorted((rng.randint(10, 9999), rng.randint(10, 9999)), reverse=True)
    q = _pick(lang, f"What is {a} - {b}?", f"计算 {a} - {b} 等于多少？")
    r = (f"{a} - {b}：先减 {b // 10 * 10} 得 {a - b // 10 * 10}，再减 {b % 10} 得 {a - b}。" if zh else
         f"{a} - {b}: subtract {b // 10 * 10} to get {a - b // 10 * 10}, then {b % 10} to get {a - b}.")
    return Task(kind, lang, q, fmt(a - b), r, {"a": a, "b": b})


def _mul(rng: random.Random, lang: str, zh: bool, kind: str) -> Task:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    t, u = b // 10 * 10, b % 10
    q = _pick(lang, f"What is {a} × {b}?", f"计算 {a} × {b} 等于多少？")
    r = (f"{a} × {b} = {a} × {t} + {a} × {u} = {a * t} + {a * u} = {a * b}。" if zh else
         f"{a} × {b} = {a} × {t} + {a} × {u} = {a * t} + {a * u} = {a * b}.")
    return Task(kind, lang, q, fmt(a * b), r, {"a": a, "b": b})


def _compare(rng: random.Random, lang: str, zh: bool, kind: str) -> Task:
    a = rng.randint(1, 999)
    b = rng.choice([int(str(a)[::-1]) if a > 9 else a + 7, a + rng.randint(1, 50), max(a - rng.randint(1, 50), 0)])
    if a == b:
        b += 1
    q = _pick(lang, f"Which number is larger, {a} or {b}?", f"{a} 和 {b}，哪个数更大？")
    big = max(a, b)
    r = (f"比较 {a} 和 {b}：{big} 更大。" if zh else f"Compare {a} and {b}: {big} is larger.")
    return Task(kind, lang, q, fmt(big), r, {"a": a, "b": b})


def _count_letter(rng: random.Random, lang: str, zh: bool, kind: str) -> Task:
    if zh:
        text = "".join(rng.choice(LETTERS_ZH[:6]) for _ in range(rng.randint(5, 12)))
        ch = rng.choice(text)
        q = f"“{text}”中有几个“{ch}”字？"
        marks = "".join("✓" if c == ch else "·" for c in text)
        r = f"逐字检查：{text}\n标记：{marks}\n共 {text.count(ch)} 个。"
    else:
        text = rng.choice(WORDS_EN)
        ch = rng.choice(text)
        q = f"How many times does the letter '{ch}' appear in the word '{text}'?"
        spelled = " ".join(c.upper() if c == ch else c for c in text)
        r = f"Spell it out: {spelled}. The marked letters are '{ch}': {text.count(ch)} of them."
    return Task(kind, lang, q, fmt(text.count(ch)), r, {"text": text, "char": ch})


def _count_items(rng: random.Random, lang: str, zh: bool, kind: str) -> Task:
    en1, en2, zh_item = rng.choice(ITEMS)
    groups = [rng.randint(1, 9) for _ in range(rng.randint(2, 4))]
    listing = ("、".join(f"{g}{zh_item}" for g in groups) if zh
               else ", ".join(f"{g} {en1 if g == 1 else en2}" for g in groups))
    q = _pick(lang, f"A box holds {listing}. How many {en2} is that in total?",
              f"盒子里有{listing}，一共有多少？")
    r = " + ".join(map(str, groups)) + f" = {sum(groups)}"
    return Task(kind, lang, q, fmt(sum(groups)), r + ("。" if zh else "."), {"groups": groups})


def _unit(rng: random.Random, lang: str, zh: bool, kind: str) -> Task:
    ef, et, zf, zt, factor = rng.choice(UNITS)
    factor = Fraction(factor)
    k = rng.randint(1, 40)
    if factor < 1:  # value a multiple of 1/(10*factor): the result has one decimal (2500 m -> 2.5 km)
        value = Fraction(k * factor.denominator, 10)
    else:           # whole or half values: 3.5 km -> 3500 m
        value = Fraction(k, 2 if rng.random() < 0.3 else 1)
    result = value * factor
    q = _pick(lang, f"How many {et} are there in {fmt(value)} {ef}?", f"{fmt(value)} {zf}等于多少{zt}？")
    f_txt = fmt(factor) if factor >= 1 else f"1/{factor.denominator}"
    r = (f"1 {zf} = {f_txt} {zt}，所以 {fmt(value)} × {f_txt} = {fmt(result)}。" if zh else
         f"1 {ef[:-1]} = {f_txt} {et}, so {fmt(value)} × {f_txt} = {fmt(result)}.")
    return Task(kind, lang, q, fmt(result), r, {"value": str(value), "factor": str(factor),
                                             "from_unit": ef, "to_unit": et})


def _sequence(rng: random.Random, lang: str, zh: bool, kind: str) -> Task:
    start, step, n = rng.randint(1, 30), rng.randint(2, 12), rng.randint(4, 6)
    seq = [start + i * step for i in range(n)]
    shown = ", ".join(map(str, seq))
    q = _pick(lang, f"What number comes next: {shown}, ?", f"找规律，下一个数是多少：{shown}，？")
    r = (f"相邻两项差 {step}，所以下一个是 {seq[-1]} + {step} = {seq[-1] + step}。" if zh else
         f"Each term adds {step}, so the next is {seq[-1]} + {step} = {seq[-1] + step}.")
    return Task(kind, lang, q, fmt(seq[-1] + step), r, {"seq": seq})


def _word_problem(rng: random.Random, lang: str, zh: bool, kind: str) -> Task:
    (en_name, zh_name), (_, en2, zh_item) = rng.choice(NAMES), rng.choice(ITEMS)
    have, buy = rng.randint(3, 20), rng.randint(1, 15)
    give = rng.randint(1, have + buy)
    left = have + buy - give
    q = _pick(lang, f"{en_name} has {have} {en2}, buys {buy} more and gives away {give}. "
                         f"How many {en2} does {en_name} have now?",
              f"{zh_name}有 {have} {zh_item}，又买了 {buy} {zh_item}，送出 {give} {zh_item}。现在还剩多少？")
    r = f"{have} + {buy} - {give} = {left}" + ("。" if zh else ".")
    return Task(kind, lang, q, fmt(left), r, {"have": have, "buy": buy, "give": give})


# One generator per kind; each draws from `rng` in a fixed order, so a seed gives the same tasks.
TASK_MAKERS = {"add": _add, "sub": _sub, "mul": _mul, "compare": _compare, "count_letter": _count_letter, "count_items": _count_items, "unit": _unit, "sequence": _sequence, "word_problem": _word_problem}


def make_task(rng: random.Random, lang: str, kind: str | None = None) -> Task:
    kind = kind or rng.choice(KINDS)
    if kind not in TASK_MAKERS:
        raise ValueError(f"unknown task kind {kind!r}")
    return TASK_MAKERS[kind](rng, lang, lang == "zh", kind)


def check_task(task: Task) -> str:
    """Recompute the answer from the parameters only (independent of how the text was written)."""
    p = task.params
    if task.kind == "add":
        return fmt(p["a"] + p["b"])
    if task.kind == "sub":
        return fmt(p["a"] - p["b"])
    if task.kind == "mul":
        return fmt(p["a"] * p["b"])
    if task.kind == "compare":
        return fmt(max(p["a"], p["b"]))
    if task.kind == "count_letter":
        return fmt(sum(c == p["char"] for c in p["text"]))
    if task.kind == "count_items":
        return fmt(sum(p["groups"]))
    if task.kind == "unit":
        return fmt(Fraction(p["value"]) * Fraction(p["factor"]))
    if task.kind == "sequence":
        s = p["seq"]
        return fmt(s[-1] + (s[1] - s[0]))
    if task.kind == "word_problem":
        return fmt(p["have"] + p["buy"] - p["give"])
    raise ValueError(task.kind)


def rl_record(task: Task) -> dict:
    return {"conversations": [{"role": "user", "content": task.question},
                              {"role": "assistant", "content": task.reply()}],
            "answer": task.answer, "kind": task.kind}


def rl_records(rng: random.Random, n: int, skip: Callable[[str], bool] = lambda q: False) -> list[dict]:
    """`n` RL records alternating Chinese and English; no duplicates and no question for which
    `skip(question)` holds (the held-out ones)."""
    out, seen = [], set()
    while len(out) < n:
        task = make_task(rng, ("zh", "en")[len(out) % 2])
        if task.question not in seen and not skip(task.question):
            seen.add(task.question)
            out.append(rl_record(task))
    return out


# -- tool tasks ------------------------------------------------------------------------------------

TOOL_KINDS = ("calc", "unit", "add_days", "days_between", "weekday", "capital", "length", "calc2", "chain")
# Conversions with short exact answers: (en from, en to, zh from, zh to, "up" = the value grows).
TOOL_UNITS = (("kilometers", "meters", "千米", "米", True), ("meters", "kilometers", "米", "千米", False),
              ("meters", "centimeters", "米", "厘米", True), ("kilograms", "grams", "千克", "克", True),
              ("grams", "kilograms", "克", "千克", False), ("hours", "minutes", "小时", "分钟", True),
              ("minutes", "seconds", "分钟", "秒", True), ("liters", "milliliters", "升", "毫升", True),
              ("days", "hours", "天", "小时", True), ("weeks", "days", "周", "天", True))
COUNTRIES = (("China", "中国"), ("France", "法国"), ("Japan", "日本"), ("Germany", "德国"), ("Italy", "意大利"),
             ("Canada", "加拿大"), ("Australia", "澳大利亚"), ("United Kingdom", "英国"), ("United States", "美国"))
WEEKDAYS_ZH = {"Monday": "星期一", "Tuesday": "星期二", "Wednesday": "星期三", "Thursday": "星期四",
               "Friday": "星期五", "Saturday": "星期六", "Sunday": "星期日"}
Call = tuple[str, dict, Any]  # (tool name, arguments, the tool's result)


@dataclass
class ToolTask:
    kind: str
    lang: str
    question: str
    rounds: list[list[Call]]  # the calls of each tool-using reply, in order
    final: str                # the closing reply, written from the results
    answer: str | None        # the bare checkable answer (None: the reply states several)


def _call(name: str, **args: Any) -> Call:
    fn = {"calculator": T.calculate, "convert_units": T.convert_units, "add_days": T.add_days,
          "days_between": T.days_between, "weekday": T.weekday, "lookup_capital": T.lookup_capital,
          "text_length": T.text_length}[name]
    return name, args, fn(**args)


def _num(x: int | float) -> str:
    """Canonical text of a tool's number (floats through their shortest repr: 2.35, not 2.3500000001)."""
    return fmt(Fraction(str(x)))


def _expression(rng: random.Random) -> str:
    """Multi-digit arithmetic as a user writes it (the calculator reads × too)."""
    a, b = rng.randint(12, 999), rng.randint(12, 99)
    return rng.choice((f"{a} × {b}", f"{a} + {rng.randint(100, 9999)}", f"{a + 1000} - {rng.randint(10, 999)}",
                       f"({a} + {b}) × {rng.randint(2, 30)}", f"{a} * {b}"))


def _date(rng: random.Random) -> str:
    return f"{rng.randint(2020, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _unit_call(rng: random.Random, zh: bool) -> tuple[Call, str, str, Any]:
    ef, et, zf, zt, up = rng.choice(TOOL_UNITS)
    value = rng.randint(12, 950) if up else rng.randint(12, 950) * 10
    f, t = (zf, zt) if zh else (ef, et)
    return _call("convert_units", value=value, from_unit=f, to_unit=t), f, t, value


def _lookup_task(rng: random.Random, lang: str, kind: str) -> ToolTask:
    """The date, capital and text-length tasks: one call whose result is the answer."""
    zh = lang == "zh"
    if kind == "add_days":
        date, days = _date(rng), rng.randint(10, 400)
        call = _call("add_days", date=date, days=days)
        q = f"{date} 之后 {days} 天是哪一天？" if zh else f"What date is {days} days after {date}?"
        final = f"{date} 之后 {days} 天是 {call[2]}。" if zh else f"{days} days after {date} is {call[2]}."
        return ToolTask(kind, lang, q, [[call]], final, call[2])
    if kind == "days_between":
        start = _date(rng)
        end_date = T.add_days(start, rng.randint(20, 700))
        call = _call("days_between", start=start, end=end_date)
        q = f"从 {start} 到 {end_date} 有多少天？" if zh else f"How many days are there from {start} to {end_date}?"
        final = f"从 {start} 到 {end_date} 共 {call[2]} 天。" if zh else f"From {start} to {end_date} is {call[2]} days."
        return ToolTask(kind, lang, q, [[call]], final, _num(call[2]))
    if kind == "weekday":
        date = _date(rng)
        call = _call("weekday", date=date)
        day = WEEKDAYS_ZH[call[2]] if zh else call[2]
        q = f"{date} 是星期几？" if zh else f"What day of the week is {date}?"
        return ToolTask(kind, lang, q, [[call]], f"{date} 是{day}。" if zh else f"{date} is a {day}.", day)
    if kind == "capital":
        en, zh_name = rng.choice(COUNTRIES)
        call = _call("lookup_capital", country=zh_name if zh else en)
        q = (rng.choice((f"{zh_name}的首都是哪里？", f"请查一下{zh_name}的首都。")) if zh else
             rng.choice((f"What is the capital of {en}?", f"Look up the capital city of {en}.")))
        final = f"{zh_name}的首都是{call[2]}。" if zh else f"The capital of {en} is {call[2]}."
        return ToolTask(kind, lang, q, [[call]], final, call[2])
    if kind == "length":
        text = ("".join(rng.choice(LETTERS_ZH) for _ in range(rng.randint(4, 12))) if zh
                else " ".join(rng.sample(WORDS_EN, rng.randint(1, 3))))
        call = _call("text_length", text=text)
        n = call[2]["characters"]
        q = f"“{text}”有多少个字符？" if zh else f"How many characters are in the text '{text}'?"
        return ToolTask(kind, lang, q, [[call]], f"“{text}”有 {n} 个字符。" if zh else f"'{text}' has {n} characters.",
                        _num(n))
    raise ValueError(kind)


def make_tool_task(rng: random.Random, lang: str, kind: str | None = None) -> ToolTask:
    kind = kind or rng.choice(TOOL_KINDS)
    zh = lang == "zh"
    end = "。" if zh else "."
    if kind == "calc":
        expr = _expression(rng)
        call = _call("calculator", expression=expr)
        q = rng.choice((f"帮我算一下 {expr}。", f"{expr} 等于多少？") if zh else
                       (f"What is {expr}?", f"Please compute {expr}.", f"Use the calculator: {expr} = ?"))
        return ToolTask(kind, lang, q, [[call]], f"{expr} = {call[2]}{end}", _num(call[2]))
    if kind == "unit":
        call, f, t, value = _unit_call(rng, zh)
        q = rng.choice((f"{value} {f}等于多少{t}？", f"把 {value} {f}换算成{t}。") if zh else
                       (f"How many {t} are in {value} {f}?", f"Convert {value} {f} to {t}."))
        return ToolTask(kind, lang, q, [[call]], f"{value} {f} = {call[2]} {t}{end}", _num(call[2]))
    if kind in ("add_days", "days_between", "weekday", "capital", "length"):
        return _lookup_task(rng, lang, kind)
    if kind == "calc2":  # one reply, two calls
        e1, e2 = _expression(rng), _expression(rng)
        c1, c2 = _call("calculator", expression=e1), _call("calculator", expression=e2)
        q = f"请分别计算 {e1} 和 {e2}。" if zh else f"Compute both {e1} and {e2}."
        final = f"{e1} = {c1[2]}，{e2} = {c2[2]}。" if zh else f"{e1} = {c1[2]} and {e2} = {c2[2]}."
        return ToolTask(kind, lang, q, [[c1, c2]], final, None)
    if kind == "chain":  # two rounds: the second call uses the first result
        ef, et, zf, zt, _ = rng.choice([u for u in TOOL_UNITS if u[4]])
        f, t = (zf, zt) if zh else (ef, et)
        each, count = rng.randint(12, 99), rng.randint(3, 40)
        c1 = _call("calculator", expression=f"{each} × {count}")
        c2 = _call("convert_units", value=c1[2], from_unit=f, to_unit=t)
        q = (f"每份是 {each} {f}，{count} 份一共是多少{t}？" if zh else
             f"Each part is {each} {ef}. How many {et} are {count} parts in total?")
        final = f"{count} 份共 {c1[2]} {f}，即 {c2[2]} {t}。" if zh else f"{count} parts are {c1[2]} {f}, that is {c2[2]} {t}."
        return ToolTask(kind, lang, q, [[c1], [c2]], final, _num(c2[2]))
    raise ValueError(f"unknown tool task kind {kind!r}")
