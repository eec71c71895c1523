"""Choose an exit setting with a guarantee: Learn then Test on a calibration set.

Given every layer's logits on n calibration examples the model never trained on, `select_setting` returns the fastest
exit setting whose risk is at most `delta` with probability at least 1 - `epsilon` over the draw of the calibration
set (Learn then Test, Angelopoulos et al. 2021, with fixed-sequence testing, as CALM uses it). Two risks:

- "consistency": the share of inputs whose early answer differs from the full-depth answer. It needs no labels: any
  unlabelled in-domain text is a calibration set.
- "accuracy_drop": the share of inputs that full depth gets right and the early answer gets wrong. It needs labels.
  It bounds the accuracy lost (accuracy at full depth minus accuracy with early exit) from above, since the inputs
  that only the early answer gets right count for nothing.

Each candidate's p-value for "risk > delta" is the binomial tail P(Binomial(n, delta) <= number of losses), valid
for a loss in {0, 1}. Fixed-sequence testing walks the candidates from the safest towards the fastest and certifies
them while the p-value stays <= epsilon; it controls the chance that any certified candidate has risk > delta at
epsilon, so the fastest certified one keeps the guarantee. Full depth (risk 0) is always allowed: when the first
candidate fails, the answer is full depth, and `Selection.certified` says so.

The order must be fixed before the p-values are seen. Candidates of one rule come in a natural order (a higher
patience, gate or confidence threshold, or a lower entropy threshold, exits no earlier on any input), but the rules
have no order between them that holds for every model, and ordering by speed measured on the calibration set would
let the same examples decide the order and the test. So the calibration set is split once, at random (seeded): the
ordering part (`ordering_fraction` of it, 30% by default) ranks the candidates, and only the rest is tested:

1. On the ordering part, each candidate's mean exit layer and risk; a candidate is dropped when another is at least
   as fast with strictly less risk, since a slow risky candidate would only stop the sequence early.
2. The others are tested from the slowest (highest mean exit layer on the ordering part) to the fastest; equal
   mean exit layers are taken in the candidates' listed order (`candidate_settings`: each rule from its safest
   setting; rules in the order patience, gated patience, entropy, confidence).
3. Of the certified candidates, the one with the lowest mean exit layer on the whole calibration set is chosen
   (equal ones: the one tested first). Any choice among certified candidates keeps the guarantee.
"""

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import binom

from .evaluation import ExitSetting
from .modeling_pabee import simulate_exit_layers

RISKS = {
    "consistency": "share of answers that differ from full depth's",
    "accuracy_drop": "share of inputs full depth gets right and the early answer gets wrong",
}
FULL_DEPTH = ExitSetting("patience", 0)
GATES = tuple(round(0.5 + 0.05 * i, 2) for i in range(1, 10))  # 0.55 .. 0.95
CONFIDENCE_THRESHOLDS = (0.99, 0.98, 0.97, 0.96) + tuple(round(0.95 - 0.05 * i, 2) for i in range(10))  # .. 0.5
ENTROPY_FRACTIONS = (0.01, 0.02, 0.03, 0.05, 0.075) + tuple(round(0.1 * i, 1) for i in range(1, 10))  # of ln C


def parse_goal(text):
    """`"consistency:0.02"` -> ("consistency", 0.02). Raises a `ValueError` that says what is accepted."""
    risk, _, value = text.partition(":")
    if risk not in RISKS or not value:
        raise ValueError(f"expected RISK:DELTA with RISK one of {', '.join(RISKS)} (e.g. consistency:0.02), "
                         f"got {text!r}")
    try:
        delta = float(value)
    except ValueError:
        raise ValueError(f"the delta of {text!r} is not a number") from None
    check_level("delta", delta)
    return risk, delta


def check_level(name, value):
    if not 0 < value < 1:  # NaN fails too
        raise ValueError(f"{name} must be in (0, 1), got {value}")


def binomial_p_value(losses, n, delta):
    """P(Binomial(n, delta) <= losses): the p-value of `losses` out of `n` under "the risk is more than delta"."""
    if n < 1:
        raise ValueError("an empty calibration set certifies nothing")
    return float(binom.cdf(losses, n, delta))


def largest_certifiable_losses(n, delta, epsilon):
    """
    The most losses out of `n` tested examples that still certify risk <= `delta` at level `epsilon` (-1 if even
    none does): what the calibration size allows, whatever the model.
    """
    losses = -1
    while losses + 1 <= n and binomial_p_value(losses + 1, n, delta) <= epsilon:
        losses += 1
    return losses


def fixed_sequence(p_values, epsilon):
    """How many of `p_values`, taken in order, are certified: the length of the leading run of p <= epsilon."""
    count = 0
    for p_value in p_values:
        if p_value > epsilon:
            break
        count += 1
    return count


def candidate_settings(num_layers, num_labels):
    """
    Every setting selection chooses from, each rule from its safest setting: patience L-2 down to 1; every patience
    under every confidence gate (gates from the highest); entropy thresholds from the lowest (fractions of ln C nats,
    C classes); confidence thresholds from the highest. Regression models exit by patience only.
    """
    patiences = range(num_layers - 2, 0, -1)  # patience L-1 or more never exits early
    settings = [ExitSetting("patience", patience) for patience in patiences]
    if num_labels == 1:
        return settings
    settings += [ExitSetting("patience", patience, gate) for gate in sorted(GATES, reverse=True)
                 for patience in patiences]
    settings += [ExitSetting("entropy", round(fraction * math.log(num_labels), 4)) for fraction in ENTROPY_FRACTIONS]
    settings += [ExitSetting("confidence", threshold) for threshold in CONFIDENCE_THRESHOLDS]
    return settings


def candidate_outcomes(all_layer_logits, labels, candidates, risk, regression_threshold):
    """
    Per candidate and example, from every layer's logits `(examples, num_layers, num_labels)`: the exit layer and
    the loss of the risk (True where the early answer counts against it). Both `(candidates, examples)`.
    """
    if risk not in RISKS:
        raise ValueError(f"risk must be one of {', '.join(RISKS)}, got {risk!r}")
    if all_layer_logits.shape[-1] == 1:
        raise ValueError("selection compares class answers: a regression model has none")
    if risk == "accuracy_drop" and labels is None:
        raise ValueError("accuracy_drop needs the labels of the calibration set; consistency needs none")
    logits = torch.from_numpy(np.asarray(all_layer_logits))
    answers = logits.argmax(dim=-1).numpy()  # (examples, num_layers)
    full_depth = answers[:, -1]
    rows = np.arange(len(answers))
    exit_layers, losses = [], []
    for setting in candidates:
        kwargs = setting.model_kwargs(regression_threshold)
        layers = simulate_exit_layers(logits, kwargs.get("patience", 0), regression_threshold,
                                      kwargs["exit_criterion"], kwargs.get("exit_threshold"),
                                      kwargs.get("exit_confidence", 0.0)).numpy()
        early = answers[rows, layers - 1]
        if risk == "consistency":
            loss = early != full_depth
        else:
            loss = (full_depth == labels) & (early != labels)
        exit_layers.append(layers)
        losses.append(loss)
    shape = (len(candidates), len(answers))
    return np.array(exit_layers).reshape(shape), np.array(losses, dtype=bool).reshape(shape)


@dataclass
class TestedCandidate:
    """One step of the fixed sequence: which candidate, its risk and mean exit layer on the tested part, p-value."""

    index: int  # in the candidate list
    losses: int
    risk: float
    p_value: float
    avg_exit_layer: float
    certified: bool


def learn_then_test(exit_layers, losses, delta, epsilon, ordering):
    """
    Learn then Test on per-candidate outcomes `(candidates, examples)` (see `candidate_outcomes`): the candidates are
    ranked on the examples where `ordering` (a boolean mask over examples) is True and tested on the others. Returns
    (index of the chosen candidate, or None for full depth; the tested sequence as `TestedCandidate`s).
    """
    check_level("delta", delta)
    check_level("epsilon", epsilon)
    ordering = np.asarray(ordering, dtype=bool)
    tested = ~ordering
    n = int(tested.sum())
    if n == 0:
        raise ValueError("no calibration example is left to test on: an empty calibration set")
    if ordering.any():
        speed = exit_layers[:, ordering].mean(axis=1)  # (candidates,)
        risk = losses[:, ordering].mean(axis=1)
        # dominated[c]: some candidate is at least as fast as c with strictly less risk. An equally risky slower
        # candidate stays: tested before the faster one, it is the fallback if that one fails.
        dominated = ((speed[:, None] <= speed[None, :]) & (risk[:, None] < risk[None, :])).any(axis=0)
        kept = np.flatnonzero(~dominated).tolist()
        sequence = sorted(kept, key=lambda c: (-speed[c], c))  # slowest first; ties in listed order
    else:  # nothing to learn from: the listed order, in which each rule goes from its safest setting
        sequence = list(range(len(exit_layers)))
    steps, going = [], True
    for c in sequence:
        count = int(losses[c, tested].sum())
        p_value = binomial_p_value(count, n, delta)
        going = going and p_value <= epsilon
        steps.append(TestedCandidate(c, count, count / n, p_value, float(exit_layers[c, tested].mean()), going))
    certified = [step.index for step in steps if step.certified]
    if not certified:
        return None, steps
    mean_exit = exit_layers.mean(axis=1)
    return min(certified, key=lambda c: (mean_exit[c], certified.index(c))), steps


@dataclass
class Selection:
    """The chosen setting and how it was chosen (what the model's config records in `exit_selection`)."""

    setting: ExitSetting
    certified: bool  # False: nothing could be certified, so `setting` is full depth
    risk: str
    delta: float
    epsilon: float
    calibration_examples: int
    ordering_examples: int
    tested_examples: int
    calibration_risk: float  # of the chosen setting on the tested part of the calibration set (0 at full depth)
    p_value: float | None
    calibration_avg_exit_layer: float  # on the whole calibration set
    num_layers: int
    sequence: list  # the tested candidates in order, as dicts

    @property
    def reason(self):
        """One sentence on what was chosen and why."""
        bound = f"{self.risk} <= {self.delta:g} with probability >= {1 - self.epsilon:g}"
        if not self.certified:
            return (f"nothing faster than full depth could be certified ({bound}) on {self.tested_examples} "
                    f"calibration examples, so the setting is full depth (patience 0)")
        return (f"{self.setting.label}: the fastest setting certified {bound} (Learn then Test, "
                f"{len(self.sequence)} candidates ranked on {self.ordering_examples} calibration examples and tested "
                f"on {self.tested_examples}); {self.risk} {self.calibration_risk:.2%} on them "
                f"(p = {self.p_value:.3g}), "
                f"layer speed-up {self.num_layers / self.calibration_avg_exit_layer:.2f}x on calibration")

    def record(self):
        """What the model's config keeps: the setting's label, the levels, the calibration size and risk."""
        record = asdict(self)
        record["setting"] = self.setting.label
        record["confidence"] = 1 - self.epsilon
        del record["sequence"]
        return record


def split_for_ordering(num_examples, ordering_fraction, seed):
    """A boolean mask over the calibration examples: the seeded share `ordering_fraction` that ranks candidates."""
    if not 0 <= ordering_fraction < 1:
        raise ValueError(f"ordering_fraction must be in [0, 1), got {ordering_fraction}")
    mask = np.zeros(num_examples, dtype=bool)
    mask[np.random.default_rng(seed).permutation(num_examples)[: round(ordering_fraction * num_examples)]] = True
    return mask


def select_setting(all_layer_logits, labels, risk, delta, epsilon, regression_threshold=0.1, candidates=None,
                   ordering_fraction=0.3, seed=0):
    """
    The fastest exit setting with `risk` <= `delta` at probability >= 1 - `epsilon`, from every layer's logits on a
    calibration set `(examples, num_layers, num_labels)` and its labels (None: unlabelled, consistency only). Full
    depth when nothing can be certified. `candidates` defaults to `candidate_settings`.
    """
    check_level("delta", delta)
    check_level("epsilon", epsilon)
    all_layer_logits = np.asarray(all_layer_logits)
    if all_layer_logits.ndim != 3 or len(all_layer_logits) == 0:
        raise ValueError("the calibration set is empty: selection needs examples the model did not train on")
    num_examples, num_layers, num_labels = all_layer_logits.shape
    candidates = candidate_settings(num_layers, num_labels) if candidates is None else list(candidates)
    exit_layers, losses = candidate_outcomes(all_layer_logits, labels, candidates, risk, regression_threshold)
    ordering = split_for_ordering(num_examples, ordering_fraction, seed)
    if ordering.all():
        ordering[-1] = False  # one example, say: it is tested
    chosen, steps = learn_then_test(exit_layers, losses, delta, epsilon, ordering)
    sequence = [{"setting": candidates[step.index].label, "risk": step.risk, "p_value": step.p_value,
                 "avg_exit_layer": step.avg_exit_layer, "certified": step.certified} for step in steps]
    tested = int((~ordering).sum())
    if chosen is None:
        return Selection(FULL_DEPTH, False, risk, delta, epsilon, num_examples, num_examples - tested, tested, 0.0,
                         None, float(num_layers), num_layers, sequence)
    step = next(step for step in steps if step.index == chosen)
    return Selection(candidates[chosen], True, risk, delta, epsilon, num_examples, num_examples - tested, tested,
                     step.risk, step.p_value, float(exit_layers[chosen].mean()), num_layers, sequence)


def risk_on(all_layer_logits, labels, setting, risk, regression_threshold=0.1):
    """The risk of `setting` measured on another set (the dev set), from every layer's logits there."""
    _, losses = candidate_outcomes(all_layer_logits, labels, [setting], risk, regression_threshold)
    return float(losses[0].mean())


def apply_to_config(config, selection):
    """Make the selected setting the config's default (what forward, pipelines and `pabee.classify` use)."""
    setting = selection.setting
    if setting.criterion == "patience":
        config.exit_criterion, config.patience = "patience", int(setting.value)
        config.exit_confidence, config.exit_threshold = float(setting.confidence), None
    else:
        config.exit_criterion, config.exit_threshold = setting.criterion, float(setting.value)
        config.patience, config.exit_confidence = 0, 0.0
    config.exit_selection = selection.record()
    return config
