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

from ...tools import builtin_tools
from .tasks import TOOL_KINDS, Task, ToolTask, make_task, make_tool_task

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

# The built-in tools' specs (what `minimind chat/serve --tools` and agent RL execute), plus a client
# tool the model can call but nothing here runs (the server returns such calls to the client).
TOOLS = {**{spec["function"]["name"]: spec for spec in builtin_tools().specs()}, "get_weather": {
    "type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "city name"}},
                       "required": ["city"]}}}}
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


# Tool-use conversation kinds and how often each is drawn (single calls dominate: they are what a
# small model learns first; "none" offers tools the question does not need).
TOOL_USE_KINDS = {**{k: 1 for k in TOOL_KINDS}, "calc": 3, "unit": 2, "weather": 1, "none": 1, "multi_turn": 2}


def weather_task(rng: random.Random, lang: str, cities: tuple = CITIES) -> ToolTask:
    """A call to the client tool get_weather, with a made-up observation (nothing executes it)."""
    zh = lang == "zh"
    city = rng.choice(cities)[0 if zh else 1]
    temp, (w_zh, w_en) = rng.randint(-5, 35), rng.choice(WEATHER)
    result = {"city": city, "temperature_c": temp, "condition": w_zh if zh else w_en}
    q = f"{city}现在天气怎么样？" if zh else f"What's the weather like in {city} right now?"
    final = f"{city}现在{w_zh}，气温 {temp}°C。" if zh else f"It is {w_en} in {city}, {temp}°C."
    return ToolTask("weather", lang, q, [[("get_weather", {"city": city}, result)]], final, None)


def offered_tools(rng: random.Random, task: ToolTask | None, distractors: int, pool: tuple = ()) -> list[dict]:
    """The specs of the tools `task` calls plus up to `distractors` others from `pool` (default:
    every tool in TOOLS), in a seeded order."""
    needed = sorted({name for calls in (task.rounds if task else []) for name, _, _ in calls})
    others = [n for n in sorted(pool or TOOLS) if n not in needed]
    names = needed + rng.sample(others, min(distractors, len(others)))
    rng.shuffle(names)
    return [TOOLS[n] for n in names]


def tool_exchange(task: ToolTask, think: bool) -> list[dict]:
    """user, then per round an assistant message with its calls and one tool message per call, then
    the final reply. Tool messages hold exactly what `ToolRegistry.call` returns for the call."""
    zh = task.lang == "zh"
    out = [{"role": "user", "content": task.question}]
    for calls in task.rounds:
        msg = {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": name, "arguments": args}} for name, args, _ in calls]}
        if think:
            names = ("、" if zh else " and ").join(dict.fromkeys(n for n, _, _ in calls))
            msg["reasoning_content"] = f"这需要调用 {names}。" if zh else f"This needs {names}."
        out.append(msg)
        out += [{"role": "tool", "content": json.dumps({"result": r}, ensure_ascii=False)} for _, _, r in calls]
    return out + [{"role": "assistant", "content": task.final}]


def tool_conversation(rng: random.Random, lang: str, cities: tuple = CITIES,
                      kind: str | None = None) -> tuple[list[dict], ToolTask | None]:
    """`tool_use`'s conversation and the task its last user turn asks (None for "none")."""
    kinds = list(TOOL_USE_KINDS)
    kind = kind or rng.choices(kinds, weights=[TOOL_USE_KINDS[k] for k in kinds])[0]
    think = rng.random() < 0.3  # sometimes the model thinks before calling

    def task_of(k: str) -> ToolTask:
        return weather_task(rng, lang, cities) if k == "weather" else make_tool_task(rng, lang, k)

    if kind == "none":  # tools offered but not needed: answer directly
        system = {"role": "system", "content": TOOL_SYSTEM[lang], "tools": offered_tools(rng, None, 2)}
        return [system] + identity(rng, lang)[-2:], None
    tasks = [task_of(rng.choice(TOOL_KINDS[:7])) for _ in range(2)] if kind == "multi_turn" else [task_of(kind)]
    merged = ToolTask(kind, lang, "", [c for t in tasks for c in t.rounds], "", None)
    conv = [{"role": "system", "content": TOOL_SYSTEM[lang], "tools": offered_tools(rng, merged, rng.randint(0, 2))}]
    for task in tasks:
        conv += tool_exchange(task, think)
    return conv, tasks[-1]


def tool_use(rng: random.Random, lang: str, cities: tuple = CITIES, kind: str | None = None) -> list[dict]:
    """A tool-use conversation in the list shape (tools and calls as objects; `upstream_shape` and
    `openai_shape` write the wire shapes): one call, two calls in one reply, a chain of two
    rounds, two user turns each with its tool round trip, or tools offered but not needed.
    `cities` and `kind` let the held-out suite ask about places the training data never names."""
    return tool_conversation(rng, lang, cities, kind)[0]


AGENT_KINDS = ("calc", "unit", "add_days", "days_between", "weekday", "capital", "length", "chain")


def agent_record(rng: random.Random, lang: str, kind: str | None = None) -> dict:
    """An agent-RL prompt: system (the needed tools and one other, as a JSON string) + user, the
    final assistant turn left out, and the checkable answer in upstream's `gt` list."""
    task = make_tool_task(rng, lang, kind or rng.choice(AGENT_KINDS))
    tools = json.dumps(offered_tools(rng, task, 1, tuple(builtin_tools().names)), ensure_ascii=False)
    return {"conversations": [{"role": "system", "content": TOOL_SYSTEM[lang], "tools": tools},
                              {"role": "user", "content": task.question}], "gt": [task.answer], "kind": task.kind}


def upstream_shape(conv: list[dict]) -> list[dict]:
    """The same conversation as upstream MiniMind writes it: `tools` and `tool_calls` as JSON
    strings, each call a flat {"name", "arguments"}."""
    out = []
    for m in conv:
        m = dict(m)
        if "tools" in m:
            m["tools"] = json.dumps(m["tools"], ensure_ascii=False)
        if "tool_calls" in m:
            m["tool_calls"] = json.dumps([c["function"] for c in m["tool_calls"]], ensure_ascii=False)
        out.append(m)
    return out


def openai_shape(conv: list[dict]) -> list[dict]:
    """The same conversation in OpenAI's wire shape: call ids, arguments as a JSON string, and
    each tool message naming its call (`tool_call_id`)."""
    out, ids = [], []
    for m in conv:
        m = dict(m)
        if "tool_calls" in m:
            ids = [f"call_{len(out)}_{k}" for k in range(len(m["tool_calls"]))]
            m["tool_calls"] = [{"id": i, "type": "function", "function": {
                "name": c["function"]["name"], "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}}
                for i, c in zip(ids, m["tool_calls"])]
        elif m["role"] == "tool" and ids:
            m["tool_call_id"] = ids.pop(0)
        out.append(m)
    return out


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
