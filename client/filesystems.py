"""Local paths and filesystem URIs (s3://, gs://, hdfs://, file://, ... whatever pyarrow.fs
knows) behind one set of calls, so readers and dataset jobs take either.

A plain path is a local file, read as before; a string with '://' is resolved with
`pyarrow.fs.FileSystem.from_uri`, which takes credentials from the environment as each
filesystem documents (AWS_* for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS, ...).
"""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.fs as pafs

from vaeserve.client.errors import VaeClientError


def is_uri(path: str) -> bool:
    """True for 'scheme://...' (a filesystem URI), False for a local path."""
    return "://" in path


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a local path or URI; VaeClientError for a URI that no
    filesystem understands."""
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    try:
        return pafs.FileSystem.from_uri(path)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
        raise VaeClientError(f"{path}: not a filesystem URI pyarrow can open ({exc})") from None


def uri_prefix(uri: str) -> str:
    """What precedes the filesystem path in a URI ('s3://', 'hdfs://host:9000', 'file://'),
    so that paths listed inside the filesystem can be written as URIs again."""
    if not is_uri(uri):
        return ""
    if "?" in uri:
        raise VaeClientError(
            f"{uri}: URI options ('?...') are not supported here; configure the filesystem "
            "through its environment variables"
        )
    _, inner = resolve(uri)
    stripped = uri.rstrip("/")
    inner = inner.rstrip("/")
    if not stripped.endswith(inner):
        raise VaeClientError(f"{uri}: cannot tell the filesystem part of this URI")
    return stripped[: len(stripped) - len(inner)]


def file_size(path: str) -> int | None:
    """Size in bytes of a regular file, None when there is no such file."""
    if not is_uri(path):
        return os.path.getsize(path) if os.path.isfile(path) else None
    fs, inner = resolve(path)
    try:
        info = fs.get_file_info(inner)
    except OSError as exc:
        raise VaeClientError(f"{path}: cannot read ({exc})") from None
    return info.size if info.type == pafs.FileType.File else None


def open_input_stream(path: str, compression: str | None = "detect") -> pa.NativeFile:
    """A sequential reader of a file (decompressed by its extension with 'detect')."""
    if not is_uri(path):
        return pa.input_stream(path, compression=compression)
    fs, inner = resolve(path)
    return fs.open_input_stream(inner, compression=compression)


def open_input_file(path: str) -> str | pa.NativeFile:
    """What pyarrow's random-access readers (Parquet) take: the path itself for a local
    file, an open file for a URI (the caller closes it)."""
    if not is_uri(path):
        return path
    fs, inner = resolve(path)
    return fs.open_input_file(inner)
