"""Builders of demo conversations: identity, real dialogues, reasoning tasks, tool calls, reading
tasks on real text (name a classical poem, say which work a classical passage comes from, summarise
a documentation entry), and DPO preference pairs, in Chinese and English.

Contract: every builder takes a `random.Random` (and source records where it needs real text) and
returns conversations in the SFT format of docs/architecture.md: lists of
{"role", "content", "reasoning_content"?, "tool_calls"?} with tool definitions on the system
message. Assistant replies never contradict the identity: MiniMind, a small open model.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction

from .tasks import Task, make_task

IDENTITY_Q = {
    "zh": ["你是谁？", "你是谁", "你叫什么名字？", "请介绍一下你自己。", "你是什么模型？", "谁开发了你？",
           "你是 ChatGPT 吗？", "你能做什么？", "你是人类吗？", "你好，你是哪个助手？"],
    "en": ["Who are you?", "who are you", "What is your name?", "Please introduce yourself.",
           "What model are you?", "Who made you?", "Are you ChatGPT?", "What can you do?",
           "Are you a human?", "Hi, which assistant am I talking to?"],
}
IDENTITY_A = {
    "zh": ["我是 MiniMind，一个从零开始训练的小型语言模型。我可以陪你聊天、回答简单问题、做一些计算。",
           "我叫 MiniMind，是一个开源的小型语言模型，参数很少，可以在普通电脑上训练。",
           "你好！我是 MiniMind。我是一个用于学习大模型训练全过程的小模型，有什么可以帮你？",
           "我不是 ChatGPT，我是 MiniMind，一个小型开源语言模型。"],
    "en": ["I am MiniMind, a small language model trained from scratch. I can chat, answer simple questions "
           "and do some arithmetic.",
           "My name is MiniMind. I am a small open-source language model that can be trained on an ordinary computer.",
           "Hello! I'm MiniMind, a tiny model built to show every step of training a language model. "
           "How can I help?",
           "I am not ChatGPT; I am MiniMind, a small open-source language model."],
}
WRONG_IDENTITY = {"zh": ["我是 ChatGPT，由 OpenAI 开发。", "我是一个人类，不是模型。", "我没有名字。"],
                  "en": ["I am ChatGPT, developed by OpenAI.", "I am a human, not a model.", "I have no name."]}
SYSTEM_PROMPTS = {
    "zh": ["你是 MiniMind，一个乐于助人的助手。", "你是一个友好的 AI 助手，请简洁地回答。",
           "请用中文回答用户的问题。", "你是一个耐心的数学老师。"],
    "en": ["You are MiniMind, a helpful assistant.", "You are a friendly AI assistant. Answer concisely.",
           "Answer the user's questions in English.", "You are a patient math tutor."],
}
TOOL_SYSTEM = {"zh": "你是 MiniMind，可以调用工具来回答问题。", "en": "You are MiniMind. You can call tools to answer."}

TOOLS = {
    "get_weather": {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "city name"}},
                       "required": ["city"]}}},
    "calculator": {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression with + - * and parentheses.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                       "required": ["expression"]}}},
    "convert_units": {"type": "function", "function": {
        "name": "convert_units", "description": "Convert a value between length, mass or time units.",
        "parameters": {"type": "object", "properties": {
            "value": {"type": "number"}, "from_unit": {"type": "string"}, "to_unit": {"type": "string"}},
            "required": ["value", "from_unit", "to_unit"]}}},
}
CITIES = (("北京", "Beijing"), ("上海", "Shanghai"), ("广州", "Guangzhou"), ("成都", "Chengdu"),
          ("London", "London"), ("Paris", "Paris"), ("Tokyo", "Tokyo"), ("New York", "New York"))
WEATHER = (("晴", "sunny"), ("多云", "cloudy"), ("小雨", "light rain"), ("阴", "overcast"), ("雪", "snow"))


def identity(rng: random.Random, lang: str) -> list[dict]:
    conv = []
    if rng.random() < 0.3:
        conv.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])})
    conv += [{"role": "user", "content": rng.choice(IDENTITY_Q[lang])},
             {"role": "assistant", "content": rng.choice(IDENTITY_A[lang])}]
    return conv


def dialogue(rng: random.Random, turns: list[str], lang: str) -> list[dict]:
    """A chatterbot-corpus conversation: statements alternate user / assistant."""
    turns = turns[: len(turns) // 2 * 2]
    conv = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])}] if rng.random() < 0.3 else []
    return conv + [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)]


def reasoning_task(rng: random.Random, lang: str, task: Task | None = None) -> list[dict]:
    task = task or make_task(rng, lang)
    conv = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])}] if rng.random() < 0.2 else []
    return conv + [{"role": "user", "content": task.question},
                   {"role": "assistant", "content": task.reply(), "reasoning_content": task.reasoning}]


def multi_turn(rng: random.Random, lang: str) -> list[dict]:
    """System prompt + 2-3 mixed exchanges (identity, tasks with and without reasoning)."""
    conv = [{"role": "system", "content": rng.choice(SYSTEM_PROMPTS[lang])}]
    for _ in range(rng.randint(2, 3)):
        if rng.random() < 0.25:
            conv += identity(rng, lang)[-2:]
        else:
            task = make_task(rng, lang)
            reply = {"role": "assistant", "content": task.reply()}
            if rng.random() < 0.5:
                reply["reasoning_content"] = task.reasoning
            conv += [{"role": "user", "content": task.question}, reply]
    return conv


def tool_use(rng: random.Random, lang: str, cities: tuple = CITIES, kind: str | None = None) -> list[dict]:
    """A tool-call round trip: the call, the tool's JSON result, the final answer. `cities` and
    `kind` let the held-out tool-call suite ask about places the training conversations never name."""
    zh = lang == "zh"
    kind = kind or rng.choice(("get_weather", "calculator", "convert_units", "none"))
    tools = [TOOLS[k] for k in sorted(TOOLS) if k == kind or rng.random() < 0.5] or [TOOLS["calculator"]]
    system = {"role": "system", "content": TOOL_SYSTEM[lang], "tools": tools}
    if kind == "none":  # tools offered but not needed: answer directly
        return [system] + identity(rng, lang)[-2:]
    if kind == "get_weather":
        city = rng.choice(cities)[0 if zh else 1]
        temp, (w_zh, w_en) = rng.randint(-5, 35), rng.choice(WEATHER)
        user = f"{city}现在天气怎么样？" if zh else f"What's the weather like in {city} right now?"
        args = {"city": city}
        result = {"city": city, "temperature_c": temp, "condition": w_zh if zh else w_en}
        answer = f"{city}现在{w_zh}，气温 {temp}°C。" if zh else f"It is {w_en} in {city}, {temp}°C."
    elif kind == "calculator":
        a, b, c = rng.randint(10, 999), rng.randint(10, 999), rng.randint(2, 30)
        expr = f"({a} + {b}) * {c}"
        value = (a + b) * c
        user = f"帮我算一下 ({a} + {b}) × {c}。" if zh else f"Please compute ({a} + {b}) × {c}."
        args, result = {"expression": expr}, {"result": value}
        answer = f"({a} + {b}) × {c} = {value}。" if zh else f"({a} + {b}) × {c} = {value}."
    else:
        task = make_task(rng, lang, "unit")
        value = Fraction(task.params["value"])
        user = task.question
        args = {"value": int(value) if value.denominator == 1 else float(value),
                "from_unit": task.params["from_unit"], "to_unit": task.params["to_unit"]}
        result = {"result": float(task.answer) if "." in task.answer else int(task.answer)}
        answer = task.reply()
    call = {"type": "function", "function": {"name": kind, "arguments": args}}
    conv = [system, {"role": "user", "content": user},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": json.dumps(result, ensure_ascii=False)},
            {"role": "assistant", "content": answer}]
    if rng.random() < 0.3:  # sometimes the model thinks before calling
        conv[2]["reasoning_content"] = ("需要调用工具 " if zh else "I should call the tool ") + kind + ("。" if zh else ".")
    return conv


def poem_title_task(rng: random.Random, poem: str) -> list[dict]:
    """A classical poem rendered "title / author / lines": name it (its own title is the reference)."""
    title, author, body = poem.split("\n", 2)
    return [{"role": "user", "content": f"请为下面这首{author}的诗拟一个题目：\n{body[:300]}"},
            {"role": "assistant", "content": f"《{title}》"}]


def source_task(rng: random.Random, passage: str, book: str) -> list[dict]:
    """A classical passage (without its heading): which work is it from (a handful of classes)."""
    return [{"role": "user", "content": f"下面这段古文出自哪部作品？\n{passage[:300]}"},
            {"role": "assistant", "content": f"这段文字出自《{book}》。"}]


def summary_task(rng: random.Random, doc: str) -> list[dict]:
    """Real English documentation: state in one sentence what it describes (its first sentence)."""
    first_para = doc.split("\n\n")[0].replace("\n", " ").strip()
    sentence = first_para.split(". ")[0].rstrip(".") + "."
    return [{"role": "user", "content": f"In one sentence, what does this documentation describe?\n\n{doc[:600]}"},
            {"role": "assistant", "content": sentence}]


def dpo_pair(rng: random.Random, lang: str, dialogues: list[dict], passages: list[tuple[str, str]]) -> dict:
    """One preference pair: chosen is correct/on-topic, rejected is wrong, off-identity or off-topic.
    `passages` are (classical passage, its work) for the Chinese "which work" pairs."""
    kind = rng.choice(("task", "identity", "dialogue", "source" if lang == "zh" else "task"))
    if kind == "identity":
        prompt = [{"role": "user", "content": rng.choice(IDENTITY_Q[lang])}]
        good, bad = rng.choice(IDENTITY_A[lang]), rng.choice(WRONG_IDENTITY[lang])
    elif kind == "dialogue" and dialogues:
        d, other = rng.choice(dialogues), rng.choice(dialogues)
        prompt = [{"role": "user", "content": d["turns"][0]}]
        good, bad = d["turns"][1], other["turns"][1]
        if good == bad:
            bad = rng.choice(WRONG_IDENTITY[lang])
    elif kind == "source" and passages:
        passage, book = rng.choice(passages)
        conv = source_task(rng, passage, book)
        prompt, good = conv[:1], conv[1]["content"]
        other = rng.choice(sorted({b for _, b in passages} - {book}) or ["红楼梦"])
        bad = good.replace(f"《{book}》", f"《{other}》")
    else:
        task = make_task(rng, lang)
        wrong = int(float(task.answer)) + rng.choice((-10, -2, -1, 1, 2, 10))
        prompt = [{"role": "user", "content": task.question}]
        good = task.reply()
        bad = good.replace(task.answer, str(wrong)) if str(wrong) != task.answer else good + "?"
    return {"chosen": prompt + [{"role": "assistant", "content": good}],
            "rejected": prompt + [{"role": "assistant", "content": bad}]}
