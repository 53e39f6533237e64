"""The files of a dataset: directories (searched recursively), globs ('data/*.parquet',
's3://bucket/day=*/**/*.parquet'), plain files and '@LIST' files naming one input per line,
each a local path or a filesystem URI, as one sorted list of CSV and Parquet files.

Inside a directory, files and folders whose names start with '_' or '.' are skipped (the
usual markers: _SUCCESS, _temporary, .crc), as are files of other formats and anything under
the job's own output folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from vaeserve.client.errors import VaeClientError
from vaeserve.client.filesystems import is_uri, resolve, uri_prefix
from vaeserve.client.readers import detect_input_format

DATASET_FORMATS = ("csv", "parquet")
_LISTED = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet"}
_COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class DatasetFile:
    """One input file: `path` as the readers open it (absolute local path or URI)."""

    path: str
    size: int
    format: str


def is_dataset_spec(inputs: Sequence[str]) -> bool:
    """True when the inputs name more than one file's worth: several inputs, a directory,
    a glob or an @LIST file."""
    if len(inputs) != 1:
        return True
    spec = inputs[0]
    if spec.startswith("@") or _GLOB_CHARS.search(spec):
        return True
    if is_uri(spec):
        fs, inner = resolve(spec)
        return fs.get_file_info(inner).type == pafs.FileType.Directory
    return os.path.isdir(spec)


def list_dataset(
    inputs: Sequence[str], *, input_format: str | None = None, exclude: str | None = None
) -> list[DatasetFile]:
    """Every CSV and Parquet file the inputs name, sorted and without repeats; `exclude` is a
    folder whose files are never inputs (the job's output). VaeClientError when an input
    matches nothing."""
    excluded = _folder_key(exclude) if exclude else None
    found: dict[str, DatasetFile] = {}
    for spec in _expand_lists(inputs):
        matched = [
            f for f in _list_one(spec, input_format) if not _under(_folder_key(f.path), excluded)
        ]
        if not matched:
            raise VaeClientError(f"{spec}: no CSV or Parquet files here")
        for f in matched:
            found.setdefault(f.path, f)
    return [found[k] for k in sorted(found)]


def _expand_lists(inputs: Iterable[str]) -> list[str]:
    out: list[str] = []
    for spec in inputs:
        if spec.startswith("@"):
            try:
                lines = Path(spec[1:]).read_text().splitlines()
            except OSError as exc:
                raise VaeClientError(f"cannot read the input list {spec[1:]}: {exc}") from None
            out.extend(s.strip() for s in lines if s.strip() and not s.startswith("#"))
        else:
            out.append(spec)
    return out


def _list_one(spec: str, input_format: str | None) -> list[DatasetFile]:
    """The files one input names: itself, a directory's files or a glob's matches."""
    fs, inner = resolve(spec)
    prefix = uri_prefix(spec)
    if _GLOB_CHARS.search(inner):
        return _glob(fs, prefix, inner, input_format)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.File:
        fmt = detect_input_format(spec, input_format)
        _check_format(spec, fmt)
        return [DatasetFile(prefix + inner, info.size, fmt)]
    if info.type == pafs.FileType.Directory:
        return _directory(fs, prefix, inner, input_format)
    raise VaeClientError(f"{spec}: no such file or folder")


def _directory(
    fs: pafs.FileSystem, prefix: str, root: str, input_format: str | None
) -> list[DatasetFile]:
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(root.rstrip("/")) + 1 :]
        if any(part[:1] in "._" for part in relative.split("/")):
            continue
        fmt = _format_of(info.path, input_format)
        if fmt is not None:
            out.append(DatasetFile(prefix + info.path, info.size, fmt))
    return out


def _glob(
    fs: pafs.FileSystem, prefix: str, pattern: str, input_format: str | None
) -> list[DatasetFile]:
    """Matches of a glob: '*' and '?' within one path component, '**' across components."""
    parts = pattern.split("/")
    fixed = next(i for i, p in enumerate(parts) if _GLOB_CHARS.search(p))
    base = "/".join(parts[:fixed]) or "/"
    regex = re.compile(_glob_regex(pattern))
    info = fs.get_file_info(base)
    if info.type != pafs.FileType.Directory:
        return []
    out = []
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type == pafs.FileType.File and regex.fullmatch(info.path):
            fmt = _format_of(info.path, input_format)
            if fmt is not None:
                out.append(DatasetFile(prefix + info.path, info.size, fmt))
    return out


def _glob_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append(f"[^{body[1:]}]" if body.startswith("!") else f"[{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _format_of(path: str, input_format: str | None) -> str | None:
    """The format of a file found in a folder or by a glob: --input-format, else what a .csv,
    .tsv, .parquet or .pq name says (compressed CSV too); None for anything else."""
    if input_format:
        return detect_input_format(path, input_format)
    name = path.lower()
    for ext in _COMPRESSED:
        name = name.removesuffix(ext)
    return _LISTED.get(os.path.splitext(name)[1])


def _check_format(path: str, fmt: str) -> None:
    if fmt not in DATASET_FORMATS:
        raise VaeClientError(f"{path}: a dataset takes CSV or Parquet files, not {fmt}")


def _folder_key(path: str) -> str:
    fs, inner = resolve(path)
    return f"{type(fs).__name__}:{inner.rstrip('/')}"


def _under(key: str, folder: str | None) -> bool:
    return folder is not None and (key == folder or key.startswith(folder + "/"))
