"""Text modality: a GRU sentence VAE (Bowman et al. 2016) with the usual defences against posterior collapse.

Sentences are tokenised by a ``transformers`` fast tokenizer (trained on the corpus with ``tokenizers``,
or loaded), stored in the checkpoint, and batched by length. The decoder is conditioned on z twice
(initial state and every input step); word dropout, KL annealing, free bits and an autoencoder
pre-training phase (Li et al. 2019) keep the latent in use.

``tokenizer`` (spec and tokenizers), ``data`` (sentences, length buckets, the data module), ``networks``
(GRU encoder and decoder, ONNX parts), ``model`` (the VAE and its decoding).
"""

from vaekit.modalities.registry import Modality
from vaekit.modalities.text.data import BucketBatchSampler, TextDataModule
from vaekit.modalities.text.model import TextGenerationOptions, TextVAE, filter_logits
from vaekit.modalities.text.tokenizer import TextSpec, load_tokenizer, train_tokenizer

MODALITY = Modality(
    name="text",
    model=TextVAE,
    datamodule=TextDataModule,
    former_names={"vaekit.modalities.text.TextVAE": TextVAE, "vaekit.modalities.text.TextDataModule": TextDataModule},
)

__all__ = [
    "MODALITY",
    "BucketBatchSampler",
    "TextDataModule",
    "TextGenerationOptions",
    "TextSpec",
    "TextVAE",
    "filter_logits",
    "load_tokenizer",
    "train_tokenizer",
]
