"""The stream defence's decision rule and thresholds (pabee.stream_defence), on synthetic streams with known answers.

    python -m pytest tests/test_stream_defence.py -q
"""

import math

import numpy as np
import pytest

from pabee.stream_defence import (
    DefenceSettings,
    WindowMonitor,
    default_cap,
    derive_thresholds,
    next_engaged,
    reaches_depth,
    run_monitor,
    share_upper_bound,
)

SHALLOW, DEEP = 1, 6  # exit layers of a 6-layer model


def test_the_rule_engages_at_its_level_and_lifts_at_or_below_the_other():
    engage_at, release_at = 6, 3
    assert not next_engaged(False, 5, engage_at, release_at)
    assert next_engaged(False, 6, engage_at, release_at)
    assert next_engaged(True, 4, engage_at, release_at)  # between the levels: it stays as it is
    assert not next_engaged(False, 4, engage_at, release_at)
    assert not next_engaged(True, 3, engage_at, release_at)


def test_an_attack_engages_the_cap_at_the_known_input_and_its_end_lifts_it():
    # Window 10: the cap goes on once 6 of the last 10 ran to layer 3, and lifts at 3 or fewer. 20 clean inputs, 15
    # attacked ones, then clean again: the 6th attacked input (index 25) engages the cap for the inputs after it; the
    # window then holds 10 attacked inputs, so 7 clean ones bring the count to 3 and lift it after index 41.
    stream = [SHALLOW] * 20 + [DEEP] * 15 + [SHALLOW] * 20
    states = run_monitor(stream, depth=3, window=10, engage_at=6, release_at=3)
    assert states == [False] * 26 + [True] * 16 + [False] * 13


def test_a_window_not_yet_full_engages_when_it_already_holds_the_count():
    assert run_monitor([DEEP] * 4, depth=3, window=10, engage_at=3, release_at=1) == [False, False, False, True]


def serve_stream(natural_exit_layers, cap, depth, window, engage_at, release_at):
    """What a server does: each input runs under the cap while the monitor says so; the monitor sees what ran."""
    monitor = WindowMonitor(depth, window, engage_at, release_at)
    states, served = [], []
    for exit_layer in natural_exit_layers:
        states.append(monitor.engaged)
        served.append(min(exit_layer, cap) if monitor.engaged else exit_layer)
        monitor.observe(served[-1])
    return states, served


@pytest.mark.parametrize("seed", range(5))
def test_capped_inputs_show_the_window_what_uncapped_ones_would(seed):
    rng = np.random.default_rng(seed)
    clean = rng.choice(np.arange(1, 7), size=300, p=[0.3, 0.25, 0.15, 0.1, 0.1, 0.1])
    attacked = rng.choice([4, 5, 6], size=200)
    stream = np.concatenate([clean[:150], attacked, clean[150:]])
    states, served = serve_stream(stream, cap=4, depth=4, window=20, engage_at=12, release_at=9)
    assert served != list(stream)  # the cap changed some exits...
    assert states == run_monitor(stream, depth=4, window=20, engage_at=12, release_at=9)  # ...and no decision
    assert all(states[170:350])  # on within a window of the attack's start, and all through it
    assert not all(states[350:390])  # and the attack's end is seen while capped
    # Watching deeper than the cap, capped inputs would hide the attack: the cap lifts while it is still on.
    deeper, _ = serve_stream(stream, cap=4, depth=5, window=20, engage_at=8, release_at=4)
    attack = slice(150, 350)
    assert any(deeper[attack]) and not all(deeper[attack][20:])


def test_the_clean_share_bound_is_clopper_pearsons():
    n, confidence = 40, 0.95
    assert share_upper_bound(0, n, confidence) == pytest.approx(1 - (1 - confidence) ** (1 / n))
    assert share_upper_bound(n, n, confidence) == 1.0
    # At the bound, seeing at most the observed successes has probability 1 - confidence.
    bound = share_upper_bound(7, n, confidence)
    tail = sum(math.comb(n, k) * bound**k * (1 - bound) ** (n - k) for k in range(8))
    assert tail == pytest.approx(1 - confidence)
    with pytest.raises(ValueError, match="empty"):
        share_upper_bound(0, 0, confidence)


def binomial_at_least(count, window, share):
    return sum(math.comb(window, k) * share**k * (1 - share) ** (window - k) for k in range(count, window + 1))


def test_thresholds_are_the_binomial_levels_of_the_bound():
    exit_layers = [SHALLOW] * 150 + [DEEP] * 50  # a quarter run deep
    settings = DefenceSettings(cap=4, depth=4, window=30, false_alarm_rate=5e-5)
    thresholds = derive_thresholds(exit_layers, settings)
    bound = share_upper_bound(50, 200, settings.confidence)
    assert thresholds.clean_share == 0.25 and thresholds.clean_share_bound == pytest.approx(bound)
    k = thresholds.engage_at
    assert binomial_at_least(k, 30, bound) <= settings.false_alarm_rate < binomial_at_least(k - 1, 30, bound)
    r = thresholds.release_at
    assert binomial_at_least(r + 1, 30, bound) <= settings.release_level < binomial_at_least(r, 30, bound)
    assert thresholds.false_alarm_bound == pytest.approx(binomial_at_least(k, 30, bound))
    assert thresholds.false_alarm_bound <= settings.false_alarm_rate


def ever_engaged(stream, settings, thresholds):
    monitor = WindowMonitor(settings.depth, settings.window, thresholds.engage_at, thresholds.release_at)
    for exit_layer in stream:
        monitor.observe(exit_layer)
        if monitor.engaged:
            return True
    return False


def test_clean_streams_set_off_false_alarms_no_more_often_than_stated():
    rng = np.random.default_rng(0)
    calibration = rng.choice([SHALLOW, DEEP], size=500, p=[0.7, 0.3])
    settings = DefenceSettings(cap=4, depth=4, window=25, false_alarm_rate=2e-4)
    horizon = 1000  # clean inputs: any false alarm in them has a chance of at most 0.2
    thresholds = derive_thresholds(calibration, settings)
    worst = thresholds.clean_share_bound  # the clean share the guarantee covers, at its upper bound
    alarms = sum(ever_engaged(np.where(rng.random(horizon) < worst, DEEP, SHALLOW), settings, thresholds)
                 for _ in range(200))
    assert alarms / 200 <= horizon * settings.false_alarm_rate
    # An attack that sends every input deep engages the cap within one window.
    attack = np.full(settings.window, DEEP)
    assert ever_engaged(np.concatenate([calibration[:100], attack]), settings, thresholds)


def test_a_window_too_short_for_the_false_alarm_rate_is_refused():
    settings = DefenceSettings(cap=4, depth=4, window=3, false_alarm_rate=1e-6)
    with pytest.raises(ValueError, match="lengthen the window"):
        derive_thresholds([SHALLOW] * 50 + [DEEP] * 50, settings)


@pytest.mark.parametrize("fields, message", [
    (dict(cap=6, depth=4), "caps nothing"),
    (dict(cap=0, depth=1), "cap must be a layer"),
    (dict(cap=3, depth=4), "depth must be a layer from 1 to the cap"),
    (dict(cap=4, depth=4, window=0), "window"),
    (dict(cap=4, depth=4, false_alarm_rate=1.0), "false-alarm rate"),
    (dict(cap=4, depth=4, confidence=0), "confidence"),
])
def test_settings_out_of_range_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        DefenceSettings(**fields).check(num_layers=6)


def test_defaults():
    assert [default_cap(layers) for layers in (2, 4, 6, 12, 24)] == [1, 2, 4, 8, 16]
    assert reaches_depth([1, 3, 4, 6], 4).tolist() == [False, False, True, True]
