"""Text modality: likelihood maths, decoder equivalences, anti-collapse measures, decoding, CLI, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from tests.conftest import fit_args
from vaekit.checkpoint import load_model
from vaekit.cli import main
from vaekit.core.schedules import BetaSchedule
from vaekit.modalities.text import (
    BucketBatchSampler,
    TextDataModule,
    TextGenerationOptions,
    TextVAE,
    filter_logits,
    load_tokenizer,
    train_tokenizer,
)

CORPUS = [
    "the cat sat on the mat .",
    "a dog ran in the park .",
    "the bird sang a song .",
    "my sister reads a long book .",
    "it is raining today .",
    "the old man walked home .",
] * 5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small GRUs run fastest on one thread; more only spin against each other on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("VAEKIT_CACHE", str(tmp_path / "vaekit-cache"))


def write_corpus(folder: Path, train: list[str] | bytes = CORPUS, **others: list[str] | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, lines in {"train": train, **others}.items():
        data = lines if isinstance(lines, bytes) else ("\n".join(lines) + "\n").encode()
        (folder / f"{name}.txt").write_bytes(data)
    return folder


def small_model(tmp_path: Path, **kwargs) -> tuple[TextVAE, TextDataModule]:
    dm = TextDataModule(str(write_corpus(tmp_path / "corpus")), batch_size=4, max_length=12)
    dm.setup()
    model = TextVAE(**{"latent_dim": 4, "embed_dim": 8, "hidden_dim": 16, **kwargs})
    model.attach_spec(dm.spec)
    return model.eval(), dm


def padded_batch(dm: TextDataModule, sentences: list[str]) -> dict[str, torch.Tensor]:
    return dm.load_inputs(sentences)


# --------------------------------------------------------------------------- likelihood and networks


def test_loss_is_sum_of_token_log_probs_and_ignores_padding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, dm = small_model(tmp_path)
    batch = padded_batch(dm, ["the cat sat on the mat .", "it is raining ."])
    assert batch["lengths"].tolist() == [9, 6]  # BOS + words + EOS
    z = torch.randn(2, 4)
    features = model.decode_params(z, batch)
    logits = model.decoder.out(features)
    log_lik = model.log_likelihood(features, batch)
    for row in range(2):
        length = int(batch["lengths"][row])
        targets = batch["x"][row, 1:length]  # every token after BOS, EOS included
        direct = F.log_softmax(logits[row, : length - 1], -1).gather(-1, targets[:, None]).sum()
        torch.testing.assert_close(log_lik[row], direct)
        alone = {k: v[row : row + 1, :length] if v.dim() == 2 else v[row : row + 1] for k, v in batch.items()}
        torch.testing.assert_close(model.log_likelihood(model.decode_params(z[row : row + 1], alone), alone)[0], direct)
    # Whatever sits in the padding (ids or features) changes nothing.
    garbage = {**batch, "x": batch["x"].masked_fill(~batch["mask"].bool(), 7)}
    noisy = features.clone()
    noisy[1, 5:] = 100.0
    torch.testing.assert_close(model.log_likelihood(noisy, garbage), log_lik)
    assert model.num_units(batch).tolist() == [8, 5]
    assert model.summary_metrics(nll_sum=13 * 2.0, units_sum=13)["ppl"] == pytest.approx(torch.e**2)


def test_adaptive_softmax_is_an_exact_distribution_and_scores_as_decoding_does(tmp_path: Path) -> None:
    """The adaptive softmax's log-probabilities sum to one over the vocabulary, training scores each target
    with the same number decoding sees, and a model with it trains and decodes."""
    torch.manual_seed(0)
    model, dm = small_model(tmp_path, softmax="adaptive", adaptive_cutoffs=(6, 12))
    assert isinstance(model.decoder.out, torch.nn.AdaptiveLogSoftmaxWithLoss)
    batch = padded_batch(dm, ["the cat sat on the mat .", "it is raining ."])
    features = model.decode_params(torch.randn(2, 4), batch)
    full = model.decoder.log_probs(features)
    assert full.shape[-1] == model.spec.vocab_size
    torch.testing.assert_close(full.logsumexp(-1), torch.zeros(full.shape[:-1]), atol=1e-5, rtol=0)
    targets = batch["x"][:, 1:]
    expected = (full.gather(-1, targets[..., None]).squeeze(-1) * batch["mask"][:, 1:]).sum(1)
    torch.testing.assert_close(model.log_likelihood(features, batch), expected)
    texts = model.generate(torch.randn(3, 4), strategy="beam", beam_width=2)
    assert len(texts) == 3


def test_tied_embeddings_share_one_matrix_and_survive_export(tmp_path: Path) -> None:
    model, _ = small_model(tmp_path / "a", tie_embeddings=True, embed_dim=16)
    assert model.decoder.out.weight is model.decoder.embed.weight
    # safetensors refuses one tensor under two names: the exported folder must hold both, and load tied.
    run = tmp_path / "run"
    tied = ("--model.tie_embeddings", "true", "--model.embed_dim", "64", "--trainer.max_steps", "2")
    main(fit_args("configs/text/tiny.yaml", run, *tied, "--samples.num", "0"))
    main(["export", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "exported"), "--num", "2"])
    exported, _ = load_model(tmp_path / "exported")
    assert exported.decoder.out.weight is exported.decoder.embed.weight
    trained, _ = load_model(run / "checkpoints" / "last.ckpt")
    assert torch.equal(exported.decoder.out.weight, trained.decoder.embed.weight)
    with pytest.raises(ValueError, match="embed_dim == hidden_dim"):
        TextVAE(latent_dim=4, embed_dim=8, hidden_dim=16, tie_embeddings=True)
    with pytest.raises(ValueError, match="softmax full"):
        TextVAE(latent_dim=4, embed_dim=16, hidden_dim=16, tie_embeddings=True, softmax="adaptive")


def test_packed_and_unpacked_decoders_agree(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, dm = small_model(tmp_path)
    batch = padded_batch(dm, ["the cat sat on the mat .", "it is raining .", "a dog ran ."])
    z = torch.randn(3, 4)
    inputs, lengths = batch["x"][:, :-1], batch["lengths"] - 1
    packed = model.decoder(inputs, lengths, z, packed=True)
    unpacked = model.decoder(inputs, lengths, z, packed=False)
    valid = batch["mask"][:, 1:].bool()
    torch.testing.assert_close(packed[valid], unpacked[valid])
    model.hparams.packed = True
    ll_packed = model.log_likelihood(model.decode_params(z, batch), batch)
    model.hparams.packed = False
    torch.testing.assert_close(ll_packed, model.log_likelihood(model.decode_params(z, batch), batch))


def test_word_dropout_only_in_training_and_never_on_bos_or_padding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, dm = small_model(tmp_path, word_dropout=0.5)
    batch = padded_batch(dm, CORPUS[:6] * 50)
    clean = batch["x"][:, :-1]
    assert torch.equal(model.eval().decoder_inputs(batch), clean)
    dropped = model.train().decoder_inputs(batch)
    changed = dropped != clean
    assert torch.equal(dropped[:, 0], clean[:, 0])  # BOS kept
    assert not changed[~batch["mask"][:, :-1].bool()].any()  # padding untouched
    assert (dropped[changed] == model.unk_id).all()
    eligible = batch["mask"][:, 1:-1].sum()  # word positions after BOS
    assert 0.45 < changed.sum() / eligible < 0.55


def test_free_bits_floor_each_dimension(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, dm = small_model(tmp_path, free_bits=5.0)
    batch = padded_batch(dm, CORPUS[:6])
    terms = model.train().elbo_terms(batch, beta=0.5)
    assert (terms.kl_per_dim.mean(0) < 5.0).all()
    # Every dimension is under its 5-nat floor: the KL term is the constant 0.5 * 4 * 5, with no gradient.
    torch.testing.assert_close(terms.loss - terms.rec.mean(), torch.tensor(0.5 * 4 * 5.0))
    head = model.encoder.head.weight
    (grad_loss,) = torch.autograd.grad(terms.loss, head, retain_graph=True)
    (grad_rec,) = torch.autograd.grad(terms.rec.mean(), head)
    torch.testing.assert_close(grad_loss, grad_rec)


def test_annealing_starts_after_autoencoder_phase() -> None:
    plain = TextVAE(beta=BetaSchedule(schedule="linear", warmup_steps=50))
    assert [plain.beta(s) for s in (0, 25, 50, 80)] == [0.0, 0.5, 1.0, 1.0]
    delayed = TextVAE(pretrain_ae_steps=100, beta=BetaSchedule(schedule="linear", warmup_steps=50))
    assert [delayed.beta(s) for s in (0, 99, 100, 125, 150, 400)] == [0.0, 0.0, 0.0, 0.5, 1.0, 1.0]
    cyclical = TextVAE(pretrain_ae_steps=10, beta=BetaSchedule(schedule="cyclical", cycle_steps=20, ratio=0.5))
    assert [cyclical.beta(s) for s in (5, 10, 15, 20, 29, 30, 35)] == [0.0, 0.0, 0.5, 1.0, 1.0, 0.0, 0.5]


class _DecoderWatch(pl.Callback):
    """Decoder weights before and after each step, and Adam's step counts after it."""

    def __init__(self) -> None:
        self.before: dict[int, torch.Tensor] = {}
        self.after: dict[int, torch.Tensor] = {}
        self.adam_steps: dict[int, tuple[int, int]] = {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.before[trainer.global_step] = module.decoder.out.weight.detach().clone()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step - 1
        self.after[step] = module.decoder.out.weight.detach().clone()
        state = trainer.optimizers[0].state
        self.adam_steps[step] = (
            int(state[module.decoder.out.weight]["step"]),
            int(state[module.encoder.head.weight]["step"]),
        )


def test_decoder_is_reinitialised_when_autoencoder_phase_ends(tmp_path: Path) -> None:
    dm = TextDataModule(str(write_corpus(tmp_path / "corpus")), batch_size=4, max_length=12)
    model = TextVAE(latent_dim=4, embed_dim=8, hidden_dim=16, pretrain_ae_steps=3, lr=1e-7)
    watch = _DecoderWatch()
    trainer = pl.Trainer(
        max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[watch]
    )
    trainer.fit(model, datamodule=dm)
    moved = {s: float((watch.after[s] - watch.before[s]).abs().max()) for s in range(5)}
    assert moved[3] > 1e-2  # re-initialised at step 3
    assert all(moved[s] < 1e-5 for s in (0, 1, 2, 4))  # otherwise only tiny Adam steps
    assert watch.adam_steps[3] == (1, 4)  # the decoder's Adam moments restarted, the encoder's did not


# --------------------------------------------------------------------------- decoding


def constant_logits_model(tmp_path: Path, probs: dict[str, float]) -> TextVAE:
    """A model whose next-token distribution is the same at every step: ``probs`` (the rest ~0)."""
    model, _ = small_model(tmp_path)
    vocab = model.tokenizer.get_vocab()
    bias = torch.full((model.spec.vocab_size,), -30.0)
    for token, p in probs.items():
        bias[vocab[token]] = torch.tensor(p).log()
    with torch.no_grad():
        model.decoder.out.weight.zero_()
        model.decoder.out.bias.copy_(bias)
    return model


def test_greedy_is_deterministic_and_beam_width_one_is_greedy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, _ = small_model(tmp_path)
    z = torch.randn(6, 4)
    greedy = model.decode_tokens(z, 10, TextGenerationOptions(strategy="greedy"))
    assert torch.equal(greedy, model.decode_tokens(z, 10, TextGenerationOptions(strategy="greedy")))
    beam = model.beam_search(z, width=1, max_length=10)
    assert torch.equal(beam, greedy)
    assert model.generate(z, strategy="beam", beam_width=1) == model.generate(z, strategy="greedy")
    wide = model.beam_search(z, width=3, max_length=10)
    assert wide.shape[0] == 6


def test_beam_search_finds_a_better_sequence_than_greedy(tmp_path: Path) -> None:
    model = constant_logits_model(tmp_path, {"the": 0.4, "cat": 0.35, "</s>": 0.25})
    z = torch.zeros(1, 4)
    # Greedy takes "the" forever (cap); beam prefers stopping early: log 0.25 > any longer path.
    assert model.generate(z, strategy="greedy", max_length=5) == ["the the the the the"]
    assert model.generate(z, strategy="beam", beam_width=3, max_length=5) == [""]


@pytest.mark.parametrize(
    ("top_k", "top_p", "allowed"),
    [(2, 1.0, {"the", "cat"}), (0, 0.7, {"the", "cat"}), (1, 1.0, {"the"}), (0, 0.3, {"the"})],
)
def test_top_k_and_top_p_never_leave_the_allowed_set(tmp_path: Path, top_k: int, top_p: float, allowed: set) -> None:
    torch.manual_seed(0)
    model = constant_logits_model(tmp_path, {"the": 0.5, "cat": 0.3, "dog": 0.15, "</s>": 0.05})
    texts = model.generate(torch.randn(200, 4), strategy="sample", top_k=top_k, top_p=top_p, max_length=6)
    emitted = {word for text in texts for word in text.split()}
    assert emitted == allowed
    assert all(len(text.split()) == 6 for text in texts)  # EOS is filtered out: every sentence hits the cap


def test_filter_logits_keeps_the_nucleus() -> None:
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert torch.isfinite(filter_logits(logits, top_p=0.79)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_k=3)).tolist() == [[True, True, True, False]]


def test_generation_stops_at_eos_and_at_the_length_cap(tmp_path: Path) -> None:
    model = constant_logits_model(tmp_path, {"</s>": 0.999, "cat": 0.001})
    z = torch.zeros(4, 4)
    tokens = model.decode_tokens(z, 10, TextGenerationOptions(strategy="greedy"))
    assert tokens.shape == (4, 1) and (tokens == model.eos_id).all()
    assert model.generate(z, strategy="beam", beam_width=2) == [""] * 4
    looping = constant_logits_model(tmp_path / "b", {"cat": 0.999, "</s>": 0.001})
    assert looping.decode_tokens(z, 7, TextGenerationOptions(strategy="greedy")).shape == (4, 7)
    assert looping.generate(z, strategy="beam", beam_width=2, max_length=7) == ["cat " * 6 + "cat"] * 4
    with pytest.raises(ValueError, match="--strategy"):
        looping.generate(z, strategy="nucleus")


# --------------------------------------------------------------------------- data


def test_tokenizers_word_bpe_and_saved_folder(tmp_path: Path) -> None:
    word = train_tokenizer("word", CORPUS, vocab_size=100, min_frequency=1)
    assert word.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<s>", "</s>", "<unk>"]
    assert word.decode(word("the cat flew", add_special_tokens=False)["input_ids"]) == "the cat <unk>"
    bpe = train_tokenizer("bpe", ["Raw text, with punctuation!", "Naïve café."] * 10, vocab_size=300, min_frequency=1)
    text = "Raw café, unseen words!"
    assert bpe.decode(bpe(text, add_special_tokens=False)["input_ids"]) == text
    word.save_pretrained(tmp_path / "tok")
    dm = TextDataModule(str(write_corpus(tmp_path / "corpus")), tokenizer=str(tmp_path / "tok"))
    dm.setup()
    assert dm.spec.tokenizer_source == str(tmp_path / "tok") and dm.spec.vocab_size == len(word)
    assert load_tokenizer(str(tmp_path / "tok")).get_vocab() == word.get_vocab()
    with pytest.raises(FileNotFoundError, match="could not be loaded"):
        load_tokenizer(str(tmp_path / "corpus"))


def test_corpus_with_its_own_unk_token_sizes_the_vocabulary_by_the_largest_id(tmp_path: Path) -> None:
    # PTB writes "<unk>" in the text: the trainer then leaves a gap in the ids, so len(vocab) is too small.
    lines = [*CORPUS, "the <unk> sat on a <unk> .", "zebra yak quokka ."]
    dm = TextDataModule(str(write_corpus(tmp_path / "corpus", lines)), max_length=12, val_fraction=0.05)
    dm.setup()
    largest = max(int(split["ids"].max()) for split in dm.splits.values())
    assert dm.spec.vocab_size == max(dm.tokenizer.get_vocab().values()) + 1 > largest
    model = TextVAE(latent_dim=4, embed_dim=8, hidden_dim=16)
    model.attach_spec(dm.spec)
    for name, split in dm.splits.items():
        assert torch.isfinite(model.elbo_terms(dm.examples(name, range(len(split)))).loss)


def test_splits_are_cached_and_batches_bucketed(tmp_path: Path) -> None:
    lines = [" ".join(["w"] * n) for n in range(1, 41)] * 5
    root = write_corpus(tmp_path / "corpus", lines, valid=lines[:20], test=lines[:20])
    dm = TextDataModule(str(root), batch_size=10, max_length=50, bucket_pool=5)
    dm.setup()
    cache = tmp_path / "vaekit-cache" / "TextDataModule"
    cached = sorted(cache.iterdir())
    assert [p.name.split("-")[0] for p in cached] == ["test", "train", "val"]
    again = TextDataModule(str(root), batch_size=10, max_length=50)
    again.setup()
    assert sorted(cache.iterdir()) == cached and torch.equal(again.splits["train"]["ids"], dm.splits["train"]["ids"])
    loader = dm.loader("train", shuffle=True)
    batches = list(loader)
    assert len(batches) == len(loader)
    seen = torch.cat([b["lengths"] for b in batches])
    assert sorted(seen.tolist()) == sorted((dm.splits["train"]["length"] + 2).tolist())  # BOS and EOS added
    spread = torch.tensor([float(b["lengths"].max() - b["lengths"].min()) for b in batches])
    assert spread.mean() < 10  # unsorted batches of lengths 3..42 would spread ~30
    assert all(b["x"].shape[1] == int(b["lengths"].max()) for b in batches)  # padding trimmed per batch
    sampler = BucketBatchSampler(range(23), 5, drop_last=True, lengths=torch.arange(23), pool_batches=2)
    assert len(sampler) == len(list(sampler)) == 4


def test_bucketed_loader_is_rebuilt_around_a_distributed_sampler(tmp_path: Path) -> None:
    """What Lightning does under DDP: capture the batch sampler's arguments, then swap its sampler."""
    from lightning_fabric.utilities.data import _replace_dunder_methods
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader, DistributedSampler

    lines = [" ".join(["w"] * n) for n in range(1, 41)] * 5
    dm = TextDataModule(str(write_corpus(tmp_path / "corpus", lines)), batch_size=10, max_length=50)
    dm.setup()
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    shards = []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        rebuilt = _update_dataloader(loader, sampler)
        assert isinstance(rebuilt.batch_sampler, BucketBatchSampler) and rebuilt.batch_sampler.sampler is sampler
        shards.append(torch.cat([b["lengths"] for b in rebuilt]))
    assert len(shards[0]) == len(shards[1]) == len(dm.splits["train"]) // 2
    assert sorted(torch.cat(shards).tolist()) == sorted((dm.splits["train"]["length"] + 2).tolist())


def test_blank_and_overlong_lines_are_counted(tmp_path: Path) -> None:
    lines = ["", "a b c", "  ", "a " * 30, "b c d", ""]
    root = write_corpus(tmp_path / "corpus", lines + CORPUS)
    with pytest.warns(UserWarning, match="3 blank line.*1 sentence.*truncated to 8"):
        dm = TextDataModule(str(root), max_length=8, val_fraction=0.2, test_fraction=0.2)
        dm.setup()
    assert (dm.report.blank, dm.report.truncated) == (3, 1)
    batches = [dm.examples(name, range(len(split))) for name, split in dm.splits.items()]
    assert max(int(batch["lengths"].max()) for batch in batches) == 10  # 8 tokens + BOS + EOS
    assert sum(len(s) for s in dm.splits.values()) == len(CORPUS) + 3
    dropping = TextDataModule(str(root), max_length=8, overlong="drop")
    with pytest.warns(UserWarning, match="1 sentence.*dropped"):
        dropping.setup()
    assert sum(len(s) for s in dropping.splits.values()) == len(CORPUS) + 2


def test_non_utf8_line_is_named_or_skipped(tmp_path: Path) -> None:
    data = ("\n".join(CORPUS[:2]) + "\ncaf\xe9 latin1\n").encode("latin-1") + ("\n".join(CORPUS) + "\n").encode()
    root = write_corpus(tmp_path / "corpus", data)
    with pytest.raises(ValueError, match=r"train\.txt, line 3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        TextDataModule(str(root)).setup()
    dm = TextDataModule(str(root), skip_bad_files=True)
    with pytest.warns(UserWarning, match="1 non-UTF-8 line"):
        dm.setup()
    assert dm.report.bad_lines == 1 and dm.skipped[0].startswith(str(root / "train.txt"))


def test_empty_files(tmp_path: Path) -> None:
    root = write_corpus(tmp_path / "a", b"\n\n")
    with pytest.raises(ValueError, match=r"train\.txt: the file is empty"):
        TextDataModule(str(root)).setup()
    root = write_corpus(tmp_path / "b", CORPUS, valid=b"", test=CORPUS[:6])
    with pytest.raises(ValueError, match=r"valid\.txt: the file is empty"):
        TextDataModule(str(root)).setup()
    dm = TextDataModule(str(root), skip_bad_files=True, val_fraction=0.5)
    dm.setup()  # the empty valid.txt is skipped, counted; validation is split off the training data
    assert len(dm.skipped) == 1 and len(dm.splits["val"]) == len(CORPUS) // 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextDataModule(str(tmp_path / "missing"))


def test_hub_dataset_path_with_its_text_column(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = datasets.DatasetDict(
        {
            name: datasets.Dataset.from_dict({"sentence": [*CORPUS[:n], ""], "id": list(range(n + 1))})
            for name, n in (("train", 24), ("validation", 6), ("test", 6))
        }
    )
    asked = []
    monkeypatch.setattr("vaekit.core.data.load_hub_dataset", lambda hub_id: asked.append(hub_id) or hub)
    dm = TextDataModule("someone/ptb_like", max_length=12)
    with pytest.warns(UserWarning, match="3 blank line"):
        dm.setup()
    assert asked == ["someone/ptb_like"]
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 24, "val": 6, "test": 6}


def test_inputs_are_sentences_or_files(tmp_path: Path) -> None:
    _, dm = small_model(tmp_path)
    (tmp_path / "in.txt").write_text("the cat sat .\n\nit is raining .\n", encoding="utf-8")
    batch = dm.load_inputs([str(tmp_path / "in.txt"), "a dog ran"])
    assert batch["lengths"].tolist() == [6, 6, 5]
    with pytest.raises(ValueError, match="empty sentence"):
        dm.load_inputs(["  "])
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match=r"empty\.txt: the file is empty"):
        dm.load_inputs([str(tmp_path / "empty.txt")])


# --------------------------------------------------------------------------- CLI, end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fit configs/text/tiny.yaml briefly, then keep only the checkpoint (no run folder, no YAML)."""
    run = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(run / "hf-cache"))
        main(
            ["fit", "--config", "configs/text/tiny.yaml", "--trainer.default_root_dir", str(run / "fit"),
             "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "15", "--trainer.enable_progress_bar", "false", "--samples.num", "4"]
        )  # fmt: skip
    assert (run / "fit/samples/prior.jsonl").is_file()
    ckpt = run / "model.ckpt"
    shutil.copy(run / "fit/checkpoints/last.ckpt", ckpt)
    shutil.rmtree(run / "fit")
    return ckpt


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_from_the_checkpoint_alone(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    ckpt = str(trained)
    main(["sample", ckpt, "--num", "40", "--out", str(out / "s")])
    texts = (out / "s/samples.txt").read_text(encoding="utf-8").splitlines()
    records = read_jsonl(out / "s/samples.jsonl")
    assert len(texts) == 40 and [r["text"] for r in records] == texts
    assert len(set(texts)) >= 30 and all(texts)
    main(["sample", ckpt, "--num", "8", "--out", str(out / "b"), "--strategy", "beam", "--beam-width", "3"])
    assert len((out / "b/samples.txt").read_text(encoding="utf-8").splitlines()) == 8

    main(["reconstruct", ckpt, "--num", "5", "--out", str(out / "r"), "--strategy", "greedy"])
    inputs = read_jsonl(out / "r/inputs.jsonl")
    demo_test = (Path("vaekit/demo/text/test.txt")).read_text(encoding="utf-8").splitlines()
    assert [r["text"] for r in inputs] == demo_test[:5]
    assert len(read_jsonl(out / "r/reconstructions.jsonl")) == 5
    sentences = tmp_path / "mine.txt"
    sentences.write_text("the cat eats the green grass .\nthe fox dug a deep hole .\n", encoding="utf-8")
    main(["reconstruct", ckpt, "--out", str(out / "r2"), "--input", str(sentences)])
    assert len(read_jsonl(out / "r2/reconstructions.jsonl")) == 2

    a, b = "the cat eats the green grass .", "it is raining and my sister was happy ."
    main(["interpolate", ckpt, "--steps", "5", "--out", str(out / "i"), "--a", a, "--b", b, "--strategy", "greedy"])
    path = read_jsonl(out / "i/interpolation.jsonl")
    assert [r["step"] for r in path] == [0, 1, 2, 3, 4]
    main(["traverse", ckpt, "--out", str(out / "t"), "--dims", "0", "1", "--steps", "3"])
    assert len(read_jsonl(out / "t/traversal.jsonl")) == 6

    main(["evaluate", ckpt, "--split", "test", "--iw-samples", "5", "--out", str(out / "eval.json")])
    result = json.loads((out / "eval.json").read_text())
    assert result["num_examples"] == 300
    assert {"elbo", "rec", "kl", "nll", "active_units", "mutual_info", "ppl"} <= result.keys()
    assert result["nll"] <= -result["elbo"] + 1e-3  # the IW bound is at least as tight as the ELBO
    units = sum(len(t.split()) + 1 for t in demo_test)  # words + EOS per sentence
    assert result["ppl"] == pytest.approx(torch.e ** (result["nll"] * 300 / units), rel=1e-6)

    main(["encode", ckpt, "--split", "val", "--out", str(out / "z.npz")])
    import numpy as np

    assert np.load(out / "z.npz")["mean"].shape == (300, 8)
    main(["score", ckpt, "--split", "test", "--out", str(out / "score.csv")])
    rows = (out / "score.csv").read_text().splitlines()
    assert len(rows) == 301 and rows[1].startswith("0,in,-1,")


def test_resume_with_another_tokenizer_is_refused(trained: Path, tmp_path: Path) -> None:
    other = train_tokenizer("word", ["completely different words here"], vocab_size=50, min_frequency=1)
    other.save_pretrained(tmp_path / "tok")
    model, _ = load_model(trained)
    assert model.spec.tokenizer_source == "trained:word"
    with pytest.raises(SystemExit, match=f"tokenizer_source='{tmp_path / 'tok'}'"):
        main(
            ["fit", "--config", "configs/text/tiny.yaml", "--ckpt_path", str(trained), "--data.tokenizer",
             str(tmp_path / "tok"), "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_epochs", "3"]
        )  # fmt: skip


def test_max_examples_are_the_first_sentences_in_file_order(trained: Path, tmp_path: Path) -> None:
    """Not the first batches: evaluation sorts text batches by length, so those would be the shortest."""
    demo = Path("vaekit/demo/text")
    first = tmp_path / "first"
    first.mkdir()
    for name in ("train.txt", "valid.txt"):
        shutil.copy(demo / name, first / name)
    sentences = [line for line in (demo / "test.txt").read_text().splitlines() if line.strip()]
    (first / "test.txt").write_text("\n".join(sentences[:5]) + "\n")
    main(["evaluate", str(trained), "--split", "test", "--iw-samples", "1", "--max-examples", "5", "--out", str(tmp_path / "a.json")])  # fmt: skip
    main(["evaluate", str(trained), "--split", "test", "--iw-samples", "1", "--data-root", str(first), "--out", str(tmp_path / "b.json")])  # fmt: skip
    limited, alone = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert limited["kl"] == pytest.approx(alone["kl"], rel=1e-5), "the KL is analytic: the same 5 sentences"
