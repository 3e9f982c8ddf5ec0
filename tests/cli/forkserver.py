"""Run `sslkit` command lines as real processes, fast: one Python imports sslkit (torch, timm, torchvision: about
7 s on the CI machine) once, then forks a child per command line. Each child is its own process that runs the
installed entry point, ``sslkit.cli:main``, with its own exit code and its own stdout / stderr, so a traceback
or a crash shows exactly as a user would see it.

Protocol: one JSON request per line on stdin ({"args", "cwd", "env", "stdout", "stderr"}, or {"quit": true}),
one JSON reply per line on stdout ({"code"}).
"""

from __future__ import annotations

import json
import os
import sys


def serve() -> None:
    import sslkit.api  # noqa: F401  (the slow imports, done once)
    from sslkit.cli import main
    from sslkit.engine import device

    device.native_cpu_bf16 = lambda: None  # as tests/conftest.py: --precision auto decides alike on every CPU kind

    replies = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("quit"):  # not only EOF: a process forked from the test runner may hold stdin open
            break
        pid = os.fork()
        if pid == 0:
            _child(request, main)
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"code": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


def _child(request: dict, main) -> None:
    for fd, name in ((1, "stdout"), (2, "stderr")):
        target = os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    os.environ.update(request.get("env", {}))
    sys.argv = ["sslkit", *request["args"]]
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # what the interpreter would print for an uncaught error
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    serve()
