"""The calibrated sentence-level search, split at the engine seam.

An engine (engine.py says what any engine must do; build.py picks one) turns each live partial answer into
candidate next sentences: token ids and their raw log-probs. hf_engine.py runs transformers with cached
keys/values (hf_decode.py, kvcache.py; cache_check.py its start-up check), vllm_engine.py runs vLLM.
Everything else is engine-free: driver.py runs several prompts' searches in lock step, paper.py
scores candidates with the calibrated reward and prunes (the paper), official.py grows and ranks
the official code's tree (both drop junk sentences with ../filters.py), types.py holds the records they share.
The image-text scorer comes in through ../scorer.py's interface, the engine through engine.py's.

    from csr_vlm.search.driver import search_prompts
"""
