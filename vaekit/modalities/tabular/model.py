"""The table VAE: MLP encoder and decoder, one likelihood term per column, missing cells masked out."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from vaekit.core.io import atomic_path
from vaekit.core.likelihoods import Categorical, Gaussian, Likelihood
from vaekit.core.module import VAE, Batch
from vaekit.modalities.tabular.table import TableSpec, decode_table

# Logit of a category slot a column does not have (columns are padded to the largest vocabulary).
ABSENT_LOGIT = -1e4


class GaussianMixture(Likelihood):
    """``components`` Gaussians per numeric column, weights, means and log-scales all from the decoder: a column
    with several modes (TVAE's reason for mode-specific normalisation) gets one component per mode.

    ``marginal_weight`` > 0 adds one more, fixed component of that weight: the column's own marginal Gaussian,
    N(0, 1) in standardised units. A cell the decoder's components miss then costs at most the marginal
    Gaussian's NLL plus log(1 / weight); without it a near-constant column, whose components narrow onto its
    one value, charges a row off that value thousands of nats, and one column decides the row's score."""

    def __init__(self, columns: int, components: int, marginal_weight: float = 0.0) -> None:
        super().__init__()
        self.columns, self.components, self.marginal_weight = columns, components, marginal_weight

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(log-weights, means, log-scales), each (B, columns, components [+ 1 for the marginal])."""
        logits, means, log_scales = params.reshape(len(params), self.columns, 3 * self.components).chunk(3, dim=-1)
        log_weights, log_scales = torch.log_softmax(logits, -1), log_scales.clamp(min=-7.0)
        if not self.marginal_weight:
            return log_weights, means, log_scales
        zero = means.new_zeros(*means.shape[:-1], 1)  # N(0, 1): mean 0, log-scale 0
        log_weights = torch.cat(
            [log_weights + math.log1p(-self.marginal_weight), zero + math.log(self.marginal_weight)], -1
        )
        return log_weights, torch.cat([means, zero], -1), torch.cat([log_scales, zero], -1)

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        log_weights, means, log_scales = self._split(params)
        standard = (x.unsqueeze(-1) - means) / log_scales.exp()
        per_component = -0.5 * math.log(2 * math.pi) - log_scales - 0.5 * standard**2
        elementwise = torch.logsumexp(log_weights + per_component, dim=-1)
        return (elementwise if mask is None else elementwise * mask).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        log_weights, means, _ = self._split(params)
        return (log_weights.exp() * means).sum(-1)

    def sample(self, params: Tensor) -> Tensor:
        log_weights, means, log_scales = self._split(params)
        choice = torch.distributions.Categorical(logits=log_weights).sample().unsqueeze(-1)
        mean, log_scale = means.gather(-1, choice).squeeze(-1), log_scales.gather(-1, choice).squeeze(-1)
        return mean + log_scale.exp() * torch.randn_like(mean)


class TableLikelihood(Likelihood):
    """p(row | z): a numeric likelihood over the standardised numeric columns and a categorical one per
    categorical column, summed over the observed cells. ``x`` is (B, columns), numeric first, then category
    codes; NaN marks a missing cell, whose term is left out (never imputed)."""

    def __init__(
        self, numeric: int, vocab_sizes: list[int], numeric_kind: str, components: int, marginal_weight: float = 0.0
    ) -> None:
        super().__init__()
        self.num_numeric, self.vocab_sizes = numeric, list(vocab_sizes)
        if numeric_kind == "mixture":
            self.numeric, self.per_numeric = GaussianMixture(numeric, components, marginal_weight), 3 * components
        else:
            self.numeric, self.per_numeric = Gaussian(numeric), 1
        self.categorical = Categorical()
        widest = max(self.vocab_sizes, default=0)
        # Where each padded (column, category) slot reads the decoder's logits; absent slots read the last entry,
        # a constant ABSENT_LOGIT appended at run time. A plain gather, so the ONNX graph is one op.
        slots = torch.full((len(self.vocab_sizes), widest), sum(self.vocab_sizes), dtype=torch.long)
        start = 0
        for column, size in enumerate(self.vocab_sizes):
            slots[column, :size] = torch.arange(start, start + size)
            start += size
        self.register_buffer("slots", slots.flatten(), persistent=False)
        self.widest = widest

    @property
    def outputs(self) -> int:
        """Decoder outputs per row."""
        return self.num_numeric * self.per_numeric + sum(self.vocab_sizes)

    def split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """Numeric parameters (B, numeric * per_numeric) and padded logits (B, categorical, widest)."""
        numeric, flat = params.split([self.num_numeric * self.per_numeric, sum(self.vocab_sizes)], dim=1)
        padded = torch.cat([flat, flat.new_full((len(flat), 1), ABSENT_LOGIT)], dim=1)[:, self.slots]
        return numeric, padded.view(len(flat), len(self.vocab_sizes), self.widest)

    def log_prob(self, params: Tensor, x: Tensor, mask: Tensor | None = None) -> Tensor:
        observed = ~torch.isnan(x)
        if mask is not None:
            observed &= mask.bool()
        values = torch.where(observed, x, torch.zeros_like(x))
        numeric, logits = self.split(params)
        split = self.num_numeric
        total = self.numeric.log_prob(numeric, values[:, :split], observed[:, :split].to(values.dtype))
        if self.vocab_sizes:
            codes = values[:, split:].long()
            total = total + self.categorical.log_prob(logits, codes, observed[:, split:].to(values.dtype))
        return total

    def mean(self, params: Tensor) -> Tensor:
        """The numeric columns' means and each categorical column's most likely category (its code)."""
        numeric, logits = self.split(params)
        codes = logits.argmax(-1) if self.vocab_sizes else logits.new_zeros(len(logits), 0)
        return torch.cat([self.numeric.mean(numeric), codes.to(numeric.dtype)], dim=1)

    def sample(self, params: Tensor) -> Tensor:
        numeric, logits = self.split(params)
        codes = self.categorical.sample(logits) if self.vocab_sizes else logits.new_zeros(len(logits), 0)
        return torch.cat([self.numeric.sample(numeric), codes.to(numeric.dtype)], dim=1)


class TableEncoder(nn.Module):
    """Row -> (mean, logvar). The input is the numeric cells (0 where missing), a 0/1 observed flag per numeric
    column, and each categorical column one-hot (all zeros where missing), so missing is seen as missing."""

    def __init__(self, spec: TableSpec, hidden: int, layers: int, latent_dim: int) -> None:
        super().__init__()
        self.num_numeric = len(spec.numeric)
        sizes = spec.vocab_sizes
        widest = max(sizes, default=0)
        self.register_buffer("categories", torch.arange(widest, dtype=torch.float32), persistent=False)
        keep = [column * widest + k for column, size in enumerate(sizes) for k in range(size)]
        self.register_buffer("one_hot_slots", torch.tensor(keep, dtype=torch.long), persistent=False)
        self.net = mlp(2 * self.num_numeric + sum(sizes), hidden, layers, 2 * latent_dim)

    def features(self, x: Tensor) -> Tensor:
        numeric, codes = x[:, : self.num_numeric], x[:, self.num_numeric :]
        observed = ~torch.isnan(numeric)
        one_hot = (codes.unsqueeze(-1) == self.categories).to(x.dtype).flatten(1)[:, self.one_hot_slots]
        return torch.cat([torch.where(observed, numeric, torch.zeros_like(numeric)), observed.to(x.dtype), one_hot], 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.net(self.features(x)).chunk(2, dim=-1)
        return mean, logvar


def mlp(inputs: int, hidden: int, layers: int, outputs: int) -> nn.Sequential:
    widths = [inputs] + [hidden] * layers
    body = [module for a, b in itertools.pairwise(widths) for module in (nn.Linear(a, b), nn.SiLU())]
    return nn.Sequential(*body, nn.Linear(widths[-1], outputs))


class TableVAE(VAE):
    """VAE over rows of a table.

    ``hidden`` (0: sized from the data, twice the encoder's inputs within [64, 512], so one default serves 3 to
    500 columns) is the width of ``layers`` hidden layers in the encoder and the decoder. ``numeric_likelihood``:
    ``gaussian`` (a learned scale per column) or ``mixture`` (``mixture_components`` Gaussians per column, for
    columns with several modes; ``marginal_weight``: the column's marginal Gaussian as one more). The NLL is in
    nats per row, summed over the observed cells, numeric cells measured in standardised units.
    """

    modality = "tabular"
    spec_type = TableSpec
    # Written beside config.json by `vaekit export`: what turns the model's rows back into the original units.
    spec_assets: ClassVar[dict[str, tuple[str, ...]]] = {
        "transforms.json": ("numeric", "means", "stds", "integer", "minimum", "maximum", "categorical", "categories")
    }

    def __init__(
        self,
        latent_dim: int = 16,
        hidden: int = 0,
        layers: int = 2,
        numeric_likelihood: Literal["gaussian", "mixture"] = "gaussian",
        mixture_components: int = 5,
        marginal_weight: float = 0.0,
        **core: Any,
    ) -> None:
        if not 0 <= marginal_weight < 1:
            raise ValueError(f"--model.marginal_weight is a mixture weight in [0, 1), got {marginal_weight}")
        super().__init__(latent_dim=latent_dim, **core)

    def build(self, spec: TableSpec) -> None:
        hp = self.hparams
        inputs = 2 * len(spec.numeric) + sum(spec.vocab_sizes)
        hidden = hp.hidden or min(512, max(64, 2 * inputs))
        self.likelihood = TableLikelihood(
            len(spec.numeric), spec.vocab_sizes, hp.numeric_likelihood, hp.mixture_components, hp.marginal_weight
        )
        self.encoder = TableEncoder(spec, hidden, hp.layers, hp.latent_dim)
        self.decoder = mlp(hp.latent_dim, hidden, hp.layers, self.likelihood.outputs)

    def num_units(self, batch: Batch) -> Tensor:
        """The observed cells of each row."""
        return (~torch.isnan(batch["x"])).sum(1)

    def summary_metrics(self, nll_sum: float, units_sum: float) -> dict[str, float]:
        return {"nats_per_cell": nll_sum / units_sum}

    def encoder_example(self) -> Tensor:
        return torch.zeros(2, self.spec.columns, device=self.device)

    def generate(self, z: Tensor, deterministic: bool = False, **options: Any) -> Tensor:
        """Rows in the model's form: drawn from p(x|z) (synthetic records), or its mean and modes
        (``deterministic``: reconstructions)."""
        params = self.decoder(z).float()
        return self.likelihood.mean(params) if deterministic else self.likelihood.sample(params)

    def save_outputs(
        self, data: Tensor, out_dir: Path, stem: str, nrow: int | None = None, **options: Any
    ) -> list[Path]:
        """One CSV (``stem``.csv) of the rows in the original units and category names."""
        path = Path(out_dir) / f"{stem}.csv"
        with atomic_path(path) as tmp:
            decode_table(data, self.spec).to_csv(tmp, index=False, float_format="%.7g")
        return [path]

    def log_media(self, writer: Any, tag: str, data: Tensor, step: int) -> None:
        writer.add_text(tag, decode_table(data[:8], self.spec).to_csv(index=False), step)
