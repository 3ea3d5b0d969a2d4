"""The console in a real headless Chromium: log in, live overview, live training curve, playing an
evaluation video, cancelling a job from the browser, refusing a wrong token. Each step saves a screenshot
(PNG, under the session's tmp directory) so what the pages looked like can be checked by eye."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

HANGUL = range(0xAC00, 0xD7A4)


def shot(driver, screenshots, name: str) -> None:
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(str(screenshots / f"{name}.png"))


def login(driver, url: str, token: str) -> None:
    driver.delete_all_cookies()
    driver.get(url + "login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login").click()


def wait_for(driver, predicate, timeout: float = 60, what: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.3).until(lambda d: predicate(d), message=what)


@pytest.fixture(scope="module")
def console(stack) -> str:
    return stack["console"]


@pytest.fixture
def signed_in(chromium, console, stack):
    """The browser logged in with the full token, on the overview."""
    login(chromium, console, stack["token"])
    wait_for(chromium, lambda d: d.find_elements(By.ID, "jobs"), what="the overview after login")
    return chromium


def test_a_wrong_token_is_refused(chromium, console, screenshots):
    login(chromium, console, "not-the-token")
    err = wait_for(chromium, lambda d: d.find_elements(By.ID, "login-error"), what="a refusal")[0]
    assert "token refused" in err.text
    assert chromium.get_cookie("vidtune_session") is None
    shot(chromium, screenshots, "01-wrong-token")
    chromium.get(console)           # still not in: every page sends the browser back to the form
    assert "/login" in chromium.current_url
    req = urllib.request.Request(console + "api/jobs", headers={"Authorization": "Bearer not-the-token"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req)
    assert e.value.code == 401


@pytest.fixture(scope="module")
def training_job(chromium, console, stack, train_dataset, screenshots):
    """A cpu-tiny run started from the Actions form (long enough to watch: many epochs, a flush per step)."""
    login(chromium, console, stack["token"])
    wait_for(chromium, lambda d: d.find_elements(By.ID, "jobs"), what="the overview after login")
    chromium.get(console + "actions")
    form = chromium.find_element(By.ID, "form-train-SubmitTrain")
    form.find_element(By.XPATH, "..").find_element(By.TAG_NAME, "summary").click()
    fields = {"preset": "cpu-tiny", "dataset": train_dataset, "output": "s3://vidtune/tests/runs/console",
              "config_yaml": "epochs: 60\nsave_every_steps: 1\nsave_every_epochs: 20\n"}
    for name, value in fields.items():
        form.find_element(By.NAME, name).send_keys(value)
    shot(chromium, screenshots, "02-actions-form")
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(chromium, lambda d: "/jobs/train/" in d.current_url, what="the new job's page")
    return chromium.current_url.rstrip("/").rsplit("/", 1)[-1]


def test_overview_progress_changes_without_a_reload(chromium, console, training_job, job_waiter, screenshots):
    job_waiter("train", training_job, timeout=240, states=("RUNNING",))
    chromium.get(console)
    chromium.execute_script("window.__sameDocument = true")
    row = wait_for(chromium, lambda d: d.find_elements(By.ID, f"job-{training_job}"), what="the job's row")[0]
    first = row.find_element(By.CSS_SELECTOR, ".done").text
    wait_for(chromium, lambda d: d.find_element(By.CSS_SELECTOR, f"#job-{training_job} .done").text != first
             and d.find_element(By.CSS_SELECTOR, f"#job-{training_job} .state").text == "RUNNING",
             timeout=180, what="the running job's progress to change")
    assert chromium.execute_script("return window.__sameDocument === true"), "the page was reloaded"
    assert chromium.find_element(By.ID, "live").text == "live"
    time.sleep(1.5)
    shot(chromium, screenshots, "03-overview-live")


def test_training_chart_gains_points_while_the_run_trains(chromium, console, training_job, job_waiter, screenshots):
    chromium.get(console + f"training?job=train/{training_job}")
    chromium.execute_script("window.__sameDocument = true")
    count = lambda d: int(d.find_element(By.ID, "points").text or 0)  # noqa: E731
    wait_for(chromium, lambda d: count(d) >= 2, timeout=180, what="the first loss points")
    before = count(chromium)
    wait_for(chromium, lambda d: count(d) >= before + 3, timeout=180, what="more loss points")
    assert chromium.execute_script("return window.__sameDocument === true")
    assert chromium.find_element(By.ID, "train-state").text == "RUNNING"
    svg_points = chromium.find_element(By.ID, "loss-chart").get_attribute("data-points")
    assert int(svg_points) >= before + 3
    shot(chromium, screenshots, "04-training-live")


def test_cancel_from_the_browser(chromium, console, training_job, job_waiter, screenshots):
    chromium.get(console + f"jobs/train/{training_job}")
    chromium.find_element(By.ID, "cancel").click()
    job = job_waiter("train", training_job, timeout=120)
    assert job.state == 5, f"expected CANCELLED, got {job.state}"  # 5 = CANCELLED
    chromium.get(console + f"jobs/train/{training_job}")
    assert chromium.find_element(By.ID, "job-state").text == "CANCELLED"
    assert not chromium.find_elements(By.ID, "cancel")
    shot(chromium, screenshots, "05-cancelled")


def test_evaluation_plays_a_video(signed_in, chromium, console, evaluation_run, screenshots):
    chromium.get(console + f"evaluation?job=evaluate/{evaluation_run}")
    conclusion = chromium.find_element(By.ID, "conclusion").text
    assert conclusion.startswith("epoch-1 vs base:") and "grade" in conclusion
    videos = chromium.find_elements(By.TAG_NAME, "video")
    assert len(videos) == 12   # 3 checkpoints x 2 prompts x 2 seeds, side by side
    chromium.execute_script("arguments[0].play()", videos[0])
    wait_for(chromium, lambda d: d.execute_script(
        "const v = arguments[0]; return v.currentTime > 0.2 && !v.paused && v.videoWidth > 0 && !v.error",
        videos[0]), timeout=30, what="the video to play")
    assert chromium.execute_script("return arguments[0].videoWidth", videos[0]) == 64
    assert any(ord(c) in HANGUL for c in chromium.find_element(By.TAG_NAME, "main").text)
    shot(chromium, screenshots, "06-evaluation")
    chromium.execute_script("arguments[0].scrollIntoView()", chromium.find_element(By.CSS_SELECTOR, "section.prompt"))
    chromium.save_screenshot(str(screenshots / "06b-evaluation-videos.png"))


def test_dataset_and_quality_pages(signed_in, chromium, console, quality_run, screenshots):
    chromium.get(console + "dataset?out=" + quality_run)
    shot(chromium, screenshots, "07-dataset")
    bars = chromium.find_elements(By.CSS_SELECTOR, ".bars svg .barrow")
    assert bars, "no chart drawn"
    assert any(ord(c) in HANGUL for c in chromium.find_element(By.CSS_SELECTOR, ".charts").text)
    chromium.get(console + "quality?out=" + quality_run)
    rows = chromium.find_elements(By.CSS_SELECTOR, "table.rejected tbody tr")
    assert len(rows) == 3, "two damaged files and one English caption should be rejected"
    wait_for(chromium, lambda d: d.execute_script(
        "return [...document.querySelectorAll('table.rejected img')].some(i => i.complete && i.naturalWidth > 0)"),
        timeout=30, what="a key frame of a rejected clip")
    shot(chromium, screenshots, "08-quality")
    chromium.get(console + f"quality?out={quality_run}&rule=media_readable")
    per_row = chromium.find_elements(By.CSS_SELECTOR, "table.rejected tbody tr")
    assert len(per_row) == 2 and all(any(li.text.startswith("media_readable:") for li in r.find_elements(
        By.TAG_NAME, "li")) for r in per_row)
    assert chromium.find_element(By.ID, "match-count").text.startswith("2 of 3 ")
    shot(chromium, screenshots, "08b-quality-filtered")


def test_read_only_token_sees_but_cannot_act(chromium, console, read_only_token, screenshots):
    login(chromium, console, read_only_token)
    wait_for(chromium, lambda d: d.find_elements(By.ID, "jobs"), what="the overview")
    assert "read-only" in chromium.find_element(By.CSS_SELECTOR, ".role").text
    chromium.get(console + "actions")
    assert all(b.get_attribute("disabled") for b in chromium.find_elements(By.CSS_SELECTOR, ".submit-form button"))
    # A forged POST from this session is refused even with the page's CSRF token.
    status = chromium.execute_script("""
        const body = new URLSearchParams({csrf: document.querySelector('input[name=csrf]').value,
                                          service: 'train', method: 'SubmitTrain', preset: 'cpu-tiny'});
        return fetch('/actions/submit', {method: 'POST', body}).then(r => r.status);""")
    assert status == 403
    shot(chromium, screenshots, "09-read-only")
    print(json.dumps({"screenshots": str(screenshots)}))
