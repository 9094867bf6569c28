"""The text VAE: teacher-forced likelihood, word dropout, autoencoder pre-training, and decoding (greedy, sampling, beam)."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from vaekit.core.io import write_text
from vaekit.core.module import VAE, Batch, OnnxGraph
from vaekit.modalities.text.networks import DecoderStep, GRUDecoder, GRUEncoder, InitialState
from vaekit.modalities.text.tokenizer import TextSpec, tokenizer_from_spec

MAX_TOKENS = 4096  # tokens of one decoded sentence
MAX_BEAMS = 256


@dataclass
class TextGenerationOptions:
    """Decoding flags of `vaekit sample/reconstruct/interpolate/traverse` for text (``vaekit sample MODEL --help``)."""

    strategy: str = field(
        default="",
        metadata={"help": "sample, greedy or beam; default: greedy for reconstruct and interpolate, else sample"},
    )
    token_temperature: float = field(default=1.0, metadata={"help": "softmax temperature when sampling"})
    top_k: int = field(default=0, metadata={"help": "sample among the k likeliest tokens only (0: all)"})
    top_p: float = field(default=1.0, metadata={"help": "sample within the nucleus of this probability mass"})
    beam_width: int = field(default=4, metadata={"help": "beams for --strategy beam"})
    max_length: int = field(default=0, metadata={"help": "token cap per sentence, EOS included (0: training cap + 1)"})

    def __post_init__(self) -> None:
        if self.strategy not in ("", "sample", "greedy", "beam"):
            raise ValueError(f"--strategy must be sample, greedy or beam, not {self.strategy!r}")
        if self.token_temperature <= 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.beam_width < 1:
            raise ValueError("need --token-temperature > 0, 0 < --top-p <= 1, --top-k >= 0 and --beam-width >= 1")
        # Decoding holds every sentence's tokens, and each beam the vocabulary's log-probabilities: bounded so an
        # argument cannot take the machine's memory.
        if not 0 <= self.max_length <= MAX_TOKENS or self.beam_width > MAX_BEAMS:
            raise ValueError(f"--max-length must be 0..{MAX_TOKENS} and --beam-width at most {MAX_BEAMS}")


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Logits with everything outside the top-k and outside the top-p nucleus set to -inf."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        outside = cumulative - sorted_logits.softmax(-1) >= top_p  # the mass before this token already reaches p
        logits = logits.masked_fill(outside.scatter(-1, order, outside), -math.inf)
    return logits


class TextVAE(VAE):
    """GRU sentence VAE.

    ``word_dropout``: probability of replacing a decoder input token by the unknown token while training
    (Bowman et al.), so the decoder must lean on z. ``pretrain_ae_steps``: the first N steps train an
    autoencoder (KL weight 0); at step N the decoder is re-initialised and the ``beta`` schedule starts
    from its step 0 (Li et al. 2019). ``packed``: run the decoder on packed sequences (skips padding; on
    GPUs with length-bucketed batches ``false`` can be faster, with identical results). ``softmax``:
    ``full``, or ``adaptive`` with clusters at ``adaptive_cutoffs`` (token ids ordered by frequency, as the
    word and BPE tokenizers trained here are); exact either way, the adaptive one several times cheaper for
    large vocabularies. ``tie_embeddings`` shares the full softmax's weights with the decoder's input
    embedding (needs ``embed_dim == hidden_dim``).
    """

    modality = "text"
    input_kind = "text"
    spec_type = TextSpec
    generation_options = TextGenerationOptions
    spec_assets: ClassVar[dict[str, tuple[str, ...]]] = {"tokenizer.json": ("tokenizer_json",)}

    def __init__(
        self,
        latent_dim: int = 32,
        embed_dim: int = 256,
        hidden_dim: int = 512,
        encoder_layers: int = 1,
        decoder_layers: int = 1,
        bidirectional: bool = True,
        dropout: float = 0.0,
        word_dropout: float = 0.0,
        pretrain_ae_steps: int = 0,
        packed: bool = False,
        softmax: Literal["full", "adaptive"] = "full",
        adaptive_cutoffs: tuple[int, ...] = (2000,),
        tie_embeddings: bool = False,
        **core: Any,
    ) -> None:
        super().__init__(latent_dim=latent_dim, **core)
        if not 0 <= word_dropout < 1:
            raise ValueError(f"word_dropout must be in [0, 1), got {word_dropout}")
        if tie_embeddings and (softmax != "full" or embed_dim != hidden_dim):
            raise ValueError(
                "tie_embeddings shares the full softmax's weights with the input embedding: it needs "
                f"--model.softmax full and embed_dim == hidden_dim (got {softmax}, {embed_dim} and {hidden_dim})"
            )
        if list(adaptive_cutoffs) != sorted(set(adaptive_cutoffs)) or min(adaptive_cutoffs, default=1) < 1:
            raise ValueError(f"adaptive_cutoffs must be increasing positive token ids, got {list(adaptive_cutoffs)}")
        if pretrain_ae_steps > 0:  # the KL schedule starts when the autoencoder phase ends
            self.beta = replace(self.beta, start_step=self.beta.start_step + pretrain_ae_steps)
        self._decoder_reset_step = -1

    def build(self, spec: TextSpec) -> None:
        hp = self.hparams
        self.tokenizer = tokenizer_from_spec(spec)
        self.pad_id, self.bos_id = self.tokenizer.pad_token_id, self.tokenizer.bos_token_id
        self.eos_id, self.unk_id = self.tokenizer.eos_token_id, self.tokenizer.unk_token_id
        vocab = spec.vocab_size
        self.encoder = GRUEncoder(
            vocab, hp.embed_dim, hp.hidden_dim, hp.encoder_layers, hp.bidirectional, hp.latent_dim, self.pad_id
        )
        self.decoder = GRUDecoder(
            vocab,
            hp.embed_dim,
            hp.hidden_dim,
            hp.decoder_layers,
            hp.latent_dim,
            self.pad_id,
            hp.dropout,
            softmax=hp.softmax,
            cutoffs=tuple(hp.adaptive_cutoffs),
            tie_embeddings=hp.tie_embeddings,
        )

    # ---------------------------------------------------------------- hooks
    def encode_params(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.encoder(batch["x"], batch.get("host_lengths", batch["lengths"]))

    def decoder_inputs(self, batch: Batch) -> Tensor:
        """Teacher forcing: BOS..last word (EOS dropped); word dropout replaces non-BOS tokens while training."""
        inputs = batch["x"][:, :-1]
        rate = self.hparams.word_dropout
        if self.training and rate > 0:
            drop = torch.rand(inputs.shape, device=inputs.device) < rate
            drop[:, 0] = False
            inputs = inputs.masked_fill(drop & batch["mask"][:, :-1].bool(), self.unk_id)
        return inputs

    def decode_params(self, z: Tensor, batch: Batch) -> Tensor:
        lengths = batch.get("host_lengths", batch["lengths"])
        return self.decoder(self.decoder_inputs(batch), lengths - 1, z, packed=self.hparams.packed)

    def log_likelihood(self, params: Tensor, batch: Batch) -> Tensor:
        """Sum of log p(token) over each sentence's tokens after BOS (EOS included). ``params`` are the
        decoder's features; only the real tokens' positions are scored, so padding costs neither time nor nats.
        """
        real = batch["mask"][:, 1:].bool()
        per_token = params.new_zeros(real.shape)
        per_token[real] = self.decoder.token_log_probs(params[real], batch["x"][:, 1:][real]).to(params.dtype)
        return per_token.sum(1)

    def num_units(self, batch: Batch) -> Tensor:
        return batch["lengths"] - 1

    def summary_metrics(self, nll_sum: float, units_sum: float) -> dict[str, float]:
        return {"ppl": math.exp(nll_sum / units_sum)}

    def compressed_sizes(self, batch: Batch) -> list[int]:
        """zlib size of each sentence's text (padding and special tokens left out)."""
        return [len(zlib.compress(text.encode("utf-8"), 9)) for text in self.as_outputs(batch)]

    def onnx_graphs(self) -> dict[str, OnnxGraph]:
        """The decoder's two parts a decoding loop needs: z -> initial state, and one step (any search runs outside)."""
        z = torch.zeros(2, self.hparams.latent_dim, device=self.device)
        state = self.decoder.initial_state(z)
        tokens = torch.full((2,), self.bos_id, dtype=torch.long, device=self.device)
        return {
            "decoder_init": OnnxGraph(InitialState(self.decoder), (z,), ("z",), ("state",)),
            "decoder_step": OnnxGraph(
                DecoderStep(self.decoder),
                (tokens, state, z),
                ("tokens", "state", "z"),
                ("logits", "next_state"),
                (0, 1, 0),
            ),
        }

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """End of the autoencoder phase: a fresh decoder (and fresh Adam moments for it) learns with the KL on."""
        step = self.hparams.pretrain_ae_steps
        if step > 0 and self.global_step == step and self._decoder_reset_step != step:
            self._decoder_reset_step = step
            for module in self.decoder.modules():
                if module is not self.decoder and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            optimizer = self.optimizers().optimizer
            for param in self.decoder.parameters():
                optimizer.state.pop(param, None)

    # ---------------------------------------------------------------- decoding
    def generate(self, z: Tensor, deterministic: bool = False, **options: Any) -> list[str]:
        opts = TextGenerationOptions(**options)
        opts = replace(opts, strategy=opts.strategy or ("greedy" if deterministic else "sample"))
        max_length = opts.max_length or self.spec.max_length + 1
        if opts.strategy == "beam":
            tokens = self.beam_search(z, opts.beam_width, max_length)
        else:
            tokens = self.decode_tokens(z, max_length, opts)
        return self.to_text(tokens)

    def decode_tokens(self, z: Tensor, max_length: int, opts: TextGenerationOptions) -> Tensor:
        """Greedy or ancestral decoding of a batch; (B, <= max_length) ids, padding after each EOS."""
        batch = z.shape[0]
        state = self.decoder.initial_state(z)
        tokens = torch.full((batch,), self.bos_id, dtype=torch.long, device=z.device)
        done = torch.zeros(batch, dtype=torch.bool, device=z.device)
        out = []
        for _ in range(max_length):
            log_probs, state = self.decoder.step(tokens, state, z)
            if opts.strategy == "greedy":
                tokens = log_probs.argmax(-1)
            else:
                logits = filter_logits(log_probs / opts.token_temperature, opts.top_k, opts.top_p)
                tokens = torch.multinomial(logits.softmax(-1), 1).squeeze(-1)
            tokens = tokens.masked_fill(done, self.pad_id)
            out.append(tokens)
            done = done | (tokens == self.eos_id)
            if bool(done.all()):
                break
        return torch.stack(out, dim=1)

    def beam_search(self, z: Tensor, width: int, max_length: int) -> Tensor:
        """Batched beam search on the summed log-probability; width 1 is greedy decoding."""
        batch, vocab = z.shape[0], self.spec.vocab_size
        zb = z.repeat_interleave(width, dim=0)
        state = self.decoder.initial_state(zb)
        tokens = torch.full((batch * width,), self.bos_id, dtype=torch.long, device=z.device)
        scores = torch.full((batch, width), -math.inf, device=z.device)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        done = torch.zeros(batch * width, dtype=torch.bool, device=z.device)
        history = torch.empty(batch * width, 0, dtype=torch.long, device=z.device)
        offsets = (torch.arange(batch, device=z.device) * width).unsqueeze(1)
        for _ in range(max_length):
            logp, state = self.decoder.step(tokens, state, zb)
            # A finished beam continues only with padding, at no cost, so its score stays fixed.
            finished = torch.full_like(logp, -math.inf)
            finished[:, self.pad_id] = 0.0
            logp = torch.where(done.unsqueeze(1), finished, logp)
            candidates = (scores.view(-1, 1) + logp).view(batch, width * vocab)
            scores, index = candidates.topk(width, dim=-1)
            rows = (offsets + index // vocab).view(-1)
            tokens = (index % vocab).view(-1)
            state = state[:, rows]
            history = torch.cat([history[rows], tokens.unsqueeze(1)], dim=1)
            done = done[rows] | (tokens == self.eos_id)
            if bool(done.all()):
                break
        best = scores.argmax(-1) + offsets.squeeze(1)
        return history[best]

    def to_text(self, tokens: Tensor) -> list[str]:
        """Ids -> sentences: cut at the first EOS, drop BOS/padding, keep <unk> visible."""
        texts = []
        for row in tokens.tolist():
            if self.eos_id in row:
                row = row[: row.index(self.eos_id)]
            row = [t for t in row if t not in (self.bos_id, self.pad_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=False).strip())
        return texts

    def as_outputs(self, batch: Batch) -> list[str]:
        return self.to_text(batch["x"][:, 1:])

    def log_media(self, writer: Any, tag: str, data: list[str], step: int) -> None:
        writer.add_text(tag, "\n\n".join(f"{i}. {text}" for i, text in enumerate(data)), step)

    def save_outputs(
        self, data: list[str], out_dir: Path, stem: str, nrow: int | None = None, **options: Any
    ) -> list[Path]:
        """``stem``.txt (one sentence per line) and ``stem``.jsonl ({"index", "text"}, plus "row"/"step" in grids)."""
        records = []
        for i, text in enumerate(data):
            record: dict[str, Any] = {"index": i, "text": text}
            if nrow:
                record.update(row=i // nrow, step=i % nrow)
            records.append(json.dumps(record, ensure_ascii=False))
        out_dir = Path(out_dir)
        return [
            write_text(out_dir / f"{stem}.txt", "".join(f"{t}\n" for t in data)),
            write_text(out_dir / f"{stem}.jsonl", "".join(f"{r}\n" for r in records)),
        ]
