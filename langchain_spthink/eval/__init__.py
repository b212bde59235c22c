r"""The eval layer: the evaluation harness, the paper's protocol on MATH500/AIME24/AMC23/GSM8K.

* :func:`load_dataset` reads a shipped dataset or a JSONL file;
* :func:`grade` extracts the last ``\boxed{}`` answer and checks it (math-verify; GSM8K numbers);
* :func:`run_eval` answers every problem with the paper's prompt and sampling, resumably,
  writing one JSON record per problem-sample;
* :func:`summarize`, :func:`format_table` and :func:`write_plots` compare runs.

The command line is ``spthink eval`` and ``spthink report`` (:mod:`.cli`).

May import: the engine, the backends, :mod:`langchain_spthink.chat.reasoning`, the cli's argument
types (:mod:`langchain_spthink.cli.argtypes`), :mod:`langchain_spthink.errors`,
:mod:`langchain_spthink.models`, math-verify, matplotlib and tqdm (the last two inside the
functions that plot and show progress). Must not import: ``langchain_spthink_integrations``;
and neither the chat layer nor the tools layer may import this one (contracts in
``pyproject.toml``, checked by ``lint-imports``). Importing this package loads no torch,
transformers or LangChain.
"""

from langchain_spthink.eval.datasets import DATASETS, Problem, dataset_grader, load_dataset
from langchain_spthink.eval.grading import Grade, grade, last_boxed, parse_number
from langchain_spthink.eval.report import RunSummary, format_table, summarize, write_plots
from langchain_spthink.eval.runner import (
    PROMPT,
    EvalResult,
    EvalSettings,
    build_prompt,
    read_records,
    run_eval,
)

__all__ = [
    "DATASETS",
    "PROMPT",
    "EvalResult",
    "EvalSettings",
    "Grade",
    "Problem",
    "RunSummary",
    "build_prompt",
    "dataset_grader",
    "format_table",
    "grade",
    "last_boxed",
    "load_dataset",
    "parse_number",
    "read_records",
    "run_eval",
    "summarize",
    "write_plots",
]
