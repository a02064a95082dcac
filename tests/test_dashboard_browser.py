"""The dashboard's pages in a real headless browser (Debian's chromium and chromium-driver,
selenium from pip) against a live worker: the worker appears, a task's state changes
on the page without a reload, an argument that is HTML shows as text, and revoke from
the page works. Without chromedriver the test skips, naming the packages; with $CI set
it fails instead. With $LOCALQ_SCREENSHOTS set to a folder, it saves a PNG of each page
there (docs/ holds the README's)."""
from __future__ import annotations

import os
import shutil
from typing import Any, Iterator

import pytest
import sample_tasks
from conftest import need, wait_for
from dashboard_proc import DashboardProcess

APT = "apt-get install -y chromium chromium-driver (and pip install selenium)"
XSS = "<script>alert(1)</script>"


def _driver_or_skip(profile: str) -> Any:
    driver_path, browser = shutil.which("chromedriver"), shutil.which("chromium")
    missing = [name for name, found in (("chromedriver", driver_path), ("chromium", browser))
               if not found]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium")
    need(not missing, ", ".join(missing), APT)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1200,760",
                f"--user-data-dir={profile}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


@pytest.fixture
def browser(tmp_path) -> Iterator[Any]:
    driver = _driver_or_skip(str(tmp_path / "chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver: Any, css: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    try:
        return driver.find_element("css selector", css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def _shot(driver: Any, name: str) -> None:
    folder = os.environ.get("LOCALQ_SCREENSHOTS")
    if folder:
        driver.save_screenshot(os.path.join(folder, f"dashboard-{name}.png"))


def test_pages_in_a_real_browser(app, db_path, start_worker, browser):
    worker = start_worker("--app", "dash_tasks:app", "-c", "2").ready()
    dash = DashboardProcess(db_path, "--app", "dash_tasks:app")
    try:
        ok = sample_tasks.add.delay(XSS, "!")
        bad = sample_tasks.boom.delay("it broke")
        for i in range(20):
            sample_tasks.add.delay(i, i)
        ok.get(timeout=20)

        browser.get(dash.url + "/#/workers")
        wait_for(lambda: _text(browser, f'tr.worker[data-pid="{worker.pid}"]'),
                 what="the worker on the page")
        wait_for(lambda: _text(browser, "td.processed") not in ("", "0"),
                 what="the worker's processed count")
        _shot(browser, "workers")

        # A task's state changes on the page while it stays loaded (no reload: the
        # marker set on the window survives).
        slow = sample_tasks.sleep_then.delay(2.5, "done")
        browser.get(dash.url + f"/#/task/{slow.id}")
        browser.execute_script("window.__stayed = 1")
        wait_for(lambda: _text(browser, "#task-state") == "STARTED", what="STARTED on the page")
        wait_for(lambda: _text(browser, "#task-state") == "SUCCESS", what="SUCCESS on the page")
        assert browser.execute_script("return window.__stayed") == 1
        assert _text(browser, "#task-result") == '"done"'

        # What the file holds is shown as text: the script tag is an argument, not a script.
        browser.get(dash.url + "/#/tasks")
        wait_for(lambda: XSS in _text(browser, f'tr.task[data-id="{ok.id}"] td.args'),
                 what="the argument shown as text")
        assert browser.execute_script("return document.scripts.length") == 1
        browser.get(dash.url + f"/#/task/{ok.id}")
        wait_for(lambda: XSS in _text(browser, "#task-args"), what="args on the task page")
        _shot(browser, "task")
        browser.get(dash.url + f"/#/task/{bad.id}")
        wait_for(lambda: "it broke" in _text(browser, "#task-traceback"), what="the traceback")
        browser.get(dash.url + "/#/tasks")
        wait_for(lambda: _text(browser, f'tr.task[data-id="{bad.id}"]'), what="the task list")
        _shot(browser, "tasks")

        # Revoke from the page.
        later = sample_tasks.add.apply_async((1, 2), countdown=600)
        browser.get(dash.url + f"/#/task/{later.id}")
        wait_for(lambda: _text(browser, "#task-state") == "PENDING", what="the waiting task")
        browser.find_element("css selector", "#revoke").click()
        wait_for(lambda: _text(browser, "#task-state") == "REVOKED", what="REVOKED on the page")
        assert later.state == "REVOKED"

        for priority in (0, 0, 5):
            sample_tasks.add.apply_async((1, 2), queue="reports", priority=priority)
        browser.get(dash.url + "/#/queues")
        wait_for(lambda: "reports 5 1" in _text(browser, "tr.queue"), what="a queue's depth")
        assert "sample_tasks.limited rate_limit 10/s" in _text(browser, "#content")
        _shot(browser, "queues")
        browser.get(dash.url + "/#/throughput")
        wait_for(lambda: browser.find_elements("css selector", "#chart polyline.series-succeeded"),
                 what="the throughput chart")
        _shot(browser, "throughput")
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        dash.stop()
