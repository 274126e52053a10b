"""The loop's record of itself: manifest.json (config, versions, seeds, per-stage status/time/memory) and summaries.

`Manifest.stage(name)` is a context manager around one stage: it records status "running", then
"done" (or "failed") with the wall time and the process's peak memory. The manifest is rewritten
atomically after every change, so a killed loop leaves the status of the stage it was in. Peak
memory is `resource.getrusage(RUSAGE_SELF).ru_maxrss`, the peak RSS of the whole loop process
so far (it only grows), plus the peak CUDA memory of the stage when a GPU is used.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

from . import layout
from .config import to_dict
from .console import label
from .data import DONE_MARKER, write_json
from .schema import RunConfig
from .tables import cell

PACKAGES = ("csr-vlm", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers", "pillow")


def versions() -> dict[str, str]:
    """Python and the versions of the packages that decide a run's numbers."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class Manifest:
    """manifest.json of a loop directory; keeps stage entries of earlier runs so resumes add to them."""

    def __init__(self, out: Path, cfg: RunConfig, write: bool = True):
        self.path, self.write = out / "manifest.json", write  # under torchrun only rank 0 writes it
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data: dict[str, Any] = {
            "config": to_dict(cfg), "versions": versions(), "seeds": {"seed": cfg.seed},
            "stages": old.get("stages", {}), "rounds": old.get("rounds", {}), "best_round": old.get("best_round"),
            "started": old.get("started", time.strftime("%Y-%m-%d %H:%M:%S")), "finished": None,
        }
        self.save()

    def save(self) -> None:
        if self.write:
            write_json(self.path, self.data)

    def forget_from(self, round_k: int) -> None:
        """Drop the stage and round entries of round_k and later (they are being redone)."""
        keep = lambda key: layout.round_of(key) < round_k  # noqa: E731
        self.data["stages"] = {k: v for k, v in self.data["stages"].items() if keep(k)}
        self.data["rounds"] = {k: v for k, v in self.data["rounds"].items() if int(k) < round_k}
        self.save()

    def skipped(self, name: str, stage_dir: Path) -> None:
        entry = self.data["stages"].setdefault(name, {})
        entry.update(status="done", resumed=True, dir=str(stage_dir))
        self.save()

    @contextmanager
    def stage(self, name: str, stage_dir: Path):
        import torch

        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        entry = {"status": "running", "dir": str(stage_dir), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.data["stages"][name] = entry
        self.save()
        start = time.time()
        try:
            yield entry
        except BaseException as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            raise
        else:
            entry["status"] = "done"
        finally:
            entry.update(seconds=round(time.time() - start, 2), peak_rss_mb=peak_rss_mb())
            if cuda:
                entry["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
            self.save()

    def finish(self, best_round: int | None) -> None:
        self.data.update(best_round=best_round, finished=time.strftime("%Y-%m-%d %H:%M:%S"))
        self.save()


# ---------------------------------------------------------------------------- summaries


def key_numbers(stage_dir: Path) -> dict[str, Any]:
    """Numbers a stage reports: its DONE info, generate's stats.json counts, an evaluation's "flat" metrics."""
    numbers: dict[str, Any] = {}
    for name in (DONE_MARKER, "stats.json", "metrics.json"):
        path = stage_dir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text() or "{}")
            except json.JSONDecodeError:
                continue
            data = data.get("flat", data) if name == "metrics.json" else {**data.get("counts", {}), **data}
            numbers.update({k: v for k, v in data.items()
                            if isinstance(v, (int, float)) and k not in ("round", "seconds", "wall_s", "world_size")})
    return numbers


def summary_line(name: str, seconds: float | None, numbers: dict[str, Any], limit: int = 8) -> str:
    """One line such as `[round_1/train] 12.3s: pairs=400, ...` (at most `limit` numbers; in the demo the label
    names the arm: `[csr round_1/train] ...`)."""
    took = "reused (already done)" if seconds is None else f"{seconds:.1f}s"
    shown = ", ".join(f"{k}={cell(v)}" for k, v in list(numbers.items())[:limit])
    return f"{label(name)} {took}" + (f": {shown}" if shown else "")
