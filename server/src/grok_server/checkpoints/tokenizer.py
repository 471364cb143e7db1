"""A small byte-level BPE tokenizer trained locally, so tiny checkpoints need nothing from a model hub.

The training text is generated from a fixed seed (English-like words plus a few fixed sentences), so the same
arguments give the same tokenizer on every machine. Special tokens follow Grok-1: pad 0, bos 1, eos 2.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = "[PAD]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2

_FIXED_TEXT = (
    "Grok-1 is a mixture of experts language model with eight experts and two active experts per token. "
    "The quick brown fox jumps over the lazy dog. Hello, world! The answer is 42. "
    "Kubernetes schedules pods onto nodes; the operator reconciles a GrokDeployment. "
    "def generate(prompt: str, max_tokens: int = 16) -> str: return model(prompt)\n"
)
_ONSETS = (
    "",
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "st",
    "tr",
    "gr",
)
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ee")
_CODAS = ("", "", "n", "r", "s", "t", "l", "ck", "nd", "ng")


def training_corpus(seed: int, num_sentences: int = 4000) -> list[str]:
    rng = random.Random(seed)
    words = [
        "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(rng.randint(1, 3))
        )
        for _ in range(1500)
    ]
    # A Zipf-like choice makes frequent words, hence useful merges.
    weights = [1.0 / (rank + 1) for rank in range(len(words))]
    lines = [_FIXED_TEXT] * 20
    for _ in range(num_sentences):
        sentence = " ".join(rng.choices(words, weights, k=rng.randint(4, 14)))
        lines.append(
            sentence.capitalize() + rng.choice((".", "!", "?", ",", ";")) + " " + str(rng.randint(0, 999))
        )
    return lines


def train_tokenizer(out_dir: Path, vocab_size: int, seed: int = 0, model_max_length: int = 8192) -> Tokenizer:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (`vocab_size` tokens)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(seed), trainer=trainer)
    # Fill the vocabulary up to the model's size so every id decodes to something.
    missing = vocab_size - tokenizer.get_vocab_size()
    if missing < 0:
        raise ValueError(f"trained tokenizer has {tokenizer.get_vocab_size()} tokens, more than {vocab_size}")
    if missing:
        tokenizer.add_tokens([f"<|reserved_{i}|>" for i in range(missing)])

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    special = {"pad_token": PAD, "bos_token": BOS, "eos_token": EOS}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **special,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return tokenizer
