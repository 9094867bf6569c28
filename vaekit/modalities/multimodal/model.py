"""The joint multimodal VAE: one latent space shared by several modalities, composed from installed plugins.

Each part is the plugin's own model (``Modality.model``: its encoder, decoder, likelihood, writers and
generation options), built inside the joint model with the joint latent size, so a plugin needs no code of
its own to join. The core combines the parts' Gaussian posteriors ("experts"):

- q_S(z | x_S) for a subset S of the observed modalities is their product of experts: precisions add, which
  is exact for Gaussians and lets any subset (an example missing a modality, a command given only audio) be
  encoded by the same networks;
- training maximises the mixture-of-products-of-experts bound (MoPoE, Sutter et al. 2021): the average over
  the subsets S of E_{q_S}[sum_m w_m log p(x_m|z)] - KL(q_S || p), every subset's code reconstructing every
  observed modality. ``aggregation`` picks the subsets: ``mopoe`` all of them, ``moe`` the single modalities
  (MMVAE's mixture of experts), ``poe`` only the full set (a plain product of experts);
  docs/multimodal.md gives the measurements behind the default;
- ``likelihood_weights`` w_m rebalance the modalities in training (a 784-pixel image against a 20-token
  sentence); evaluation reports unweighted nats, per subset.

A batch is one batch per modality (``{"image": {...}, "audio": {...}}``); a modality may be absent from a
batch, and an example may lack one (``present`` False): its likelihood is not counted, its expert not
multiplied in.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from vaekit.core.distributions import DiagonalGaussian
from vaekit.core.estimators import iw_nll
from vaekit.core.module import VAE, OnnxGraph, repeat_batch
from vaekit.core.objectives import THE_ELBO, ELBOTerms, LogLikelihood, Objective, mix_terms
from vaekit.core.plain import instantiate
from vaekit.modalities.registry import get_modality

JointBatch = dict[str, dict[str, Tensor]]
Experts = dict[str, tuple[DiagonalGaussian, Tensor]]  # each modality's posterior and which rows hold it
PRESENT = "present"  # per-example flag in a modality's batch: False where the example lacks this modality
_ABSENT = -1e4  # the log-precision of an absent expert: exp() of it is 0, and its gradient finite


@dataclass(frozen=True)
class JointSpec:
    """What the paired data tells the joint model: each part's own spec (as plain fields), the shared labels."""

    parts: dict[str, dict[str, Any]]
    label_names: list[str] = field(default_factory=list)


def part_modality(name: str, args: dict[str, Any]) -> str:
    """A part's modality: its ``modality`` entry, else its name (``image:`` is an image part)."""
    return str(args.get("modality", name))


def present(batch: dict[str, Tensor]) -> Tensor:
    """Which examples of a modality's batch hold real data (all of them unless the batch says otherwise)."""
    if PRESENT in batch:
        return batch[PRESENT].bool()
    first = next(v for v in batch.values() if isinstance(v, Tensor))
    return torch.ones(first.shape[0], dtype=torch.bool, device=first.device)


def product_of_experts(experts: list[tuple[DiagonalGaussian, Tensor]]) -> tuple[DiagonalGaussian, Tensor]:
    """The product of the present experts' Gaussians per example, and which examples have any expert.

    An example with none gets N(0, I) and ``valid`` False; callers leave it out.
    """
    if len(experts) == 1:
        return experts[0]
    shown = torch.stack([p for _, p in experts])  # (E, B)
    log_precisions = torch.stack([-q.logvar for q, _ in experts]).masked_fill(~shown[..., None], _ABSENT)
    valid = shown.any(0)
    log_precision = torch.logsumexp(log_precisions, 0)
    log_precision = torch.where(valid[:, None], log_precision, torch.zeros_like(log_precision))
    weights = torch.exp(log_precisions - log_precision)  # each expert's share of the precision
    mean = (weights * torch.stack([q.mean for q, _ in experts])).sum(0)
    return DiagonalGaussian(mean, -log_precision), valid


class JointVAE(VAE):
    """One VAE over several modalities, each a part built by its plugin.

    ``parts`` maps a part name to the plugin model's arguments (as under ``model.init_args`` of that plugin's
    own recipe), with ``modality`` when the name is not the modality's (two image parts, say).
    """

    modality = "multimodal"
    spec_type = JointSpec

    def __init__(
        self,
        parts: dict[str, dict[str, Any]],
        latent_dim: int = 32,
        aggregation: Literal["mopoe", "moe", "poe"] = "mopoe",
        likelihood_weights: dict[str, float] | None = None,
        **core: Any,
    ) -> None:
        super().__init__(latent_dim=latent_dim, **core)
        if not parts:
            raise ValueError("a joint model needs at least one part (--model.parts); each names a modality")
        unknown = set(likelihood_weights or {}) - set(parts)
        if unknown:
            raise ValueError(f"--model.likelihood_weights names {sorted(unknown)}, which are not parts ({list(parts)})")
        self.parts = torch.nn.ModuleDict()
        for name, args in parts.items():
            args = {k: v for k, v in args.items() if k != "modality"}
            if args.get("latent_dim", latent_dim) != latent_dim:
                raise ValueError(f"part {name!r} sets latent_dim {args['latent_dim']}; the parts share the joint one")
            plugin = get_modality(part_modality(name, parts[name])).model
            self.parts[name] = instantiate(plugin, {**args, "latent_dim": latent_dim}, f"--model.parts.{name}")
        self.generation_options = self._joint_options()

    def _joint_options(self) -> type | None:
        """Every part's generation options as one flag set (``--griffin-lim-iters``, ``--top-p``...)."""
        fields = {
            f.name: (f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata))
            for part in self.parts.values()
            if part.generation_options is not None
            for f in dataclasses.fields(part.generation_options)
        }
        return (
            dataclasses.make_dataclass("JointGenerationOptions", list(fields.values()), frozen=True) if fields else None
        )

    def _options_of(self, name: str, options: dict[str, Any]) -> dict[str, Any]:
        part_options = self.parts[name].generation_options
        if part_options is None:
            return {}
        return {f.name: options[f.name] for f in dataclasses.fields(part_options) if f.name in options}

    # ----------------------------------------------------------------- spec
    def build(self, spec: JointSpec) -> None:
        missing = [name for name in self.parts if name not in spec.parts]
        if missing:
            raise ValueError(
                f"the paired data has no {missing} part(s) (it has {list(spec.parts)}); configure both alike"
            )
        for name, part in self.parts.items():
            part.restore_spec(part.modality, spec.parts[name])

    def compile_networks(self, mode: str | None) -> None:
        for part in self.parts.values():
            part.compile_networks(mode)

    def part_names(self, batch: JointBatch) -> list[str]:
        """The parts a batch holds, in the model's order (a command encodes some only by passing only those)."""
        return [name for name in self.parts if name in batch]

    def subsets(self, names: list[str]) -> list[tuple[str, ...]]:
        """The subsets of ``names`` whose posteriors the training bound mixes (``aggregation``)."""
        if self.hparams.aggregation == "moe" or len(names) == 1:
            return [(name,) for name in names]
        if self.hparams.aggregation == "poe":
            return [tuple(names)]
        return [s for size in range(1, len(names) + 1) for s in itertools.combinations(names, size)]

    def weight(self, name: str) -> float:
        return float((self.hparams.likelihood_weights or {}).get(name, 1.0))

    # ----------------------------------------------------------------- posteriors and likelihoods
    def experts(self, batch: JointBatch, names: list[str]) -> Experts:
        return {name: (self.parts[name].posterior(batch[name]), present(batch[name])) for name in names}

    def subset_posterior(self, experts: Experts, subset: tuple[str, ...]) -> tuple[DiagonalGaussian, Tensor]:
        return product_of_experts([experts[name] for name in subset])

    def posterior(self, batch: JointBatch) -> DiagonalGaussian:
        """q(z | the observed modalities): the product of their experts."""
        names = self.part_names(batch)
        if not names:
            raise ValueError(f"the batch holds none of this model's modalities ({list(self.parts)})")
        return self.subset_posterior(self.experts(batch, names), tuple(names))[0]

    def log_likelihood_of(self, z: Tensor, batch: JointBatch, names: list[str], weighted: bool) -> Tensor:
        """sum_m w_m log p(x_m | z) over the modalities ``names`` that each example holds."""
        total = torch.zeros(z.shape[0], device=z.device)
        for name in names:
            log_p = self.parts[name].data_log_likelihood(z, batch[name])
            scale = self.weight(name) if weighted else 1.0
            total = total + scale * torch.where(present(batch[name]), log_p, torch.zeros_like(log_p))
        return total

    def subset_likelihood(self, batch: JointBatch, names: list[str], weighted: bool) -> LogLikelihood:
        """``log_likelihood_of`` in the objectives' contract: ``copies`` samples per example, copy-major."""
        parts = {name: batch[name] for name in names}

        def log_likelihood(z: Tensor, copies: int) -> Tensor:
            return self.log_likelihood_of(z, parts if copies == 1 else repeat_batch(parts, copies), names, weighted)

        return log_likelihood

    # ----------------------------------------------------------------- the bounds
    def bound_terms(self, batch: JointBatch, objective: Objective, beta: float = 1.0) -> ELBOTerms:
        """The training bound: per example, the average over the valid subsets of ``objective``'s bound, each
        subset's code reconstructing every modality the example holds (weighted by ``likelihood_weights``)."""
        names = self.part_names(batch)
        experts = self.experts(batch, names)
        log_likelihood = self.subset_likelihood(batch, names, weighted=True)
        terms, valids = [], []
        for subset in self.subsets(names):
            posterior, valid = self.subset_posterior(experts, subset)
            terms.append(objective.terms(posterior, self.bottleneck, log_likelihood, beta))
            valids.append(valid)
        share = torch.stack(valids).float()
        share = share / share.sum(0).clamp(min=1)  # (S, B): each example's average over its valid subsets
        mixed = mix_terms(terms, share, posterior=self.subset_posterior(experts, tuple(names))[0])
        mixed.loss = objective.loss(mixed, beta, self.hparams.free_bits)
        return mixed

    def subset_terms(self, batch: JointBatch, subset: tuple[str, ...], experts: Experts | None = None) -> ELBOTerms:
        """The ELBO of log p(x_S) for the modalities S alone, under q_S, in unweighted nats (``experts``:
        the batch's, when already encoded)."""
        posterior, _ = self.subset_posterior(experts or self.experts(batch, list(subset)), subset)
        log_likelihood = self.subset_likelihood(batch, list(subset), weighted=False)
        terms = THE_ELBO.terms(posterior, self.bottleneck, log_likelihood, 1.0)
        terms.loss = THE_ELBO.loss(terms, 1.0, 0.0)
        return terms

    def subset_nll(
        self, batch: JointBatch, subset: tuple[str, ...], num_samples: int, experts: Experts | None = None
    ) -> Tensor:
        """Importance-weighted -log p(x_S) with q_S as the proposal."""
        posterior, _ = self.subset_posterior(experts or self.experts(batch, list(subset)), subset)
        log_likelihood = self.subset_likelihood(batch, list(subset), weighted=False)
        return iw_nll(posterior, self.prior, log_likelihood, num_samples, self.hparams.iw_max_rows)

    def nll(self, batch: JointBatch, num_samples: int) -> Tensor:
        return self.subset_nll(batch, tuple(self.part_names(batch)), num_samples)

    def scoring_terms(self, batch: JointBatch) -> ELBOTerms:
        """`encode` and `score` report the observed modalities' own ELBO (all, or `--from`)."""
        return self.subset_terms(batch, tuple(self.part_names(batch)))

    def labels(self, batch: JointBatch) -> Tensor | None:
        return batch[self.part_names(batch)[0]].get("label")

    # ----------------------------------------------------------------- evaluation (vaekit evaluate)
    def evaluation_values(self, batch: JointBatch, iw_samples: int) -> tuple[dict[str, Tensor], DiagonalGaussian]:
        """Per subset of the modalities in the batch: its ELBO and IW NLL over the examples that hold all of it
        (``SUBSET.elbo``...); the full set's figures are the top-level ``elbo``/``nll`` of `vaekit evaluate`."""
        names = self.part_names(batch)
        experts = self.experts(batch, names)  # encoded once for every subset
        values = {}
        for size in range(1, len(names) + 1):
            for subset in itertools.combinations(names, size):
                terms = self.subset_terms(batch, subset, experts)
                nll = self.subset_nll(batch, subset, iw_samples, experts) if iw_samples else -terms.elbo
                rows = torch.stack([present(batch[name]) for name in subset]).all(0)
                key = "+".join(subset)
                for figure, value in (("elbo", terms.elbo), ("rec", terms.rec), ("kl", terms.kl), ("nll", nll)):
                    values[f"{key}.{figure}"] = torch.where(rows, value, torch.zeros_like(value))
                values[f"{key}.count"] = rows.to(nll.dtype)
        return values, terms.posterior  # the last subset's: all the modalities in the batch

    def evaluation_summary(self, totals: dict[str, float], stats: dict[str, Tensor], iw_samples: int) -> dict[str, Any]:
        keys = {key.rsplit(".", 1)[0] for key in totals}
        subsets = {
            key: {
                "num_examples": int(totals[f"{key}.count"]),
                **{k: totals[f"{key}.{k}"] / max(totals[f"{key}.count"], 1) for k in ("elbo", "rec", "kl", "nll")},
            }
            for key in sorted(keys, key=lambda k: (k.count("+"), [list(self.parts).index(n) for n in k.split("+")]))
        }
        full = subsets[max(subsets, key=lambda k: k.count("+"))]
        return {
            "iw_samples": iw_samples,
            **full,
            "active_units": int(stats["active_units"]),
            "mutual_info": float(stats["mutual_info"]),
            "subsets": subsets,
        }

    def complexity_bits(self, batch: JointBatch) -> Tensor:
        return sum(self.parts[name].complexity_bits(batch[name]) for name in self.part_names(batch))

    # ----------------------------------------------------------------- generation
    def generate(
        self, z: Tensor, deterministic: bool = False, targets: list[str] | None = None, **options: Any
    ) -> dict[str, Any]:
        """Each modality (all, or ``targets``) decoded from the same latents: sample i of every modality
        comes from z[i]."""
        names = targets or list(self.parts)
        return {
            name: self.parts[name].generate(z, deterministic=deterministic, **self._options_of(name, options))
            for name in names
        }

    def as_outputs(self, batch: JointBatch) -> dict[str, Any]:
        return {name: self.parts[name].as_outputs(batch[name]) for name in self.part_names(batch)}

    def save_outputs(
        self, data: dict[str, Any], out_dir: Path, stem: str, nrow: int | None = None, **options: Any
    ) -> list[Path]:
        """Each modality's files in its own folder (``image/samples_0003.png`` beside ``audio/samples_0003.wav``)."""
        paths = []
        for name, values in data.items():
            part = self.parts[name]
            paths += part.save_outputs(values, Path(out_dir) / name, stem, nrow=nrow, **self._options_of(name, options))
        return paths

    def log_media(self, writer: Any, tag: str, data: dict[str, Any], step: int) -> None:
        for name, values in data.items():
            self.parts[name].log_media(writer, f"{tag}/{name}", values, step)

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """Every part's graphs, named ``<part>_decoder``, ``<part>_encoder`` (each expert separately)."""
        return {
            f"{name}_{graph}": value for name, part in self.parts.items() for graph, value in part.onnx_graphs().items()
        }
