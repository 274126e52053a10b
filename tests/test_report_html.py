"""report.html without a browser: what goes into the page (mentions, filters' inputs, pairs), a broken run
directory, the histogram. tests/test_report_browser.py opens real pages in Chromium."""

from __future__ import annotations

import json
import re

from csr_vlm.cli import main
from csr_vlm.data import write_json, write_jsonl
from csr_vlm.eval.chair import compute_chair, load_vocabulary
from csr_vlm.report_data import page_data
from csr_vlm.report_html import histogram_svg, render, write_html


def _msg(role, text):
    return [{"role": role, "content": [{"type": "text", "text": text}]}]


def small_run(root, images=True):
    """Test images 1 (GT dog, person) and 2 (GT cat). Base: "Two puppies and a man." (dog, person; no
    hallucination) and "A cat on a sofa." (couch hallucinated). Round 1: "A dog and a cat." on 1 (cat
    hallucinated: added; person lost) and "A cat." on 2 (couch removed). Round 1's pairs: one caption pair with
    per-sentence rewards in candidates.jsonl (tau 25: the rejected "A cat sits." at R_I 20 is doubted), and one
    sentence-level pair with a shared prefix. The last caption holds a '</script>' that must not end the page's
    data."""
    run = root / "run"
    vocab = load_vocabulary()
    gt = {1: {"dog", "person"}, 2: {"cat"}}
    if images:
        from PIL import Image

        for i, colour in ((1, "red"), (2, "blue")):
            Image.new("RGB", (640, 480), colour).save(root / f"{i}.jpg")
    for k, caps in ((0, ["Two puppies and a man.", "A cat on a sofa."]),
                    (1, ["A dog and a cat.", "A cat. </script><b>x</b>"])):
        rows = compute_chair([{"image_id": i, "caption": c} for i, c in zip((1, 2), caps)], gt, vocab)["per_caption"]
        write_jsonl(run / f"round_{k}/eval/chair_captions.jsonl", rows)
        write_jsonl(run / f"round_{k}/eval/samples.jsonl", [
            {"task": "chair", "image_id": i, "image": str(root / f"{i}.jpg"), "prompt": "Describe.", "answer": c}
            for i, c in zip((1, 2), caps)])
        write_json(run / f"round_{k}/eval/metrics.json", {"chair": {"words_per_caption": 4.5 - k},
                                                           "flat": {"chair_i": 0.25 - 0.1 * k, "recall": 0.9}})
    chosen, rejected = "A dog runs. A man walks.", "A dog runs. A cat sits."
    write_jsonl(run / "round_1/generate/candidates.jsonl", [{"id": "t-1", "answers": [
        {"text": chosen, "sentences": [{"text": "A dog runs.", "r_t": -1.0, "r_i": 30.0, "r": 1.0},
                                       {"text": "A man walks.", "r_t": -1.5, "r_i": 28.0, "r": 0.5}]},
        {"text": rejected, "sentences": [{"text": "A dog runs.", "r_t": -1.0, "r_i": 30.0, "r": 1.0},
                                         {"text": "A cat sits.", "r_t": -0.5, "r_i": 20.0, "r": -2.0}]}]}])
    write_jsonl(run / "round_1/generate/pairs.jsonl", [
        {"id": "t-1", "images": [str(root / "1.jpg")], "prompt": _msg("user", "Describe."),
         "chosen": _msg("assistant", chosen), "rejected": _msg("assistant", rejected), "margin": 1.5,
         "chosen_r_i": 29.0, "rejected_r_i": 25.0},
        {"id": "t-1-s2", "images": [str(root / "1.jpg")], "prompt": _msg("user", "Describe."), "level": "sentence",
         "prefix": "A dog runs.", "chosen": _msg("assistant", "A man walks."),
         "rejected": _msg("assistant", "A cat sits."), "margin": 2.5, "chosen_r_i": 28.0, "rejected_r_i": 20.0}])
    write_json(run / "round_1/generate/stats.json", {"tau": 25.0})
    write_json(run / "manifest.json", {"config": {"loop": {"select_on": "chair_i", "guards": {"dup_rate": 0.05}}},
                                       "rounds": {"1": {"chair_i": 0.1, "passes_guards": False}}, "best_round": 0})
    write_json(run / "round_1/dev_eval/metrics.json", {"flat": {"chair_i": 0.1}})
    return run


def test_page_data_marks_chairs_mentions_and_keeps_the_pairs(tmp_path):
    """Base caption of image 1: "puppies" (chars 4-11) matched the table word "puppy" -> dog, true; "man"
    (18-21) -> person, true. Round 1 on image 2: cat true, nothing missed; image 1 misses person."""
    data = page_data(small_run(tmp_path))
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
    assert rnd["tau"] == 25.0 and rnd["sample"] == [0, 1]
    caption_pair, sentence_pair = rnd["pairs"]
    assert caption_pair["r"]["s"][1] == ["A cat sits.", -0.5, 20.0, -2.0, 0] and caption_pair["img"] == "1.jpg"
    assert sentence_pair["lvl"] == "sentence" and sentence_pair["pre"] == "A dog runs."
    assert sentence_pair["c"] == {"t": "A man walks."}  # no candidate answer is this text: no sentence table


def test_page_holds_its_data_whole(tmp_path):
    """The data round-trips through the page's script tag (a caption's '</script>' cannot end it); styles, script
    and plots are inline: the page names no other file."""
    run = small_run(tmp_path)
    html = write_html(run).read_text()
    blob = re.search(r'<script id="csr-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    data = json.loads(blob)
    assert data["images"][1]["r"][1]["c"] == "A cat. </script><b>x</b>"
    assert "<svg" in data["pairs"][0]["hist"] and "tau" in data["pairs"][0]["hist"]
    assert not re.search(r'(src|href)="(?!data:)', html)
    assert not list(run.glob(".*.tmp"))


def test_broken_run_dir_gives_a_page_saying_what_is_missing(tmp_path, capsys):
    """A manifest that is no JSON, round 1 with a half-written pairs line and nothing else: exit 0, the page's
    notes name each missing piece; the good pair line is still shown."""
    run = tmp_path / "run"
    (run / "round_1" / "generate").mkdir(parents=True)
    (run / "manifest.json").write_text("{not json")
    good = {"id": "a", "images": ["/gone/1.jpg"], "prompt": _msg("user", "Describe."), "chosen": _msg("assistant", "A dog."),
            "rejected": _msg("assistant", "A cat."), "margin": 1.0}
    (run / "round_1" / "generate" / "pairs.jsonl").write_text(json.dumps(good) + '\n{"id": "b", "ima')
    assert main(["report", str(run)]) == 0
    assert f"wrote {run / 'report.html'}" in capsys.readouterr().out
    data = page_data(run)
    notes = "\n".join(data["notes"])
    for missing in ("No readable manifest.json", "round 1: no eval, train output", "no generate/candidates.jsonl",
                    "the per-image view is empty"):
        assert missing in notes
    assert [p["id"] for p in data["pairs"][0]["pairs"]] == ["a"]


def test_histogram_bins_and_tau_marker():
    """Values 0, 0.5, 1, 1 in 2 bins over [0, 1]: [0, 0.5) holds 1, [0.5, 1] holds 3 (the top edge goes in the last
    bin); the marker at 0.25 is drawn; no values: no plot."""
    svg = histogram_svg([("x", "#000", [0.0, 0.5, 1.0, 1.0])], "t", "v", bins=2, marker=0.25, marker_label="tau")
    assert re.findall(r"<title>x: (\d+) in", svg) == ["1", "3"] and ">tau</text>" in svg
    assert histogram_svg([("x", "#000", [])], "t", "v") == ""


def test_render_without_thumbnails(tmp_path):
    """--no-thumbnails: the page has no embedded JPEG."""
    html = render(page_data(small_run(tmp_path), thumbs=False))
    assert "data:image/jpeg" not in html and '"thumb":null' in html
