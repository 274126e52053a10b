"""The calibrated sentence-level search, split at the engine seam.

An engine (hf_engine.py: transformers with cached keys/values; engine.py says what any engine must do)
turns each live partial answer into candidate next sentences: token ids and their raw log-probs.
Everything else is engine-free: driver.py runs several prompts' searches in lock step, paper.py
scores candidates with the calibrated reward and prunes (the paper), official.py grows and ranks
the official code's tree, filters.py drops junk sentences, types.py holds the records they share.

    from csr_vlm.search.driver import search_prompts
"""
