"""`vae-export`: a thin command line over vaeserve.export.export_model."""

from __future__ import annotations

import json

import click

from vaeserve.export.drift_null import METHODS, REPLICATES, SEED
from vaeserve.export.parity import ParityError
from vaeserve.export.writer import DEFAULT_OPSET, export_model


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option(
    "--model-repo", required=True, type=click.Path(file_okay=False), help="Model repository root."
)
@click.option("--name", required=True, help="Model name; the version is the next free integer.")
@click.option("--opset", default=DEFAULT_OPSET, type=int, help="ONNX opset.")
@click.option("--tolerance", default=1e-4, type=float, help="Max relative error vs PyTorch.")
@click.option(
    "--drift-null",
    type=click.Choice(METHODS),
    default="auto",
    help="How the drift statistic's null is simulated (docs/monitoring.md).",
)
@click.option("--drift-replicates", default=REPLICATES, type=int, help="Drift null replicates.")
@click.option("--drift-seed", default=SEED, type=int, help="Seed of the drift null.")
def main(
    run_dir: str,
    model_repo: str,
    name: str,
    opset: int,
    tolerance: float,
    drift_null: str,
    drift_replicates: int,
    drift_seed: int,
) -> None:
    """Export RUN_DIR's trained model as ONNX graphs into MODEL_REPO/NAME/VERSION/."""
    try:
        result = export_model(
            run_dir,
            model_repo,
            name,
            opset=opset,
            tolerance=tolerance,
            drift_replicates=drift_replicates,
            drift_seed=drift_seed,
            drift_null=drift_null,
        )
    except (FileNotFoundError, ValueError, ParityError) as exc:
        raise click.ClickException(str(exc)) from exc
    worst = max(e for g in result.parity.values() for e in g.values())
    click.echo(
        json.dumps(
            {
                "model_dir": str(result.model_dir),
                "version": result.version,
                "graphs": sorted(result.manifest.graphs),
                "max_parity_error": worst,
                "thresholds": result.manifest.calibration.thresholds,
                "drift_null": result.manifest.drift.null_method if result.manifest.drift else None,
            }
        )
    )


if __name__ == "__main__":
    main()
