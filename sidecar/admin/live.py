"""Commands given ``--db FILE`` while a sidecar writes FILE: find that sidecar, ask it.

DuckDB lets one process write a file and no other open it, even read-only. A sidecar writes
``FILE.admin.json`` (its admin URL, pid and the file's real path) once its admin API listens
and removes it on stop; a command that finds FILE locked reads it, checks that the pid lives
and names the same file, and sends its question to that admin API (``/v1/reports/KIND``,
``/v1/models``, ``/v1/audit``, ``/v1/check``), which answers from the sidecar's own database.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from sidecar.exit_codes import EXIT_USAGE, CommandError

__all__ = [
    "DISCOVERY_SUFFIX",
    "LiveError",
    "LiveSidecar",
    "discovery_path",
    "find_live_sidecar",
    "is_lock_error",
    "live_sidecar_for",
    "locked_files",
    "remove_discovery",
    "write_discovery",
]

log = logging.getLogger(__name__)

DISCOVERY_SUFFIX = ".admin.json"
#: How long a command waits for a sidecar that is starting or stopping (the file is locked
#: before its admin API listens, and after it stopped listening while the sink flushes).
SETTLE_S = 3.0
_PID = re.compile(r"\(PID (\d+)\)")
#: Longest wait for one answer: a report over weeks of records takes a while.
REQUEST_TIMEOUT_S = 600.0
#: Longest wait, in all, while the sidecar answers 429 (another report runs).
BUSY_WAIT_S = 120.0


class LiveError(CommandError):
    """A live sidecar could not be found or asked; ``exit_code`` says which kind (2 or 3)."""


@dataclass(frozen=True)
class LiveSidecar:
    """A running sidecar that writes ``db`` and answers at ``admin``."""

    admin: str
    pid: int
    db: str

    def get(self, path: str, query: Sequence[tuple[str, str]] = ()) -> tuple[str, str]:
        """GET ``path`` (with $SHADOWCAR_ADMIN_TOKEN when set); (content type, body text).
        Waits while the sidecar is busy with another report (429), up to BUSY_WAIT_S."""
        url = self.admin.rstrip("/") + path
        if query:
            url += "?" + urllib.parse.urlencode(list(query))
        headers = {"Accept": "application/json, text/html, text/plain"}
        token = os.environ.get("SHADOWCAR_ADMIN_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        deadline = time.monotonic() + BUSY_WAIT_S
        while True:
            request = urllib.request.Request(url, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as resp:
                    body = resp.read().decode("utf-8")
                    return resp.headers.get("Content-Type", ""), body
            except urllib.error.HTTPError as exc:
                detail = _detail(exc.read())
                if exc.code == 429 and time.monotonic() < deadline:
                    time.sleep(min(_retry_after(exc), max(0.0, deadline - time.monotonic())))
                    continue
                raise self._http_error(path, exc.code, detail) from None
            except (urllib.error.URLError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                raise LiveError(
                    f"{self.db} is written by a running sidecar (pid {self.pid}) whose admin API "
                    f"at {self.admin} did not answer: {reason}"
                ) from None

    def _http_error(self, path: str, status: int, detail: str) -> LiveError:
        where = f"the live sidecar (pid {self.pid}, {self.admin}) answered {path}"
        if status == 400:
            return LiveError(detail, EXIT_USAGE)
        if status in (401, 403):
            return LiveError(f"{where}: HTTP {status}: {detail} (set SHADOWCAR_ADMIN_TOKEN)",
                             EXIT_USAGE)
        if status == 404:
            return LiveError(f"{where}: HTTP 404: {detail} (a sidecar older than its command "
                             "line? stop it, or analyse its Parquet export)")
        return LiveError(f"{where}: HTTP {status}: {detail}")

    def get_json(self, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        _, body = self.get(path, query)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise LiveError(f"the live sidecar answered {path} with no JSON: {exc}") from None

    def report(self, kind: str, query: Sequence[tuple[str, str]]) -> str:
        """The text of one report (its format is one of the query's options)."""
        _, body = self.get(f"/v1/reports/{urllib.parse.quote(kind, safe='')}", query)
        return body


def _detail(raw: bytes) -> str:
    try:
        data = json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace").strip()
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return json.dumps(data)


def _retry_after(exc: urllib.error.HTTPError) -> float:
    try:
        return max(0.1, min(float(exc.headers.get("Retry-After", "1")), 10.0))
    except ValueError:
        return 1.0


def discovery_path(db: str) -> str:
    """Where the discovery file of DuckDB file ``db`` lives (beside it)."""
    return db + DISCOVERY_SUFFIX


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def write_discovery(db: str, admin_url: str) -> str | None:
    """Write ``db``'s discovery file for this process; its path, or None when it cannot be
    written (a read-only directory: the sidecar serves on, commands just cannot find it)."""
    if db == ":memory:" or not db:
        return None
    path = discovery_path(db)
    body = {"admin": admin_url, "pid": os.getpid(), "db": os.path.realpath(db),
            "started": time.time()}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(body, handle)
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half
    except OSError as exc:
        log.warning("cannot write the discovery file %s: %s; commands given --db %s will "
                    "not find this sidecar's admin API", path, exc, db)
        with contextlib.suppress(OSError):
            os.remove(tmp)
        return None
    return path


def remove_discovery(db: str) -> None:
    """Remove ``db``'s discovery file when this process wrote it (not a successor's)."""
    if db == ":memory:" or not db:
        return
    path = discovery_path(db)
    found = _read(path)
    if found is not None and found.pid == os.getpid():
        with contextlib.suppress(OSError):
            os.remove(path)


def _read(path: str) -> LiveSidecar | None:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return LiveSidecar(admin=str(data["admin"]), pid=int(data["pid"]), db=str(data["db"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def find_live_sidecar(db: str, *, settle_s: float = SETTLE_S) -> LiveSidecar | None:
    """The live sidecar writing ``db``, from its discovery file; None when there is none.

    A file left by a crashed sidecar (dead pid) or naming another database is ignored. When
    ``db`` is still locked but no discovery file answers, waits up to ``settle_s`` for a
    sidecar that is starting (then it appears) or stopping (then the lock goes: None).
    """
    deadline = time.monotonic() + settle_s
    while True:
        found = _read(discovery_path(db))
        if found is not None and _alive(found.pid) and _same_file(found.db, db):
            return found
        if time.monotonic() >= deadline or not _still_locked(db):
            return None
        time.sleep(0.1)


def _still_locked(db: str) -> bool:
    try:
        con = duckdb.connect(db, read_only=True)
    except duckdb.Error as exc:
        return is_lock_error(exc)
    con.close()
    return False


def is_lock_error(exc: BaseException | None) -> bool:
    """True when ``exc`` (or an exception it was raised from) is DuckDB's file-lock error."""
    seen = 0
    while exc is not None and seen < 8:  # bounded walk of the cause chain
        if isinstance(exc, duckdb.IOException) and "lock" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def lock_holder(exc: BaseException) -> int | None:
    """The pid DuckDB names as holding the lock, when it says."""
    match = _PID.search(str(exc.__cause__ or exc))
    return int(match.group(1)) if match else None


def live_sidecar_for(db: str, opening: BaseException) -> LiveSidecar | None:
    """The live sidecar to ask instead of opening ``db`` (a path or a glob of segments),
    given the error opening it raised; None when that error was not a lock (it stands).

    Raises :class:`LiveError` (exit 3) when the file is locked and no sidecar answers for
    it, or when several segment files are: a live report reads one sidecar's file.
    """
    if not is_lock_error(opening):
        return None
    locked = list(locked_files(db))
    if not locked:
        raise LiveError(f"{db} was locked and is free now (its sidecar stopped?): run the "
                        "command again")
    if len(locked) != 1 or (locked[0] != db and len(_matches(db)) > 1):
        names = ", ".join(locked) or db
        raise LiveError(
            f"{names}: written by running sidecars. A live sidecar answers for its own file "
            "only: give one segment (--db FILE) to ask its worker, or analyse the Parquet "
            "export (storage.export.dir) or the files once the sidecar stops"
        )
    found = find_live_sidecar(locked[0])
    if found is None:
        holder = lock_holder(opening)
        who = f"process {holder}" if holder else "another process"
        raise LiveError(
            f"{locked[0]} is locked by {who} and no sidecar's admin API answers for it (no "
            f"live {discovery_path(locked[0])}: a sidecar without admin.listen, or another "
            "program). Enable the admin API, analyse the Parquet export, or read the file "
            "once the writer stops"
        )
    return found


def _matches(pattern: str) -> list[str]:
    import glob

    return [pattern] if os.path.isfile(pattern) else sorted(glob.glob(pattern))


def locked_files(pattern: str) -> Iterator[str]:
    """The files ``pattern`` (a path or a glob of segments) names that another process locks."""
    for file in _matches(pattern):
        if _still_locked(file):
            yield file
