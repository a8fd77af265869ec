"""The web chat page at / in a real headless Chromium (Debian's chromium + chromedriver, driven by
selenium): type a message, see the streamed answer appear (equal to the API's greedy answer), start a
long answer and stop it, reset; a screenshot is saved to $SERVE_ARTIFACTS (default target/serve-artifacts)."""
import os
import shutil
import tempfile
import time

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from conftest import TINY_ID, metric

ARTIFACTS = os.environ.get("SERVE_ARTIFACTS", os.path.join(os.path.dirname(__file__), "../../target/serve-artifacts"))


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_bin = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(driver_bin)):
        pytest.fail("Debian's chromium and chromium-driver are needed (tools/serve_tests.sh installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="qwen-serve-chromium-")
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,800"]:
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver_bin), options=opts)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def wait(d, cond, secs=60, what="condition"):
    return WebDriverWait(d, secs, poll_frequency=0.02).until(lambda _: cond(), message=what)


def set_field(d, id_, value):
    el = d.find_element(By.ID, id_)
    el.clear()
    el.send_keys(str(value))


def answers(d):
    return d.find_elements(By.CSS_SELECTOR, ".msg.assistant")


def test_chat_page_streams_stops_and_resets(server, client, browser):
    d = browser
    d.get(server.url + "/")
    wait(d, lambda: TINY_ID in d.find_element(By.ID, "model").text, what="the model id from /v1/models")

    # 1. A greedy answer streams in and equals the API's answer to the same conversation.
    set_field(d, "temperature", 0)
    set_field(d, "max_tokens", 40)
    box = d.find_element(By.ID, "input")
    box.send_keys("Write some code please")
    box.send_keys(Keys.ENTER)
    wait(d, lambda: len(answers(d)) == 1, what="an answer bubble")
    a = answers(d)[0]
    wait(d, lambda: a.get_attribute("data-finish") is not None, what="the first answer to finish")
    got = a.find_element(By.CSS_SELECTOR, ".text").text
    ref = client.chat.completions.create(model=TINY_ID, temperature=0, max_tokens=40, messages=[
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write some code please"}]).choices[0].message.content
    assert a.get_attribute("data-finish") in ("stop", "length")
    assert got.strip() == ref.strip() and got.strip(), (got, ref)

    # 2. A long sampled answer: text appears while it streams, then Stop ends it.
    cancelled = metric(server, "qwen_cancelled_total")
    set_field(d, "temperature", 1)
    set_field(d, "max_tokens", 3000)
    box.send_keys("Tell me a very long story")
    box.send_keys(Keys.ENTER)
    wait(d, lambda: len(answers(d)) == 2, what="a second answer bubble")
    b = answers(d)[1]
    wait(d, lambda: len(b.find_element(By.CSS_SELECTOR, ".text").text) > 20, what="streamed text")
    n1 = len(b.find_element(By.CSS_SELECTOR, ".text").text)
    wait(d, lambda: len(b.find_element(By.CSS_SELECTOR, ".text").text) > n1, what="more streamed text")
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "1"
    assert d.find_element(By.ID, "send").get_attribute("disabled") is not None
    # A fenced code block renders as <pre><code> (checked on the page's own renderer).
    html = d.execute_script("return render('see:\\n```python\\nprint(1 < 2)\\n```\\ndone')")
    assert '<pre><span class="lang">python</span><code>print(1 &lt; 2)\n</code></pre>' in html, html
    os.makedirs(ARTIFACTS, exist_ok=True)
    d.find_element(By.ID, "stop").click()
    wait(d, lambda: b.get_attribute("data-finish") == "stopped", what="the answer to stop")
    assert d.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "0"
    t = time.time()
    while metric(server, "qwen_requests_running") > 0:
        assert time.time() - t < 30, "the stopped answer kept decoding on the server"
        time.sleep(0.05)
    assert metric(server, "qwen_cancelled_total") >= cancelled + 1
    # Draw a code block into the log too, so the screenshot shows one rendered.
    d.execute_script("addMessage('assistant', 'Rendered code block:\\n```rust\\nfn main() { println!(\"hi\"); }\\n```')")
    d.save_screenshot(os.path.join(ARTIFACTS, "web_chat.png"))

    # 3. Reset clears the conversation; a new message starts a fresh history.
    d.find_element(By.ID, "reset").click()
    wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, ".msg")) == 0, what="an empty log")
    assert d.execute_script("return turns.length") == 0
