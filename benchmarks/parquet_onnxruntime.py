"""The baseline of batch scoring: Parquet files to scores in one process with onnxruntime and
nothing else (read a batch, run scorer.onnx, write kl/recon_nll/neg_elbo to Parquet), with the
server's session options and every core. Run as its own process so its peak RSS is its own:

    python -m benchmarks.parquet_onnxruntime MODEL_DIR DATA_DIR OUT_DIR [--batch-size 1024]

Prints one JSON line: rows, seconds, rows_per_s, peak_rss_mb.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.procfs import mb, status_kib


def score_folder(model_dir: Path, data: Path, out: Path, batch_size: int) -> dict[str, float]:
    """Score every Parquet file of `data` into `out`; rows and timing."""
    import onnxruntime as ort

    manifest = json.loads((model_dir / "manifest.json").read_text())
    features = manifest["feature_names"]
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(model_dir / "scorer.onnx"), options, providers=["CPUExecutionProvider"]
    )
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    started = time.perf_counter()
    for path in sorted(data.glob("*.parquet")):
        source = pq.ParquetFile(path)
        with pq.ParquetWriter(out / path.name, _SCHEMA) as writer:
            for batch in source.iter_batches(batch_size=batch_size, columns=["id", *features]):
                x = np.column_stack(
                    [batch.column(n).to_numpy(zero_copy_only=False) for n in features]
                ).astype(np.float32, copy=False)
                kl, recon, elbo = session.run(_OUTPUTS, {"x": np.ascontiguousarray(x)})
                writer.write_table(
                    pa.Table.from_arrays([batch.column("id"), kl, recon, elbo], schema=_SCHEMA)
                )
                rows += len(x)
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


_OUTPUTS = ["kl", "recon_nll", "neg_elbo"]
_SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64()),
        pa.field("kl", pa.float32()),
        pa.field("recon_nll", pa.float32()),
        pa.field("neg_elbo", pa.float32()),
    ]
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    result = score_folder(args.model_dir, args.data, args.out, args.batch_size)
    result["peak_rss_mb"] = mb(status_kib("self", "VmHWM"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
