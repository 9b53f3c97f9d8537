"""Tiny CLIP text pieces written locally: a byte-level BPE tokenizer folder and a matching CLIPTextConfig."""

import json
import pathlib

import transformers

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# A few merges so that common words become single tokens, the rest stays byte-level.
_MERGES = (("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("a", "t</w>"), ("o", "n</w>"), ("o", "g</w>"),
           ("d", "og</w>"))
MODEL_MAX_LENGTH = 16


def _byte_symbols() -> list[str]:
  """The 256 printable characters byte-level BPE writes for bytes 0..255 (GPT-2 / CLIP convention).

  Printable Latin-1 bytes stand for themselves; the others (controls, space, ...) take code points 256+n in order.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  extra = iter(range(256, 512))
  return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_clip_tokenizer(folder: str | pathlib.Path, model_max_length: int = MODEL_MAX_LENGTH) -> pathlib.Path:
  """Writes vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json of a CLIP tokenizer.

  The vocabulary is laid out as CLIP's: the 256 byte symbols, their '</w>' (end-of-word) forms, one entry per
  merge, then <|startoftext|> and <|endoftext|> (the last id, also used for padding). Returns the folder.
  """
  folder = pathlib.Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  symbols = _byte_symbols()
  tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in _MERGES] + [BOS, EOS]
  (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}, ensure_ascii=False))
  (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in _MERGES))
  special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
  (folder / "special_tokens_map.json").write_text(json.dumps(special))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True, **special}))
  return folder


def tiny_vocab_size() -> int:
  """Vocabulary size of write_tiny_clip_tokenizer: bos is vocab_size - 2, eos (= padding) vocab_size - 1."""
  return 2 * 256 + len(_MERGES) + 2


def tiny_clip_text_config(vocab_size: int, **overrides) -> transformers.CLIPTextConfig:
  """A 2-layer CLIPTextConfig (hidden 32, 4 heads, MLP 37, 77 positions) whose bos/eos are the last two ids."""
  kwargs = dict(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=77, projection_dim=32,
                bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
  return transformers.CLIPTextConfig(**{**kwargs, **overrides})
