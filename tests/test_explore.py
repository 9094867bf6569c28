"""`vaekit explore`: the page's actions called directly (every modality), then the page itself served on a free
port and driven in headless Chromium (Debian's chromium and chromium-driver, through Selenium)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import fit_args, install_plugin, vaekit
from vaekit.cli.explore import Explorer, build_app, open_explorer, render, shown_errors
from vaekit.cli.parser import build_parser

gr = pytest.importorskip("gradio")

MODALITIES = ["image", "audio", "text", "tabular", "multimodal"]
DEMO = Path(__file__).parents[1] / "vaekit" / "demo"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A short fit of each tiny recipe (its post-hoc sampler fitted at the end, as a user's model has)."""
    paths = {}
    for modality in MODALITIES:
        root = tmp_path_factory.mktemp(f"explore-{modality}")
        vaekit(*fit_args(f"configs/{modality}/tiny.yaml", root, "--trainer.max_steps", "6", "--samples.num", "0"))
        paths[modality] = root / "checkpoints" / "last.ckpt"
    return paths


def explorer_of(ckpt: Path, folder: Path) -> Explorer:
    folder.mkdir(exist_ok=True)
    return open_explorer(build_parser().parse_args(["explore", str(ckpt), "--device", "cpu"]), folder)


def an_input(modality: str, folder: Path) -> str:
    """A file (or sentence) of the modality, as a user would give it."""
    if modality == "text":
        return "the market closed higher today"
    if modality == "tabular":
        lines = (DEMO / "tabular" / "transactions.csv").read_text().splitlines()
        (folder / "rows.csv").write_text("\n".join(lines[:2]) + "\n")
        return str(folder / "rows.csv")
    if modality in ("audio", "multimodal"):
        return str(DEMO / "audio" / "3_george_0.wav")
    digit = Image.new("L", (28, 28))
    digit.paste(255, (12, 4, 16, 24))  # a stroke: a one
    digit.save(folder / "one.png")
    return str(folder / "one.png")


@pytest.mark.parametrize("modality", MODALITIES)
def test_every_action_renders_the_models_own_outputs(modality, checkpoints, tmp_path):
    explorer = explorer_of(checkpoints[modality], tmp_path / "outputs")
    kinds = {"image": "<img", "audio": "<audio", "text": "<pre", "tabular": "<table", "multimodal": "<audio"}
    samples = explorer.sample(0, "prior", 1.0, 4)
    assert samples.count('class="vaekit-output"') >= 1 and kinds[modality] in samples
    assert explorer.sample(0, "prior", 1.0, 4) == samples  # the seed decides
    assert explorer.sample(1, "prior", 1.0, 4) != samples
    centre = explorer.slide(*[0.0] * len(explorer.directions.scales))
    moved = explorer.slide(3.0, *[0.0] * (len(explorer.directions.scales) - 1))
    assert kinds[modality] in centre and moved != centre  # the first direction changes the output
    source = "audio" if modality == "multimodal" else None
    reconstruction = explorer.reconstruct(an_input(modality, tmp_path), 0, source)
    assert "vaekit-error" not in reconstruction and "anomaly score" in reconstruction
    from_test = explorer.reconstruct(None, 2, source)
    assert "anomaly score" in from_test and "test examples" in from_test
    strip = explorer.interpolate(None, None, 0, 1, 5)
    assert "vaekit-error" not in strip and kinds[modality] in strip
    # Nothing outside the explorer's folder.
    assert all(path.is_relative_to(tmp_path / "outputs") for path in (tmp_path / "outputs").rglob("*"))


def test_a_plugin_that_implements_nothing_for_the_page_gets_one(tmp_path, monkeypatch):
    """tests/plugin_example (vectors, written as CSV by its own writer), installed from outside vaekit."""
    import numpy as np

    site, data = tmp_path / "site", tmp_path / "data"
    install_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, count in (("train", 200), ("test", 40)):
        np.savetxt(data / f"{name}.csv", rng.normal(size=(count, 3)), delimiter=",")
    config = Path(__file__).parent / "plugin_example" / "vector.yaml"
    vaekit(*fit_args(str(config), tmp_path / "run", "--data.root", str(data)))
    explorer = explorer_of(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "outputs")
    assert "<table" in explorer.sample(0, "prior", 1.0, 5)
    assert explorer.slide(2.0, 0.0) != explorer.slide(0.0, 0.0)
    assert "anomaly score" in explorer.reconstruct(None, 3)


def test_the_sliders_follow_the_models_principal_directions(checkpoints, tmp_path):
    explorer = explorer_of(checkpoints["image"], tmp_path)
    directions = explorer.directions
    assert torch.allclose(directions.vectors @ directions.vectors.T, torch.eye(len(directions.scales)), atol=1e-4)
    assert (directions.scales[:-1] >= directions.scales[1:]).all()  # largest spread first
    z = directions.latent([1.0] + [0.0] * (len(directions.scales) - 1))
    assert torch.allclose(z[0] - directions.mean, directions.scales[0] * directions.vectors[0], atol=1e-5)


@pytest.mark.parametrize(
    "modality, make_bad",
    [
        ("image", lambda folder: (folder / "bad.png").write_text("not a picture") and folder / "bad.png"),
        ("audio", lambda folder: (folder / "bad.wav").write_bytes(b"RIFF....WAVEjunk") and folder / "bad.wav"),
        ("text", lambda folder: "   "),
    ],
)
def test_bad_input_is_a_message_on_the_page(modality, make_bad, checkpoints, tmp_path):
    explorer = explorer_of(checkpoints[modality], tmp_path / "outputs")
    reply = shown_errors(explorer.reconstruct)(str(make_bad(tmp_path)), 0, None)
    assert reply.startswith('<div class="vaekit-error">') and len(reply) < 2000
    assert "vaekit-error" in shown_errors(explorer.sample)(0, "prior", 1.0, 1000)  # too many samples
    assert "vaekit-output" in explorer.sample(0, "prior", 1.0, 2)  # and the explorer goes on


def test_an_unknown_kind_of_file_is_named_not_dropped_and_a_grid_stands_for_its_items(tmp_path):
    (tmp_path / "out.npy").write_bytes(b"\x93NUMPY")
    (tmp_path / "rows.csv").write_text("a,b\n1,<x>\n")
    for name in ("samples.png", "samples_0000.png", "samples_0001.png", "other_0000.png"):
        Image.new("L", (28, 28)).save(tmp_path / name)
    (tmp_path / "samples_0000.wav").write_bytes(b"RIFF")
    page = render(sorted(tmp_path.iterdir()))
    assert "out.npy</code> (no renderer" in page and "<td>&lt;x&gt;</td>" in page
    captions = [
        name
        for name in ("samples.png", "samples_0000.png", "other_0000.png", "samples_0000.wav")
        if f">{name}<" in page
    ]
    assert captions == ["samples.png", "other_0000.png", "samples_0000.wav"]  # the grid, a lone item, the clip
    assert 'width="224" height="224"' in page  # 28-pixel pictures at eight times
    (tmp_path / "samples.jsonl").write_text("{}\n")
    assert "samples.jsonl" not in render([tmp_path / "samples.jsonl", tmp_path / "rows.csv"])  # data for scripts


def test_without_gradio_the_command_says_how_to_install_it(checkpoints, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "gradio", None)
    with pytest.raises(SystemExit, match=r'pip install "vaekit\[explore\]"'):
        vaekit("explore", str(checkpoints["image"]))


def test_an_exported_space_serves_the_page_and_writes_nothing_beside_it(checkpoints, tmp_path):
    folder = tmp_path / "space"
    vaekit("export", checkpoints["image"], "--out", folder, "--num", "0", "--space")
    header = (folder / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in header and "app_file: app.py" in header and "library_name: vaekit" in header
    assert (folder / "requirements.txt").read_text().startswith("vaekit[explore]==")
    before = sorted(folder.rglob("*"))
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port), "OMP_NUM_THREADS": "1"}
    app = subprocess.Popen(
        [sys.executable, "app.py"], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        page = ""
        for _ in range(240):  # as a Space starts it: `python app.py`, Gradio's host and port from the environment
            if app.poll() is not None:
                pytest.fail(f"app.py stopped: {app.stdout.read().decode()[-2000:]}")
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert "vaekit explore: image VAE" in page
    finally:
        app.terminate()
        app.wait(30)
    assert sorted(folder.rglob("*")) == before


def test_push_as_a_space(checkpoints, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(kwargs)
            return f"https://huggingface.co/spaces/{repo_id}"

        def upload_folder(self, **kwargs):
            calls.append(kwargs)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    vaekit("export", checkpoints["image"], "--out", tmp_path / "plain", "--num", "0")
    with pytest.raises(SystemExit, match=r"no app\.py; export it with `vaekit export CKPT --space"):
        vaekit("push", tmp_path / "plain", "me/digits", "--space")
    assert calls == []
    vaekit("export", checkpoints["image"], "--out", tmp_path / "space", "--num", "0", "--space")
    vaekit("push", tmp_path / "space", "me/digits", "--space")
    assert calls[0]["repo_type"] == "space" and calls[0]["space_sdk"] == "gradio"
    assert calls[1]["repo_type"] == "space" and calls[1]["folder_path"] == str(tmp_path / "space")


# ----------------------------------------------------------------------------- in a browser
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(explorer: Explorer):
    app = build_app(explorer)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1600",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait_for(driver, script: str, *args, timeout: float = 60):
    """Until the JavaScript ``script`` (given ``args``) returns something truthy; that value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: d.execute_script(script, *args))


def open_tab(driver, name: str) -> None:
    driver.execute_script(
        "[...document.querySelectorAll('button[role=tab]')].find(b => b.innerText.trim() == arguments[0]).click()",
        name,
    )


# The HTML an output block shows (rendered files or an error), once it differs from arguments[1].
NEW_OUTPUT = (
    "const o = document.querySelector(`#${arguments[0]} .vaekit-outputs, #${arguments[0]} .vaekit-error`);"
    "return o && o.outerHTML != arguments[1] && o.outerHTML"
)


@needs_browser
@pytest.mark.parametrize("modality", MODALITIES)
def test_the_page_in_a_browser(modality, checkpoints, browser, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "uploads"))
    explorer = explorer_of(checkpoints[modality], tmp_path / "outputs")
    with serving(explorer) as url:
        browser.get(url)
        # Sample: the grid appears
        wait_for(browser, "return document.querySelector('#sample-button')")
        browser.execute_script("document.querySelector('#sample-button').click()")
        samples = wait_for(browser, NEW_OUTPUT, "sample-output", None)
        assert "vaekit-error" not in samples
        if modality in ("audio", "multimodal"):  # the clip plays, and its source is a WAV file
            source = browser.execute_script("return document.querySelector('#sample-output audio').src")
            with wave.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as clip:
                assert clip.getnframes() > 0
            played = browser.execute_script(
                "const a = document.querySelector('#sample-output audio');"
                "return a.play().then(() => !a.error && a.duration > 0).catch(e => e.name)"
            )
            assert played is True
        # Latent sliders: moving the first direction changes the output
        open_tab(browser, "Latent sliders")
        before = wait_for(browser, NEW_OUTPUT, "slider-output", None)  # drawn when the page loads
        browser.execute_script(
            "const s = document.querySelector('#slider-0 input[type=range]');"
            "s.value = 2.5; s.dispatchEvent(new Event('input', {bubbles: true}));"
            "s.dispatchEvent(new Event('change', {bubbles: true}))"
        )
        after = wait_for(browser, NEW_OUTPUT, "slider-output", before, timeout=30)
        assert after != before and "vaekit-error" not in after
        browser.save_screenshot(str(tmp_path / f"{modality}-sliders.png"))
        # Reconstruct (translate, for the joint model) an uploaded file or a typed sentence
        open_tab(browser, "Translate" if modality == "multimodal" else "Reconstruct")
        given = an_input("image" if modality == "multimodal" else modality, tmp_path)  # from its first part
        if modality == "text":
            browser.find_element("css selector", "#reconstruct-input textarea").send_keys(given)
        else:
            browser.find_element("css selector", "#reconstruct-input input[type=file]").send_keys(given)
            wait_for(browser, "return document.querySelector('#reconstruct-input').innerText.replace(/\\s/g, '').includes(arguments[0])",
                     Path(given).name)  # fmt: skip
        browser.execute_script("document.querySelector('#reconstruct-button').click()")
        page = wait_for(browser, NEW_OUTPUT, "reconstruct-output", None)
        assert "vaekit-error" not in page, page[:500]
        assert "anomaly score" in browser.find_element("css selector", "#reconstruct-output").text
        browser.save_screenshot(str(tmp_path / f"{modality}.png"))
    assert Image.open(tmp_path / f"{modality}.png").size[0] > 0
