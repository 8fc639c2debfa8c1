"""The web page: static checks, and an end-to-end run in real headless Chromium (Debian's chromium +
chromedriver) against a live server on 127.0.0.1 - upload a real NIH PNG and the real DICOM through the file
input, check the findings table and the heatmap overlay, save a screenshot to test-artifacts/web_predict.png."""
from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import httpx
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("fastapi")

from cxrkit import RESEARCH_NOTICE  # noqa: E402
from cxrkit.deploy.serve.app import WEB_DIR, create_app  # noqa: E402
from cxrkit.deploy.serve.live import serve_in_thread  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
KEY = "web-key-0123456789abcdef"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
DROP_JS = """
const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
const dt = new DataTransfer();
dt.items.add(new File([bytes], arguments[1], {type: "application/octet-stream"}));
const zone = document.getElementById("drop");
for (const type of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, make_tiny_bundle):
    from cxrkit.bundle import read_bundle_config, write_bundle_config

    torch.set_num_threads(1)
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("web") / "bundle")
    cfg = read_bundle_config(bundle)
    cfg["thresholds"] = {n: 0.0 for n in cfg["label_names"]}  # every finding positive: every map gets boxes
    write_bundle_config(bundle, cfg)
    with serve_in_thread(create_app(bundle, api_key=KEY)) as url:
        yield url


def test_page_assets_are_self_contained_and_carry_the_notice(server):
    page = httpx.get(server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert RESEARCH_NOTICE in page.text
    for asset in ("app.js", "style.css"):
        r = httpx.get(f"{server}/static/{asset}")
        assert r.status_code == 200 and r.text == (WEB_DIR / asset).read_text()
    for f in ("index.html", "app.js", "style.css"):  # no CDN, no external fetches
        assert not re.search(r"https?://", (WEB_DIR / f).read_text()), f
    code = re.sub(r"//[^\n]*", "", (WEB_DIR / "app.js").read_text())
    assert "innerHTML" not in code and "outerHTML" not in code  # server data only through textContent


def _driver(profile: Path, size: str = "1280,1000"):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={size}", f"--user-data-dir={profile}",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


@pytest.mark.browser
def test_browser_upload_png_and_dicom(server, shared_data, tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"!!! BROWSER TEST SKIPPED: {CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium "
                    "chromium-driver) !!!")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    png = shared_data / "nih-sample" / "images" / "00000075_000.png"
    dcm = shared_data / "dicom" / "cr_monochrome2_jpeg_baseline.dcm"
    driver = _driver(tmp_path / "profile")
    try:
        driver.set_page_load_timeout(30)
        wait = WebDriverWait(driver, 30)
        driver.get(server + "/")
        assert RESEARCH_NOTICE in driver.find_element(By.ID, "notice").text
        key_box = wait.until(ec.visibility_of_element_located((By.ID, "api-key")))  # auth is on: key input shown
        key_box.send_keys(KEY)
        assert driver.execute_script("return sessionStorage.getItem('cxrkit.apiKey')") == KEY

        def upload_and_wait(path: Path, fmt: str, size: str, drop: bool = False) -> None:
            if drop:  # a real drop event carrying the file, as a drag from the desktop delivers it
                driver.execute_script(DROP_JS, base64.b64encode(path.read_bytes()).decode(), path.name)
            else:
                driver.find_element(By.ID, "file-input").send_keys(str(path))
            wait.until(lambda d: f"{fmt} {size}" in d.find_element(By.ID, "model").text
                       or "error" in d.find_element(By.ID, "status").get_attribute("class"))
            assert "error" not in driver.find_element(By.ID, "status").get_attribute("class"), \
                driver.find_element(By.ID, "status").text
            rows = driver.find_elements(By.CSS_SELECTOR, "#findings tbody tr")
            assert len(rows) == 14
            probs = [float(r.find_elements(By.TAG_NAME, "td")[1].text) for r in rows]
            assert probs == sorted(probs, reverse=True)
            for r in rows:  # positive flag agrees with probability >= threshold (unless equal after rounding)
                cells = [c.text for c in r.find_elements(By.TAG_NAME, "td")]
                if cells[1] != cells[2]:
                    assert cells[3] == ("yes" if float(cells[1]) >= float(cells[2]) else "no")
            wait.until(lambda d: d.execute_script(
                "const o = document.getElementById('overlay'), b = document.getElementById('base-image');"
                "return !o.hidden && o.complete && o.naturalWidth > 0 && b.complete && b.naturalWidth > 0;"))
            quality = driver.find_element(By.ID, "quality")  # the tiny bundle has no fitted gate: never a green pass
            assert quality.text.startswith("Not quality-checked") and "unchecked" in quality.get_attribute("class")

        upload_and_wait(png, "PNG", "256 x 256")
        # the boxes of a positive finding's map are drawn as SVG rectangles over it, one per box of the API
        api = httpx.post(server + "/v1/predict?heatmap=true", headers={"X-API-Key": KEY},
                         files={"file": (png.name, png.read_bytes())}, timeout=30).json()["heatmaps"]["boxes"]
        name = next((n for n, b in api.items() if b), None)
        assert name, "every finding is positive here: some map must have a box"
        shown = driver.find_element(By.ID, "overlay").get_attribute("data-finding")
        toggle = driver.find_element(By.CSS_SELECTOR, f'#findings tr[data-finding="{name}"] button.toggle')
        if shown != name:
            toggle.click()
        drawn = driver.execute_script(
            "return [...document.querySelectorAll('#boxes rect')].map((r) => r.getBoundingClientRect().width)")
        assert len(drawn) == len(api[name]) and all(w > 0 for w in drawn)
        toggle.click()
        assert driver.execute_script("return document.querySelectorAll('#boxes rect').length") == 0  # hidden too
        if shown != name:
            driver.find_element(By.CSS_SELECTOR, f'#findings tr[data-finding="{shown}"] button.toggle').click()
        overlay = driver.find_element(By.ID, "overlay")
        first = overlay.get_attribute("src")
        assert first.startswith("data:image/png;base64,")
        # toggle another finding's heatmap; the overlay image changes and its button is pressed
        second_button = driver.find_elements(By.CSS_SELECTOR, "#findings button.toggle")[1]
        second_button.click()
        assert second_button.get_attribute("aria-pressed") == "true"
        assert overlay.get_attribute("data-finding") == driver.find_elements(
            By.CSS_SELECTOR, "#findings tbody tr")[1].get_attribute("data-finding")
        # opacity slider drives the overlay's opacity
        driver.execute_script("const s = document.getElementById('opacity'); s.value = 25;"
                              "s.dispatchEvent(new Event('input'));")
        assert float(overlay.value_of_css_property("opacity")) == pytest.approx(0.25)

        upload_and_wait(dcm, "DICOM", "1024 x 1024")
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "web_predict.png"))
        upload_and_wait(png, "PNG", "256 x 256", drop=True)
        assert (ARTIFACTS / "web_predict.png").stat().st_size > 10_000
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_favicon_is_served(server):
    r = httpx.get(server + "/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content
    assert 'rel="icon" href="/static/favicon.svg"' in (WEB_DIR / "index.html").read_text()


BAR_BESIDE_NUMBER_JS = """
return [...document.querySelectorAll('#findings tbody td.num:nth-child(2)')].map((td) => {
  const bar = td.querySelector('.bar').getBoundingClientRect();
  const range = document.createRange();
  range.selectNode(td.lastChild);
  const text = range.getBoundingClientRect();
  return Math.abs((bar.top + bar.bottom) / 2 - (text.top + text.bottom) / 2) < text.height / 2;
});
"""


@pytest.mark.browser
def test_browser_synthetic_model_warns_and_bars_stay_beside_numbers(tmp_path, make_tiny_bundle, shared_data):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"!!! BROWSER TEST SKIPPED: {CHROMIUM} or {CHROMEDRIVER} missing (apt-get install chromium "
                    "chromium-driver) !!!")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from cxrkit.bundle import SYNTHETIC_WARNING, read_bundle_config, write_bundle_config

    bundle = make_tiny_bundle(tmp_path / "bundle")
    config = read_bundle_config(bundle)
    config["provenance"]["synthetic"] = True
    write_bundle_config(bundle, config)
    png = shared_data / "nih-sample" / "images" / "00000075_000.png"
    with serve_in_thread(create_app(bundle, api_key=KEY)) as url:
        driver = _driver(tmp_path / "profile", size="520,1100")  # a narrow window: where the bars used to wrap
        try:
            wait = WebDriverWait(driver, 30)
            driver.get(url + "/")
            wait.until(ec.visibility_of_element_located((By.ID, "api-key"))).send_keys(KEY)
            driver.find_element(By.ID, "file-input").send_keys(str(png))
            wait.until(lambda d: "PNG 256 x 256" in d.find_element(By.ID, "model").text)
            banner = driver.find_element(By.ID, "synthetic")
            assert banner.is_displayed() and banner.text == SYNTHETIC_WARNING
            quality = driver.find_element(By.ID, "quality")
            assert "unchecked" in quality.get_attribute("class") and not quality.text.startswith("Quality check passed")
            assert quality.value_of_css_property("background-color") != "rgba(218, 251, 225, 1)"  # not the green
            beside = driver.execute_script(BAR_BESIDE_NUMBER_JS)
            assert len(beside) == 14 and all(beside), beside
            width = driver.execute_script("return [document.documentElement.scrollWidth, "
                                          "document.documentElement.clientWidth]")
            assert width[0] <= width[1], f"the page is wider than the window: {width}"
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "web_synthetic.png"))
        finally:
            driver.quit()
            shutil.rmtree(tmp_path / "profile", ignore_errors=True)
