"""The studio in a real headless Chromium (Debian's chromium + chromium-driver, driven by
Selenium): chat and see the streamed reply, rate it, correct it in the review queue and
find it in `charbot export --format sft`, switch a version and see the next reply record
it. Screenshots of each page are kept in test-artifacts/studio/ (not committed).

The studio runs in a thread of its own with its own event loop — the same WebAdapter and
wiring as `charbot web` — because Selenium's calls block.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.web_support import REPO, VersionedEcho, export_sft, make_version, write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
ARTIFACTS = REPO / "test-artifacts" / "studio"

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the dev extra installs it
    webdriver = None

pytestmark = pytest.mark.skipif(
    webdriver is None or CHROMIUM is None or DRIVER is None,
    reason="browser tests need Chromium and its driver: apt-get install chromium "
    "chromium-driver (make install does it when run as root) and pip install selenium",
)


class ServedStudio:
    """`charbot web`'s wiring in a background thread: open_core + WebAdapter on port 0."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.url = ""
        self.core: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="studio", daemon=True)

    def __enter__(self) -> ServedStudio:
        self._thread.start()
        if not self.ready.wait(60) or self.failed:
            raise RuntimeError(f"the studio did not start: {self.failed!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by __enter__
            self.failed = exc
            self.ready.set()

    async def _serve(self) -> None:
        from adapters.web.app import WebAdapter
        from bot.config import load_config
        from charbot.wiring import open_core

        config = load_config(self.config_path)
        async with open_core(config) as core:
            web = WebAdapter(core, config, port=0)
            await web.start()
            self.url, self.core, self.loop = web.url.rstrip("/"), core, asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.ready.set()
            await self._stop.wait()
            await web.stop()

    def call(self, work: Coroutine[Any, Any, Any]) -> Any:
        """Run a coroutine on the studio's loop (the store lives there) and return its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(30)


EVALUATION = {
    "heldout_similarity": 0.6,
    "corrected_similarity": 0.9,
    "paraphrase_recall": 0.75,
    "leak_rate": 0.12,
    "distinct_rate": 1.0,
    "persona_score": 0.83,
    "against": "v0001-00000001",
    "baseline": {"heldout_similarity": 0.3, "paraphrase_recall": 0.5, "leak_rate": 0.0},
    "gate": {"passed": False, "failed": "leak rate 12% vs 0% (margin 2%)"},
}


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedStudio]:
    tmp = tmp_path_factory.mktemp("studio")
    config = write_config(tmp)
    make_version(tmp / "data" / "loras", "Mara", 1, evaluation={"heldout_similarity": 0.3})
    make_version(tmp / "data" / "loras", "Mara", 2, evaluation=EVALUATION)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("charbot.wiring.build_model", lambda config: VersionedEcho.create())
        with ServedStudio(config) as served:
            yield served


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-dev-shm-usage",
        "--window-size=1100,820",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Any, seconds: float = 15) -> Any:
    return WebDriverWait(driver, seconds).until(condition)


def replies(driver: Any) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#log li.msg.assistant")


def send(driver: Any, text: str) -> Any:
    """Type ``text`` and press Enter; return the reply bubble once it is complete."""
    before = len(replies(driver))
    box = driver.find_element(By.ID, "text")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    wait(driver, lambda d: len(replies(d)) > before)
    bubble = replies(driver)[-1]
    wait(driver, lambda d: bubble.find_elements(By.CSS_SELECTOR, ".controls"))
    return bubble


def web_messages(studio: ServedStudio) -> list[Any]:
    return studio.call(studio.core.store.list_messages(platform="web"))


def test_chat_shows_the_streamed_reply_and_rates_it(studio: ServedStudio, browser: Any) -> None:
    browser.get(studio.url + "/")
    bubble = send(browser, 'Hello <img src=x onerror="window.pwned=1"> navigator')
    text = bubble.find_element(By.CSS_SELECTOR, ".text").text
    assert text == 'You said: Hello <img src=x onerror="window.pwned=1"> navigator'
    assert browser.execute_script("return window.pwned") is None
    assert not bubble.find_elements(By.TAG_NAME, "img")  # shown as text, not as markup

    bubble.find_element(By.CSS_SELECTOR, "button.down").click()
    wait(
        browser,
        lambda d: (
            "on" in bubble.find_element(By.CSS_SELECTOR, "button.down").get_attribute("class")
        ),
    )
    assert browser.find_element(By.ID, "status").text == "rated 👎"
    reply = web_messages(studio)[-1]
    ratings = studio.call(studio.core.store.list_votes([reply.id]))
    assert [r.value for r in ratings] == [-1]
    browser.save_screenshot(str(ARTIFACTS / "chat.png"))

    # 🔁 another take into the same bubble, ◀ back to the first; a reload shows that one.
    bubble.find_element(By.CSS_SELECTOR, "button.regen").click()
    wait(browser, lambda d: bubble.find_element(By.CSS_SELECTOR, ".count").text == "2/2")
    bubble.find_element(By.CSS_SELECTOR, "button.prev").click()
    wait(browser, lambda d: bubble.find_element(By.CSS_SELECTOR, ".count").text == "1/2")
    assert bubble.find_element(By.CSS_SELECTOR, ".text").text == text
    assert "on" in bubble.find_element(By.CSS_SELECTOR, "button.down").get_attribute("class")
    browser.refresh()
    bubble = replies(browser)[-1]
    assert bubble.find_element(By.CSS_SELECTOR, ".count").text == "1/2"
    assert bubble.find_element(By.CSS_SELECTOR, ".text").text == text


def test_a_correction_in_the_review_queue_reaches_the_sft_export(
    studio: ServedStudio, browser: Any
) -> None:
    browser.get(studio.url + "/")
    bubble = send(browser, "Where do we refuel?")
    bubble.find_element(By.CSS_SELECTOR, "button.down").click()
    wait(browser, lambda d: d.find_element(By.ID, "status").text == "rated 👎")
    reply = web_messages(studio)[-1]

    browser.get(studio.url + "/review")
    item = browser.find_element(By.ID, f"r{reply.id}")  # newest first: the current item
    assert "current" in item.get_attribute("class")
    assert "Where do we refuel?" in item.find_element(By.CSS_SELECTOR, ".context").text
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys("e")  # e: edit the better answer
    answer = browser.switch_to.active_element
    assert answer.get_attribute("name") == "text"
    answer.send_keys("At the Kestrel depot, two jumps out.")
    answer.send_keys(Keys.CONTROL, Keys.ENTER)  # saves
    wait(browser, ready.visibility_of_element_located((By.CSS_SELECTOR, ".flash")))

    # Other ways to ask it, one per line (Ctrl+Enter saves): listed under the reply.
    item = browser.find_element(By.ID, f"r{reply.id}")
    wordings = item.find_element(By.CSS_SELECTOR, "textarea[name=paraphrases]")
    wordings.send_keys("Where can we get fuel?", Keys.SHIFT, Keys.ENTER, Keys.SHIFT)
    wordings.send_keys("Refuelling stop?", Keys.CONTROL, Keys.ENTER)
    wait(
        browser,
        lambda d: "2 other ways to ask it" in d.find_element(By.CSS_SELECTOR, ".flash").text,
    )
    item = browser.find_element(By.ID, f"r{reply.id}")
    listed = item.find_elements(By.CSS_SELECTOR, "ul.paraphrases li")
    assert [li.text.split(" — ")[0] for li in listed] == [
        "Where can we get fuel?",
        "Refuelling stop?",
    ]
    browser.save_screenshot(str(ARTIFACTS / "review.png"))

    records = export_sft(studio.config_path)
    mine = [r for r in records if r["meta"]["reply_id"] == reply.id]
    assert mine and mine[0]["completion"][0]["content"] == "At the Kestrel depot, two jumps out."
    assert mine[0]["meta"]["paraphrases"] == ["Refuelling stop?", "Where can we get fuel?"]

    # x: exclude with a reason (Enter submits); the export leaves it out.
    browser.find_element(By.TAG_NAME, "body").send_keys("x")
    reason = browser.switch_to.active_element
    reason.send_keys("about fuel prices, not in character", Keys.ENTER)
    wait(
        browser,
        lambda d: "excluded from training" in d.find_element(By.CSS_SELECTOR, ".flash").text,
    )
    assert all(r["meta"]["reply_id"] != reply.id for r in export_sft(studio.config_path))


def test_switching_a_version_is_recorded_by_the_next_reply(
    studio: ServedStudio, browser: Any
) -> None:
    browser.get(studio.url + "/characters")
    row = browser.find_element(By.CSS_SELECTOR, 'tr[data-version="v0002-00000002"]')
    cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
    assert cells[3:5] == ["75%\n▲ was 50%", "12%\n▲ was 0%"]  # the change on a line of its own
    worse = row.find_element(By.CSS_SELECTOR, ".was.worse")
    assert worse.value_of_css_property("color") == "rgba(170, 17, 17, 1)"  # .worse, #a11
    # Eleven columns fit the window: neither the page nor the table scrolls sideways.
    for element in ("document.documentElement", "document.querySelector('div.scroll')"):
        assert browser.execute_script(f"return {element}.scrollWidth <= {element}.clientWidth")
    row.find_element(By.CSS_SELECTOR, "form.use button").click()
    wait(browser, ready.alert_is_present()).accept()  # "Switch Mara to v0002-…?"
    wait(browser, lambda d: "Mara now speaks with v0002-00000002" in d.page_source)
    browser.save_screenshot(str(ARTIFACTS / "characters.png"))

    browser.get(studio.url + "/")
    send(browser, "Which version answers?")
    assert web_messages(studio)[-1].lora_version == "v0002-00000002"

    browser.get(studio.url + "/reports")
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2 and charts[1].find_elements(By.TAG_NAME, "polyline")
    browser.save_screenshot(str(ARTIFACTS / "reports.png"))
