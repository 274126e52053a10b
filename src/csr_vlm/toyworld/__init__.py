"""The toy world: synthetic scenes in which a tiny LLaVA hallucinates, and the demo that shows CSR curing it.

scenes.py draws the world (types, co-occurrence pairs, images, captions, COCO-format split files);
clip.py trains its tiny CLIP; llava.py its tiny LLaVA on that CLIP's vision encoder; measure.py
measures a LLaVA on a split; build.py is `csr toyworld build`; demo.py is `csr demo`. Nothing in the
stages knows this world: it is COCO-format files and Hugging Face checkpoints like any other.
"""
