"""The speed/accuracy trade-off of an evaluation as a PNG: what each exit setting buys, and each layer on its own."""

MARKERS = {"patience": "o", "gated patience": "D", "entropy": "s", "confidence": "^"}
ORACLE_MARKERS = {"oracle": "P", "oracle-correct": "X"}


def plot_tradeoff(entries, layer_metrics, metric, title, path):
    """
    Left: `metric` against layer speed-up, one point per exit setting (labelled with its patience or threshold; one
    line per rule, each confidence gate of gated patience its own), the oracle bounds as large crosses, the
    full-depth model starred. Right: `metric` of each internal classifier alone. `entries` are the result entries
    of one checkpoint and evaluation set; `layer_metrics` its per-layer metrics.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    from .evaluation import ExitSetting

    figure, (tradeoff, per_layer) = plt.subplots(1, 2, figsize=(11, 4.2))
    rules = {}
    for entry in entries:
        setting = ExitSetting.from_entry(entry)
        if metric in entry.get("metrics", {}) and not setting.is_oracle:
            rules.setdefault(setting.rule, []).append(entry)
    for rule, points in rules.items():
        points.sort(key=lambda e: e["layer_speedup"])
        speedups = [e["layer_speedup"] for e in points]
        values = [e["metrics"][metric] for e in points]
        marker = MARKERS["gated patience" if rule.startswith("gated") else rule]
        tradeoff.plot(speedups, values, marker=marker, label=rule)
        # Settings that land on the same point (e.g. patience 0 and patience >= L - 1) share one label.
        labels = {}
        for entry, x, y in zip(points, speedups, values):
            text = f"{entry['patience']}" if entry["criterion"] == "patience" else f"{entry['threshold']:g}"
            labels.setdefault((round(x, 3), round(y, 4)), []).append(text)
        for (x, y), texts in labels.items():
            prefix = "p=" if points[0]["criterion"] == "patience" else ""
            tradeoff.annotate(prefix + ",".join(texts), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for entry in entries:
        if entry["criterion"] in ORACLE_MARKERS and metric in entry.get("metrics", {}):
            color = "tab:red" if entry["criterion"] == "oracle" else "tab:purple"
            tradeoff.plot([entry["layer_speedup"]], [entry["metrics"][metric]], linestyle="none", color=color,
                          marker=ORACLE_MARKERS[entry["criterion"]], markersize=11, label=entry["setting"])

    layers = [row["layer"] for row in layer_metrics]
    layer_values = [row[metric] for row in layer_metrics]
    if layer_values:
        tradeoff.axhline(layer_values[-1], color="gray", linestyle="--", linewidth=1)
        tradeoff.plot([1.0], [layer_values[-1]], marker="*", markersize=14, color="black", linestyle="none",
                      label="full depth")
    tradeoff.set_xlabel("layer speed-up (layers / average exit layer)")
    tradeoff.set_ylabel(metric)
    tradeoff.set_title(f"{title}: speed against {metric}")
    tradeoff.grid(alpha=0.3)
    tradeoff.legend(fontsize=8)

    per_layer.plot(layers, layer_values, marker="o", color="tab:green")
    per_layer.set_xticks(layers)
    per_layer.set_xlabel("layer")
    per_layer.set_ylabel(metric)
    per_layer.set_title("each internal classifier on its own")
    per_layer.grid(alpha=0.3)

    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
