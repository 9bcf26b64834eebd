"""A headless Chromium driven over the DevTools protocol on a pipe (no port is opened): load a
page from the file system, collect its console errors, evaluate a script in it."""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ANSWER_SECONDS = 120  # a page that never settles fails its test instead of hanging the suite


class Browser:
    def __init__(self, width: int = 1400, height: int = 20000) -> None:
        self.profile = tempfile.TemporaryDirectory()
        commands_read, self.commands = os.pipe()
        self.replies, replies_write = os.pipe()
        arguments = [
            CHROMIUM, "--headless", "--remote-debugging-pipe", "--no-first-run", "--disable-gpu",
            "--autoplay-policy=no-user-gesture-required", f"--window-size={width},{height}",
            f"--user-data-dir={self.profile.name}", "about:blank",
        ]  # fmt: skip
        if os.geteuid() == 0:
            arguments.insert(1, "--no-sandbox")

        def pipes_on_3_and_4() -> None:  # where --remote-debugging-pipe looks for them
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_read, replies_write)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            arguments,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pipes_on_3_and_4,
        )
        os.close(commands_read)
        os.close(replies_write)
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=True)

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            if not select.select([self.replies], [], [], ANSWER_SECONDS)[0]:
                raise RuntimeError(f"chromium did not answer in {ANSWER_SECONDS} s")
            chunk = os.read(self.replies, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: bool = False, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def open(self, path: Path) -> None:
        self.send("Page.navigate", session=True, url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The value of `expression` (awaited if it is a promise), as JSON."""
        result = self.send(
            "Runtime.evaluate", session=True, expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Everything the page reported as an error: console.error, uncaught exceptions, failed loads."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(" ".join(str(arg.get("value", arg.get("description"))) for arg in params["args"]))
            elif method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"] + " " + params["entry"].get("url", ""))
        return found

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        self.process.wait()
        os.close(self.commands)
        os.close(self.replies)
        self.profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_) -> None:
        self.close()
