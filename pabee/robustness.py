"""What an attack did, with 95% bootstrap intervals: accuracy under attack, slowdown, and the guard's ROC AUC."""

import numpy as np


def bootstrap(statistic, *arrays, resamples=1000, seed=0, confidence=0.95):
    """
    `statistic(*arrays)` and its percentile bootstrap interval: (estimate, low, high). The arrays (one value per
    example) are resampled together, so a statistic of two of them (a paired difference, a ratio) keeps the pairs.
    """
    arrays = [np.asarray(array, dtype=float) for array in arrays]
    size = len(arrays[0])
    if size == 0:
        return float("nan"), float("nan"), float("nan")
    generator = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        index = generator.integers(0, size, size)
        values.append(statistic(*(array[index] for array in arrays)))
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(statistic(*arrays)), float(low), float(high)


def interval(statistic, *arrays, **kwargs):
    estimate, low, high = bootstrap(statistic, *arrays, **kwargs)
    return {"value": estimate, "low": low, "high": high}


def mean(values):
    return float(np.mean(values)) if len(values) else float("nan")


def efficacy(exit_layers, num_layers):
    """
    WAFFLE's efficacy: the area under the cumulative exit-layer curve (the share of examples exited by layer l,
    against l / (L + 1) for l = 0..L+1, trapezoids), larger when examples exit earlier. An example exiting at layer e
    adds (L + 1.5 - e) / (L + 1), so it is that, averaged: (L + 0.5) / (L + 1) when all exit at layer 1, 1.5 / (L + 1)
    when all run every layer.
    """
    exit_layers = np.asarray(exit_layers, dtype=float)
    return float(np.mean((num_layers + 1.5 - exit_layers) / (num_layers + 1)))


def roc_auc(negatives, positives):
    """
    The area under the ROC curve of a score that should be higher on `positives` (attacked inputs) than on
    `negatives` (clean ones), over all thresholds: the probability that a random positive scores above a random
    negative, ties counting half (Mann-Whitney).
    """
    negatives, positives = np.asarray(negatives, dtype=float), np.asarray(positives, dtype=float)
    if not len(negatives) or not len(positives):
        return float("nan")
    above = (positives[:, None] > negatives[None, :]).sum()
    ties = (positives[:, None] == negatives[None, :]).sum()
    return float((above + 0.5 * ties) / (len(positives) * len(negatives)))


def slowdown_summary(clean_exit_layers, attacked_exit_layers, num_layers, seed=0):
    """Exit layers clean against attacked, with intervals: average, layer speed-up, share at the last layer,
    efficacy."""
    clean, attacked = np.asarray(clean_exit_layers), np.asarray(attacked_exit_layers)
    summary = {}
    for name, layers in (("clean", clean), ("attacked", attacked)):
        summary[f"avg_exit_layer_{name}"] = interval(np.mean, layers, seed=seed)
        summary[f"layer_speedup_{name}"] = interval(lambda x: num_layers / np.mean(x), layers, seed=seed)
        summary[f"at_last_layer_{name}"] = interval(lambda x: np.mean(x == num_layers), layers, seed=seed)
        summary[f"efficacy_{name}"] = interval(lambda x: efficacy(x, num_layers), layers, seed=seed)
        summary[f"exit_histogram_{name}"] = np.bincount(layers, minlength=num_layers + 1)[1:].tolist()
    return summary


def accuracy_summary(labels, clean_answers, attacked_answers, skipped, queries, words_changed, words, seed=0):
    """
    The paper's protocol (after TextFooler): clean accuracy and accuracy under attack over every example (an example
    already answered wrongly counts as wrong under attack, and is not attacked); over the attacked examples (the
    clean-correct ones), the success rate and the average queries; over the successful ones, the share of words
    changed.
    """
    labels, clean, attacked = map(np.asarray, (labels, clean_answers, attacked_answers))
    attacked_mask = ~np.asarray(skipped, dtype=bool)
    success = (attacked != labels) & attacked_mask
    share = np.asarray(words_changed, dtype=float) / np.maximum(np.asarray(words, dtype=float), 1)
    return {
        "clean_accuracy": interval(np.mean, clean == labels, seed=seed),
        "attacked_accuracy": interval(np.mean, attacked == labels, seed=seed),
        "success_rate": interval(np.mean, success[attacked_mask], seed=seed),
        "avg_queries": interval(np.mean, np.asarray(queries)[attacked_mask], seed=seed),
        "words_changed_share": interval(np.mean, share[success], seed=seed),
        "attacked_examples": int(attacked_mask.sum()),
    }
