"""`fastadv demo` in a real browser: the command serves the page in a subprocess on a free port,
Selenium drives Debian's Chromium (headless) through it: pick a test image in the gallery, move
the eps slider from 0 to 0.3, and check the page against fastadv.FGSM run here on the same image
(the clean prediction at eps 0, a flip at 0.3, every number shown); an upload that is not an
image shows an error and the page keeps answering; with bit depth reduction picked (then the
adaptive attack ticked) the page shows what FGSM on fastadv.defenses.Defended gives here;
nothing is fetched from outside the server; the screenshot is not blank; the robustness-curve
tab's report.json, downloaded, is evaluate()'s report, and asking again answers from the cache.
Without chromium and chromedriver it skips (.ci/run installs them)."""

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from support.reports import without_timings

import fastadv
from fastadv import models
from fastadv.defenses import BitDepth, Defended
from fastadv.evaluation import evaluate

pytestmark = pytest.mark.browser
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
MISSING = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
if MISSING and os.environ.get("FASTADV_EXPECT_BROWSER") == "1":  # .ci/run: installed, so never skipped
    raise RuntimeError(f"FASTADV_EXPECT_BROWSER=1 but {' and '.join(MISSING)} are missing")
if MISSING:
    pytest.skip(f"no {' or '.join(MISSING)} (apt-get install chromium chromium-driver)", allow_module_level=True)
pytest.importorskip("gradio", reason="fastadv demo needs gradio (pip install 'fastadv[demo]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

IMAGE = 3  # a test image FGSM at eps 0.3 flips (checked below, against the model)
LARGE_EPS = 0.3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def digits(digits_model, tmp_path_factory):
    """The tests' digits model, saved where `fastadv demo` looks for its default model."""
    model, images, labels = digits_model
    cache = tmp_path_factory.mktemp("cache")
    saved = models.small_cnn()
    saved.load_state_dict(model.state_dict())
    models.save(saved.eval(), str(cache / "digits-small_cnn-standard.pt"))
    return model, images, labels, cache


@pytest.fixture(scope="module")
def server(digits, tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "FASTADV_CACHE": str(digits[3]), "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}  # fmt: skip
    log = tmp_path_factory.mktemp("server") / "log.txt"
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "fastadv", "demo", "--port", str(port)], env=env,
                                   cwd=log.parent, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            if process.poll() is not None:
                pytest.fail(f"fastadv demo exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"fastadv demo did not answer on {url} within 90 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _wait(condition, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _text(driver, element_id: str) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, f"#{element_id}")
    return found[0].text if found else ""


def _move_slider(driver, value: float, element_id: str = "eps") -> None:
    """As a drag does: the range input's value set and its input event fired."""
    driver.execute_script(
        f"const input = document.querySelector('#{element_id} input[type=range]');"
        "Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(input, arguments[0]);"
        "input.dispatchEvent(new Event('input', {bubbles: true}));",
        str(value),
    )


SUMMARY = re.compile(
    r"prediction (?P<clean>\d+) (?P<adv>\d+)\n"
    r"probability of the prediction (?P<p_clean>[\d.]+) (?P<p_adv>[\d.]+)\n"
    r"probability of class (?P<label>\d+) (?P<c_clean>[\d.]+) (?P<c_adv>[\d.]+)\n"
    r"attack success L-inf L2 L0 time\n"
    r"FGSM, eps = (?P<eps>[\d.e-]+) \(L-inf\) (?P<success>yes|no) (?P<linf>[\d.e-]+) (?P<l2>[\d.e-]+) "
    r"(?P<l0>\d+) (?P<ms>[\d.]+) ms"
)


def _shown(driver, eps: float, model_line: str = "defence: none (the model alone) · attack: not adaptive") -> dict:
    """The numbers the page shows once it shows eps and the model attacked (its first line)."""

    def parsed():
        text = _text(driver, "summary")
        match = SUMMARY.search(text)
        return match.groupdict() if match and float(match["eps"]) == eps and text.startswith(model_line) else None

    return _wait(parsed, f"the page to show eps {eps} and {model_line!r}")


def _expected(model, image, label, eps, **options) -> dict:
    """What the page must show: fastadv.FGSM (with `options`) on the same image, formatted as the
    page formats."""
    x, y = image.unsqueeze(0), torch.tensor([label])
    result = fastadv.FGSM(model, eps=eps, **options).run(x, y)
    with torch.no_grad():
        clean, adv = model(x).softmax(1)[0], model(result.adv).softmax(1)[0]
    delta = (result.adv - x).flatten()
    return {"clean": str(int(clean.argmax())), "adv": str(int(adv.argmax())),
            "p_clean": f"{float(clean.max()):.4f}", "p_adv": f"{float(adv.max()):.4f}", "label": str(label),
            "c_clean": f"{float(clean[label]):.4f}", "c_adv": f"{float(adv[label]):.4f}",
            "success": "yes" if bool(result.success[0]) else "no", "linf": f"{float(delta.abs().max()):.6g}",
            "l2": f"{float(delta.norm()):.6g}", "l0": str(int((delta != 0).sum()))}  # fmt: skip


def test_the_explorer_in_a_browser(digits, server, browser, tmp_path):
    model, images, labels, _ = digits
    image, label = images[IMAGE], int(labels[IMAGE])
    with torch.no_grad():
        clean_class = int(model(image.unsqueeze(0)).argmax())
    assert _expected(model, image, label, LARGE_EPS)["adv"] != str(clean_class), "pick an image FGSM flips"

    browser.get(server)
    _wait(lambda: "prediction" in _text(browser, "summary"), "the first attack at page load", timeout=60)
    thumbnails = browser.find_elements(By.CSS_SELECTOR, "#gallery .thumbnail-item")
    assert len(thumbnails) == 20
    thumbnails[IMAGE].click()
    _wait(lambda: f"test image #{IMAGE}" in _text(browser, "source"), "the picked image")

    shown = {}
    for eps in (0.0, 0.05, 0.1, 0.2, LARGE_EPS):  # the slider moved from 0 to a large eps
        _move_slider(browser, eps)
        shown[eps] = _shown(browser, eps)
        expected = _expected(model, image, label, eps)
        assert {k: shown[eps][k] for k in expected} == expected, f"eps {eps}"
        assert float(shown[eps]["ms"]) > 0
    assert shown[0.0]["clean"] == shown[0.0]["adv"] == str(clean_class) and shown[0.0]["l0"] == "0"
    assert shown[LARGE_EPS]["adv"] != str(clean_class) and shown[LARGE_EPS]["success"] == "yes"
    assert "top-5" in _text(browser, "top-adversarial")

    # the numbers beside the images, above the fold of a 1400 x 1757 window (they once sat under it)
    bottoms = browser.execute_script(
        "return ['summary', 'adversarial', 'top-adversarial'].map("
        "id => document.getElementById(id).getBoundingClientRect().bottom + window.scrollY)"
    )
    assert max(bottoms) <= 1757, f"below the fold: {bottoms}"

    screenshot = Path(os.environ.get("FASTADV_DEMO_SCREENSHOT") or tmp_path / "demo.png")
    browser.save_screenshot(str(screenshot))
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 500 and pixels.var() > 100, "the screenshot is blank"

    # nothing came from outside the server (gradio's frontend, fonts and images are local)
    outside = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(arguments[0]))",
        server.rstrip("/"),
    )
    assert [u for u in outside if not u.startswith(("data:", "blob:"))] == []

    # an upload that is not an image: a message, and the page keeps answering
    bad = tmp_path / "not-an-image.png"
    bad.write_text("this is text, not a PNG")
    browser.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(bad))
    message = _wait(lambda: _text(browser, "message"), "the upload's error message")
    assert message.startswith("Error: not-an-image.png: not a readable PNG or JPEG image"), message
    _move_slider(browser, 0.15)
    again = _shown(browser, 0.15)
    assert {k: again[k] for k in ("clean", "linf")} == {"clean": str(clean_class), "linf": "0.15"}
    assert f"test image #{IMAGE}" in _text(browser, "source")

    # behind bit depth reduction (its gradient is zero: plain FGSM does not move), then adaptive
    defended = Defended(model, [BitDepth(5)])
    browser.find_element(By.CSS_SELECTOR, "#defense input[value='bits:5']").click()
    line = "defence: bits:5: BitDepth(bits=5) (the predictions are the defended model's) · attack: "
    plain, expected = _shown(browser, 0.15, line + "not adaptive"), _expected(defended, image, label, 0.15)
    assert {k: plain[k] for k in expected} == expected and plain["l0"] == "0"
    browser.find_element(By.CSS_SELECTOR, "#adaptive input[type=checkbox]").click()
    adaptive = _shown(browser, 0.15, line + "adaptive (BPDA through the transforms)")
    expected = _expected(defended, image, label, 0.15, adaptive=True)
    assert {k: adaptive[k] for k in expected} == expected and adaptive["l0"] != "0"


def test_the_robustness_curve_in_a_browser(digits, server, browser):
    model, images, labels, cache = digits
    browser.get(server)
    _wait(lambda: "prediction" in _text(browser, "summary"), "the page", timeout=60)
    [tab] = [t for t in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "Robustness" in t.text]
    tab.click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#curve-go"), "the curve tab")
    _move_slider(browser, 10, "curve-samples")  # a small job: 10 samples, 5 steps, two eps
    _move_slider(browser, 5, "curve-steps")
    browser.execute_script(
        "const box = document.querySelector('#curve-eps textarea, #curve-eps input');"
        "Object.getOwnPropertyDescriptor(box.constructor.prototype, 'value').set.call(box, '0.2, 0.1');"
        "box.dispatchEvent(new Event('input', {bubbles: true}));"
    )
    browser.find_element(By.CSS_SELECTOR, "#curve-go").click()
    message = _wait(lambda: _text(browser, "curve-message"), "the curve", timeout=120)
    assert message.startswith("computed: 10 samples"), message
    link = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#curve-report a[href]"), "report.json's link")
    with urllib.request.urlopen(link[0].get_attribute("href"), timeout=10) as response:
        report = json.load(response)
    expected = evaluate(model, (images[:10], labels[:10]), ["fgsm", "pgd"], [0.1, 0.2], steps=5, batch_size=1,
                        seed=0, progress=False)  # fmt: skip
    expected.update(
        model=f"digits small_cnn (cached at {cache / 'digits-small_cnn-standard.pt'})",
        data="digits",
        classes={str(d): d for d in range(10)},
    )  # the page names the digits as fastadv eval does
    assert without_timings(report) == without_timings(expected)
    browser.find_element(By.CSS_SELECTOR, "#curve-go").click()
    _wait(lambda: _text(browser, "curve-message").startswith("from the cache: 10 samples"), "the cached curve")
