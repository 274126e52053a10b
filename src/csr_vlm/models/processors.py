"""Loading a model's processor everywhere, torchvision or not.

transformers' Qwen2.5-VL and Qwen3-VL processors hold a video processor that needs torchvision, and
transformers treats every sub-processor as required: without torchvision, `AutoProcessor.from_pretrained`
of a Qwen checkpoint raises ImportError (and no Qwen processor can even be built). CSR never feeds
videos, so where torchvision is missing we load the same processor without its video part: a subclass
whose `__init__` names only the image processor and the tokenizer, so images and text are processed by
the library's own code exactly as with the full class, and videos raise a clear error. Saving it writes
what the full class writes (its class name and the video processor's settings), so the folder loads
as the real processor wherever torchvision is installed. With torchvision nothing here runs: the
library's classes load as usual. Any other loading failure is turned into one line by the caller.

    processor = load_processor("Qwen/Qwen2.5-VL-7B-Instruct")
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_IMAGES_ONLY: dict[str, type] = {}
"""The images-only subclass of each processor class, made once."""

VIDEO_PROCESSOR_NEEDS_TORCHVISION = ("Qwen2_5_VLProcessor", "Qwen2VLProcessor", "Qwen3VLProcessor")


def images_only_class(name: str) -> type:
    """The processor class `name` (e.g. "Qwen2_5_VLProcessor") without its video processor."""
    if name not in _IMAGES_ONLY:
        import transformers

        base = getattr(transformers, name)

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            # ProcessorMixin reads its sub-processors from this signature: (image_processor, tokenizer).
            base.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)
            self.video_settings: dict[str, Any] = {}

        def __call__(self, images=None, text=None, videos=None, **kwargs):
            if videos is not None:
                raise ImportError(f"{name} needs torchvision to process videos (pip install torchvision)")
            return base.__call__(self, images=images, text=text, **kwargs)

        def save_pretrained(self, save_directory, *args, **kwargs):
            out = base.save_pretrained(self, save_directory, *args, **kwargs)
            write_as_full_class(Path(save_directory), name, self.video_settings)
            return out

        _IMAGES_ONLY[name] = type(f"{name}ImagesOnly", (base,), {
            "__init__": __init__, "__call__": __call__, "save_pretrained": save_pretrained,
            "__doc__": f"{name} for images and text only (its video processor needs torchvision)."})
    return _IMAGES_ONLY[name]


def write_as_full_class(directory: Path, name: str, video_settings: dict[str, Any]) -> None:
    """Make a saved images-only processor read as the full class: its name, and the video processor's settings."""
    for file, extra in (("processor_config.json", {"video_processor": video_settings}), ("tokenizer_config.json", {})):
        path = directory / file
        if not path.is_file():
            continue
        data = json.loads(path.read_text())
        data["processor_class"] = name
        data.update({k: v for k, v in extra.items() if v})
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_processor(path: str, trust_remote_code: bool = False):
    """AutoProcessor.from_pretrained(path), or, where that fails for want of torchvision on a processor whose only
    use of it is videos, the same processor for images and text.

    Raises:
        ImportError: torchvision is missing and the processor needs it for more than videos.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ImportError as exc:
        if "torchvision" not in str(exc).lower():
            raise
        config = _processor_config(path)
        name = config.get("processor_class", "")
        if name not in VIDEO_PROCESSOR_NEEDS_TORCHVISION:
            raise ImportError(f"{name or 'its processor'} needs torchvision (pip install torchvision)") from None
        log.info("%s: torchvision is not installed; loading %s for images and text only", path, name)
        processor = images_only_class(name).from_pretrained(path)
        processor.video_settings = config.get("video_processor") or {}
        return processor


def _processor_config(path: str) -> dict:
    """processor_config.json of a local folder or a hub id (from the local cache only when offline)."""
    local = Path(path) / "processor_config.json"
    if local.is_file():
        return json.loads(local.read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(path, "processor_config.json")).read_text())
