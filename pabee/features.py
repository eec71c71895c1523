"""Turn GLUE examples into tokenised features, cached on disk under a key that says exactly what produced them."""

import hashlib
import json
import logging
import os
import shutil

import datasets

from .glue import InputExample

logger = logging.getLogger(__name__)

FEATURE_COLUMNS = ("input_ids", "token_type_ids", "attention_mask", "labels")


def tokenizer_fingerprint(tokenizer):
    """
    A short hash of everything about a tokenizer that changes its output: its class, vocabulary and normalisation
    (the serialised fast tokenizer holds them all), special tokens and lower-casing. Two tokenizers that share a
    folder name but not a vocabulary get different caches.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    description = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    identity = [
        type(tokenizer).__name__,
        description,
        str(tokenizer.all_special_tokens),
        str(getattr(tokenizer, "do_lower_case", None)),
    ]
    return hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]


def cache_key(task, split, source, tokenizer, max_seq_length, model_type):
    """The name of a feature cache: readable parts first, then a hash of the rest (data file and tokenizer)."""
    digest = hashlib.sha256(f"{source}\n{tokenizer_fingerprint(tokenizer)}".encode()).hexdigest()[:16]
    return f"cached_{task.name}_{split}_{model_type}_{max_seq_length}_{digest}"


def file_identity(path):
    """A data file's path, size and modification time: an edited file gets a new cache."""
    stat = os.stat(path)
    return f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def convert_examples_to_features(examples, task, tokenizer, max_seq_length):
    """Tokenise (and truncate) each example; padding is left to the batch collator so batches stay short."""
    texts_a = [example.text_a for example in examples]
    has_pairs = any(example.text_b is not None for example in examples)
    texts_b = [example.text_b or "" for example in examples] if has_pairs else None
    encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_seq_length, return_token_type_ids=True)
    columns = {name: encoded[name] for name in FEATURE_COLUMNS if name in encoded}
    if all(example.label is not None for example in examples):
        columns["labels"] = [task.label_to_id(example.label) for example in examples]
    return datasets.Dataset.from_dict(columns)


def load_features(examples_loader, task, split, source, tokenizer, max_seq_length, model_type, cache_dir,
                  overwrite_cache=False):
    """
    The features of one split, from `cache_dir` if they were built before by the same tokenizer and settings.
    `examples_loader()` is only called when the cache is missing or `overwrite_cache` is set. The cache is written to
    a temporary folder and renamed, so an interrupted run never leaves a partial cache behind.
    """
    path = os.path.join(cache_dir, cache_key(task, split, source, tokenizer, max_seq_length, model_type))
    if os.path.isdir(path) and not overwrite_cache:
        logger.info("Loading features from cache %s", path)
        return datasets.load_from_disk(path)

    examples: list[InputExample] = examples_loader()
    logger.info("Tokenising %d %s examples of %s", len(examples), split, task.name)
    features = convert_examples_to_features(examples, task, tokenizer, max_seq_length)
    os.makedirs(cache_dir, exist_ok=True)
    partial_path = f"{path}.partial-{os.getpid()}"
    features.save_to_disk(partial_path)
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.replace(partial_path, path)
    return datasets.load_from_disk(path)
