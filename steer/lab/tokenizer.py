"""Build the real CLIP BPE tokenizer files offline from the vocabulary that ships in ``open-clip-torch``."""

from __future__ import annotations

import gzip
import json
from importlib.util import find_spec
from pathlib import Path

from transformers import CLIPTokenizer

VOCAB_SIZE = 49408
NUM_MERGES = 48894


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def find_open_clip_vocab() -> Path:
    """Path of ``bpe_simple_vocab_16e6.txt.gz`` inside the installed open-clip-torch wheel (not imported)."""
    spec = find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "open-clip-torch is not installed; it carries the CLIP BPE vocabulary. "
            "Install it with `pip install --no-deps open-clip-torch`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the open-clip-torch installation")
    return path


def write_clip_tokenizer(out_dir: str | Path, bpe_path: str | Path | None = None, model_max_length: int = 77) -> CLIPTokenizer:
    """Write ``vocab.json`` + ``merges.txt`` (+ tokenizer config) for the real 49,408-token CLIP vocabulary.

    Built from open-clip-torch's BPE file when it is installed, else copied from the committed conversion.
    """
    if bpe_path is None:
        try:
            bpe_path = find_open_clip_vocab()
        except FileNotFoundError:  # the same vocabulary, converted once and committed under assets/clip-tokenizer
            committed = Path(__file__).resolve().parents[2] / "assets" / "clip-tokenizer"
            tok = CLIPTokenizer.from_pretrained(str(committed), model_max_length=model_max_length)
            tok.save_pretrained(out_dir)
            return tok
    bpe_path = Path(bpe_path)
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : NUM_MERGES + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"expected {VOCAB_SIZE} tokens, built {len(vocab)} from {bpe_path}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    with open(out_dir / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(" ".join(m) + "\n" for m in merges)
    tok = CLIPTokenizer(
        str(out_dir / "vocab.json"),
        str(out_dir / "merges.txt"),
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )
    tok.save_pretrained(out_dir)
    return tok
