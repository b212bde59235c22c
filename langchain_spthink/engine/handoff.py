"""Keeping each model's token sequence in step with the shared output text.

Same tokenizer: the output ids are shared and handed over as ids. Different tokenizers: each
model keeps its own ids; when it falls behind it re-tokenizes the output text, keeps the longest
common prefix of ids with what it already has (tokenization is not compositional at a seam, so
the last ids before the seam may change), truncates to it and extends with the rest.
"""

from __future__ import annotations

from collections.abc import Sequence

from langchain_spthink.backends.base import Session

__all__ = ["common_prefix_length", "resync"]


def common_prefix_length(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """Length of the longest common prefix of ``a`` and ``b``, given they agree before ``start``."""
    n = min(len(a), len(b))
    i = min(start, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i


def resync(session: Session, prompt_len: int, target_output: Sequence[int], hint: int = 0) -> int:
    """Make ``session.ids == prompt + target_output`` reusing the longest agreeing prefix.

    Args:
        session: The model's session; its first ``prompt_len`` ids are the prompt.
        prompt_len: Number of prompt ids.
        target_output: The output ids the session must hold after the call.
        hint: A count of leading output ids known to agree already.

    Returns:
        Number of ids appended (the catch-up the model will forward).
    """
    current = session.ids[prompt_len:]
    keep = common_prefix_length(current, target_output, hint)
    if keep < len(current):
        session.truncate(prompt_len + keep)
    missing = target_output[keep:]
    if missing:
        session.extend(missing)
    return len(missing)
