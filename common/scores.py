"""The score vocabulary: the per-row scores (all in nats), the default flag score, and their
vae.v1 `ScoreKind` enum values. Every part of vaeserve names scores through this module."""

from __future__ import annotations

from typing import Literal

from vaeserve.proto.vae.v1 import vae_pb2

ScoreName = Literal["kl", "recon_nll", "neg_elbo"]

#: KL(q(z|x) || N(0, I)), reconstruction NLL at z = mu, and their sum (the negative ELBO).
SCORE_NAMES: tuple[ScoreName, ...] = ("kl", "recon_nll", "neg_elbo")
#: The flag score when training does not choose one: it bounds -log p(x) and is strong on
#: every benchmark data set, where each part alone is weak on one of them.
DEFAULT_SCORE: ScoreName = "neg_elbo"
#: Score name -> vae.v1 ScoreKind.
SCORE_KINDS: dict[str, int] = {
    "kl": vae_pb2.KL,
    "recon_nll": vae_pb2.RECON_NLL,
    "neg_elbo": vae_pb2.NEG_ELBO,
}
#: vae.v1 ScoreKind -> score name (SCORE_KIND_UNSPECIFIED is absent: it means "the default").
KIND_NAMES: dict[int, str] = {kind: name for name, kind in SCORE_KINDS.items()}


def check_score_name(name: str, what: str = "score") -> str:
    """The name itself, or ValueError listing the valid names."""
    if name not in SCORE_NAMES:
        raise ValueError(f"{what} must be one of {', '.join(SCORE_NAMES)}, got {name!r}")
    return name
