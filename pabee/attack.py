"""Attack a trained PABEE model with small character edits: make it answer wrongly, or make it run more layers.

    python -m pabee.attack --model output/demo --goal slowdown --patience 1 --exit_confidence 0.75 --file reviews.txt
    python -m pabee.attack --model output/demo --goal misclassification --patience 2 "a gripping, funny film"
    python -m pabee.attack --model output/demo --goal slowdown --patience 1 --exit_confidence 0.75 \\
        --max_exit_layer 4 --slowdown_guard 0.3 --file reviews.txt   # attack the defended setting

The attack runs offline: edits of DeepWordBug's kind (Gao et al. 2018), which need no embeddings or sentence encoders
(swap two adjacent characters, delete one, insert or substitute a letter), at most one per word, on at most
--max_word_share of the words (at least one). Words are ranked by importance: each is replaced by the unknown token
(or, with --ranking delete, left out) and the model scores the result for the goal; the search then edits them
greedily in that order, keeping an edit when it raises the goal's score, until the goal is met or the --query_budget
(every text the model is asked about, the clean one and the ranking's included) is spent. It is seeded: the same
arguments give the same edits.

It is a black-box attack: it reads only the model's outputs. The goals read:
- misclassification: the answered logits (the exit setting's answer); it succeeds when the answer differs from the
  gold label (from the input file, else the model's clean answer). Score: 1 - the probability of that label.
- slowdown: the exit layer and every classifier's logits (the model returns them with `output_all_layer_logits`).
  Score: the exit layer, ties broken by WAFFLE's uncertainty score (Coalson et al. 2023: the mean over classifiers of
  1 - the normalised L1 distance of the softmax from uniform, in [0, 1]); it succeeds when the exit layer goes up.
- slowdown-patience: the same with SAME's patience-breaking term (Chen et al. 2023) as the tie-break: the mean over
  layers 2..L of the probability a layer gives to classes other than the previous layer's prediction, which resets
  a patience counter.
A query runs every layer once and takes the exit setting's exit layer from those logits (`simulate_exit_layers`,
which gives exactly what real early exit gives), so one pass scores a candidate under any setting.
"""

import argparse
import math
import random
import re
import sys
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from .modeling_pabee import guard_flag_layers, simulate_exit_layers, uncertainty_scores

EDIT_KINDS = ("swap", "delete", "insert", "substitute")
GOALS = ("misclassification", "slowdown", "slowdown-patience")
# The exit settings the command line can give (the rule and the defences; regression_threshold is the model's)
ATTACKED_SETTINGS = ("patience", "exit_criterion", "exit_threshold", "exit_confidence", "max_exit_layer",
                     "slowdown_guard")
RANKINGS = ("unk", "delete")
LETTERS = "abcdefghijklmnopqrstuvwxyz"


# ---------------------------------------------------------------------------------------------------------------------
# Edits


def edit_word(word, kind, rng):
    """
    `word` with one character edit of `kind` at a position drawn from `rng` (a `random.Random`), always a different
    string; None where the word allows no such edit (a swap needs two adjacent different characters, a delete two
    characters).
    """
    if kind == "swap":
        positions = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if not positions:
            return None
        i = rng.choice(positions)
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "delete":
        if len(word) < 2:
            return None
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1:]
    if kind == "insert":
        i = rng.randrange(len(word) + 1)
        return word[:i] + rng.choice(LETTERS) + word[i:]
    if kind == "substitute":
        i = rng.randrange(len(word))
        return word[:i] + rng.choice([letter for letter in LETTERS if letter != word[i].lower()]) + word[i + 1:]
    raise ValueError(f"unknown edit {kind!r}; the edits are {', '.join(EDIT_KINDS)}")


def split_words(text):
    """The text as pieces (words and the whitespace between them, joined back exactly) and the editable words'
    positions among them: the words with a letter or digit in them."""
    pieces = re.split(r"(\s+)", text)
    editable = [i for i, piece in enumerate(pieces) if piece and not piece.isspace() and re.search(r"\w", piece)]
    return pieces, editable


# ---------------------------------------------------------------------------------------------------------------------
# The victim: a model queried in batches, and what each goal reads of its outputs


class Victim:
    """
    A model and tokenizer queried with texts in batches of `batch_size`. Each text runs every layer once; its
    classifiers' logits are kept, so a text asked about again (by another search, or under another exit setting)
    costs nothing more. The attacks count their queries themselves.
    """

    def __init__(self, model, tokenizer, max_length=None, batch_size=64):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length = max_length or min(tokenizer.model_max_length, model.config.max_position_embeddings)
        self.batch_size = batch_size
        self.cache = {}
        self.device = next(model.parameters()).device
        self.num_layers = model.config.num_hidden_layers

    @torch.no_grad()
    def all_layer_logits(self, texts):
        """Every classifier's logits for each text: `(len(texts), num_layers, num_labels)`, float32 on the CPU."""
        missing = sorted({text for text in texts if text not in self.cache}, key=len)  # similar lengths together
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            encoded = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
            logits = self.model(**encoded, patience=0, output_all_layer_logits=True).all_layer_logits.float().cpu()
            self.cache.update(zip(batch, logits))
        return torch.stack([self.cache[text] for text in texts])


@dataclass(frozen=True)
class Readout:
    """What an exit setting answers for a batch of texts, computed from their every-layer logits."""

    exit_layers: torch.Tensor  # (n,), 1-based
    logits: torch.Tensor  # (n, num_labels), the answered ones
    all_layer_logits: torch.Tensor  # (n, num_layers, num_labels)
    guard_fired: torch.Tensor | None  # (n,), with the slowdown guard on


def read_outputs(all_layer_logits, model_kwargs):
    """The exit layers, answers and guard firings of the exit setting `model_kwargs` (the model's forward keywords)."""
    kwargs = dict(model_kwargs)
    exit_layers = simulate_exit_layers(
        all_layer_logits, kwargs.get("patience", 0), kwargs.get("regression_threshold", 0.1),
        kwargs.get("exit_criterion", "patience"), kwargs.get("exit_threshold"), kwargs.get("exit_confidence", 0.0),
        kwargs.get("max_exit_layer"), kwargs.get("slowdown_guard"),
    )
    logits = all_layer_logits[torch.arange(len(exit_layers)), exit_layers - 1]
    guard = kwargs.get("slowdown_guard")
    fired = None if guard is None else guard_flag_layers(all_layer_logits, guard) <= exit_layers
    return Readout(exit_layers, logits, all_layer_logits, fired)


def patience_breaking_scores(all_layer_logits):
    """
    SAME's aim against patience counters, as a score in [0, 1] per example: the mean over layers 2..L of the
    probability each layer gives to classes other than the previous layer's prediction (a counter resets when the
    prediction changes). 0 for one layer.
    """
    probabilities = all_layer_logits.float().softmax(dim=-1)  # (n, layers, labels)
    if probabilities.shape[1] < 2:
        return probabilities.new_zeros(len(probabilities))
    previous = probabilities[:, :-1].argmax(dim=-1, keepdim=True)  # (n, layers - 1, 1)
    kept = probabilities[:, 1:].gather(-1, previous).squeeze(-1)
    return (1.0 - kept).mean(dim=1)


def slowdown_scores(readout, tiebreak="uncertainty"):
    """
    The slowdown goal's score: the exit layer plus half a tie-break term in [0, 1] (so that it never outweighs one
    layer): WAFFLE's uncertainty score, the mean of `uncertainty_scores` over every classifier ("uncertainty"), or
    `patience_breaking_scores` ("patience").
    """
    if tiebreak == "uncertainty":
        term = uncertainty_scores(readout.all_layer_logits).mean(dim=1)
    else:
        term = patience_breaking_scores(readout.all_layer_logits)
    return readout.exit_layers.double() + 0.5 * term.double()


def goal_scores(goal, readout, label):
    """The score `goal` maximises, per text (see the module docstring); `label` is the class a misclassification
    must leave."""
    if goal == "misclassification":
        return 1.0 - readout.logits.double().softmax(dim=-1)[:, label]
    return slowdown_scores(readout, "patience" if goal == "slowdown-patience" else "uncertainty")


# ---------------------------------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class AttackConfig:
    """The attacker's goal and budgets."""

    goal: str = "slowdown"
    query_budget: int = 40  # texts the model is asked about per example, the clean one included
    max_word_share: float = 0.2  # at most this share of the editable words is changed (at least one word)
    ranking: str = "unk"  # how words are ranked: replaced by the unknown token, or deleted
    seed: int = 0
    edit_kinds: tuple = EDIT_KINDS

    def __post_init__(self):
        if self.goal not in GOALS:
            raise ValueError(f"goal must be one of {', '.join(GOALS)}, got {self.goal!r}")
        if not isinstance(self.query_budget, int) or self.query_budget < 2:
            raise ValueError(f"query_budget must be an integer >= 2 (the clean text and one edit), got "
                             f"{self.query_budget!r}")
        if not 0 < self.max_word_share <= 1:
            raise ValueError(f"max_word_share must be in (0, 1], got {self.max_word_share!r}")
        if self.ranking not in RANKINGS:
            raise ValueError(f"ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")
        unknown = set(self.edit_kinds) - set(EDIT_KINDS)
        if not self.edit_kinds or unknown:
            raise ValueError(f"edit_kinds must be some of {', '.join(EDIT_KINDS)}, got {self.edit_kinds!r}")


@dataclass
class AttackResult:
    """One attacked example."""

    text: str
    adversarial: str
    label: int  # the class a misclassification must leave: the gold label, or the model's clean answer
    clean_answer: int
    attacked_answer: int
    clean_exit_layer: int
    attacked_exit_layer: int
    clean_score: float
    attacked_score: float
    queries: int
    words: int  # editable words
    words_changed: int
    success: bool
    skipped: bool  # misclassification: the clean answer was already wrong, so nothing was attacked
    clean_guard_fired: bool | None = None
    attacked_guard_fired: bool | None = None


def top_reachable_layer(model_kwargs, num_layers):
    """The deepest exit an input can force: the cap when it holds everyone (no guard), else the last layer."""
    cap = model_kwargs.get("max_exit_layer")
    return cap if cap is not None and model_kwargs.get("slowdown_guard") is None else num_layers


def search(text, label, config, model_kwargs, num_layers, unk_token, rng):
    """
    The greedy search on one example, as a generator: it yields the texts it asks about, receives their every-layer
    logits, and returns its `AttackResult`. A driver (`attack`) runs many at once so that queries share batches.
    """
    def readout_of(all_layer_logits):
        readout = read_outputs(all_layer_logits, model_kwargs)
        return readout, goal_scores(config.goal, readout, label if label is not None else 0)

    clean_readout, clean_scores = readout_of((yield [text]))
    queries = 1
    clean_answer = int(clean_readout.logits[0].argmax())
    if label is None:
        label = clean_answer
        clean_scores = goal_scores(config.goal, clean_readout, label)
    pieces, editable = split_words(text)
    fired = None if clean_readout.guard_fired is None else bool(clean_readout.guard_fired[0])
    result = AttackResult(
        text=text, adversarial=text, label=label, clean_answer=clean_answer, attacked_answer=clean_answer,
        clean_exit_layer=int(clean_readout.exit_layers[0]), attacked_exit_layer=int(clean_readout.exit_layers[0]),
        clean_score=float(clean_scores[0]), attacked_score=float(clean_scores[0]), queries=queries,
        words=len(editable), words_changed=0, success=False, skipped=False, clean_guard_fired=fired,
        attacked_guard_fired=fired,
    )
    top = top_reachable_layer(model_kwargs, num_layers)
    if config.goal == "misclassification" and clean_answer != label:
        result.skipped = True
        return result
    if not editable or (config.goal != "misclassification" and result.clean_exit_layer >= top):
        return result

    # Rank the words: what the model makes of the text without each (as many as the budget allows, leaving one
    # query for an edit).
    ranked = editable if len(editable) <= config.query_budget - 2 else rng.sample(editable, config.query_budget - 2)
    replacement = unk_token if config.ranking == "unk" else ""
    variants = ["".join(replacement if i == position else piece for i, piece in enumerate(pieces))
                for position in ranked]
    if variants:
        _, variant_scores = readout_of((yield variants))
        queries += len(variants)
        importance = dict(zip(ranked, variant_scores.tolist()))
    else:
        importance = {}
    unranked = [position for position in editable if position not in importance]
    rng.shuffle(unranked)
    order = sorted(importance, key=lambda position: (-importance[position], position)) + unranked

    max_changes = max(1, math.floor(config.max_word_share * len(editable)))
    current, current_score, current_readout = list(pieces), result.clean_score, (clean_readout, 0)
    for position in order:
        if result.words_changed >= max_changes or queries >= config.query_budget:
            break
        candidates = []
        for kind in config.edit_kinds:
            edited = edit_word(current[position], kind, rng)
            if edited is not None and edited not in candidates:
                candidates.append(edited)
        candidates = candidates[: config.query_budget - queries]
        if not candidates:
            continue
        texts = ["".join(candidates[k] if i == position else piece for i, piece in enumerate(current))
                 for k in range(len(candidates))]
        readout, scores = readout_of((yield texts))
        queries += len(texts)
        best = int(scores.argmax())
        if float(scores[best]) > current_score:
            current[position] = candidates[best]
            current_score, current_readout = float(scores[best]), (readout, best)
            result.words_changed += 1
            exit_layer = int(readout.exit_layers[best])
            answer = int(readout.logits[best].argmax())
            if (answer != label) if config.goal == "misclassification" else exit_layer >= top:
                break
    readout, best = current_readout
    result.adversarial = "".join(current)
    result.attacked_answer = int(readout.logits[best].argmax())
    result.attacked_exit_layer = int(readout.exit_layers[best])
    result.attacked_score = current_score
    if readout.guard_fired is not None:
        result.attacked_guard_fired = bool(readout.guard_fired[best])
    result.queries = queries
    if config.goal == "misclassification":
        result.success = result.attacked_answer != label
    else:
        result.success = result.attacked_exit_layer > result.clean_exit_layer
    return result


def attack(victim, texts, model_kwargs, config, labels=None, description="Attacking", progress=True):
    """
    Attack each of `texts` (with gold `labels`, or None to take the model's clean answers) under the exit setting
    `model_kwargs`, running all the searches together so that every model call takes a full batch. Returns one
    `AttackResult` per text, in order; the same arguments give the same results.
    """
    labels = [None] * len(texts) if labels is None else list(labels)
    unk_token = victim.tokenizer.unk_token or ""
    searches = {
        index: search(text, label, config, model_kwargs, victim.num_layers, unk_token,
                      random.Random(config.seed * 1_000_003 + index))
        for index, (text, label) in enumerate(zip(texts, labels))
    }
    asked = {index: next(generator) for index, generator in searches.items()}
    results = [None] * len(texts)
    with tqdm(total=len(texts), desc=description, disable=not progress, leave=False) as bar:
        while asked:
            victim.all_layer_logits([text for request in asked.values() for text in request])
            for index in list(asked):
                try:
                    asked[index] = searches[index].send(victim.all_layer_logits(asked[index]))
                except StopIteration as stop:
                    results[index] = stop.value
                    del asked[index]
                    bar.update()
    return results


# ---------------------------------------------------------------------------------------------------------------------
# python -m pabee.attack


def parse_args(argv=None):
    from .classify import add_exit_flags

    parser = argparse.ArgumentParser(prog="python -m pabee.attack", description=__doc__.split("\n\n")[0])
    parser.error = lambda message: parser.exit(2, f"{parser.prog}: error: {message}\n")  # one line
    parser.add_argument("texts", nargs="*",
                        help="Texts to attack. Default: the lines of --file, else of standard input.")
    parser.add_argument("--model", required=True, help="Folder of a trained PABEE model (e.g. output/demo).")
    parser.add_argument("--file", default=None,
                        help="Read the texts from this file, one per line; a line 'text<TAB>label' gives the gold "
                             "label (a class id or the model's label name) the misclassification goal must leave.")
    parser.add_argument("--goal", choices=GOALS, default="slowdown",
                        help="misclassification: change the answer; slowdown: raise the exit layer (WAFFLE's "
                             "uncertainty score breaks ties); slowdown-patience: the same with SAME's "
                             "patience-breaking term as the tie-break.")
    add_exit_flags(parser)  # the exit setting attacked
    parser.add_argument("--query_budget", type=int, default=40,
                        help="Texts the model may be asked about per input, the clean one and the word ranking's "
                             "included.")
    parser.add_argument("--max_word_share", type=float, default=0.2,
                        help="At most this share of an input's words is edited (at least one word, one edit each).")
    parser.add_argument("--ranking", choices=RANKINGS, default="unk",
                        help="Rank words by replacing each with the unknown token, or by leaving it out.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the edits: the same seed gives the same edits.")
    parser.add_argument("--batch_size", type=int, default=64, help="Texts per model call.")
    parser.add_argument("--max_seq_length", type=int, default=None,
                        help="Longer inputs are truncated to this many tokens. Default: the model's maximum.")
    args = parser.parse_args(argv)
    if args.texts and args.file:
        parser.error("give texts as arguments or --file, not both")
    if args.patience is not None and args.patience < 0:
        parser.error(f"--patience must be >= 0 (0 runs every layer), got {args.patience}")
    for name in ("exit_confidence", "slowdown_guard"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 1:  # NaN fails both
            parser.error(f"--{name} must be in [0, 1], got {value}")
    if args.exit_criterion in ("entropy", "confidence") and args.exit_threshold is None:
        parser.error(f"--exit_criterion {args.exit_criterion} needs --exit_threshold")
    if args.exit_threshold is not None and not args.exit_threshold >= 0:
        parser.error(f"--exit_threshold must be >= 0, got {args.exit_threshold}")
    if args.max_exit_layer is not None and args.max_exit_layer < 1:
        parser.error(f"--max_exit_layer must be a layer >= 1, got {args.max_exit_layer}")
    if args.query_budget < 2:
        parser.error(f"--query_budget must be >= 2 (the clean text and one edit), got {args.query_budget}")
    if not 0 < args.max_word_share <= 1:  # NaN fails
        parser.error(f"--max_word_share must be in (0, 1], got {args.max_word_share}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    return args


def read_texts(args, config):
    """(texts, gold label ids or None) from the arguments, --file or standard input; InputError on bad lines."""
    from .classify import InputError, first_line

    if args.texts:
        lines, where = args.texts, "argument {}"
    elif args.file:
        try:
            with open(args.file, encoding="utf-8") as file:
                lines = file.read().splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read --file {args.file}: {first_line(error)}")
        where = f"{args.file}, line {{}}"
    elif sys.stdin.isatty():
        raise InputError("no input: give texts as arguments, --file, or lines on standard input")
    else:
        lines, where = sys.stdin.read().splitlines(), "standard input, line {}"
    names = {str(name).lower(): int(index) for index, name in (config.id2label or {}).items()}
    texts, labels = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) > 2 or not fields[0].strip():
            raise InputError(f"{where.format(number)}: expected a text, or a text and a label after a tab")
        label = None
        if len(fields) == 2:
            given = fields[1].strip()
            label = int(given) if given.isdigit() else names.get(given.lower())
            if label is None or not 0 <= label < config.num_labels:
                raise InputError(f"{where.format(number)}: unknown label {given!r}; give a class id below "
                                 f"{config.num_labels} or one of {', '.join(sorted(names))}")
        texts.append(fields[0])
        labels.append(label)
    if not texts:
        raise InputError("no input: only blank lines; give one text per line")
    return texts, labels


def model_kwargs_from(args, config):
    """
    The exit setting attacked, as the model resolves the arguments given (see `--patience`'s help): the saved rule
    where none of the rule's arguments is given. A `ValueError` says how to fix a bad or incomplete setting.
    """
    from .modeling_pabee import check_pabee_settings, exit_settings_for_call

    kwargs = exit_settings_for_call(config, **{name: getattr(args, name) for name in ATTACKED_SETTINGS})
    check_pabee_settings(**kwargs, num_labels=config.num_labels, num_layers=config.num_hidden_layers)
    return kwargs


def format_results(config, results):
    from .classify import label_name

    num_layers = config.num_hidden_layers
    lines = []
    for number, result in enumerate(results, start=1):
        clean = f"{label_name(config, result.clean_answer)}\texit {result.clean_exit_layer}/{num_layers}"
        attacked = f"{label_name(config, result.attacked_answer)}\texit {result.attacked_exit_layer}/{num_layers}"
        outcome = ("skipped (already wrong)" if result.skipped else
                   f"{'success' if result.success else 'failure'}, {result.queries} queries, "
                   f"{result.words_changed} of {result.words} words changed")
        lines += [f"[{number}] clean\t{clean}\t{result.text}",
                  f"[{number}] attacked\t{attacked}\t{result.adversarial}", f"[{number}] {outcome}"]
    return "\n".join(lines)


def main(argv=None):
    from .classify import RULE_SETTINGS, InputError, exit_setting_label, first_line, load_model

    args = parse_args(argv)
    try:
        model, tokenizer = load_model(args.model)
        config = model.config
        if config.num_labels == 1:
            raise InputError(f"the model in {args.model} is a regression model: these attacks need classes")
        texts, labels = read_texts(args, config)
        try:
            kwargs = model_kwargs_from(args, config)
        except ValueError as error:
            raise InputError(first_line(error))
        if all(getattr(args, name) is None for name in RULE_SETTINGS):
            print(f"exit setting saved with the model: {exit_setting_label(kwargs)} (--patience or --exit_criterion "
                  "chooses another)", file=sys.stderr)
        if torch.cuda.is_available():
            model = model.cuda()
        attack_config = AttackConfig(goal=args.goal, query_budget=args.query_budget,
                                     max_word_share=args.max_word_share, ranking=args.ranking, seed=args.seed)
        victim = Victim(model, tokenizer, args.max_seq_length, args.batch_size)
        results = attack(victim, texts, kwargs, attack_config, labels)
    except InputError as error:
        raise SystemExit(f"error: {error}") from None
    print(format_results(config, results))
    return results


def results_as_records(results):
    """The results as plain dicts (for JSON)."""
    return [asdict(result) for result in results]


if __name__ == "__main__":
    main()
