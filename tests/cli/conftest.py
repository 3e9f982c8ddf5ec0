"""The real command line in separate processes, fast: a fork server (tests/cli/forkserver.py) imports sslkit
once and forks a child per command line, so each has its own exit code, stdout and stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


class ForkServer:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.count = 0
        # its own feature cache and decoded stores: module-scoped, it starts before a test's fixtures set them
        env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "SSLKIT_CACHE_DIR": str(workdir / "features"),
               "SSLKIT_STORE_DIR": str(workdir / "stores")}
        self.process = subprocess.Popen([sys.executable, "-m", "tests.cli.forkserver"], cwd=ROOT, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, *args, cwd: Path | None = None, env: dict | None = None) -> Result:
        self.count += 1
        out, err = self.workdir / f"{self.count}.out", self.workdir / f"{self.count}.err"
        request = {"args": [str(a) for a in args], "cwd": str(cwd or self.workdir), "env": env or {},
                   "stdout": str(out), "stderr": str(err)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        return Result(reply["code"], out.read_text(errors="replace"), err.read_text(errors="replace"))

    def close(self) -> None:
        self.process.stdin.write(json.dumps({"quit": True}) + "\n")
        self.process.stdin.close()
        self.process.wait(timeout=60)


@pytest.fixture(scope="module")
def sslkit_cli(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("cli"))
    yield server
    server.close()


def assert_usage_error(result: Result, *phrases: str) -> None:
    assert result.code == 2, (result.code, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.lines) == 1 and result.lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in result.lines[0], (phrase, result.lines[0])
