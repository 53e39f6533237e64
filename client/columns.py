"""Column selection: which input columns are the features, which ride along (id, condition,
kept columns), and --columns lists ('a,b,c', '@FILE', NPY indices such as '0:64')."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vaeserve.client.errors import VaeClientError


def parse_columns(spec: str | Sequence[str] | None) -> list[str] | None:
    """'a,b,c' or '@file' (names one per line or comma-separated) to a list of names."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        return [str(s) for s in spec]
    text = spec
    if spec.startswith("@"):
        try:
            text = Path(spec[1:]).read_text()
        except OSError as exc:
            raise VaeClientError(
                f"cannot read the column list {spec[1:]}: {exc.strerror}"
            ) from None
    names = [c.strip() for line in text.splitlines() for c in line.split(",")]
    names = [c for c in names if c]
    if not names:
        raise VaeClientError(f"--columns {spec!r} names no columns")
    return names


def short_list(names: Sequence[str], limit: int = 8) -> str:
    """The first few names and how many there are, for error messages."""
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)} in all)"


@dataclass(frozen=True)
class ColumnSelection:
    """What a reader takes from its input: the feature columns (`columns`, else the model's
    `feature_names` when all are present, else every other column), checked against
    `expected_dim`, and the columns carried along (id, condition, or all with keep_columns)."""

    columns: Sequence[str] | None = None
    id_column: str | None = None
    condition_column: str | None = None
    keep_columns: bool = False
    feature_names: Sequence[str] | None = None
    expected_dim: int | None = None

    @classmethod
    def of(cls, selection: ColumnSelection | None = None, **fields: Any) -> ColumnSelection:
        """`selection` itself, or one made of its fields given as keywords."""
        if selection is not None and fields:
            raise TypeError("pass a ColumnSelection or its fields, not both")
        return selection if selection is not None else cls(**fields)

    @property
    def named(self) -> list[str]:
        """The id and condition columns that are set."""
        return [c for c in (self.id_column, self.condition_column) if c]

    def resolve(self, available: Sequence[str], where: str) -> tuple[list[str], list[str]]:
        """(feature columns, carried columns) of an input with these columns."""
        for option, name in (
            ("id-column", self.id_column),
            ("condition-column", self.condition_column),
        ):
            if name is not None and name not in available:
                raise VaeClientError(
                    f"{where}: --{option} {name!r} is not a column; the input has "
                    f"{short_list(available)}"
                )
        carried = list(available) if self.keep_columns else list(dict.fromkeys(self.named))
        return self.features(available, where), carried

    def features(self, available: Sequence[str], where: str) -> list[str]:
        """The feature columns among `available`, in model order."""
        columns = self.columns
        if columns:
            missing = [c for c in columns if c not in available]
            if missing:
                raise VaeClientError(
                    f"{where}: columns {short_list(missing)} are not in the input; it has "
                    f"{short_list(available)}"
                )
            if len(set(columns)) != len(columns):
                raise VaeClientError(f"{where}: --columns names a column twice")
            chosen = list(columns)
        elif self.feature_names and all(f in available for f in self.feature_names):
            chosen = list(self.feature_names)
        else:
            chosen = [c for c in available if c not in self.named]
        if self.expected_dim is not None and len(chosen) != self.expected_dim:
            how = "--columns selects" if columns else "the input has"
            names = (
                f" (the model's feature names are {short_list(self.feature_names)})"
                if self.feature_names
                else ""
            )
            raise VaeClientError(
                f"{where}: {how} {len(chosen)} feature columns but the model expects "
                f"{self.expected_dim}; pick them with --columns{names}"
            )
        return chosen

    def indices(self, width: int, where: str) -> list[int]:
        """NPY feature columns: integers, 'a-b' (inclusive) or 'a:b' (half-open) ranges."""
        if not self.columns:
            return list(range(width))
        out: list[int] = []
        for item in self.columns:
            try:
                if ":" in item:
                    a, b = item.split(":", 1)
                    out.extend(range(int(a or 0), int(b) if b else width))
                elif "-" in item.lstrip("-"):
                    a, b = item.split("-", 1)
                    out.extend(range(int(a), int(b) + 1))
                else:
                    out.append(int(item))
            except ValueError:
                raise VaeClientError(
                    f"{where}: an NPY file has no column names; --columns takes indices such as "
                    f"'0,1,2', '0-63' or '0:64', not {item!r}"
                ) from None
        bad = [i for i in out if not 0 <= i < width]
        if bad:
            raise VaeClientError(f"{where}: column indices {bad[:5]} are outside 0..{width - 1}")
        return out
