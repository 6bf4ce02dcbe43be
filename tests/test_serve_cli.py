"""``tagtune serve`` as a user runs it: a process on an ephemeral port, a request, Ctrl-C finishing the
request in flight, bad flags as one line with exit status 2."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np

from tagtune.cli import main

STARTUP_SECONDS = 120
# long enough that the stream's later chunk comes well after its first, whatever the base's speaking rate
BODY = {"model": "base", "voice": "alice", "greedy": True, "max_new_tokens": 150, "response_format": "pcm",
        "input": "Hello, World! This is IndexTTS speaking. Well, that is funny. I can say a little more, so that "
                 "you hear it stream."}


def _start(args: list[str]) -> tuple[subprocess.Popen, str, list[str]]:
    proc = subprocess.Popen([sys.executable, "-m", "tagtune.cli", "serve", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline and proc.poll() is None:
        found = [m for line in list(lines) if (m := re.search(r"running on (http://127\.0\.0\.1:\d+)", line))]
        if found:
            return proc, found[0][1], lines
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the server did not start:\n" + "".join(lines))


def test_serve_command_answers_and_finishes_in_flight_work_on_ctrl_c(shipped_base, reference_wav):
    proc, url, lines = _start(["--model", str(shipped_base), "--voice", f"alice={reference_wav}", "--port", "0",
                               "--shutdown-grace", "60"])
    try:
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
        whole = httpx.post(f"{url}/v1/audio/speech", json=BODY, timeout=300).content
        parts = []
        with httpx.stream("POST", f"{url}/v1/audio/speech", json={**BODY, "stream": True}, timeout=300) as reply:
            for part in reply.iter_raw():
                if not parts:
                    proc.send_signal(signal.SIGINT)  # shut down while this request is still generating
                parts.append(part)
        assert proc.wait(timeout=120) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
    streamed = np.frombuffer(b"".join(parts), dtype="<i2")
    assert len(parts) > 1 and len(streamed) == len(whole) // 2 > 0


def test_serve_command_refuses_bad_flags_in_one_line(shipped_base, tmp_path, capsys):
    assert main(["serve", "--model", str(shipped_base), "--adapter", "no-equals-sign"]) == 2
    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert main(["serve", "--model", str(shipped_base), "--voice", f"v={tmp_path / 'none.wav'}", "--port", "0"]) == 2
    assert main(["serve", "--model", str(shipped_base), "--adapter", f"a={tmp_path}", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("tagtune serve: error: ") for line in err)
    assert "NAME=PATH" in err[0] and "missing" in err[1] and "none.wav" in err[2] and str(tmp_path) in err[3]
