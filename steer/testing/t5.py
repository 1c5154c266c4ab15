"""A T5 tokenizer built offline (no download) for tiny test pipelines of the T5-conditioned families (SD3, PixArt,
Flux): a SentencePiece-style Unigram model trained with the `tokenizers` library on words of the real CLIP
vocabulary (shipped in ``assets/clip-tokenizer``), wrapped as transformers' `T5Tokenizer`."""

from __future__ import annotations

import functools
import json

from transformers import T5Tokenizer

from steer.assets import ASSETS

SPECIAL = ["<pad>", "</s>", "<unk>"]
TOKENIZER_FILE = ASSETS / "t5-tokenizer" / "tokenizer.json"  # `build_tokenizer_file()` writes it (committed)


@functools.lru_cache(maxsize=4)
def _trained(vocab_size: int):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    vocab = json.loads((ASSETS / "clip-tokenizer" / "vocab.json").read_text())
    words = [w[:-4] for w in vocab if w.endswith("</w>") and w[:-4].isalpha()][:8000]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, unk_token="<unk>", show_progress=False)
    tok.train_from_iterator([" ".join(words[i : i + 16]) for i in range(0, len(words), 16)], trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return tok.to_str()


def build_tokenizer_file(vocab_size: int = 1000) -> None:
    """Train the tokenizer (about 20 s on 2 cores) and write `TOKENIZER_FILE`."""
    TOKENIZER_FILE.parent.mkdir(parents=True, exist_ok=True)
    TOKENIZER_FILE.write_text(_trained(vocab_size))


def t5_tokenizer(model_max_length: int = 32) -> T5Tokenizer:
    """A T5 tokenizer (``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2; a trailing ``</s>``; 1,000 pieces)."""
    from tokenizers import Tokenizer

    text = TOKENIZER_FILE.read_text() if TOKENIZER_FILE.is_file() else _trained(1000)
    return T5Tokenizer(
        tokenizer_object=Tokenizer.from_str(text),
        eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0, model_max_length=model_max_length,
    )
