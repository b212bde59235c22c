"""The examples on scripted models (known outputs): the wiring, what is printed, what returns."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from langchain_core.documents import Document

from langchain_spthink import ChatSpeculativeThinking
from langchain_spthink.backends.scripted import ScriptedBackend
from langchain_spthink_integrations.retrieval import BM25Retriever, load_corpus

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


rag = load_example("rag_math")
SMALL = [
    "The discount is 0.3 * 80 = 24.\n\n",
    "Wait, the price is 80 - 24 = 56.\n\n",
    "Answer: 56.",
]
LARGE = ["The discount is 0.3 * 80 = 24.\n\n", "Check: 80 - 24 = 56.\n\n", "Answer: 56."]


def test_format_docs() -> None:
    docs = [Document(page_content="Circle\n\narea = pi r^2"), Document(page_content="plain")]
    assert rag.format_docs(docs) == "1. Circle: area = pi r^2\n2. plain"


def test_chain_puts_retrieved_documents_in_the_prompt() -> None:
    small = ScriptedBackend(SMALL, name="s")
    large = ScriptedBackend(LARGE, name="l")
    llm = ChatSpeculativeThinking(small_model=small, large_model=large, temperature=0)
    retriever = BM25Retriever(documents=load_corpus(rag.CORPUS), k=2)
    result = rag.build_chain(llm, retriever).invoke(rag.DEFAULT_QUESTION)
    assert [d.id for d in result["docs"]] == [d.id for d in retriever.invoke(rag.DEFAULT_QUESTION)]
    assert result["question"] == rag.DEFAULT_QUESTION
    # "Wait" is a backtracking cue: the large model wrote that step
    assert result["answer"] == SMALL[0] + LARGE[1] + SMALL[2]
    for prompt in (small.last_prompt, large.last_prompt):
        assert rag.DEFAULT_QUESTION in prompt
        for doc in result["docs"]:
            assert doc.page_content.split("\n\n")[1] in prompt


def test_main_streams_and_counts_delegations(capsys: Any) -> None:
    llm = ChatSpeculativeThinking(
        small_model=ScriptedBackend(SMALL, name="s"),
        large_model=ScriptedBackend(LARGE, name="l"),
        temperature=0,
    )
    result = rag.main(retriever="bm25", k=2, llm=llm)
    out, err = capsys.readouterr()
    assert result["answer"] in out and result["answer"].endswith("Answer: 56.")
    assert out.startswith("Retrieved: Price after a discount")
    assert result["sources"][0] == "discount"
    assert [e.kind for e in result["delegations"]] == ["reflection"]
    assert "steps written by the large model: 1 (reflection)" in err


def test_agent_example_prints_the_loop(capsys: Any) -> None:
    from langchain_core.messages import AIMessage

    from tests.unit_tests.test_langgraph_agent import ToolScript, call

    agent = load_example("agent_calculator")
    model = ToolScript(
        responses=[
            AIMessage(content="", tool_calls=[call("(16 - 3 - 4) * 2", "c1")]),
            AIMessage(content="She makes $18 every day."),
        ],
        calls=[],
    )
    result = agent.main(llm=model)
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        f"user: {agent.DEFAULT_QUESTION}",
        "-> calculator({'expression': '(16 - 3 - 4) * 2'})",
        "<- calculator: 18",
        "assistant: She makes $18 every day.",
    ]
    assert result["answer"] == "She makes $18 every day."
    assert [type(m).__name__ for m in result["messages"]] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    assert model.calls[0]["messages"][0].content == agent.SYSTEM
