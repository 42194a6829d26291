"""Client API keys of a team gateway (CLASP `-keys-file` / `CLASP_KEYS_FILE`, `[[keys]]` in the config file).

Each entry names one key and what it may do::

    [[keys]]
    name = "alice"                  # shown in /costs, metrics and errors (never the key itself)
    key_sha256 = "9f86d0..."        # hex SHA-256 of the key (or `key = "..."`, the key itself)
    rate_limit = 30                 # requests per minute (optional)
    burst = 10                      # back-to-back requests (default: rate_limit)
    models = ["sonnet", "haiku", "openai,gpt-4o*"]   # allowed models (default: all)
    daily_budget_usd = 5.0
    monthly_budget_usd = 100.0
    expires = 2027-01-31            # a date: valid through that day (UTC); or a datetime
    enabled = true

Parsing is pure; ``KeyFile`` keeps the current set and reloads it when the file changes (checked at
most every ``check_interval`` seconds, from the request path) or on SIGHUP. A broken file keeps the
keys in use and logs why, naming the entry but never a key value.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from clasp.config import TIERS, ConfigError, parse_document

__all__ = ["ApiKey", "KeyRing", "KeyFile", "parse_keys", "load_keys_file", "digest_of"]

log = logging.getLogger("clasp.keys")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_FIELDS = frozenset(("name", "key", "key_sha256", "rate_limit", "burst", "models", "daily_budget_usd",
                     "monthly_budget_usd", "expires", "enabled"))


def digest_of(key: str | bytes) -> bytes:
    """SHA-256 digest of a key as presented (UTF-8 for text)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key).digest()


@dataclass(frozen=True)
class ApiKey:
    """One client key and its limits. ``identity``: the bucket of the global -rate-limit limiter
    (None: the peer address, as without auth)."""
    name: str
    digest: bytes = field(default=b"", repr=False)
    identity: str | None = None
    rate_limit: int | None = None            # requests per minute
    burst: int | None = None
    models: tuple[str, ...] = ()              # allowed-model patterns; () = every model
    daily_budget_usd: float | None = None
    monthly_budget_usd: float | None = None
    expires_at: float | None = None          # epoch seconds (UTC); None = never
    expires_text: str = ""                   # as written, for the error message
    enabled: bool = True

    @property
    def has_budget(self) -> bool:
        return self.daily_budget_usd is not None or self.monthly_budget_usd is not None


@dataclass(frozen=True)
class KeyRing:
    """The keys in force: lookup by digest of the presented key."""
    by_digest: dict = field(default_factory=dict)
    by_name: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_name)


# ---------------------------------------------------------------- parsing

def _expiry(value: Any, where: str) -> tuple[float, str]:
    """(epoch seconds, text): a date is valid through that day (UTC), a datetime until then (UTC
    unless it names its offset)."""
    import datetime as _dt  # here: its C module adds ~0.45 MiB to every process, with or without keys
    if isinstance(value, str):
        text = value.strip()
        try:
            if len(text) == 10:
                value = _dt.date.fromisoformat(text)
            else:
                value = _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise ConfigError(f"{where}: expires must be a date (2027-01-31) or a datetime "
                              f"(2027-01-31T18:00:00Z), got {value!r}") from None
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.timestamp(), value.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, _dt.date):
        end = _dt.datetime(value.year, value.month, value.day, tzinfo=_dt.timezone.utc) + _dt.timedelta(days=1)
        return end.timestamp(), f"{value.isoformat()} (end of day UTC)"
    raise ConfigError(f"{where}: expires must be a date or a datetime")


def _number(entry: dict, name: str, where: str, kind: type) -> Any:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"{where}: {name} must be a number")
    if kind is int:
        if value != int(value) or value < 1:
            raise ConfigError(f"{where}: {name} must be a whole number of at least 1")
        return int(value)
    if value < 0 or value == float("inf"):
        raise ConfigError(f"{where}: {name} must be zero or more")
    return float(value)


def _models(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        raise ConfigError(f"{where}: models must be a list of model names or patterns")
    # tier words in any case; names and globs as written (model names are case-sensitive upstream)
    return tuple(p.strip().lower() if p.strip().lower() in TIERS else p.strip() for p in value)


def parse_key(entry: Any, where: str) -> ApiKey:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: each key must be a table/object")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name is required: letters, digits and . _ @ + - (at most 64)")
    where = f"{where} ({name!r})"
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (known: {', '.join(sorted(_FIELDS))})")
    key, key_hash = entry.get("key"), entry.get("key_sha256")
    if (key is None) == (key_hash is None):
        raise ConfigError(f"{where}: give exactly one of key or key_sha256")
    if key is not None:
        if not isinstance(key, str) or len(key.strip()) < 8 or key != key.strip():
            raise ConfigError(f"{where}: key must be a string of at least 8 characters without surrounding spaces")
        digest = digest_of(key)
    else:
        if not isinstance(key_hash, str) or not _HEX64.fullmatch(key_hash.strip()):
            raise ConfigError(f"{where}: key_sha256 must be 64 hex digits (sha256sum of the key)")
        digest = bytes.fromhex(key_hash.strip())
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: enabled must be true or false")
    rate = _number(entry, "rate_limit", where, int)
    burst = _number(entry, "burst", where, int)
    if burst is not None and rate is None:
        raise ConfigError(f"{where}: burst needs rate_limit (requests per minute)")
    expires_at, expires_text = (None, "")
    if entry.get("expires") not in (None, ""):
        expires_at, expires_text = _expiry(entry["expires"], where)
    return ApiKey(name=name, digest=digest, identity="name:" + name, rate_limit=rate,
                  burst=burst if burst is not None else rate, models=_models(entry.get("models"), where),
                  daily_budget_usd=_number(entry, "daily_budget_usd", where, float),
                  monthly_budget_usd=_number(entry, "monthly_budget_usd", where, float),
                  expires_at=expires_at, expires_text=expires_text, enabled=enabled)


def parse_keys(entries: Any, source: str, *, base: Iterable[ApiKey] = ()) -> KeyRing:
    """A KeyRing of ``base`` plus ``entries`` (a list of tables); ConfigError naming ``source``
    and the entry for anything wrong (never a key value)."""
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: keys must be a list of tables ([[keys]] in TOML, \"keys\": [...] in JSON)")
    by_digest: dict[bytes, ApiKey] = {}
    by_name: dict[str, ApiKey] = {}
    for k in base:
        if k.name in by_name:
            raise ConfigError(f"{source}: the key name {k.name!r} is used twice"
                              + (" ('default' is CLASP_AUTH_API_KEY's)" if k.name == "default" else ""))
        by_name[k.name] = k
        if k.digest:
            by_digest[k.digest] = k
    for i, entry in enumerate(entries, 1):
        k = parse_key(entry, f"{source}: keys entry #{i}")
        if k.name in by_name:
            raise ConfigError(f"{source}: keys entry #{i}: the name {k.name!r} is used twice"
                              + (" ('default' is CLASP_AUTH_API_KEY's)" if k.name == "default" else ""))
        if k.digest in by_digest:
            raise ConfigError(f"{source}: keys entry #{i} ({k.name!r}): the same key as {by_digest[k.digest].name!r}")
        by_name[k.name] = by_digest[k.digest] = k
    return KeyRing(by_digest, by_name)


def read_keys_document(path: str) -> list:
    """The list of key entries in a TOML or JSON file (``[[keys]]`` / ``{"keys": [...]}`` or a bare
    JSON list)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read keys file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"keys file {path}: not UTF-8 text") from None
    stripped = text.lstrip()
    json_format = not path.endswith(".toml") and (
        path.endswith(".json") or stripped.startswith("{") or (stripped.startswith("[") and not stripped.startswith("[[")))
    data = parse_document(text, json_format=json_format, label=f"keys file {path}",
                          json_hint='it as JSON ({"keys": [...]})')
    if isinstance(data, dict):
        extra = sorted(set(data) - {"keys"})
        if extra:
            raise ConfigError(f"keys file {path}: unknown top-level key {extra[0]!r} (expected [[keys]])")
        data = data.get("keys", [])
    return data


def load_keys_file(path: str, *, base: Iterable[ApiKey] = ()) -> KeyRing:
    return parse_keys(read_keys_document(path), f"keys file {path}", base=base)


# ---------------------------------------------------------------- the keys in force

class KeyFile:
    """The keys in force: ``base`` (CLASP_AUTH_API_KEY and the config file's [[keys]]) plus the
    keys file, reloaded when it changes or on ``reload()`` (SIGHUP)."""

    def __init__(self, path: str, base: Iterable[ApiKey] = (), *, check_interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.base = tuple(base)
        self.check_interval = check_interval
        self._clock = clock
        self.reloads = 0
        self.failures = 0
        self._signature = self._stat()
        self.ring = (load_keys_file(path, base=self.base) if path
                     else parse_keys([], "[[keys]] in the config file", base=self.base))
        self._checked = clock()

    def _stat(self) -> tuple | None:
        if not self.path:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def lookup(self, digest: bytes) -> ApiKey | None:
        """The key with this digest (reloading first when the file changed)."""
        if self.path and self._clock() - self._checked >= self.check_interval:
            self.maybe_reload()
        return self.ring.by_digest.get(digest)

    def maybe_reload(self) -> bool:
        self._checked = self._clock()
        signature = self._stat()
        if signature == self._signature:
            return False
        return self.reload(signature)

    def reload(self, signature: tuple | None = None) -> bool:
        """Read the file again; on any problem keep the keys in force and log why."""
        if not self.path:
            return False
        self._signature = signature if signature is not None else self._stat()
        self._checked = self._clock()
        try:
            ring = load_keys_file(self.path, base=self.base)
        except ConfigError as e:
            self.failures += 1
            log.warning("%s; keeping the %d keys in force", e, len(self.ring))
            return False
        self.ring = ring
        self.reloads += 1
        log.info("keys file %s reloaded: %d keys", self.path, len(ring))
        return True
