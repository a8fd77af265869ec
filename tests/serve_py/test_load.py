"""Bounded load on 127.0.0.1: 64 concurrent streams x 3 requests each, every answer equal to its solo
greedy run (nothing lost, nothing mixed between streams); streams cancelled mid-way leave the server
healthy and idle. Bounded in count and time: 192 requests of at most 12 tokens, 30 cancellations."""
import threading
import time
import urllib.request

from conftest import TINY_ID, metric

STREAMS = 64
ROUNDS = 3
PROMPTS = [f"Question {i}: what comes after {i * 7}?" for i in range(16)]
MAX_TOKENS = 12


def ask(client, prompt, stream):
    kw = dict(model=TINY_ID, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=MAX_TOKENS)
    if not stream:
        return client.chat.completions.create(**kw).choices[0].message.content
    return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw) if c.choices)


def test_64_concurrent_streams_each_equal_its_solo_run(server, client):
    solo = {p: ask(client, p, stream=False) for p in PROMPTS}
    assert len(set(solo.values())) > 1, "the prompts must give different answers, or mixing would go unseen"
    results, errors = [], []

    def worker(i):
        try:
            for r in range(ROUNDS):
                p = PROMPTS[(i * 5 + r) % len(PROMPTS)]
                results.append((p, ask(client, p, stream=True)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    t0 = time.time()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(STREAMS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors[:3]
    assert len(results) == STREAMS * ROUNDS
    wrong = [(p, got, solo[p]) for p, got in results if got != solo[p]]
    assert not wrong, f"{len(wrong)} answers differ from their solo run, e.g. {wrong[0]}"
    print(f"{len(results)} streamed requests from {STREAMS} clients in {time.time() - t0:.1f} s")


def test_cancelled_streams_leave_the_server_healthy(server, client):
    cancelled_before = metric(server, "qwen_cancelled_total")

    def cancel_after_two_chunks(i):
        s = client.chat.completions.create(model=TINY_ID, messages=[{"role": "user", "content": f"story {i}"}],
                                           temperature=1.0, seed=i, max_tokens=2000, stream=True)
        for k, _ in enumerate(s):
            if k == 2:
                break
        s.close()

    threads = [threading.Thread(target=cancel_after_two_chunks, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    # Every cancelled generation stops; the server goes idle and still answers correctly.
    t = time.time()
    while metric(server, "qwen_requests_running") + metric(server, "qwen_queue_depth") > 0:
        assert time.time() - t < 60, "cancelled generations are still running"
        time.sleep(0.05)
    assert metric(server, "qwen_cancelled_total") >= cancelled_before + 25
    assert urllib.request.urlopen(server.url + "/health", timeout=10).status == 200
    assert ask(client, PROMPTS[0], stream=True) == ask(client, PROMPTS[0], stream=False)
