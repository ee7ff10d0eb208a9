"""An HTTP client of the real ComfyUI server for the adversarial tier (no ComfyUI import).

``Client.run(prompt)`` POSTs a prompt and returns an ``Outcome``: refused at validation (HTTP
400 with node_errors), or finished (success / error / interrupted) as /history reports it.
``expect_*`` check the kind of error and the shape of its message; ``images`` fetches a node's
output images through /view and decodes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import threading
import time
import urllib.parse

import numpy as np
from PIL import Image

CLIENT_ID = "musar-adversarial"


@dataclasses.dataclass
class Outcome:
    kind: str  # "validation" | "success" | "error" | "interrupted"
    prompt_id: str | None = None
    node_errors: dict = dataclasses.field(default_factory=dict)
    error: dict | None = None
    messages: list = dataclasses.field(default_factory=list)
    outputs: dict = dataclasses.field(default_factory=dict)

    @property
    def execution_error(self) -> dict | None:
        found = [d for e, d in self.messages if e == "execution_error"]
        return found[0] if found else None

    def __str__(self) -> str:
        return (f"Outcome({self.kind}, node_errors={json.dumps(self.node_errors)[:1500]}, "
                f"error={self.execution_error or self.error})")


class Events:
    """The server's websocket messages to this client id, collected on a daemon thread; a dropped
    connection (the server closes sockets it cannot serve in time, e.g. on a loaded machine) is
    opened again with the same client id and counted in ``reconnects``."""

    def __init__(self, url: str):
        self.messages: list[dict] = []
        self.reconnects = 0
        self._changed = threading.Condition()
        self._ws_url = url.replace("http://", "ws://") + f"/ws?clientId={CLIENT_ID}"
        self._ready = threading.Event()
        threading.Thread(target=asyncio.run, args=(self._listen(),), daemon=True).start()
        assert self._ready.wait(30), "no websocket connection"

    async def _listen(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.ws_connect(self._ws_url) as ws:
                        self._ready.set()
                        async for msg in ws:
                            if msg.type == aiohttp.WSMsgType.TEXT:
                                with self._changed:
                                    self.messages.append(json.loads(msg.data))
                                    self._changed.notify_all()
                except aiohttp.ClientError:
                    pass  # the server is gone or busy: try again below
                self.reconnects += 1
                await asyncio.sleep(0.2)

    def mark(self) -> int:
        with self._changed:
            return len(self.messages)

    def wait_for(self, predicate, since: int = 0, timeout: float = 300.0) -> dict:
        """The first message from index ``since`` on for which ``predicate(type, data)`` holds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for m in self.messages[since:]:
                    if predicate(m.get("type"), m.get("data") or {}):
                        return m
                left = deadline - time.monotonic()
                assert left > 0, (f"the awaited websocket message never came ({len(self.messages)} messages, "
                                  f"{self.reconnects} reconnects; the last: "
                                  f"{[(m.get('type'), m.get('data')) for m in self.messages[-4:]]})")
                self._changed.wait(left)


class Client:
    def __init__(self, server):
        self.server = server
        self._events = None

    @property
    def events(self) -> Events:
        if self._events is None:
            self._events = Events(self.server.url)
        return self._events

    def submit(self, prompt: dict) -> tuple[int, dict]:
        status, body = self.server.post_json("/prompt", {"prompt": prompt, "client_id": CLIENT_ID})
        return status, body or {}

    def interrupt(self) -> None:
        status, _, _ = self.server.request("/interrupt", {})
        assert status == 200, status

    def queue(self, prompt: dict) -> str:
        status, body = self.submit(prompt)
        assert status == 200 and not body.get("node_errors"), (status, body)
        return body["prompt_id"]

    def run(self, prompt: dict, timeout: float = 120.0) -> Outcome:
        status, body = self.submit(prompt)
        if status == 400:
            return Outcome("validation", node_errors=body.get("node_errors") or {},
                           error=body.get("error"))
        assert status == 200, (status, body)
        outcome = self.wait(body["prompt_id"], timeout)
        outcome.node_errors = body.get("node_errors") or {}  # outputs that did not validate
        return outcome  # (ComfyUI runs the others)

    def wait(self, prompt_id: str, timeout: float = 120.0) -> Outcome:
        entry = self.server.wait_history(prompt_id, timeout)
        status = entry["status"]
        messages = [tuple(m) for m in status.get("messages", [])]
        kind = status["status_str"]
        if any(e == "execution_interrupted" for e, _ in messages):
            kind = "interrupted"
        return Outcome(kind, prompt_id, messages=messages, outputs=entry.get("outputs", {}))

    def images(self, outcome: Outcome, node: str) -> list[np.ndarray]:
        out = []
        for item in outcome.outputs[node]["images"]:
            query = urllib.parse.urlencode({"filename": item["filename"],
                                            "subfolder": item.get("subfolder", ""),
                                            "type": item.get("type", "output")})
            status, _, body = self.server.request(f"/view?{query}")
            assert status == 200, status
            out.append(np.asarray(Image.open(io.BytesIO(body)).convert("RGB")))
        return out

    def wait_idle(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            queue = self.server.get_json("/queue")
            if not queue["queue_running"] and not queue["queue_pending"]:
                return
            time.sleep(0.1)
        raise AssertionError("the server's queue did not drain")


# ---- expectations ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Refused:
    """Refused at validation: node ``node`` reports ComfyUI error type ``kind`` whose details
    match ``pattern`` (a regex). (ComfyUI still runs the prompt's other, valid outputs.)"""

    node: str
    pattern: str
    kind: str = "custom_validation_failed"

    def check(self, outcome: Outcome) -> None:
        errors = outcome.node_errors.get(self.node, {}).get("errors", [])
        assert errors, f"node {self.node} reported nothing: {outcome}"
        text = " | ".join(f"{e.get('type')}: {e.get('message')}: {e.get('details')}" for e in errors)
        assert any(e.get("type") == self.kind for e in errors), f"want {self.kind}: {text}"
        assert re.search(self.pattern, text), f"want /{self.pattern}/: {text}"


@dataclasses.dataclass(frozen=True)
class Raised:
    """Failed while running: node ``node`` raised a MUSAR error (musar/errors.py) whose class
    name matches ``error`` (a regex), with a message matching ``pattern``; none of ``never_ran``
    (e.g. the sampler) was executed."""

    node: str
    error: str
    pattern: str
    never_ran: tuple[str, ...] = ()

    def check(self, outcome: Outcome) -> None:
        err = outcome.execution_error
        assert outcome.kind == "error" and err is not None, f"expected {self.error}, got {outcome}"
        assert err["node_id"] == self.node, err
        module, _, name = err["exception_type"].rpartition(".")
        assert module.endswith("musar.errors") and re.fullmatch(self.error, name), err["exception_type"]
        assert re.search(self.pattern, err["exception_message"]), err["exception_message"]
        assert "Traceback" not in err["exception_message"]
        ran = set(err.get("executed", []))
        assert not ran & set(self.never_ran), f"{sorted(ran & set(self.never_ran))} ran"


@dataclasses.dataclass(frozen=True)
class Rejected:
    """Refused at validation or raised by the node while running - either is a clear error
    before sampling (for nodes whose owners may choose either)."""

    node: str
    pattern: str
    never_ran: tuple[str, ...] = ()

    def check(self, outcome: Outcome) -> None:
        if self.node in outcome.node_errors:
            Refused(self.node, self.pattern).check(outcome)
        else:
            Raised(self.node, r"\w*Error", self.pattern, self.never_ran).check(outcome)
