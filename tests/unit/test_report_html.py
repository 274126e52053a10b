"""report.html without a browser: what goes into the page (mentions, filters' inputs, pairs), a broken run
directory, the histogram. tests/slow/test_report_browser.py opens real pages in Chromium."""

from __future__ import annotations

import json
import re

from helpers import message, report_run

from csr_vlm.cli import main
from csr_vlm.report_data import page_data
from csr_vlm.report_html import histogram_svg, render, write_html


def test_page_data_marks_chairs_mentions_and_keeps_the_pairs(tmp_path):
    """Base caption of image 1: "puppies" (chars 4-11) matched the table word "puppy" -> dog, true; "man"
    (18-21) -> person, true. Round 1 on image 2: cat true, nothing missed; image 1 misses person."""
    data = page_data(report_run(tmp_path))
    assert data["rounds"] == [0, 1]
    one, two = data["images"]
    assert one["gt"] == ["dog", "person"] and one["file"] == "1.jpg" and one["thumb"].startswith("data:image/jpeg")
    assert one["r"][0]["m"] == [[4, 11, "puppy", "dog", 0], [18, 21, "man", "person", 0]]
    assert [m[3:] for m in one["r"][1]["m"]] == [["dog", 0], ["cat", 1]] and one["r"][1]["x"] == ["person"]
    assert [m[2:] for m in two["r"][0]["m"]] == [["cat", "cat", 0], ["sofa", "couch", 1]] and two["r"][1]["x"] == []
    o = data["overview"]
    assert o["selected"] == 0 and o["select_on"] == "chair_i" and o["columns"][-2:] == ["dev_chair_i", "guards"]
    assert [row[-1] for row in o["rows"]] == [None, "fail"] and o["rows"][1][-2] == 0.1
    assert o["rows"][0][o["columns"].index("words_per_caption")] == 4.5
    (rnd,) = data["pairs"]
    assert rnd["tau"] == 25.0 and rnd["sample"] == [0, 1, 2]
    caption_pair, sentence_pair, standard_pair = rnd["pairs"]
    assert caption_pair["r"]["s"][1] == ["A cat sits.", -0.5, 20.0, -2.0, 0] and caption_pair["img"] == "1.jpg"
    assert (sentence_pair["lvl"], sentence_pair["pre"], sentence_pair["dep"]) == ("sentence", "A dog runs.", 1)
    assert sentence_pair["p"] == "Describe."  # the question, not the rendered chat text
    assert sentence_pair["c"] == {"s": [["A man walks.", -1.5, 28.0, 0.5, 0]]}
    assert sentence_pair["r"] == {"s": [["A cat sits.", -0.5, 20.0, -2.0, 0]]}
    assert standard_pair["r"] == caption_pair["r"] and standard_pair["p"] == "Describe."  # "</s>" after the answer


def test_page_holds_its_data_whole(tmp_path):
    """The data round-trips through the page's script tag (a caption's '</script>' cannot end it); styles, script
    and plots are inline: the page names no other file."""
    run = report_run(tmp_path)
    html = write_html(run).read_text()
    blob = re.search(r'<script id="csr-data" type="application/json">(.*?)</script>', html, re.DOTALL).group(1)
    data = json.loads(blob)
    assert data["images"][1]["r"][1]["c"] == "A cat. </script><b>x</b>"
    hist = data["pairs"][0]["hist"]  # the margins of the 3 pairs; R_I of their sentences
    assert "\u25a0 pairs (3)</text>" in hist  # 2 + 1 + 2 sentences on each side:
    assert "\u25a0 chosen (5)</text>" in hist and "\u25a0 rejected (5)</text>" in hist
    assert ">tau</text>" in hist
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert not list(run.glob(".*.tmp"))


def test_broken_run_dir_gives_a_page_saying_what_is_missing(tmp_path, capsys):
    """A manifest that is no JSON, round 0 with a metrics file that is a list and a caption record of the wrong
    shape, round 1 with a half-written pairs line and a margin that is text: exit 0, the page's notes name each
    missing piece; the good pair line and the odd caption (as an empty one) are still shown."""
    run = tmp_path / "run"
    (run / "round_1" / "generate").mkdir(parents=True)
    (run / "round_0" / "eval").mkdir(parents=True)
    (run / "round_0" / "eval" / "metrics.json").write_text("[1, 2]")
    (run / "round_0" / "eval" / "chair_captions.jsonl").write_text('{"image_id": 5, "caption": null, "gt": "dog"}\n')
    (run / "manifest.json").write_text("{not json")
    good = {"id": "a", "images": ["/gone/1.jpg"], "prompt": message("user", "Describe."),
            "chosen": message("assistant", "A dog."), "rejected": message("assistant", "A cat."), "margin": "big"}
    (run / "round_1" / "generate" / "pairs.jsonl").write_text(json.dumps(good) + '\n{"id": "b", "ima')
    assert main(["report", str(run)]) == 0
    assert f"wrote {run / 'report.html'}" in capsys.readouterr().out
    data = page_data(run)
    notes = "\n".join(data["notes"])
    for missing in ("No readable manifest.json", "round 0: no eval output", "round 1: no eval, train output",
                    "no generate/candidates.jsonl", "round 1: no eval/chair_captions.jsonl"):
        assert missing in notes
    assert [p["id"] for p in data["pairs"][0]["pairs"]] == ["a"]
    assert data["images"] == [{"id": 5, "gt": [], "r": [{"c": "", "m": [], "x": []}, None], "file": None,
                               "thumb": None}]


def test_histogram_bins_and_tau_marker():
    """Values 0, 0.5, 1, 1 in 2 bins over [0, 1]: [0, 0.5) holds 1, [0.5, 1] holds 3 (the top edge goes in the last
    bin); the marker at 0.25 is drawn; no values: no plot."""
    svg = histogram_svg([("x", "#000", [0.0, 0.5, 1.0, 1.0])], "t", "v", bins=2, marker=0.25, marker_label="tau")
    assert re.findall(r"<title>x: (\d+) in", svg) == ["1", "3"] and ">tau</text>" in svg
    assert histogram_svg([("x", "#000", [])], "t", "v") == ""


def test_render_without_thumbnails(tmp_path):
    """--no-thumbnails: the page has no embedded JPEG."""
    html = render(page_data(report_run(tmp_path), thumbs=False))
    assert "data:image/jpeg" not in html and '"thumb":null' in html
