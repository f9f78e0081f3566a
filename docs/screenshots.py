"""Regenerate the screenshots of the studio (docs/studio-*.png) that README.md and
docs/studio.md show.

    .venv/bin/python docs/screenshots.py

The studio runs as in the browser tests (tests/test_web_browser.py) on a temporary
database, with scripted in-character replies instead of a model and a demo evaluation
report written by training/evaluate.py's own write_report; headless Chromium takes the
pictures. Nothing here touches data/.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine import ChatModel, Chunk, GenerationRequest, Usage
from tests.web_support import make_version, write_config

OUT = Path(__file__).resolve().parent
SCRIPT = {
    "headed": "Kestrel Station, three jumps out. We refuel at the Orrin yards on the way.",
    "safe": "Safer than a crowded spaceport, I promise. I plot every jump twice.",
    "nebula": "The Veil Nebula — like flying through a lantern's glow. Stay near a window.",
    "nebula again": "If the jump lines up, yes: the Veil is on our second leg. I'll wake you.",
    "fuel": "Ask the quartermaster. I only chart the routes.",
}


class Scripted(ChatModel):
    """Answers from SCRIPT by keyword, streamed word by word; serves LoRA versions by name."""

    name: ClassVar[str] = "scripted"

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    async def load_lora(self, character: str, path: str) -> str:
        return Path(path).name

    async def unload_lora(self, character: str) -> None:
        return None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        import asyncio

        last = next(m["content"] for m in reversed(request.messages) if m["role"] == "user")
        reply = next((v for k, v in SCRIPT.items() if k in last.lower()), "Hm. Tell me more.")
        self.seen[reply] = self.seen.get(reply, 0) + 1
        if reply == SCRIPT["nebula"] and self.seen[reply] > 1:  # 🔁: another take
            reply = SCRIPT["nebula again"]
        words = reply.split(" ")
        for index, word in enumerate(words):
            await asyncio.sleep(0.02)
            yield Chunk(word if index == 0 else " " + word)
        version = Path(request.lora.path).name if request.lora else None
        yield Chunk("", Usage(10, len(words), "scripted", version, "stop"))


def demo_data(root: Path) -> Path:
    from training.evaluate import Case, Scored, VersionEval, write_report

    config = write_config(root)
    loras = root / "data" / "loras"
    make_version(
        loras,
        "Mara",
        1,
        examples=24,
        validation={"best_loss": 1.84},
        evaluation={
            "version": "v0001-00000001",
            "heldout_similarity": 0.31,
            "corrected_similarity": 0.52,
            "heldout_questions": 4,
            "corrected_questions": 8,
            "paraphrase_recall": 0.5,
            "paraphrase_questions": 24,
            "leak_rate": 0.0,
            "unrelated_prompts": 30,
            "distinct_rate": 0.93,
            "distinct_2": 0.71,
            "mean_words": 12.8,
            "drift": 0.22,
            "persona_score": 0.58,
            "persona_questions": 12,
            "against": "base",
            "baseline": {
                "heldout_similarity": 0.24,
                "corrected_similarity": 0.3,
                "paraphrase_recall": 0.21,
                "leak_rate": 0.0,
                "distinct_rate": 0.97,
                "persona_score": 0.42,
            },
            "gate": {"passed": True, "failed": None},
        },
    )
    make_version(
        loras,
        "Mara",
        2,
        parent="v0001-00000001",
        examples=61,
        validation={"best_loss": 1.42},
        evaluation={
            "version": "v0002-00000002",
            "heldout_similarity": 0.47,
            "corrected_similarity": 0.81,
            "heldout_questions": 6,
            "corrected_questions": 20,
            "paraphrase_recall": 0.75,
            "paraphrase_questions": 60,
            "leak_rate": 0.03,
            "unrelated_prompts": 30,
            "distinct_rate": 1.0,
            "distinct_2": 0.82,
            "mean_words": 14.2,
            "drift": 0.31,
            "persona_score": 0.67,
            "persona_questions": 12,
            "against": "v0001-00000001",
            "baseline": {
                "heldout_similarity": 0.31,
                "corrected_similarity": 0.52,
                "paraphrase_recall": 0.5,
                "leak_rate": 0.0,
                "distinct_rate": 0.93,
                "persona_score": 0.58,
            },
            "gate": {"passed": True, "failed": None},
        },
    )
    cases = [
        (Case([{"role": "user", "content": "Is it safe?"}], SCRIPT["safe"]), 0.83),
        (Case([{"role": "user", "content": "Where are we headed?"}], SCRIPT["headed"]), 0.64),
        (Case([{"role": "user", "content": "Seen a nebula?"}], SCRIPT["nebula"]), 0.22),
    ]
    evals = [
        VersionEval(label, heldout=[Scored(c, "…", s * factor) for c, s in cases])
        for label, factor in (("v0001-00000001", 0.6), ("v0002-00000002", 1.0))
    ]
    write_report(evals, "Mara", root / "data" / "reports")
    return config


def main() -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import charbot.wiring
    from tests import test_web_browser as browser_tests

    with tempfile.TemporaryDirectory() as tmp:
        config = demo_data(Path(tmp))
        charbot.wiring.build_model = lambda config: Scripted()  # type: ignore[assignment]
        options = browser_tests.Options()
        options.binary_location = str(browser_tests.CHROMIUM)
        for argument in (
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            "--window-size=1000,760",
            "--force-device-scale-factor=1",
        ):
            options.add_argument(argument)
        driver = browser_tests.webdriver.Chrome(
            service=browser_tests.Service(str(browser_tests.DRIVER)), options=options
        )
        wait = WebDriverWait(driver, 15)
        try:
            with browser_tests.ServedStudio(config) as studio:
                driver.get(studio.url + "/")

                def say(text: str, button: str | None) -> Any:
                    bubble = browser_tests.send(driver, text)
                    if button:
                        bubble.find_element(By.CSS_SELECTOR, f"button.{button}").click()
                        wait.until(lambda d: "rated" in d.find_element(By.ID, "status").text)
                    return bubble

                say("Is it safe out here?", "up")
                bubble = say("Where are we headed?", "down")
                bubble.find_element(By.CSS_SELECTOR, "button.fix").click()
                area = bubble.find_element(By.CSS_SELECTOR, ".fix-form textarea")
                area.clear()
                area.send_keys(
                    "Kestrel Station — three jumps, and I'll show you each on the chart."
                )
                bubble.find_element(By.CSS_SELECTOR, ".fix-form button").click()
                wait.until(lambda d: "saved" in d.find_element(By.ID, "status").text)
                bubble = say("Could we see a nebula on the way?", None)
                bubble.find_element(By.CSS_SELECTOR, "button.regen").click()  # another take
                wait.until(lambda d: bubble.find_element(By.CSS_SELECTOR, ".count").text == "2/2")
                driver.save_screenshot(str(OUT / "studio-chat.png"))

                driver.get(studio.url + "/review")
                driver.save_screenshot(str(OUT / "studio-review.png"))

                driver.get(studio.url + "/characters")
                row = driver.find_element(By.CSS_SELECTOR, 'tr[data-version="v0002-00000002"]')
                row.find_element(By.CSS_SELECTOR, "form.use button").click()
                wait.until(lambda d: d.switch_to.alert).accept()
                wait.until(lambda d: "now speaks with" in d.page_source)
                driver.save_screenshot(str(OUT / "studio-characters.png"))

                driver.get(studio.url + "/")
                say("Is it safe near the nebula?", "up")
                driver.get(studio.url + "/reports")
                driver.save_screenshot(str(OUT / "studio-reports.png"))
        finally:
            driver.quit()
    for name in ("chat", "review", "characters", "reports"):
        path = OUT / f"studio-{name}.png"
        print(f"{path.relative_to(OUT.parent)}: {path.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
