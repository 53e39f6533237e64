"""`vae-client`: batch scoring and model calls against a vae.v1 server, over VaeClient.

Every command takes the connection options (--server, --tls-ca, --token, --timeout, ...), also
read from VAECLIENT_* environment variables (VAECLIENT_SERVER, VAECLIENT_TOKEN, ...); other
options read VAECLIENT_<COMMAND>_<OPTION> (e.g. VAECLIENT_SCORE_BATCH_SIZE). Exit status: 0 done,
1 failed, 2 bad usage, 130 interrupted (resumable with `score --resume`).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import click
import numpy as np

from vaeserve.client.errors import VaeClientError
from vaeserve.client.jobs import (
    JobInterrupted,
    ScoreJob,
    condition_rows,
    lerp,
    print_summary,
    run_score_job,
    sample_to_file,
    slerp,
    transform_file,
    write_rows,
)
from vaeserve.client.library import FEEDER_THREAD, VaeClient, format_model
from vaeserve.client.readers import INPUT_FORMATS, open_input, parse_columns
from vaeserve.client.writers import OUTPUT_FORMATS
from vaeserve.common.scores import SCORE_NAMES

ENV_PREFIX = "VAECLIENT"
DEFAULT_SERVER = "localhost:50051"


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared connection options, each also read from VAECLIENT_<NAME>."""
    options = [
        click.option(
            "--server",
            envvar="VAECLIENT_SERVER",
            default=DEFAULT_SERVER,
            show_default=True,
            show_envvar=True,
            help="HOST:PORT of the server, or dns:///host:port for every address of a name.",
        ),
        click.option(
            "--tls/--no-tls",
            envvar="VAECLIENT_TLS",
            default=False,
            show_envvar=True,
            help="Use TLS with the system's root certificates (implied by --tls-ca).",
        ),
        click.option(
            "--tls-ca",
            envvar="VAECLIENT_TLS_CA",
            type=click.Path(exists=True, dir_okay=False),
            show_envvar=True,
            help="PEM file of the CA that signed the server's certificate (turns TLS on).",
        ),
        click.option(
            "--client-cert",
            envvar="VAECLIENT_CLIENT_CERT",
            type=click.Path(exists=True, dir_okay=False),
            show_envvar=True,
            help="PEM client certificate for mutual TLS (with --client-key).",
        ),
        click.option(
            "--client-key",
            envvar="VAECLIENT_CLIENT_KEY",
            type=click.Path(exists=True, dir_okay=False),
            show_envvar=True,
            help="PEM private key of --client-cert.",
        ),
        click.option(
            "--tls-server-name",
            envvar="VAECLIENT_TLS_SERVER_NAME",
            show_envvar=True,
            help="Name to check the server's certificate against, when it differs from HOST.",
        ),
        click.option(
            "--token",
            envvar="VAECLIENT_TOKEN",
            show_envvar=True,
            help="Bearer token sent as 'authorization: Bearer TOKEN'.",
        ),
        click.option(
            "--timeout",
            envvar="VAECLIENT_TIMEOUT",
            type=click.FloatRange(min=0, min_open=True),
            default=30.0,
            show_default=True,
            show_envvar=True,
            help="Deadline in seconds of each call (a score stream has none).",
        ),
        click.option(
            "--retries",
            envvar="VAECLIENT_RETRIES",
            type=click.IntRange(min=0),
            default=5,
            show_default=True,
            show_envvar=True,
            help="Attempts after the first when the server is UNAVAILABLE (with backoff).",
        ),
        click.option(
            "--max-message-mb",
            envvar="VAECLIENT_MAX_MESSAGE_MB",
            type=click.FloatRange(min=1),
            default=64.0,
            show_default=True,
            show_envvar=True,
            help="Largest gRPC message sent or received.",
        ),
        click.option(
            "--load-balancing",
            envvar="VAECLIENT_LOAD_BALANCING",
            type=click.Choice(["pick_first", "round_robin"]),
            show_envvar=True,
            help="gRPC load-balancing policy over the addresses the target resolves to.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _client(conn: dict[str, Any]) -> VaeClient:
    return VaeClient(
        conn["server"],
        tls=conn["tls"],
        tls_ca=conn["tls_ca"],
        client_cert=conn["client_cert"],
        client_key=conn["client_key"],
        tls_server_name=conn["tls_server_name"],
        token=conn["token"],
        timeout=conn["timeout"],
        retries=conn["retries"],
        max_message_mb=conn["max_message_mb"],
        load_balancing=conn["load_balancing"],
    )


_CONN_KEYS = (
    "server",
    "tls",
    "tls_ca",
    "client_cert",
    "client_key",
    "tls_server_name",
    "token",
    "timeout",
    "retries",
    "max_message_mb",
    "load_balancing",
)


def _split(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs.pop(k) for k in _CONN_KEYS}


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn VaeClientError into a one-line message and exit status 1 (130 when interrupted)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except JobInterrupted as exc:
            if exc.summary is not None:
                print_summary(exc.summary)
            click.echo(f"vae-client: {exc.message}", err=True)
            sys.exit(130)
        except VaeClientError as exc:
            click.echo(f"vae-client: error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("vae-client: interrupted", err=True)
            sys.exit(130)

    return wrapper


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vaeserve")
def cli() -> None:
    """Score files and call models on a vaeserve (vae.v1) gRPC server."""


@cli.command()
@click.argument("input", type=str)
@click.option("--output", "-o", required=True, help="Output file (.csv, .parquet, .jsonl) or '-'.")
@click.option("--format", "output_format", type=click.Choice(["csv", "parquet", "jsonl"]))
@input_format_option
@model_option
@columns_option
@click.option("--id-column", help="Input column written as each row's id (default: row number).")
@click.option("--condition-column", help="Class-label column for conditional models.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option(
    "--in-flight",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Batches sent but not yet answered on the stream.",
)
@click.option(
    "--score",
    "score_kind",
    type=click.Choice(SCORE_NAMES),
    help="Score the anomaly flag uses (default: the model's).",
)
@click.option("--threshold", type=float, help="Flag threshold in nats (default: calibrated).")
@click.option("--iw-samples", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--per-dim-kl", is_flag=True, help="Add kl_dim_0.. columns (KL of each latent).")
@click.option("--keep-columns", is_flag=True, help="Copy every input column into the output.")
@click.option("--rejects", help="Where rejected rows go (default: OUT stem + .rejects.csv).")
@click.option("--resume", is_flag=True, help="Finish an interrupted job exactly once.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (and checkpoint).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary here.")
@connection_options
@handle_errors
def score(input: str, **kwargs: Any) -> None:
    """Score every row of INPUT (CSV, Parquet, NPY, or '-' for CSV on stdin) into --output.

    Rows stream in chunks, so memory stays bounded whatever the file size; output is written in
    input order as answers arrive. Rows that cannot be scored (missing or non-finite values,
    malformed CSV lines, batches the server rejects) go to the rejects file with the reason.
    An interrupted job (Ctrl-C, server restart, network drop) continues with --resume and ends
    with every row exactly once in the output or the rejects file.
    """
    conn = _split(kwargs)
    job = ScoreJob(
        input=input,
        output=kwargs["output"],
        model=kwargs["model"],
        input_format=kwargs["input_format"],
        output_format=kwargs["output_format"],
        columns=parse_columns(kwargs["columns"]),
        id_column=kwargs["id_column"],
        condition_column=kwargs["condition_column"],
        batch_size=kwargs["batch_size"],
        max_in_flight=kwargs["in_flight"],
        score=kwargs["score_kind"],
        threshold=kwargs["threshold"],
        iw_samples=kwargs["iw_samples"],
        seed=kwargs["seed"],
        kl_per_dim=kwargs["per_dim_kl"],
        keep_columns=kwargs["keep_columns"],
        rejects=kwargs["rejects"],
        resume=kwargs["resume"],
        overwrite=kwargs["overwrite"],
        progress=False if kwargs["quiet"] else None,
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with _client(conn) as client:
            summary = run_score_job(client, job)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if kwargs["summary_json"]:
        with open(kwargs["summary_json"], "w") as f:
            json.dump(summary.to_dict(), f, indent=2)
    if not kwargs["quiet"]:
        print_summary(summary)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _transform_command(kind: str, doc: str) -> Callable[..., Any]:
    """Build the encode / decode / reconstruct commands, which share their options."""

    @click.argument("input", type=str)
    @click.option("--output", "-o", default="-", show_default=True, help="Output file or '-'.")
    @click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS))
    @input_format_option
    @model_option
    @columns_option
    @click.option("--id-column", help="Input column written as each row's id.")
    @click.option("--condition", help="Class label for a conditional model (all rows).")
    @click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True)
    @click.option("--overwrite/--no-overwrite", default=True, show_default=True)
    @connection_options
    @handle_errors
    def command(input: str, **kwargs: Any) -> None:
        conn = _split(kwargs)
        extra = {}
        if kind == "encode":
            extra = {"sample": kwargs.pop("sample"), "seed": kwargs.pop("seed")}
        with _client(conn) as client:
            rows = transform_file(
                client,
                kind,
                input,
                kwargs["output"],
                model=kwargs["model"],
                input_format=kwargs["input_format"],
                output_format=kwargs["output_format"],
                columns=parse_columns(kwargs["columns"]),
                id_column=kwargs["id_column"],
                condition=kwargs["condition"],
                batch_size=kwargs["batch_size"],
                overwrite=kwargs["overwrite"],
                **extra,
            )
        if kwargs["output"] != "-":
            click.echo(f"{kind}: {rows:,} rows -> {kwargs['output']}", err=True)

    command.__doc__ = doc
    command.__name__ = kind
    if kind == "encode":
        command = click.option("--seed", type=click.IntRange(min=0), default=0)(command)
        command = click.option("--sample", is_flag=True, help="Also write z = mu + sigma*eps.")(
            command
        )
    return cli.command(name=kind)(command)


_transform_command(
    "encode",
    """Posterior mean (mu_*) and log-variance (logvar_*) of every row of INPUT.""",
)
_transform_command(
    "decode",
    """Decode latent rows of INPUT (columns z_0.. by default) into feature rows.""",
)
_transform_command(
    "reconstruct",
    """decoder(posterior mean) of every row of INPUT: what the model makes of it.""",
)


@cli.command()
@click.option("--n", "-n", "count", type=click.IntRange(min=0), required=True, help="Rows.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--condition", help="Class label for a conditional model.")
@click.option("--with-z", is_flag=True, help="Also write the latent draws (z_* columns).")
@click.option("--output", "-o", default="-", show_default=True, help="Output file or '-'.")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS))
@model_option
@connection_options
@handle_errors
def sample(count: int, **kwargs: Any) -> None:
    """Generate --n rows from z ~ N(0, I) and write them (feature columns), request by request."""
    conn = _split(kwargs)
    with _client(conn) as client:
        info = client.model_info(kwargs["model"], cached=True)
        rows = sample_to_file(
            client,
            kwargs["output"],
            count,
            model=kwargs["model"],
            seed=kwargs["seed"],
            condition=condition_rows(info, kwargs["condition"]),
            with_z=kwargs["with_z"],
            output_format=kwargs["output_format"],
        )
    if kwargs["output"] != "-":
        click.echo(f"sample: {rows:,} rows -> {kwargs['output']}", err=True)


@cli.command()
@click.argument("input", type=str)
@click.option(
    "--rows",
    "row_pair",
    default="0,1",
    show_default=True,
    help="Two row numbers of INPUT: the path's ends.",
)
@click.option("--steps", "-k", type=click.IntRange(min=2), default=8, show_default=True)
@click.option(
    "--method",
    type=click.Choice(["linear", "spherical"]),
    default="linear",
    show_default=True,
    help="Straight line or great-circle path between the two posterior means.",
)
@click.option("--with-z", is_flag=True, help="Also write each point's latent (z_* columns).")
@click.option("--output", "-o", default="-", show_default=True, help="Output file or '-'.")
@click.option("--format", "output_format", type=click.Choice(OUTPUT_FORMATS))
@input_format_option
@model_option
@columns_option
@click.option("--condition", help="Class label for a conditional model.")
@connection_options
@handle_errors
def interpolate(input: str, **kwargs: Any) -> None:
    """Decode --steps points along the latent path between two rows of INPUT."""
    conn = _split(kwargs)
    try:
        a, b = (int(v) for v in kwargs["row_pair"].split(","))
    except ValueError:
        raise click.BadParameter("give two row numbers, e.g. 0,1", param_hint="--rows") from None
    if a < 0 or b < 0:
        raise click.BadParameter("row numbers are >= 0", param_hint="--rows")
    with _client(conn) as client:
        info = client.model_info(kwargs["model"], cached=True)
        cond = condition_rows(info, kwargs["condition"])
        with open_input(
            input,
            fmt=kwargs["input_format"],
            columns=parse_columns(kwargs["columns"]),
            feature_names=info.feature_names,
            expected_dim=info.input_dim,
        ) as reader:
            ends = _pick_rows(reader, [a, b], input)
        enc = client.encode(ends, model=kwargs["model"], condition=cond)
        t = np.linspace(0.0, 1.0, kwargs["steps"])
        path = (slerp if kwargs["method"] == "spherical" else lerp)(enc.mu[0], enc.mu[1], t)
        rows = client.decode(path, model=kwargs["model"], condition=cond)
    names = info.feature_names or [f"x{i}" for i in range(info.input_dim)]
    matrix = rows
    if kwargs["with_z"]:
        names = list(names) + [f"z_{d}" for d in range(info.latent_dim)]
        matrix = np.concatenate([rows, path], axis=1)
    write_rows(
        kwargs["output"],
        matrix,
        names,
        output_format=kwargs["output_format"],
        lead={"t": t},
    )


def _pick_rows(reader: Any, wanted: list[int], where: str) -> np.ndarray:
    """The given input rows, read in chunks and stopping once both are found."""
    found: dict[int, np.ndarray] = {}
    for chunk in reader.chunks(4096):
        for w in wanted:
            if chunk.start <= w < chunk.start + len(chunk):
                found[w] = chunk.rows[w - chunk.start]
        if len(found) == len(set(wanted)):
            break
    missing = [w for w in wanted if w not in found]
    if missing:
        raise VaeClientError(f"{where}: rows {missing} are past the end of the input")
    rows = np.stack([found[w] for w in wanted])
    if not np.isfinite(rows).all():
        raise VaeClientError(f"{where}: rows {wanted} have missing or non-finite values")
    return rows


@cli.command()
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--manifest", is_flag=True, help="Print the model's manifest.json.")
@connection_options
@handle_errors
def info(**kwargs: Any) -> None:
    """Describe a model (--model), or list every model the server has loaded."""
    conn = _split(kwargs)
    with _client(conn) as client:
        if not kwargs["model"] and not kwargs["manifest"]:
            models = client.list_models()
            if kwargs["as_json"]:
                click.echo(json.dumps([m.__dict__ for m in models], indent=2))
                return
            if not models:
                click.echo("no models loaded")
            for m in models:
                state = "ready" if m.ready else "not ready"
                versions = ",".join(str(v) for v in m.versions)
                click.echo(f"{m.name}\tlatest {m.latest}\tversions {versions}\t{state}")
            return
        mi = client.model_info(kwargs["model"])
    if kwargs["manifest"]:
        click.echo(json.dumps(mi.manifest, indent=2))
        return
    if kwargs["as_json"]:
        click.echo(json.dumps(mi.to_dict(), indent=2))
        return
    names = mi.feature_names
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    ready = "ready" if mi.ready else "not ready"
    lines = [
        f"model        {format_model((mi.name, mi.version))} ({ready})",
        f"versions     {', '.join(str(v) for v in mi.versions)}",
        f"device       {mi.device} ({', '.join(mi.providers)})",
        f"input_dim    {mi.input_dim}",
        f"latent_dim   {mi.latent_dim}",
        f"cond_dim     {mi.cond_dim}"
        + (f" ({', '.join(mi.condition_classes)})" if mi.condition_classes else ""),
        f"likelihood   {mi.likelihood}",
        f"score        {mi.default_score}",
        "thresholds   " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(mi.thresholds.items())),
        f"features     {shown}",
    ]
    click.echo("\n".join(lines))


@cli.command()
@click.option("--service", default="", help="Service name to check ('' is the whole server).")
@connection_options
@handle_errors
def health(service: str, **kwargs: Any) -> None:
    """Print the server's health status; exit 0 only when SERVING."""
    conn = _split(kwargs)
    with _client(conn) as client:
        status = client.health(service)
    click.echo(status)
    if status != "SERVING":
        sys.exit(1)


def main() -> None:
    """Console entry point: VAECLIENT_<COMMAND>_<OPTION> variables fill unset options."""
    try:
        cli(auto_envvar_prefix=ENV_PREFIX)
    except SystemExit as exc:
        # A job that stopped early can leave its reader thread blocked on stdin; the
        # interpreter's shutdown would then abort on the stdin lock. Everything is written
        # and committed by now, so leave without the shutdown.
        if any(t.name == FEEDER_THREAD and t.is_alive() for t in threading.enumerate()):
            sys.stdout.flush()
            sys.stderr.flush()
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            os._exit(code)
        raise


if __name__ == "__main__":
    main()
