"""The configuration key reference, docs/config.md, generated from the schema (one source of truth).

    python -m csr_vlm.reference --write docs/config.md     # regenerate after changing a field or its docstring

Each section gets its docstring, the stages that read it (their `READS`), and one row per key: the key,
its default, its allowed values and its docstring. A test compares docs/config.md with `markdown()` and
fails, with the command above, when the page is stale.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from pathlib import Path

from .config import field_docs, keys, reads, shown
from .schema import RunConfig

STAGE_MODULES = {"generate": "csr_vlm.generate", "train": "csr_vlm.train", "eval": "csr_vlm.evaluate",
                 "loop": "csr_vlm.loop"}
"""The stage commands and the modules whose `READS` say which config sections each reads."""
REGENERATE = "python -m csr_vlm.reference --write docs/config.md"


def stage_reads(stage: str) -> tuple[str, ...]:
    """The config sections (or dotted keys) a stage command reads: its module's READS."""
    return tuple(importlib.import_module(STAGE_MODULES[stage]).READS)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The whole reference page."""
    readers = {stage: stage_reads(stage) for stage in STAGE_MODULES}
    hints = typing.get_type_hints(RunConfig)
    section_docs = field_docs(RunConfig)
    rows = keys()
    lines = ["# Configuration keys", "",
             f"Generated from the schema (`src/csr_vlm/schema/`) by `{REGENERATE}`; do not edit by hand.", "",
             "Every stage command takes `--config FILE` and `section.key=value` overrides (values parsed as YAML:",
             "`3`, `0.9`, `true`, `[q_proj,v_proj]`, `{recall: 0.9}`). `csr <stage> --help` lists the keys that stage",
             "reads; `csr <stage> --check` prints the resolved config and checks every input without loading a model.",
             ""]
    top = [f.name for f in dataclasses.fields(RunConfig) if not dataclasses.is_dataclass(hints[f.name])]
    sections = [f.name for f in dataclasses.fields(RunConfig) if dataclasses.is_dataclass(hints[f.name])]
    lines += ["Sections: the top level, then " + ", ".join(f"[`{name}`](#{name})" for name in sections) + ".", ""]
    for name in [None, *sections]:
        title = "Top level" if name is None else f"`{name}`"
        doc = "Where the results go, the seed, and whether finished work is redone." if name is None \
            else section_docs.get(name, "")
        in_section = [r for r in rows if (r[0] in top if name is None else r[0].startswith(name + "."))]
        users = [s for s, only in readers.items() if any(reads(r[0], only) for r in in_section)]
        lines += [f"## {title}", "", f"{doc} Read by: {', '.join(f'`csr {s}`' for s in users)}.", "",
                  "| key | default | allowed | meaning |", "|---|---|---|---|"]
        for key, default, allowed, text in in_section:
            lines.append(f"| `{key}` | `{_cell(shown(default))}` | {_cell(', '.join(allowed))} | {_cell(text)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m csr_vlm.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--write", metavar="PATH", help="write the page here (default: print it)")
    args = parser.parse_args(argv)
    text = markdown()
    if args.write:
        Path(args.write).write_text(text)
        print(f"wrote {args.write}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
