"""`vaekit export` and `vaekit push`: a trained model as a self-contained folder, shared the way this field does.

The folder holds ``config.json`` (modality, plugin, classes, arguments, data spec, vaekit version),
``model.safetensors``, the plugin's spec assets as plain files (a tokenizer, normalisation statistics),
``recipe.yaml`` (the fit config), prior samples, a ``README.md`` model card, and with ``--onnx`` the
plugin's networks as ONNX graphs. Every checkpoint command reads it; nothing in it is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vaekit import __version__
from vaekit.checkpoint import CONFIG_FILE, EXPORT_FORMAT, WEIGHTS_FILE, ModelRecord, read_exported
from vaekit.core.io import write_text
from vaekit.core.module import VAE
from vaekit.modalities.registry import entry_point

SAMPLES_DIR = "samples"


def _plugin(modality: str) -> dict[str, str]:
    """Which installed distribution provides the modality (so a reader knows what to pip install)."""
    ep = entry_point(modality)
    return {
        "entry_point": ep.value,
        "package": ep.dist.name if ep.dist else "",
        "version": ep.dist.version if ep.dist else "",
    }


def export_model(
    model: VAE,
    record: ModelRecord,
    out: Path,
    evaluation: dict[str, Any] | None = None,
    onnx: bool = False,
    num_samples: int = 16,
    space: bool = False,
) -> list[Path]:
    """Write the exported folder's files into ``out`` (an empty folder); returns the paths written. ``space``:
    also the app and requirements that make the folder a Hugging Face Space serving `vaekit explore`."""
    from safetensors.torch import save

    # Cloned: tied weights (one tensor under two names) must be two tensors in safetensors.
    state = {k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in model.state_dict().items()}
    # Serialised in memory, written by Python: a full disk is then an OSError the CLI reports in one line.
    (out / WEIGHTS_FILE).write_bytes(save(state, metadata={"format": "pt", "vaekit_version": __version__}))
    paths = [out / WEIGHTS_FILE]
    spec = dict(record.spec)
    for filename, fields in type(model).spec_assets.items():
        values = {f: spec.pop(f) for f in fields}
        text = values[fields[0]] if len(fields) == 1 and fields[0].endswith("_json") else json.dumps(values)
        paths.append(write_text(out / filename, text))
    config = {
        "format": EXPORT_FORMAT,
        "vaekit_version": __version__,
        "modality": record.modality,
        "plugin": _plugin(record.modality),
        "model_class": record.model_class,
        "model_args": record.model_args,
        "datamodule_class": record.datamodule_class,
        "data_args": record.data_args,
        "spec": spec,
        "assets": {name: list(fields) for name, fields in type(model).spec_assets.items()},
        "training": {"global_step": record.global_step, "epoch": record.epoch, "from": Path(record.source).name},
    }
    paths.append(write_text(out / CONFIG_FILE, json.dumps(config, indent=2) + "\n"))
    if record.recipe:
        paths.append(write_text(out / "recipe.yaml", record.recipe))
    samples: list[Path] = []
    if num_samples > 0:
        with torch.no_grad():
            samples = model.save_outputs(
                model.generate(model.sample_latents(num_samples)), out / SAMPLES_DIR, "samples"
            )
    paths += samples
    if onnx:
        paths += export_onnx(model, out)
    if space:
        paths += space_files(config, out)
    paths.append(write_text(out / "README.md", model_card(record, config, evaluation, samples, out, space)))
    return paths


SPACE_APP = '''"""A Hugging Face Space: `vaekit explore` on the model in this folder."""

from pathlib import Path

from vaekit.cli.explore import serve

serve(str(Path(__file__).parent))
'''


def space_files(config: dict[str, Any], out: Path) -> list[Path]:
    """``app.py`` (the page for the model beside it) and ``requirements.txt`` (vaekit with its page, and the
    model's plugin) for a Gradio Space."""
    requirements = [f"vaekit[explore]=={__version__}"]
    if config["plugin"]["package"] != "vaekit":
        requirements.append(config["plugin"]["package"])
    return [write_text(out / "app.py", SPACE_APP), write_text(out / "requirements.txt", "\n".join(requirements) + "\n")]


def export_onnx(model: VAE, out: Path) -> list[Path]:
    """Each of the plugin's ``onnx_graphs`` as ``NAME.onnx``, with a dynamic batch dimension."""
    try:
        import onnxscript  # noqa: F401 - torch's ONNX exporter needs it
    except ImportError as err:
        raise ValueError("--onnx needs the ONNX exporter: pip install 'vaekit[onnx]'") from err
    paths = []
    batch = torch.export.Dim("batch", min=1)
    for name, graph in model.onnx_graphs().items():
        path = out / f"{name}.onnx"
        dims = graph.batch_dims or (0,) * len(graph.inputs)
        torch.onnx.export(
            graph.module.eval(),
            graph.inputs,
            str(path),
            input_names=list(graph.input_names),
            output_names=list(graph.output_names),
            dynamic_shapes=tuple({dim: batch} for dim in dims),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        paths.append(path)
    return paths


def _evaluation_table(evaluation: dict[str, Any], prefix: str = "") -> str:
    """One row per figure; nested figures (a joint model's per-subset ones) as ``subsets.image.nll``."""
    rows = []
    for key, value in evaluation.items():
        if isinstance(value, dict):
            rows.append(_evaluation_table(value, f"{prefix}{key}.").split("\n", 2)[2])
        else:
            rows.append(
                f"| {prefix}{key} | {value:.4g} |" if isinstance(value, float) else f"| {prefix}{key} | {value} |"
            )
    return "| measure | value |\n|---|---|\n" + "\n".join(rows)


def model_card(
    record: ModelRecord,
    config: dict[str, Any],
    evaluation: dict[str, Any] | None,
    samples: list[Path],
    out: Path,
    space: bool = False,
) -> str:
    """A Hugging Face model card: metadata header, training data, recipe, figures, samples, how to use. With
    ``space``, the header also configures a Gradio Space running ``app.py``."""
    modality = record.modality
    sources = record.data_args.get("sources")  # a joint model's data: one root per part
    data = ", ".join(f"{n}: {a.get('root')}" for n, a in sources.items()) if sources else record.data_args.get("root")
    lines = [
        "---",
        "library_name: vaekit",
        f"tags: [vaekit, vae, variational-autoencoder, {modality}]",
        *([f"title: {modality} VAE", "sdk: gradio", "app_file: app.py"] if space else []),
        "---",
        "",
        f"# {modality} VAE ({config['model_class'] or modality})",
        "",
        f"A variational autoencoder over {' and '.join(record.model_args.get('parts') or [modality])} trained with [vaekit](https://pypi.org/project/vaekit/) "
        f"{record.vaekit_version or __version__}: {record.model_args.get('latent_dim', '?')} latent dimensions.",
        "",
        "## Training",
        "",
        f"- Data: `{data}` ({config['datamodule_class'] or 'the plugin default data module'}).",
        f"- Steps: {record.global_step}, epochs: {record.epoch}.",
        "- Recipe: " + ("`recipe.yaml`, the full `vaekit fit` config." if record.recipe else "not recorded."),
        "",
    ]
    if evaluation:
        lines += [
            "## Evaluation",
            "",
            "`vaekit evaluate`, per example, in nats:",
            "",
            _evaluation_table(evaluation),
            "",
        ]
    if samples:
        lines += ["## Samples from the prior", ""]
        pictures = [p for p in samples if p.name == "samples.png"]  # the grid (of each part, for a joint model)
        texts = [p for p in samples if p.suffix == ".txt"]
        for picture in pictures:
            lines += [f"![samples]({picture.relative_to(out).as_posix()})", ""]
        for path in texts:
            lines += ["```", path.read_text(encoding="utf-8").rstrip(), "```", ""]
    lines += [
        "## Use",
        "",
        "```bash",
        f"pip install vaekit {config['plugin']['package'] if config['plugin']['package'] != 'vaekit' else ''}".rstrip(),
        "vaekit sample THIS_FOLDER_OR_HUB_ID --num 16 --out samples",
        "vaekit evaluate THIS_FOLDER_OR_HUB_ID --data-root YOUR_DATA --out eval.json",
        "```",
        "",
        f"Files: `{CONFIG_FILE}`, `{WEIGHTS_FILE}` (safetensors; loading runs no code)"
        + "".join(f", `{name}`" for name in config["assets"])
        + (", `*.onnx`" if any(out.glob("*.onnx")) else "")
        + ".",
        "",
    ]
    return "\n".join(lines)


def push_folder(
    folder: Path, repo_id: str, private: bool = False, revision: str | None = None, space: bool = False
) -> str:
    """Check that ``folder`` loads as an exported model, then upload it with ``huggingface_hub`` (as a Gradio
    Space with ``space``: the folder must hold the app `vaekit export --space` writes); returns its URL."""
    from huggingface_hub import HfApi

    read_exported(folder)  # never push something that would not load
    if space and not (folder / "app.py").is_file():
        raise FileNotFoundError(f"{folder} has no app.py; export it with `vaekit export CKPT --space --out DIR`")
    repo_type = "space" if space else "model"
    api = HfApi()
    extra = {"space_sdk": "gradio"} if space else {}
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **extra)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type=repo_type)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        revision=revision,
        commit_message=f"Upload {folder.name} with vaekit {__version__}",
    )
    return str(url)
