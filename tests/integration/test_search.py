"""The search: cached continuation == re-encoding, beam widths, determinism, official ranks, filters, repeats.

    .venv/bin/python -m pytest tests/integration/test_search.py
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close
from PIL import Image

from csr_vlm.config import ModelConfig, RewardConfig, SearchConfig
from csr_vlm.filters import junk_reason
from csr_vlm.models import ClipScorer, load_policy
from csr_vlm.search.driver import search_prompt, search_prompts
from csr_vlm.search.hf_decode import TokenRules, _choose, expand, prefill, select
from csr_vlm.search.hf_engine import HFEngine
from csr_vlm.search.official import Node, path_answers, rank_tree
from csr_vlm.search.paper import is_repeat, score_step
from csr_vlm.search.types import Answer, Candidate, Query, Sentence, TokenCounter

PROMPT = "Describe this image."


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: one intra-op thread is several times faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loaded(tiny_llava, tiny_gemma3):
    out = {}
    for name, d in (("llava", tiny_llava), ("gemma3", tiny_gemma3)):
        out[name] = (load_policy(ModelConfig(path=str(d / "policy"))), ClipScorer(str(d / "clip")),
                     Image.open(d / "images" / "000.png").convert("RGB"))
    return out


def _greedy_reencoded(policy, image, prefix: list[int], stops: set[int], suppress: list[int], n: int) -> list[int]:
    """Reference: re-encode image + prompt + tokens so far at every step (no cache), take the argmax."""
    batch = policy.encode([image], [PROMPT])
    out: list[int] = []
    for _ in range(n):
        extra = torch.tensor([prefix + out], dtype=torch.long)
        inputs = dict(batch)
        inputs["input_ids"] = torch.cat([batch["input_ids"], extra], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "token_type_ids" in batch:
            inputs["token_type_ids"] = torch.cat([batch["token_type_ids"], torch.zeros_like(extra)], dim=1)
        with torch.inference_mode():
            logits = policy.model(**inputs).logits[0, -1].float()
        logits = logits.clone()
        logits[suppress] = float("-inf")
        out.append(int(logits.argmax()))
        if out[-1] in stops:
            break
    return out


@pytest.mark.parametrize("family", ["llava", "gemma3"])
def test_cached_continuation_equals_reencoding(loaded, family):
    """Three diverse first sentences that stop at different lengths (holes in the batched cache), then greedy
    second and third sentences for every row: each equals decoding by re-encoding the whole text, token for token."""
    policy, _, image = loaded[family]
    suppress = policy.suppressed_ids()
    diverse = SearchConfig(sampler="diverse_beam", num_candidates=3, max_new_tokens=4)
    probe = expand(policy, prefill(policy, image, PROMPT, TokenCounter()), diverse, TokenRules([], [], suppress), None,
                   TokenCounter())
    # stop row 0 after its first token and row 1 after its third: ragged rows (holes in the batched cache)
    stops = {probe[0].tokens[0], probe[1].tokens[2]} | set(policy.eos_ids)
    counter = TokenCounter()
    state = prefill(policy, image, PROMPT, counter)
    first = expand(policy, state, diverse, TokenRules(sorted(stops), policy.eos_ids, suppress), None, counter)
    assert len({len(c.tokens) for c in first}) > 1, "rows must stop at different lengths for this test to bite"
    greedy = SearchConfig(sampler="diverse_beam", num_candidates=1, diversity_penalty=0.0, max_new_tokens=4)
    second = expand(policy, state, greedy, TokenRules(sorted(stops), policy.eos_ids, suppress), None, counter)
    for c1, c2 in zip(first, second):
        assert c2.tokens == _greedy_reencoded(policy, image, c1.tokens, stops, suppress, 4)
    state = select(state, [2, 0])  # batch_select_indices + crop of columns no survivor uses
    third = expand(policy, state, greedy, TokenRules(sorted(stops), policy.eos_ids, suppress), None, counter)
    for row, c3 in zip([2, 0], third):
        prefix = first[row].tokens + second[row].tokens
        assert c3.tokens == _greedy_reencoded(policy, image, prefix, stops, suppress, 4)
    assert counter.prompt == policy.encode([image], [PROMPT])["input_ids"].shape[1]
    assert counter.generated == sum(len(c.tokens) for c in first + second + third)


def test_offer_end_makes_every_kth_candidate_the_end_with_its_real_logprob(loaded):
    """Two partial answers, 4 candidates each with offer_end: candidates 3 and 7 are EOS alone (stop "eos"),
    each with log p(EOS | image, prompt, that answer) as a full re-encode computes it; the other three per
    answer are the very sentences sampling draws without offer_end (same generator, same draws; log-probs equal
    to float rounding: the EOS rows stop at once and leave the batch, so the others go through in a smaller one)."""
    policy, _, image = loaded["llava"]
    suppress, eos = policy.suppressed_ids(), policy.eos_ids
    stops = sorted({i for i in range(len(policy.tokenizer)) if i % 5 == 0} | set(eos))
    runs = []
    for offer in (False, True):
        state = prefill(policy, image, PROMPT, TokenCounter())
        first = expand(policy, state, SearchConfig(sampler="diverse_beam", num_candidates=2, max_new_tokens=4),
                       TokenRules(stops, eos, suppress), None, TokenCounter())
        cfg = SearchConfig(num_candidates=4, max_new_tokens=3, temperature=1.0, offer_end=offer)
        runs.append(expand(policy, state, cfg, TokenRules(stops, eos, suppress), torch.Generator().manual_seed(1),
                           TokenCounter()))
    plain, offered = runs
    batch = policy.encode([image], [PROMPT])
    for k, (a, b) in enumerate(zip(plain, offered)):
        if k % 4 != 3:
            assert (a.tokens, a.stop) == (b.tokens, b.stop)  # the EOS rows leave the cache (ragged.py): other
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)  # batch shapes, so float rounding differs
            continue
        assert b.tokens == [eos[0]] and b.stop == "eos"
        inputs = dict(batch)
        inputs["input_ids"] = torch.cat([batch["input_ids"], torch.tensor([first[k // 4].tokens])], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        with torch.inference_mode():
            logp = torch.log_softmax(policy.model(**inputs).logits[0, -1].float(), dim=-1)
        assert b.logprobs == pytest.approx([float(logp[eos[0]])], abs=1e-4)


def _search(policy, scorer, image, search: SearchConfig, seed: int, reward: RewardConfig | None = None):
    reward = reward if reward is not None else RewardConfig()
    return search_prompt(HFEngine(policy, search), scorer, Query(image, PROMPT, seed), search, reward)


def test_paper_search_keeps_top_and_bottom_and_is_seeded(loaded):
    """K 3, keep 1 + 1, 3 sentences: 3 children, 2 kept -> 6 children, 2 kept -> 6 complete answers of 3
    sentences (when no EOS comes earlier). Same seed, same answers; another seed, other answers."""
    policy, scorer, image = loaded["llava"]
    cfg = SearchConfig(filters=[], num_candidates=3, keep_top=1, keep_bottom=1, max_sentences=3, max_new_tokens=4,
                       temperature=1.5)
    result = _search(policy, scorer, image, cfg, seed=7)
    full = [a for a in result.answers if len(a.sentences) == 3]
    assert len(full) + sum(a.ended for a in result.answers) == len(result.answers) and len(full) <= 6
    assert len(full) == 6 - result.stats["events"].get("duplicate", 0)
    rewards = [a.reward for a in result.answers]
    assert rewards[result.chosen] == max(rewards) and rewards[result.rejected] == min(rewards)
    for a in result.answers:  # cumulative R is the sum of the sentences' R
        assert a.reward == pytest.approx(sum(s.r for s in a.sentences))
        assert all(s.r == pytest.approx(0.9 * s.r_i + 0.1 * s.r_t) for s in a.sentences)
    again = _search(policy, scorer, image, cfg, seed=7)
    assert [a.to_dict() for a in again.answers] == [a.to_dict() for a in result.answers]
    other = _search(policy, scorer, image, cfg, seed=8)
    assert [a.text for a in other.answers] != [a.text for a in result.answers]


def test_official_search_prunes_to_one_best_two_worst(loaded):
    """5 diverse beams from the root; the pool of 5 (>= num_candidates) keeps the best + the 2 worst by
    cumulative self-score; 3 x 5 children at the last depth are final: 1 + 5 + 15 = 21 nodes."""
    policy, scorer, image = loaded["gemma3"]
    cfg = SearchConfig(filters=[], mode="official", sampler="diverse_beam", num_candidates=5, keep_top=1,
                       keep_bottom=2, max_sentences=2, max_new_tokens=3)
    result = _search(policy, scorer, image, cfg, seed=0)
    tree = result.tree
    depth1 = [n for n in tree if n["parent"] == 0]
    # seed 0 on the fixed tiny model proposes no EOS at depth 1, so the pool has exactly 5 members
    assert not any(n["final"] for n in depth1), "setup changed: an EOS at depth 1 shrinks the pool"
    assert len(tree) == 21
    kept = sorted(n["cum_r_t"] for n in depth1 if not n["pruned"])
    scores = sorted(n["cum_r_t"] for n in depth1)
    assert kept == [scores[0], scores[1], scores[4]]
    assert len(result.answers) == 15
    values = [a.extra["path_value"] for a in result.answers]
    assert values[result.chosen] == min(values) and values[result.rejected] == max(values)


def test_official_rank_mix_on_a_hand_built_tree():
    """root -> A (cum -1, clip 30), B (cum -2, clip 25, final), C (cum -3, clip 28, pruned), F (filtered);
    A -> D (cum -1.5, clip 20, final), E (cum -2.5, clip 22, final). lam 0.9.
    Root siblings (F does not count): rank A 1/3, B 2/3, C 1; clip rank A 1/3, C 2/3, B 1.
    A's children: rank D 1/2, E 1; clip rank E 1/2, D 1.
    Node values: A 0.1/3 + 0.9/3 = 0.33333; B 0.1 * 2/3 + 0.9 = 0.96667; D 0.05 + 0.9 = 0.95; E 0.1 + 0.45 = 0.55.
    Paths (depth-first): A-D (0.33333 + 0.95) / 3 = 0.42778; A-E (0.33333 + 0.55) / 3 = 0.29444;
    B 0.96667 / 2 = 0.48333.
    Chosen = lowest = A-E, rejected = highest = B."""
    tree = [Node(0, None, children=[1, 2, 3, 6]),
            Node(1, 0, "A.", cum=-1.0, r_i=30.0, children=[4, 5]),
            Node(2, 0, "B.", cum=-2.0, r_i=25.0, final=True),
            Node(3, 0, "C.", cum=-3.0, r_i=28.0, pruned=True),
            Node(4, 1, "D.", cum=-1.5, r_i=20.0, final=True),
            Node(5, 1, "E.", cum=-2.5, r_i=22.0, final=True),
            Node(6, 0, "tttttttttttt", cum=0.0, r_i=99.0, filtered="char_repeat")]
    rank_tree(tree)
    assert (tree[1].rank, tree[2].rank, tree[3].rank) == pytest.approx((1 / 3, 2 / 3, 1.0))
    assert (tree[1].clip_rank, tree[3].clip_rank, tree[2].clip_rank) == pytest.approx((1 / 3, 2 / 3, 1.0))
    answers = path_answers(tree, lam=0.9)
    values = [a.extra["path_value"] for a in answers]
    assert values == pytest.approx([0.427778, 0.294444, 0.483333], abs=1e-6)
    assert [a.extra["node"] for a in answers] == [4, 5, 2]
    assert answers[1].sentences[1].r == pytest.approx(0.55)


@pytest.mark.parametrize("text, expected", [
    ("A dog sits on the grass.", None),
    ("Это собака.", "script"), ("개가 있다.", "script"), ("これは犬です。", "script"),
    ("A happy dog \U0001F600.", "emoji"),
    ("the dog dog dog dog dog dog ran", "word_repeat"), ("the dog dog dog dog dog ran", None),
    ("so cool!!!!!!!!!!!", "char_repeat"), ("so cool!!!!!!!!!!", None),
    ("a\nb\nc\nd\ne\nf\ng", "newlines"), ("a\nb\nc\nd\ne\nf", None),
    ("Hi.", "short"), ("Hey.", None),
])
def test_junk_filters(text, expected):
    """word_repeat: 6 in a row (5 is fine); char_repeat: 11 (10 is fine); newlines: 6 (> 5); short: < 4 chars."""
    names = ["script", "emoji", "word_repeat", "char_repeat", "newlines", "short"]
    assert junk_reason(text, names, min_chars=4) == expected
    assert junk_reason(text, [], min_chars=4) is None


def test_repeat_detection():
    said = ["There is a dog on the grass.", "A red car is parked."]
    assert is_repeat("there is a dog on the grass", said)  # same normalised text
    assert is_repeat("The car is red.", said)  # content words car, red already covered
    assert not is_repeat("A cat sleeps on the car.", said)  # cat, sleeps are new
    assert not is_repeat("A dog.", [])


class _StubCtx:
    """What score_step asks of a SearchContext: settings, decode, CLIP scores, event counters."""

    def __init__(self, search, reward, texts, clip):
        from collections import Counter

        self.search, self.reward, self.texts, self.clip, self.events = search, reward, texts, clip, Counter()

    def decode(self, tokens):
        return self.texts[tokens[0]] if tokens[0] in self.texts else ""

    def score(self, emb, texts):
        return [self.clip[t] for t in texts]


@pytest.mark.parametrize("end_reward, end_self_score, end_r",
                         [("neutral", True, -0.1), ("zero", True, -1.9), ("neutral", False, 0.0)])
def test_step_reward_end_and_repeat_are_neutral(end_reward, end_self_score, end_r):
    """center, tau 20, scale 10, lam 0.9; every sentence has mean log-prob -1 -> (1 - lam) * R_T = -0.1.
    "A dog." repeats the answer -> R_I = tau -> 0.9 * 0 - 0.1 = -0.1.
    "A red car." CLIP 35 -> 0.9 * (35 - 20) / 10 - 0.1 = 1.25.
    "Blue sky." CLIP -5 -> clamped to 0 -> 0.9 * (0 - 20) / 10 - 0.1 = -1.9.
    EOS alone ends the answer: neutral -> R_I = tau -> -0.1; zero -> R_I = 0 -> -1.9;
    neutral without the end's self-score (R_T 0) -> exactly 0."""
    reward = RewardConfig(lam=0.9, normalize="center", tau=20.0, scale=10.0, end_reward=end_reward,
                          end_self_score=end_self_score, self_score="mean")
    ctx = _StubCtx(SearchConfig(filters=[]), reward, {1: "A dog.", 2: "A red car.", 4: "Blue sky."},
                   {"A red car.": 35.0, "Blue sky.": -5.0})
    parent = Answer(sentences=[Sentence("There is a dog.", -1.0, 30.0, 1.0)], reward=1.0)
    cands = [Candidate(0, [1], [-1.0], "delimiter"), Candidate(0, [2], [-0.5, -1.5], "delimiter"),
             Candidate(0, [3], [-1.0], "eos"), Candidate(0, [4], [-1.0], "delimiter")]
    out = score_step(ctx, [parent], cands, None)
    assert [a.sentences[-1].r for a in out] == pytest.approx([-0.1, 1.25, end_r, -1.9])
    assert [a.reward for a in out] == pytest.approx([0.9, 2.25, 1 + end_r, -0.9])  # cumulative: 1 + R
    assert out[0].sentences[-1].repeat and out[2].sentences[-1].end and out[2].ended
    assert out[3].sentences[-1].r_i == 0.0


def test_diverse_beam_penalises_tokens_earlier_groups_took():
    """One parent, 2 groups, log-probs [-0.1, -0.5, -3]. Group 0 takes token 0.
    penalty 3: group 1 sees [-3.1, -0.5, -3] -> token 1. penalty 0.3: [-0.4, -0.5, -3] -> token 0 again."""
    logp = torch.tensor([[-0.1, -0.5, -3.0], [-0.1, -0.5, -3.0]])
    def pick(penalty, suppress):
        return _choose(logp, logp, SearchConfig(sampler="diverse_beam", diversity_penalty=penalty), suppress, 2)

    assert pick(3.0, []).tolist() == [0, 1]
    assert pick(0.3, []).tolist() == [0, 0]
    assert pick(3.0, [0]).tolist() == [1, 2]  # token 0 suppressed: group 0 takes 1, group 1 is pushed to 2


def test_top_p_sampling_never_leaves_the_nucleus():
    """probs [0.6, 0.3, 0.1] at temperature 1: top_p 0.5 keeps only token 0; top_p 0.8 keeps tokens 0 and 1."""
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).repeat(200, 1)
    gen = torch.Generator().manual_seed(0)
    rows = [(0, 200, gen)]
    assert set(_choose(logits, logits, SearchConfig(temperature=1.0, top_p=0.5), [], 1, rows).tolist()) == {0}
    assert set(_choose(logits, logits, SearchConfig(temperature=1.0, top_p=0.8), [], 1, rows).tolist()) == {0, 1}


@pytest.mark.parametrize("family", ["llava", "gemma3"])
@pytest.mark.parametrize("mode, sampler", [("paper", "sample"), ("paper", "diverse_beam"), ("official", "sample")])
def test_search_prompts_equal_one_at_a_time(loaded, family, mode, sampler):
    """3 prompts of different lengths (left-padded holes), frequent stops and EOS (rows and whole prompts end at
    different tokens and depths): search_prompts gives each prompt the texts, tokens, choices and token counts that
    search_prompt gives it alone, in either batch order (each prompt samples with its own generator)."""
    policy, scorer, image = loaded[family]
    special = set(policy.tokenizer.all_special_ids)
    words = [i for i in range(len(policy.tokenizer)) if i not in special]
    cfg = SearchConfig(filters=[], mode=mode, sampler=sampler, num_candidates=3, keep_top=1, keep_bottom=1,
                       max_sentences=3, max_new_tokens=6, temperature=1.5, delimiters=["."])
    engine = HFEngine(policy, cfg)
    engine.eos_ids = sorted({i for i in words if i % 4 == 0} | set(policy.eos_ids))  # frequent ends: ragged rows
    engine.bounds = [i for i in words if i % 3 == 1]
    images = [image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), image]
    prompts = [PROMPT, "What do you see in this picture, in a few words?", "Hi"]
    seeds = [3, 4, 5]
    reward = RewardConfig()
    queries = [Query(im, p, s) for im, p, s in zip(images, prompts, seeds)]
    alone = [search_prompt(engine, scorer, q, cfg, reward) for q in queries]
    together = search_prompts(engine, scorer, queries, cfg, reward)
    backwards = search_prompts(engine, scorer, queries[::-1], cfg, reward)[::-1]
    assert len({r.stats["tokens_prompt"] for r in alone}) == 3, "prompts of different lengths: padding must bite"
    depths = {len(a.sentences) for r in alone for a in r.answers if a.ended}
    assert depths and min(depths) < 3, "some answers must end before max_sentences"
    for one, batch in [(a, b) for a, b in zip(alone, together)] + [(a, b) for a, b in zip(alone, backwards)]:
        assert [a.text for a in batch.answers] == [a.text for a in one.answers]
        assert [a.tokens for a in batch.answers] == [a.tokens for a in one.answers]
        assert (batch.chosen, batch.rejected) == (one.chosen, one.rejected)
        assert_close([a.to_dict() for a in batch.answers], [a.to_dict() for a in one.answers])
        assert_close(batch.tree, one.tree)
        for key in ("tokens_minimal", "tokens_prompt", "tokens_generated"):
            assert batch.stats[key] == one.stats[key], key
        assert batch.stats["tokens_forwarded"] >= one.stats["tokens_forwarded"]
        assert batch.stats["events"] == one.stats["events"]
