"""Fixtures for the Python tests of `qwen-run serve`: a server on 127.0.0.1 (built-in tiny model, CPU),
the CLI's greedy output to compare against, and an `openai` client pointed at the server.

QWEN_RUN: the qwen-run binary (tools/serve_tests.sh sets it); SERVE_ARTIFACTS: where screenshots go.
"""
import json
import os
import re
import signal
import subprocess
import threading
import time

import openai
import pytest

QWEN_RUN = os.environ.get("QWEN_RUN", os.path.join(os.path.dirname(__file__), "../../target/debug/qwen-run"))
TINY_ID = "qwen-rt-builtin-tiny-v1"


class Server:
    """`qwen-run serve --port 0` with `extra` flags; `url` once it printed its listening line."""

    def __init__(self, *extra):
        self.proc = subprocess.Popen(
            [QWEN_RUN, "serve", "--backend", "cpu", "--port", "0", "--threads", "1", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log = []
        deadline = time.time() + 120
        while True:
            line = self.proc.stderr.readline()
            assert line, "server exited before listening: " + "".join(self.log)
            self.log.append(line)
            m = re.match(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
            assert time.time() < deadline, "server did not start"
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def client(self, **kw):
        kw.setdefault("api_key", "unused")
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 120)
        return openai.OpenAI(base_url=self.url + "/v1", **kw)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server):
    return server.client()


def cli_generate(prompt, max_new_tokens, chat=True, system=None):
    """`qwen-run generate [--chat] --greedy --json`: the reference the server's greedy answers must equal."""
    args = [QWEN_RUN, "generate", "--greedy", "--backend", "cpu", "--json", "--prompt", prompt,
            "--max-new-tokens", str(max_new_tokens)]
    if chat:
        args.append("--chat")
    if system is not None:
        args += ["--system", system]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def metric(server, name):
    import urllib.request
    text = urllib.request.urlopen(server.url + "/metrics", timeout=30).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")
