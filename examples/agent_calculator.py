"""An agent that solves a word problem with a calculator tool (LangGraph + speculative thinking).

The agent (langchain_spthink_integrations.langgraph.create_spthink_agent) forces a calculator call
on its first step (constrained decoding makes even the 135M model write a valid call), runs the
tool (a safe arithmetic evaluator, never eval), lets the model continue, and answers without tools
on its last step, so it always ends within --max-steps model calls. The large model's steps stream
as they happen (stream_mode="custom").

Run: .venv/bin/python examples/agent_calculator.py ["QUESTION"] [--max-steps 3] [--max-tokens 128]
     [--preset reasoning|instruct]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from langchain_spthink import ChatSpeculativeThinking
from langchain_spthink_integrations.langgraph import create_spthink_agent, stream_with_delegations
from langchain_spthink_integrations.math_tools import make_calculator_tool

# GSM8K test question 0 (see langchain_spthink/data/README.md for the dataset's attribution)
DEFAULT_QUESTION = (
    "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes "
    "muffins for her friends every day with four. She sells the remainder at the farmers' market "
    "daily for $2 per fresh duck egg. How much in dollars does she make every day at the "
    "farmers' market?"
)
SYSTEM = (
    "You solve math word problems. Use the calculator tool for the arithmetic: call it with one "
    "expression that computes the answer, e.g. (16 - 3 - 4) * 2. When you have its result, "
    "reply with the final answer as a number."
)


def show(message: BaseMessage) -> None:
    """Print one new message of the agent's transcript."""
    if isinstance(message, AIMessage):
        for call in message.tool_calls:
            print(f"-> {call['name']}({call['args']})")
        for bad in message.invalid_tool_calls:
            print(f"-> malformed tool call: {bad.get('error')}")
        if message.content:
            print(f"assistant: {message.content}")
    elif isinstance(message, ToolMessage):
        print(f"<- {message.name}: {message.content}")


def main(
    question: str = DEFAULT_QUESTION,
    *,
    max_steps: int = 3,
    max_tokens: int = 128,
    preset: str = "reasoning",
    llm: BaseChatModel | None = None,
) -> dict[str, Any]:
    """Run the agent on ``question``; returns the transcript, the answer and the delegations."""
    agent = create_spthink_agent(
        llm or ChatSpeculativeThinking(preset=preset, temperature=0.0, max_tokens=max_tokens),
        [make_calculator_tool()],
        system_prompt=SYSTEM,
        max_steps=max_steps,
    )
    print(f"user: {question}")
    result: dict[str, Any] = {"delegations": [], "messages": []}
    for item in stream_with_delegations(
        agent, {"messages": [("user", question)]}, stream_mode=["updates", "values"]
    ):
        if item.kind == "delegation":
            result["delegations"].append(item.data)
            print(f"   [large model, {item.data.kind}: {item.data.large_text!r}]", file=sys.stderr)
        elif item.kind == "updates":
            for update in item.data.values():
                for message in (update or {}).get("messages", []):
                    show(message)
        elif item.kind == "values":
            result["messages"] = item.data["messages"]
    last = result["messages"][-1]
    result["answer"] = last.content if isinstance(last, AIMessage) else ""
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("--max-steps", type=int, default=3, help="model calls at most")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per model call")
    parser.add_argument("--preset", choices=["reasoning", "instruct"], default="reasoning")
    args = parser.parse_args()
    main(args.question, max_steps=args.max_steps, max_tokens=args.max_tokens, preset=args.preset)
