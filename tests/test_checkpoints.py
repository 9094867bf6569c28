"""Saved models a user runs and a stranger hands over: every shipped config's checkpoint and exported folder
through every command; malicious files; divergence; killed, read-only and re-used outputs; ONNX; the Hub."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TESTS, fit_args, vaekit, vaekit_subprocess
from vaekit.checkpoint import load_model, read_exported
from vaekit.core.module import VAE
from vaekit.core.schedules import BetaSchedule
from vaekit.modalities.image import ImageDataModule, ImageVAE
from vaekit.modalities.registry import Modality, get_modality
from vaekit.recipes import list_recipes

TINY = "configs/image/tiny.yaml"
JOINT_DATA = ["--data.image_root", "demo:image", "--data.audio_root", "demo:audio"]


def _fit(config: str, root: Path, *extra: str) -> Path:
    modality = config.split("/")[1]
    # A joint recipe pairs the demo data of its modalities.
    data = JOINT_DATA if modality == "multimodal" else ["--data.root", f"demo:{modality}"]
    vaekit(
        *fit_args(config, root),
        *data,
        "--trainer.max_steps", "3",
        "--trainer.max_epochs", "100",
        "--trainer.limit_val_batches", "1",
        "--samples.num", "2",
        *extra,
    )  # fmt: skip
    return root / "checkpoints" / "last.ckpt"


def _every_command(model: Path | str, out: Path, modality: str) -> None:
    """Each checkpoint command on ``model``, with a check that it wrote what it should."""
    vaekit("sample", model, "--num", "3", "--out", out / "sample")
    vaekit("reconstruct", model, "--num", "2", "--out", out / "rec")
    vaekit("interpolate", model, "--steps", "3", "--out", out / "interp")
    vaekit("traverse", model, "--dims", "0", "1", "--steps", "3", "--out", out / "trav")
    vaekit("evaluate", model, "--iw-samples", "3", "--max-examples", "8", "--out", out / "eval.json")
    vaekit("encode", model, "--max-examples", "8", "--out", out / "z.npz")
    vaekit("score", model, "--max-examples", "8", "--out", out / "scores.csv")
    if modality == "multimodal":
        vaekit("translate", model, "--from", "audio", "--to", "image", "--num", "2", "--out", out / "translate")
        assert (out / "translate" / "image" / "translations_0001.png").is_file()
    first = {
        "image": "samples_0000.png",
        "text": "samples.jsonl",
        "audio": "samples_0000.wav",
        "multimodal": "image/samples_0000.png",
        "tabular": "samples.csv",
    }[modality]
    assert (out / "sample" / first).is_file()
    assert len(list((out / "rec").rglob("reconstructions*"))) >= 1  # a joint model: one folder per modality
    evaluation = json.loads((out / "eval.json").read_text())
    assert np.isfinite(evaluation["nll"]) and evaluation["num_examples"] >= 1
    assert np.load(out / "z.npz")["mean"].shape[1] == load_model(model)[0].hparams.latent_dim
    assert len((out / "scores.csv").read_text().splitlines()) >= 2


@pytest.mark.parametrize("recipe", [r.name for r in list_recipes()])
def test_every_config_checkpoint_and_export_through_every_command(recipe, tmp_path):
    """Shrunk to a few steps on the demo data, but with each config's own networks and hyper-parameters."""
    modality = recipe.split("/")[0]
    ckpt = _fit(f"configs/{recipe}.yaml", tmp_path / "run")
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3  # plain data only: loads as weights

    model, _ = load_model(ckpt)
    assert isinstance(model.beta, BetaSchedule), "nested options come back as the objects the constructor expects"
    if model.hparams.get("pretrain_ae_steps"):  # the PTB recipe: this is where defect 1 was
        assert model.beta.start_step == model.hparams.pretrain_ae_steps
    _every_command(ckpt, tmp_path / "from-ckpt", modality)

    vaekit("export", ckpt, "--out", tmp_path / "exported", "--num", "2")
    exported = tmp_path / "exported"
    assert {"config.json", "model.safetensors", "README.md", "recipe.yaml"} <= {p.name for p in exported.iterdir()}
    _every_command(exported, tmp_path / "from-export", modality)
    from_folder, _ = load_model(exported)
    for key, value in model.state_dict().items():
        assert torch.equal(value, from_folder.state_dict()[key]), key
    assert from_folder.spec == model.spec


def test_exported_recipe_retrains_under_its_own_root(image_ckpt, tmp_path):
    vaekit("export", image_ckpt, "--out", tmp_path / "exp", "--num", "0")
    vaekit(*fit_args(str(tmp_path / "exp" / "recipe.yaml"), tmp_path / "again", "--trainer.max_steps", "2"))
    assert (tmp_path / "again" / "checkpoints" / "last.ckpt").is_file()


def test_model_card_quotes_evaluation_and_shows_samples(image_ckpt, tmp_path):
    vaekit("evaluate", image_ckpt, "--iw-samples", "2", "--max-examples", "8", "--out", tmp_path / "eval.json")
    vaekit("export", image_ckpt, "--out", tmp_path / "exp", "--evaluation", tmp_path / "eval.json", "--num", "4")
    card = (tmp_path / "exp" / "README.md").read_text()
    nll = json.loads((tmp_path / "eval.json").read_text())["nll"]
    assert card.startswith("---\nlibrary_name: vaekit")
    assert f"| nll | {nll:.4g} |" in card
    assert "![samples](samples/samples.png)" in card and (tmp_path / "exp" / "samples" / "samples.png").is_file()
    config = json.loads((tmp_path / "exp" / "config.json").read_text())
    assert config["modality"] == "image" and config["plugin"]["package"] == "vaekit"


def test_text_and_audio_assets_are_plain_files(tmp_path):
    text = _fit("configs/text/tiny.yaml", tmp_path / "text")
    vaekit("export", text, "--out", tmp_path / "text-exp", "--num", "0")
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "text-exp" / "tokenizer.json"))
    model, _ = load_model(text)
    assert tokenizer.get_vocab() == model.tokenizer.get_vocab()
    assert "tokenizer_json" not in json.loads((tmp_path / "text-exp" / "config.json").read_text())["spec"]

    audio = _fit("configs/audio/tiny.yaml", tmp_path / "audio")
    vaekit("export", audio, "--out", tmp_path / "audio-exp", "--num", "0")
    stats = json.loads((tmp_path / "audio-exp" / "normalisation.json").read_text())
    model, _ = load_model(audio)
    assert stats == {"mel_mean": model.spec.mel_mean, "mel_std": model.spec.mel_std}


# ------------------------------------------------------------------ files from a stranger


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _assert_refused(model: Path, tmp_path: Path, marker: Path, expected: str) -> None:
    for command in (["sample", model, "--out", tmp_path / "out"], ["evaluate", model, "--out", tmp_path / "e.json"]):
        with pytest.raises(SystemExit, match=expected):
            vaekit(*command)
    assert not marker.exists(), "loading the file ran its code"
    assert not (tmp_path / "out").exists()


def test_malicious_pickle_checkpoint_runs_nothing(image_ckpt, tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = torch.load(image_ckpt, weights_only=True)
    checkpoint["vaekit"]["payload"] = _Payload(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    _assert_refused(evil, tmp_path, marker, "could run code")
    with pytest.raises(SystemExit, match="could run code"):  # resuming from it too
        vaekit(*fit_args(TINY, tmp_path / "resume", "--ckpt_path", str(evil)))
    assert not marker.exists()


def test_checkpoint_naming_a_non_vaekit_class_runs_nothing(image_ckpt, tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = torch.load(image_ckpt, weights_only=True)
    checkpoint["vaekit"]["model_class"] = "subprocess.getoutput"
    checkpoint["vaekit"]["datamodule_class"] = "os.system"
    checkpoint["hyper_parameters"] = {"cmd": f"touch {marker}"}
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    _assert_refused(evil, tmp_path, marker, "'subprocess.getoutput', which the installed 'image' plugin does not")


def test_nested_class_path_in_saved_arguments_is_refused(image_ckpt, tmp_path):
    marker = tmp_path / "pwned"
    checkpoint = torch.load(image_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["beta"] = {"class_path": "subprocess.getoutput", "init_args": {"cmd": "x"}}
    evil = tmp_path / "evil.ckpt"
    torch.save(checkpoint, evil)
    _assert_refused(evil, tmp_path, marker, "names code to import")


def test_malicious_exported_folders_run_nothing(image_ckpt, tmp_path):
    marker = tmp_path / "pwned"
    vaekit("export", image_ckpt, "--out", tmp_path / "good", "--num", "0")

    def variant(name: str, edit) -> Path:
        folder = tmp_path / name
        shutil.copytree(tmp_path / "good", folder)
        edit(folder)
        return folder

    def config_edit(**changes):
        def edit(folder: Path) -> None:
            config = json.loads((folder / "config.json").read_text())
            config.update(changes)
            (folder / "config.json").write_text(json.dumps(config))

        return edit

    def pickled_weights(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(pickle.dumps(_Payload(marker)))

    cases = {
        "class": (config_edit(model_class="subprocess.getoutput"), "does not register"),
        "nested": (config_edit(model_args={"beta": {"class_path": "os.system"}}), "names code to import"),
        "pickle": (pickled_weights, "not a safetensors file"),
        "json": (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
        "shape": (config_edit(model_args={"latent_dim": 5}), "describe a model of"),  # refused before allocation
    }
    for name, (edit, expected) in cases.items():
        _assert_refused(variant(name, edit), tmp_path / f"{name}-out", marker, expected)


def test_old_checkpoints_of_the_first_format_still_load(image_ckpt, tmp_path):
    """As vaekit 0.1 wrote them: LightningCLI's private keys in the arguments, no format or version entry."""
    checkpoint = torch.load(image_ckpt, weights_only=True)
    for key in ("format", "vaekit_version", "recipe"):
        del checkpoint["vaekit"][key]
    checkpoint["hyper_parameters"].update(
        _class_path="vaekit.modalities.image.ImageVAE",
        _instantiator="pytorch_lightning.cli.instantiate_module",
        beta={"schedule": "linear", "max": 1.0, "warmup_steps": 7},
    )
    old = tmp_path / "old.ckpt"
    torch.save(checkpoint, old)
    model, record = load_model(old)
    assert model.beta == BetaSchedule(schedule="linear", warmup_steps=7)
    assert record.vaekit_version == "0.1.0"


def test_classes_resolve_only_through_the_registry():
    image = get_modality("image")
    assert image.resolve("vaekit.modalities.image.ImageVAE", VAE) is ImageVAE
    assert image.resolve(None, VAE) is ImageVAE

    class Variant(ImageVAE):
        pass

    plugin = Modality("image", ImageVAE, ImageDataModule, extra_classes=(Variant,))
    assert plugin.resolve(f"{Variant.__module__}.{Variant.__qualname__}", VAE) is Variant
    with pytest.raises(ValueError, match="Modality\\(extra_classes"):
        image.resolve(f"{Variant.__module__}.{Variant.__qualname__}", VAE)
    with pytest.raises(ValueError, match="does not register"):
        image.resolve("vaekit.modalities.image.ImageVAE", ImageDataModule)  # a model is no data module


# ------------------------------------------------------------------ divergence


def _assert_all_checkpoints_finite(folder: Path) -> None:
    checkpoints = sorted(folder.glob("*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), path


def test_nan_between_logging_steps_before_epoch_end_saves_nothing(tmp_path):
    """Step 9 is the last of epoch 0 and not a logging step (every 50): the case that overwrote last.ckpt."""
    run = tmp_path / "run"
    args = fit_args(
        TINY, run,
        "--trainer.limit_train_batches", "10",
        "--trainer.log_every_n_steps", "50",
        "--checkpoint.every_n_train_steps", "5",
        "--samples.num", "0",
        "--trainer.callbacks+=helpers.PoisonBatchAtStep",
        "--trainer.callbacks.step", "9",
    )  # fmt: skip
    proc = vaekit_subprocess(*args, env={"PYTHONPATH": str(TESTS)}, check=False)
    assert proc.returncode == 1
    assert "training diverged" in proc.stderr and "at step 9" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    _assert_all_checkpoints_finite(run / "checkpoints")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


def test_a_checkpoint_with_nonfinite_weights_is_refused(image_ckpt, tmp_path):
    checkpoint = torch.load(image_ckpt, weights_only=True)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][name][...] = float("nan")
    bad = tmp_path / "nan.ckpt"
    torch.save(checkpoint, bad)
    for command in ("sample", "reconstruct", "interpolate", "traverse"):
        with pytest.raises(SystemExit, match="weights are not finite"):
            vaekit(command, bad, "--out", tmp_path / command)
    for command in ("evaluate", "encode", "score"):
        with pytest.raises(SystemExit, match="weights are not finite"):
            vaekit(command, bad, "--out", tmp_path / f"{command}.out")
    with pytest.raises(SystemExit, match="weights are not finite"):
        vaekit("export", bad, "--out", tmp_path / "exp")
    assert sorted(os.listdir(tmp_path)) == ["nan.ckpt"]


# ------------------------------------------------------------------ outputs: killed, read-only, re-used


def test_killed_sample_leaves_no_debris_after_the_next_run(image_ckpt, tmp_path):
    out = tmp_path / "samples"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vaekit.cli", "sample", str(image_ckpt), "--num", "2000", "--out", str(out)], env=env
    )
    deadline = time.monotonic() + 120
    while not any(p.name.endswith(".part") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the staging folder never appeared"
        time.sleep(0.05)
    time.sleep(0.5)  # into the writing
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed run must not leave a partial output folder"
    assert [p for p in tmp_path.iterdir() if ".part" in p.name], "the kill happened mid-write"

    vaekit("sample", image_ckpt, "--num", "3", "--out", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples"]
    assert len(list(out.glob("samples_*.png"))) == 3


def test_reused_output_folder_is_refused_or_replaced_whole(image_ckpt, tmp_path):
    out = tmp_path / "out"
    vaekit("sample", image_ckpt, "--num", "4", "--out", out)
    with pytest.raises(SystemExit, match=r"already holds .* pass --overwrite"):
        vaekit("sample", image_ckpt, "--num", "2", "--out", out)
    assert len(list(out.glob("samples_*.png"))) == 4, "the earlier outputs are untouched"
    vaekit("sample", image_ckpt, "--num", "2", "--out", out, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["samples.png", "samples_0000.png", "samples_0001.png"]


def test_read_only_output_folder_gets_one_line(image_ckpt, tmp_path):
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    command = [sys.executable, "-m", "vaekit.cli", "sample", str(image_ckpt), "--out", str(readonly / "samples")]
    if os.geteuid() == 0:  # root writes through permission bits: mount the folder read-only in a private namespace
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare to make a read-only mount as root")
        script = f'mount --bind "{readonly}" "{readonly}" && mount -o remount,bind,ro "{readonly}" && exec "$@"'
        command = ["unshare", "--mount", "sh", "-c", script, "sh", *command]
    else:
        readonly.chmod(0o555)
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if os.geteuid() == 0 and "mount" in proc.stderr and "vaekit" not in proc.stderr:
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()}")
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()
    assert error[-1].startswith(f"vaekit: error: cannot write to {readonly}"), proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ ONNX


@pytest.mark.parametrize("config", ["image/tiny", "audio/tiny", "text/tiny"])
def test_onnx_graphs_match_pytorch(config, tmp_path):
    import onnxruntime

    ckpt = _fit(f"configs/{config}.yaml", tmp_path / "run")
    vaekit("export", ckpt, "--out", tmp_path / "exp", "--onnx", "--num", "0")
    model, _ = load_model(ckpt)
    graphs = model.onnx_graphs()
    expected = {"image/tiny": {"encoder", "decoder"}, "audio/tiny": {"encoder", "decoder"}}
    assert set(graphs) == expected.get(config, {"decoder_init", "decoder_step"})
    generator = torch.Generator().manual_seed(0)
    for name, graph in graphs.items():
        session = onnxruntime.InferenceSession(str(tmp_path / "exp" / f"{name}.onnx"))
        dims = graph.batch_dims or (0,) * len(graph.inputs)
        inputs = []
        for example, dim in zip(graph.inputs, dims, strict=True):  # a batch of 5, not the exported 2
            shape = list(example.shape)
            shape[dim] = 5
            if example.dtype == torch.long:
                inputs.append(torch.randint(0, model.spec.vocab_size, shape, generator=generator))
            else:
                inputs.append(torch.randn(shape, generator=generator))
        with torch.no_grad():
            reference = graph.module(*inputs)
        reference = reference if isinstance(reference, tuple) else (reference,)
        outputs = session.run(None, dict(zip(graph.input_names, (x.numpy() for x in inputs), strict=True)))
        for got, want in zip(outputs, reference, strict=True):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{config} {name}")


# ------------------------------------------------------------------ the Hub


def test_hub_model_id_loads_through_snapshot_download(image_ckpt, tmp_path, monkeypatch):
    import huggingface_hub

    vaekit("export", image_ckpt, "--out", tmp_path / "exp", "--num", "0")
    asked = []

    def snapshot_download(repo_id, **kwargs):
        asked.append((repo_id, kwargs))
        return str(tmp_path / "exp")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    vaekit("sample", "someone/mnist-vae", "--num", "2", "--out", tmp_path / "out")
    assert asked[0][0] == "someone/mnist-vae" and "*.safetensors" in asked[0][1]["allow_patterns"]
    assert (tmp_path / "out" / "samples_0001.png").is_file()


def test_push_uploads_a_checked_folder(image_ckpt, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    vaekit("export", image_ckpt, "--out", tmp_path / "exp", "--num", "0")
    vaekit("push", tmp_path / "exp", "me/mnist-vae", "--private")
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][2]["private"] is True
    assert calls[1][2]["folder_path"] == str(tmp_path / "exp") and calls[1][1] == "me/mnist-vae"

    calls.clear()
    (tmp_path / "exp" / "model.safetensors").unlink()
    with pytest.raises(SystemExit, match="not an exported vaekit model"):
        vaekit("push", tmp_path / "exp", "me/mnist-vae")
    assert calls == [], "a folder that would not load is never uploaded"
    assert read_exported  # the loader push checks with
