"""Stream an answer from the embedded pair and print every delegation as it happens.

Run: .venv/bin/python examples/stream_delegations.py "What is 15% of 80?"
"""

from __future__ import annotations

import sys
from typing import Any
from uuid import UUID

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_spthink import (
    ChatSpeculativeThinking,
    DelegationEvent,
    SpeculativeThinkingCallbackHandler,
    SpeculativeThinkingConfig,
)


class PrintDelegations(SpeculativeThinkingCallbackHandler):
    """Prints each step the large model wrote."""

    def on_delegation(self, event: DelegationEvent, *, run_id: UUID, **kwargs: Any) -> None:
        print(f"\n  [large model, {event.kind}: {event.large_text!r}]", file=sys.stderr)


def main(
    question: str, max_tokens: int = 120, config: SpeculativeThinkingConfig | None = None
) -> str:
    # Default: the judge policy (the large model scores each drafted step, writes the weak ones).
    config = config or SpeculativeThinkingConfig(policy="judge")
    llm = ChatSpeculativeThinking(config=config, temperature=0.0, max_tokens=max_tokens)
    chain = (
        ChatPromptTemplate.from_messages(
            [("system", "You are a careful math tutor."), ("human", "{question}")]
        )
        | llm
        | StrOutputParser()
    )
    answer = ""
    for piece in chain.stream({"question": question}, config={"callbacks": [PrintDelegations()]}):
        print(piece, end="", flush=True)
        answer += piece
    print()
    return answer


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "What is 15% of 80?")
