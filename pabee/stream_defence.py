"""The stream-level slowdown defence: cap the depth of new inputs only while recent traffic looks like an attack.

A fixed cap (`max_exit_layer`) bounds what a slowdown attack can cost, but it costs accuracy on every input, attacked
or not. A server sees a stream, so it can pay that price only while an attack is on. This module holds the decision
rule and how its thresholds follow from clean traffic; it does no I/O (`pabee.serve` runs it on live requests).

The statistic. Over the last `window` inputs, the count that ran to at least layer `depth`, with `depth` <= `cap`
(by default `depth` = `cap`). Slowdown attacks push inputs deep, so the count rises. It reads the same whether the cap
is on or off: an input that would have run to layer `depth` or deeper still runs to layer `depth` under the cap (it
stops at the cap, which is no shallower), and one that exits before `depth` exits where it would have without the
cap. So while the cap is on, the window still shows how many inputs would have gone deep, and the defence sees the
attack stop: capping hides only how much deeper than the cap an input would have run.

The thresholds. Clean inputs reach `depth` independently, each with the probability p that the calibration set
estimates (inputs the model never trained on, run with the served exit setting). To allow for the estimate's error,
p is replaced by its one-sided Clopper-Pearson upper bound at `confidence`. The cap engages when the count reaches
`engage_at`: the smallest count that a window of clean inputs reaches with probability at most `false_alarm_rate`.
The window is checked after every input, so clean traffic raises at most `false_alarm_rate` false alarms per input on
average, and the chance of any false alarm within N clean inputs is at most N * `false_alarm_rate` (the union bound;
1e-5: at most 5% over 5,000 inputs), with probability at least `confidence` over the draw of the calibration set. The
cap lifts when the count is back at or below `release_at`, the level that clean windows stay at or below with
probability at least 1 - `release_level`: the window looks clean again. The gap between the two keeps a weak attack
that hovers near `engage_at` from switching the cap on and off at every input.

What it takes to engage: an attack that sends a share a of the traffic, with a share q of its inputs reaching
`depth`, moves the count towards window * ((1 - a) p + a q), at a / window of the way per input; the cap engages when
that passes `engage_at`, and never when it stays below. After the attack stops, the attacked inputs leave the window
one by one: the cap lifts at most `window` inputs later, usually sooner. No rule that reads exit layers alone can do
much better against a weak attack: one whose exit layers differ from clean ones by a Kullback-Leibler divergence of D
nats per input needs about log(1 / false_alarm_rate) / D inputs to be told apart at that false-alarm rate (Lorden,
1971), however the layers are watched.
"""

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import beta, binom

DEFAULT_WINDOW = 100
DEFAULT_FALSE_ALARM_RATE = 1e-5  # per clean input
DEFAULT_CONFIDENCE = 0.95
DEFAULT_RELEASE_LEVEL = 0.05


def default_cap(num_layers):
    """Two thirds of the layers, rounded down (at least 1): while engaged, no input costs more than 2/3 of full depth,
    so an attack keeps at least 1.5x fewer layers than full depth."""
    return max(1, (2 * num_layers) // 3)


@dataclass(frozen=True)
class DefenceSettings:
    """What the defence watches and how rarely it may fire on clean traffic (see the module docstring)."""

    cap: int  # the depth cap applied while engaged
    depth: int  # the statistic counts inputs that ran to at least this layer; <= cap
    window: int = DEFAULT_WINDOW  # inputs in the sliding window
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE  # false alarms per clean input, at most, on average
    confidence: float = DEFAULT_CONFIDENCE  # of the upper bound on the clean share
    release_level: float = DEFAULT_RELEASE_LEVEL  # the cap lifts below the clean windows' 1 - release_level quantile

    def check(self, num_layers):
        """Raise a `ValueError` naming the first setting out of range for a model of `num_layers` layers."""
        if not 1 <= self.cap < num_layers:
            raise ValueError(f"the defence's cap must be a layer from 1 to {num_layers - 1} (a cap at the last of the "
                             f"{num_layers} layers caps nothing), got {self.cap}")
        if not 1 <= self.depth <= self.cap:
            raise ValueError(f"the defence's depth must be a layer from 1 to the cap ({self.cap}): deeper, capped "
                             f"inputs would hide whether they reach it; got {self.depth}")
        if self.window < 1:
            raise ValueError(f"the defence's window must hold at least 1 input, got {self.window}")
        if not 0 < self.false_alarm_rate < 1:  # NaN fails too
            raise ValueError(f"the defence's false-alarm rate must be in (0, 1), got {self.false_alarm_rate}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"the defence's confidence must be in (0, 1), got {self.confidence}")
        if not 0 < self.release_level < 1:
            raise ValueError(f"the defence's release level must be in (0, 1), got {self.release_level}")


@dataclass(frozen=True)
class Thresholds:
    """The calibrated decision levels, and the clean figures they come from."""

    engage_at: int  # the cap engages when this many of the last `window` inputs ran to `depth`
    release_at: int  # and lifts when at most this many did
    clean_share: float  # of calibration inputs that ran to `depth`
    clean_share_bound: float  # its upper confidence bound, which the levels assume
    calibration_examples: int
    false_alarm_bound: float  # P(a clean window reaches engage_at): at most the false-alarm rate

    def as_dict(self):
        return asdict(self)


def reaches_depth(exit_layers, depth):
    """Whether each input ran to layer `depth` or deeper (1-based exit layers): the same with a cap >= depth on."""
    return np.asarray(exit_layers) >= depth


def share_upper_bound(successes, trials, confidence):
    """The one-sided Clopper-Pearson upper bound on a binomial share at `confidence` (1 when all trials succeed)."""
    if trials < 1:
        raise ValueError("the share of no trials has no bound: the calibration set is empty")
    if successes >= trials:
        return 1.0
    return float(beta.ppf(confidence, successes + 1, trials - successes))


def derive_thresholds(clean_exit_layers, settings):
    """
    The `Thresholds` of `settings` (a `DefenceSettings`) from the exit layers of clean inputs run with the served exit
    setting (the calibration set). Raises a `ValueError` when no count in the window is rare enough on clean traffic
    (a longer window, or a higher false-alarm rate, would be).
    """
    reached = reaches_depth(clean_exit_layers, settings.depth)
    total, hits = len(reached), int(reached.sum())
    bound = share_upper_bound(hits, total, settings.confidence)
    counts = np.arange(settings.window + 1)
    at_least = binom.sf(counts - 1, settings.window, bound)  # P(count >= k) for k = 0..window, non-increasing
    rare = np.flatnonzero(at_least <= settings.false_alarm_rate)
    if len(rare) == 0:
        raise ValueError(
            f"no count in a window of {settings.window} inputs is rare enough on clean traffic ({hits} of {total} "
            f"calibration inputs, up to {bound:.1%}, run to layer {settings.depth}; the false-alarm rate needs a "
            f"chance of at most {settings.false_alarm_rate:g} per window): lengthen the window, raise the depth or "
            "the false-alarm rate")
    engage_at = int(rare[0])
    release_at = int(binom.ppf(1 - settings.release_level, settings.window, bound))
    release_at = min(release_at, engage_at - 1)
    return Thresholds(engage_at, release_at, hits / total, bound, total, float(at_least[engage_at]))


def next_engaged(engaged, count, engage_at, release_at):
    """
    The decision rule: whether the cap is on for the next input, given whether it is on now and how many of the last
    `window` inputs ran to the watched depth. It engages at `engage_at` and lifts at `release_at` or below.
    """
    if engaged:
        return count > release_at
    return count >= engage_at


class WindowMonitor:
    """
    The sliding window and the cap's state: `observe` each input's exit layer, in the order they ran; `engaged` says
    whether the next inputs run capped. A window not yet full counts only the inputs seen: a count that reaches
    `engage_at` in fewer inputs is rarer still on clean traffic, so the false-alarm bound holds from the first input.
    """

    def __init__(self, depth, window, engage_at, release_at):
        self.depth, self.engage_at, self.release_at = depth, engage_at, release_at
        self.recent = deque(maxlen=window)
        self.count = 0
        self.engaged = False

    def observe(self, exit_layer):
        """Add one input's exit layer; returns whether the cap changed state."""
        if len(self.recent) == self.recent.maxlen:
            self.count -= self.recent[0]
        reached = int(exit_layer >= self.depth)
        self.recent.append(reached)
        self.count += reached
        engaged = next_engaged(self.engaged, self.count, self.engage_at, self.release_at)
        changed, self.engaged = engaged != self.engaged, engaged
        return changed


def run_monitor(exit_layers, depth, window, engage_at, release_at):
    """Whether the cap was on for each input of a stream (before it ran), for a monitor that saw the stream before."""
    monitor = WindowMonitor(depth, window, engage_at, release_at)
    states = []
    for exit_layer in exit_layers:
        states.append(monitor.engaged)
        monitor.observe(exit_layer)
    return states
