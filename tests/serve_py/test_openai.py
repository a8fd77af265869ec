"""The real `openai` Python client against `qwen-run serve`: every answer is checked against the CLI
(`qwen-run generate --greedy`), against the non-streamed answer, or against OpenAI's error classes."""
import json
import os
import urllib.error
import urllib.request

import openai
import pytest

from conftest import TINY_ID, Server, cli_generate, metric

SYSTEM = "You are a helpful assistant."


def chat(client, user, n_tokens, system=None, **kw):
    msgs = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]
    return client.chat.completions.create(model=TINY_ID, messages=msgs, temperature=0, max_tokens=n_tokens, **kw)


def test_models(client):
    models = client.models.list().data
    assert [m.id for m in models] == [TINY_ID]
    assert client.models.retrieve(TINY_ID).id == TINY_ID


@pytest.mark.parametrize("system", [None, "You are a pirate. Answer in one line."])
def test_chat_greedy_equals_cli(client, system):
    ref = cli_generate("Tell me about the moon.", 20, system=system)
    r = chat(client, "Tell me about the moon.", 20, system=system)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == TINY_ID
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == ref["text"]
    assert r.usage.completion_tokens == len(ref["ids"])
    assert r.usage.prompt_tokens == ref["prompt_tokens"]
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].finish_reason == ("length" if ref["finish_reason"] == "length" else "stop")


def test_stream_deltas_equal_non_stream_text(client):
    full = chat(client, "Count to ten.", 24)
    stream = chat(client, "Count to ten.", 24, stream=True, stream_options={"include_usage": True})
    deltas, finish, usage, ids = [], None, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for c in chunk.choices:
            if c.delta.content:
                deltas.append(c.delta.content)
            finish = c.finish_reason or finish
    assert len(ids) == 1
    assert "".join(deltas) == full.choices[0].message.content
    assert len(deltas) > 1, "the answer must arrive in several pieces"
    assert finish == full.choices[0].finish_reason
    assert usage.model_dump() == full.usage.model_dump()


def test_completions_and_usage(client):
    ref = cli_generate("The capital of France is", 12, chat=False)
    r = client.completions.create(model=TINY_ID, prompt="The capital of France is", temperature=0, max_tokens=12)
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == ref["text"]
    assert r.usage.prompt_tokens == ref["prompt_tokens"] and r.usage.completion_tokens == len(ref["ids"])
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=TINY_ID, prompt="The capital of France is", temperature=0, max_tokens=12, stream=True) if c.choices)
    assert streamed == ref["text"]


def test_stop_strings(client):
    full = chat(client, "Write a long story.", 40).choices[0].message.content
    # A stop string taken from the middle of the greedy answer: the answer must end right before it.
    words = [w for w in full.split(" ") if len(w) >= 2 and full.index(w) > 2]
    assert words, f"no usable stop string in {full!r}"
    stop = words[len(words) // 2]
    cut = full[:full.index(stop)]
    for stops in (stop, ["zzzz-never", stop]):
        r = chat(client, "Write a long story.", 40, stop=stops)
        assert r.choices[0].message.content == cut, (stop, full)
        assert r.choices[0].finish_reason == "stop"
        s = "".join(c.choices[0].delta.content or "" for c in
                    chat(client, "Write a long story.", 40, stop=stops, stream=True) if c.choices)
        assert s == cut


def test_seed_and_n(client):
    kw = dict(model=TINY_ID, messages=[{"role": "user", "content": "hi"}], temperature=1.0, top_p=0.9, max_tokens=8, seed=42)
    a = client.chat.completions.create(n=3, **kw)
    b = client.chat.completions.create(n=3, **kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    one = client.chat.completions.create(**kw)
    assert one.choices[0].message.content == a.choices[0].message.content, "choice 0 uses the request's seed"


def test_multi_turn_history(client):
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and then?"}]
    r = client.chat.completions.create(model=TINY_ID, messages=msgs, temperature=0, max_tokens=5)
    # The prompt is the ChatML of the whole conversation: `qwen-run prompt` gives its ids.
    import subprocess, tempfile, os
    from conftest import QWEN_RUN
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(msgs, f)
    ids = json.loads(subprocess.run([QWEN_RUN, "prompt", "--messages", f.name], capture_output=True, text=True, check=True).stdout)
    os.unlink(f.name)
    assert r.usage.prompt_tokens == len(ids)


FC_CASES = os.path.join(os.path.dirname(__file__), "..", "data", "function_call_cases.json")


def fc_case(name):
    """A request of tools/gen_function_call_fixtures.py's fixture (a transcription of Qwen's openai_api.py)."""
    with open(FC_CASES) as f:
        return next(c for c in json.load(f)["requests"] if c["name"] == name)


def test_tools_round_trip(client):
    """tools → a valid answer (content or tool_calls); the `tool` result continues the assistant turn. The
    prompt is openai_api.py's ReAct prompt: its length is the fixture's. The tiny model's words are random, so the
    follow-up takes the fixture's scripted assistant call and tool result rather than the model's answer."""
    first = fc_case("tools_first_question")["request"]
    r = client.chat.completions.create(model=TINY_ID, messages=first["messages"], tools=first["tools"],
                                       temperature=0, max_tokens=16)
    assert r.usage.prompt_tokens == len(fc_case("tools_first_question")["expect"]["ids"])
    c = r.choices[0]
    assert c.message.role == "assistant"
    if c.finish_reason == "tool_calls":
        call = c.message.tool_calls[0]
        assert call.type == "function" and call.id and isinstance(call.function.arguments, str)
    else:
        assert c.finish_reason in ("stop", "length") and isinstance(c.message.content, str)
        assert not c.message.tool_calls

    case = fc_case("tools_round_trip_continues_after_observation")
    req = case["request"]
    assert req["messages"][-1]["role"] == "tool"
    r = client.chat.completions.create(model=TINY_ID, messages=req["messages"], tools=req["tools"],
                                       tool_choice=req["tool_choice"], temperature=0, max_tokens=16)
    assert r.usage.prompt_tokens == len(case["expect"]["ids"])
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")

    # Legacy `functions` → `function_call`.
    req = fc_case("functions_round_trip_continues_after_observation")["request"]
    r = client.chat.completions.create(model=TINY_ID, messages=req["messages"], functions=req["functions"],
                                       temperature=0, max_tokens=16)
    assert r.usage.prompt_tokens == len(fc_case("functions_round_trip_continues_after_observation")["expect"]["ids"])
    c = r.choices[0]
    assert c.finish_reason in ("stop", "length", "function_call")
    if c.finish_reason == "function_call":
        assert isinstance(c.message.function_call.name, str)


def bad(client, exc, **kw):
    with pytest.raises(exc) as e:
        client.chat.completions.create(**kw)
    return e.value


def test_error_paths(client, server):
    user = [{"role": "user", "content": "hi"}]
    e = bad(client, openai.BadRequestError, model=TINY_ID, messages=[{"role": "wizard", "content": "x"}])
    assert e.status_code == 400 and "role" in e.message
    e = bad(client, openai.NotFoundError, model="gpt-4o", messages=user)
    assert e.status_code == 404 and e.code == "model_not_found"
    for field, value in [("temperature", 5), ("top_p", 1.5), ("max_tokens", 0), ("n", 99)]:
        e = bad(client, openai.BadRequestError, model=TINY_ID, messages=user, **{field: value})
        assert e.param == field, (field, e.body)
    e = bad(client, openai.BadRequestError, model=TINY_ID, messages=[])
    assert e.param == "messages"
    e = bad(client, openai.BadRequestError, model=TINY_ID, messages=user,
            tools=[{"type": "function", "function": {"name": "f"}}])
    assert e.param == "tools[0].function.parameters", e.body
    e = bad(client, openai.BadRequestError, model=TINY_ID, messages=user, stream=True,
            tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    assert e.param == "stream" and "cannot be streamed" in e.message, e.body
    e = bad(client, openai.BadRequestError, model=TINY_ID, messages=user, extra_body={"top_k": -1})
    assert e.param == "top_k"
    # Malformed JSON and an over-size body cannot come from the client library: raw HTTP.
    for body, status in [(b'{"messages": [', 400), (b'{"messages": "' + b"x" * (5 << 20) + b'"}', 413)]:
        req = urllib.request.Request(server.url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as he:
            urllib.request.urlopen(req, timeout=60)
        assert he.value.code == status
        err = json.loads(he.value.read())["error"]
        assert err["message"] and err["type"]


def test_api_key():
    s = Server("--api-key", "k-123")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client(api_key="wrong").models.list()
        assert [m.id for m in s.client(api_key="k-123").models.list().data] == [TINY_ID]
    finally:
        s.stop()


def test_queue_full_is_429_and_rate_limit_error():
    s = Server("--max-queue", "1", "--max-seq-len", "20000")
    try:
        c = s.client()
        long = c.completions.create(model=TINY_ID, prompt="a", temperature=1, seed=1, max_tokens=15000, stream=True)
        next(iter(long))  # decoding now
        import threading
        waiting = threading.Thread(target=lambda: c.chat.completions.create(
            model=TINY_ID, messages=[{"role": "user", "content": "x"}], max_tokens=2))
        waiting.start()
        import time
        t = time.time()
        while metric(s, "qwen_queue_depth") < 1:
            assert time.time() - t < 30
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as e:
            c.chat.completions.create(model=TINY_ID, messages=[{"role": "user", "content": "x"}], max_tokens=2)
        assert e.value.status_code == 429
        long.close()  # cancels the long generation; the waiting one then runs
        waiting.join(60)
        assert not waiting.is_alive()
    finally:
        s.stop()
