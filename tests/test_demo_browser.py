"""The demo app in a real browser: headless Chromium (selenium) drives `demo/app.py` served on the loopback interface.

Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and the `demo`/`dev` extras; skipped with the
reason otherwise. Saves a screenshot to the test's temporary folder, or, where `IFAM_SCREENSHOT_DIR` names a folder, to
`demo.png` there: `IFAM_SCREENSHOT_DIR=results python -m pytest tests/test_demo_browser.py` refreshes the README's
`results/demo.png` (a plain test run leaves the tracked file alone).
"""

import base64
import io
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
CHROMEDRIVER = shutil.which("chromedriver")

gr = pytest.importorskip("gradio", reason="the demo needs gradio: pip install '.[demo]'")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium: pip install '.[dev]'")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="no headless browser: install Debian's `chromium` and `chromium-driver` (as .ci/run does)",
)

from conftest import load_demo_app  # noqa: E402

demo_app = load_demo_app()

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(trained_run):
    """The app on 127.0.0.1 with the tiny train.py folder (calibrated, with part statistics)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    folder, _ = trained_run
    app = demo_app.build_app(str(folder))
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield folder, f"http://127.0.0.1:{port}"
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1500,1150", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def wait_for_status(driver, predicate, timeout=60) -> str:
    WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: predicate(text_of(d, "status")))
    time.sleep(0.5)  # the other outputs of the same event render in the same tick; let the images load
    return text_of(driver, "status")


def displayed_image(driver, element_id: str) -> Image.Image:
    """The picture an output gr.Image shows, fetched from the URL the page shows it from."""
    source = WebDriverWait(driver, 30).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"#{element_id} img").get_attribute("src"))
    if source.startswith("data:"):
        return Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).convert("RGB")
    with urllib.request.urlopen(source, timeout=30) as response:
        return Image.open(io.BytesIO(response.read())).convert("RGB")


def wait_for_picture(driver, element_id: str, expected: Image.Image, timeout=30) -> np.ndarray:
    """Poll until the output shows `expected` pixel for pixel (the event renders its outputs together, but the image is
    fetched separately); fail with the number of differing pixels."""
    expected = np.asarray(expected)
    shown = None

    def matches(d):
        nonlocal shown
        shown = np.asarray(displayed_image(d, element_id))
        return shown.shape == expected.shape and (shown == expected).all()

    try:
        WebDriverWait(driver, timeout, poll_frequency=0.3).until(matches)
    except Exception:
        if shown.shape != expected.shape:
            differing = f"shape {shown.shape}"
        else:
            differing = int((shown != expected).any(-1).sum())
        raise AssertionError(f"#{element_id} does not show the expected picture ({differing} pixels differ)") from None
    return shown


def wait_for_text(driver, element_id: str, *parts: str, timeout=30) -> str:
    WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: all(part in text_of(d, element_id) for part in parts),
        message=f"#{element_id} never showed {parts}")
    return text_of(driver, element_id)


def percent(score: float) -> str:
    """How gr.Label shows a confidence (JavaScript's Math.round)."""
    return f"{int(np.floor(100 * score + 0.5))}%"


def test_demo_in_a_browser(served, browser, tmp_path):
    started = time.perf_counter()
    folder, url = served
    explainer = demo_app.Explainer(str(folder))  # the expectations: the same model through the pipeline
    examples = sorted(demo_app.EXAMPLES_DIR.glob("*.png"))
    assert examples, "demo/examples holds no example image"

    # the example and the part whose removal changes most what stage 2 sees
    def effect(path, part):
        picture, plain = explainer.explain(str(path), [], None)
        return plain["stage2_fraction"] - explainer.explain(picture, [part], None)[1]["stage2_fraction"]
    image_path, part = max(((p, k) for p in examples for k in range(explainer.num_parts)), key=lambda c: effect(*c))
    assert effect(image_path, part) > 0, "no part of the examples is present: the tiny model cannot show removal"
    picture, before = explainer.explain(str(image_path), [], None)
    _, after = explainer.explain(picture, [part], None)

    browser.get(url)
    wait_for_status(browser, lambda s: "Loaded" in s)
    legend = text_of(browser, "legend")
    assert "% of training images" in legend  # part statistics are read
    removal = text_of(browser, "removal")
    assert "97" in removal and "99" in removal  # the calibrated percentiles are offered

    # upload: prediction, stage-1 prediction and the stage-2 picture are the pipeline's
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(image_path))
    status = wait_for_status(browser, lambda s: "Stage 2 saw" in s)
    assert f"{100 * before['stage2_fraction']:.1f}%" in status
    top = before["predictions"][0]
    wait_for_text(browser, "prediction", top["label"], percent(top["score"]))
    wait_for_text(browser, "stage1-prediction", before["stage1_predictions"][0]["label"])
    seen_before = wait_for_picture(browser, "stage2-image", demo_app.stage2_picture(picture, before))
    wait_for_picture(browser, "parts-image", demo_app.parts_picture(picture, before))

    # untick the part: stage 2 sees less, and its prediction is the model's without that part
    browser.find_element(By.XPATH, f"//*[@id='parts']//label[contains(., 'part {part}')]").click()
    status = wait_for_status(browser, lambda s: f"removed part {part}" in s)
    assert f"{100 * after['stage2_fraction']:.1f}%" in status and after["stage2_fraction"] < before["stage2_fraction"]
    top = after["predictions"][0]
    wait_for_text(browser, "prediction", top["label"], percent(top["score"]))
    seen_after = wait_for_picture(browser, "stage2-image", demo_app.stage2_picture(picture, after))
    assert (seen_after != seen_before).any()
    wait_for_text(browser, "legend", "(removed)")
    screenshot = Path(os.environ.get("IFAM_SCREENSHOT_DIR") or tmp_path) / "demo.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(screenshot))

    # an undecodable upload: a message, and the app keeps serving
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(broken))
    wait_for_status(browser, lambda s: "Could not read the image" in s)
    browser.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(image_path))
    wait_for_status(browser, lambda s: f"{100 * after['stage2_fraction']:.1f}%" in s)
    print(f"browser test: {time.perf_counter() - started:.1f} s")
