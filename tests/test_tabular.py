"""The table modality (issue 21): per-column likelihoods, missing values, fitted transforms, every command."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor
from torch import distributions as D

from tests.conftest import fit_args, vaekit
from vaekit.checkpoint import load_datamodule, load_model
from vaekit.core.objectives import ObjectiveConfig
from vaekit.modalities.tabular import TableDataModule, TableVAE
from vaekit.modalities.tabular.model import TableEncoder, TableLikelihood
from vaekit.modalities.tabular.table import ColumnChoices, TableError, decode_table, encode_table, fit_spec

DEMO = Path(__file__).parents[1] / "vaekit" / "demo" / "tabular" / "transactions.csv"
TINY = "configs/tabular/tiny.yaml"
QUICK = ["--trainer.max_steps", "3", "--trainer.max_epochs", "100", "--samples.num", "2"]
CHOICES = ColumnChoices(numeric=[], categorical=[], ignore=[], label="label", max_categories=1000)


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "amount": [1.5, 2.5, None, 4.0, 10.0, 3.0],
            "kind": ["a", "b", "a", None, "c", "b"],
            "n": [1, 2, 3, 2, 1, 5],
            "label": [0, 0, 1, 0, 0, 1],
        }
    )


def _likelihood(kind: str = "gaussian") -> tuple[TableLikelihood, Tensor]:
    torch.manual_seed(0)
    likelihood = TableLikelihood(2, [3, 2], kind, components=4)
    if kind == "gaussian":
        likelihood.numeric.log_scale.data = torch.tensor([0.3, -0.5])
    return likelihood, torch.randn(5, likelihood.outputs)


# ------------------------------------------------------------------ likelihoods


def test_numeric_and_categorical_terms_match_torch_distributions():
    likelihood, params = _likelihood()
    x = torch.tensor([[0.1, -1.0, 2.0, 0.0]] * 5)
    x[:, 2:] = torch.tensor([[2, 0], [0, 1], [1, 1], [2, 1], [0, 0]], dtype=torch.float32)
    numeric, logits = params[:, :2], params[:, 2:]
    expected = D.Normal(numeric, torch.tensor([0.3, -0.5]).exp()).log_prob(x[:, :2]).sum(1)
    expected += D.Categorical(logits=logits[:, :3]).log_prob(x[:, 2].long())  # vocabularies of 3 and 2
    expected += D.Categorical(logits=logits[:, 3:]).log_prob(x[:, 3].long())
    torch.testing.assert_close(likelihood.log_prob(params, x), expected)


@pytest.mark.parametrize("marginal_weight", [0.0, 0.01])
def test_mixture_term_matches_mixture_same_family(marginal_weight):
    likelihood = TableLikelihood(2, [], "mixture", components=4, marginal_weight=marginal_weight)
    params = torch.randn(5, likelihood.outputs)
    x = torch.randn(5, 2)
    logits, means, log_scales = params.view(5, 2, 12).chunk(3, -1)
    weights, scales = logits.softmax(-1), log_scales.clamp(min=-7).exp()
    if marginal_weight:  # the column's marginal, N(0, 1) in standardised units, as a fifth component
        pad = torch.ones(5, 2, 1)
        weights = torch.cat([(1 - marginal_weight) * weights, marginal_weight * pad], -1)
        means, scales = torch.cat([means, 0 * pad], -1), torch.cat([scales, pad], -1)
    mixture = D.MixtureSameFamily(D.Categorical(probs=weights), D.Normal(means, scales))
    torch.testing.assert_close(likelihood.log_prob(params, x), mixture.log_prob(x).sum(1))
    torch.testing.assert_close(likelihood.mean(params), mixture.mean)
    assert likelihood.sample(params).shape == (5, 2)


def test_the_marginal_component_caps_what_a_missed_cell_costs():
    """Components narrowed onto a near-constant column's one value: a cell 5 standard deviations off it costs
    millions of nats without the marginal, and with it the marginal's NLL plus log(1 / weight) at most."""
    narrow = torch.cat([torch.zeros(1, 5), torch.zeros(1, 5), torch.full((1, 5), -7.0)], 1)  # logits, means, scales
    off = torch.tensor([[5.0]])
    alone = -TableLikelihood(1, [], "mixture", components=5).log_prob(narrow, off)
    capped = -TableLikelihood(1, [], "mixture", components=5, marginal_weight=0.01).log_prob(narrow, off)
    assert alone.item() > 1e6
    marginal_nll = -D.Normal(0.0, 1.0).log_prob(off).squeeze()
    assert marginal_nll < capped.item() <= marginal_nll + math.log(100) + 1e-4
    # draws come from the marginal about as often as its weight
    torch.manual_seed(0)
    draws = TableLikelihood(1, [], "mixture", 5, marginal_weight=0.2).sample(narrow.expand(20000, -1))
    assert abs((draws.abs() > 0.05).float().mean().item() - 0.2 * 0.96) < 0.015
    with pytest.raises(ValueError, match=r"--model.marginal_weight is a mixture weight in \[0, 1\)"):
        TableVAE(marginal_weight=1.0)


def test_trim_leaves_the_worst_fitted_rows_out_of_a_training_step_only():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=64), "b": rng.normal(size=64), "kind": rng.choice(["x", "y"], 64)})
    frame.loc[:7, ["a", "b"]] = 40.0  # eight far-out rows: the batch's worst-fitted
    spec, _ = fit_spec(frame, CHOICES, "t.csv")
    x = encode_table(frame, spec, "t.csv", skip_unseen=False, fix="").x
    torch.manual_seed(0)
    model = TableVAE(numeric_likelihood="mixture", trim=0.125, free_bits=0.5)
    model.attach_spec(spec)
    whole = model.bound_terms({"x": x}, model.objective)  # validation, evaluation and scores: every row
    assert len(whole.rec) == 64 and whole.rec[:8].min() > whole.rec[8:].max()
    kept = model.trimmed({"x": x}, beta=1.0)["x"]
    trimmed = model.bound_terms({"x": kept}, model.objective)
    assert len(trimmed.rec) == 56 and trimmed.rec.max() < whole.rec[:8].min()  # the eight are out of the step
    torch.testing.assert_close(trimmed.loss, trimmed.rec.mean() + trimmed.kl_per_dim.mean(0).clamp(min=0.5).sum())
    # the training step trains on the trimmed batch: the same draws give the same loss
    torch.manual_seed(1)
    step_loss = model.training_step({"x": x}, 0)
    torch.manual_seed(1)
    torch.testing.assert_close(step_loss, model.bound_terms(model.trimmed({"x": x}, 1.0), model.objective).loss)
    # a row whose loss is not finite is left out, and the step's gradients stay finite
    x[0, 0] = 1e30
    model.zero_grad()
    model.training_step({"x": x}, 0).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match=r"--model.trim is the share of each batch left out, in \[0, 1\)"):
        TableVAE(trim=1.0)
    with pytest.raises(ValueError, match="the iwae objective has no trimmed form"):
        TableVAE(trim=0.1, objective=ObjectiveConfig(name="iwae"))


def test_a_missing_cell_removes_its_term_and_nothing_else():
    likelihood, params = _likelihood()
    full = torch.tensor([[0.5, -0.2, 1.0, 1.0]] * 5)
    for column in range(4):
        holed = full.clone()
        holed[:, column] = float("nan")
        only = torch.zeros_like(full, dtype=torch.bool)
        only[:, column] = True
        # The missing cell's term alone: the row's log-probability restricted to that cell (a mask).
        term = likelihood.log_prob(params, full, only.float())
        torch.testing.assert_close(likelihood.log_prob(params, holed), likelihood.log_prob(params, full) - term)
        assert torch.isfinite(likelihood.log_prob(params, holed)).all()


def test_the_encoder_sees_missing_as_missing_not_as_zero():
    spec, _ = fit_spec(_frame(), CHOICES, "frame")
    encoder = TableEncoder(spec, hidden=8, layers=1, latent_dim=2)
    zero = torch.tensor([[0.0, 0.0, 1.0]])  # amount, n, kind (code 1: "b")
    missing = torch.tensor([[float("nan"), 0.0, float("nan")]])
    features = encoder.features(torch.cat([zero, missing]))
    assert features[0, :2].tolist() == [0.0, 0.0] and features[0, 2:4].tolist() == [1.0, 1.0]
    assert features[1, :2].tolist() == [0.0, 0.0] and features[1, 2:4].tolist() == [0.0, 1.0]
    assert features[0, 4:].tolist() == [0.0, 1.0, 0.0] and features[1, 4:].tolist() == [0.0, 0.0, 0.0]


# ------------------------------------------------------------------ transforms and categories


def test_rows_round_trip_through_the_spec():
    frame = _frame()
    spec, _ = fit_spec(frame, CHOICES, "frame")
    assert spec.numeric == ["amount", "n"] and spec.categorical == ["kind"] and spec.categories == [["a", "b", "c"]]
    assert spec.integer == [False, True] and spec.label_names == ["0", "1"] and spec.normal_labels == ["0"]
    table = encode_table(frame, spec, "frame", skip_unseen=False, fix="")
    assert abs(float(table.x[:, 0].nanmean())) < 1e-6 and table.label.tolist() == [0, 0, 1, 0, 0, 1]
    back = decode_table(table.x, spec)
    assert list(back.columns) == ["amount", "kind", "n"]
    np.testing.assert_allclose(back["amount"].to_numpy(dtype=float), frame["amount"].to_numpy(), rtol=1e-6)
    assert back["kind"].tolist()[:3] == ["a", "b", "a"] and pd.isna(back["kind"][3])  # None or NaN by pandas version
    assert back["n"].tolist() == frame["n"].tolist()


def test_sampled_rows_hold_only_known_categories_within_the_training_range(tmp_path):
    spec, _ = fit_spec(_frame(), CHOICES, "frame")
    likelihood = TableLikelihood(len(spec.numeric), spec.vocab_sizes, "gaussian", 1)
    params = 5 * torch.randn(500, likelihood.outputs)
    back = decode_table(likelihood.sample(params), spec)
    assert set(back["kind"]) <= {"a", "b", "c"} and len(set(back["kind"])) == 3
    assert back["n"].between(1, 5).all() and back["amount"].between(1.5, 10.0).all()


# ------------------------------------------------------------------ through the CLI


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tabular-tiny")
    vaekit(*fit_args(TINY, root, "--trainer.max_steps", "30", "--samples.num", "4"))
    return root / "checkpoints" / "last.ckpt"


def _scores(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_the_tiny_recipe_through_every_command(tiny, tmp_path, capsys):
    out = tmp_path
    vaekit("sample", tiny, "--num", "300", "--out", out / "sample")
    samples = pd.read_csv(out / "sample" / "samples.csv")
    demo = pd.read_csv(DEMO)
    assert list(samples.columns) == [c for c in demo.columns if c != "label"] and len(samples) == 300
    for column in ("merchant", "channel", "country"):
        assert set(samples[column].dropna()) <= set(demo[column].dropna()), column
    assert samples["amount"].between(demo["amount"].min(), demo["amount"].max()).all()

    vaekit("reconstruct", tiny, "--input", DEMO, "--out", out / "rec")
    assert len(pd.read_csv(out / "rec" / "reconstructions.csv")) == len(demo)
    pd.testing.assert_frame_equal(
        pd.read_csv(out / "rec" / "inputs.csv"), demo.drop(columns="label"), check_dtype=False, atol=1e-3
    )

    capsys.readouterr()
    vaekit("score", tiny, "--input", DEMO, "--out", out / "scores.csv")
    printed = capsys.readouterr().out
    rows = _scores(out / "scores.csv")
    assert [int(r["index"]) for r in rows] == list(range(len(demo)))
    assert [int(r["label"]) for r in rows] == demo["label"].tolist()
    assert "AUROC (neg_elbo, normal labels ['0'])" in printed
    vaekit("score", tiny, "--out", out / "split.csv")  # the held-out test split, labelled from the file
    assert "AUROC" in capsys.readouterr().out and len(_scores(out / "split.csv")) == 100

    vaekit("evaluate", tiny, "--iw-samples", "4", "--out", out / "eval.json")
    evaluation = json.loads((out / "eval.json").read_text())
    assert math.isfinite(evaluation["nll"]) and evaluation["nats_per_cell"] > 0
    vaekit("encode", tiny, "--out", out / "z.npz")
    assert np.load(out / "z.npz")["mean"].shape == (100, 4)
    vaekit("interpolate", tiny, "--steps", "3", "--out", out / "interp")
    vaekit("traverse", tiny, "--dims", "0", "--steps", "3", "--out", out / "trav")
    assert len(pd.read_csv(out / "trav" / "traversal.csv")) == 3


def test_fitted_transforms_come_back_from_the_checkpoint_and_the_export(tiny, tmp_path):
    import onnxruntime

    data = TableDataModule(root="demo:tabular", test_fraction=0.25)
    data.setup("fit")
    model, record = load_model(tiny)
    assert model.spec == data.spec and model.spec.means[0] == pytest.approx(data.spec.means[0])
    restored = load_datamodule(model, record)
    restored.setup("test")
    assert torch.equal(restored.splits["test"]["x"].nan_to_num(-9), data.splits["test"]["x"].nan_to_num(-9))

    vaekit("export", tiny, "--out", tmp_path / "exp", "--onnx", "--num", "0")
    exported, _ = load_model(tmp_path / "exp")
    assert exported.spec == model.spec
    transforms = json.loads((tmp_path / "exp" / "transforms.json").read_text())
    assert transforms["means"] == model.spec.means and transforms["categories"] == model.spec.categories
    # The encoder graph takes rows as the model does, NaN for missing cells, and gives the same posterior.
    x = data.splits["test"]["x"][:7]
    assert torch.isnan(x).any()
    session = onnxruntime.InferenceSession(str(tmp_path / "exp" / "encoder.onnx"))
    mean, _ = session.run(None, {"x": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(mean), model.encoder(x)[0], atol=1e-5, rtol=1e-4)
    vaekit("score", tmp_path / "exp", "--input", DEMO, "--out", tmp_path / "exp-scores.csv")
    assert len(_scores(tmp_path / "exp-scores.csv")) == 400


def test_the_adbench_recipe_on_a_users_csv_then_score(tmp_path, capsys):
    """The issue's done-when: `fit --config configs/tabular/adbench.yaml --data.root their.csv`, then `score`."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4))
    y = (rng.random(300) < 0.1).astype(int)
    x[y == 1] += 4
    frame = pd.DataFrame(x, columns=["x0", "x1", "x2", "x3"]).assign(label=y)  # as an .npz X names them
    frame.to_csv(tmp_path / "their.csv", index=False)
    vaekit(*fit_args("configs/tabular/adbench.yaml", tmp_path / "run", "--data.root", tmp_path / "their.csv", *QUICK))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    capsys.readouterr()
    vaekit("score", ckpt, "--out", tmp_path / "scores.csv")
    assert "AUROC" in capsys.readouterr().out and len(_scores(tmp_path / "scores.csv")) == 90  # 30 % held out
    scored = _scores(tmp_path / "scores.csv")  # each score names its row of their.csv, with that row's label
    assert len({r["index"] for r in scored}) == 90 and max(int(r["index"]) for r in scored) > 90
    assert all(int(r["label"]) == y[int(r["index"])] for r in scored)
    np.savez(tmp_path / "rows.npz", X=x[:5], y=y[:5])  # an .npz too: X and y
    vaekit("score", ckpt, "--input", tmp_path / "rows.npz", "--out", tmp_path / "npz.csv")
    assert [int(r["label"]) for r in _scores(tmp_path / "npz.csv")] == y[:5].tolist()
    frame[5:9].to_parquet(tmp_path / "rows.parquet")  # and Parquet
    vaekit("score", ckpt, "--input", tmp_path / "rows.parquet", "--out", tmp_path / "parquet.csv")
    assert [int(r["label"]) for r in _scores(tmp_path / "parquet.csv")] == y[5:9].tolist()


# ------------------------------------------------------------------ bad tables


def _module(path: Path, **kwargs) -> TableDataModule:
    data = TableDataModule(root=str(path), **kwargs)
    data.setup("fit")
    return data


def test_a_ragged_csv_names_its_line(tmp_path):
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3,4,5\n6,7\n")
    with pytest.raises(TableError, match=r"t.csv: line 3 has 3 fields but the header names 2 columns"):
        _module(tmp_path / "t.csv")
    (tmp_path / "t.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(TableError, match=r"line 3 has 1 fields"):
        _module(tmp_path / "t.csv")


def test_a_text_cell_in_a_numeric_column_names_the_cell_and_the_fix(tmp_path):
    rows = [[str(i), "x" if i % 2 else "y"] for i in range(40)]
    rows[17][0] = "oops"
    pd.DataFrame(rows, columns=["amount", "kind"]).to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(
        TableError, match=r"t.csv: column 'amount' is numeric but row 17 .* holds 'oops'.*--data.categorical"
    ):
        _module(tmp_path / "t.csv")
    # Left out, the same table is fine.
    assert _module(tmp_path / "t.csv", ignore=["amount"]).spec.order == ["kind"]


def test_a_constant_column_is_left_out_with_a_warning_and_written_back(tmp_path):
    frame = pd.concat([_frame()] * 5, ignore_index=True).assign(site="berlin", zero=0.0)
    frame.to_csv(tmp_path / "t.csv", index=False)
    with pytest.warns(UserWarning, match=r"2 column\(s\) hold one value .*\['site', 'zero'\]"):
        data = _module(tmp_path / "t.csv", test_fraction=0.2, val_fraction=0.2)
    assert data.spec.constant == {"site": "berlin", "zero": "0"}
    assert data.splits["train"]["x"].shape[1] == 3
    back = decode_table(data.splits["train"]["x"], data.spec)
    assert list(back.columns) == ["amount", "kind", "n", "site", "zero"] and set(back["site"]) == {"berlin"}


def test_an_unseen_category_is_an_error_naming_it_or_a_counted_skip(tiny, tmp_path):
    rows = pd.read_csv(DEMO)
    new = rows.head(5).copy()
    new.loc[2, "merchant"] = "casino"
    new.to_csv(tmp_path / "new.csv", index=False)
    with pytest.raises(SystemExit, match=r"new.csv: column 'merchant' holds 'casino'.*remove those rows"):
        vaekit("score", tiny, "--input", tmp_path / "new.csv", "--out", tmp_path / "s.csv")
    # In a test file of the training data: an error, or with --data.skip_bad_files a counted skip.
    (tmp_path / "data").mkdir()
    rows.to_csv(tmp_path / "data" / "train.csv", index=False)
    new.to_csv(tmp_path / "data" / "test.csv", index=False)
    with pytest.raises(TableError, match=r"test.csv: column 'merchant' holds 'casino'.*--data.skip_bad_files true"):
        _module(tmp_path / "data")
    with pytest.warns(UserWarning, match="skipped 1 bad"):
        data = _module(tmp_path / "data", skip_bad_files=True)
    assert len(data.splits["test"]) == 4 and data.splits["test"]["row"].tolist() == [0, 1, 3, 4]


JOINT = """
model:
  class_path: vaekit.modalities.multimodal.model.JointVAE
  init_args:
    latent_dim: 4
    parts:
      image: {channels: [4], blocks_per_stage: 0, hidden: 16, likelihood: bernoulli}
      tabular: {}
data:
  class_path: vaekit.modalities.multimodal.data.PairedDataModule
  init_args:
    pair_by: label
    image_root: demo:image
    batch_size: 16
    sources: {image: {binarize: true}, tabular: {root: "demo:tabular"}}
"""


def test_a_table_is_a_part_of_a_joint_model(tmp_path):
    """Paired by label (demo digits 0 and 1 with normal and fraudulent rows): the plugin, unchanged, as a part."""
    (tmp_path / "joint.yaml").write_text(JOINT)
    vaekit(*fit_args(str(tmp_path / "joint.yaml"), tmp_path / "run", *QUICK))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    vaekit("translate", ckpt, "--from", "image", "--to", "tabular", "--num", "3", "--out", tmp_path / "i2t")
    rows = pd.read_csv(tmp_path / "i2t" / "tabular" / "translations.csv")
    assert len(rows) == 3 and list(rows.columns) == ["amount", "hour", "merchant", "channel", "country", "age"]
    vaekit("score", ckpt, "--from", "tabular", "--out", tmp_path / "scores.csv")
    assert len(_scores(tmp_path / "scores.csv")) > 0


def test_a_hub_dataset_is_read_by_split(monkeypatch):
    """A hub id's splits (here built in memory: no network) become the table's splits, validation held out."""
    import datasets

    frame = pd.read_csv(DEMO)
    hub = datasets.DatasetDict(
        {"train": datasets.Dataset.from_pandas(frame[:300]), "test": datasets.Dataset.from_pandas(frame[300:])}
    )
    monkeypatch.setattr(TableDataModule, "hub_dataset", lambda self: hub)
    data = _module("someone/transactions")
    assert data.source.hub_id == "someone/transactions"
    assert (len(data.splits["train"]), len(data.splits["val"]), len(data.splits["test"])) == (270, 30, 100)
    assert data.spec.categorical == ["merchant", "channel", "country"] and data.label_names == ["0", "1"]
