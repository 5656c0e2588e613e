"""Start the gateway's real processes (fake_llm, Daphne, Celery worker) as subprocesses.

Used by the end-to-end tests and the benchmarks. Each process logs to a file; ``Stack.stop()``
ends them all (SIGTERM, then SIGKILL). Nothing here is imported by the gateway itself.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
_worker_numbers = itertools.count(1)  # Celery node names, unique in this process
PYTHON = sys.executable
BIN = Path(PYTHON).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path
    port: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 30.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (found := re.search(pattern, self.log())) is not None:
                return found
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not log {pattern!r} (exit {self.popen.poll()}):\n{self.log()[-4000:]}")

    def wait_for_closed(self, url: str, timeout: float = 30.0) -> None:
        """Until ``url`` no longer connects (the server stopped listening)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2):
                    pass
            except urllib.error.HTTPError:
                pass  # still serving
            except OSError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} still answers {url}")

    def wait_for_http(self, url: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} (exit {self.popen.poll()}):\n{self.log()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up (for fault tests)."""
        self.stop(signal.SIGKILL)


# The production server's options (the Dockerfile's CMD says the same): no access log (the gateway
# keeps its own request log); no lifespan (Django's ASGI app has none); X-Forwarded-For left to the
# gateway's own GATEWAY_TRUSTED_PROXIES rule, never rewritten into the client address by uvicorn;
# h11, whose 16 KiB --h11-max-incomplete-event-size bounds a request's head (httptools keeps any
# amount); websocket messages bounded at 1 MiB as Daphne bounds them (uvicorn's default: 16 MiB).
UVICORN_OPTIONS = ("--no-access-log", "--lifespan", "off", "--no-proxy-headers",
                   "--http", "h11", "--ws-max-size", "1048576")
# granian for the HTTP doors only (docs/decisions/asgi-server.md): Django's ASGI app has no lifespan
# (``asginl``); no websockets (it cannot bound a message below 16 MiB; uvicorn or Daphne serve
# /ws/); a request's head bounded at 16 KiB, as h11's; one worker process, HTTP/1.1, no access log.
GRANIAN_OPTIONS = ("--interface", "asginl", "--no-ws", "--http1-buffer-size", "16384", "--workers", "1",
                   "--http", "1", "--loop", "uvloop", "--no-access-log")


@dataclass
class Stack:
    """A set of processes sharing one environment (database, Redis, provider URL)."""

    env: dict[str, str]
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gateway-stack-")))
    processes: list[Process] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str | None] | None = None) -> Process:
        log_path = self.log_dir / f"{name}-{len(self.processes)}.log"
        merged = {k: v for k, v in {**self.env, **(env or {})}.items() if v is not None}  # None: unset it
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                args, cwd=BASE_DIR, env=merged, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def manage(self, *args: str, timeout: float = 120.0) -> str:
        """Run a management command to completion; returns its stdout."""
        done = subprocess.run(
            [PYTHON, "manage.py", *args], cwd=BASE_DIR, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def fake_llm(self, *extra: str) -> str:
        """Start the LLM stand-in; returns its base URL (``http://127.0.0.1:PORT/v1``)."""
        process = self.spawn("fake_llm", [PYTHON, "manage.py", "fake_llm", "--port", "0", *extra])
        return process.wait_for_log(r"listening on (http://\S+/v1)").group(1)

    def daphne(self, port: int | None = None, env: dict[str, str] | None = None) -> str:
        """Start one Daphne process; returns its base URL once /healthz answers."""
        port = port or free_port()
        process = self.spawn(
            "daphne", [str(BIN / "daphne"), "-v", "0", "-b", "127.0.0.1", "-p", str(port),
                       "gateway_project.asgi:application"],  # -v 0: no access log, as in production
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        process.wait_for_http(f"{url}/healthz")
        return url

    def uvicorn(self, port: int | None = None, env: dict[str, str] | None = None,
                options: tuple[str, ...] = UVICORN_OPTIONS) -> str:
        """Start one uvicorn process on the same ASGI app, as the production image does (Dockerfile);
        returns its base URL once /healthz answers."""
        port = port or free_port()
        process = self.spawn(
            "uvicorn", [str(BIN / "uvicorn"), *options, "--host", "127.0.0.1", "--port", str(port),
                        "--log-level", "warning", "gateway_project.asgi:application"],
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        process.wait_for_http(f"{url}/healthz")
        return url

    def granian(self, port: int | None = None, env: dict[str, str] | None = None,
                options: tuple[str, ...] = GRANIAN_OPTIONS) -> str:
        """Start granian on the same ASGI app (a supervisor process and one worker process under
        it); returns its base URL once /healthz answers."""
        port = port or free_port()
        process = self.spawn(
            "granian", [str(BIN / "granian"), *options, "--log-level", "warning", "--host", "127.0.0.1",
                        "--port", str(port), "gateway_project.asgi:application"],
            env=env,
        )
        url = f"http://127.0.0.1:{port}"
        process.wait_for_http(f"{url}/healthz")
        return url

    def worker(self, concurrency: int = 8, env: dict[str, str] | None = None, pool: str = "threads") -> Process:
        """Start a Celery worker on the gateway queue; returns once it is ready.

        ``pool`` is Celery's execution pool: ``threads`` (the default here) or ``gevent`` (thousands
        of runs in flight per process; the production choice, docs/decisions/reply-bus.md).
        """
        queue = {**self.env, **(env or {})}.get("GATEWAY_AGENT_QUEUE", "gateway")
        process = self.spawn(
            "celery",
            [str(BIN / "celery"), "-A", "gateway_project", "worker", "-P", pool, "-c", str(concurrency),
             "-Q", queue, "-l", "INFO", "--without-mingle", "--without-gossip", "--without-heartbeat",
             # A node name of its own: on RabbitMQ a worker's remote-control queue is exclusive to
             # its name, so a second worker named celery@<host> would not start.
             "-n", f"worker{next(_worker_numbers)}-{os.getpid()}@%h"],
            env=env,
        )
        process.wait_for_log(r"ready\.", timeout=60)
        return process

    def beat(self, env: dict[str, str] | None = None) -> Process:
        """Start celery beat (the periodic requeue of stuck messages); returns once it runs."""
        process = self.spawn(
            "beat",
            [str(BIN / "celery"), "-A", "gateway_project", "beat", "-l", "INFO",
             "-s", str(self.log_dir / "beat-schedule"), "--pidfile="],
            env=env,
        )
        process.wait_for_log(r"beat: Starting", timeout=60)
        return process

    def redis(self, port: int | None = None) -> Process:
        """A private redis-server (no persistence) on ``port`` (a free one by default)."""
        port = port or free_port()
        process = self.spawn("redis", [shutil.which("redis-server") or "redis-server", "--port", str(port),
                                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        process.wait_for_log(r"Ready to accept connections", timeout=20)
        process.port = port
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} ({p.log_path})\n{p.log()[-3000:]}" for p in self.processes)


def base_env(**overrides: str) -> dict[str, str]:
    """This environment minus anything that would point children at another database or Redis."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"DATABASE_URL", "REDIS_URL", "GATEWAY_AGENT_DISPATCH", "CELERY_BROKER_URL"}}
    env.update({"PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "gateway_project.settings"})
    env.update(overrides)
    return env


def database_url(db: dict) -> str:
    """A DATABASE_URL for a Django DATABASES entry (PostgreSQL)."""
    auth = db.get("USER") or "postgres"
    if db.get("PASSWORD"):
        auth += f":{db['PASSWORD']}"
    return f"postgres://{auth}@{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"


def http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 30):
    """(status, parsed JSON or text, headers) — errors are answers too, not exceptions."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, response_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, raw, response_headers = error.code, error.read(), error.headers
    try:
        return status, json.loads(raw), response_headers
    except ValueError:
        return status, raw.decode(errors="replace"), response_headers


def visitor_token(base_url: str, slug: str) -> str:
    _status, page, _headers = http("GET", f"{base_url}/chat/{slug}/")
    return json.loads(re.search(r'id="visitor-token" type="application/json">(.*?)</script>', page).group(1))


class PrivatePostgres:
    """A throwaway PostgreSQL cluster in a temp dir, on its own port: safe to stop and restart.

    Fault tests restart *this* server, never a shared one. As root, the cluster is owned by and run
    as the ``postgres`` OS user (PostgreSQL refuses to run as root).
    """

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "postgres.log"
        self.bin = _postgres_bin()
        self._as = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed:\n{done.stdout}\n{done.stderr}\n{self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.log_path), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects clients cleanly; ``immediate`` is a crash (recovery on next start)."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def create_database(self, name: str) -> str:
        """Create ``name``; returns its DATABASE_URL."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, name: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _postgres_bin() -> Path:
    """The newest /usr/lib/postgresql/<v>/bin, else wherever pg_ctl is on PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if versions:
        return versions[-1].parent
    found = shutil.which("pg_ctl")
    if found is None:
        raise RuntimeError("PostgreSQL server binaries (pg_ctl, initdb) are not installed")
    return Path(found).resolve().parent


class PrivateRabbitMQ:
    """A throwaway RabbitMQ node in a temp dir, on its own ports: safe to stop, kill and restart.

    Fault tests restart *this* node, never a shared one. It reads none of the system's RabbitMQ
    configuration (its own empty rabbitmq-env.conf and rabbitmq.conf, no plugins) and keeps its node
    name, data, logs and Erlang cookie (``HOME``) in its own directory, so it can neither clash with nor
    talk to a system node. Its data survives ``stop()`` / ``kill()`` and ``start()`` again, as a real
    restart's would. The shared epmd (or one this node starts) only maps node names to ports.
    """

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.dist_port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-rabbitmq-"))
        self.node = f"gateway{self.port}@localhost"
        self.log_path = self.dir / "rabbitmq.log"
        self.bin = _rabbitmq_bin()
        (self.dir / "home").mkdir()
        (self.dir / "rabbitmq-env.conf").write_text("")
        (self.dir / "rabbitmq.conf").write_text("")
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.popen: subprocess.Popen | None = None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.dir / "home"),  # the Erlang cookie is created here
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_LOGS": "-",  # to stdout, i.e. self.log_path
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        return env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 90.0) -> None:
        """Start the node (again, on the same data); returns once it accepts AMQP connections."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            # A session of its own: the script runs the Erlang VM as a child, which kill() must reach.
            self.popen = subprocess.Popen([str(self.bin / "rabbitmq-server")], env=self._env(), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
                                          start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Server startup complete" in self.log()[offset:]:
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"RabbitMQ node {self.node} did not start (exit {self.popen.poll()}):\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 60.0) -> None:
        """A clean shutdown (SIGTERM; the script waits for the VM): queues and persistent messages
        are on disk."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the script and the VM: a crash; what the node had not yet written to disk is gone."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(10)
        deadline = time.monotonic() + 10  # the VM is the script's child: gone once its port is free
        while time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.1)

    def ctl(self, *args: str) -> str:
        """Run ``rabbitmqctl`` against this node; returns its stdout."""
        done = subprocess.run([str(self.bin / "rabbitmqctl"), "-q", *args], env=self._env(), capture_output=True,
                              text=True, timeout=60, cwd=self.dir)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def add_vhost(self, name: str) -> str:
        """Create an empty vhost the guest user may use; returns its broker URL."""
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.url(name)

    def url(self, vhost: str = "/") -> str:
        from urllib.parse import quote

        return f"amqp://guest:guest@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def destroy(self) -> None:
        try:
            self.kill()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _rabbitmq_bin() -> Path:
    """The directory of the real rabbitmq-server script (Debian's /usr/sbin one is a wrapper that
    switches to the rabbitmq user and writes to the system's log files)."""
    for candidate in (Path("/usr/lib/rabbitmq/bin"), Path("/usr/local/lib/rabbitmq/bin")):
        if (candidate / "rabbitmq-server").exists():
            return candidate
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise RuntimeError("RabbitMQ (rabbitmq-server) is not installed")
    return Path(found).resolve().parent
