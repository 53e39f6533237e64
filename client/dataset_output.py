"""The output folder of a dataset job and how a part is committed to it, on a local disk or any
filesystem pyarrow opens by URI.

    OUT/part-<digest>.parquet    scores of one part, in input order, one file per part
    OUT/_rejects/part-<digest>.csv   its rejected rows (row, id, reason), when it has any
    OUT/_committed/part-<digest>.json   its commit marker: PartResult (rows, counts, sha256, ...)
    OUT/_job.json                what the job is (options, model): a resume must match
    OUT/_temporary/              attempts in progress (removed when a run starts)
    OUT/_manifest.json, OUT/_rejects.csv, OUT/_SUCCESS   written when every part is committed

A part is committed when its marker exists, and only then. A worker writes the part's files
under _temporary (local) or a local scratch folder (URIs), fsyncs them, moves them to their
final names, and then writes the marker (rename on a local disk; a single PUT on object
stores). A part whose marker is missing is scored again from its start, replacing whatever an
earlier attempt left; so every input row ends up exactly once in a committed output or rejects
file, however often workers or the driver die. Names starting with '_' are what dataset readers
skip, so `pyarrow.dataset` or `ray.data.read_parquet(OUT)` read only the scores.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass, fields
from typing import Any

import pyarrow.fs as pafs

from vaeserve.client.checkpoint import ScoreCounts
from vaeserve.client.dataset_parts import Part
from vaeserve.client.errors import VaeClientError
from vaeserve.client.filesystems import resolve

JOB_FILE = "_job.json"
COMMITTED = "_committed"
REJECTS = "_rejects"
TEMPORARY = "_temporary"
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
ALL_REJECTS = "_rejects.csv"
JOB_FORMAT = 1
_EXTENSIONS = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}


@dataclass(kw_only=True)
class PartResult(ScoreCounts):
    """What scoring one part did; its commit marker holds exactly this."""

    index: int  # the part's place in the plan of the run that scored it
    name: str
    input: str
    size: int  # of the input file when it was scored
    start: int = 0
    stop: int | None = None
    rows: int = 0  # input rows read (scored or rejected); malformed CSV lines are not rows
    output: str = ""  # output file name inside the folder
    output_bytes: int = 0
    sha256: str = ""
    rejects_file: str | None = None  # its rejects file inside the folder
    seconds: float = 0.0
    node: str = ""
    pid: int = 0
    peak_rss_mb: float | None = None
    skipped: bool = False  # already committed by an earlier run or attempt
    error: str | None = None  # the part's input could not be scored; nothing was committed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PartResult:
        """Read a dict that `to_dict` wrote (unknown keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class DatasetOutput:
    """One job's output folder (see the module docstring): the driver prepares and finishes
    it, workers commit parts to it."""

    def __init__(self, root: str, fmt: str) -> None:
        if fmt not in _EXTENSIONS:
            raise VaeClientError(f"a dataset job writes {', '.join(_EXTENSIONS)}, not {fmt}")
        self.root = root
        self.format = fmt
        self.fs, self.base = resolve(root)
        self.base = self.base.rstrip("/") or "/"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    # ---- names ---------------------------------------------------------------------------
    def path(self, *names: str) -> str:
        """The filesystem path of a name inside the folder."""
        return "/".join([self.base, *names])

    def output_name(self, part: Part) -> str:
        """The part's output file name."""
        return f"{part.name}.{_EXTENSIONS[self.format]}"

    def rejects_name(self, part: Part) -> str:
        """The part's rejects file name (inside _rejects)."""
        return f"{REJECTS}/{part.name}.csv"

    def marker_name(self, part: Part) -> str:
        """The part's commit marker name (inside _committed)."""
        return f"{COMMITTED}/{part.name}.json"

    # ---- driver: start, resume, finish ---------------------------------------------------
    def prepare(
        self, fingerprint: dict[str, Any], parts: list[Part], *, resume: bool, overwrite: bool
    ) -> dict[str, PartResult]:
        """Make the folder ready and return the parts already committed (resume), by name.

        A new or empty folder starts a job; a folder holding a job is resumed (`resume`, when
        its fingerprint matches and every committed part is still a part of the same input,
        unchanged) or cleared of the job's files (`overwrite`); anything else is refused rather
        than overwritten. Attempts in progress and files of uncommitted parts are removed."""
        info = self.fs.get_file_info(self.base)
        if info.type == pafs.FileType.File:
            raise VaeClientError(f"{self.root} is a file; a dataset job writes a folder")
        exists = info.type == pafs.FileType.Directory
        has_job = exists and self._exists(JOB_FILE)
        if has_job and overwrite:
            self._clear()
        elif has_job and resume:
            if self._exists(SUCCESS):
                raise VaeClientError(
                    f"{self.root}: nothing to resume, the job finished ({SUCCESS} is there); "
                    "pass --overwrite to score again"
                )
            self._check_fingerprint(fingerprint)
            committed = self.committed()
            _check_inputs(committed, parts)
            self._remove_uncommitted(committed)
            return committed
        elif has_job:
            raise VaeClientError(
                f"{self.root} holds a vae-client job; pass --resume to finish it or --overwrite "
                "to start over"
            )
        elif resume:
            raise VaeClientError(f"{self.root}: nothing to resume (no {JOB_FILE})")
        elif exists and self.fs.get_file_info(pafs.FileSelector(self.base)):
            raise VaeClientError(
                f"{self.root} exists and is not a vae-client job's output; write to a new or "
                "empty folder"
            )
        self.fs.create_dir(self.base, recursive=True)
        self._write(JOB_FILE, json.dumps(fingerprint, indent=1).encode())
        return {}

    def committed(self) -> dict[str, PartResult]:
        """The committed parts by name, each checked: a marker whose output is missing or of
        another size is dropped, so that its part is scored again."""
        out: dict[str, PartResult] = {}
        selector = pafs.FileSelector(self.path(COMMITTED), allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            if not info.path.endswith(".json"):
                continue
            result = PartResult.from_dict(json.loads(self._read(info.path)))
            output = self.fs.get_file_info(self.path(result.output))
            if output.type != pafs.FileType.File or output.size != result.output_bytes:
                self.fs.delete_file(info.path)
                continue
            out[result.name] = result
        return out

    def finish(
        self, results: list[PartResult], summary: dict[str, Any], rejects_path: str | None = None
    ) -> str | None:
        """Write the manifest (every part's result), all rejects in one CSV (file, row, id,
        reason) and the _SUCCESS marker; returns the rejects file when there are rejects."""
        results = sorted(results, key=lambda r: (r.input, r.start))
        manifest = {
            "job": json.loads(self._read(self.path(JOB_FILE))),
            "parts": [r.to_dict() for r in results],
            "summary": summary,
        }
        self._write(MANIFEST, json.dumps(manifest, indent=1).encode())
        merged = None
        if any(r.rejects_file for r in results):
            if rejects_path is None:
                fs, where = self.fs, self.path(ALL_REJECTS)
                merged = self.root.rstrip("/") + "/" + ALL_REJECTS
            else:
                (fs, where), merged = resolve(rejects_path), rejects_path
            self._merge_rejects(results, fs, where)
        self._delete_dir(TEMPORARY)
        self._write(SUCCESS, json.dumps(summary, indent=1).encode())
        return merged

    def end_run(self) -> None:
        """Remove what this run's attempts left (all of its parts are settled)."""
        self._delete_dir(TEMPORARY)

    def _merge_rejects(self, results: list[PartResult], fs: pafs.FileSystem, where: str) -> None:
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(("file", "row", "id", "reason"))
        with _atomic_output(fs, where) as out:
            out.write(header.getvalue().encode())
            for r in results:
                if not r.rejects_file:
                    continue
                with self.fs.open_input_stream(self.path(r.rejects_file)) as f:
                    rows = csv.reader(io.TextIOWrapper(f, encoding="utf-8", newline=""))
                    next(rows, None)
                    text = io.StringIO()
                    writer = csv.writer(text, lineterminator="\n")
                    for row in rows:
                        writer.writerow([r.input, *row])
                    out.write(text.getvalue().encode())

    def _check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        try:
            old = json.loads(self._read(self.path(JOB_FILE)))
        except (OSError, ValueError) as exc:
            raise VaeClientError(f"{self.root}/{JOB_FILE} is unreadable ({exc})") from None
        keys = sorted(set(old) | set(fingerprint))
        changed = [k for k in keys if old.get(k) != fingerprint.get(k)]
        if changed:
            raise VaeClientError(
                f"cannot resume: {', '.join(changed)} differ from the interrupted job's (see "
                f"{self.root}/{JOB_FILE}); rerun with the same inputs and options, or --overwrite"
            )

    def _remove_uncommitted(self, committed: dict[str, PartResult]) -> None:
        """Delete attempts in progress and part files no marker vouches for."""
        keep = {r.output for r in committed.values()}
        keep |= {r.rejects_file for r in committed.values() if r.rejects_file}
        self._delete_dir(TEMPORARY)
        for folder in ("", REJECTS):
            where = self.path(folder) if folder else self.base
            selector = pafs.FileSelector(where, allow_not_found=True)
            for info in self.fs.get_file_info(selector):
                name = info.path[len(self.base) + 1 :]
                if info.type == pafs.FileType.File and _is_part_file(name) and name not in keep:
                    self.fs.delete_file(info.path)

    def _clear(self) -> None:
        """Remove every file the job wrote (and nothing else)."""
        for folder in (COMMITTED, REJECTS, TEMPORARY):
            self._delete_dir(folder)
        for info in self.fs.get_file_info(pafs.FileSelector(self.base)):
            name = info.path[len(self.base) + 1 :]
            if info.type == pafs.FileType.File and (
                _is_part_file(name) or name in (JOB_FILE, MANIFEST, SUCCESS, ALL_REJECTS)
            ):
                self.fs.delete_file(info.path)

    # ---- worker: commit one part ---------------------------------------------------------
    def find_committed(self, part: Part) -> PartResult | None:
        """The part's result when an earlier attempt committed it (Ray retries a task whose
        worker died, possibly after its commit)."""
        marker = self.path(self.marker_name(part))
        if self.fs.get_file_info(marker).type != pafs.FileType.File:
            return None
        result = PartResult.from_dict(json.loads(self._read(marker)))
        result.skipped = True
        return result

    def note_attempt(self, part: Part) -> int:
        """Record an attempt at a part in this run; how many attempts there have been."""
        folder = self.path(TEMPORARY, "attempts", part.name)
        self.fs.create_dir(folder, recursive=True)
        with self.fs.open_output_stream(f"{folder}/{uuid.uuid4().hex}"):
            pass
        return len(self.fs.get_file_info(pafs.FileSelector(folder)))

    def scratch(self) -> str:
        """A new local folder for one attempt at a part: inside _temporary on a local disk
        (so the commit is a rename), a temporary folder otherwise."""
        if not self.local:
            return tempfile.mkdtemp(prefix="vaeserve-part-")
        folder = self.path(TEMPORARY, uuid.uuid4().hex)
        os.makedirs(folder)
        return folder

    def commit(
        self, part: Part, output_file: str, rejects_file: str | None, result: PartResult
    ) -> PartResult:
        """Move an attempt's finished files (local paths) to their final names and write the
        marker: from then on the part is committed. Returns the result as committed."""
        _fsync(output_file)
        result.output = self.output_name(part)
        result.output_bytes = os.path.getsize(output_file)
        result.sha256 = _sha256(output_file)
        rejects_target = self.path(self.rejects_name(part))
        if rejects_file is not None:
            _fsync(rejects_file)
            result.rejects_file = self.rejects_name(part)
            self.fs.create_dir(self.path(REJECTS), recursive=True)
            self._place(rejects_file, rejects_target)
        else:
            with contextlib.suppress(FileNotFoundError):  # an earlier attempt's, not committed
                self.fs.delete_file(rejects_target)
        self._place(output_file, self.path(result.output))
        self.fs.create_dir(self.path(COMMITTED), recursive=True)
        self._write(self.marker_name(part), json.dumps(result.to_dict()).encode())
        return result

    def _place(self, local_file: str, target: str) -> None:
        if self.local:
            os.replace(local_file, target)
            _fsync_dir(os.path.dirname(target))
            return
        with open(local_file, "rb") as src, self.fs.open_output_stream(target) as out:
            shutil.copyfileobj(src, out, 1 << 20)
        os.remove(local_file)

    # ---- small filesystem helpers --------------------------------------------------------
    def _exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _write(self, name: str, data: bytes) -> None:
        with _atomic_output(self.fs, self.path(name)) as out:
            out.write(data)

    def _delete_dir(self, name: str) -> None:
        if self._exists(name):
            self.fs.delete_dir(self.path(name))


def _check_inputs(committed: dict[str, PartResult], parts: list[Part]) -> None:
    """Every committed part must still be a part of the inputs, and its input unchanged:
    otherwise the folder would keep rows that are no longer the dataset's, or stale ones."""
    planned = {p.name: p for p in parts}
    for result in sorted(committed.values(), key=lambda r: (r.input, r.start)):
        part = planned.get(result.name)
        if part is None or part.size != result.size:
            why = "is no longer among the inputs" if part is None else "changed since"
            raise VaeClientError(
                f"cannot resume: {result.input} (rows {result.start}..) was scored into "
                f"{result.output} but {why}; rerun with the same inputs, or --overwrite"
            )


@contextlib.contextmanager
def _atomic_output(fs: pafs.FileSystem, path: str) -> Any:
    """A writable stream whose file appears complete or not at all: write, fsync and rename on
    a local disk; one upload (atomic on object stores) elsewhere."""
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as out:
            yield out
        return
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path))
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _is_part_file(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith("part-") and "." in base


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
