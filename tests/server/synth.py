"""A small linear-Gaussian VAE built directly with onnx.helper, in the model-format layout.

Used by server tests for what the trained `model_repo` fixture does not cover: conditional
models (cond_dim > 0) and several models in one repository. It follows docs/model-format.md:
standardisation inside the graphs, Gaussian likelihood, the four graphs and a manifest with a
calibration fitted on the scorer's own outputs. No torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from vaeserve.common.calibration import fit_calibration
from vaeserve.common.manifest import Manifest, sha256_file

OPSET = 18
LOG2PI = math.log(2.0 * math.pi)


class _G:
    """Tiny graph builder: constants and nodes with generated names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, value: np.ndarray | float | list, dtype: type = np.float32) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op: str, *inputs: str, out: str | None = None, **attrs: object) -> str:
        self.n += 1
        name = out or f"t{self.n}"
        self.nodes.append(helper.make_node(op, list(inputs), [name], **attrs))
        return name

    def model(self, inputs: list, outputs: list, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        m.ir_version = 9
        onnx.checker.check_model(m)
        return m


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


class LinearVae:
    """Parameters of the synthetic model and the ONNX graphs built from them."""

    def __init__(self, input_dim: int, latent_dim: int, cond_dim: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.d, self.l, self.c = input_dim, latent_dim, cond_dim
        self.mean = rng.normal(0, 2, input_dim).astype(np.float32)
        self.scale = rng.uniform(0.5, 2.0, input_dim).astype(np.float32)
        self.w_mu = rng.normal(0, 0.4, (input_dim, latent_dim)).astype(np.float32)
        self.w_lv = rng.normal(0, 0.2, (input_dim, latent_dim)).astype(np.float32)
        self.b_mu = rng.normal(0, 0.1, latent_dim).astype(np.float32)
        self.b_lv = rng.normal(-0.5, 0.1, latent_dim).astype(np.float32)
        self.c_mu = rng.normal(0, 0.5, (max(cond_dim, 1), latent_dim)).astype(np.float32)
        self.c_lv = rng.normal(0, 0.1, (max(cond_dim, 1), latent_dim)).astype(np.float32)
        self.w_d = rng.normal(0, 0.5, (latent_dim, input_dim)).astype(np.float32)
        self.c_d = rng.normal(0, 0.5, (max(cond_dim, 1), input_dim)).astype(np.float32)
        self.b_d = rng.normal(0, 0.1, input_dim).astype(np.float32)
        self.log_sig = rng.uniform(-0.5, 0.2, input_dim).astype(np.float32)

    def _encode(self, g: _G, x: str, cond: str | None) -> tuple[str, str, str]:
        xs = g.op("Div", g.op("Sub", x, g.const(self.mean)), g.const(self.scale))
        mu = g.op("Add", g.op("MatMul", xs, g.const(self.w_mu)), g.const(self.b_mu))
        lv = g.op("Add", g.op("MatMul", xs, g.const(self.w_lv)), g.const(self.b_lv))
        if cond is not None:
            mu = g.op("Add", mu, g.op("MatMul", cond, g.const(self.c_mu[: self.c])))
            lv = g.op("Add", lv, g.op("MatMul", cond, g.const(self.c_lv[: self.c])))
        return xs, mu, g.op("Tanh", lv)

    def _decode_std(self, g: _G, z: str, cond: str | None) -> str:
        h = g.op("Add", g.op("MatMul", z, g.const(self.w_d)), g.const(self.b_d))
        if cond is not None:
            h = g.op("Add", h, g.op("MatMul", cond, g.const(self.c_d[: self.c])))
        return h

    def _log_px(self, g: _G, xs: str, xs_hat: str) -> str:
        """log p(x | z) in raw units, summed over features (last axis)."""
        r = g.op("Div", g.op("Sub", xs, xs_hat), g.const(np.exp(self.log_sig)))
        per = g.op(
            "Add",
            g.op("Mul", g.op("Mul", r, r), g.const(0.5)),
            g.const(self.log_sig + 0.5 * LOG2PI + np.log(self.scale)),
        )
        return g.op("Neg", g.op("ReduceSum", per, g.const([-1], np.int64), keepdims=0))

    def graphs(self) -> dict[str, onnx.ModelProto]:
        d, lat, c = self.d, self.l, self.c
        cin = [_vi("cond", ["batch", c])] if c else []
        cname = "cond" if c else None
        out: dict[str, onnx.ModelProto] = {}

        g = _G()
        _, mu, lv = self._encode(g, "x", cname)
        g.op("Identity", mu, out="mu")
        g.op("Identity", lv, out="logvar")
        out["encoder"] = g.model(
            [_vi("x", ["batch", d]), *cin],
            [_vi("mu", ["batch", lat]), _vi("logvar", ["batch", lat])],
            "encoder",
        )

        g = _G()
        h = self._decode_std(g, "z", cname)
        g.op("Add", g.op("Mul", h, g.const(self.scale)), g.const(self.mean), out="x_hat")
        out["decoder"] = g.model(
            [_vi("z", ["batch", lat]), *cin], [_vi("x_hat", ["batch", d])], "decoder"
        )

        g = _G()
        xs, mu, lv = self._encode(g, "x", cname)
        kpd = g.op(
            "Mul",
            g.op(
                "Sub",
                g.op("Sub", g.op("Add", g.op("Mul", mu, mu), g.op("Exp", lv)), lv),
                g.const(1.0),
            ),
            g.const(0.5),
            out="kl_per_dim",
        )
        kl = g.op("ReduceSum", kpd, g.const([1], np.int64), keepdims=0, out="kl")
        nll = g.op("Neg", self._log_px(g, xs, self._decode_std(g, mu, cname)), out="recon_nll")
        g.op("Add", nll, kl, out="neg_elbo")
        out["scorer"] = g.model(
            [_vi("x", ["batch", d]), *cin],
            [
                _vi("kl", ["batch"]),
                _vi("kl_per_dim", ["batch", lat]),
                _vi("recon_nll", ["batch"]),
                _vi("neg_elbo", ["batch"]),
            ],
            "scorer",
        )

        g = _G()
        xs, mu, lv = self._encode(g, "x", cname)
        std = g.op("Exp", g.op("Mul", lv, g.const(0.5)))
        z = g.op("Add", mu, g.op("Mul", std, "noise"))  # [K, batch, L]
        log_px = self._log_px(g, xs, self._decode_std(g, z, cname))  # [K, batch]
        axis = g.const([-1], np.int64)
        log_pz = g.op(
            "Sub",
            g.op("Mul", g.op("ReduceSum", g.op("Mul", z, z), axis, keepdims=0), g.const(-0.5)),
            g.const(0.5 * lat * LOG2PI),
        )
        q_terms = g.op("Add", g.op("Add", g.op("Mul", "noise", "noise"), lv), g.const(LOG2PI))
        log_q = g.op("Mul", g.op("ReduceSum", q_terms, axis, keepdims=0), g.const(-0.5))
        log_w = g.op("Sub", g.op("Add", log_px, log_pz), log_q)
        lse = g.op("ReduceLogSumExp", log_w, g.const([0], np.int64), keepdims=0)
        k = g.op(
            "Cast",
            g.op("Gather", g.op("Shape", "noise"), g.const(0, np.int64), axis=0),
            to=TensorProto.FLOAT,
        )
        g.op("Neg", g.op("Sub", lse, g.op("Log", k)), out="iw_nll")
        out["iw_scorer"] = g.model(
            [_vi("x", ["batch", d]), *cin, _vi("noise", ["K", "batch", lat])],
            [_vi("iw_nll", ["batch"])],
            "iw_scorer",
        )
        return out

    def sample_rows(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows from roughly the model's own distribution (and one-hot conditions)."""
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, self.l)).astype(np.float32)
        cond = None
        h = z @ self.w_d + self.b_d
        if self.c:
            cond = np.eye(self.c, dtype=np.float32)[rng.integers(0, self.c, n)]
            h = h + cond @ self.c_d[: self.c]
        h = h + rng.normal(size=h.shape) * np.exp(self.log_sig)
        return (h * self.scale + self.mean).astype(np.float32), cond


def write_synthetic_model(
    repo: Path,
    name: str,
    version: int = 1,
    input_dim: int = 12,
    latent_dim: int = 3,
    cond_dim: int = 0,
    seed: int = 0,
) -> Path:
    """Write REPO/NAME/VERSION/ with the four graphs and a manifest; returns the folder."""
    vae = LinearVae(input_dim, latent_dim, cond_dim, seed)
    out = repo / name / str(version)
    out.mkdir(parents=True, exist_ok=True)
    graphs = vae.graphs()
    specs = {}
    for gname, model in graphs.items():
        path = out / f"{gname}.onnx"
        onnx.save(model, path)
        ins = [
            {
                "name": i.name,
                "shape": [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim],
                "dtype": "float32",
            }
            for i in model.graph.input
        ]
        outs = [
            {
                "name": o.name,
                "shape": [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim],
                "dtype": "float32",
            }
            for o in model.graph.output
        ]
        specs[gname] = {
            "file": path.name,
            "sha256": sha256_file(path),
            "inputs": ins,
            "outputs": outs,
        }
    rows, cond = vae.sample_rows(2000, seed + 1)
    sess = ort.InferenceSession(str(out / "scorer.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"x": rows} if cond is None else {"x": rows, "cond": cond}
    kl, _, recon, neg_elbo = sess.run(None, feeds)
    cal = fit_calibration({"kl": kl, "recon_nll": recon, "neg_elbo": neg_elbo})
    classes = [f"class{i}" for i in range(cond_dim)] if cond_dim else None
    manifest = Manifest.from_dict(
        {
            "format_version": 1,
            "name": name,
            "version": version,
            "created": "2026-01-01T00:00:00Z",
            "input_dim": input_dim,
            "latent_dim": latent_dim,
            "cond_dim": cond_dim,
            "likelihood": "gaussian",
            "feature_names": [f"f{i}" for i in range(input_dim)],
            "condition_classes": classes,
            "normalisation": {"mean": vae.mean.tolist(), "scale": vae.scale.tolist()},
            "graphs": specs,
            "calibration": cal.__dict__,
            "training": {"config": {"synthetic": True}, "final_metrics": {}},
            "opset": OPSET,
            "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__},
        }
    )
    (out / "manifest.json").write_text(manifest.to_json())
    json.loads((out / "manifest.json").read_text())
    return out
