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
    if backend is not None:
        # Truncation and padding are per-call settings that tokenising leaves in the serialised tokenizer (and so in a
        # saved one): they do not change what the cache holds, which is tokenised with explicit settings.
        description = json.loads(backend.to_str())
        description.pop("truncation", None)
        description.pop("padding", None)
        description = json.dumps(description, sort_keys=True)
    else:
        description = json.dumps(sorted(tokenizer.get_vocab().items()))
    identity = [
        type(tokenizer).__name__,
        description,
        str(tokenizer.all_special_tokens),
        str(getattr(tokenizer, "do_lower_case", None)),
    ]
    return hashlib.sha256("\n".join(identity).encode()).hexdigest()[:16]


def cache_key(task, split, source, tokenizer, max_seq_length, model_type, with_token_types=True):
    """
    The name of a feature cache: readable parts first, then a hash of the rest (data file, tokenizer, and whether
    token types are kept).
    """
    identity = f"{source}\n{tokenizer_fingerprint(tokenizer)}" + ("" if with_token_types else "\nno token types")
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return f"cached_{task.name}_{split}_{model_type}_{max_seq_length}_{digest}"


def file_identity(path):
    """A data file's path, size and modification time: an edited file gets a new cache."""
    stat = os.stat(path)
    return f"{os.path.abspath(path)}:{stat.st_size}:{stat.st_mtime_ns}"


def convert_examples_to_features(examples, task, tokenizer, max_seq_length, with_token_types=True):
    """
    Tokenise (and truncate) each example; padding is left to the batch collator so batches stay short. Token type ids
    are kept only `with_token_types` (a model without token types, such as DistilBERT, must not get them).
    """
    texts_a = [example.text_a for example in examples]
    has_pairs = any(example.text_b is not None for example in examples)
    texts_b = [example.text_b or "" for example in examples] if has_pairs else None
    encoded = tokenizer(texts_a, texts_b, truncation=True, max_length=max_seq_length,
                        return_token_type_ids=with_token_types)
    columns = {name: encoded[name] for name in FEATURE_COLUMNS if name in encoded}
    if all(example.label is not None for example in examples):
        columns["labels"] = [task.label_to_id(example.label) for example in examples]
    return datasets.Dataset.from_dict(columns)


def load_feature_sets(task, sources, tokenizer, max_seq_length, model_type, cache_dir, overwrite_cache=False,
                      with_token_types=True):
    """
    The features of several splits, `sources` mapping each split to `(read_examples, source_identity)`. Splits
    cached before by the same tokenizer and settings are read from `cache_dir`; the others are all read (and so
    checked) before any cache is written, so a malformed file leaves no new file behind. Each cache is written to a
    temporary folder and renamed, so an interrupted run never leaves a partial cache either.
    """
    paths = {
        split: os.path.join(
            cache_dir, cache_key(task, split, source, tokenizer, max_seq_length, model_type, with_token_types)
        )
        for split, (_, source) in sources.items()
    }
    to_build = [split for split, path in paths.items() if overwrite_cache or not os.path.isdir(path)]
    examples: dict[str, list[InputExample]] = {split: sources[split][0]() for split in to_build}

    for split in to_build:
        logger.info("Tokenising %d %s examples of %s", len(examples[split]), split, task.name)
        features = convert_examples_to_features(examples[split], task, tokenizer, max_seq_length, with_token_types)
        os.makedirs(cache_dir, exist_ok=True)
        partial_path = f"{paths[split]}.partial-{os.getpid()}"
        features.save_to_disk(partial_path)
        if os.path.isdir(paths[split]):
            shutil.rmtree(paths[split])
        os.replace(partial_path, paths[split])
    for split in set(paths) - set(to_build):
        logger.info("Loading %s features from cache %s", split, paths[split])
    return {split: datasets.load_from_disk(path) for split, path in paths.items()}
