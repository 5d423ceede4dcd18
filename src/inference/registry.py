"""The backend registry: who is installed, who can run, who loads this model.

Backends arrive through the ``inference.backends`` entry-point group (the
built-in ``openai`` backend too) or :func:`register_backend`. The group is
read once; each entry stays a dotted string until it is needed and is then
imported at most once. A backend whose import or ``available()`` raises is
kept, marked broken with its error, and never breaks the others.

Selection, in order: the ``backend`` option; the ``INFERENCE_BACKEND``
environment variable (neither is ever overridden); else the available
backends that load the model's format, tried by their ``priority`` (each
backend's own; docs/backends.md tabulates them): the first whose optional
``check_model(path, header)`` does not decline the model loads it. The header
is read once, before any weights.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import importlib.metadata

    from .gguf import GGUFHeader

from . import env
from .discovery import detect_format
from .errors import (
    BackendNotFoundError,
    BackendUnavailableError,
    ModelLoadError,
    NoBackendError,
    UnsupportedOptionError,
)
from .options import LoadConfig, Option, load_config
from .protocols import Backend, TextModel

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackendStatus",
    "Candidate",
    "backend_status",
    "candidates",
    "default_backend",
    "get_backend",
    "install_command",
    "list_backends",
    "load_model",
    "register_backend",
]

ENTRY_POINT_GROUP = "inference.backends"

#: The backends this project ships, best first for install hints: name ->
#: (the extra that installs it, the formats it loads). The one place these
#: facts live: the hints below, each backend's own messages and ``extra``.
_FIRST_PARTY: Mapping[str, tuple[str, tuple[str, ...]]] = MappingProxyType(
    {
        "llama_cpp": ("llamacpp", ("gguf",)),
        "rocm": ("rocm", ("gguf",)),
        "mlx": ("mlx", ("gguf", "safetensors")),
    }
)

#: Backend name -> the extra that installs it: ``pip install 'inference[extra]'``.
KNOWN_EXTRAS: Mapping[str, str] = MappingProxyType(
    {name: extra for name, (extra, _) in _FIRST_PARTY.items()}
)

#: Model format -> extras that can load it, best first.
FORMAT_EXTRAS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        fmt: tuple(extra for extra, formats in _FIRST_PARTY.values() if fmt in formats)
        for fmt in dict.fromkeys(f for _, formats in _FIRST_PARTY.values() for f in formats)
    }
)


def install_command(name: str) -> str:
    """``pip install 'inference[extra]'`` for a first-party backend."""
    return f"pip install 'inference[{KNOWN_EXTRAS[name]}]'"


_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """What ``inference backends`` shows for one backend."""

    name: str
    available: bool
    reason: str
    priority: int
    formats: tuple[str, ...]
    broken: bool = False
    aliases: tuple[str, ...] = ()
    #: The extra that installs it: ``pip install 'inference[extra]'`` ("" if none).
    extra: str = ""


class _Entry:
    """One registered backend: an entry point not yet imported, or the object."""

    __slots__ = ("backend", "error", "name", "point")

    def __init__(
        self,
        name: str,
        point: importlib.metadata.EntryPoint | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.name = name
        self.point = point
        self.backend = backend
        self.error: BaseException | None = None


_lock = threading.RLock()
_entries: dict[str, _Entry] = {}
_aliases: dict[str, str] = {}
_scanned = False


def _scan() -> None:
    """Read the entry-point group, once."""
    global _scanned
    if _scanned:
        return
    with _lock:
        if _scanned:
            return
        import importlib.metadata

        try:
            points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken distribution's metadata
            _log.warning("could not read the %s entry points: %s", ENTRY_POINT_GROUP, exc)
            points = importlib.metadata.EntryPoints(())
        for point in points:
            if point.name not in _entries:
                _entries[point.name] = _Entry(point.name, point=point)
        _scanned = True


def _materialise(obj: Any, where: str) -> Backend:
    """Turn an entry point's object (instance, class or factory) into a Backend."""
    if not _looks_like_backend(obj) and callable(obj):
        obj = obj()
    if not _looks_like_backend(obj):
        raise TypeError(f"{where} is not a backend: it needs name, available() and load_model()")
    return obj  # type: ignore[no-any-return]


def _looks_like_backend(obj: Any) -> bool:
    return (
        not isinstance(obj, type)
        and isinstance(getattr(obj, "name", None), str)
        and callable(getattr(obj, "available", None))
        and callable(getattr(obj, "load_model", None))
    )


def _load(entry: _Entry) -> Backend | None:
    """Import an entry's backend, once; keep the error if it fails."""
    if entry.backend is not None or entry.error is not None:
        return entry.backend
    with _lock:
        if entry.backend is not None or entry.error is not None:
            return entry.backend
        assert entry.point is not None
        try:
            backend = _materialise(entry.point.load(), f"entry point {entry.point.value!r}")
        except Exception as exc:
            _log.debug("backend %r failed to load: %s", entry.name, exc)
            entry.error = exc
            return None
        entry.backend = backend
        for alias in _attr_tuple(backend, "aliases"):
            _aliases.setdefault(alias, entry.name)
        return backend


def _resolve(name: str) -> _Entry | None:
    _scan()
    with _lock:
        entry = _entries.get(name)
        if entry is None and name in _aliases:
            entry = _entries.get(_aliases[name])
        if entry is None:
            # An alias may be declared by a backend not yet imported.
            for other in list(_entries.values()):
                if other.backend is None and other.error is None and other.point is not None:
                    _load(other)
                    if name in _aliases:
                        return _entries.get(_aliases[name])
        return entry


def register_backend(backend: Backend | type | Any, *, name: str | None = None) -> None:
    """Register a backend object (or class, or factory) under its ``name``.

    A later registration under the same name replaces the earlier one.
    """
    obj = _materialise(backend, repr(backend))
    key = name or obj.name
    _scan()
    with _lock:
        _entries[key] = _Entry(key, backend=obj)
        for alias in _attr_tuple(obj, "aliases"):
            _aliases[alias] = key


def unregister_backend(name: str) -> None:
    """Remove a backend (used by tests)."""
    _scan()
    with _lock:
        _entries.pop(name, None)
        for alias, target in list(_aliases.items()):
            if target == name:
                del _aliases[alias]


def list_backends() -> list[str]:
    """Names of every registered backend, imported or not; sorted."""
    _scan()
    with _lock:
        return sorted(_entries)


def get_backend(name: str) -> Backend | None:
    """The backend called ``name`` (or an alias), or None if none is registered.

    Raises :class:`BackendUnavailableError` when it is registered but its
    plugin fails to import.
    """
    entry = _resolve(name)
    if entry is None:
        return None
    backend = _load(entry)
    if backend is None:
        raise BackendUnavailableError(
            f"backend {entry.name!r} is installed but broken: {_describe(entry.error)}",
            backend=entry.name,
            reason=_describe(entry.error),
        ) from entry.error
    return backend


def _attr_tuple(backend: Any, attr: str) -> tuple[str, ...]:
    try:
        value = getattr(backend, attr, ())
    except Exception:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, Iterable) else ()


def _priority(backend: Any) -> int:
    try:
        value = getattr(backend, "priority", 0)
        return int(value() if callable(value) else value)
    except Exception:
        return 0


def _reason(backend: Any) -> str:
    try:
        value = getattr(backend, "reason", "")
        value = value() if callable(value) else value
        return str(value or "")
    except Exception as exc:
        return f"reason unavailable: {_describe(exc)}"


def _extra(backend: Any, name: str) -> str:
    """The extra that installs the backend: its ``extra``, else a known one."""
    try:
        value = getattr(backend, "extra", "")
        value = value() if callable(value) else value
    except Exception:
        value = ""
    return value if isinstance(value, str) and value else KNOWN_EXTRAS.get(name, "")


def _install_hint(reason: str, extra: str) -> str:
    """`` (pip install 'inference[extra]')`` for a broken plugin (reinstalling
    it is the fix), unless the reason already says it."""
    if not extra or f"inference[{extra}]" in reason:
        return ""
    return f" (pip install 'inference[{extra}]')"


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    return f"{type(exc).__name__}: {exc}"


def _check(backend: Backend) -> tuple[bool, str, bool]:
    """(available, reason, broken), never raising."""
    try:
        ok = bool(backend.available())
    except Exception as exc:
        return False, f"available() raised {_describe(exc)}", True
    return ok, _reason(backend), False


def _status(entry: _Entry) -> BackendStatus:
    backend = _load(entry)
    if backend is None:
        return BackendStatus(
            entry.name,
            False,
            f"failed to load: {_describe(entry.error)}",
            0,
            (),
            broken=True,
            extra=KNOWN_EXTRAS.get(entry.name, ""),
        )
    ok, reason, broken = _check(backend)
    return BackendStatus(
        entry.name,
        ok,
        reason,
        _priority(backend),
        _attr_tuple(backend, "formats"),
        broken=broken,
        aliases=_attr_tuple(backend, "aliases"),
        extra=_extra(backend, entry.name),
    )


def backend_status() -> list[BackendStatus]:
    """Every registered backend with whether it can run here and why (not).

    This imports each backend's plugin module, but backends must not import
    their engines to answer.
    """
    _scan()
    with _lock:
        entries = list(_entries.values())
    return sorted((_status(e) for e in entries), key=lambda s: (-s.priority, s.name))


def _format_of(path: str | os.PathLike[str]) -> str | None:
    text = os.fspath(path)
    fmt = detect_format(text)
    if fmt == "url":
        return fmt
    if not os.path.exists(text):
        raise ModelLoadError(f"{text}: no such file or directory", path=text)
    return fmt


def _shown(path: str | os.PathLike[str]) -> str:
    """``path`` as it may appear in a log: a URL without credentials or fragment."""
    text = os.fspath(path)
    if detect_format(text) != "url":
        return text
    from .redact import shown_url

    return shown_url(text)


def _not_a_model(path: str) -> ModelLoadError:
    if os.path.isdir(path):
        what = (
            "a directory with no model weights"
            " (expected config.json and *.safetensors, or a .gguf file)"
        )
    else:
        what = (
            "not a model file in a known format"
            " (expected a .gguf file or a directory with config.json and *.safetensors)"
        )
    return ModelLoadError(f"{path}: {what}", path=path)


def _extras_hint(fmt: str | None) -> str:
    extras = FORMAT_EXTRAS.get(fmt or "", tuple(dict.fromkeys(KNOWN_EXTRAS.values())))
    if not extras:
        return ""
    commands = " or ".join(f"pip install 'inference[{e}]'" for e in extras)
    return f"; install a backend with {commands}"


def default_backend(path: str | os.PathLike[str] | None = None) -> Backend:
    """The backend :func:`load_model` would use for ``path`` (any format if None).

    Honours ``INFERENCE_BACKEND``; otherwise the first backend, in priority
    order, that is available, takes the model's format and does not decline
    the model in its ``check_model``. Raises :class:`NoBackendError` listing
    every installed backend and its reason when none fits.
    """
    fmt = _format_of(path) if path is not None else None
    if path is not None and fmt is None:
        raise _not_a_model(os.fspath(path))
    chosen = os.environ.get(env.INFERENCE_BACKEND, "").strip()
    if chosen:
        return _by_name(chosen, source=f"{env.INFERENCE_BACKEND}={chosen}")
    return next(_willing(path, fmt))


def _willing(path: str | os.PathLike[str] | None, fmt: str | None) -> Iterator[Backend]:
    """The available backends that take ``fmt`` and do not decline the model,
    best first; NoBackendError (every backend with its reason) if none."""
    header = _Header(path, fmt)
    tried: list[Candidate] = []
    found = False
    for st in _ranked(backend_status(), fmt):
        backend = get_backend(st.name)
        assert backend is not None
        verdict = _ask(backend, header)
        if verdict is None:
            found = True
            yield backend
        else:
            tried.append(Candidate(st.name, st.priority, False, verdict))
    if not found:
        raise _none_fits(fmt, tried)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One installed backend's answer to "would you load this model?"."""

    name: str
    priority: int
    #: True for the backend that would load it (at most one).
    chosen: bool
    #: Why it declines or cannot run; for the chosen one, its availability reason.
    reason: str


def candidates(path: str | os.PathLike[str]) -> list[Candidate]:
    """Every installed backend's answer for ``path``, best first: the one
    :func:`load_model` would choose is marked, and each other one says why not.

    ``INFERENCE_BACKEND`` is honoured as :func:`load_model` honours it.
    Reads the model's header once; loads no weights.
    """
    fmt = _format_of(path)
    if fmt is None:
        raise _not_a_model(os.fspath(path))
    statuses = backend_status()
    forced = os.environ.get(env.INFERENCE_BACKEND, "").strip()
    ranked = _ranked(statuses, fmt)
    header = _Header(path, fmt)
    out: list[Candidate] = []
    found = ""
    for st in ranked:
        if forced and forced != st.name and forced not in st.aliases:
            out.append(Candidate(st.name, st.priority, False, f"{env.INFERENCE_BACKEND}={forced}"))
            continue
        backend = get_backend(st.name)
        assert backend is not None
        verdict = None if forced else _ask(backend, header)
        if verdict is None and not found:
            found = st.name
            out.append(Candidate(st.name, st.priority, True, st.reason))
        else:
            out.append(
                Candidate(
                    st.name, st.priority, False, verdict or f"{found} ranks higher and loads it"
                )
            )
    taken = {c.name for c in out}
    for st in statuses:
        if st.name in taken:
            continue
        why = st.reason if not st.available else f"does not load {fmt} models"
        out.append(Candidate(st.name, st.priority, False, why or "no reason given"))
    return out


class _Header:
    """The model's GGUF header, read once, when a backend's check first asks."""

    __slots__ = ("_header", "fmt", "path")

    def __init__(self, path: str | os.PathLike[str] | None, fmt: str | None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.fmt = fmt
        self._header: GGUFHeader | None = None

    def get(self) -> GGUFHeader | None:
        if self.fmt != "gguf" or self.path is None:
            return None
        if self._header is None:
            from .gguf import read_header

            # Raises ModelLoadError for a corrupt file: no backend could load it.
            self._header = read_header(self.path, load_arrays=False)
        return self._header


def _ask(backend: Backend, header: _Header) -> str | None:
    """None when ``backend`` would load the model, else its one-line reason."""
    check = getattr(backend, "check_model", None)
    if header.path is None or not callable(check):
        return None
    try:
        verdict = check(header.path, header.get())
    except ModelLoadError:
        raise
    except Exception as exc:
        return f"its check_model raised {_describe(exc)}"
    return None if verdict is None else str(verdict) or "declined with no reason given"


def _by_name(name: str, *, source: str) -> Backend:
    backend = get_backend(name)
    if backend is None:
        known = ", ".join(list_backends()) or "none"
        hint = f"; install it with {install_command(name)}" if name in KNOWN_EXTRAS else ""
        raise BackendNotFoundError(
            f"backend {name!r} ({source}) not found: it is either misspelled or not installed"
            f"{hint}. Registered: {known}"
        )
    ok, reason, _ = _check(backend)
    if not ok:
        # It is installed: the backend's own reason says what is missing.
        raise BackendUnavailableError(
            f"backend {name!r} is not available here: {reason or 'no reason given'}",
            backend=name,
            reason=reason,
        )
    return backend


def _takes(st: BackendStatus, fmt: str | None) -> bool:
    if fmt == "url":
        return "url" in st.formats
    if fmt is None:
        return st.formats != ("url",)
    return not st.formats or fmt in st.formats


def _ranked(statuses: list[BackendStatus], fmt: str | None) -> list[BackendStatus]:
    """The available backends that take ``fmt``, best first."""
    ranked = [st for st in statuses if st.available and _takes(st, fmt)]
    return sorted(ranked, key=lambda st: (-st.priority, st.name))


def _none_fits(fmt: str | None, declined: list[Candidate]) -> NoBackendError:
    said = {c.name: c.reason for c in declined}
    lines = []
    for st in backend_status():
        if st.name in said:
            state, why = "declines", said[st.name]
        elif st.available:
            state = f"available (does not load {fmt})" if fmt else "available"
            why = st.reason
        else:
            state, why = "unavailable", st.reason
        hint = _install_hint(st.reason, st.extra) if st.broken else ""
        lines.append(f"  {st.name}: {state}: {why or 'no reason given'}{hint}")
    listing = "\n".join(lines) if lines else "  (no backends installed)"
    what = f"{fmt} models" if fmt else "models"
    if declined:
        head = f"no installed backend loads this model ({', '.join(said)} declined it)"
    else:
        head = f"no available backend loads {what}{_extras_hint(fmt)}"
    return NoBackendError(f"{head}\ninstalled backends:\n{listing}")


def load_model(
    path: str | os.PathLike[str], *opts: Option | LoadConfig, **kwargs: Any
) -> TextModel:
    """Load the model at ``path`` (a file, a directory or an http(s) URL)
    with the best available backend, or the one asked for.

    Raises :class:`ModelLoadError` for a missing or unreadable model,
    :class:`BackendNotFoundError`, :class:`BackendUnavailableError` or
    :class:`NoBackendError` when no backend can take it.
    """
    cfg = load_config(*opts, **kwargs)
    chosen = cfg.backend or os.environ.get(env.INFERENCE_BACKEND, "").strip()
    if cfg.backend:
        fmt = _format_of(path)
        backend = _by_name(cfg.backend, source="backend option")
        if fmt is None:
            formats = _attr_tuple(backend, "formats")
            if formats:
                raise _not_a_model(os.fspath(path))
    elif chosen:
        backend = default_backend(path)
    else:
        return _load_with_fallback(path, cfg)
    env.configure_logging()
    _log.debug("loading %s with backend %r", _shown(path), backend.name)
    return _honoured(backend.load_model(path, cfg), cfg)


def _honoured(model: TextModel, cfg: LoadConfig) -> TextModel:
    """``model``, unless it cannot do what ``cfg`` asked of it at load
    (speculative decoding): then it is closed, and the option refused."""
    if (cfg.speculative or cfg.draft_model) and not model.capabilities.speculative:
        name = model.info.backend
        model.close()
        raise UnsupportedOptionError(
            f"the {name} backend does not decode speculatively "
            "(draft_model= and speculative= work on llama_cpp, rocm and mlx)",
            option="draft_model" if cfg.draft_model else "speculative",
            backend=name,
        )
    return model


def _load_with_fallback(path: str | os.PathLike[str], cfg: LoadConfig) -> TextModel:
    """The best willing backend's model; when it fails to load the file, the
    next one's, and so on; the final error names each backend and why."""
    fmt = _format_of(path)
    if fmt is None:
        raise _not_a_model(os.fspath(path))
    env.configure_logging()
    failures: list[tuple[str, ModelLoadError]] = []
    for backend in _willing(path, fmt):
        _log.debug("loading %s with backend %r", _shown(path), backend.name)
        try:
            model = backend.load_model(path, cfg)
        except ModelLoadError as exc:
            _log.debug("backend %r could not load %s: %s", backend.name, _shown(path), exc)
            failures.append((backend.name, exc))
            continue
        return _honoured(model, cfg)
    if len(failures) == 1:
        raise failures[0][1]
    reasons = "\n".join(f"  {name}: {exc}" for name, exc in failures)
    raise ModelLoadError(
        f"no backend could load {_shown(path)}; each one tried said:\n{reasons}",
        path=os.fspath(path),
    ) from failures[-1][1]
