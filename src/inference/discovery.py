"""Find models on disk and tell what format each one is in.

This module's one job is discovery: :func:`detect_format` names the format
of one path, and :func:`discover` lists the models in a directory (GGUF files
and safetensors model directories) with the facts their headers and
``config.json`` give, without loading any weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from .errors import ModelLoadError
from .gguf import is_gguf, read_header
from .hf_config import config_facts, read_config
from .types import DiscoveredModel

__all__ = ["detect_format", "discover"]

_URL_PREFIXES = ("http://", "https://")


def _is_gguf_name(name: str) -> bool:
    return name.lower().endswith(".gguf")


def _safetensors_files(directory: str) -> list[str]:
    """The ``*.safetensors`` files directly in ``directory``, sorted; [] if unreadable."""
    try:
        with os.scandir(directory) as entries:
            return sorted(
                entry.path
                for entry in entries
                if entry.name.endswith(".safetensors") and entry.is_file()
            )
    except OSError:
        return []


def _is_safetensors_dir(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, "config.json")) and bool(
        _safetensors_files(directory)
    )


def detect_format(path: str | os.PathLike[str]) -> str | None:
    """The format of the model at ``path``: ``"url"``, ``"gguf"``, ``"safetensors"`` or ``None``.

    ``"url"`` for a string starting with ``http://`` or ``https://``;
    ``"gguf"`` for a file with the GGUF magic, or an existing file named
    ``*.gguf`` (reading it will then say what is wrong with it);
    ``"safetensors"`` for a directory holding ``config.json`` and at least one
    ``*.safetensors`` file. Never raises.
    """
    try:
        if isinstance(path, str) and path.lower().startswith(_URL_PREFIXES):
            return "url"
        name = os.fspath(path)
        if os.path.isfile(name):
            if is_gguf(name) or _is_gguf_name(name):
                return "gguf"
            return None
        if os.path.isdir(name) and _is_safetensors_dir(name):
            return "safetensors"
    except (OSError, ValueError, TypeError):
        pass
    return None


def discover(path: str | os.PathLike[str]) -> Iterator[DiscoveredModel]:
    """The models at ``path``, sorted by path.

    A ``.gguf`` file (or any file with the GGUF magic) gives that one model.
    A directory gives itself and each immediate subdirectory that holds
    ``config.json`` and ``*.safetensors`` files, and every ``*.gguf`` file
    directly in it or in an immediate subdirectory. A corrupt GGUF file or an
    unreadable ``config.json`` is listed all the same, with an empty
    architecture and ``extra=(("error", message),)``.

    Raises :class:`~inference.errors.ModelLoadError` at once for a missing
    path, an unreadable directory, or a file that is not a GGUF model.
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise ModelLoadError(f"{name}: no such file or directory", path=name)
    if not os.path.isdir(name):
        if detect_format(name) != "gguf":
            raise ModelLoadError(f"{name}: neither a directory nor a GGUF file", path=name)
        return iter((_gguf_model(name),))
    candidates = _candidates(name)
    return (
        _gguf_model(found) if kind == "gguf" else _safetensors_model(found)
        for found, kind in candidates
    )


def _candidates(directory: str) -> list[tuple[str, str]]:
    """``(path, format)`` of every model found under ``directory``, sorted."""
    try:
        with os.scandir(directory) as entries:
            top = list(entries)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ModelLoadError(
            f"{directory}: cannot list the directory ({reason})", path=directory
        ) from None
    found: list[tuple[str, str]] = []
    if _is_safetensors_dir(directory):
        found.append((directory, "safetensors"))
    for entry in top:
        try:
            if entry.is_file():
                if _is_gguf_name(entry.name):
                    found.append((entry.path, "gguf"))
            elif entry.is_dir():
                found.extend(_candidates_in_subdirectory(entry.path))
        except OSError:
            continue  # vanished or unreadable: not a model we can list
    found.sort()
    return found


def _candidates_in_subdirectory(directory: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if _is_safetensors_dir(directory):
        found.append((directory, "safetensors"))
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    if _is_gguf_name(entry.name) and entry.is_file():
                        found.append((entry.path, "gguf"))
                except OSError:
                    continue
    except OSError:
        pass  # an unreadable subdirectory holds nothing we can list
    return found


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _gguf_model(path: str) -> DiscoveredModel:
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        header = read_header(path, load_arrays=False)
    except ModelLoadError as exc:
        return DiscoveredModel(
            path=path,
            format="gguf",
            file_count=1,
            size_bytes=_file_size(path),
            name=stem,
            extra=(("error", str(exc)),),
        )
    quant_type, bits, group = header.quantisation
    return DiscoveredModel(
        path=path,
        format="gguf",
        architecture=header.architecture,
        quant_bits=bits,
        quant_group_size=group,
        quant_type=quant_type,
        bits_per_weight=round(header.bits_per_weight, 2),
        context_length=header.context_length,
        file_count=1,
        size_bytes=header.file_size,
        name=header.name or stem,
    )


def _safetensors_model(directory: str) -> DiscoveredModel:
    files = _safetensors_files(directory)
    size = sum(_file_size(file) for file in files)
    name = os.path.basename(os.path.abspath(directory))
    try:
        config = read_config(directory)
    except ModelLoadError as exc:
        return DiscoveredModel(
            path=directory,
            format="safetensors",
            file_count=len(files),
            size_bytes=size,
            name=name,
            extra=(("error", str(exc)),),
        )
    facts = config_facts(config)
    return DiscoveredModel(
        path=directory,
        format="safetensors",
        architecture=facts.architecture,
        quant_bits=facts.quant_bits,
        quant_group_size=facts.quant_group_size,
        context_length=facts.context_length,
        file_count=len(files),
        size_bytes=size,
        name=name,
    )
