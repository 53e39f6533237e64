"""The VAE: MLP encoder and decoder, diagonal Gaussian posterior, Gaussian or Bernoulli
likelihood, optional condition vector, with feature standardisation built in."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from vaeserve.training.config import TrainConfig
from vaeserve.training.kl import kl_diag_gaussian

LOG_2PI = math.log(2.0 * math.pi)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Takes raw feature rows; standardisation (mean, scale) is part of the module so the
    exported graphs take raw features too."""

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden: list[int],
        cond_dim: int = 0,
        likelihood: str = "gaussian",
        learned_variance: bool = True,
        fixed_std: float = 1.0,
        logvar_min: float = -8.0,
        logvar_max: float = 8.0,
        recon_logvar_min: float = -4.0,
    ) -> None:
        super().__init__()
        self.input_dim, self.latent_dim, self.cond_dim = input_dim, latent_dim, cond_dim
        self.likelihood = likelihood
        self.logvar_min, self.logvar_max = logvar_min, logvar_max
        self.recon_logvar_min = recon_logvar_min
        self.encoder = mlp([input_dim + cond_dim, *hidden, 2 * latent_dim])
        self.decoder = mlp([latent_dim + cond_dim, *reversed(hidden), input_dim])
        self.register_buffer("mean", torch.zeros(input_dim))
        self.register_buffer("scale", torch.ones(input_dim))
        init_logvar = torch.full((input_dim,), 2.0 * math.log(fixed_std))
        if likelihood == "gaussian" and learned_variance:
            self.recon_logvar = nn.Parameter(torch.zeros(input_dim))
        else:
            self.register_buffer("recon_logvar", init_logvar)

    def set_normalisation(self, mean: torch.Tensor, scale: torch.Tensor) -> None:
        self.mean.copy_(mean)
        self.scale.copy_(scale)

    def _with_cond(self, h: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        return h if cond is None else torch.cat([h, cond], dim=1)

    def encode(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw rows -> posterior mean and clamped log-variance."""
        h = self.encoder(self._with_cond((x - self.mean) / self.scale, cond))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(self.logvar_min, self.logvar_max)

    def decoder_output(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Standardised mean (Gaussian) or logits (Bernoulli)."""
        return self.decoder(self._with_cond(z, cond))

    def decode(self, z: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Latent codes -> rows in raw feature units (Bernoulli: probabilities)."""
        return self.output_to_raw(self.decoder_output(z, cond))

    def recon_nll_per_feature(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log p(x_j | decoder output) per row and feature [n, D] in nats, for raw x; the
        features are independent given z, so a row's recon_nll is the sum over j."""
        if self.likelihood == "bernoulli":
            if torch.onnx.is_in_onnx_export():
                # the exporter lowers BCE-with-logits through log(sigmoid), which is -inf
                # beyond |logit| ~ 88 in float32; softplus(out) - x * out is the same NLL,
                # stable. Training keeps torch's kernel, so its arithmetic is unchanged.
                return nn.functional.softplus(out) - x * out
            return nn.functional.binary_cross_entropy_with_logits(out, x, reduction="none")
        logvar = self.recon_logvar.clamp(min=self.recon_logvar_min)
        xs = (x - self.mean) / self.scale
        nll_std = 0.5 * ((xs - out).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)
        # change of variables from standardised to raw units: + log(scale) per feature
        return nll_std + self.scale.log()

    def recon_nll(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """-log p(x | decoder output) per row in nats, for raw x."""
        return self.recon_nll_per_feature(x, out).sum(1)

    def output_to_raw(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output -> raw feature units (Bernoulli: probabilities)."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        return out * self.scale + self.mean

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One reparameterised sample: returns (recon NLL [n], KL per dim [n, L], mu)."""
        mu, logvar = self.encode(x, cond)
        z = mu + torch.exp(0.5 * logvar) * eps
        nll = self.recon_nll(x, self.decoder_output(z, cond))
        return nll, kl_diag_gaussian(mu, logvar), mu

    def score(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Deterministic anomaly scores from the posterior mean: kl, kl_per_dim, recon, neg_elbo."""
        return self.score_with_posterior(x, cond)[:4]

    def score_with_posterior(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """`score`'s four outputs followed by the posterior mu and logvar they came from (the
        drift monitor's input, so serving needs no second encoder call)."""
        mu, logvar = self.encode(x, cond)
        kl_dims = kl_diag_gaussian(mu, logvar)
        kl = kl_dims.sum(1)
        nll = self.recon_nll(x, self.decoder_output(mu, cond))
        return kl, kl_dims, nll, nll + kl, mu, logvar

    def explain(
        self, x: torch.Tensor, cond: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature reconstruction NLL at z = mu [n, D] (nats, raw units; sums to the
        row's recon_nll) and the reconstruction x_hat [n, D] it was measured against."""
        mu, _ = self.encode(x, cond)
        out = self.decoder_output(mu, cond)
        return self.recon_nll_per_feature(x, out), self.output_to_raw(out)

    def iw_nll(
        self, x: torch.Tensor, noise: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Importance-weighted estimate of -log p(x) from K noise draws [K, n, L]
        (Burda et al.): -(logsumexp_k log w_k - log K)."""
        mu, logvar = self.encode(x, cond)
        k, n, latent = noise.shape
        z = mu.unsqueeze(0) + torch.exp(0.5 * logvar).unsqueeze(0) * noise
        z_flat = z.reshape(k * n, latent)
        x_rep = x.unsqueeze(0).expand(k, n, x.shape[1]).reshape(k * n, x.shape[1])
        cond_rep = None
        if cond is not None:
            cond_rep = cond.unsqueeze(0).expand(k, n, cond.shape[1]).reshape(k * n, -1)
        log_px_z = -self.recon_nll(x_rep, self.decoder_output(z_flat, cond_rep)).reshape(k, n)
        log_pz = -0.5 * (z.pow(2) + LOG_2PI).sum(2)
        log_qz = -0.5 * (noise.pow(2) + logvar.unsqueeze(0) + LOG_2PI).sum(2)
        log_w = log_px_z + log_pz - log_qz
        log_k = torch.ones_like(log_w).sum(0).log()  # a tensor, so K stays a dynamic axis
        return -(torch.logsumexp(log_w, dim=0) - log_k)


def build_model(config: TrainConfig, input_dim: int, cond_dim: int) -> VAE:
    """The VAE that `config` describes, for rows of `input_dim` features."""
    return VAE(
        input_dim,
        config.latent_dim,
        list(config.hidden),
        cond_dim=cond_dim,
        likelihood=config.likelihood,
        learned_variance=config.gaussian_variance == "learned",
        fixed_std=config.fixed_std,
        logvar_min=config.logvar_min,
        logvar_max=config.logvar_max,
        recon_logvar_min=config.recon_logvar_min,
    )
