"""Load benchmark of the Space: how long good clients wait, alone and beside bad clients, and the server's memory.

    python bench/bench_space_load.py                   # the embedded demo model, 20 clients
    python bench/bench_space_load.py --model FOLDER --clients 40

It starts `python space/app.py` as its own process on 127.0.0.1 (so the memory is the server's alone), then runs
three rounds with the clients of `tests/space_helpers.py` (the same ones the load test in tests/test_space.py runs):

* `one client`: one good client alone (the time one short run takes, end to end);
* `good only`: `--clients` clients at once, each POSTing a short /generate run and reading its stream;
* `with bad clients`: the same, plus one client that POSTs a long paced run and never reads its stream, and two
  that POST a `--history-mb` chat history (one declaring its Content-Length, one streaming it chunked).

Columns: served = good clients whose run completed; median / worst = seconds from a client's first POST to its
`complete` event (a full queue, 503, is retried every 0.25 s: retries counts them); RSS = the server's resident
memory before the round and its peak during it (sampled every 50 ms); oversized = the HTTP status each oversized
post got, and how much of it was sent before the answer.
"""

import argparse
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("space_helpers", ROOT / "tests" / "space_helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
sys.path.insert(0, str(ROOT / "space"))
from settings import CONTROLS, LIMITS  # noqa: E402


def values(**chosen) -> list:
    """Sampler values in the order the Space takes them (`CONTROLS`), the controls' defaults elsewhere."""
    return [chosen.get(control.name, control.default) for control in CONTROLS]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: str | None, port: int) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "space" / "app.py"), "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu"] + (["--model", model] if model else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"The Space exited with code {server.returncode}: run `{' '.join(command)}` to see why.")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.kill()
    raise SystemExit("The Space did not answer within 180 s.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="local folder or Hub id (default: the embedded demo model)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--history-mb", type=float, default=18.6, help="size of each oversized chat history")
    parser.add_argument("--slow-seconds", type=float, default=25.0, help="pauses in the never-read run")
    args = parser.parse_args(argv)

    good = ["You will", *values(max_new_tokens=16, steps=8, block_length=16, pace_ms=0, temperature=0.0)]
    pace = min(int(args.slow_seconds / 64 * 1000) // 10 * 10, CONTROLS["pace_ms"].maximum)
    slow = ["You will", *values(max_new_tokens=64, steps=64, block_length=64, pace_ms=pace)]
    port = free_port()
    server = start_server(args.model, port)
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        for name, clients, bad in (("one client", 1, False), ("good only", args.clients, False),
                                   ("with bad clients", args.clients, True)):
            figures = helpers.load(url, good, slow=slow if bad else None,
                                   history_bytes=int(args.history_mb * 1e6) if bad else 0, clients=clients,
                                   timeout=120, memory=lambda: helpers.rss_mb(server.pid))
            rows.append((name, clients, figures))
            time.sleep(LIMITS.stall_seconds + 1)  # let the never-read run end before the next round
    finally:
        server.terminate()
        server.wait(30)

    print(f"Space load: {args.model or 'embedded demo model'}, {args.clients} good clients (Length 16, 8 steps), "
          f"limits: {LIMITS.run_seconds:g} s per run, {LIMITS.unread_frames} unread frames / "
          f"{LIMITS.stall_seconds:g} s, {LIMITS.request_bytes // 1024} KiB per request, queue {LIMITS.queue_size}; "
          f"never-read run: 64 steps x {pace} ms")
    columns = ("round", "served", "median s", "worst s", "retries", "RSS before -> peak MB", "oversized")
    table = []
    for name, clients, f in rows:
        table.append((name, f"{f['served']} / {clients}", "-" if f["median"] is None else f"{f['median']:.2f}",
                      "-" if f["worst"] is None else f"{f['worst']:.2f}", str(f["retries"]),
                      f"{f['memory_before']:.0f} -> {f['memory_peak']:.0f}",
                      ", ".join(f"{status} after {sent / 1e6:.1f} MB" for status, sent in f["oversize"]) or "-"))
    widths = [max(len(row[i]) for row in [columns, *table]) for i in range(len(columns))]
    for row in [columns, tuple("-" * w for w in widths), *table]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    for name, _, f in rows:
        if f["slow_end"]:
            event, data = f["slow_end"]
            ended = re.search(r'canvas-status">([^<]*)', json.loads(data)[0]) if event == "complete" else None
            print(f"  the never-read run, read afterwards: {ended.group(1) if ended else event}")
        for failure in f["failures"][:3]:
            print(f"  failed: {failure}")


if __name__ == "__main__":
    main()
