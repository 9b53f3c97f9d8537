"""A pretrained folder's Hugging Face tokenizer (read locally, never downloaded) and prompts -> token ids."""

import pathlib

import numpy as np
import transformers
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

from latent_diffusion.weights import files

# transformers' model_max_length when a tokenizer config sets none (int(1e30)); padding to it is never meant.
_UNSET_MAX_LENGTH = 10**9


def load_tokenizer(folder: str | pathlib.Path) -> transformers.PreTrainedTokenizerBase:
  """The tokenizer saved in `folder` (tokenizer_config.json plus tokenizer.json or the class's vocabulary files).

  Raises FileNotFoundError naming the folder and the missing files, before transformers sees the folder
  (a missing vocabulary otherwise surfaces as an unrelated ValueError, a missing folder as a hub lookup).
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"Tokenizer folder not found: {folder}. Tokenizers load from local folders only; "
                            f"nothing is downloaded.")
  tokenizer_config = files.read_json(folder / "tokenizer_config.json", "tokenizer config")
  tokenizer_class = tokenizer_class_from_name(tokenizer_config.get("tokenizer_class") or "")
  if tokenizer_class is not None and not (folder / "tokenizer.json").is_file():
    needed = sorted(name for key, name in tokenizer_class.vocab_files_names.items() if key != "tokenizer_file")
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
      raise FileNotFoundError(f"Tokenizer folder {folder} lacks {missing}: {tokenizer_config['tokenizer_class']} needs "
                              f"tokenizer.json or {needed} (folder holds: {sorted(p.name for p in folder.iterdir())}).")
  return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def tokenize(tokenizer: transformers.PreTrainedTokenizerBase, texts: list[str], max_length: int | None = None,
             with_attention_mask: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """Token ids int32 [B, max_length], padded and truncated as StableDiffusionPipeline encodes prompts.

  max_length defaults to the tokenizer's model_max_length (77 for CLIP). With `with_attention_mask`, returns
  (ids, mask) where mask int32 [B, max_length] is 1 on real tokens, 0 on padding.
  """
  if isinstance(texts, str):
    raise TypeError(f"texts must be a list of strings, got the string {texts!r}.")
  max_length = tokenizer.model_max_length if max_length is None else max_length
  if max_length >= _UNSET_MAX_LENGTH:
    raise ValueError(f"The tokenizer sets no model_max_length ({max_length}); pass max_length.")
  encoded = tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True, return_tensors="np")
  ids = encoded["input_ids"].astype(np.int32)
  return (ids, encoded["attention_mask"].astype(np.int32)) if with_attention_mask else ids
