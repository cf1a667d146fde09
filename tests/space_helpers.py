"""HTTP clients of the Space, for its tests (tests/test_space.py) and its load benchmark (bench/bench_space_load.py).

Clients of the Space's API written against Gradio's documented REST protocol (`POST /gradio_api/call/<api>`,
then `GET /gradio_api/call/<api>/<event_id>` streams server-sent events): a well-behaved client, one that never reads
its stream, and one that sends an oversized body. `load()` runs them together and returns the figures.
"""

import select
import socket
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit


def rss_mb(pid="self") -> float:
    """Resident memory of a process, in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def submit(url: str, api: str, data: list, deadline: float) -> tuple[str, int]:
    """POST a call; a full queue (503) is retried every 0.25 s until `deadline`. Returns (event id, retries)."""
    import httpx

    retries = 0
    while True:
        response = httpx.post(f"{url}/gradio_api/call/{api}", json={"data": data}, timeout=30)
        if response.status_code != 503 or time.monotonic() > deadline:
            response.raise_for_status()
            return response.json()["event_id"], retries
        retries += 1
        time.sleep(0.25)


def read_stream(url: str, api: str, event_id: str, timeout: float, keep: int | None = None) -> list[tuple[str, str]]:
    """Read a call's server-sent events until `complete` / `error` (or, with `keep`, close after that many
    events: a client that leaves). Returns [(event, data)]."""
    import httpx

    events, name = [], None
    with httpx.stream("GET", f"{url}/gradio_api/call/{api}/{event_id}", timeout=timeout) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and name != "heartbeat":
                events.append((name, line.split(":", 1)[1].strip()))
                if name in ("complete", "error") or (keep is not None and len(events) >= keep):
                    break
    return events


def oversized(url: str, api: str, total_bytes: int, declare_length: bool) -> tuple[int | None, int]:
    """POST a chat history of about `total_bytes` (a JSON list of tiny messages) over a raw socket, declaring its
    Content-Length or streaming it chunked; stop sending once the server answers. Returns (status, bytes sent)."""
    parts = urlsplit(url)
    head = (f"POST /gradio_api/call/{api} HTTP/1.1\r\nHost: {parts.hostname}\r\nContent-Type: application/json\r\n"
            + (f"Content-Length: {total_bytes}\r\n" if declare_length else "Transfer-Encoding: chunked\r\n")
            + "\r\n").encode()
    chunk = b'{"role": "user", "content": "hi"}, ' * 2000  # 70 kB of messages
    sent, reply = 0, b""
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as connection:
        try:
            connection.sendall(head)
            while sent < total_bytes and not select.select([connection], [], [], 0)[0]:
                connection.sendall(chunk if declare_length else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            reply = connection.recv(256)
        except OSError:
            pass
    return (int(reply.split()[1]) if reply.startswith(b"HTTP/") else None), sent


def load(url: str, good: list, slow: list | None = None, history_bytes: int = 0, clients: int = 20,
         timeout: float = 120.0, memory=rss_mb) -> dict:
    """Run `clients` well-behaved clients of /generate (with data `good`) at once, plus, when given, one client that
    POSTs `slow` and never reads its stream and two that POST a `history_bytes` chat history to /chat (one declaring
    its length, one streaming it). Returns the figures: each good client's latency (first POST to its `complete`
    event), how many were served, their queue-full retries, the never-read run's last event (read after the others),
    the oversized posts' statuses and bytes sent, and the peak of `memory()` (MB) sampled every 50 ms against its
    value before."""
    before, peak, done = memory(), [memory()], threading.Event()
    latencies, retries, failures, oversize = [], [], [], []

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], memory())
            time.sleep(0.05)

    def client():
        began = time.monotonic()
        try:
            event_id, tries = submit(url, "generate", good, began + timeout)
            events = read_stream(url, "generate", event_id, timeout)
            if events and events[-1][0] == "complete":
                latencies.append(time.monotonic() - began)
                retries.append(tries)
            else:
                failures.append(events[-1:] or "no events")
        except Exception as error:  # noqa: BLE001  (counted, and reported by the caller)
            failures.append(repr(error))

    slow_id = []

    threads = [threading.Thread(target=sample, daemon=True)]
    if slow is not None:
        threads.append(threading.Thread(
            target=lambda: slow_id.append(submit(url, "generate", slow, time.monotonic() + timeout)[0])))
    if history_bytes:
        for declare in (True, False):
            threads.append(threading.Thread(
                target=lambda d=declare: oversize.append(oversized(url, "chat", history_bytes, d))))
    threads += [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads[1:]:
        thread.join(timeout + 30)
    done.set()
    # the never-read run, read at last: how it ended (its final canvas says why it stopped)
    slow_end = read_stream(url, "generate", slow_id[0], timeout)[-1] if slow_id else None
    return dict(latencies=sorted(latencies), served=len(latencies), failures=failures, retries=sum(retries),
                median=statistics.median(latencies) if latencies else None, worst=max(latencies, default=None),
                slow_end=slow_end, oversize=oversize, memory_before=before, memory_peak=peak[0])
