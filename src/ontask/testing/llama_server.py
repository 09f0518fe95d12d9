"""Run llama-cpp-python's OpenAI-compatible server on a GGUF, for tests.

The other test servers (`fake_server`) are ours; this one is a real third-party server, so
the OpenAI backends get tested against answers they did not shape. It is llama-cpp-python
(`python -m llama_cpp.server`, pinned to 0.3.36, installed by
`scripts/ensure-llama-cpp.sh`), serving the embedded SmolLM2 GGUF on 127.0.0.1.

    reason = available()
    if reason:
        pytest.skip(reason)
    with llama_server(gguf_path(), n_ctx=2048) as srv:
        client = OpenAI(base_url=srv.base_url, api_key="EMPTY")
        ...
        srv.kill()      # the server dies mid-run (SIGKILL)
        srv.restart()   # and comes back on the same port

Why a subprocess, not the app in-process: the server loads a native library with its own
threads, which would share the test process' GIL and can take it down on a crash; a child
in its own process group can be killed (the point of some tests) and is always cleaned up,
grandchildren included. The server loads the model before it binds its port, so "ready" is
the first answer to GET /v1/models; a one-token warm-up completion then proves the native
kernels run on this CPU, so a bad build fails here with the log, not in the middle of a test.

What callers must know about this server (0.3.36):
- one request at a time: a global lock queues the rest, GET /v1/models included, so tests
  see no parallelism and a health check waits behind running requests;
- a streamed answer is cut short (a bare `[DONE]`, no finish_reason) when another request
  arrives, unless `--interrupt_requests false`, which this module passes by default;
- it reads every setting from environment variables too (`HOST` and `PORT` even override
  the command line), so the child gets an environment without them;
- on an abort (e.g. a token id out of range in /extras/detokenize kills it) ggml attaches
  gdb to print a backtrace, which takes seconds: the child gets GGML_NO_BACKTRACE=1;
- a request it rejects (a body that fails validation, `response_format` of type
  `json_schema`) is answered 500, not 4xx, so the OpenAI SDK retries it before raising;
- `echo` + `logprobs` costs ~25 ms a token in Python (a sort over the vocabulary per
  token): keep the texts scored through it short.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

VERSION = "0.3.36"
INSTALL_HINT = "bash scripts/ensure-llama-cpp.sh .venv/bin/python"
HOST = "127.0.0.1"

# Every setting of llama_cpp.server (0.3.36) is also read, case-insensitively, from an
# environment variable of the same name (pydantic-settings, no prefix), and __main__ lets
# HOST and PORT override --host/--port. A stray PORT or MODEL or CACHE in a developer's or
# CI's environment would silently change the server under test, so the child never sees them.
_SERVER_ENV = frozenset(
    """host port config_file ssl_keyfile ssl_certfile api_key interrupt_requests
    disable_ping_events root_path model model_alias n_gpu_layers split_mode main_gpu
    tensor_split vocab_only use_mmap use_mlock kv_overrides rpc_servers seed n_ctx n_batch
    n_ubatch n_threads n_threads_batch rope_scaling_type rope_freq_base rope_freq_scale
    yarn_ext_factor yarn_attn_factor yarn_beta_fast yarn_beta_slow yarn_orig_ctx mul_mat_q
    logits_all embedding offload_kqv flash_attn last_n_tokens_size lora_base lora_path numa
    chat_format chat_template_kwargs clip_model_path cache cache_type cache_size
    hf_tokenizer_config_path hf_pretrained_model_name_or_path hf_model_repo_id draft_model
    draft_model_num_pred_tokens type_k type_v verbose""".split()
)


@functools.cache
def available() -> str | None:
    """None when this interpreter can run the server; else why not, for a pytest skip or fail.

    It imports the server in a child process, not here: the native library is compiled for
    the CPU it was built on, and a wheel from another machine can die with SIGILL, which
    would take the whole test session with it. Cached: it costs about half a second.
    """
    code = ("import sys, llama_cpp, llama_cpp.server.app, uvicorn; "
            "sys.stdout.write(llama_cpp.__version__)")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot check llama-cpp-python[server] in {sys.executable}: {e}"
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        why = lines[-1] if lines else f"exit status {done.returncode}"
        if done.returncode == -signal.SIGILL:
            why = "illegal instruction: the wheel was built for another CPU"
        return (f"llama-cpp-python[server]=={VERSION} does not import in {sys.executable} ({why}); "
                f"install it with `{INSTALL_HINT}`")
    if done.stdout.strip() != VERSION:
        return (f"llama-cpp-python {done.stdout.strip()} is installed, the tests expect {VERSION}: "
                f"run `{INSTALL_HINT}`")
    return None


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS's pick); a race with other processes is possible."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class LlamaServerError(RuntimeError):
    """The server died or did not get ready in time; the message ends with its log's tail."""


class LlamaServer:
    """One `python -m llama_cpp.server` child process on 127.0.0.1, restartable on its port.

    `base_url` ("http://127.0.0.1:PORT/v1") is for OpenAI clients; `root` for the extras
    (`/extras/tokenize`, `/extras/detokenize`). `model_id` is the name /v1/models lists
    (the GGUF's path); any model name in a request is served by that one model anyway.
    """

    def __init__(self, gguf: Path, *, n_ctx: int = 2048, threads: int = 1, port: int | None = None,
                 extra_args: Sequence[str] = (), log_dir: Path, ready_timeout: float = 120.0,
                 warmup: bool = True) -> None:
        self.gguf = Path(gguf)
        self.n_ctx, self.threads, self.extra_args = n_ctx, threads, tuple(extra_args)
        self._fixed_port = port is not None
        self.port = port if port is not None else free_port()
        self.log_path = Path(log_dir) / "llama-server.log"
        self.ready_timeout, self.warmup = ready_timeout, warmup
        self.process: subprocess.Popen[bytes] | None = None
        self.model_id: str | None = None
        self.ready_s: float | None = None  # how long the last start took to answer

    @property
    def root(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/v1"

    def command(self) -> list[str]:
        # n_threads_batch defaults to every core: pin both, so tests share the CPU predictably
        # (ggml's threads spin while they wait: more threads than free cores is many times slower).
        # extra_args come last: argparse keeps the last value, so callers override ours.
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf),
                "--host", HOST, "--port", str(self.port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads),
                "--interrupt_requests", "false", *self.extra_args]

    def start(self) -> None:
        """Start the child and wait until it answers; retried on a new port if ours was taken."""
        if self.process is not None and self.process.poll() is None:
            raise LlamaServerError(f"the server is already running (pid {self.process.pid})")
        for attempt in range(3):
            self._spawn()
            try:
                self._wait_ready()
                return
            except LlamaServerError:
                self.kill()  # whatever state it is in: a failed start leaves no process behind
                if self._fixed_port or attempt == 2 or "address already in use" not in self.log_tail().lower():
                    raise
                self.port = free_port()  # lost the race for the port to another process

    def _spawn(self) -> None:
        env = {k: v for k, v in os.environ.items() if k.lower() not in _SERVER_ENV}
        env["PYTHONUNBUFFERED"] = "1"  # the log shows what happened up to a kill
        env["GGML_NO_BACKTRACE"] = "1"  # no gdb attaching to print a backtrace on abort
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(self.command())}\n".encode())
            log.flush()
            # own session = own process group: kill() reaches every child of the server too
            self.process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def _wait_ready(self) -> None:
        assert self.process is not None
        t0 = time.monotonic()
        deadline = t0 + self.ready_timeout
        while True:
            self._raise_if_dead("before it was ready")
            try:
                models = self._request("GET", "/v1/models", timeout=5)
                self.model_id = models["data"][0]["id"]
            except (OSError, ValueError, KeyError, IndexError):  # not listening yet
                pass
            else:
                self._check_identity()
                if self.warmup:
                    self._warm_up()
                self.ready_s = time.monotonic() - t0
                return
            if time.monotonic() > deadline:
                self.kill()
                raise LlamaServerError(f"llama_cpp.server was not ready after {self.ready_timeout:g} s"
                                       f" (log: {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.1)

    def _check_identity(self) -> None:
        """The answer came from our child, not from another server that holds the port."""
        args = list(self.extra_args)
        expected = args[args.index("--model_alias") + 1] if "--model_alias" in args[:-1] else str(self.gguf)
        self._raise_if_dead("before it was ready")
        if self.model_id != expected:
            self.kill()
            raise LlamaServerError(f"another server answers on {self.root} (it serves {self.model_id!r}, "
                                   f"not {expected!r})")

    def _warm_up(self) -> None:
        """One token after a prompt of a dozen tokens: the matrix kernels a test will use."""
        body = {"prompt": "<|im_start|>user\nSay hello to the world, in one line.<|im_end|>\n",
                "max_tokens": 1, "temperature": 0}
        try:
            self._request("POST", "/v1/completions", body, timeout=self.ready_timeout)
        except (OSError, ValueError) as e:
            self._raise_if_dead("on its first completion (a build that does not run on this CPU?)", grace=2.0)
            raise LlamaServerError(f"llama_cpp.server failed its first completion ({e}) (log: {self.log_path}):"
                                   f"\n{self.log_tail()}") from e

    def _raise_if_dead(self, when: str, grace: float = 0.0) -> None:
        """Raise (with the log's tail) if the child has exited, waiting up to `grace` seconds
        for it: a crash resets the connection a moment before the process is gone."""
        assert self.process is not None
        try:
            code = self.process.wait(grace) if grace else self.process.poll()
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            return
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with status {code}"
        raise LlamaServerError(f"llama_cpp.server {how} {when} (log: {self.log_path}):\n{self.log_tail()}")

    def _request(self, method: str, path: str, body: object = None, timeout: float = 30.0) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.root + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.load(resp)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the server (its whole process group) and reap it: a crash, as clients see one."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds: uvicorn's graceful shutdown first
        finishes every request it has accepted, queued ones included, which can take long."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def restart(self) -> None:
        """Stop (if still running) and start again on the same port, so clients' URLs stay valid."""
        self.stop()
        self._fixed_port = True  # clients hold base_url: never move
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@contextmanager
def llama_server(gguf: Path, *, n_ctx: int = 2048, threads: int = 1, port: int | None = None,
                 extra_args: Sequence[str] = (), ready_timeout: float = 120.0,
                 warmup: bool = True) -> Iterator[LlamaServer]:
    """A ready llama-cpp-python server on 127.0.0.1 serving `gguf`, stopped on exit whatever happens.

    `port` None picks a free one. `threads` sets both --n_threads and --n_threads_batch (the
    server's default takes half, resp. all, of the cores). `extra_args` go last on the command
    line (e.g. ["--chat_format", "chatml", "--seed", "0"]). The log lives in a temp folder,
    removed on a clean exit and kept (its path is in the error) when the server failed.
    Raises LlamaServerError when the server dies or is not ready within `ready_timeout`.
    """
    log_dir = Path(tempfile.mkdtemp(prefix="ontask-llama-server-"))
    server = LlamaServer(gguf, n_ctx=n_ctx, threads=threads, port=port, extra_args=extra_args,
                         log_dir=log_dir, ready_timeout=ready_timeout, warmup=warmup)
    failed = False
    try:
        server.start()
        yield server
    except LlamaServerError:
        failed = True
        raise
    finally:
        server.stop()
        if not failed:
            shutil.rmtree(log_dir, ignore_errors=True)
