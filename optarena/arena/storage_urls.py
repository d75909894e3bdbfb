"""Storage URLs and what their failures say: the default SQLite file, the refusal of a storage the worker processes
cannot share, secrets redacted from every message, and a database's errors in the user's terms."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy


def default_storage_url(out_dir: str | os.PathLike[str]) -> str:
    """SQLite in ``out_dir``, the path escaped: a '?', '#' or '%' in a folder's name is part of the name."""
    database = str(Path(out_dir).resolve() / "arena.db")
    return sqlalchemy.engine.URL.create("sqlite", database=database).render_as_string(hide_password=False)


def check_shared(url: str) -> None:
    """Refuse a storage every worker process would get a private copy of: in-memory SQLite."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 - a URL that does not parse is refused, with its cause, when it is opened
        return
    memory = parsed.database in (None, "", ":memory:") or parsed.database.startswith("file::memory:") or \
        parsed.query.get("mode") == "memory"
    if parsed.get_backend_name() == "sqlite" and memory:
        raise ValueError(f"Invalid --storage: {redact(url)!r} is an in-memory SQLite database, which each worker "
                         "process would get its own empty copy of; name a file (sqlite:///path/arena.db) or leave "
                         "--storage out for OUT/arena.db")


_SECRET_QUERY = re.compile(r"((?:password|passwd|pwd|secret|token|sslpassword)=)[^&;\s]*", re.IGNORECASE)
#: A URL's user info: to the last '@' before the host (an unescaped '@' in the password), not past a '/' or a quote
_USERINFO = re.compile(r"(://[^:/@\s]*:)[^@\s]*@(?:[^@\s/'\"]*@)*")


def redact(text: str, url: str | None = None) -> str:
    """``text`` (a storage URL, or a message that may quote one) with every secret shown as ``***``: the password
    of ``url`` (or of a URL in ``text``) wherever it appears, and password-like query parameters. Works on URLs that
    do not parse."""
    secrets = []
    for candidate in filter(None, (url, text)):
        try:
            parsed = sqlalchemy.engine.make_url(candidate)
        except Exception:  # noqa: BLE001 - a malformed URL: the patterns below still apply
            continue
        if parsed.password:
            secrets.append(str(parsed.password))
            # an unescaped '@' (or '/' after it) in the password: SQLAlchemy reads a part of it as the host or the
            # database; the raw text between "user:" and the URL's last '@' is the whole password
            # the URL before its query: an '@' there (application_name=me@work) is no part of the password
            raw = re.match(r"[^:]+://[^:/@\s]*:([^\s'\"]*)@", candidate.split("?", 1)[0])
            if raw and "@" in f"{parsed.host}{parsed.database}":
                whole = raw.group(1)
                leaked = whole[len(str(parsed.password)):].lstrip("@")  # what it read as the host or database
                secrets += [whole, *filter(None, re.split(r"[@/]", leaked))]
    # longest first (a whole password before its parts); standalone only: a one-letter password must not star out
    # every word holding it
    for secret in sorted(secrets, key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])", "***", text)
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub(r"\1***@", text))


def explain(err: BaseException) -> str:
    """Why a storage URL could not be opened, in the user's terms."""
    chain, missing, scheme = err, None, None
    while chain is not None and missing is None:  # Optuna wraps the driver's import error in one of its own
        missing = chain.name if isinstance(chain, ModuleNotFoundError) else None
        if isinstance(chain, sqlalchemy.exc.NoSuchModuleError):  # "Can't load plugin: sqlalchemy.dialects:NAME"
            scheme = str(chain).rsplit(":", 1)[-1].strip().replace(".", "+")
        chain = chain.__cause__ or chain.__context__
    if missing is not None or isinstance(err, ImportError):
        hint = ("; pip install psycopg2-binary, or write postgresql:// for psycopg 3" if missing == "psycopg2" else
                "; for PostgreSQL: pip install 'psycopg[binary]'" if "psycopg" in str(missing) else "")
        return f"its database driver is not installed: no module named {missing!r}{hint}"
    if scheme is not None:  # postgres:// is what many hosting services hand out; SQLAlchemy knows postgresql://
        hint = "; write postgresql://" if scheme.split("+")[0] == "postgres" else ""
        return f"SQLAlchemy knows no database type {scheme!r} (sqlite, postgresql, mysql, ...){hint}"
    if isinstance(err, ValueError) and "invalid literal for int()" in str(err):
        return "its port is not a number"
    return _cause(err)


class StorageError(RuntimeError):
    """The storage could not be read or written while the comparison ran (disk full, server gone, ...)."""


def _cause(err: BaseException) -> str:
    """The first line of what the database driver said (under Optuna's and SQLAlchemy's wrappers), without the
    SQL that SQLAlchemy appends."""
    while err.__cause__ is not None:
        err = err.__cause__
    orig = getattr(err, "orig", None) or err
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {text}" if text else type(orig).__name__


def storage_call(doing: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a database failure in the decorated method into a ``StorageError`` that names the storage, what was being
    done (``doing``) and the driver's own message."""
    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
                cause = _cause(err)
                hint = " (is the disk full?)" if "full" in cause.lower() or "disk" in cause.lower() else ""
                raise StorageError(f"The storage {redact(self.url)!r} failed while {doing}: "
                                   f"{redact(cause, self.url)}{hint}") from None
        return wrapper
    return decorate
