"""report.html in a real browser: headless Chromium (Debian's `chromium` package, which `bash scripts/setup.sh
--test` installs) driven by the playwright package, on the quick demo's run (the session's `quick_demo`).

    .venv/bin/python -m pytest -q tests/slow/test_report_browser.py

CSR_REPORT_SCREENSHOT=docs/report.png also saves the screenshot there (how the README's picture was made).
Without Chromium the tests skip, except under CI, where they fail: CI must run them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from helpers import report_run

from csr_vlm.benchmarks.chair import caption_mentions, load_vocabulary
from csr_vlm.curate import pair_answers
from csr_vlm.data import read_jsonl
from csr_vlm.report_html import write_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if not CHROMIUM or sync_playwright is None:
        missing = "Chromium" if not CHROMIUM else "the playwright package"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not found: `bash scripts/setup.sh --test` installs it")
        pytest.skip(f"{missing} not found (bash scripts/setup.sh --test installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])  # root in CI: no sandbox
        yield b
        b.close()


def open_page(browser, path: Path):
    """The page loaded and its script finished; the list of console errors and uncaught exceptions grows."""
    page = browser.new_page(viewport={"width": 1200, "height": 800})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    return page, errors


def shown_ids(page) -> set[str]:
    """The ids of every image card the filters show, "show more" clicked until all are drawn (100 at a time)."""
    while page.locator("#more-images").is_visible():
        page.click("#more-images")
    return set(page.eval_on_selector_all("#image-list .image-card", "cs => cs.map(c => c.dataset.id)"))


def captions(run: Path, k: int) -> dict[str, dict]:
    return {str(r["image_id"]): r for r in read_jsonl(run / f"round_{k}" / "eval" / "chair_captions.jsonl")}


def expected(base: dict, cur: dict, mode: str) -> set[str]:
    """The images a filter should show, from the eval's own per-caption CHAIR results (not the page's code)."""
    out = set()
    for i in base.keys() & cur.keys():
        b, c, gt = base[i], cur[i], set(base[i]["gt"])
        changed = {"removed": set(b["hallucinated"]) - set(c["hallucinated"]),
                   "added": set(c["hallucinated"]) - set(b["hallucinated"]),
                   "lost": (set(b["mentioned"]) & gt) - set(c["mentioned"])}[mode]
        if changed:
            out.add(i)
    return out


@pytest.mark.slow
def test_report_in_chromium(quick_demo, quick_world, browser, tmp_path):
    out, _ = quick_demo
    run = out / "csr"
    page, errors = open_page(browser, run / "report.html")
    best = json.loads((run / "best.json").read_text())["round"]
    rounds = sorted(int(d.name.split("_")[1]) for d in run.glob("round_*"))
    assert page.locator("#rounds-table tbody tr").count() == len(rounds)
    assert page.inner_text("#rounds-table tr.selected td:first-child") == f"{best} (selected)"

    # a known hallucinated object, marked on its image with the synonym that matched
    base = captions(run, 0)
    row = next(r for r in base.values() if r["hallucinated"])
    vocab = load_vocabulary(quick_world / "synonyms.txt")
    mention = next(m for m in caption_mentions(row["caption"], vocab) if m.object in row["hallucinated"])
    page.click("#tabs button[data-tab=images]")
    page.select_option("#object", mention.object)
    marks = page.locator(f".image-card[data-id='{row['image_id']}'] .cap[data-round='0'] mark.bad")
    assert row["caption"][mention.start:mention.end] in marks.all_inner_texts()
    titles = marks.evaluate_all("ms => ms.map(m => m.title)")
    assert f"{mention.word} \u2192 {mention.object} (not in the image)" in titles

    # the filters show exactly the images the eval's CHAIR results say (last round against the base)
    last = rounds[-1]
    cur = captions(run, last)
    page.select_option("#object", "")
    page.select_option("#round", str(last))
    page.select_option("#compare", "base")
    total = len(cur)
    counts = {}
    for mode in ("removed", "added", "lost"):
        page.select_option("#filter", mode)
        want = expected(base, cur, mode)
        assert shown_ids(page) == want, mode
        assert page.inner_text("#image-count") == f"{len(want)} of {total} images"
        counts[mode] = len(want)
    assert 0 < counts["removed"] < total  # a filter that changes what is shown

    # the per-object table links to the images that hallucinate the object in that round
    link = page.locator("#objects-table a.n[data-round='0']").first
    obj, n = link.get_attribute("data-object"), int(link.inner_text())
    page.click("#tabs button[data-tab=objects]")
    link.click()
    assert shown_ids(page) == {i for i, r in base.items() if obj in r["hallucinated"]} and len(shown_ids(page)) == n

    # the screenshot: the images view (what the last round removed), not a blank page
    page.select_option("#object", "")
    page.select_option("#round", str(last))
    page.select_option("#filter", "removed")
    assert len(shown_ids(page)) == counts["removed"]
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot))
    _check_screenshot(shot, page.locator("#image-list").bounding_box())

    # pairs: all pairs of one image on demand; the sampled sentences below tau are marked
    pairs = {k: list(read_jsonl(run / f"round_{k}" / "generate" / "pairs.jsonl")) for k in rounds if k > 0}
    image = Path(pairs[1][0]["images"][0]).name
    page.click("#tabs button[data-tab=pairs]")
    page.fill("#pair-image", image)
    want = sum(Path(p["images"][0]).name == image for ps in pairs.values() for p in ps)
    assert page.locator("#pair-image-list .pair").count() == want
    assert page.inner_text("#pair-image-count") == f"{want} pairs"
    assert page.locator("#pair-rounds tr.doubt").count() == _doubted_in_sample(run, page)
    assert page.locator("#pair-rounds tr.doubt").count() > 0
    assert errors == []


def _doubted_in_sample(run: Path, page) -> int:
    """Sentences with R_I below the round's tau (or a repeat) in the pairs the page samples, from candidates.jsonl."""
    n = 0
    for section in page.locator("#pair-rounds .pair-round").all():
        k = int(section.get_attribute("data-round"))
        gen = run / f"round_{k}" / "generate"
        tau = json.loads((gen / "stats.json").read_text()).get("tau")
        answers = {c["id"]: c["answers"] for c in read_jsonl(gen / "candidates.jsonl")}
        by_id = {p["id"]: p for p in read_jsonl(gen / "pairs.jsonl")}
        for pid in section.locator(".pair").evaluate_all("ps => ps.map(p => p.dataset.pair)"):
            p = by_id[pid]
            for text in pair_answers(p):  # a searched row: " " + the answer + its end token ("</s>")
                text = re.sub(r"<[^>]*>$", "", text).strip()
                answer = next((a for a in answers.get(pid, []) if a["text"] == text), None)
                n += sum(bool(s.get("repeat")) or (tau is not None and s.get("r_i") is not None and s["r_i"] < tau)
                         for s in (answer or {}).get("sentences", []))
    return n


def _check_screenshot(shot: Path, box: dict) -> None:
    """Not blank: the image cards' part of it (below the legend, which has both marks) holds many colours (the
    thumbnails), and both marks' colours (true: #c9ecd1, hallucinated: #f8c9c5)."""
    from PIL import Image

    im = Image.open(shot).convert("RGB")
    cards = im.crop((int(box["x"]), int(box["y"]), im.width, im.height))
    colours = {c for _, c in cards.getcolors(maxcolors=1 << 20)}
    assert len(colours) > 200 and (0xC9, 0xEC, 0xD1) in colours and (0xF8, 0xC9, 0xC5) in colours
    keep = os.environ.get("CSR_REPORT_SCREENSHOT")
    if keep:  # a small palette PNG for the README
        im.quantize(64).save(keep, optimize=True)


@pytest.mark.slow
def test_half_finished_run_in_chromium(quick_demo, browser, tmp_path):
    """Round 0's eval and round 1's pairs only (the last pairs line cut in half), no manifest: the page loads
    without an error, says what is missing, and still shows the readable pairs."""
    src = quick_demo[0] / "csr"
    run = tmp_path / "half"
    shutil.copytree(src / "round_0" / "eval", run / "round_0" / "eval")
    (run / "round_1" / "generate").mkdir(parents=True)
    lines = (src / "round_1" / "generate" / "pairs.jsonl").read_text().splitlines()
    (run / "round_1" / "generate" / "pairs.jsonl").write_text("\n".join(lines[:-1] + [lines[-1][:40]]))
    page, errors = open_page(browser, write_html(run))
    notes = page.inner_text("#notes")
    assert "No readable manifest.json" in notes and "round 1: no eval, train output" in notes
    assert "no generate/candidates.jsonl" in notes
    assert page.inner_text("#pair-rounds h2") == f"Round 1: {len(lines) - 1} pairs"
    page.click("#tabs button[data-tab=images]")
    assert len(shown_ids(page)) == len(captions(src, 0))
    assert errors == []


def test_sentence_pairs_and_odd_text_in_chromium(browser, tmp_path):
    """The small hand-made run (helpers.report_run): a caption holding '</script><b>x</b>' shows as that text;
    "puppies" is marked as the synonym puppy of dog; the sentence-level pair shows its question, its shared
    prefix and the two next sentences; "A cat sits." (R_I 20 < tau 25) is marked in each of the three pairs."""
    page, errors = open_page(browser, write_html(report_run(tmp_path)))
    page.click("#tabs button[data-tab=images]")
    cap = page.locator(".image-card[data-id='2'] .cap[data-round='1']")
    assert "A cat. </script><b>x</b>" in cap.inner_text() and page.locator("#image-list b").count() == 0
    puppies = page.locator(".image-card[data-id='1'] .cap[data-round='0'] mark.ok").first
    assert (puppies.inner_text(), puppies.get_attribute("title")) == ("puppies", "puppy \u2192 dog")
    page.click("#tabs button[data-tab=pairs]")
    pair = page.locator("#pair-rounds .pair[data-level='sentence']")
    assert "prompt: Describe." in pair.inner_text() and "sentence pair at depth 1" in pair.inner_text()
    assert pair.locator(".prefix").inner_text() == "shared prefix: A dog runs."
    for side, title, sentence in (("chosen", "chosen next sentence", "A man walks."),
                                  ("rejected", "rejected next sentence", "A cat sits.")):
        assert pair.locator(f".side.{side} h4").inner_text() == title
        assert pair.locator(f".side.{side} tbody td:first-child").all_inner_texts() == [sentence]
    doubted = page.locator("#pair-rounds tr.doubt td:first-child").all_inner_texts()
    assert doubted == ["A cat sits."] * 3
    assert errors == []
