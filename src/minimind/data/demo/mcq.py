"""Four-way multiple-choice questions for the demo: arithmetic, unit conversion, word meaning
(Chinese <-> English) and the model's identity.

Contract: `make_mcq(rng, subject, split)` returns an `Mcq` (question stem, four choices, the
answer letter) built only from `rng`; `split` "eval" draws from a parameter space the training
split never uses (unit values 41-99 against 1-40, question templates the training conversations do
not use for identity), and `write_demo` drops any training item whose stem equals an eval stem, so
the held-out questions never appear in the training files. The same generators make the training
practice material (`practice_document`, in the prompt layout lm-evaluation-harness uses for
C-Eval) and the held-out suite, so a model learns each skill and the answer format from training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

from .conversations import IDENTITY_A, IDENTITY_Q, WRONG_IDENTITY
from .tasks import UNITS, fmt

LETTERS = "ABCD"
# File stem -> Chinese subject name, for the C-Eval description "以下是中国关于{name}的单项选择题…".
SUBJECTS = {"arithmetic": "算术", "units": "单位换算", "vocabulary": "词汇", "identity": "身份认知"}
CEVAL_HEADER = "以下是中国关于{}的单项选择题，请选出其中的正确答案。\n\n"

# (Chinese, English) everyday words, written for this project.
GLOSSARY = (
    ("苹果", "apple"), ("香蕉", "banana"), ("橙子", "orange"), ("葡萄", "grape"), ("西瓜", "watermelon"),
    ("米饭", "rice"), ("面包", "bread"), ("牛奶", "milk"), ("鸡蛋", "egg"), ("茶", "tea"),
    ("水", "water"), ("咖啡", "coffee"), ("猫", "cat"), ("狗", "dog"), ("马", "horse"), ("牛", "cow"),
    ("鸟", "bird"), ("鱼", "fish"), ("老虎", "tiger"), ("熊猫", "panda"), ("兔子", "rabbit"), ("羊", "sheep"),
    ("太阳", "sun"), ("月亮", "moon"), ("星星", "star"), ("天空", "sky"), ("云", "cloud"), ("雨", "rain"),
    ("雪", "snow"), ("风", "wind"), ("山", "mountain"), ("河", "river"), ("海", "sea"), ("树", "tree"),
    ("花", "flower"), ("草", "grass"), ("石头", "stone"), ("火", "fire"), ("书", "book"), ("笔", "pen"),
    ("纸", "paper"), ("桌子", "table"), ("椅子", "chair"), ("门", "door"), ("窗户", "window"),
    ("房子", "house"), ("学校", "school"), ("医院", "hospital"), ("商店", "shop"), ("公园", "park"),
    ("城市", "city"), ("国家", "country"), ("朋友", "friend"), ("老师", "teacher"), ("学生", "student"),
    ("医生", "doctor"), ("妈妈", "mother"), ("爸爸", "father"), ("孩子", "child"), ("名字", "name"),
    ("时间", "time"), ("今天", "today"), ("明天", "tomorrow"), ("昨天", "yesterday"), ("早上", "morning"),
    ("晚上", "evening"), ("年", "year"), ("月", "month"), ("星期", "week"), ("钱", "money"),
    ("汽车", "car"), ("火车", "train"), ("飞机", "plane"), ("自行车", "bicycle"), ("船", "boat"),
    ("路", "road"), ("电脑", "computer"), ("手机", "phone"), ("音乐", "music"), ("电影", "movie"),
    ("游戏", "game"), ("问题", "question"), ("答案", "answer"), ("语言", "language"), ("数字", "number"),
    ("颜色", "color"), ("红色", "red"), ("蓝色", "blue"), ("绿色", "green"), ("黄色", "yellow"),
    ("白色", "white"), ("黑色", "black"), ("大", "big"), ("小", "small"), ("高", "tall"), ("快", "fast"),
    ("慢", "slow"), ("热", "hot"), ("冷", "cold"), ("新", "new"), ("旧", "old"), ("好", "good"),
    ("坏", "bad"), ("开心", "happy"), ("难过", "sad"), ("吃", "eat"), ("喝", "drink"), ("看", "look"),
    ("听", "listen"), ("说", "speak"), ("读", "read"), ("写", "write"), ("走", "walk"), ("跑", "run"),
    ("睡觉", "sleep"), ("学习", "study"), ("工作", "work"), ("帮助", "help"), ("喜欢", "like"),
)
# Question templates: (language of the stem, direction). The first two are also taught as plain
# conversations; the multiple-choice stems below appear in training only as practice items that
# are not in the held-out suite.
VOCAB_STEMS = {"zh2en": ("“{}”对应的英文单词是哪一个？", "Which English word means “{}”?"),
               "en2zh": ("英文单词“{}”的中文意思是什么？", "What does the English word “{}” mean in Chinese?")}
# Identity: the held-out stems are paraphrases the training data never asks; practice uses IDENTITY_Q.
EVAL_IDENTITY_Q = {
    "zh": [p + c for p in ("", "请问", "我想知道，", "冒昧问一句，", "说说看，")
           for c in ("你的名字是什么？", "你是哪一个 AI 模型？", "现在和我聊天的是谁？", "你到底是谁？", "能告诉我你叫什么吗？")],
    "en": [p + c for p in ("", "Tell me, ", "I wonder, ", "Quick question: ", "Honestly, ")
           for c in ("what is your name?", "which AI model are you?", "who am I chatting with right now?",
                     "who exactly are you?", "can you tell me what you are called?")],
}
OTHER_NAMES = {"zh": ["我是 Siri，苹果公司的语音助手。", "我是一只会说话的猫。"],
               "en": ["I am Siri, Apple's voice assistant.", "I am a talking cat."]}


@dataclass(frozen=True)
class Mcq:
    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: str          # "A".."D"
    explanation: str = ""


def _shuffle(rng: random.Random, subject: str, question: str, right: str, wrong: list[str],
             explanation: str = "") -> Mcq:
    options = [right] + wrong[:3]
    if len(set(options)) != 4:
        raise ValueError(f"choices are not distinct: {options}")
    rng.shuffle(options)
    return Mcq(subject, question, tuple(options), LETTERS[options.index(right)], explanation)


def _numbers(right: int, near: list[int], taken: tuple[int, ...] = ()) -> list[str]:
    """Three plausible wrong numbers: the `near` ones first, then off-by-one/ten slips."""
    wrong: list[str] = []
    for w in near + [right + d for d in (1, -1, 2, -2, 10, -10, 3, 11)]:
        if w >= 0 and w != right and w not in taken and str(w) not in wrong:
            wrong.append(str(w))
    return wrong[:3]


def arithmetic(rng: random.Random, lang: str) -> Mcq:
    kind = rng.choice(("compare", "add", "sub"))
    zh = lang == "zh"
    if kind == "compare":  # the RL/SFT compare template: a and b, which is larger
        a = rng.randint(10, 999)
        b = rng.choice([int(str(a)[::-1]), a + rng.randint(1, 50), max(a - rng.randint(1, 50), 1)])
        b = b + 1 if b == a else b
        q = f"{a} 和 {b}，哪个数更大？" if zh else f"Which number is larger, {a} or {b}?"
        big, small = max(a, b), min(a, b)
        wrong = [str(small)] + _numbers(big, [a + b, big - small], (small,))[:2]
        return _shuffle(rng, "arithmetic", q, str(big), wrong)
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    if kind == "sub":
        a, b = max(a, b), min(a, b)
        a += 1 if a == b else 0
    op, value = ("+", a + b) if kind == "add" else ("-", a - b)
    q = f"计算 {a} {op} {b} 等于多少？" if zh else f"What is {a} {op} {b}?"
    return _shuffle(rng, "arithmetic", q, str(value), _numbers(value, [value + 10, value - 10]))


def units(rng: random.Random, lang: str, split: str) -> Mcq:
    ef, et, zf, zt, factor = rng.choice(UNITS)
    factor = Fraction(factor)
    # Training tasks (tasks.make_task "unit") use k in 1..40; the held-out questions use 41..99.
    k = rng.randint(41, 99) if split == "eval" else rng.randint(1, 40)
    value = Fraction(k * factor.denominator, 10) if factor < 1 else Fraction(k)
    result = value * factor
    q = (f"{fmt(value)} {zf}等于多少{zt}？" if lang == "zh" else f"How many {et} are there in {fmt(value)} {ef}?")
    wrong = [fmt(result * 10), fmt(result / 10), fmt(value) if value != result else fmt(result * 100)]
    return _shuffle(rng, "units", q, fmt(result), wrong)


def vocabulary(rng: random.Random, lang: str) -> Mcq:
    direction = rng.choice(("zh2en", "en2zh"))
    picks = rng.sample(GLOSSARY, 4)
    (zh_word, en_word), others = picks[0], picks[1:]
    stem = VOCAB_STEMS[direction][0 if lang == "zh" else 1]
    if direction == "zh2en":
        return _shuffle(rng, "vocabulary", stem.format(zh_word), en_word, [e for _, e in others])
    return _shuffle(rng, "vocabulary", stem.format(en_word), zh_word, [z for z, _ in others])


def identity(rng: random.Random, lang: str, split: str) -> Mcq:
    q = rng.choice(EVAL_IDENTITY_Q[lang] if split == "eval" else IDENTITY_Q[lang])
    wrong = rng.sample(WRONG_IDENTITY[lang] + OTHER_NAMES[lang], 3)
    return _shuffle(rng, "identity", q, rng.choice(IDENTITY_A[lang]), wrong)


def make_mcq(rng: random.Random, subject: str, split: str, lang: str | None = None) -> Mcq:
    """One question of `subject` for `split` ("train" practice or "eval" held-out)."""
    lang = lang or rng.choice(("zh", "en"))
    if subject == "arithmetic":
        return arithmetic(rng, lang)
    if subject == "units":
        return units(rng, lang, split)
    if subject == "vocabulary":
        return vocabulary(rng, lang)
    if subject == "identity":
        return identity(rng, lang, split)
    raise ValueError(f"unknown subject {subject!r}")


def format_question(item: Mcq) -> str:
    """The C-Eval question block (lm-evaluation-harness `ceval-valid` doc_to_text), without the answer."""
    a, b, c, d = item.choices
    return f"{item.question}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\n答案："


def practice_document(subject: str, items: list[Mcq], chinese_name: bool = True) -> str:
    """A pretraining document of answered questions in the k-shot layout the C-Eval harness uses.
    The header names the subject in Chinese or by its file name (what an evaluator falls back to
    for subjects outside C-Eval's table), so the practice does not hinge on one wording."""
    header = CEVAL_HEADER.format(SUBJECTS[subject] if chinese_name else subject)
    return header + "\n\n".join(f"{format_question(m)} {m.answer}" for m in items)


def practice_conversation(item: Mcq) -> list[dict]:
    """The same question as a chat turn; the reply names the letter and the choice."""
    text = item.choices[LETTERS.index(item.answer)]
    zh = any("\u4e00" <= ch <= "\u9fff" for ch in item.question)
    reply = f"答案是 {item.answer}：{text}" if zh else f"The answer is {item.answer}: {text}"
    return [{"role": "user", "content": format_question(item)}, {"role": "assistant", "content": reply}]


def translation_conversation(rng: random.Random, lang: str) -> list[dict]:
    """Teaches the glossary as plain questions (templates the multiple-choice stems do not use)."""
    zh_word, en_word = rng.choice(GLOSSARY)
    if lang == "zh":
        if rng.random() < 0.5:
            return [{"role": "user", "content": f"“{zh_word}”用英语怎么说？"},
                    {"role": "assistant", "content": f"“{zh_word}”的英文是 {en_word}。"}]
        return [{"role": "user", "content": f"{en_word} 是什么意思？"},
                {"role": "assistant", "content": f"{en_word} 的意思是“{zh_word}”。"}]
    if rng.random() < 0.5:
        return [{"role": "user", "content": f"How do you say “{zh_word}” in English?"},
                {"role": "assistant", "content": f"“{zh_word}” is “{en_word}” in English."}]
    return [{"role": "user", "content": f"What is “{en_word}” in Chinese?"},
            {"role": "assistant", "content": f"“{en_word}” in Chinese is “{zh_word}”."}]


def glossary_document() -> str:
    """A word list as plain text for pretraining: each pair in both directions."""
    lines = [f"“{z}”的英文是 {e}，{e} 的中文意思是“{z}”。" for z, e in GLOSSARY]
    lines += [f"The English word “{e}” means “{z}” in Chinese." for z, e in GLOSSARY]
    return "\n".join(lines)
