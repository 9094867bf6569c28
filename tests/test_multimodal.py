"""The joint multimodal VAE: its bound against the unimodal one, proper subset posteriors, missing modalities,
the paired data's rules, the commands end to end (translate both ways), coherence, and a third-party part."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import fit_args, install_plugin, vaekit
from vaekit.checkpoint import load_model
from vaekit.core.distributions import DiagonalGaussian
from vaekit.modalities.image import ImageSpec, ImageVAE
from vaekit.modalities.multimodal.data import PairedDataModule
from vaekit.modalities.multimodal.model import PRESENT, JointSpec, JointVAE, product_of_experts

TINY = "configs/multimodal/tiny.yaml"
SMALL_IMAGE = {"channels": [4], "blocks_per_stage": 0, "hidden": 16, "likelihood": "bernoulli"}
IMAGE_PART = {**SMALL_IMAGE, "modality": "image"}  # a part named other than its modality
SPEC = ImageSpec(channels=1, height=8, width=8, binarized=True)


def _images(count: int, seed: int) -> dict[str, torch.Tensor]:
    return {"x": torch.bernoulli(torch.rand(count, 1, 8, 8, generator=torch.Generator().manual_seed(seed)))}


def _joint(**parts: dict) -> JointVAE:
    model = JointVAE(parts=parts, latent_dim=3)
    model.attach_spec(JointSpec(parts={name: dataclasses.asdict(SPEC) for name in parts}))
    return model


# ------------------------------------------------------------------ the maths


def test_joint_bound_with_one_modality_is_the_unimodal_elbo():
    """Same networks, same weights, same noise: the joint model of one part computes the plugin's own ELBO."""
    torch.manual_seed(0)
    unimodal = ImageVAE(latent_dim=3, **SMALL_IMAGE)
    unimodal.attach_spec(SPEC)
    joint = _joint(image=SMALL_IMAGE)
    joint.parts["image"].load_state_dict(unimodal.state_dict())
    batch = _images(6, seed=1)
    for beta in (1.0, 0.3):
        torch.manual_seed(5)
        expected = unimodal.elbo_terms(batch, beta)
        torch.manual_seed(5)
        got = joint.elbo_terms({"image": batch}, beta)
        assert torch.allclose(got.rec, expected.rec) and torch.allclose(got.kl, expected.kl)
        assert torch.allclose(got.loss, expected.loss)
    torch.manual_seed(9)
    expected_nll = unimodal.nll(batch, 20)
    torch.manual_seed(9)
    assert torch.allclose(joint.nll({"image": batch}, 20), expected_nll)


def test_subset_posteriors_are_proper_normalised_products():
    """For every subset of three experts (1-D, on a fine grid): q_S integrates to 1 and is the normalised
    product of the experts' densities."""
    grid = torch.linspace(-12, 12, 20001, dtype=torch.float64).unsqueeze(-1)
    experts = [
        DiagonalGaussian(torch.tensor([[m]], dtype=torch.float64), torch.tensor([[v]], dtype=torch.float64))
        for m, v in ((0.5, 0.2), (-1.0, -0.7), (2.0, 1.1))
    ]
    shown = torch.ones(1, dtype=torch.bool)
    for subset in ([0], [1, 2], [0, 2], [0, 1, 2]):
        q, valid = product_of_experts([(experts[i], shown) for i in subset])
        density = q.log_prob(grid.unsqueeze(1)).squeeze(-1).exp()
        assert valid.all()
        assert math.isclose(float(torch.trapezoid(density, grid[:, 0])), 1.0, abs_tol=1e-6)
        product = sum(experts[i].log_prob(grid.unsqueeze(1)).squeeze(-1) for i in subset).exp()
        product = product / torch.trapezoid(product, grid[:, 0])
        assert torch.allclose(density, product, atol=1e-6)


def test_an_absent_expert_is_left_out():
    a = DiagonalGaussian(torch.randn(4, 3), torch.randn(4, 3))
    b = DiagonalGaussian(torch.randn(4, 3), torch.randn(4, 3))
    shown_a = torch.tensor([True, True, False, False])
    shown_b = torch.tensor([True, False, True, False])
    q, valid = product_of_experts([(a, shown_a), (b, shown_b)])
    assert valid.tolist() == [True, True, True, False]
    assert torch.allclose(q.mean[1], a.mean[1]) and torch.allclose(q.logvar[1], a.logvar[1], atol=1e-5)
    assert torch.allclose(q.mean[2], b.mean[2]) and torch.allclose(q.logvar[2], b.logvar[2], atol=1e-5)
    precision = torch.exp(-a.logvar[0]) + torch.exp(-b.logvar[0])
    assert torch.allclose(q.logvar[0], -precision.log(), atol=1e-5)
    assert torch.allclose(
        q.mean[0], (a.mean[0] * torch.exp(-a.logvar[0]) + b.mean[0] * torch.exp(-b.logvar[0])) / precision
    )


def test_missing_modalities_do_not_count():
    """Rows that lack modality b: their bound does not depend on b's stand-in data, and its gradient is finite."""
    torch.manual_seed(0)
    model = _joint(a=IMAGE_PART, b=IMAGE_PART)
    present_b = torch.tensor([True, True, False, False])
    batch = {"a": _images(4, 1), "b": {**_images(4, 2), PRESENT: present_b}}
    other = {"a": batch["a"], "b": {"x": batch["b"]["x"].clone(), PRESENT: present_b}}
    other["b"]["x"][2:] = 1 - other["b"]["x"][2:]  # different stand-ins where b is absent
    model.eval()
    torch.manual_seed(3)
    first = model.elbo_terms(batch)
    torch.manual_seed(3)
    second = model.elbo_terms(other)
    assert torch.allclose(first.rec, second.rec) and torch.allclose(first.kl, second.kl)
    first.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # The subset {b} has no valid row 2-3: those rows average over {a} and {a, b} only, where q_{a,b} = q_a.
    with torch.no_grad():
        qa = model.parts["a"].posterior(batch["a"])
        assert torch.allclose(first.posterior.mean[2:], qa.mean[2:], atol=1e-5)


def test_likelihood_weights_scale_each_modality():
    torch.manual_seed(0)
    plain = _joint(a=IMAGE_PART, b=IMAGE_PART)
    weighted = JointVAE(parts={"a": IMAGE_PART, "b": IMAGE_PART}, latent_dim=3, likelihood_weights={"b": 0.25})
    weighted.attach_spec(plain.spec)
    weighted.load_state_dict(plain.state_dict())
    batch = {"a": _images(3, 1), "b": _images(3, 2)}
    z = torch.randn(3, 3)
    log_a = plain.parts["a"].data_log_likelihood(z, batch["a"])
    log_b = plain.parts["b"].data_log_likelihood(z, batch["b"])
    assert torch.allclose(weighted.log_likelihood_of(z, batch, ["a", "b"], weighted=True), log_a + 0.25 * log_b)
    assert torch.allclose(weighted.log_likelihood_of(z, batch, ["a", "b"], weighted=False), log_a + log_b)
    with pytest.raises(ValueError, match="not parts"):
        JointVAE(parts={"a": IMAGE_PART}, likelihood_weights={"c": 1.0})


# ------------------------------------------------------------------ paired data


def test_label_pairing_keeps_each_modality_s_held_out_rules():
    data = PairedDataModule(
        sources={"image": {"binarize": True}, "audio": _TINY_AUDIO},
        image_root="demo:image",
        audio_root="demo:audio",
        batch_size=8,
    )
    data.setup("fit")
    assert data.label_names == [str(d) for d in range(10)]
    audio = data.part_modules["audio"]
    test = data.split("test")
    assert test.anchor == "audio" and len(test) == len(audio.split("test"))  # each test clip once
    batch = data.examples("test", range(len(test)))
    assert torch.equal(batch["image"]["label"], batch["audio"]["label"])
    image_labels = data.part_modules["image"].split("test")["label"]
    first = data.examples("test", range(len(test)))
    assert torch.equal(first["image"]["x"], batch["image"]["x"]), "test pairs are fixed"
    assert set(image_labels.tolist()) >= set(batch["image"]["label"].tolist())
    # Training partners are drawn afresh: two draws of the same anchors pair other images (same labels).
    train = data.split("train")
    rows = list(range(len(train)))
    one, two = train.batch(rows), train.batch(rows)
    assert torch.equal(one["image"]["label"], one["audio"]["label"])
    assert not torch.equal(one["image"]["x"], two["image"]["x"])


_TINY_AUDIO = {
    "sample_rate": 8000,
    "duration": 0.768,
    "n_fft": 256,
    "hop_length": 128,
    "n_mels": 32,
    "name_pattern": r"^(?P<label>\d+)_(?P<speaker>[^_]+)_\d+$",
    "val_speakers": ["nicolas"],
    "test_speakers": ["theo"],
}


def _index_file(tmp_path: Path) -> Path:
    """An index pairing demo clips with images written beside it; some rows lack their image."""
    from PIL import Image

    demo = Path(__file__).parents[1] / "vaekit" / "demo" / "audio"
    clips = sorted(demo.glob("*_0.flac"))[:12]
    rng = np.random.default_rng(0)
    rows = []
    for i, clip in enumerate(clips):
        image = f"img/{i}.png"
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.fromarray((rng.random((28, 28)) > 0.5).astype(np.uint8) * 255).save(tmp_path / image)
        split = "train" if i < 8 else ("val" if i < 10 else "test")
        rows.append({"image": "" if i in (1, 9) else image, "audio": str(clip), "split": split, "label": clip.name[0]})
    path = tmp_path / "pairs.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", "audio", "split", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_index_pairing_reads_tuples_and_marks_empty_cells_missing(tmp_path):
    path = _index_file(tmp_path)
    data = PairedDataModule(
        sources={"image": {"binarize": True}, "audio": _TINY_AUDIO},
        image_root="demo:image",
        audio_root="demo:audio",
        pair_by="index",
        index_file=str(path),
    )
    data.setup("fit")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [8, 2, 2]
    train = data.examples("train", range(8))
    assert train["image"][PRESENT].tolist() == [True, False, *[True] * 6]
    assert train["audio"][PRESENT].all()
    assert data.label_names == sorted({row["label"] for row in csv.DictReader(path.open())})
    bad = tmp_path / "bad.csv"
    bad.write_text("image,split\nimg/0.png,train\n")
    with pytest.raises(ValueError, match=r"no column\(s\) \['audio'\]"):
        PairedDataModule(
            sources={"image": {}, "audio": _TINY_AUDIO},
            image_root="demo:image",
            audio_root="demo:audio",
            pair_by="index",
            index_file=str(bad),
        ).setup("fit")


# ------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def tiny_joint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multimodal-tiny")
    vaekit(*fit_args(TINY, root, "--trainer.max_epochs", "4", "--samples.num", "2"))
    return root / "checkpoints" / "last.ckpt"


def _constant_classifier(path: Path, label: int, example: torch.Tensor) -> Path:
    """An ONNX classifier that calls everything ``label``: coherence then counts the test labels equal to it."""

    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(x.shape[0], 10) + x.flatten(1)[:, :1] * 0
            return logits + torch.nn.functional.one_hot(torch.tensor(label), 10)

    torch.onnx.export(
        Constant().eval(), (example,), str(path), input_names=["x"], output_names=["logits"],
        dynamic_shapes=[{0: torch.export.Dim("batch", min=1)}], dynamo=True, external_data=False, verbose=False,
    )  # fmt: skip
    return path


def _joint_commands(model: Path, out: Path) -> None:
    vaekit("sample", model, "--num", "3", "--out", out / "sample")
    for name in ("image/samples_0002.png", "audio/samples_0002.wav", "audio/samples_0002.png"):
        assert (out / "sample" / name).is_file(), name
    vaekit("reconstruct", model, "--num", "2", "--from", "audio", "--out", out / "rec")
    assert (out / "rec" / "audio" / "inputs_0001.wav").is_file() and not (out / "rec" / "image" / "inputs.png").exists()
    assert (out / "rec" / "image" / "reconstructions_0001.png").is_file()
    vaekit("interpolate", model, "--steps", "3", "--from", "image", "--out", out / "interp")
    vaekit("traverse", model, "--dims", "0", "--steps", "3", "--out", out / "trav")
    assert (out / "trav" / "audio" / "traversal_0002.wav").is_file()
    vaekit("translate", model, "--from", "audio", "--to", "image", "--num", "4", "--out", out / "a2i")
    assert sorted(p.name for p in (out / "a2i" / "image").glob("translations_*.png"))[-1] == "translations_0003.png"
    assert not (out / "a2i" / "audio" / "translations.png").exists()
    labels = (out / "a2i" / "labels.csv").read_text().splitlines()
    assert labels[0] == "index,label" and len(labels) == 5
    clip = out / "a2i" / "audio" / "inputs_0000.wav"
    vaekit("translate", model, "--from", "audio", "--to", "image", "--input", clip, "--out", out / "a2i-file")
    image = out / "a2i" / "image" / "translations_0000.png"
    vaekit("translate", model, "--from", "image", "--to", "audio", "--input", image, "--out", out / "i2a")
    assert (out / "i2a" / "audio" / "translations_0000.wav").is_file()
    vaekit("encode", model, "--from", "audio", "--out", out / "z.npz")
    vaekit("score", model, "--from", "image", "--out", out / "scores.csv")
    assert len((out / "scores.csv").read_text().splitlines()) == 101  # header + the 100 test tuples
    vaekit("evaluate", model, "--iw-samples", "3", "--out", out / "eval.json")
    evaluation = json.loads((out / "eval.json").read_text())
    assert set(evaluation["subsets"]) == {"image", "audio", "image+audio"}
    assert evaluation["nll"] == evaluation["subsets"]["image+audio"]["nll"]
    assert all(np.isfinite(s["nll"]) and s["num_examples"] == 100 for s in evaluation["subsets"].values())


def test_every_command_on_the_tiny_joint_model_from_checkpoint_and_export(tiny_joint, tmp_path):
    _joint_commands(tiny_joint, tmp_path / "from-ckpt")
    vaekit("export", tiny_joint, "--out", tmp_path / "exported", "--num", "2")
    assert (tmp_path / "exported" / "samples" / "image" / "samples.png").is_file()
    _joint_commands(tmp_path / "exported", tmp_path / "from-export")
    first = json.loads((tmp_path / "from-ckpt" / "eval.json").read_text())
    second = json.loads((tmp_path / "from-export" / "eval.json").read_text())
    assert first["subsets"] == second["subsets"]


def test_coherence_counts_what_the_classifiers_say(tiny_joint, tmp_path):
    """Classifiers that call every output '3': translations are coherent exactly for the test tuples of digit
    3 (one of the ten held-out clips), and joint samples always agree; a '3' against a '4' never does."""
    images, waves = torch.zeros(2, 1, 28, 28), torch.zeros(2, 6144)
    three = _constant_classifier(tmp_path / "image3.onnx", 3, images)
    audio_three = _constant_classifier(tmp_path / "audio3.onnx", 3, waves)
    audio_four = _constant_classifier(tmp_path / "audio4.onnx", 4, waves)
    out = tmp_path / "eval.json"
    vaekit("evaluate", tiny_joint, "--iw-samples", "0", "--joint-samples", "7", "--out", out,
           "--classifier", f"image={three}", f"audio={audio_three}")  # fmt: skip
    coherence = json.loads(out.read_text())["coherence"]
    assert coherence["audio->image"] == pytest.approx(0.1) and coherence["image->audio"] == pytest.approx(0.1)
    assert coherence["joint"] == 1.0
    vaekit("evaluate", tiny_joint, "--iw-samples", "0", "--joint-samples", "7", "--out", tmp_path / "e2.json",
           "--classifier", f"image={three}", f"audio={audio_four}")  # fmt: skip
    assert json.loads((tmp_path / "e2.json").read_text())["coherence"]["joint"] == 0.0


def test_joint_flags_are_checked(tiny_joint, tmp_path, image_ckpt):
    with pytest.raises(SystemExit, match="the model's modalities are image, audio"):
        vaekit("translate", tiny_joint, "--from", "text", "--to", "image", "--out", tmp_path / "t")
    with pytest.raises(SystemExit, match="translate needs a joint model"):
        vaekit("translate", image_ckpt, "--from", "audio", "--to", "image", "--out", tmp_path / "t2")
    with pytest.raises(SystemExit, match="--from"):
        vaekit("reconstruct", tiny_joint, "--input", "a.wav", "b.png", "--out", tmp_path / "r")
    with pytest.raises(SystemExit, match="score each with --from"):
        vaekit("score", tiny_joint, "--ood-root", tmp_path, "--out", tmp_path / "s.csv")
    assert not (tmp_path / "t").exists() and not (tmp_path / "r").exists()


def test_a_third_party_plugin_joins_as_a_part(tmp_path, monkeypatch):
    """tests/plugin_example/vecvae.py, installed through its entry point, as one part beside the image plugin;
    vector rows paired with demo digits by label through an index file."""
    site = tmp_path / "site"
    install_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "vectors").mkdir()
    rows = []
    for i in range(40):
        digit = i % 10
        image = tmp_path / f"img{i}.png"
        Image.fromarray(((rng.random((28, 28)) < 0.1 + 0.05 * digit) * 255).astype(np.uint8)).save(image)
        vector = tmp_path / "vectors" / f"{i}.csv"
        np.savetxt(vector, [[digit, -digit, rng.normal()]], delimiter=",")
        rows.append(f"{image.name},vectors/{i}.csv,{'train' if i < 30 else 'val' if i < 35 else 'test'},{digit}")
    (tmp_path / "pairs.csv").write_text("image,vector,split,label\n" + "\n".join(rows) + "\n")
    vectors_root = tmp_path / "vector-data"
    vectors_root.mkdir()
    for name in ("train", "test"):
        np.savetxt(vectors_root / f"{name}.csv", rng.normal(size=(20, 3)), delimiter=",")
    vaekit(
        *fit_args(TINY, tmp_path / "run"),
        "--model.init_args.parts", json.dumps({"image": SMALL_IMAGE, "vector": {"hidden": 16}}),
        "--model.init_args.likelihood_weights", "{}",
        "--data.init_args.sources", json.dumps({"image": {"binarize": True}, "vector": {"root": str(vectors_root)}}),
        "--data.init_args.pair_by", "index",
        "--data.init_args.index_file", str(tmp_path / "pairs.csv"),
        "--trainer.max_epochs", "2",
        "--samples.num", "2",
    )  # fmt: skip
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model, _ = load_model(ckpt)
    assert set(model.parts) == {"image", "vector"} and type(model.parts["vector"]).__name__ == "VectorVAE"
    vaekit("translate", ckpt, "--from", "image", "--to", "vector", "--num", "3", "--out", tmp_path / "i2v")
    decoded = np.loadtxt(tmp_path / "i2v" / "vector" / "translations.csv", delimiter=",")
    assert decoded.shape == (3, 3) and np.isfinite(decoded).all()
    vaekit("sample", ckpt, "--num", "2", "--out", tmp_path / "s")
    assert (tmp_path / "s" / "vector" / "samples.csv").is_file() and (
        tmp_path / "s" / "image" / "samples.png"
    ).is_file()


EVALUATE_ON_RANKS = """
import json, sys
import pytorch_lightning as pl
from vaekit.checkpoint import load_datamodule, load_model
from vaekit.core.evaluation import Evaluator

model, record = load_model(sys.argv[1])
evaluator = Evaluator(model)
trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
trainer.test(evaluator, datamodule=load_datamodule(model, record), verbose=False)
if trainer.is_global_zero:
    open(sys.argv[2], "w").write(json.dumps(evaluator.result))
"""


@pytest.mark.slow
def test_joint_evaluation_is_reduced_over_processes(tiny_joint, tmp_path):
    """Two processes (torchrun, gloo) each evaluate half the test split; the figures rank 0 reports are those of
    the whole split, every subset's included, as one process finds them."""
    import subprocess
    import sys

    from tests.test_scaling import _free_port

    script = tmp_path / "evaluate.py"
    script.write_text(EVALUATE_ON_RANKS)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
              "--master_port", str(_free_port()), str(script), str(tiny_joint), str(tmp_path / "two.json")]  # fmt: skip
    proc = subprocess.run(
        launch, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    two = json.loads((tmp_path / "two.json").read_text())
    vaekit("evaluate", tiny_joint, "--iw-samples", "0", "--out", tmp_path / "one.json")
    one = json.loads((tmp_path / "one.json").read_text())
    # The distributed sampler pads the split to a multiple of the ranks with repeated examples.
    assert one["num_examples"] <= two["num_examples"] <= one["num_examples"] + 1
    for subset, figures in one["subsets"].items():
        assert figures["num_examples"] <= two["subsets"][subset]["num_examples"] <= figures["num_examples"] + 1
        assert two["subsets"][subset]["kl"] == pytest.approx(figures["kl"], rel=0.02), subset
