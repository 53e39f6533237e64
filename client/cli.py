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
import sys
import threading
from collections.abc import Callable
from typing import Any

import click

from vaeserve.client.cli_dataset import (
    dataset_options,
    open_local_model,
    pop_single_file_options,
    run_dataset_command,
    wants_dataset,
)
from vaeserve.client.cli_options import (
    connection_options,
    input_options,
    model_option,
    output_options,
    pop_connection,
)
from vaeserve.client.columns import parse_columns
from vaeserve.client.conditions import condition_rows
from vaeserve.client.drift_check import DriftJob, file_drift
from vaeserve.client.drift_output import (
    DRIFT_OUTPUT_FORMATS,
    format_file,
    format_window,
    window_writer,
)
from vaeserve.client.errors import VaeClientError
from vaeserve.client.interrupts import handle_interrupts
from vaeserve.client.job_summary import JobInterrupted, print_summary
from vaeserve.client.jobs import SCORE_OUTPUT_FORMATS, ScoreJob, run_score_job
from vaeserve.client.library import VaeClient
from vaeserve.client.models import format_model
from vaeserve.client.options import ENV_PREFIX
from vaeserve.client.results import DriftReport
from vaeserve.client.score_stream import FEEDER_THREAD
from vaeserve.client.tracing import configure_from_environment as configure_tracing
from vaeserve.client.transforms import (
    PATHS,
    interpolate_file,
    sample_to_file,
    transform_file,
)
from vaeserve.common.scores import SCORE_NAMES


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


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="vaeserve")
def cli() -> None:
    """Score files and call models on a vaeserve (vae.v1) gRPC server."""


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=str)
@output_options(SCORE_OUTPUT_FORMATS, required=True)
@input_options
@click.option("--id-column", help="Input column written as each row's id (default: row number).")
@click.option("--condition-column", help="Class-label column for conditional models.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True)
# The Python names follow ScoreJob; envvar keeps the variables these options always read.
@click.option(
    "--in-flight",
    "max_in_flight",
    envvar="VAECLIENT_SCORE_IN_FLIGHT",
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
@click.option(
    "--per-dim-kl",
    "kl_per_dim",
    envvar="VAECLIENT_SCORE_PER_DIM_KL",
    is_flag=True,
    help="Add kl_dim_0.. columns (KL of each latent).",
)
@click.option(
    "--explain",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="K",
    help="Add each row's top K features: top_feature_i (name), top_nll_i (its reconstruction "
    "NLL, nats), top_excess_i (above its validation mean), top_value_i, top_reconstruction_i.",
)
@click.option("--keep-columns", is_flag=True, help="Copy every input column into the output.")
@click.option("--rejects", help="Where rejected rows go (default: OUT stem + .rejects.csv).")
@click.option("--resume", is_flag=True, help="Finish an interrupted job exactly once.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (and checkpoint).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--summary-json", type=click.Path(dir_okay=False), help="Write the summary here.")
@dataset_options
@connection_options
@handle_errors
def score(inputs: tuple[str, ...], **kwargs: Any) -> None:
    """Score every row of INPUTS into --output: one file (CSV, Parquet, NPY, or '-' for CSV on
    stdin) into an output file, or a dataset into an output folder.

    Rows stream in chunks, so memory stays bounded whatever the file size; output is written in
    input order as answers arrive. Rows that cannot be scored (missing or non-finite values,
    malformed CSV lines, batches the server rejects) go to the rejects file with the reason.
    An interrupted job (Ctrl-C, server restart, network drop) continues with --resume and ends
    with every row exactly once in the output or the rejects file.

    A dataset (a folder, a glob, several files or @LIST of CSV / Parquet files, local or by
    filesystem URI such as s3://) gets one output file per input file (or --rows-per-part
    part) in the --output folder, each committed whole, on this process or with --engine ray
    on a Ray cluster. --model-dir (or --model-repo) scores in-process without a server.
    """
    options = pop_connection(kwargs)
    quiet, summary_json = kwargs.pop("quiet"), kwargs.pop("summary_json")
    kwargs["columns"] = parse_columns(kwargs.pop("columns"))
    kwargs["score"] = kwargs.pop("score_kind")
    with handle_interrupts():
        if wants_dataset(inputs, kwargs["engine"]):
            run_dataset_command(inputs, kwargs, options, quiet=quiet, summary_json=summary_json)
            return
        local = pop_single_file_options(kwargs)
        job = ScoreJob(input=inputs[0], progress=False if quiet else None, **kwargs)
        if local["model_dir"] or local["model_repo"]:
            threads = int(local["cpus_per_worker"] or 0)
            client = open_local_model(local["model_dir"], local["model_repo"], job.model, threads)
        else:
            client = VaeClient.from_options(options)
        with client:
            summary = run_score_job(client, job)
    if summary_json:
        with open(summary_json, "w") as f:
            json.dump(summary.to_dict(), f, indent=2)
    if not quiet:
        print_summary(summary)


def _transform_command(kind: str, doc: str) -> Callable[..., Any]:
    """Build the encode / decode / reconstruct commands, which share their options."""

    @click.argument("input", type=str)
    @output_options()
    @input_options
    @click.option("--id-column", help="Input column written as each row's id.")
    @click.option("--condition", help="Class label for a conditional model (all rows).")
    @click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True)
    @click.option("--overwrite/--no-overwrite", default=True, show_default=True)
    @connection_options
    @handle_errors
    def command(input: str, **kwargs: Any) -> None:
        options = pop_connection(kwargs)
        columns = parse_columns(kwargs.pop("columns"))
        with VaeClient.from_options(options) as client:
            rows = transform_file(client, kind, input, columns=columns, **kwargs)
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
@output_options()
@model_option
@connection_options
@handle_errors
def sample(count: int, **kwargs: Any) -> None:
    """Generate --n rows from z ~ N(0, I) and write them (feature columns), request by request."""
    with VaeClient.from_options(pop_connection(kwargs)) as client:
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
    type=click.Choice(list(PATHS)),
    default="linear",
    show_default=True,
    help="Straight line or great-circle path between the two posterior means.",
)
@click.option("--with-z", is_flag=True, help="Also write each point's latent (z_* columns).")
@output_options()
@input_options
@click.option("--condition", help="Class label for a conditional model.")
@connection_options
@handle_errors
def interpolate(input: str, **kwargs: Any) -> None:
    """Decode --steps points along the latent path between two rows of INPUT."""
    options = pop_connection(kwargs)
    try:
        a, b = (int(v) for v in kwargs.pop("row_pair").split(","))
    except ValueError:
        raise click.BadParameter("give two row numbers, e.g. 0,1", param_hint="--rows") from None
    if a < 0 or b < 0:
        raise click.BadParameter("row numbers are >= 0", param_hint="--rows")
    columns = parse_columns(kwargs.pop("columns"))
    with VaeClient.from_options(options) as client:
        interpolate_file(client, input, ends=(a, b), columns=columns, **kwargs)


@cli.command()
@model_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--manifest", is_flag=True, help="Print the model's manifest.json.")
@connection_options
@handle_errors
def info(**kwargs: Any) -> None:
    """Describe a model (--model), or list every model the server has loaded."""
    with VaeClient.from_options(pop_connection(kwargs)) as client:
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
        f"explain      {'yes (score --explain K)' if mi.explain else 'no'}",
        "drift        "
        + (f"window of {mi.drift_window_rows:,} rows" if mi.drift_window_rows else "no window"),
    ]
    if mi.unavailable:
        lines.append(f"unavailable  {mi.unavailable}")
    click.echo("\n".join(lines))


@cli.command()
@click.argument("input", required=False, type=str)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Rows per window: each run of this many consecutive rows is tested on its own.",
)
@click.option(
    "--fail-on-drift",
    "fail_alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    metavar="ALPHA",
    help="Exit 3 when the p-value (the whole file's, or the server window's) is below ALPHA; "
    "ALPHA is also the level windows count as drifted at (default 0.01).",
)
@click.option("--output", "-o", help="Write the per-window table here (.csv, .parquet, .jsonl).")
@click.option("--format", "output_format", type=click.Choice(DRIFT_OUTPUT_FORMATS))
@input_options
@click.option("--condition-column", help="Class-label column for conditional models.")
@click.option("--batch-size", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option("--model-dir", help="Encode in-process with this exported model (REPO/NAME/VERSION).")
@click.option("--model-repo", help="Encode in-process with --model from this repository.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@connection_options
@handle_errors
def drift(input: str | None, **kwargs: Any) -> None:
    """Drift of INPUT's rows (CSV, Parquet, NPY) against the model's validation rows, in
    nats with a p-value, per --window rows and for the whole file: the statistic vae-server
    keeps for its window, computed offline. Without INPUT, the server's own window of the rows
    it scored last.

    Rows are encoded by the server (Encode) or in-process with --model-dir. Exit status: 0 when
    computed (drifted or not), 3 with --fail-on-drift when the p-value is below ALPHA, 1 on
    errors (also when there are too few rows, under 16, for a p-value to gate on).
    """
    options = pop_connection(kwargs)
    local = kwargs["model_dir"] or kwargs["model_repo"]
    if input is None:
        if local or kwargs["output"]:
            raise click.UsageError("--model-dir, --model-repo and --output need an INPUT file")
        with VaeClient.from_options(options) as client:
            reading = client.drift(kwargs["model"])
        shown = json.dumps(reading.to_dict(), indent=2) if kwargs["as_json"] else None
        click.echo(shown or format_window(reading))
        _gate(reading, kwargs["fail_alpha"])
        return
    job = DriftJob(
        input=input,
        model=kwargs["model"],
        window=kwargs["window"],
        alpha=kwargs["fail_alpha"] or 0.01,
        columns=parse_columns(kwargs["columns"]),
        input_format=kwargs["input_format"],
        condition_column=kwargs["condition_column"],
        batch_size=kwargs["batch_size"],
    )
    if local:
        client = open_local_model(kwargs["model_dir"], kwargs["model_repo"], job.model, 0)
    else:
        client = VaeClient.from_options(options)
    with client:
        latent_dim = client.model_info(job.model).latent_dim
        with window_writer(kwargs["output"], kwargs["output_format"], latent_dim, job.alpha) as w:
            result = file_drift(client, job, w)
    shown = json.dumps(result.to_dict(), indent=2) if kwargs["as_json"] else None
    click.echo(shown or format_file(result))
    _gate(result.total, kwargs["fail_alpha"])


def _gate(report: DriftReport, alpha: float | None) -> None:
    """Exit 3 when --fail-on-drift's ALPHA is above the p-value; an error without one."""
    if alpha is None:
        return
    if report.p_value is None:
        raise VaeClientError(
            f"--fail-on-drift: no p-value to gate on ({report.rows} rows; the null starts at 16)"
        )
    if report.p_value < alpha:
        click.echo(f"drift: p-value {report.p_value:.4g} < {alpha:g}", err=True)
        sys.exit(3)


@cli.command()
@click.option("--service", default="", help="Service name to check ('' is the whole server).")
@connection_options
@handle_errors
def health(service: str, **kwargs: Any) -> None:
    """Print the server's health status; exit 0 only when SERVING."""
    with VaeClient.from_options(pop_connection(kwargs)) as client:
        status = client.health(service)
    click.echo(status)
    if status != "SERVING":
        sys.exit(1)


def main() -> None:
    """Console entry point: VAECLIENT_<COMMAND>_<OPTION> variables fill unset options; the
    OTEL_* variables turn on tracing (client/tracing.py)."""
    configure_tracing()
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
