"""The screenshots in docs/explore.md: each tiny recipe trained as the README's quick start trains it, its page
served by `vaekit explore` and photographed in headless Chromium (Debian's chromium and chromium-driver).

    OMP_NUM_THREADS=2 python -m benchmarks.explore_screenshots docs/images
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import WebDriverWait

from vaekit.cli import main as vaekit
from vaekit.cli.explore import build_app, open_explorer
from vaekit.cli.parser import build_parser

# The tab each picture shows, and the action clicked there first (the joint model's: a seven drawn, heard).
SHOTS = {
    "image": ("Sample", "#sample-button"),
    "audio": ("Reconstruct", "#reconstruct-button"),
    "text": ("Interpolate", "#interpolate-button"),
    "tabular": ("Sample", "#sample-button"),
    "multimodal": ("Translate", "#reconstruct-button"),
}
DRAWN = {"multimodal"}
WIDTH = 900  # pixels of the saved picture


def browser(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--window-size=1100,1300", f"--user-data-dir={profile}"):  # fmt: skip
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))


def draw_a_seven(driver: webdriver.Chrome, wait: WebDriverWait) -> None:
    """A bar and a diagonal on the sketchpad, with its brush (offsets from the canvas's centre)."""
    brush = "[...document.querySelectorAll('#capture-image button')].find(b => b.getAttribute('aria-label') == 'Brush')"
    wait.until(lambda d: d.execute_script(f"return {brush}")).click()
    canvas = driver.find_element("css selector", "#capture-image canvas")
    stroke = ActionChains(driver).move_to_element_with_offset(canvas, -60, -90).click_and_hold()
    stroke.move_by_offset(60, 0).move_by_offset(60, 0).move_by_offset(-30, 90).move_by_offset(-30, 90)
    stroke.release().perform()


def shoot(driver: webdriver.Chrome, ckpt: Path, tab: str, button: str, out: Path, folder: Path, draw: bool) -> None:
    explorer = open_explorer(build_parser().parse_args(["explore", str(ckpt), "--device", "cpu"]), folder)
    app = build_app(explorer)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 120, poll_frequency=0.2)
        wait.until(lambda d: d.execute_script("return document.querySelector('button[role=tab]')"))
        driver.execute_script(
            "[...document.querySelectorAll('button[role=tab]')].find(b => b.innerText.trim() == arguments[0]).click()",
            tab,
        )
        if draw:
            draw_a_seven(driver, wait)
            time.sleep(1)  # the drawing reaches the server
        driver.execute_script(f"document.querySelector('{button}').click()")
        output = button.replace("-button", "-output")
        wait.until(lambda d: d.execute_script(f"return document.querySelector('{output} .vaekit-outputs')"))
        time.sleep(1)  # images decoded and laid out
        driver.save_screenshot(str(out))
    finally:
        app.close()
    picture = Image.open(out).convert("RGB")
    picture.resize((WIDTH, round(picture.height * WIDTH / picture.width))).save(out, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        driver = browser(Path(work) / "profile")
        try:
            for modality, (tab, button) in SHOTS.items():
                root = Path(work) / modality
                vaekit(["fit", "--config", f"configs/{modality}/tiny.yaml", "--trainer.default_root_dir", str(root),
                        "--trainer.enable_progress_bar", "false"])  # fmt: skip
                (root / "explore").mkdir()
                out = args.out / f"explore_{modality}.png"
                shoot(driver, root / "checkpoints" / "last.ckpt", tab, button, out, root / "explore", modality in DRAWN)
                print(f"{modality}: {out}", flush=True)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
