"""An independent, deliberately naive re-computation of the reference algorithm (ALGORITHM.md).

No caches, no sessions, no incremental decoding: every token is chosen by calling
``next_token(full_sequence)``, and every decision is re-derived from decoded text. Same-tokenizer
pairs only (one shared id list), greedy decoding. Used to check the engine decision for decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from langchain_spthink.engine.config import SpeculativeThinkingConfig

NextToken = Callable[[list[int]], int]


def _count(text: str, words: Sequence[str]) -> int:
    low = text.lower()
    return sum(low.count(w.lower()) for w in words)


def label(text: str, cfg: SpeculativeThinkingConfig) -> int:
    pos = _count(text, cfg.positive_words)
    neg = _count(text, cfg.negative_words) + _count(text, cfg.verify_words)
    if pos > neg:
        return 1
    if neg > pos or pos > 0:
        return -1
    return 0


@dataclass
class Outcome:
    text: str = ""
    reason: str = ""
    decisions: list[tuple[str, str, str]] = field(default_factory=list)  # kind, kept, large text


class _Done(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


def reference_run(
    small: NextToken,
    large: NextToken,
    small_prompt: list[int],
    large_prompt: list[int],
    *,
    encode: Callable[[str], list[int]],
    decode: Callable[[list[int]], str],
    eos: frozenset[int],
    cfg: SpeculativeThinkingConfig,
    max_tokens: int,
) -> Outcome:
    out: list[int] = []
    written = [0]  # generated tokens in the output
    result = Outcome()

    def round_start(since: int) -> int:
        """Start of the current round: after the last trigger in the output text since ``since``.

        A trigger that straddles what other writers kept and what the small model writes next
        (a kept step ending in "\n", the small model's "\n") is a boundary like any other.
        """
        text = decode(out)
        ends = [text.rfind(t, since) + len(t) for t in cfg.triggers if text.find(t, since) >= 0]
        return max([since, *ends])

    def gen(
        model: NextToken, prompt: list[int], n: int, trigger_from: int | None
    ) -> tuple[list[int], bool]:
        """``n`` tokens; with ``trigger_from``, stop at a trigger in the output text after it."""
        ids: list[int] = []
        start = None if trigger_from is None else round_start(trigger_from)
        for _ in range(max(0, min(n, max_tokens - written[0]))):
            token = model(prompt + out + ids)
            if token in eos:
                return ids, True
            ids.append(token)
            if start is not None and any(t in decode(out + ids)[start:] for t in cfg.triggers):
                break
        return ids, False

    def keep(ids: list[int], eos_hit: bool) -> None:
        out.extend(ids)
        written[0] += len(ids)
        if eos_hit:
            raise _Done("eos")
        if written[0] >= max_tokens:
            raise _Done("length")

    negatives, recap_budget, recap_after = 0, cfg.recap_tokens, cfg.recap_after_negatives
    try:
        bpos = 0  # output characters before the current boundary
        if cfg.begin and max_tokens // 2:  # the opening takes at most half the budget
            ids, e = gen(large, large_prompt, min(cfg.begin_tokens, max_tokens // 2), None)
            result.decisions.append(("begin", "large", decode(ids)))
            keep(ids, e)
        while True:
            ids, e = gen(small, small_prompt, max_tokens, bpos)  # small writes to a trigger
            keep(ids, e)
            while True:  # at a boundary
                bpos = len(decode(out))
                if negatives >= recap_after:
                    out.extend(encode(cfg.recap_prompt))
                    ids, e = gen(large, large_prompt, recap_budget, None)
                    result.decisions.append(("recap", "large", decode(ids)))
                    keep(ids, e)
                    negatives = 0
                    recap_budget = min(recap_budget + cfg.recap_tokens_step, cfg.recap_tokens_max)
                    recap_after = min(recap_after + cfg.recap_after_step, cfg.recap_after_max)
                    break
                if cfg.think_word:
                    out.extend(encode(cfg.think_word))
                draft, draft_eos = gen(small, small_prompt, cfg.draft_tokens, None)
                s = label(decode(draft), cfg)
                if not cfg.not_reasoning and s == 0:
                    # Thrown away and regenerated token by token up to the next trigger.
                    ids, e = gen(small, small_prompt, max_tokens, bpos)
                    keep(ids, e)
                    continue  # that trigger is a boundary again
                lids, large_eos = gen(large, large_prompt, cfg.draft_tokens, None)
                big = label(decode(lids), cfg)
                take_large = cfg.choose_large or (s < 0 <= big) or (s > 0 > big)
                kept, kept_eos = (lids, large_eos) if take_large else (draft, draft_eos)
                result.decisions.append(
                    ("reflection", "large" if take_large else "small", decode(lids))
                )
                keep(kept, kept_eos)
                kept_text = decode(kept)
                if label(kept_text, cfg) < 0:
                    negatives += 1
                if cfg.verify_tokens and _count(kept_text, cfg.verify_words):
                    ids, e = gen(large, large_prompt, cfg.verify_tokens, None)
                    result.decisions.append(("verify", "large", decode(ids)))
                    keep(ids, e)
                break
    except _Done as done:
        result.reason = done.reason
    result.text = decode(out)
    return result
