"""Tiny local stand-ins for the embedded models, built offline from nothing but this repository.

* :func:`build_tiny_tokenizer`: a byte-level BPE (like SmolLM2's: GPT-2 pre-tokenizer, digits
  split one by one, 256-byte alphabet so any UTF-8 text round-trips and multi-byte characters can
  be split over tokens) trained with ``tokenizers`` on a fixed corpus (in-module text and the
  GSM8K problems shipped in ``langchain_spthink/data``), ChatML special tokens and chat template.
  Deterministic: the same corpus gives the same vocabulary (checked by a unit test).
* :func:`tiny_llama` / :func:`tiny_pair`: tiny random-weight Llama models over a tokenizer.
* :func:`write_tiny_gguf`: a small but complete, loadable GGUF (a tiny random Llama with this
  tokenizer in its metadata), for tests of the GGUF loader that do not need a real model.

No model files are read or downloaded.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "SPECIAL_TOKENS",
    "build_tiny_tokenizer",
    "tiny_llama",
    "tiny_pair",
    "write_tiny_gguf",
]

#: Special tokens, with SmolLM2's ids: ``<|endoftext|>`` = 0, ``<|im_start|>`` = 1,
#: ``<|im_end|>`` = 2 (the EOS, end of a ChatML turn).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"
VOCAB_SIZE = 1024

#: SmolLM2-Instruct's ChatML template (a default system turn when none is given), with a shorter
#: default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DATA = Path(__file__).resolve().parents[1] / "langchain_spthink" / "data" / "gsm8k.jsonl"

# Text in the shapes the tests and the engine use: reasoning paragraphs separated by "\n\n",
# cue words, answers, JSON, code, chat turns. Little non-ASCII text: emoji and CJK characters stay
# split over byte tokens (some tests need characters split across tokens).
_SNIPPETS = [
    "Let me think step by step.\n\n",
    "Wait, that is not right. Let me check again.\n\n",
    "Hmm, maybe we should add them first.\n\n",
    "Yes, so the total is 84.\n\n",
    "Alternatively, we can multiply 12 by 7.\n\n",
    "Final answer: 4\n\n",
    "The answer is \\boxed{42}.\n\n",
    "Question: what is 2+2?\nAnswer: 4\n",
    "Once upon a time, there was a small model and a large model.\n\n",
    "def f(x):\n    return x + 1\n\n",
    '{"x": 3, "y": -2}\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n',
    '{"setup": "Why?", "punchline": "Because.", "rating": 5, "tags": ["a", "b"]}\n',
    "<think>\nFirst, count the apples.\n</think>\n\nThere are 5 apples.\n\n",
    "<tool_call>\n{}\n</tool_call>\n",
    "12 × 7 = 84. 3.5 + 1.25 = 4.75; 100% of $80,000.\n\n",
]


def _corpus() -> list[str]:
    problems = [json.loads(line)["problem"] for line in _DATA.read_text("utf-8").splitlines()]
    # chat turns without the special tokens (the trainer would merge their characters)
    chat = [f"system\nuser\n{p}\nassistant\nLet me see.\n\n{p}\n" for p in problems[:50]]
    return [*(p + "\n\n" for p in problems), *chat, *(_SNIPPETS * 20)]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return str(tok.to_str())


def build_tiny_tokenizer() -> Any:
    """A fresh ``PreTrainedTokenizerFast`` over the tiny byte-level BPE (trained once per process).

    Returns:
        The tokenizer; EOS ``<|im_end|>``, BOS ``<|im_start|>`` (never added: like SmolLM2),
        ChatML chat template.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|im_start|>",
        eos_token=EOS_TOKEN,
        unk_token="<|endoftext|>",
        pad_token=EOS_TOKEN,
        additional_special_tokens=list(SPECIAL_TOKENS),
        chat_template=CHAT_TEMPLATE,
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )


def tiny_llama(vocab: int, seed: int, hidden: int, layers: int) -> Any:
    """A tiny random-weight Llama (weights seeded, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.5,
    )
    return LlamaForCausalLM(config).eval()


def tiny_pair(tokenizer: Any) -> tuple[Any, Any]:
    """Two tiny random Llama backends sharing ``tokenizer``: (small, large); EOS = its EOS."""
    from langchain_spthink.backends.transformers import TransformersBackend

    vocab = len(tokenizer)
    eos = frozenset({int(tokenizer.eos_token_id)})
    small = TransformersBackend(
        tiny_llama(vocab, 0, 64, 2), tokenizer, name="tiny-small", eos_ids=eos
    )
    large = TransformersBackend(
        tiny_llama(vocab, 1, 96, 3), tokenizer, name="tiny-large", eos_ids=eos
    )
    return small, large


def write_tiny_gguf(path: Path) -> Path:
    """Write a complete GGUF: a tiny random Llama (F32) with the tiny tokenizer in its metadata.

    The tokenizer metadata (~1k tokens and merges) fills the first tens of KB and the tensor data
    the rest, so cutting the file at a few KB cuts the header, near the end cuts the data.

    Args:
        path: File to write.

    Returns:
        ``path``.
    """
    import gguf
    import numpy as np

    spec = json.loads(_tokenizer_json())
    vocab: dict[str, int] = spec["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    model = tiny_llama(len(tokens), 7, 64, 2)
    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    special = {vocab[t] for t in SPECIAL_TOKENS}
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
            for i in range(len(tokens))
        ]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab[EOS_TOKEN])
    writer.add_unk_token_id(vocab["<|endoftext|>"])
    writer.add_pad_token_id(vocab[EOS_TOKEN])
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
    }
    per_layer = {
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    state = model.state_dict()
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    for hf_name, gguf_name in names.items():
        tensor = state[hf_name].detach().float().numpy()
        if gguf_name.endswith("attn_q.weight"):
            tensor = _permute(tensor, heads)
        elif gguf_name.endswith("attn_k.weight"):
            tensor = _permute(tensor, kv_heads)
        writer.add_tensor(gguf_name, np.ascontiguousarray(tensor, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _permute(weights: Any, heads: int) -> Any:
    """llama.cpp's rotary layout for q/k (what transformers' GGUF loader reverses)."""
    rows = weights.shape[0]
    return (
        weights.reshape(heads, 2, rows // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
