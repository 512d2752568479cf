"""The web chat page in a real headless Chromium: type, see a streamed reply, settings, new chat.

Skips cleanly when selenium, chromium or chromedriver is missing (.ci/run installs them).
"""

from __future__ import annotations

import json
import shutil

import pytest
from infer_support import LiveServer, shared_trained_checkpoint

from minimind.infer.loading import load_engine
from minimind.serve import create_app

webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="no chromium + chromedriver installed"),
              pytest.mark.slow]

REASONING, ANSWER = "用户在打招呼。", "你好，世界！我是小模型。"

# Records every text the reply's answer element shows, and every request body the page sends.
SPY = """
window.__bodies = [];
const realFetch = window.fetch;
window.fetch = (url, opts) => { if (opts && opts.body) window.__bodies.push(opts.body); return realFetch(url, opts); };
window.__snapshots = [];
new MutationObserver(() => {
  const nodes = document.querySelectorAll('.msg.assistant .content');
  if (nodes.length) window.__snapshots.push(nodes[nodes.length - 1].textContent);
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
"""


def set_greedy(browser, thinking_off: bool = False) -> None:
    """Greedy decoding and a 60-token budget through the settings panel (optionally thinking off)."""
    from selenium.webdriver.common.by import By  # optional dependency, as in the tests below

    browser.find_element(By.ID, "toggle-settings").click()
    for field, value in (("temperature", "0"), ("max_tokens", "60")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    if thinking_off:
        browser.find_element(By.ID, "thinking").click()
    browser.find_element(By.ID, "toggle-settings").click()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ckpt, _ = shared_trained_checkpoint(tmp_path_factory)
    engine = load_engine(ckpt, max_batch_size=2, max_seq_len=128)
    with LiveServer(create_app(engine, "tiny")) as srv:
        yield srv


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,760"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()


def wait_until(driver, script: str, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(script))


def test_chat_page_streams_a_reply(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url + "/")
    assert browser.title == "MiniMind Chat"
    wait_until(browser, "return document.getElementById('model-name').textContent === 'tiny'")
    browser.execute_script(SPY)

    # Settings: greedy decoding and a token budget, through the settings panel.
    set_greedy(browser)

    box = browser.find_element(By.ID, "input")
    box.send_keys("你好")
    box.send_keys(Keys.ENTER)
    wait_until(browser, "return document.querySelector('.msg.assistant .stats') && "
                        "document.querySelector('.msg.assistant .stats').textContent.includes('tokens/s')")

    assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == "你好"
    assert browser.find_element(By.CSS_SELECTOR, ".msg.assistant .content").text == ANSWER
    # The reply really streamed: the answer grew through several prefixes of the final text.
    snaps = [s for s in browser.execute_script("return window.__snapshots") if s]
    assert len(set(snaps)) >= 3 and all(ANSWER.startswith(s) for s in snaps) and snaps[-1] == ANSWER
    # The thinking block holds the reasoning and collapsed once the answer began.
    think = browser.find_element(By.CSS_SELECTOR, ".msg.assistant details.thinking")
    assert think.is_displayed() and browser.execute_script("return arguments[0].open", think) is False
    assert browser.execute_script("return arguments[0].querySelector('.reasoning').textContent", think) == REASONING
    assert think.find_element(By.TAG_NAME, "summary").text.startswith("Thought for")
    body = json.loads(browser.execute_script("return window.__bodies[window.__bodies.length - 1]"))
    assert body["temperature"] == 0 and body["max_tokens"] == 60 and body["stream"] is True
    assert body["messages"] == [{"role": "user", "content": "你好"}]
    # The page declares UTF-8 (glyphs then depend on the system's fonts: look at the screenshot).
    assert browser.execute_script("return document.characterSet") == "UTF-8"
    browser.save_screenshot(str(tmp_path / "chat.png"))
    assert (tmp_path / "chat.png").stat().st_size > 10_000

    # Second turn carries the history; then New chat clears it and a system prompt is sent.
    box.send_keys("hello", Keys.ENTER)
    wait_until(browser, "return document.querySelectorAll('.msg.assistant .stats').length === 2 && "
                        "document.querySelectorAll('.msg.assistant .stats')[1].textContent.includes('tokens')")
    body = json.loads(browser.execute_script("return window.__bodies[window.__bodies.length - 1]"))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"] == ANSWER

    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".msg") == []
    browser.find_element(By.ID, "toggle-settings").click()
    browser.find_element(By.ID, "system").send_keys("你是一个有用的助手。")
    browser.find_element(By.ID, "thinking").click()  # thinking off
    box.send_keys("hi", Keys.ENTER)
    wait_until(browser, "return document.body.dataset.busy === '' && document.querySelectorAll('.msg.assistant').length === 1")
    body = json.loads(browser.execute_script("return window.__bodies[window.__bodies.length - 1]"))
    assert body["messages"] == [{"role": "system", "content": "你是一个有用的助手。"}, {"role": "user", "content": "hi"}]
    assert body["enable_thinking"] is False


@pytest.fixture(scope="module")
def tool_server(tmp_path_factory):
    from test_agent import tool_checkpoint

    from minimind.tools import ToolRegistry, builtin_tools

    engine = load_engine(tool_checkpoint(tmp_path_factory), max_batch_size=2, max_seq_len=512)
    calculator = ToolRegistry([builtin_tools().tools["calculator"]])
    with LiveServer(create_app(engine, "tiny", tools=calculator)) as srv:
        yield srv


def test_chat_page_shows_tool_calls_and_results(tool_server, browser):
    """Started with tools, the page offers them; the server runs the calculator; the page shows the call."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from test_agent import QUESTION

    browser.get(tool_server.url + "/")
    wait_until(browser, "return !document.getElementById('tools-setting').hidden")
    browser.execute_script(SPY)
    set_greedy(browser, thinking_off=True)  # the tool model was trained without reasoning
    box = browser.find_element(By.ID, "input")
    box.send_keys(QUESTION, Keys.ENTER)
    wait_until(browser, "return document.body.dataset.busy === '' && document.querySelector('.tool-call.done')")

    block = browser.find_element(By.CSS_SELECTOR, ".msg.assistant details.tool-call")
    assert block.find_element(By.CSS_SELECTOR, ".tool-name").text == "calculator"
    assert browser.execute_script("return arguments[0].open", block) is False  # collapsed until clicked
    text = lambda sel: browser.execute_script(f"return arguments[0].querySelector('{sel}').textContent", block)
    assert json.loads(text(".tool-args")) == {"expression": "(2+3)*4"} and text(".tool-result") == '{"result": 20}'
    block.find_element(By.TAG_NAME, "summary").click()
    assert block.find_element(By.CSS_SELECTOR, ".tool-result").is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, ".msg.assistant .content").text == "It is 20."
    body = json.loads(browser.execute_script("return window.__bodies[window.__bodies.length - 1]"))
    assert body["execute_tools"] is True and [t["function"]["name"] for t in body["tools"]] == ["calculator"]

    # The next request carries the whole exchange: the call, its result, the answer.
    box.send_keys("thanks", Keys.ENTER)
    wait_until(browser, "return document.body.dataset.busy === '' && "
                        "document.querySelectorAll('.msg.assistant').length === 2")
    body = json.loads(browser.execute_script("return window.__bodies[window.__bodies.length - 1]"))
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "tool", "assistant", "user"]
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == "calculator"
    assert body["messages"][2]["content"] == '{"result": 20}' and body["messages"][3]["content"] == "It is 20."
    assert body["messages"][2]["tool_call_id"] == body["messages"][1]["tool_calls"][0]["id"]
