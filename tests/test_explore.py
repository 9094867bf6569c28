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

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import fit_args, install_plugin, vaekit
from vaekit.cli.explore import Explorer, build_app, drawing_file, open_explorer, recording_file, render, shown_errors
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
        return str(DEMO / "audio" / "3_george_0.flac")
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


def a_drawing(box: tuple[int, int, int, int]) -> dict:
    """What Gradio's sketchpad gives: the composite of the strokes, black ink on white, 280 pixels square."""
    canvas = Image.new("RGBA", (280, 280), "white")
    canvas.paste((0, 0, 0, 255), box)
    return {"background": None, "layers": [], "composite": canvas}


def a_recording(folder: Path, rate: int = 48000) -> str:
    """A browser's recording: half a second of a spoken-digit clip between pauses, at the microphone's rate."""
    import librosa
    import soundfile

    clip, _ = soundfile.read(DEMO / "audio" / "3_george_0.flac", dtype="float32")
    clip = librosa.resample(clip, orig_sr=8000, target_sr=rate)
    pause = np.zeros(rate // 2, dtype="float32")
    soundfile.write(folder / "recording.wav", np.concatenate([pause, clip, pause]), rate)
    return str(folder / "recording.wav")


def test_a_drawing_becomes_a_centred_white_on_black_picture_of_the_models_size(checkpoints, tmp_path):
    explorer = explorer_of(checkpoints["image"], tmp_path / "outputs")
    picture = Image.open(drawing_file(a_drawing((20, 40, 60, 240)), explorer.model, tmp_path))  # a one, far left
    assert picture.size == (28, 28) and picture.mode == "L"
    left, top, right, bottom = picture.point(lambda level: 255 if level > 127 else 0).getbbox()
    assert bottom - top == 20  # the stroke's height fills the middle 20 of 28 rows, as MNIST's digits
    assert abs((left + right) / 2 - 14) <= 1 and abs((top + bottom) / 2 - 14) <= 1  # centred
    assert picture.getpixel((0, 0)) == 0  # the white paper became MNIST's black
    assert drawing_file(a_drawing((0, 0, 0, 0)), explorer.model, tmp_path) is None  # an empty canvas: no input
    assert drawing_file(None, explorer.model, tmp_path) is None


def test_a_recording_is_trimmed_to_the_speech_and_read_at_the_models_rate(checkpoints, tmp_path):
    import soundfile

    explorer = explorer_of(checkpoints["audio"], tmp_path / "outputs")
    trimmed = soundfile.info(recording_file(a_recording(tmp_path), explorer.model, tmp_path))
    spoken = soundfile.info(DEMO / "audio" / "3_george_0.flac")
    assert abs(trimmed.duration - spoken.duration) < 0.2 < 0.5  # the pauses are gone, the words kept
    page = explorer.reconstruct(None, 0, None, a_recording(tmp_path))
    assert "vaekit-error" not in page and "anomaly score" in page
    assert page != explorer.reconstruct(None, 0, None)  # the recording, not the test example, was used
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(48000, dtype="float32"), 48000)
    assert "the recording is silent" in shown_errors(explorer.reconstruct)(None, 0, None, str(silent))
    endless = tmp_path / "endless.wav"  # refused by its size, before it is read
    with endless.open("wb") as handle:
        handle.truncate(21 * 2**20)
    assert "endless.wav is over 20 MB" in shown_errors(explorer.reconstruct)(None, 0, None, str(endless))


def test_a_joint_model_draws_what_is_said_and_says_what_is_drawn(checkpoints, tmp_path):
    explorer = explorer_of(checkpoints["multimodal"], tmp_path / "outputs")
    assert [part for part, _ in explorer.captures] == ["image", "audio"]
    drawn = explorer.reconstruct(None, 0, "image", a_drawing((120, 40, 160, 240)), None)
    said = explorer.reconstruct(None, 0, "audio", None, a_recording(tmp_path))
    for page, given, made in ((drawn, "<img", "<audio"), (said, "<audio", "<img")):
        assert "vaekit-error" not in page and given in page.split("reconstruction")[0] and made in page
    # an uploaded file comes before a recording; a test example is used when nothing is given
    upload = str(DEMO / "audio" / "3_george_0.flac")
    assert explorer.reconstruct(upload, 0, "audio", None, a_recording(tmp_path)) == explorer.reconstruct(
        upload, 0, "audio"
    )
    assert explorer.reconstruct(None, 2, "audio", None, None) == explorer.reconstruct(None, 2, "audio")


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
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",  # a beeping microphone
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


def draw_a_stroke(driver) -> None:
    """A vertical stroke down the middle of the sketchpad, with its brush."""
    from selenium.webdriver.common.action_chains import ActionChains

    brush = wait_for(
        driver,
        "return [...document.querySelectorAll('#capture-image button')]"
        ".find(b => b.getAttribute('aria-label') == 'Brush')",
    )
    brush.click()
    canvas = driver.find_element("css selector", "#capture-image canvas")
    ActionChains(driver).move_to_element_with_offset(canvas, 0, -80).click_and_hold().move_by_offset(
        0, 80
    ).move_by_offset(0, 80).release().perform()


def record_a_clip(driver) -> None:
    """Two seconds of Chromium's fake microphone (a beep each second), until the page holds the recording."""
    click = (
        "[...document.querySelectorAll('#capture-audio button')]"
        ".find(b => b.innerText.trim() == arguments[0] && b.offsetParent).click()"
    )
    driver.execute_script(click, "Record")
    time.sleep(2)
    driver.execute_script(click, "Stop")
    wait_for(driver, "return document.querySelector('#capture-audio a[download][href*=\"/file=\"]')")  # uploaded


def translated(driver, before: str | None) -> str:
    """Press the button; the whole output (input, reconstruction, score) once it differs from ``before``."""
    driver.execute_script("document.querySelector('#reconstruct-button').click()")
    return wait_for(
        driver,
        "const shown = [...document.querySelectorAll('#reconstruct-output :is(.vaekit-outputs, .vaekit-score, "
        ".vaekit-error)')].map(e => e.outerHTML).join('');"
        "return /vaekit-(score|error)/.test(shown) && shown != arguments[0] && shown",
        before,
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
        # Interpolate two test examples by index; for text, then one typed sentence (the page asks for both:
        # the typed text reached the server), then two
        open_tab(browser, "Interpolate")
        browser.execute_script("document.querySelector('#interpolate-button').click()")
        strip = wait_for(browser, NEW_OUTPUT, "interpolate-output", None)
        assert "vaekit-error" not in strip
        if modality == "text":
            browser.find_element("css selector", "#interpolate-a textarea").send_keys("the market closed higher today")
            browser.execute_script("document.querySelector('#interpolate-button').click()")
            one = wait_for(browser, NEW_OUTPUT, "interpolate-output", strip)
            assert "give every input" in one
            browser.find_element("css selector", "#interpolate-b textarea").send_keys("a new president was named")
            browser.execute_script("document.querySelector('#interpolate-button').click()")
            typed = wait_for(browser, NEW_OUTPUT, "interpolate-output", one)
            assert "vaekit-error" not in typed and typed.count("\n") >= 7  # eight sentences, one per line
        # Reconstruct (translate, for the joint model) a drawing, a recording, an uploaded file or a typed sentence
        open_tab(browser, "Translate" if modality == "multimodal" else "Reconstruct")
        shown = translated(browser, None)  # test example 0; each input below must change what is shown
        if modality in ("image", "multimodal"):
            draw_a_stroke(browser)
            shown = translated(browser, shown)
            assert "vaekit-error" not in shown and "<img" in shown.split("reconstruction")[0], shown[:500]
            assert modality == "image" or "<audio" in shown  # the joint model says what was drawn
        if modality in ("audio", "multimodal"):
            record_a_clip(browser)
            if modality == "multimodal":  # the joint model now translates from the audio it heard
                wait_for(browser, "return document.querySelector('#reconstruct-from input').value == 'audio'")
            shown = translated(browser, shown)
            assert "vaekit-error" not in shown and "<audio" in shown.split("reconstruction")[0], shown[:500]
            assert modality == "audio" or "<img" in shown.split("reconstruction")[1]  # and draws it
        given = an_input(modality, tmp_path)  # for the joint model: a clip, as the last capture was
        if modality == "text":
            browser.find_element("css selector", "#reconstruct-input textarea").send_keys(given)
        else:
            browser.find_element("css selector", "#reconstruct-input input[type=file]").send_keys(given)
            wait_for(browser, "return document.querySelector('#reconstruct-input').innerText.replace(/\\s/g, '').includes(arguments[0])",
                     Path(given).name)  # fmt: skip
        page = translated(browser, shown)
        assert "vaekit-error" not in page, page[:500]
        assert "anomaly score" in browser.find_element("css selector", "#reconstruct-output").text
        browser.save_screenshot(str(tmp_path / f"{modality}.png"))
    assert Image.open(tmp_path / f"{modality}.png").size[0] > 0
