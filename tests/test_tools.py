"""Built-in tools: the calculator computes arithmetic and refuses everything else; the others
validate their arguments and answer with a JSON string, never an exception."""

import json

import pytest

from minimind.tools import MAX_MAGNITUDE, ToolError, builtin_tools, calculate


@pytest.fixture(scope="module")
def tools():
    return builtin_tools()


def result(tools, name, args):
    return json.loads(tools.call(name, args))


@pytest.mark.parametrize("expr,value", [
    ("2+3", 5), ("(2 + 3) * 4", 20), ("7 / 2", 3.5), ("7 // 2", 3), ("-7 % 3", 2), ("2 ** 10", 1024),
    ("-(3 - 5)", 2), ("+4", 4), ("0.1 + 0.2", 0.3), ("(123 + 456) × 7", 4053), ("8 ÷ 4", 2), ("2 ** -1", 0.5),
])
def test_calculator_computes_arithmetic(expr, value):
    assert calculate(expr) == value


@pytest.mark.parametrize("expr,why", [
    ("__import__('os').system('true')", "Call"), ("x + 1", "Name"), ("abs(-1)", "Call"), ("(1).real", "Attribute"),
    ("[1, 2][0]", "Subscript"), ("lambda: 1", "Lambda"), ("[i for i in (1, 2)]", "ListComp"),
    ("{i for i in (1,)}", "SetComp"), ("'a' * 3", "Constant"), ("1 < 2", "Compare"), ("True + 1", "Constant"),
    ("1 if 1 else 2", "IfExp"), ("2 ** 1000", "exponent too large"), ("9 ** 9 ** 9", "exponent too large"),
    ("10 ** 60", "result too large"), ("1e308 * 10", "result too large"), ("1e-30 ** -64", "result too large"),
    ("1 / 0", "division by zero"), ("5 % 0", "division by zero"), ("0 ** -1", "division by zero"),
    ("(-8) ** 0.5", "not a real number"), ("1 +", "not an arithmetic expression"), ("1" * 300, "longer than"),
])
def test_calculator_refuses_anything_else(expr, why):
    with pytest.raises(ToolError, match=why):
        calculate(expr)


def test_calculator_bounds_every_intermediate():
    assert calculate(f"{10 ** 25} * {10 ** 25}") == MAX_MAGNITUDE
    with pytest.raises(ToolError, match="too large"):
        calculate(f"{10 ** 25} * {10 ** 25} * 10")


def test_registry_answers_json_and_never_raises(tools):
    assert result(tools, "calculator", {"expression": "(2+3)*4"}) == {"result": 20}
    assert result(tools, "calculator", '{"expression": "6*7"}') == {"result": 42}  # a JSON string of arguments
    assert "Name" in result(tools, "calculator", {"expression": "os"})["error"]
    assert result(tools, "nope", {})["error"].startswith("unknown tool 'nope'")
    assert result(tools, "calculator", {})["error"] == "missing argument(s): expression"
    assert result(tools, "calculator", {"expression": "1", "x": 2})["error"] == "unknown argument(s): x"
    assert result(tools, "calculator", {"expression": 5})["error"] == "argument 'expression' must be of type string"
    assert result(tools, "add_days", {"date": "2024-01-01", "days": True})["error"].endswith("type integer")
    assert result(tools, "calculator", "{bad json")["error"].startswith("arguments are not valid JSON")
    assert result(tools, "calculator", "[1]")["error"] == "arguments must be a JSON object"


@pytest.mark.parametrize("name,args,expected", [
    ("convert_units", {"value": 3, "from_unit": "km", "to_unit": "meters"}, 3000),
    ("convert_units", {"value": 90, "from_unit": "minutes", "to_unit": "小时"}, 1.5),
    ("convert_units", {"value": 100, "from_unit": "celsius", "to_unit": "F"}, 212),
    ("convert_units", {"value": 1, "from_unit": "lb", "to_unit": "g"}, 453.59237),
    ("add_days", {"date": "2024-02-28", "days": 2}, "2024-03-01"),  # a leap year
    ("add_days", {"date": "2024-01-01", "days": -1}, "2023-12-31"),
    ("days_between", {"start": "2024-01-01", "end": "2024-03-01"}, 60),
    ("weekday", {"date": "2026-11-27"}, "Friday"),
    ("text_length", {"text": "hello big world"}, {"characters": 15, "words": 3}),
    ("lookup_capital", {"country": "France"}, "Paris"), ("lookup_capital", {"country": "中国"}, "北京"),
])
def test_other_tools(tools, name, args, expected):
    assert result(tools, name, args) == {"result": expected}


@pytest.mark.parametrize("name,args,why", [
    ("convert_units", {"value": 1, "from_unit": "kg", "to_unit": "m"}, "cannot convert mass"),
    ("convert_units", {"value": 1, "from_unit": "C", "to_unit": "m"}, "cannot convert"),
    ("convert_units", {"value": 1, "from_unit": "furlong", "to_unit": "m"}, "unknown unit"),
    ("add_days", {"date": "2024-13-01", "days": 1}, "not an ISO date"),
    ("add_days", {"date": "9999-12-31", "days": 1}, "outside years"),
    ("add_days", {"date": "2024-01-01", "days": 10 ** 9}, "days must be within"),
    ("lookup_capital", {"country": "Atlantis"}, "no capital known"),
])
def test_tools_report_bad_input_as_errors(tools, name, args, why):
    assert why in result(tools, name, args)["error"]


def test_specs_are_openai_function_specs(tools):
    specs = tools.specs()
    assert [s["function"]["name"] for s in specs] == tools.names
    assert all(s["type"] == "function" and s["function"]["parameters"]["type"] == "object" for s in specs)
