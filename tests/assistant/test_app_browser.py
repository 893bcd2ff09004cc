"""The app as a user gets it: `cxrgen app` on 127.0.0.1, headless Debian chromium through selenium,
two PNGs uploaded, the report read from the page; a screenshot goes to docs/app.png (README).

The project directory is the `app_project` fixture: set CXRGEN_TEST_PROJECT to run this against a
real project (e.g. the synthetic `dvc repro` output)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from app_project import app_project, xray_png  # noqa: F401

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CXRGEN = Path(sys.executable).with_name("cxrgen")
# The README's screenshot is remade only when asked (CXRGEN_SCREENSHOT=docs/app.png): a test run
# must not rewrite a tracked file.
SCREENSHOT_ENV = "CXRGEN_SCREENSHOT"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(port: int, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"cxrgen app exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"cxrgen app did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def server(app_project, tmp_path):
    port = free_port()
    log = tmp_path / "app.log"
    with open(log, "w") as out:
        process = subprocess.Popen([str(CXRGEN), "app", "--port", str(port), "--project", str(app_project)],
                                   stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_health(port, process, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        if os.environ.get("CI"):
            pytest.fail("Debian chromium / chromedriver missing under CI: bin/setup installs them")
        pytest.skip("Debian chromium / chromedriver not installed (/usr/bin/chromium, /usr/bin/chromedriver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000",
                     "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_two_views_and_read_the_report(server, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, log = server
    frontal, lateral = tmp_path / "frontal.png", tmp_path / "lateral.png"
    frontal.write_bytes(xray_png("frontal", width=400, height=460))
    lateral.write_bytes(xray_png("lateral", width=400, height=460))
    browser.get(url)
    # Streamlit redraws the page on every rerun (after an upload, when the report is ready): an
    # element found a moment ago can be gone, so every wait finds its elements again.
    wait = WebDriverWait(browser, 150, ignored_exceptions=[StaleElementReferenceException])
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "input[type='file']")) == 2)
    inputs = browser.find_elements(By.CSS_SELECTOR, "input[type='file']")
    inputs[0].send_keys(str(frontal))
    wait.until(lambda d: "frontal.png" in d.find_element(By.TAG_NAME, "body").text)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "input[type='file']")[1].send_keys(str(lateral)) or True)
    wait.until(lambda d: "lateral.png" in d.find_element(By.TAG_NAME, "body").text)

    def generate_button(driver):
        for button in driver.find_elements(By.TAG_NAME, "button"):
            if button.text.strip() == "Generate report" and button.is_enabled():
                return button
        return False

    def click_generate(driver):
        button = generate_button(driver)
        if not button:
            return False
        button.click()
        return True

    wait.until(click_generate)
    wait.until(ec.visibility_of_element_located((By.ID, "cxrgen-report")))
    text = wait.until(lambda d: d.find_element(By.ID, "cxrgen-report").text.strip() or False)
    assert text and text != "(empty)", log.read_text()[-2000:]
    body = wait.until(lambda d: d.find_element(By.TAG_NAME, "body").text)
    assert "SYNTHETIC" in body and "not a diagnosis" in body and "Traceback" not in body
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img"))
    time.sleep(1.0)   # let the last image paint

    height = browser.execute_script(
        "const main = document.querySelector('[data-testid=\"stMain\"]') || document.body;"
        "return Math.max(main.scrollHeight, document.body.scrollHeight);")
    browser.set_window_size(1440, min(max(int(height) + 40, 1000), 2600))
    time.sleep(1.0)
    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "app.png")
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 20_000
