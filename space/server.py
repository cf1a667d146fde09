"""The Space's server guards: a request-size limit in front of Gradio, and a probe of how far a client has read.

How it differs from a plain `demo.launch()`: Gradio reads and parses a request body whatever its size (a 18.6 MB chat
history took 8 s of CPU and 800 MB), so `BodyLimit`, an ASGI middleware on the FastAPI app Gradio builds, refuses a
body over `LIMITS.request_bytes` with 413 before anything parses it: at once when Content-Length says so, else
as soon as the streamed bytes pass the limit. And Gradio keeps running a generator event whose client never opens
its stream; `unread_frames` tells the worker how many frames such a client has left unread, so that it can stop.
"""

import json

from settings import LIMITS, Limits
from starlette.middleware import Middleware


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 and never reaches the app; others are passed on
    whole (read here first, so the app never sees a part of a body that turns out too large)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left while sending
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: the disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _refuse(self, send):
        detail = json.dumps({"detail": f"The request body is over the limit of {self.max_bytes} bytes."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(detail)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": detail})


def unread_frames(demo, request):
    """A function giving the number of messages queued for `request`'s session and not yet read by its client
    (None when Gradio keeps no queue for it). Reads Gradio 6.31's queue (`pending_messages_per_session`)."""
    session = getattr(request, "session_hash", None)
    pending = getattr(getattr(demo, "_queue", None), "pending_messages_per_session", None)
    if session is None or pending is None:
        return None

    def count():
        messages = pending.get(session)
        return None if messages is None else messages.qsize()

    return count


def launch(demo, limits: Limits = LIMITS, css_paths=(), **kwargs):
    """Launch with the Space's look (in Gradio 6 the theme and CSS are `launch()` arguments) and its guards: the
    body limit, and at most `limits.sessions` sessions' state kept."""
    import gradio as gr

    app_kwargs = dict(kwargs.pop("app_kwargs", None) or {})
    guard = Middleware(BodyLimit, max_bytes=limits.request_bytes)
    app_kwargs["middleware"] = [*app_kwargs.get("middleware", []), guard]
    return demo.launch(css_paths=list(css_paths), theme=gr.themes.Soft(primary_hue="violet", neutral_hue="slate"),
                       footer_links=["api"], app_kwargs=app_kwargs, state_session_capacity=limits.sessions,
                       max_file_size=limits.request_bytes, **kwargs)
