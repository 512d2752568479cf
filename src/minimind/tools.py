"""Built-in tools: a small registry of safe, deterministic functions a model may call.

Contract:
- A `Tool` is a name, a description, a JSON-schema `parameters` object (the OpenAI function
  spec, `Tool.spec`) and a Python function over the validated arguments.
- `ToolRegistry.call(name, arguments)` validates the arguments against the tool's spec (an
  object or a JSON string of one; required keys present, no unknown keys, string / number /
  integer types, enums) and returns the result as a string: a JSON object `{"result": ...}`
  (the shape the demo tool-use data trains on), or `{"error": "..."}` for an unknown tool, bad
  arguments or a failing computation. It never raises to the caller.
- `builtin_tools()` is the registry `minimind chat --tools` and `minimind serve --tools` run:
  calculator, convert_units, add_days, days_between, weekday, text_length, lookup_capital.
- The calculator parses its expression (`ast.parse(mode="eval")`) and walks the tree allowing
  only numbers, + - * / // % **, unary + and -, and parentheses; anything else (names, calls,
  attributes, subscripts, lambdas, comprehensions, strings) is refused. Exponents are bounded
  (|e| <= MAX_EXPONENT) and every intermediate result too (|x| <= MAX_MAGNITUDE), so no input
  can make it compute for long or allocate a huge integer. It never calls `eval`.
"""

from __future__ import annotations

import ast
import datetime as dt
import json
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10 ** 50
MAX_DAYS = 1_000_000  # date arithmetic stays far inside datetime's year 1..9999


class ToolError(Exception):
    """A tool refused its input; the message is what the model reads."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of an object: properties, required
    fn: Callable[..., Any]

    @property
    def spec(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


_TYPES = {"string": (str,), "number": (int, float), "integer": (int,)}


def validate_arguments(tool: Tool, arguments: Any) -> dict:
    """The arguments as a dict, checked against the tool's schema; ToolError otherwise."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            raise ToolError(f"arguments are not valid JSON ({err.msg})") from None
    if not isinstance(arguments, dict):
        raise ToolError("arguments must be a JSON object")
    props, required = tool.parameters.get("properties", {}), tool.parameters.get("required", [])
    missing = [k for k in required if k not in arguments]
    if missing:
        raise ToolError(f"missing argument(s): {', '.join(missing)}")
    unknown = [k for k in arguments if k not in props]
    if unknown:
        raise ToolError(f"unknown argument(s): {', '.join(unknown)}")
    for key, value in arguments.items():
        schema = props[key]
        kind = schema.get("type", "string")
        if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
            raise ToolError(f"argument {key!r} must be of type {kind}")
        if "enum" in schema and value not in schema["enum"]:
            raise ToolError(f"argument {key!r} must be one of {', '.join(map(str, schema['enum']))}")
    return arguments


class ToolRegistry:
    """Tools by name; `call` runs one and always answers with a string."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self.tools = {t.name: t for t in tools}

    @property
    def names(self) -> list[str]:
        return list(self.tools)

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def specs(self) -> list[dict]:
        return [t.spec for t in self.tools.values()]

    def call(self, name: str, arguments: Any) -> str:
        tool = self.tools.get(name)
        try:
            if tool is None:
                raise ToolError(f"unknown tool {name!r}; available: {', '.join(self.tools)}")
            result = tool.fn(**validate_arguments(tool, arguments))
        except ToolError as err:
            return json.dumps({"error": str(err)}, ensure_ascii=False)
        except Exception as err:  # a tool bug must not end the conversation; the model sees it
            return json.dumps({"error": f"{type(err).__name__}: {err}"}, ensure_ascii=False)
        return json.dumps({"result": result}, ensure_ascii=False)


# -- calculator -----------------------------------------------------------------------------------

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _bounded(x: int | float) -> int | float:
    if isinstance(x, float) and not math.isfinite(x) or abs(x) > MAX_MAGNITUDE:
        raise ToolError(f"result too large (limit {MAX_MAGNITUDE:.0e})")
    return x


def _power(base: int | float, exp: int | float) -> int | float:
    if abs(exp) > MAX_EXPONENT:
        raise ToolError(f"exponent too large (limit {MAX_EXPONENT})")
    # Refuse before computing: |base|**exp past the bound would be a huge integer to build.
    if abs(base) > 1 and exp > 0 and exp * math.log10(abs(base)) > math.log10(MAX_MAGNITUDE):
        raise ToolError(f"result too large (limit {MAX_MAGNITUDE:.0e})")
    if base == 0 and exp < 0:
        raise ToolError("division by zero")
    try:
        result = base ** exp
    except OverflowError:  # a float result past the float range (e.g. 1e-30 ** -64)
        raise ToolError(f"result too large (limit {MAX_MAGNITUDE:.0e})") from None
    if isinstance(result, complex):
        raise ToolError("a negative number to a fractional power is not a real number")
    return result


def _eval_node(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval_node(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval_node(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Pow):
            return _bounded(_power(left, right))
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ToolError("division by zero")
        return _bounded(_BINARY[type(node.op)](left, right))
    raise ToolError(f"only numbers, + - * / // % ** and parentheses are allowed, not {type(node).__name__}")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression (ToolError for anything that is not arithmetic)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.replace("×", "*").replace("÷", "/").strip(), mode="eval")
    except SyntaxError:
        raise ToolError("not an arithmetic expression") from None
    value = _eval_node(tree)
    if isinstance(value, float):
        value = round(value, 10)
        return int(value) if value.is_integer() else value
    return value


# -- units, dates, text, lookup -------------------------------------------------------------------

# unit -> (dimension, factor to the base unit, aliases); temperature is affine and handled apart.
_UNITS = {
    "meters": ("length", 1.0, ("m", "meter", "metre", "metres", "米")),
    "kilometers": ("length", 1000.0, ("km", "kilometer", "kilometre", "千米", "公里")),
    "centimeters": ("length", 0.01, ("cm", "centimeter", "厘米")),
    "millimeters": ("length", 0.001, ("mm", "millimeter", "毫米")),
    "miles": ("length", 1609.344, ("mi", "mile", "英里")),
    "feet": ("length", 0.3048, ("ft", "foot", "英尺")),
    "inches": ("length", 0.0254, ("in", "inch", "英寸")),
    "kilograms": ("mass", 1.0, ("kg", "kilogram", "千克", "公斤")),
    "grams": ("mass", 0.001, ("g", "gram", "克")),
    "milligrams": ("mass", 1e-6, ("mg", "milligram", "毫克")),
    "pounds": ("mass", 0.45359237, ("lb", "lbs", "pound", "磅")),
    "ounces": ("mass", 0.028349523125, ("oz", "ounce", "盎司")),
    "tonnes": ("mass", 1000.0, ("t", "tonne", "ton", "tons", "吨")),
    "seconds": ("time", 1.0, ("s", "sec", "second", "秒")),
    "minutes": ("time", 60.0, ("min", "minute", "分钟")),
    "hours": ("time", 3600.0, ("h", "hr", "hour", "小时")),
    "days": ("time", 86400.0, ("d", "day", "天")),
    "weeks": ("time", 604800.0, ("wk", "week", "周")),
    "liters": ("volume", 1.0, ("l", "liter", "litre", "litres", "升")),
    "milliliters": ("volume", 0.001, ("ml", "milliliter", "毫升")),
}
_TEMPERATURES = {"celsius": ("c", "°c", "摄氏度"), "fahrenheit": ("f", "°f", "华氏度"), "kelvin": ("k", "开尔文")}


def _unit(name: str) -> str:
    key = name.strip().lower()
    for table in (_UNITS, _TEMPERATURES):
        for unit, entry in table.items():
            if key == unit or key in (entry[2] if table is _UNITS else entry):
                return unit
    raise ToolError(f"unknown unit {name!r}")


def _to_kelvin(value: float, unit: str) -> float:
    return {"celsius": value + 273.15, "fahrenheit": (value - 32) * 5 / 9 + 273.15, "kelvin": value}[unit]


def convert_units(value: float, from_unit: str, to_unit: str) -> int | float:
    src, dst = _unit(from_unit), _unit(to_unit)
    if src in _TEMPERATURES or dst in _TEMPERATURES:
        if not (src in _TEMPERATURES and dst in _TEMPERATURES):
            raise ToolError(f"cannot convert {from_unit} to {to_unit}")
        k = _to_kelvin(value, src)
        out = {"celsius": k - 273.15, "fahrenheit": (k - 273.15) * 9 / 5 + 32, "kelvin": k}[dst]
    else:
        (dim_a, fa, _), (dim_b, fb, _) = _UNITS[src], _UNITS[dst]
        if dim_a != dim_b:
            raise ToolError(f"cannot convert {dim_a} ({from_unit}) to {dim_b} ({to_unit})")
        out = value * fa / fb
    out = round(_bounded(out), 6)
    return int(out) if out.is_integer() else out


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ToolError(f"{text!r} is not an ISO date (YYYY-MM-DD)") from None


def add_days(date: str, days: int) -> str:
    if abs(days) > MAX_DAYS:
        raise ToolError(f"days must be within ±{MAX_DAYS}")
    try:
        return (_date(date) + dt.timedelta(days=days)).isoformat()
    except OverflowError:
        raise ToolError("the resulting date is outside years 1..9999") from None


def days_between(start: str, end: str) -> int:
    return (_date(end) - _date(start)).days


def weekday(date: str) -> str:
    return _date(date).strftime("%A")


def text_length(text: str) -> dict:
    return {"characters": len(text), "words": len(text.split())}


_CAPITALS = {"china": "Beijing", "中国": "北京", "france": "Paris", "法国": "巴黎", "japan": "Tokyo", "日本": "东京",
             "united kingdom": "London", "英国": "伦敦", "germany": "Berlin", "德国": "柏林",
             "united states": "Washington, D.C.", "美国": "华盛顿", "italy": "Rome", "意大利": "罗马",
             "canada": "Ottawa", "加拿大": "渥太华", "australia": "Canberra", "澳大利亚": "堪培拉"}


def lookup_capital(country: str) -> str:
    capital = _CAPITALS.get(country.strip().lower())
    if capital is None:
        raise ToolError(f"no capital known for {country!r}")
    return capital


def _obj(props: dict, required: list[str]) -> dict:
    return {"type": "object", "properties": props, "required": required}


_S, _N, _I = {"type": "string"}, {"type": "number"}, {"type": "integer"}


def builtin_tools() -> ToolRegistry:
    """A fresh registry of the built-in tools (names match the demo tool-use data)."""
    return ToolRegistry([
        Tool("calculator", "Evaluate an arithmetic expression with + - * / // % ** and parentheses.",
             _obj({"expression": _S}, ["expression"]), calculate),
        Tool("convert_units", "Convert a value between length, mass, time, volume or temperature units.",
             _obj({"value": _N, "from_unit": _S, "to_unit": _S}, ["value", "from_unit", "to_unit"]), convert_units),
        Tool("add_days", "The ISO date (YYYY-MM-DD) a number of days after (or before, if negative) a date.",
             _obj({"date": _S, "days": _I}, ["date", "days"]), add_days),
        Tool("days_between", "The number of days from one ISO date to another.",
             _obj({"start": _S, "end": _S}, ["start", "end"]), days_between),
        Tool("weekday", "The day of the week of an ISO date.", _obj({"date": _S}, ["date"]), weekday),
        Tool("text_length", "The number of characters and words in a text.", _obj({"text": _S}, ["text"]),
             text_length),
        Tool("lookup_capital", "The capital city of a country.", _obj({"country": _S}, ["country"]), lookup_capital),
    ])
