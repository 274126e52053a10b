"""`csr score`: score existing outputs without a policy model.

    csr score chair --captions F --instances F [--gt-captions F] [--synonyms F] [--out F]
    csr score pope  --questions F [F ...] --answers F [F ...] [--parser default|llava|vlmevalkit] [--out F]
    csr score pairs RUN_OR_GEN_DIR --instances F [--gt-captions F] [--synonyms F] [--greedy samples.jsonl] [--out F]
    csr score clip  --clip DIR --calibration F.jsonl [--tau T] [--rule true_sd|youden] [--sd 3] [--out F]

`pairs` measures preference pairs against ground truth: CHAIR_i / recall of the chosen vs the
rejected answers, how often the chosen one is the cleaner of the two, of all candidates, and (with
--greedy, an eval samples.jsonl) of the model's own greedy caption of the same image. `clip`
checks a CLIP scorer on labelled sentences: R_I (max(100 * cos, 0), as in the reward) of present vs
absent objects, AUC, false-positive rate at --tau and the tau reward.pick_tau suggests (--rule true_sd:
mean(present) - sd * stdev(present); youden: the cut maximising TPR - FPR). Each prints a table and,
with --out, writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from . import health, layout
from .benchmarks import chair, pope
from .calibration import clip_summary
from .data import read_jsonl, write_json
from .errors import InputError
from .schema import TAU_RULES
from .tables import text_table
from .yes_no import PARSERS, YES_NO

log = logging.getLogger(__name__)


def cli(argv: list[str]) -> int:
    """`csr score chair|pope|pairs|clip ...`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="csr score", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("chair", help="CHAIR of generated captions")
    p.add_argument("--captions", required=True, help="JSONL {image_id, caption} or the original imgToEval JSON")
    _gt_args(p)
    p = sub.add_parser("pope", help="POPE metrics of answer files")
    p.add_argument("--questions", nargs="+", required=True, help="question JSONL file(s), one per split")
    p.add_argument("--answers", nargs="+", required=True, help="answer JSONL file(s), same order as --questions")
    p.add_argument("--parser", default="default", choices=PARSERS)
    p.add_argument("--out", help="write the metrics as JSON here")
    p = sub.add_parser("pairs", help="preference pairs vs ground truth")
    p.add_argument("run_dir", help="a generate directory (pairs.jsonl) or a loop run directory (round_<k>/generate)")
    p.add_argument("--greedy", help="eval samples.jsonl with the model's greedy captions of the same images")
    _gt_args(p)
    p = sub.add_parser("clip", help="CLIP R_I on labelled present/absent sentences")
    p.add_argument("--clip", required=True, help="CLIP / SigLIP directory or hub id")
    p.add_argument("--calibration", required=True, help="JSONL {image, text, present}")
    p.add_argument("--image-root", default="", help="root of relative image paths (default: the working "
                   "directory, else the calibration file's folder)")
    p.add_argument("--tau", type=float, default=None, help="threshold for the false-positive rate")
    p.add_argument("--rule", default="true_sd", choices=TAU_RULES,
                   help="how the suggested tau is picked (as reward.tau_rule)")
    p.add_argument("--sd", type=float, default=3.0, help="rule true_sd: tau = mean(present) - SD * stdev(present)")
    p.add_argument("--device", default="auto")
    p.add_argument("--scorer", default="clip", help="the kind of scorer (reward.scorer), loaded from --clip")
    p.add_argument("--out", help="write the numbers as JSON here")
    args = parser.parse_args(argv)
    result = {"chair": score_chair, "pope": score_pope, "pairs": score_pairs, "clip": score_clip}[args.what](args)
    if args.out:
        write_json(args.out, result)
        print(f"wrote {args.out}")
    return 0


def _gt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--instances", required=True, help="COCO instances JSON (images, annotations, categories)")
    p.add_argument("--gt-captions", help="COCO captions JSON: objects named there also count as present")
    p.add_argument("--synonyms", help="synonym table (default: the shipped COCO table)")
    p.add_argument("--out", help="write the metrics as JSON here")


def _print_table(rows: list[list[Any]], header: list[str]) -> None:
    print(text_table(header, rows))


def _load_gt(args) -> tuple[chair.Vocabulary, dict, dict]:
    return chair.load_ground_truth(args.instances, args.gt_captions, args.synonyms)


# ---------------------------------------------------------------------------- chair, pope


def score_chair(args) -> dict:
    """CHAIR of a captions file against the ground truth; prints and returns the metrics."""
    vocab, _, gt = _load_gt(args)
    result = chair.compute_chair(chair.read_captions(args.captions), gt, vocab)
    if not result["n_captions"]:
        raise InputError(f"{args.captions}: no caption matches an image of {args.instances} "
                         f"({result['n_unknown_images']} for unknown images)")
    keys = ["chair_s", "chair_i", "recall", "dup_rate", "mentions_per_caption", "words_per_caption", "n_captions"]
    _print_table([[k, result[k]] for k in keys], ["metric", "value"])
    if result["n_unknown_images"]:
        print(f"{result['n_unknown_images']} caption(s) for images not in the ground truth were not scored")
    return result


def score_pope(args) -> dict:
    """POPE metrics of answer files against their question files; prints and returns them."""
    if len(args.answers) not in (1, len(args.questions)):
        raise InputError("--answers: give one answers file, or one per --questions file in the same order")
    questions, answers = [], {}
    for i, qpath in enumerate(args.questions):
        qs = pope.read_questions(qpath)
        apath = args.answers[i if len(args.answers) > 1 else 0]
        ans = pope.read_answers(apath)
        for q in qs:
            if q["question_id"] in ans:
                answers[(q["category"], q["question_id"])] = ans[q["question_id"]]
        questions.extend(qs)
    if not answers:
        raise InputError(f"{', '.join(args.answers)}: no answer matches a question_id of {', '.join(args.questions)}")
    result = pope.score(questions, answers, args.parser)
    splits = [s for s in result if isinstance(result[s], dict)]
    cols = ["accuracy", "precision", "recall", "f1", "yes_ratio", "n"]
    _print_table([[s] + [result[s].get(c, "") for c in cols] for s in splits], ["split"] + cols)
    return result


# ---------------------------------------------------------------------------- pairs


def file_ids(instances: dict) -> dict[str, Any]:
    """{image file name: COCO image id} of an instances file."""
    return {Path(im.get("file_name", "")).name: im["id"] for im in instances.get("images", []) if im.get("file_name")}


def image_key(image: str, files: dict[str, Any]) -> Any:
    """COCO image id of an image path: by file name in the instances file, else the number in the name."""
    name = Path(str(image)).name
    return files.get(name, chair.norm_image_id(name))


def generate_dirs(path: str | Path) -> list[tuple[str, Path]]:
    """(name, directory) of every generate stage under path: path itself, or its round_<k>/generate/."""
    path = Path(path)
    if layout.pairs_file(path).is_file():
        return [(path.name, path)]
    found = [(rdir.name, rdir / "generate") for _, rdir in layout.rounds(path)
             if layout.pairs_file(rdir / "generate").is_file()]
    if not found:
        raise InputError(f"{path}: no pairs.jsonl here nor in round_<k>/generate/")
    return found


def pair_quality(gen_dir: Path, gt: dict, vocab: chair.Vocabulary, files: dict, greedy: dict | None = None) -> dict:
    """Chosen vs rejected (and vs greedy, vs all candidates) against the ground truth of one generate dir.

    Pairs of yes/no questions (data.mix_prompts) name no objects to count; they are left out and counted.
    Sentence-level pairs (curate.pair_level) contrast one sentence each: their numbers carry a `sentence_` prefix."""
    from .curate import pair_answers, read_pair_rows

    rows: dict[str, list] = {"response": [], "sentence": []}
    unknown = yes_no = n_greedy = vs_greedy = 0
    for pair in read_pair_rows(layout.pairs_file(gen_dir)):
        if pair["task"] == YES_NO:
            yes_no += 1
            continue
        key = image_key((pair.get("images") or [""])[0], files)
        if key not in gt:
            unknown += 1
            continue
        chosen, rejected = pair_answers(pair)
        c, r = chair.caption_chair_i(chosen, gt[key], vocab), chair.caption_chair_i(rejected, gt[key], vocab)
        level = pair.get("level", "response")
        rows[level].append((c, r))
        if level == "response" and greedy is not None and key in greedy:
            n_greedy += 1
            vs_greedy += c[0] < chair.caption_chair_i(greedy[key], gt[key], vocab)[0]
    out: dict[str, Any] = {"n_unknown_images": unknown, "n_yes_no_pairs": yes_no}
    out.update(_side_numbers(rows["response"], ""))
    if rows["sentence"]:
        out.update(_side_numbers(rows["sentence"], "sentence_"))
    if greedy is not None:
        out["n_with_greedy"] = n_greedy
        out["chosen_cleaner_than_greedy_rate"] = vs_greedy / n_greedy if n_greedy else 0.0
    if (gen_dir / "candidates.jsonl").is_file():
        out.update(_candidate_quality(gen_dir / "candidates.jsonl", gt, vocab, files))
    return out


def _side_numbers(rows: list[tuple], prefix: str) -> dict[str, Any]:
    """CHAIR_i (mention-weighted), recall and mentions of the chosen and the rejected sides, and how often the
    chosen side is cleaner; each row is (chosen, rejected) as chair.caption_chair_i gives them."""
    n = len(rows)
    out: dict[str, Any] = {f"{prefix}n_pairs": n}
    for i, side in enumerate(("chosen", "rejected")):
        vals = [row[i] for row in rows]
        mentions = sum(v[2] for v in vals)
        out[f"{prefix}{side}_chair_i"] = sum(v[0] * v[2] for v in vals) / mentions if mentions else 0.0
        out[f"{prefix}{side}_recall"] = sum(v[1] for v in vals) / n if n else 0.0
        out[f"{prefix}{side}_mentions"] = mentions / n if n else 0.0
    out[f"{prefix}chosen_cleaner_rate"] = sum(c[0] < r[0] for c, r in rows) / n if n else 0.0
    out[f"{prefix}chosen_not_worse_rate"] = sum(c[0] <= r[0] for c, r in rows) / n if n else 0.0
    return out


def _candidate_quality(path: Path, gt: dict, vocab: chair.Vocabulary, files: dict) -> dict:
    cleanest = n = 0
    all_ci = []
    for rec in read_jsonl(path):
        key = image_key(rec.get("image", ""), files)
        answers = rec.get("answers") or []
        if key not in gt or not answers or rec.get("chosen") is None:
            continue
        ci = [chair.caption_chair_i(a.get("text", ""), gt[key], vocab)[0] for a in answers]
        all_ci.extend(ci)
        n += 1
        cleanest += ci[rec["chosen"]] <= min(ci)
    return {"chosen_is_cleanest_rate": cleanest / n if n else 0.0,
            "candidates_mean_chair_i": sum(all_ci) / len(all_ci) if all_ci else 0.0}


def score_pairs(args) -> dict:
    """Pair quality against ground truth for every generate directory of a run; prints and returns it."""
    vocab, instances, gt = _load_gt(args)
    files = file_ids(instances)
    greedy = None
    if args.greedy:
        greedy = {image_key(s.get("image", s.get("image_id", "")), files): s.get("answer", "")
                  for s in read_jsonl(args.greedy) if s.get("task", "chair") == "chair"}
    result = {name: pair_quality(d, gt, vocab, files, greedy) for name, d in generate_dirs(args.run_dir)}
    cols = ["n_pairs", "chosen_chair_i", "rejected_chair_i", "chosen_recall", "rejected_recall", "chosen_cleaner_rate"]
    if greedy is not None:
        cols.append("chosen_cleaner_than_greedy_rate")
    if any("sentence_n_pairs" in r for r in result.values()):
        cols += ["sentence_n_pairs", "sentence_chosen_chair_i", "sentence_rejected_chair_i",
                 "sentence_chosen_cleaner_rate"]
    _print_table([[name] + [r.get(c, "") for c in cols] for name, r in result.items()], ["round"] + cols)
    for name, r in result.items():
        if r.get("n_pairs") and (line := health.pairs_line(name, r.get("chosen_chair_i"), r.get("rejected_chair_i"))):
            print(line)
    return result


# ---------------------------------------------------------------------------- clip


def score_clip(args) -> dict:
    """R_I of a CLIP on a labelled calibration file: AUC, suggested tau, false-positive rates."""
    from .calibration import calibration_scores, read_calibration
    from .scorer import ScorerSpec, build_scorer

    records = read_calibration(args.calibration, args.image_root)
    present, absent = calibration_scores(build_scorer(ScorerSpec(args.scorer, args.clip, args.device)), records)
    out = clip_summary(present, absent, args.tau, args.sd, args.rule)
    rows = [["present R_I mean / sd", f"{out['present']['mean']:.2f} / {out['present']['sd']:.2f}"],
            ["absent R_I mean / sd", f"{out['absent']['mean']:.2f} / {out['absent']['sd']:.2f}"],
            ["AUC", out["auc"] if out["auc"] is not None else "- (needs present and absent sentences)"],
            [f"suggested tau ({out['tau_rule']})", out["suggested_tau"]],
            ["FPR at suggested tau", out["fpr_at_suggested_tau"]]]
    if args.tau is not None:
        rows.append([f"FPR at tau={args.tau}", out["fpr_at_tau"]])
    _print_table(rows, ["measure", "value"])
    if line := health.scorer_line(out["auc"], args.calibration):
        print(line)
    return out
