"""A real ``docker-registry`` (distribution 2.8.2) on 127.0.0.1, started and always stopped.

Pull tests run against the registry real clusters use, so its quirks (401 challenges,
upload Location headers, Range answers, manifest validation) are the real ones.

Auth modes:

- ``None``: anonymous pull and push.
- ``"token"``: distribution token auth; a ``TokenServer`` in this process issues the tokens.
- ``"basic"``: htpasswd (bcrypt) auth; distribution 2.8.2 accepts it over plain HTTP.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Mapping
from types import TracebackType
from typing import Any, Literal, Self

from tests.support.token_server import TokenServer

BINARY = "/usr/bin/docker-registry"
HTPASSWD = "/usr/bin/htpasswd"
AuthMode = Literal["token", "basic"]
#: The credentials tests use unless they say otherwise.
DEFAULT_USERS: Mapping[str, str] = {"tester": "s3cret-pw"}
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

_running: set[Registry] = set()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Registry:
    """One ``docker-registry serve`` process whose files all live under ``root_dir``.

    ``root_dir`` holds ``config.yml``, ``registry.log`` (its output, for failure messages)
    and ``storage/`` (the filesystem driver's root). ``users`` are the credentials for the
    token and basic modes; the token options are passed to ``TokenServer``.
    """

    def __init__(
        self,
        root_dir: str,
        *,
        auth: AuthMode | None = None,
        users: Mapping[str, str] | None = None,
        readonly_users: Collection[str] = (),
        anonymous_pull: Collection[str] = (),
        token_expires_in: int = 300,
    ) -> None:
        self.root_dir = os.path.abspath(root_dir)
        self.storage_dir = os.path.join(self.root_dir, "storage")
        self.config_path = os.path.join(self.root_dir, "config.yml")
        self.log_path = os.path.join(self.root_dir, "registry.log")
        self.auth = auth
        self.users = dict(DEFAULT_USERS if users is None else users)
        self.token_server: TokenServer | None = None
        if auth == "token":
            self.token_server = TokenServer(
                self.users,
                readonly_users=readonly_users,
                anonymous_pull=anonymous_pull,
                expires_in=token_expires_in,
            )
        self.host = ""
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The registry process's pid while it runs."""
        return self._process.pid if self._process is not None else None

    def blob_path(self, digest: str) -> str:
        """Where the filesystem driver keeps the blob ``digest`` ("sha256:<hex>")."""
        algorithm, _, hex_digest = digest.partition(":")
        return os.path.join(
            self.storage_dir,
            "docker/registry/v2/blobs",
            algorithm,
            hex_digest[:2],
            hex_digest,
            "data",
        )

    def start(self) -> Self:
        os.makedirs(self.storage_dir, exist_ok=True)
        if self.token_server is not None:
            self.token_server.start()
        try:
            for attempt in range(3):  # the free port can be taken before the registry binds it
                port = _free_port()
                self.host = f"127.0.0.1:{port}"
                self.url = f"http://{self.host}"
                self._write_config(port)
                self._spawn()
                if self._wait_ready() or attempt == 2:
                    break
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"docker-registry did not start:\n{self.log()}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the registry (kill it if it lingers) and stop the token server."""
        process, self._process = self._process, None
        if process is not None:
            _running.discard(self)
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self.token_server is not None:
            self.token_server.stop()

    def log(self) -> str:
        """What the registry printed so far (warnings and errors only)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _write_config(self, port: int) -> None:
        config: dict[str, Any] = {
            "version": "0.1",
            "log": {"level": "warn", "accesslog": {"disabled": True}, "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": self.storage_dir},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            # A fixed secret silences the "generated random secret" warning.
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
            "health": {"storagedriver": {"enabled": False}},
        }
        if self.token_server is not None:
            cert_path = os.path.join(self.root_dir, "token-ca.pem")
            with open(cert_path, "wb") as f:
                f.write(self.token_server.certificate_pem)
            config["auth"] = self.token_server.registry_config(cert_path)
        elif self.auth == "basic":
            config["auth"] = {
                "htpasswd": {"realm": "model-agent-test", "path": self._write_htpasswd()}
            }
        with open(self.config_path, "w") as f:
            json.dump(config, f, indent=2)  # JSON is YAML

    def _write_htpasswd(self) -> str:
        path = os.path.join(self.root_dir, "htpasswd")
        lines = [
            subprocess.run(
                [HTPASSWD, "-Bbn", user, password],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            for user, password in self.users.items()
        ]
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        return path

    def _spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [BINARY, "serve", self.config_path],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},  # no REGISTRY_* overrides
            )
        _running.add(self)

    def _wait_ready(self) -> bool:
        """True once ``GET /v2/`` answers (401 counts); False if the process exited."""
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._process = None
                _running.discard(self)
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.02)
        raise TimeoutError(f"docker-registry did not answer in {START_TIMEOUT}s:\n{self.log()}")


@contextlib.contextmanager
def running_registry(
    tmp_dir: str | os.PathLike[str],
    auth: AuthMode | None = None,
    users: Mapping[str, str] | None = None,
    **options: Any,
) -> Iterator[Registry]:
    """A started ``Registry`` rooted in ``tmp_dir``/registry, stopped on exit.

    ``options`` are ``Registry``'s keyword arguments (``readonly_users``, ...).
    """
    registry = Registry(os.path.join(tmp_dir, "registry"), auth=auth, users=users, **options)
    with registry:
        yield registry


@atexit.register
def _stop_leftovers() -> None:
    """The last line of defence: a registry a test forgot to stop dies with the interpreter."""
    for registry in list(_running):
        registry.stop()
