"""A fake ``trtllm-serve`` for the lifecycle tests (copied in as ``tensorrt_llm/commands/serve.py``).

It imitates what TensorRT-LLM's source says the real server does (commits in docs/trtllm.md),
without a GPU and without copying its code:

- **Listens at once.** Recent main answers every request, ``GET /health`` included, with 503 and
  ``x-trtllm-server-state: starting`` until the engine is built, then 200
  (``tensorrt_llm/serve/lifecycle.py``, ``serve/readiness.py``).
- **Process tree.** ``trtllm-serve`` spawns its workers with mpi4py's ``MPIPoolExecutor``, one per
  rank, TP=1 included (``executor/executor.py``, ``executor/proxy.py``, ``llmapi/mpi_session.py``).
  Open MPI's singleton starts its daemon with ``orted --hnp --set-sid``, so the daemon and the
  ranks it spawns live in a new session. Here: server -> ``orted`` (new session) -> tp*pp ranks.
- **Environment.** Open MPI relocated with ``OPAL_PREFIX`` (NVIDIA images put HPC-X under
  ``/opt/hpcx``) cannot find ``orted`` without it: with ``FAKE_REQUIRE_ENV=A,B`` the fake exits 1,
  like a failed MPI start, when one of them is missing. The daemon and every rank write their
  environment to ``$FAKE_ENV_DUMP/<name>.json``.

Knobs (environment): ``FAKE_PIDFILE`` (required: pids, server first, then orted, then ranks),
``FAKE_STARTING_S`` (stay in STARTING this long after the ranks are up), ``FAKE_RANK_LOG``
(a line rank 0 prints to the log, e.g. a KV-cache warning), ``FAKE_ENV_DUMP``, ``FAKE_REQUIRE_ENV``.
"""

import http.server
import json
import os
import subprocess
import sys
import time

STATE_HEADER = "x-trtllm-server-state"
STARTING_BODY = json.dumps(
    {"error": {"message": "fake trtllm-serve: the engine is still initializing; retry until /health is 200",
               "type": "ServiceUnavailableError", "code": "starting"}}
).encode()

# A rank: write its environment, print rank 0's log line, then report its pid (the server is
# ready only when every rank has), so anything a rank logs comes before /health answers 200.
RANK = """
import json, os, sys, time
dump = os.environ.get("FAKE_ENV_DUMP")
if dump:
    with open(os.path.join(dump, f"rank{sys.argv[1]}.json"), "w") as f:
        json.dump(dict(os.environ), f)
if sys.argv[1] == "0" and os.environ.get("FAKE_RANK_LOG"):
    print(os.environ["FAKE_RANK_LOG"], flush=True)
with open(sys.argv[2], "a") as f:
    f.write(f"{os.getpid()}\\n")
time.sleep(600)
"""

# The daemon: write its environment and pid, then spawn the ranks (their parent, in its session).
ORTED = """
import json, os, subprocess, sys, time
dump = os.environ.get("FAKE_ENV_DUMP")
if dump:
    with open(os.path.join(dump, "orted.json"), "w") as f:
        json.dump(dict(os.environ), f)
with open(sys.argv[2], "a") as f:
    f.write(f"{os.getpid()}\\n")
ranks = [subprocess.Popen([sys.executable, "-c", sys.argv[3], str(i), sys.argv[2]]) for i in range(int(sys.argv[1]))]
time.sleep(600)
"""


def main() -> None:
    """Parse the trtllm-serve argv we need, start the fake process tree, serve /health."""
    args = sys.argv[1:]

    def opt(name: str) -> str:
        return args[args.index(name) + 1]

    port = int(opt("--port"))
    assert os.path.exists(opt("--extra_llm_api_options")), "YAML must exist before launch"
    missing = [k for k in os.environ.get("FAKE_REQUIRE_ENV", "").split(",") if k and k not in os.environ]
    if missing:
        print(f"fake orted: cannot start the MPI daemon: {', '.join(missing)} not set", flush=True)
        sys.exit(1)
    pidfile = os.environ["FAKE_PIDFILE"]
    nranks = int(opt("--tp_size")) * int(opt("--pp_size"))
    starting_s = float(os.environ.get("FAKE_STARTING_S", "0"))
    with open(pidfile, "a") as f:
        f.write(f"{os.getpid()}\n")

    class Health(http.server.BaseHTTPRequestHandler):
        ranks_up_at: float | None = None

        def do_GET(self) -> None:
            with open(pidfile) as f:
                n = len(f.read().split())
            if n >= 2 + nranks and Health.ranks_up_at is None:
                Health.ranks_up_at = time.monotonic()
            up = Health.ranks_up_at
            if up is not None and time.monotonic() - up >= starting_s:
                self.send_response(200)
                self.end_headers()
                return
            print("fake trtllm-serve: 503 starting", flush=True)
            self.send_response(503)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(STARTING_BODY)))
            self.send_header("retry-after", "1")
            self.send_header(STATE_HEADER, "starting")
            self.end_headers()
            self.wfile.write(STARTING_BODY)

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Health)  # listening from here on
    subprocess.Popen([sys.executable, "-c", ORTED, str(nranks), pidfile, RANK], start_new_session=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
