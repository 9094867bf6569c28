"""The GRU encoder and decoder (the decoder conditioned on z at its initial state and every step), and their ONNX parts."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

# --------------------------------------------------------------------------- networks


def on_host(lengths: Tensor) -> Tensor:
    """Sequence lengths where packing reads them, the host: batches carry a host copy (``host_lengths``), so a
    training step never copies them back from the GPU (a sync)."""
    return lengths if lengths.device.type == "cpu" else lengths.cpu()


class GRUEncoder(nn.Module):
    """Embeds the sentence, reads it with a (bi)GRU over packed sequences; last hidden state(s) -> (mean, logvar)."""

    def __init__(
        self, vocab: int, embed: int, hidden: int, layers: int, bidirectional: bool, latent: int, pad_id: int
    ) -> None:
        super().__init__()
        self.directions = 2 if bidirectional else 1
        self.embed = nn.Embedding(vocab, embed, padding_idx=pad_id)
        self.rnn = nn.GRU(embed, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * self.directions, 2 * latent)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        packed = pack_padded_sequence(self.embed(x), on_host(lengths), batch_first=True, enforce_sorted=False)
        _, last = self.rnn(packed)  # (layers * directions, B, H), in batch order
        top = last[-self.directions :].transpose(0, 1).reshape(x.shape[0], -1)
        mean, logvar = self.head(top).chunk(2, dim=-1)
        return mean, logvar


class GRUDecoder(nn.Module):
    """GRU language model conditioned on z: z sets the initial state and is concatenated to every input.

    The output layer turns the GRU's features into next-token log-probabilities: a full softmax (its weights
    optionally tied to the input embedding, Press & Wolf 2017) or an adaptive softmax (Grave et al. 2017),
    an exact distribution over the whole vocabulary that spends most of its compute on the frequent words.
    ``forward`` returns features, not logits, so training scores only the tokens that are there.
    """

    def __init__(
        self,
        vocab: int,
        embed: int,
        hidden: int,
        layers: int,
        latent: int,
        pad_id: int,
        dropout: float,
        softmax: Literal["full", "adaptive"] = "full",
        cutoffs: tuple[int, ...] = (),
        tie_embeddings: bool = False,
    ) -> None:
        super().__init__()
        self.layers, self.hidden = layers, hidden
        self.embed = nn.Embedding(vocab, embed, padding_idx=pad_id)
        self.init_state = nn.Linear(latent, layers * hidden)
        self.rnn = nn.GRU(embed + latent, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.out: nn.Linear | nn.AdaptiveLogSoftmaxWithLoss
        if softmax == "adaptive":
            cutoffs = tuple(c for c in cutoffs if c < vocab)  # a small vocabulary may need fewer clusters
            self.out = nn.AdaptiveLogSoftmaxWithLoss(hidden, vocab, list(cutoffs) or [vocab // 2], div_value=4.0)
        else:
            self.out = nn.Linear(hidden, vocab)
            if tie_embeddings:
                self.out.weight = self.embed.weight

    def initial_state(self, z: Tensor) -> Tensor:
        return torch.tanh(self.init_state(z)).view(-1, self.layers, self.hidden).transpose(0, 1).contiguous()

    def forward(self, inputs: Tensor, lengths: Tensor, z: Tensor, packed: bool = True) -> Tensor:
        """Features (B, T, H) for the next token at each input position; positions past ``lengths`` are padding."""
        steps = inputs.shape[1]
        feed = torch.cat([self.dropout(self.embed(inputs)), z.unsqueeze(1).expand(-1, steps, -1)], dim=-1)
        if packed:
            seq = pack_padded_sequence(feed, on_host(lengths), batch_first=True, enforce_sorted=False)
            out, _ = self.rnn(seq, self.initial_state(z))
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=steps)
        else:
            out, _ = self.rnn(feed, self.initial_state(z))
        return self.dropout(out)

    def log_probs(self, features: Tensor) -> Tensor:
        """Next-token log-probabilities (..., V) over the whole vocabulary."""
        if isinstance(self.out, nn.AdaptiveLogSoftmaxWithLoss):
            return self.out.log_prob(features.reshape(-1, features.shape[-1])).view(*features.shape[:-1], -1)
        return self.out(features).log_softmax(-1)

    def token_log_probs(self, features: Tensor, targets: Tensor) -> Tensor:
        """log p(target) for rows of features (N, H) and their targets (N,), without all V log-probabilities
        where the adaptive softmax can avoid them."""
        if isinstance(self.out, nn.AdaptiveLogSoftmaxWithLoss):
            return self.out(features, targets).output
        return -F.cross_entropy(self.out(features), targets, reduction="none")

    def step(self, tokens: Tensor, state: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """One decoding step: next-token log-probabilities (B, V) and the new state."""
        feed = torch.cat([self.embed(tokens), z], dim=-1).unsqueeze(1)
        out, state = self.rnn(feed, state)
        return self.log_probs(out[:, 0]), state


class DecoderPart(nn.Module):
    """A method of the decoder as a module of its own, for ONNX export."""

    def __init__(self, decoder: GRUDecoder) -> None:
        super().__init__()
        self.decoder = decoder


class InitialState(DecoderPart):
    def forward(self, z: Tensor) -> Tensor:
        return self.decoder.initial_state(z)


class DecoderStep(DecoderPart):
    def forward(self, tokens: Tensor, state: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.decoder.step(tokens, state, z)
