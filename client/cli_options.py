"""Click options that several `vae-client` commands share: the connection options, built from
ConnectionOptions' fields, the output options, and the model and input options."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

import click

from vaeserve.client.options import ENV_PREFIX, ConnectionOptions, Flag
from vaeserve.client.readers import INPUT_FORMATS
from vaeserve.client.writers import OUTPUT_FORMATS

_DEFAULTS = {f.name: f.default for f in fields(ConnectionOptions)}


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add an option for every ConnectionOptions field with a Flag, each also read from
    VAECLIENT_<NAME>."""
    for field_name, option, flag in reversed(ConnectionOptions.flags()):
        fn = _click_option(option, flag, _DEFAULTS[field_name])(fn)
    return fn


def pop_connection(kwargs: dict[str, Any]) -> ConnectionOptions:
    """Take the connection options out of a command's keyword arguments."""
    return ConnectionOptions(
        **{field_name: kwargs.pop(option) for field_name, option, _ in ConnectionOptions.flags()}
    )


def _click_option(option: str, flag: Flag, default: Any) -> Callable[..., Any]:
    dashed = option.replace("_", "-")
    settings: dict[str, Any] = {
        "envvar": f"{ENV_PREFIX}_{option.upper()}",
        "show_envvar": True,
        "help": flag.help,
    }
    if isinstance(default, bool):
        return click.option(f"--{dashed}/--no-{dashed}", default=default, **settings)
    if default is not None:
        settings.update(default=default, show_default=True)
    if flag.choices:
        settings["type"] = click.Choice(flag.choices)
    elif flag.existing_file:
        settings["type"] = click.Path(exists=True, dir_okay=False)
    elif flag.minimum is not None:
        bounded = click.IntRange if isinstance(default, int) else click.FloatRange
        settings["type"] = bounded(min=flag.minimum, min_open=flag.exclusive_minimum)
    return click.option(f"--{dashed}", **settings)


def output_options(
    formats: Sequence[str] = OUTPUT_FORMATS, *, required: bool = False
) -> Callable[..., Any]:
    """--output (a file, or '-' for stdout: the default unless `required`) and --format."""
    if required:
        suffixes = ", ".join(f".{f}" for f in formats)
        output = click.option(
            "--output",
            "-o",
            required=True,
            help=f"Output file ({suffixes}) or '-'; a folder for a dataset.",
        )
    else:
        output = click.option(
            "--output", "-o", default="-", show_default=True, help="Output file or '-'."
        )
    fmt = click.option("--format", "output_format", type=click.Choice(formats))
    return lambda fn: output(fmt(fn))


def input_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--input-format, --model and --columns."""
    return input_format_option(model_option(columns_option(fn)))


model_option = click.option(
    "--model",
    "-m",
    envvar="VAECLIENT_MODEL",
    show_envvar=True,
    help="NAME or NAME:VERSION (default: the server's default model, newest version).",
)
columns_option = click.option(
    "--columns",
    help="Feature columns: 'a,b,c' or @FILE (CSV/Parquet names; NPY indices like 0:64). "
    "Default: the model's feature names when all present, else every other column.",
)
input_format_option = click.option(
    "--input-format", type=click.Choice(INPUT_FORMATS), help="Input format (default: by extension)."
)
