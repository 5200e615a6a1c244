"""Text tokenization: a BPE tokenizer trained on the corpus captions, read with ``tokenizers`` (any other
Hugging Face tokenizer folder through ``transformers``).

Default (offline, any machine): ``growclip-ds data make`` / ``data split`` train a BPE on the
captions of growth step 1 into ``<data.root>/tokenizer``. Any local Hugging Face tokenizer folder
works too (``data.tokenizer``; CLIP's own, for users who have it). A run copies the tokenizer it
starts with into ``<run>/tokenizer`` and every later step and evaluation uses that copy: the
vocabulary is fixed from step 1 on, whatever happens to the data folder.

Model token ids are the tokenizer's ids + 1, so that 0 is padding whatever the tokenizer: the
model finds the end-of-text token as the last non-zero position.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputError

SPECIALS = ["<pad>", "<sot>", "<eot>", "<unk>"]


def train_bpe(captions, out_dir, vocab_size: int) -> Path:
    """Train a lower-cased byte-level-free BPE on ``captions`` and save it as an HF tokenizer folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # the model adds 1 to every id, so the tokenizer may use vocab_size - 1 ids
    tok.train_from_iterator(captions, trainers.BpeTrainer(vocab_size=vocab_size - 1, special_tokens=SPECIALS))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<sot>",
                                   eos_token="<eot>", unk_token="<unk>")
    fast.save_pretrained(out_dir)  # writes tokenizer.json and its configs
    return out_dir


# tokenizer_config.json classes of a plain ``tokenizers`` BPE saved by transformers (train_bpe's output: v5
# names it TokenizersBackend, v4 PreTrainedTokenizerFast): read with ``tokenizers`` alone, without importing
# transformers (1.2 s in every rank and phase process; the ids are the same, tests/test_data.py)
PLAIN_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


class TextTokenizer:
    """Callable: list of captions -> LongTensor (n, context_length) of model ids (tokenizer id + 1).
    ``backend``: the ``tokenizers.Tokenizer`` underneath (None for a slow, vocab.json-only tokenizer); ``hf``: the
    transformers tokenizer for classes other than PLAIN_CLASSES (None for a plain folder)."""

    def __init__(self, path, context_length: int):
        path = Path(path)
        if not (path / "tokenizer.json").exists() and not (path / "vocab.json").exists():
            raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.json; name a Hugging Face tokenizer "
                                    "folder (data.tokenizer) or make the built-in data first")
        self.context_length = context_length
        plain = _plain_specials(path)
        if plain is not None:
            from tokenizers import Tokenizer

            self.hf, self.backend = None, Tokenizer.from_file(str(path / "tokenizer.json"))
            self._size = self.backend.get_vocab_size(with_added_tokens=True)
            self.sot, self.eot = (None if t is None else self.backend.token_to_id(t) for t in plain)
        else:
            from transformers import AutoTokenizer

            self.hf = AutoTokenizer.from_pretrained(str(path))
            self.backend = self.hf.backend_tokenizer if getattr(self.hf, "is_fast", False) else None
            self._size = len(self.hf)
            self.sot, self.eot = self.hf.bos_token_id, self.hf.eos_token_id
        if self.eot is None:
            raise InputError(f"{path}: the tokenizer defines no end-of-text (eos) token")

    @property
    def vocab_size(self) -> int:
        """Model vocabulary needed: the tokenizer's ids shifted by one."""
        return self._size + 1

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        texts = list(texts)
        ids_list = ([e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)] if self.hf is None
                    else self.hf(texts, add_special_tokens=False)["input_ids"])
        head = [] if self.sot is None else [self.sot]
        for i, ids in enumerate(ids_list):
            ids = (head + ids)[: self.context_length - 1] + [self.eot]
            out[i, : len(ids)] = torch.tensor(ids) + 1
        return out


def _plain_specials(path: Path) -> tuple[str | None, str | None] | None:
    """(start, end) token strings of a plain ``tokenizers`` folder (PLAIN_CLASSES), else None."""
    import json

    config = path / "tokenizer_config.json"
    if not (path / "tokenizer.json").exists() or not config.exists():
        return None
    c = json.loads(config.read_text())
    if c.get("tokenizer_class") not in PLAIN_CLASSES:
        return None
    text = [c.get(k) for k in ("bos_token", "eos_token")]
    return tuple(t.get("content") if isinstance(t, dict) else t for t in text)


def tokenizer_path(data) -> Path:
    """The tokenizer folder a config names: ``data.tokenizer``, else ``<data.root>/tokenizer``."""
    return Path(data.tokenizer) if data.tokenizer else Path(data.root) / "tokenizer"


def load_tokenizer(cfg, arch) -> TextTokenizer:
    tok = TextTokenizer(tokenizer_path(cfg.data), arch.context_length)
    if tok.vocab_size > arch.vocab_size:
        raise InputError(f"arch.vocab_size={arch.vocab_size} is smaller than the tokenizer needs "
                         f"({tok.vocab_size} = its {tok.vocab_size - 1} ids + padding); raise arch.vocab_size "
                         f"(--set arch.vocab_size={tok.vocab_size}) or train a smaller one "
                         "(growclip-ds data split --vocab-size)")
    return tok
