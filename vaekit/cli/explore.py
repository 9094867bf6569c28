"""`vaekit explore MODEL`: a local web page (Gradio) to play with any model: sample, move along the latent
space's principal directions, interpolate, reconstruct and score an input, translate between a joint model's
modalities.

Every output goes through the model's own writers (``save_outputs``, as the commands use) into a temporary
folder, and the files are shown by their kind (``RENDERERS``): a plugin that writes PNG, WAV, text or CSV files
gets a page without writing anything for it, and one that writes another kind adds a renderer.
"""

from __future__ import annotations

import argparse
import base64
import csv
import dataclasses
import html
import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vaekit.checkpoint import load_model
from vaekit.cli.session import Session, is_joint
from vaekit.plots import latent_scatter, project_2d

SLIDERS = 6  # principal directions offered as sliders
DIRECTION_DRAWS = 2000  # latents drawn from the model's sampler to find its principal directions
TEST_CODES = 500  # test examples encoded for the map and the scores an input is placed against
MAX_SAMPLES = 64
MAX_INPUT_BYTES = 20 * 2**20  # a larger upload is refused with a message
MIN_IMAGE_HEIGHT = 224  # pixels on the page, about
DRAWN_SHARE = 20 / 28  # a drawing's ink is scaled into this share of the picture, centred, as MNIST's digits are
SILENCE_DB = 30  # a recording is trimmed to where it is within this many dB of its loudest


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


def image_html(path: Path) -> str:
    """Small pictures (28-pixel digits) scaled up by whole pixels, so they are seen, not blurred."""
    from PIL import Image

    with Image.open(path) as picture:
        width, height = picture.size
    scale = max(1, round(MIN_IMAGE_HEIGHT / height))
    return (
        f'<img class="vaekit-image" alt="{html.escape(path.name)}" width="{width * scale}" height="{height * scale}" '
        f'style="image-rendering: pixelated" src="{_data_uri(path, "image/png")}">'
    )


def audio_html(path: Path) -> str:
    return f'<audio class="vaekit-audio" controls src="{_data_uri(path, "audio/wav")}"></audio>'


def text_html(path: Path) -> str:
    return f'<pre class="vaekit-text">{html.escape(path.read_text(encoding="utf-8"))}</pre>'


def table_html(path: Path) -> str:
    rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in rows[0]) if rows else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f'<table class="vaekit-table"><tr>{head}</tr>{body}</table>'


# How each kind of file a writer makes is shown; a plugin whose writers make another kind adds it here.
RENDERERS: dict[str, Callable[[Path], str]] = {
    ".png": image_html,
    ".wav": audio_html,
    ".txt": text_html,
    ".csv": table_html,
}


# Files writers make for scripts (the same outputs as data), not shown on the page.
FOR_SCRIPTS = {".json", ".jsonl", ".npz"}


def render(paths: list[Path], root: Path | None = None) -> str:
    """The files a writer made (under ``root``), as one block of HTML: each under its name, by its kind. Where a
    writer made a grid (``samples.png``) beside each item of it (``samples_0003.png``), the grid stands for
    them."""
    grids = {(path.stem, path.suffix) for path in paths}
    shown = [
        path
        for path in paths
        if path.suffix.lower() not in FOR_SCRIPTS
        and ((path.stem.rpartition("_")[0], path.suffix) not in grids or not path.stem[-4:].isdigit())
    ]
    parts = []
    for path in sorted(shown):
        renderer = RENDERERS.get(path.suffix.lower())
        body = renderer(path) if renderer else f"<code>{html.escape(path.name)}</code> (no renderer for this kind)"
        name = path.relative_to(root).as_posix() if root else path.name  # a joint model's: image/samples.png
        parts.append(f'<figure class="vaekit-output"><figcaption>{html.escape(name)}</figcaption>{body}</figure>')
    return '<div class="vaekit-outputs">' + "".join(parts) + "</div>"


def error_html(err: Exception) -> str:
    """A failed request as a message on the page; the server goes on."""
    return f'<div class="vaekit-error">{html.escape(f"{type(err).__name__}: {err}")}</div>'


def shown_errors(handler: Callable[..., str]) -> Callable[..., str]:
    def safe(*args: Any) -> str:
        try:
            return handler(*args)
        except Exception as err:  # any bad input becomes a message on the page
            return error_html(err)

    return safe


def check_size(path: Path) -> None:
    """Refuse a file over ``MAX_INPUT_BYTES`` before anything reads it."""
    if path.stat().st_size > MAX_INPUT_BYTES:
        raise ValueError(f"{path.name} is over {MAX_INPUT_BYTES // 2**20} MB")


@dataclasses.dataclass(frozen=True)
class Capture:
    """An input made on the page rather than uploaded (drawn, recorded): the Gradio widget, and how its value
    becomes the file the model's data module reads, as an upload would be (None while it is empty)."""

    verb: str  # on the page: "or draw", "image: draw"
    widget: Callable[[Any, str, str], Any]  # (gradio, label, elem_id) -> the component
    to_file: Callable[[Any, Any, Path], Path | None]  # (its value, the model it feeds, a folder) -> the file


def sketchpad(gr: Any, label: str, elem_id: str) -> Any:
    brush = gr.Brush(default_size=14, colors=["#000000"], color_mode="fixed")
    return gr.Sketchpad(label=label, type="pil", canvas_size=(280, 280), brush=brush, layers=False, elem_id=elem_id)


def drawing_file(value: dict[str, Any] | None, model: Any, folder: Path) -> Path | None:
    """The drawing (dark ink on white) at the model's picture size. One channel: white ink on black, cropped to
    the ink and centred in the middle 20/28, as MNIST's digits are; colour: the drawing as it is, resized."""
    from PIL import Image, ImageOps

    drawing = value and value.get("composite")
    if drawing is None:
        return None
    white = Image.new("RGBA", drawing.size, "white")
    drawing = Image.alpha_composite(white, drawing.convert("RGBA")).convert("RGB")
    spec = model.spec
    ink = ImageOps.invert(drawing.convert("L"))
    box = ink.point(lambda level: 255 if level > 32 else 0).getbbox()
    if box is None:
        return None
    if spec.channels == 1:
        ink = ink.crop(box)
        scale = DRAWN_SHARE * min(spec.width / ink.width, spec.height / ink.height)
        ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))), Image.LANCZOS)
        picture = Image.new("L", (spec.width, spec.height))
        picture.paste(ink, ((spec.width - ink.width) // 2, (spec.height - ink.height) // 2))
    else:
        picture = drawing.resize((spec.width, spec.height), Image.LANCZOS)
    path = Path(tempfile.mkstemp(prefix="drawn-", suffix=".png", dir=folder)[1])
    picture.save(path)
    return path


def microphone(gr: Any, label: str, elem_id: str) -> Any:
    return gr.Audio(label=label, sources=["microphone"], type="filepath", elem_id=elem_id)


def recording_file(value: str | None, model: Any, folder: Path) -> Path | None:
    """The recording with its silence trimmed (a clip is read from its start, and people pause before they
    speak), as a WAV file at the browser's rate: the audio data module resamples and crops it as any file."""
    import librosa
    import soundfile

    if not value:
        return None
    check_size(Path(value))
    clip, rate = soundfile.read(value, dtype="float32", always_2d=True)
    spoken, _ = librosa.effects.trim(clip.mean(1), top_db=SILENCE_DB)
    if not spoken.size or not abs(spoken).max() > 0:
        raise ValueError("the recording is silent: check the microphone and record again")
    path = Path(tempfile.mkstemp(prefix="recorded-", suffix=".wav", dir=folder)[1])
    soundfile.write(path, spoken, rate)
    return path


# Inputs a modality can take on the page besides files: a plugin adds its own under its modality's name.
CAPTURES: dict[str, Capture] = {
    "image": Capture("draw", sketchpad, drawing_file),
    "audio": Capture("record", microphone, recording_file),
}


@dataclasses.dataclass
class Directions:
    """The principal directions of the model's latent codes: ``mean + sum(value_i * scale_i * vector_i)``."""

    mean: torch.Tensor
    vectors: torch.Tensor  # (k, latent_dim), orthonormal
    scales: torch.Tensor  # (k,): the codes' spread along each

    def latent(self, values: list[float]) -> torch.Tensor:
        weights = torch.tensor(values, dtype=self.mean.dtype, device=self.mean.device) * self.scales
        return (self.mean + weights @ self.vectors).unsqueeze(0)


class Explorer:
    """What the page does, without the page: each method returns HTML, so tests and benchmarks call it directly."""

    def __init__(self, session: Session, folder: Path) -> None:
        self.s = session
        self.model = session.model
        self.folder = folder
        self.options = session.options_for_generation()
        self.directions = self._directions()
        self._test: dict[str | None, tuple[torch.Tensor, torch.Tensor]] = {}
        self._calls = 0
        self.captures = [
            (name, CAPTURES[part.modality]) for name, part in self._parts().items() if part.modality in CAPTURES
        ]

    def _parts(self) -> dict[str | None, Any]:
        """The models inputs go to: a joint model's parts by name, else the model itself (under None)."""
        return dict(self.model.parts.items()) if self.joint else {None: self.model}

    @property
    def joint(self) -> bool:
        return is_joint(self.model)

    def samplers(self) -> list[str]:
        return ["prior", *self.model.samplers]

    def _directions(self) -> Directions:
        """From the model's own sampler (the fitted mixture when there is one): no data needed."""
        torch.manual_seed(0)
        with torch.no_grad():
            codes = self.model.sample_latents(DIRECTION_DRAWS).float()
        mean = codes.mean(0)
        _, values, vectors = torch.linalg.svd(codes - mean, full_matrices=False)
        k = min(SLIDERS, vectors.shape[0])
        return Directions(mean, vectors[:k], values[:k] / (len(codes) - 1) ** 0.5)

    def _new_folder(self) -> Path:
        """A folder per output, so that names repeat (the page shows them) and files never collide."""
        self._calls += 1
        return Path(tempfile.mkdtemp(prefix=f"{self._calls:05d}-", dir=self.folder))

    def _write(self, data: Any, stem: str, nrow: int | None = None) -> str:
        out = self._new_folder()
        return render(self.model.save_outputs(data, out, stem, nrow=nrow, **self.options), out)

    def _generate(self, z: torch.Tensor, deterministic: bool) -> Any:
        with torch.no_grad():
            return self.model.generate(z.to(self.model.device), deterministic=deterministic, **self.options)

    def sample(self, seed: float, sampler: str, temperature: float, count: float) -> str:
        count = int(count)
        if not 1 <= count <= MAX_SAMPLES:
            raise ValueError(f"ask for 1 to {MAX_SAMPLES} samples, not {count}")
        torch.manual_seed(int(seed))
        with torch.no_grad():
            z = self.model.sample_latents(count, float(temperature), sampler)
        return self._write(self._generate(z, deterministic=False), "samples")

    def slide(self, *values: float) -> str:
        """The output at the point the sliders give (in standard deviations along each direction)."""
        return self._write(self._generate(self.directions.latent(list(values)), deterministic=True), "point")

    def inputs(self, items: list[str | None], indices: list[float | None], source: str | None = None) -> Any:
        """A batch from uploaded files or typed sentences, else from test examples by index."""
        given = [item for item in items if item]
        if self.model.input_kind == "file":
            for item in given:
                check_size(Path(item))
        if self.joint:
            self.s.args.from_ = [source] if source else None
        if given:
            if len(given) != len(items):
                raise ValueError("give every input, or none to use test examples by index")
            return self.s.inputs(given)
        if any(i is None for i in indices):
            raise ValueError("give an input, or the index of a test example")
        return self.s.examples("test", [int(i) for i in indices])

    def interpolate(self, a: str | None, b: str | None, index_a: float, index_b: float, steps: float) -> str:
        batch = self.inputs([a, b], [index_a, index_b], self._first_part())
        with torch.no_grad():
            z = self.model.posterior(batch).mode()
            path = self.model.interpolate_latents(z[0], z[1], int(steps))
        return self._write(self._generate(path, deterministic=True), "interpolation", nrow=int(steps))

    def reconstruct(self, item: str | None, index: float, source: str | None = None, *captured: Any) -> str:
        """The input, its reconstruction (for a joint model: every modality drawn from the one given), its
        anomaly score (the negative ELBO, nats) against the test examples', and its place on their 2-D map.
        The input: the uploaded file, else what was drawn or recorded for the ``source`` part (``captured``,
        one value per ``self.captures``), else the test example ``index``."""
        source = source or self._first_part()
        if not item:
            captured = captured or (None,) * len(self.captures)
            made = (
                capture.to_file(value, self._parts()[part], self.folder)
                for (part, capture), value in zip(self.captures, captured, strict=True)
                if part == source
            )
            item = next((str(path) for path in made if path), None)
        batch = self.inputs([item], [index], source)
        torch.manual_seed(0)  # the same input, the same page (the score's draw, Griffin-Lim's phases)
        with torch.no_grad():
            posterior = self.model.posterior(batch)
            outputs = self._generate(posterior.mode(), deterministic=True)
            score = -self.model.elbo_terms(batch).elbo.float().cpu()
        shown = self._write(self.model.as_outputs(batch), "input") + self._write(outputs, "reconstruction")
        return shown + self._placed(posterior.mean.float().cpu(), score, source)

    def _first_part(self) -> str | None:
        return next(iter(self.model.parts)) if self.joint else None

    def _test_codes(self, source: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior means and anomaly scores of the first test examples (once per input modality)."""
        if source not in self._test:
            self.s.datamodule.setup("test")
            count = min(TEST_CODES, len(self.s.datamodule.split("test")))
            batch = self.s.examples("test", range(count))  # a joint model's: of the ``source`` modality alone
            with torch.no_grad():
                means = self.model.posterior(batch).mean.float().cpu()
                scores = -self.model.elbo_terms(batch).elbo.float().cpu()
            self._test[source] = means, scores
        return self._test[source]

    def _placed(self, code: torch.Tensor, score: torch.Tensor, source: str | None) -> str:
        try:
            means, scores = self._test_codes(source)
        except (FileNotFoundError, ValueError) as err:  # the training data moved: the input alone
            return f'<p class="vaekit-score">score {score.item():.1f} nats (no test data to compare: {err})</p>'
        rank = (scores < score).float().mean().item()
        points, axis = project_2d(torch.cat([means, code]))
        which = torch.cat([torch.zeros(len(means), dtype=torch.long), torch.ones(1, dtype=torch.long)])
        picture = latent_scatter(points, axis, which, self._new_folder() / "map.png", ["test", "input"])
        return (
            f'<p class="vaekit-score">anomaly score {score.item():.1f} nats (negative ELBO): above '
            f"{100 * rank:.0f} % of {len(scores)} test examples</p>" + image_html(picture)
        )


def build_app(explorer: Explorer) -> Any:
    """The page: one tab per use, every output an HTML block made by ``render``."""
    import gradio as gr

    model = explorer.model
    with gr.Blocks(title=f"vaekit explore: {model.modality} VAE") as app:
        gr.Markdown(f"## vaekit: {model.modality} VAE, {model.hparams.latent_dim}-dimensional latent space")
        with gr.Tab("Sample"):
            with gr.Row():
                seed = gr.Number(0, label="seed", precision=0, elem_id="sample-seed")
                sampler = gr.Dropdown(explorer.samplers(), value=model.default_sampler(), label="sampler")
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature")
                count = gr.Slider(1, MAX_SAMPLES, value=16, step=1, label="samples")
            sample_button = gr.Button("Sample", elem_id="sample-button")
            samples = gr.HTML(elem_id="sample-output")
        sample_button.click(shown_errors(explorer.sample), [seed, sampler, temperature, count], samples)
        with gr.Tab("Latent sliders"):
            gr.Markdown("The principal directions of the model's codes, in standard deviations.")
            sliders = [
                gr.Slider(-3.0, 3.0, value=0.0, step=0.1, label=f"direction {i + 1}", elem_id=f"slider-{i}")
                for i in range(len(explorer.directions.scales))
            ]
            point = gr.HTML(elem_id="slider-output")
        for slider in sliders:
            slider.change(shown_errors(explorer.slide), sliders, point)
        app.load(shown_errors(explorer.slide), sliders, point)
        sources = list(model.parts) if explorer.joint else []
        with gr.Tab("Interpolate"):
            a, b = _input_pair(gr, explorer)
            with gr.Row():
                index_a = gr.Number(0, label="or test example", precision=0, elem_id="interpolate-index-a")
                index_b = gr.Number(1, label="and test example", precision=0, elem_id="interpolate-index-b")
                steps = gr.Slider(3, 16, value=8, step=1, label="steps")
            interpolate_button = gr.Button("Interpolate", elem_id="interpolate-button")
            strip = gr.HTML(elem_id="interpolate-output")
        interpolate_button.click(shown_errors(explorer.interpolate), [a, b, index_a, index_b, steps], strip)
        with gr.Tab("Translate" if explorer.joint else "Reconstruct"):
            with gr.Row():
                item = _input(gr, explorer, "input", "reconstruct-input")
                captures = [
                    capture.widget(
                        gr,
                        f"{part}: {capture.verb}" if part else f"or {capture.verb}",
                        f"capture-{part or model.modality}",
                    )
                    for part, capture in explorer.captures
                ]
            with gr.Row():
                index = gr.Number(0, label="or test example", precision=0, elem_id="reconstruct-index")
                source = gr.Dropdown(
                    sources,
                    value=sources[0] if sources else None,
                    label="from",
                    visible=bool(sources),
                    elem_id="reconstruct-from",
                )
            reconstruct_button = gr.Button(
                "Translate" if explorer.joint else "Reconstruct", elem_id="reconstruct-button"
            )
            reconstruction = gr.HTML(elem_id="reconstruct-output")
        reconstruct_button.click(shown_errors(explorer.reconstruct), [item, index, source, *captures], reconstruction)
        for (part, _), widget in zip(explorer.captures, captures, strict=True):
            if part:  # a joint model translates from the part last drawn or recorded
                widget.change(lambda part=part: part, None, source)
    return app


def _input(gr: Any, explorer: Explorer, label: str, elem_id: str) -> Any:
    if explorer.model.input_kind == "text":
        return gr.Textbox(label=f"{label} (a sentence)", elem_id=elem_id)
    return gr.File(label=f"{label} (a file)", type="filepath", elem_id=elem_id)


def _input_pair(gr: Any, explorer: Explorer) -> tuple[Any, Any]:
    with gr.Row():
        return _input(gr, explorer, "from", "interpolate-a"), _input(gr, explorer, "to", "interpolate-b")


def open_explorer(args: argparse.Namespace, folder: Path) -> Explorer:
    """The model loaded for the page, its outputs written under ``folder``."""
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, record = load_model(args.ckpt, device)
    session = Session(model, record, args, {}, folder)
    return Explorer(session, folder)


def serve(model: str, host: str | None = None, port: int | None = None, device: str = "auto") -> None:
    """Serve the page for ``model`` until interrupted; every file it makes (outputs, Gradio's uploads) stays in
    one temporary folder. Host and port None: Gradio's own (``GRADIO_SERVER_NAME``/``_PORT``, as on a Space)."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit('vaekit explore needs Gradio: pip install "vaekit[explore]"') from None
    from vaekit.cli.parser import build_parser

    args = build_parser().parse_args(["explore", model, "--device", device])
    with tempfile.TemporaryDirectory(prefix="vaekit-explore-") as folder:
        os.environ["GRADIO_TEMP_DIR"] = str(Path(folder) / "uploads")
        explorer = open_explorer(args, Path(folder))
        build_app(explorer).launch(server_name=host, server_port=port, show_error=True)


def cmd_explore(args: argparse.Namespace) -> None:
    serve(args.ckpt, args.host, args.port, args.device)
