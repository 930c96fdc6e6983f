#!/usr/bin/env python3
"""Load client for `anvil serve` (standard library only): C concurrent clients, each sending R
streamed /v1/completions requests one after another (distinct prompts of about P tokens, greedy,
max_tokens G; with --prefix-words F the first F words are the same for every request, a shared
system-prompt-like prefix). Prints one JSON line per concurrency with the time to first token (median, p90),
the aggregate generation throughput (completion tokens / wall seconds) and the requests' own
decode speed (after one untimed warm-up request). Usage: serve_load.py PORT [--clients 1,4,8] [--requests 4] [--prompt-words 60] [--prefix-words 0] [--gen 32]"""
import argparse
import http.client
import json
import statistics
import threading
import time

WORDS = ("llama alpaca mountain river cloud stone bread window garden letter silver orange "
         "winter morning harbor candle forest engine violin meadow").split()


def prompt_text(client, k, n_words, n_prefix=0):
    # the first n_prefix words are shared; the rest differ from the first distinct word on
    shared = [WORDS[(i * 11 + 3) % len(WORDS)] for i in range(n_prefix)]
    own = [WORDS[(client * 7 + k * 3 + i * (i % 5 + 1)) % len(WORDS)] for i in range(max(0, n_words - n_prefix))]
    return " ".join(shared + [f"{client}-{k}"] + own)


def one_request(port, text, gen):
    body = json.dumps({"prompt": text, "max_tokens": gen, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft, usage = None, None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            usage = ev["usage"]
        for ch in ev.get("choices", []):
            if ch.get("text") and ttft is None:
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    conn.close()
    return ttft if ttft is not None else total, total, usage


def engine_counters(port):
    """anvil's /metrics: engine seconds by phase, decode steps and rows ({} for other servers)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
    except Exception:  # noqa: BLE001 (not anvil, or no metrics)
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("anvil_engine_seconds_total{phase="):
            out[line.split('"')[1] + "_s"] = float(line.split()[-1])
        elif line.startswith(("anvil_decode_steps_total", "anvil_decode_rows_total", "anvil_prefill_chunks_total")):
            out[line.split()[0][6:-6]] = float(line.split()[-1])
    return out


def run(port, clients, requests, words, gen, prefix=0):
    results, errors = [], []
    lock = threading.Lock()

    def client(c):
        for k in range(requests):
            try:
                r = one_request(port, prompt_text(c, k, words, prefix), gen)
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 (reported below)
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    th = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    gen_tok = sum(r[2]["completion_tokens"] for r in results if r[2])
    prompt_tok = sum(r[2]["prompt_tokens"] for r in results if r[2])
    decode = [(r[2]["completion_tokens"] - 1) / (r[1] - r[0]) for r in results if r[2] and r[1] > r[0] and r[2]["completion_tokens"] > 1]
    return {
        "clients": clients, "requests": len(results), "errors": len(errors),
        "prompt_tokens_mean": round(prompt_tok / max(1, len(results)), 1),
        "ttft_median_s": round(statistics.median(ttfts), 3) if ttfts else None,
        "ttft_p90_s": round(ttfts[min(len(ttfts) - 1, int(0.9 * len(ttfts)))], 3) if ttfts else None,
        "gen_tokens": gen_tok, "wall_s": round(wall, 2),
        "throughput_tok_s": round(gen_tok / wall, 2) if wall > 0 else None,
        "per_request_decode_tok_s": round(statistics.median(decode), 2) if decode else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--prompt-words", type=int, default=60)
    ap.add_argument("--prefix-words", type=int, default=0)
    ap.add_argument("--gen", type=int, default=32)
    a = ap.parse_args()
    one_request(a.port, "warm-up: the weights are paged in before anything is timed", 4)
    for c in (int(x) for x in a.clients.split(",")):
        before = engine_counters(a.port)
        r = run(a.port, c, a.requests, a.prompt_words, a.gen, a.prefix_words)
        after = engine_counters(a.port)
        if after:  # anvil: where the engine thread's time went during this level
            r["engine"] = {k: round(after[k] - before.get(k, 0), 3) for k in after}
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
